// add.wgsl: in-place broadcast add, the residual connection and the bias of a Linear layer.
//
//   x[i] = x[i] + y[i mod ny]        x: (n) f32 (e.g. (T, H) row-major), y: (ny) f32, n a multiple of ny
//
// ny = n is the residual add `hidden = residual + hidden` of HF transformers
// models/llama/modeling_llama.py `LlamaDecoderLayer.forward`; ny = out_features adds a bias row to
// every token (`nn.Linear`'s `+ b`, Qwen2's q/k/v bias). Host side and CPU reference:
// crate/src/ops/add.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (16 bytes)
//   1  x      storage, read_write array<f32>  (n)
//   2  y      storage, read       array<f32>  (ny)
//
// Workgroup layout: 256 threads, one element each, on a 2-D grid (i = (wid.y · gx + wid.x) · 256
// + lid) so n may exceed 65535 · 256. No barriers.

const WG: u32 = 256u;

struct Meta {
    n: u32,
    ny: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lid;
    if (i < params.n) {
        x[i] = x[i] + y[i % params.ny];
    }
}
