//! Reading the reference fixtures (tests/fixtures/: little-endian f32 logits written by the
//! scripts in scripts/fixtures/, token lists in their manifest.json) and comparing logits: shared
//! by the model tests (llama_reference, moe_reference, llama_gpu, moe_gpu, f16_model,
//! qwen2moe_gguf).

#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

/// A file of little-endian f32 (a fixture's logits), or a failing test naming the file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// A manifest's JSON array of token ids.
pub fn tokens(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// max |a − b| over two equal-length slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
