// qmatmul.wgsl: quantized matrix–matrix product for batched prefill, dequantizing in the kernel.
//
//   Y[t, y0 + r] = Σ_{j<K} X[t, j] · W[r, j]     X: (T, K) f32, W: (rows, K) in 32-weight blocks,
//                                                 Y: (T, ldy) f32, row-major
//
// i.e. y = x Wᵀ of torch.nn.functional.linear for T tokens at once. W[r, 32b + j] is weight j of
// block (r·K/32 + b), dequantized as in llama.cpp ggml-quants.c `dequantize_row_q8_0 / _q4_0 /
// _q4_1` (ggml-common.h `block_q8_0`, `block_q4_0`, `block_q4_1`):
//   Q8_0  w = d·q            q: i8
//   Q4_0  w = d·(q − 8)      q: u4, weight j < 16 the low nibble of byte j, j + 16 its high nibble
//   Q4_1  w = d·q + m        q: u4, same nibble order
// The split layout (scales, mins as f32; quants as u32 words) is crate/src/tensor/quant.rs
// `SplitBlocks`, the same as shaders/qmatvec.wgsl. Host side and CPU reference:
// crate/src/ops/qmatmul.rs. Reference for the kernel shape: llama.cpp's `mul_mat` shaders
// (Vulkan `mul_mm.comp`, WebGPU `mul_mat.wgsl`): the weight tile is dequantized once into shared
// memory and reused by every token of the tile; this repo's shaders/matmul.wgsl for the register
// tiling.
//
// Bindings (group 0)
//   0  params uniform             Meta (32 bytes)
//   1  scales storage, read       array<f32>   (rows · K/32)
//   2  mins   storage, read       array<f32>   (rows · K/32) (Q4_1; any f32 buffer otherwise)
//   3  qs     storage, read       array<u32>   (rows · K/32 · W)  W = 8 (Q8_0) or 4 (Q4_*)
//   4  x      storage, read       array<f32>   (T · K)
//   5  y      storage, read_write array<f32>   (T · ldy); this dispatch writes columns y0 .. y0+rows
//
// Workgroup layout: 64 threads (8 × 8) compute a 32 (rows) × 32 (tokens) tile of Y; the grid is
// (⌈rows / 32⌉, ⌈T / 32⌉). Thread (tx, ty) = (lid % 8, lid / 8) owns the 4 × 4 outputs at rows
// tx + 8·s and tokens ty + 8·u of the tile.
//
// The trick: one k-step is one quant block (32 weights). Per step the 64 threads dequantize the
// tile's 32 rows × 1 block (128 or 256 u32 words: 2 or 4 words per thread) into workgroup memory,
// stage the 32 tokens × 32 values of X beside it (16 per thread), then each thread does 4 × 4 × 32
// multiply-adds from registers: each weight is dequantized once per 32 tokens, where T calls of
// qmatvec dequantize it T times. Out-of-range rows and tokens stage 0 and store nothing; the
// control flow around the barriers is uniform. The k order is 0..K-1, as in the CPU reference.
// 64 threads: lavapipe and SwiftShader pay per barrier and per invocation (see qmatvec.wgsl).

// Shared WGSL: the host prepends shaders/quant_decode.wgsl (i8x4, u4x4).

const TR: u32 = 32u;   // weight rows per tile
const TT: u32 = 32u;   // tokens per tile
const BK: u32 = 32u;   // k per step = one block

struct Meta {
    t: u32,       // tokens T
    rows: u32,    // weight rows in this dispatch (a chunk of N)
    k: u32,       // row length K, a multiple of 32
    format: u32,  // 0 Q8_0, 1 Q4_0, 2 Q4_1
    ldy: u32,     // row stride of y (N)
    y0: u32,      // first column of y this chunk writes
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> scales: array<f32>;
@group(0) @binding(2) var<storage, read> mins: array<f32>;
@group(0) @binding(3) var<storage, read> qs: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> w_tile: array<f32, 1024>;  // [kk * 32 + row]
var<workgroup> x_tile: array<f32, 1024>;  // [kk * 32 + token]

fn put4(kk: u32, row: u32, v: vec4<f32>) {
    w_tile[kk * TR + row] = v.x;
    w_tile[(kk + 1u) * TR + row] = v.y;
    w_tile[(kk + 2u) * TR + row] = v.z;
    w_tile[(kk + 3u) * TR + row] = v.w;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r0 = wid.x * TR;
    let t0 = wid.y * TT;
    let tx = lid % 8u;
    let ty = lid / 8u;
    let nb = params.k / 32u;
    // Tokens of this thread that exist (ty + 8u < T − t0): a short prefill (T = 5) skips the
    // multiply-adds of the padding tokens instead of computing 32 and storing 5. No barrier
    // inside the loops it bounds, and lanes that share ty (lid / 8) share the bound.
    var nu = 0u;
    for (var u = 0u; u < 4u; u = u + 1u) {
        if (t0 + ty + 8u * u < params.t) {
            nu = u + 1u;
        }
    }

    var acc: array<array<f32, 4>, 4>;   // [u (token)][s (row)]
    for (var u = 0u; u < 4u; u = u + 1u) {
        for (var s = 0u; s < 4u; s = s + 1u) {
            acc[u][s] = 0.0;
        }
    }

    for (var b = 0u; b < nb; b = b + 1u) {
        // Stage the weight tile: rows r0 .. r0+31, block b, dequantized, k-major.
        if (params.format == 0u) {
            for (var i = lid; i < TR * 8u; i = i + 64u) {
                let row = i / 8u;
                let w = i % 8u;
                var v = vec4<f32>(0.0);
                if (r0 + row < params.rows) {
                    let blk = (r0 + row) * nb + b;
                    v = scales[blk] * i8x4(qs[blk * 8u + w]);
                }
                put4(4u * w, row, v);
            }
        } else {
            for (var i = lid; i < TR * 4u; i = i + 64u) {
                let row = i / 4u;
                let w = i % 4u;
                var lo = vec4<f32>(0.0);
                var hi = vec4<f32>(0.0);
                if (r0 + row < params.rows) {
                    let blk = (r0 + row) * nb + b;
                    let d = scales[blk];
                    let word = qs[blk * 4u + w];
                    if (params.format == 1u) {
                        lo = d * (u4x4(word, 0u) - vec4<f32>(8.0));
                        hi = d * (u4x4(word, 4u) - vec4<f32>(8.0));
                    } else {
                        let m = vec4<f32>(mins[blk]);
                        lo = d * u4x4(word, 0u) + m;
                        hi = d * u4x4(word, 4u) + m;
                    }
                }
                put4(4u * w, row, lo);
                put4(4u * w + 16u, row, hi);
            }
        }
        // Stage X: tokens t0 .. t0+31, columns 32b .. 32b+31, k-major (consecutive threads read
        // consecutive k of one token).
        for (var i = lid; i < TT * BK; i = i + 64u) {
            let tok = i / BK;
            let kk = i % BK;
            var v = 0.0;
            if (t0 + tok < params.t) {
                v = x[(t0 + tok) * params.k + b * BK + kk];
            }
            x_tile[kk * TT + tok] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            var wv: array<f32, 4>;
            var xv: array<f32, 4>;
            for (var s = 0u; s < 4u; s = s + 1u) {
                wv[s] = w_tile[kk * TR + tx + 8u * s];
                xv[s] = x_tile[kk * TT + ty + 8u * s];
            }
            for (var u = 0u; u < nu; u = u + 1u) {
                for (var s = 0u; s < 4u; s = s + 1u) {
                    acc[u][s] = acc[u][s] + xv[u] * wv[s];
                }
            }
        }
        workgroupBarrier();
    }

    for (var u = 0u; u < 4u; u = u + 1u) {
        let tok = t0 + ty + 8u * u;
        for (var s = 0u; s < 4u; s = s + 1u) {
            let row = r0 + tx + 8u * s;
            if (tok < params.t && row < params.rows) {
                y[tok * params.ldy + params.y0 + row] = acc[u][s];
            }
        }
    }
}
