// qmatvec_id.wgsl: expert-indexed matrix–vector products for mixture-of-experts layers, the
// expert of each product read on the GPU (no CPU plan, no readback).
//
//   for each pair p < pairs (p = t·top_k + s: token t, slot s) whose expert is in this binding:
//     e        = u32(ids[ids_offset + p]) − e_first        the expert the router chose (f32-coded)
//     y[p, r]  = Σ_{j<K} W[e·N + r, j] · x[p / x_div, j]    r < N, 0 ≤ e < n_experts
//   Experts that do not fit one storage binding together are split into groups (one binding and
//   one dispatch each, e_first = the group's first expert); a pair of another group's expert is
//   left untouched here and written by its group's dispatch.
//
//   W: (E·N, K): the E experts of one projection stacked by rows (expert e at rows e·N ..
//   (e+1)·N), F32, F16 (binary16 pairs packed in u32, widened with unpack2x16float: no
//   shader-f16 needed) or 32-weight blocks in the aligned split layout of qmatvec.wgsl
//   x: (rows, K) f32: x_div = top_k → one input row per token (gate/up of hs), x_div = 1 → one
//   per pair (down of the SwiGLU rows); y: (pairs, N) f32
//
// The idea is llama.cpp's `mul_mat_id` (ggml `GGML_OP_MUL_MAT_ID`; Vulkan
// `mul_mat_vec.comp` with MUL_MAT_ID, WebGPU `mul_mat_vec.wgsl`): the router's ids select the
// weight rows inside the kernel, so a whole sparse layer is recorded without knowing which
// experts run. Papers: Shazeer et al. arXiv 1701.06538; Mixtral arXiv 2401.04088.
// Dequantization as llama.cpp ggml-quants.c `dequantize_row_q8_0 / _q4_0 / _q4_1`:
//   Q8_0  w = d·q   Q4_0  w = d·(q − 8)   Q4_1  w = d·q + m   (nibble order as qmatvec.wgsl)
// Host side and CPU reference: crate/src/ops/qmatvec_id.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (32 bytes)
//   1  scales storage, read       array<f32>        (E·N·K/32)      quantized formats
//   2  mins   storage, read       array<f32>        (E·N·K/32)      Q4_1 (any f32 buffer otherwise)
//   3  qs     storage, read       array<u32>        (E·N·K/32·W)    quants; F32: the weights' bits (E·N·K);
//                                                                      F16: two halves per word, low first (E·N·K/2)
//   4  ids    storage, read       array<f32>        (≥ ids_offset + pairs)  expert ids as f32
//                                                    (router.wgsl's output: [w | idx])
//   5  x      storage, read       array<vec4<f32>>  (rows · K/4)
//   6  y      storage, read_write array<f32>        (pairs · N)
//
// Workgroup layout: as qmatvec.wgsl, 64 threads = 8 output rows × 8 threads, each thread striding
// over its row's quant words, a 3-step tree per row. Workgroup g (2-D grid, g = wid.y·gx + wid.x)
// serves pair g / G and rows (g % G)·8 .. +8 of it, G = ⌈N / 8⌉. Threads past the pairs or rows
// skip loads and stores but meet every barrier.

// Shared WGSL: the host prepends shaders/quant_decode.wgsl (i8x4, u4x4) and quant_row_dot.wgsl
// (`quant_row_dot`, the Q8_0 / Q4_0 / Q4_1 row loop shared with qmatvec).

const WG: u32 = 64u;
const TPR: u32 = 8u;
const ROWS: u32 = 8u;

struct Meta {
    n: u32,          // output rows per expert N
    k: u32,          // row length K (a multiple of 32)
    format: u32,     // 0 Q8_0, 1 Q4_0, 2 Q4_1, 3 F32, 4 F16
    pairs: u32,      // (token, slot) pairs = T·top_k
    x_div: u32,      // x row of pair p: p / x_div
    ids_offset: u32, // ids[ids_offset + p] is pair p's expert
    n_experts: u32,  // experts in this binding
    e_first: u32,    // the first of them
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> scales: array<f32>;
@group(0) @binding(2) var<storage, read> mins: array<f32>;
@group(0) @binding(3) var<storage, read> qs: array<u32>;
@group(0) @binding(4) var<storage, read> ids: array<f32>;
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = lid % TPR;
    let per_pair = (params.n + ROWS - 1u) / ROWS;
    let g = wid.y * groups.x + wid.x;
    let pair = g / per_pair;
    let row = (g % per_pair) * ROWS + lid / TPR;
    let nb = params.k / 32u;
    var live = pair < params.pairs && row < params.n;

    var acc = 0.0;
    if (live) {
        let eg = u32(ids[params.ids_offset + pair]);
        live = eg >= params.e_first && eg < params.e_first + params.n_experts;
        if (live) {
            let e = eg - params.e_first;
            let wrow = e * params.n + row;     // row of the stacked W
            let x0 = (pair / params.x_div) * (params.k / 4u);
            let b0 = wrow * nb;
            if (params.format <= 2u) {
                acc = quant_row_dot(params.format, b0, nb, t, x0);
            } else if (params.format == 4u) {
                // F16: row wrow at word wrow·K/2; two words (four halves) per vec4 of x.
                let w0 = wrow * (params.k / 2u);
                for (var i = t; i < params.k / 4u; i = i + TPR) {
                    let a = w0 + 2u * i;
                    let w = vec4<f32>(unpack2x16float(qs[a]), unpack2x16float(qs[a + 1u]));
                    acc = acc + dot(w, x[x0 + i]);
                }
            } else {
                // F32: qs holds the weights' bits, row wrow at wrow·K; one vec4 per step.
                let w0 = wrow * params.k;
                for (var i = t; i < params.k / 4u; i = i + TPR) {
                    let a = w0 + 4u * i;
                    let w = vec4<f32>(bitcast<f32>(qs[a]), bitcast<f32>(qs[a + 1u]), bitcast<f32>(qs[a + 2u]), bitcast<f32>(qs[a + 3u]));
                    acc = acc + dot(w, x[x0 + i]);
                }
            }
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
    if (live && t == 0u) {
        y[pair * params.n + row] = partial[lid];
    }
}
