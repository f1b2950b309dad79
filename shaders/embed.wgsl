// embed.wgsl: embedding gather, out[t, :] = E[tokens[t], :], from an f32 or F16 table or from quantized
// rows (Q8_0 / Q4_0 / Q4_1 in the aligned split layout), dequantized in the kernel.
//
//   out[t, j] = E[tok[t] − row0, j]   for the tokens whose row lies in this chunk [row0, row0 + rows)
//
// Math: `nn.Embedding` (HF transformers `LlamaModel.embed_tokens`); dequantization as llama.cpp
// ggml-quants.c `dequantize_row_q8_0 / _q4_0 / _q4_1` (same formulas as shaders/qmatvec.wgsl):
//   Q8_0  w = d·q            q: i8, weight k of a block is byte k
//   Q4_0  w = d·(q − 8)      q: u4, weight k < 16 the low nibble of byte k, k + 16 its high nibble
//   Q4_1  w = d·q + m
// Host side and CPU reference: crate/src/ops/embed.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (32 bytes)
//   1  tok    storage, read       array<u32>  (T)              token ids
//   2  scales storage, read       array<f32>  (rows · H/32)    block scales (any f32 buffer for F32)
//   3  mins   storage, read       array<f32>  (rows · H/32)    Q4_1 mins (any f32 buffer otherwise)
//   4  table  storage, read       array<u32>  F32: (rows · H) f32 bits; F16: ⌈rows · H / 2⌉ words of
//                                             two binary16 each; quantized: (rows · H/32 · W)
//                                             quant words, W = 8 (Q8_0) or 4 (Q4_*)
//   5  out    storage, read_write array<f32>  (T · H)
//
// Workgroup layout: 256 threads, one output element each, 2-D grid over T · H elements. A table
// larger than one storage binding is split by rows: one dispatch per chunk, each writing only the
// tokens it holds (tokens are validated on the host, so every row is written by exactly one chunk).

const WG: u32 = 256u;

struct Meta {
    t: u32,       // tokens
    h: u32,       // row length H (a multiple of 32 for quantized tables)
    row0: u32,    // first table row in this chunk
    rows: u32,    // rows in this chunk
    format: u32,  // 0 Q8_0, 1 Q4_0, 2 Q4_1, 3 F32, 4 F16
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> tok: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
@group(0) @binding(3) var<storage, read> mins: array<f32>;
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lid;
    if (i >= params.t * params.h) {
        return;
    }
    let t = i / params.h;
    let j = i % params.h;
    let id = tok[t];
    if (id < params.row0 || id >= params.row0 + params.rows) {
        return;
    }
    let r = id - params.row0;
    if (params.format == 3u) {
        out[i] = bitcast<f32>(table[r * params.h + j]);
        return;
    }
    if (params.format == 4u) {
        // element e = r·H + j is half e % 2 of word e / 2 (little-endian: the low half first,
        // as unpack2x16float's .x); chunks start at an even element (multiples of 64 rows).
        let e = r * params.h + j;
        out[i] = unpack2x16float(table[e / 2u])[e % 2u];
        return;
    }
    let b = r * (params.h / 32u) + j / 32u;   // block
    let k = j % 32u;                          // weight within the block
    let d = scales[b];
    if (params.format == 0u) {
        let word = bitcast<i32>(table[b * 8u + k / 4u]);
        out[i] = d * f32(extractBits(word, 8u * (k % 4u), 8u));
    } else {
        let kk = k % 16u;
        let word = table[b * 4u + kk / 4u];
        let q = f32((word >> (8u * (kk % 4u) + 4u * (k / 16u))) & 0xFu);
        if (params.format == 1u) {
            out[i] = d * (q - 8.0);
        } else {
            out[i] = d * q + mins[b];
        }
    }
}
