// weighted_sum.wgsl: the linear-merge / task-arithmetic core.
//
//   dst[i] = (Σ_{m=0}^{M-1} w[m] · x_m[i]) / (normalize ? Σ_m w[m] : 1)      for i < n
//
// Math: mergekit 0.1.5 merge_methods/linear.py (`linear_merge`): `result.addcmul_(x_m, w_m)` in
// input order, then `result.div_(weight.sum())`; Wortsman et al. 2022 "Model soups"
// (arXiv:2203.05482); task arithmetic (Ilharco et al. 2023, arXiv:2212.04089) is the same sum
// over deltas. Host side and CPU reference: crate/src/ops/weighted_sum.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (below, 32 bytes)
//   1  w     storage, read       array<f32>  (M)            per-model weights
//   2  x     storage, read       array<f32>  (M · stride)   model m's elements at [m·stride, m·stride + n)
//   3  dst   storage, read_write array<f32>  (n)
//
// Workgroup layout: 256 threads along x, one output element per thread. The grid is 2-D
// (gx, gy) because one dimension stops at 65535 workgroups (16.7 M elements):
//   i = (wid.y · gx + wid.x) · 256 + lid.x, and threads with i ≥ n do nothing.
//
// The trick: all M inputs live in ONE binding, so any number of models needs 4 bindings (WebGPU
// guarantees only 8 storage buffers per stage). A tensor too big for one binding is cut into
// chunks by the host; `stride` is the chunk capacity, n the elements in this chunk.

struct Meta {
    n: u32,          // elements in this chunk
    m: u32,          // number of input tensors M
    stride: u32,     // elements between consecutive models in x
    normalize: u32,  // 1: divide by wsum
    wsum: f32,       // Σ_m w[m], summed on the host in input order
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * 256u + lid;
    if (i >= params.n) {
        return;
    }
    var acc = 0.0;
    for (var m = 0u; m < params.m; m = m + 1u) {
        acc = acc + w[m] * x[m * params.stride + i];
    }
    if (params.normalize != 0u) {
        acc = acc / params.wsum;
    }
    dst[i] = acc;
}
