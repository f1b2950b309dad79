// hmatvec.wgsl: matrix–vector product for F16 weights (decode), widening f16 → f32 in the kernel.
//
//   y[r] = Σ_{j<K} W[r, j] · x[j]        W: (rows, K) IEEE binary16, x: (K) f32, y: (rows) f32
//
// i.e. y = x Wᵀ of torch.nn.functional.linear for one token, on an F16 checkpoint's weights kept
// in half the memory. Every f16 is exactly an f32, and all arithmetic is f32: the result differs
// from the f32 product of the widened weights only by the summation order.
// Host side and CPU reference: crate/src/ops/hmatvec.rs. Kernel shape: shaders/qmatvec.wgsl (8 rows
// × 8 threads per 64-thread workgroup, a shared-memory tree per row), after llama.cpp's
// `mul_mat_vec` kernels (Vulkan `mul_mat_vec.comp`, WebGPU `mul_mat_vec.wgsl`, f16 weights).
//
// The host prepends one of two preludes (crate/src/ops/hmatvec.rs `PRELUDE_F16` / `PRELUDE_PACKED`),
// chosen at run time from the device's features, which declare binding 1 and the loader:
//   f16:    `enable f16;`  w: array<vec4<f16>>  (rows · K/4)  when the device has `shader-f16`
//   packed:                w: array<vec2<u32>>  (rows · K/4)  two binary16 per u32, widened with
//                                                               core WGSL `unpack2x16float`
//                                                               (e.g. SwiftShader in Chromium)
//   fn w4(i) -> vec4<f32>: weights 4i .. 4i+3 of the (row-major) chunk, widened;
//   fn w1(i) -> f32:       weight i.
// Both read the same bytes: W as little-endian binary16, row-major, K a multiple of 4.
//
// Bindings (group 0)
//   0  params uniform             Meta (16 bytes)
//   1  w      storage, read       (prelude)         (rows · K) binary16
//   2  x      storage, read       array<vec4<f32>>  (K/4)
//   3  y      storage, read_write array<f32>        (rows)
//
// Workgroup layout: 64 threads = 8 output rows × 8 threads; row = (wid.y · gx + wid.x) · 8 +
// lid / 8 on a 2-D grid of ⌈rows / 8⌉ workgroups. Thread t of a row takes vec4 columns t, t + 8,
// t + 16, … (the 8 threads of a row read 8 consecutive 8-byte words), accumulating dot(w, x) in
// f32; the partial sums are folded in workgroup memory by halving (3 steps). Threads of rows past
// `rows` skip loads and stores but meet every barrier.

const WG: u32 = 64u;     // threads per workgroup
const TPR: u32 = 8u;     // threads per output row
const ROWS: u32 = 8u;    // rows per workgroup, WG / TPR

struct Meta {
    rows: u32,    // output rows in this dispatch (a chunk of N)
    k: u32,       // row length K, a multiple of 4
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = lid % TPR;
    let row = (wid.y * groups.x + wid.x) * ROWS + lid / TPR;
    let k4 = params.k / 4u;
    var acc = 0.0;
    if (row < params.rows) {
        let base = row * k4;
        for (var i = t; i < k4; i = i + TPR) {
            acc = acc + dot(w4(base + i), x[i]);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var h = TPR / 2u; h > 0u; h = h / 2u) {
        if (t < h) {
            partial[lid] = partial[lid] + partial[lid + h];
        }
        workgroupBarrier();
    }
    if (row < params.rows && t == 0u) {
        y[row] = partial[lid];
    }
}
