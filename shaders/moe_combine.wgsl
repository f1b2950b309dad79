// moe_combine.wgsl: the weighted sum of each token's k expert outputs, with the router's combine
// weights read on the GPU (the readback-free MoE path; host side crate/src/ops/qmatvec_id.rs).
//
//   y[t, j] = Σ_{s<k} w[t·k + s] · src[(t·k + s)·H + j]        y: (T, H), src: (T·k, H), w: (≥ T·k)
//
// w is router.wgsl's output read from its start ([w (T, k) | idx (T, k)]). The slots are added in
// slot order (best expert first); the CPU reference `models::moe::MoeBlock::forward` adds experts
// in index order, so for k ≥ 3 the two sums may differ by rounding (a few ulp). y is overwritten.
// Papers: Mixtral arXiv 2401.04088; reference implementation: HF transformers `MixtralExperts`
// (`index_add_` of the weighted expert outputs) and llama.cpp's `build_moe_ffn` (ggml_mul by the
// weights, then a sum over the expert dimension).
//
// Bindings (group 0)
//   0  params  uniform  Meta (16 bytes)
//   1  w       storage, read        array<f32>  (≥ T·k)
//   2  src     storage, read        array<f32>  (T·k·H)
//   3  y       storage, read_write  array<f32>  (T·H)
//
// Workgroup layout: 256 threads, one output element each, 2-D grid. No barriers.

const WG: u32 = 256u;

struct Meta {
    t: u32,
    k: u32,
    h: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = (wid.y * groups.x + wid.x) * WG + lid;
    if (g >= params.t * params.h) {
        return;
    }
    let t = g / params.h;
    let j = g % params.h;
    var acc = 0.0;
    for (var s = 0u; s < params.k; s = s + 1u) {
        let p = t * params.k + s;
        acc = acc + w[p] * src[p * params.h + j];
    }
    y[g] = acc;
}
