// qmatvec.wgsl: quantized matrix–vector product for decode, dequantizing in the kernel.
//
//   y[r] = Σ_{j<K} W[r, j] · x[j]        W: (rows, K) in 32-weight blocks, x: (K) f32, y: (rows) f32
//
// with W[r, 32b + j] the weight j of block (r·K/32 + b), dequantized as in llama.cpp
// ggml-quants.c `dequantize_row_q8_0 / _q4_0 / _q4_1` (ggml-common.h `block_q8_0`, `block_q4_0`,
// `block_q4_1`):
//   Q8_0  w = d·q            q: i8
//   Q4_0  w = d·(q − 8)      q: u4, weight j < 16 the low nibble of byte j, j + 16 its high nibble
//   Q4_1  w = d·q + m        q: u4, same nibble order
// The format is `params.format` (0 Q8_0, 1 Q4_0, 2 Q4_1): one pipeline, a branch that is uniform
// across the whole dispatch. Host side and CPU reference: crate/src/ops/qmatvec.rs; the split
// layout: crate/src/tensor/quant.rs `SplitBlocks`. References for the kernel shape: llama.cpp's
// `mul_mat_vec` kernels (Vulkan `mul_mat_vec.comp`, WebGPU `mul_mat_vec.wgsl`): one workgroup per
// output row, threads over the row's blocks, shared-memory reduction.
//
// Bindings (group 0)
//   0  params uniform             Meta (16 bytes)
//   1  scales storage, read       array<f32>        (rows · K/32)      d of each block
//   2  mins   storage, read       array<f32>        (rows · K/32)      m of each block (Q4_1;
//                                                                       any f32 buffer otherwise)
//   3  qs     storage, read       array<u32>        (rows · K/32 · W)  W = 8 (Q8_0) or 4 (Q4_*)
//   4  x      storage, read       array<vec4<f32>>  (K/4)
//   5  y      storage, read_write array<f32>        (rows)
//
// Layout of qs (SplitBlocks): the block's quant bytes unchanged, little-endian, W words per
// block; byte k of word w is quant byte 4w + k. So one u32 word covers
//   Q8_0: weights 4w .. 4w+3                     → x4[8b + w]
//   Q4_*: weights 4w .. 4w+3 (low nibbles)       → x4[8b + w]
//         and 4w+16 .. 4w+19 (high nibbles)      → x4[8b + 4 + w]
// where x4 is x read as vec4 (K is a multiple of 32, so 8 vec4 per block).
//
// Workgroup layout: 64 threads = 8 output rows × 8 threads; row = (wid.y · gx + wid.x) · 8 +
// lid / 8 on a 2-D grid of ⌈rows / 8⌉ workgroups, so rows may exceed 65535 · 8. Threads of rows
// past `rows` skip loads and stores but still meet every barrier (uniform control flow).
//
// The trick: the unit of work is one u32 word of quants, not one block. Thread t of a row takes
// words t, t + 8, t + 16, … of it (a row of K = 576 has 72 Q4 words or 144 Q8 words, so every
// thread has work, where one block per thread would leave most idle on short rows), unpacks the
// 4 or 8 weights of the word into vec4s, dequantizes them with the block's d (and m) and
// accumulates dot(w, x) in f32. The 8 threads of a row read 8 consecutive words (32 bytes).
// Their partial sums are folded in workgroup memory by halving (4, 2, 1: 4 barriers in all,
// shared by the 8 rows; CPU implementations such as lavapipe and SwiftShader pay per barrier).
// Measured on lavapipe (Q4_1, K = 576), 8 rows × 8 threads ran 2× faster than 4 × 16, 16 × 4 or
// 16 × 16 (256 threads); on GPUs with 32-wide SIMD, llama.cpp favours one row per workgroup, so
// revisit TPR / ROWS where a real GPU can be measured. No subgroups: the kernel runs wherever WebGPU does
// (SwiftShader caps workgroups at 256 invocations).

// Shared WGSL: the host prepends shaders/quant_decode.wgsl (i8x4, u4x4) and quant_row_dot.wgsl
// (`quant_row_dot`, the per-thread row loop), crate/src/ops/qmatvec.rs `WGSL`.

const WG: u32 = 64u;     // threads per workgroup
const TPR: u32 = 8u;     // threads per output row
const ROWS: u32 = 8u;    // rows per workgroup, WG / TPR

struct Meta {
    rows: u32,    // output rows in this dispatch (a chunk of N)
    k: u32,       // row length K, a multiple of 32
    format: u32,  // 0 Q8_0, 1 Q4_0, 2 Q4_1
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> scales: array<f32>;
@group(0) @binding(2) var<storage, read> mins: array<f32>;
@group(0) @binding(3) var<storage, read> qs: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = lid % TPR;                                // thread within the row
    let row = (wid.y * groups.x + wid.x) * ROWS + lid / TPR;
    let nb = params.k / 32u;   // blocks per row

    var acc = 0.0;
    if (row < params.rows) {
        acc = quant_row_dot(params.format, row * nb, nb, t, 0u);
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
