#![cfg(target_arch = "wasm32")]
//! The Llama-family forward on WebGPU in Chromium (`models::llama_gpu::GpuLlama` through wgpu's
//! WebGPU backend, SwiftShader where there is no GPU; no adapter FAILS), in a dedicated worker as
//! the page runs it: the async logits readback path. Fixtures: two tiny checkpoints of
//! tests/fixtures/llama/ (scripts/fixtures/make_llama_fixtures.py) embedded in the test, their
//! transformers logits for a 7-token prefill and 3 decode steps; ours within 1e-4.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test llama_gpu_web`

use std::collections::BTreeMap;

use crucible::formats::{Checkpoint, MemFiles};
use crucible::gpu::GpuContext;
use crucible::models::LlamaModel;
use crucible::models::llama_gpu::{GpuLlama, GpuLlamaOptions};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../tests/fixtures/llama/", $name, "/config.json")).as_slice(),
            include_bytes!(concat!("../../tests/fixtures/llama/", $name, "/model.safetensors")).as_slice(),
            [
                include_bytes!(concat!("../../tests/fixtures/llama/", $name, "/logits_prefill.f32")).as_slice(),
                include_bytes!(concat!("../../tests/fixtures/llama/", $name, "/logits_decode_0.f32")).as_slice(),
                include_bytes!(concat!("../../tests/fixtures/llama/", $name, "/logits_decode_1.f32")).as_slice(),
                include_bytes!(concat!("../../tests/fixtures/llama/", $name, "/logits_decode_2.f32")).as_slice(),
            ],
        )
    };
}

/// The token steps of every fixture (tests/fixtures/llama/manifest.json).
const STEPS: [&[u32]; 4] = [&[1, 17, 42, 99, 5, 63, 120], &[7], &[88], &[31]];

async fn check(name: &str, config: &[u8], weights: &[u8], logits: [&[u8]; 4], opts: GpuLlamaOptions) {
    let files = MemFiles { name: name.to_string(), files: BTreeMap::from([("config.json".to_string(), config.to_vec()), ("model.safetensors".to_string(), weights.to_vec())]) };
    let mut ckpt = Checkpoint::open(Box::new(files)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = LlamaModel::from_checkpoint(&mut ckpt).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ctx = GpuContext::new_default().await.unwrap_or_else(|e| panic!("GPU tests need a WebGPU adapter: {e}"));
    console_log!("adapter: {}", ctx.adapter_summary());
    let mut gpu = GpuLlama::new(ctx, &model, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut worst = 0.0f32;
    for (step, (toks, want)) in STEPS.iter().zip(logits).enumerate() {
        let got = gpu.forward(toks).await.unwrap_or_else(|e| panic!("{name} step {step}: {e}"));
        let want: Vec<f32> = want.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(got.len(), want.len(), "{name} step {step}");
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-4, "{name} step {step}: max |GPU − transformers| = {d:e} > 1e-4");
        worst = worst.max(d);
    }
    console_log!("{name}: max |GPU − transformers| = {worst:.2e}");
}

#[wasm_bindgen_test]
async fn tiny_llama_tied_matches_transformers_in_the_browser() {
    let (n, c, w, l) = fixture!("llama_tied");
    check(n, c, w, l, GpuLlamaOptions { max_context: 16, max_batch: 4, decode_splits: Some(2), max_chunk_rows: None }).await;
}

#[wasm_bindgen_test]
async fn tiny_qwen2_yarn_window_matches_transformers_in_the_browser() {
    let (n, c, w, l) = fixture!("qwen2_yarn");
    check(n, c, w, l, GpuLlamaOptions { max_context: 16, ..Default::default() }).await;
    let (n, c, w, l) = fixture!("mistral_window");
    check(n, c, w, l, GpuLlamaOptions { max_context: 16, max_batch: 1, decode_splits: None, max_chunk_rows: Some(64) }).await;
}
