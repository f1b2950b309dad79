// quant_decode.wgsl: unpacking GGUF quant words (llama.cpp ggml-common.h `block_q8_0`,
// `block_q4_0`, `block_q4_1`, in the split layout of crate/src/tensor/quant.rs `SplitBlocks`:
// a block's quant bytes unchanged, little-endian u32 words). Not a kernel: the host prepends it
// to every kernel that reads quant blocks (ops::qmatvec, ops::qmatmul, ops::qmatvec_id; see
// `ops::QUANT_DECODE`).

// The four bytes of `word` as i8 (sign-extended), in byte order.
fn i8x4(word: u32) -> vec4<f32> {
    let s = bitcast<i32>(word);
    return vec4<f32>(vec4<i32>(
        extractBits(s, 0u, 8u),
        extractBits(s, 8u, 8u),
        extractBits(s, 16u, 8u),
        extractBits(s, 24u, 8u),
    ));
}

// The low nibbles (shift 0) or high nibbles (shift 4) of the four bytes of `word`.
fn u4x4(word: u32, shift: u32) -> vec4<f32> {
    let v = (vec4<u32>(word) >> (vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(shift))) & vec4<u32>(0xFu);
    return vec4<f32>(v);
}
