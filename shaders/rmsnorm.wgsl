// rmsnorm.wgsl: root-mean-square layer norm over the rows of a (T, d) matrix.
//
//   y[t, :] = (x[t, :] · 1/sqrt(mean_j x[t, j]² + eps)) · w          x, y: (T, d), w: (d)
//
// Math: Zhang & Sennrich 2019 "Root Mean Square Layer Normalization" (arXiv:1910.07467); we match
// HF transformers models/llama/modeling_llama.py `LlamaRMSNorm.forward`
// (`x * torch.rsqrt(x.pow(2).mean(-1) + eps)`, then `weight *`). Host side and CPU reference:
// crate/src/ops/rmsnorm.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (16 bytes)
//   1  x     storage, read       array<f32>  (T · d)   row-major
//   2  w     storage, read       array<f32>  (d)
//   3  y     storage, read_write array<f32>  (T · d)
//
// Workgroup layout: 256 threads per row; one workgroup per row, on a 2-D grid
// (row = wid.y · gx + wid.x) so that T may exceed 65535.
//
// The trick: thread l sums x² over the columns j ≡ l (mod 256), then the 256 partial sums are
// folded in workgroup memory by halving (128, 64, …, 1: 8 barriers). Every thread then reads
// the total, and writes its columns. Barriers stay in uniform control flow: rows past T only
// skip their loads and stores, never a barrier.

const WG: u32 = 256u;

struct Meta {
    rows: u32,   // T rows in this chunk
    d: u32,      // row length
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * groups.x + wid.x;
    let in_range = row < params.rows;
    let base = row * params.d;

    var s = 0.0;
    if (in_range) {
        for (var j = lid; j < params.d; j = j + WG) {
            let v = x[base + j];
            s = s + v * v;
        }
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h = h / 2u) {
        if (lid < h) {
            partial[lid] = partial[lid] + partial[lid + h];
        }
        workgroupBarrier();
    }
    let r = inverseSqrt(partial[0] / f32(params.d) + params.eps);
    if (in_range) {
        for (var j = lid; j < params.d; j = j + WG) {
            y[base + j] = (x[base + j] * r) * w[j];
        }
    }
}
