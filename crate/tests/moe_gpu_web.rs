#![cfg(target_arch = "wasm32")]
//! Mixture-of-experts models on WebGPU in Chromium (`models::llama_gpu::GpuLlama`, SwiftShader where
//! there is no GPU; no adapter FAILS), in a dedicated worker as the page runs them: the
//! readback-free path (router → ops::qmatvec_id by the router's ids → SwiGLU → down by id →
//! moe_combine; Qwen2-MoE's shared expert with its sigmoid gate). Fixtures: the tiny Mixtral and
//! Qwen2-MoE checkpoints of tests/fixtures/moe/ (scripts/fixtures/make_moe_fixtures.py) embedded
//! in the test, with transformers' logits for a 7-token prefill and 3 decode steps: ours within
//! 1e-4, no router readback, and the routes (read back with the logits) equal to the CPU path's
//! experts with weights within 1e-5.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test moe_gpu_web`

use std::collections::BTreeMap;

use crucible::formats::{Checkpoint, MemFiles};
use crucible::gpu::GpuContext;
use crucible::models::llama_gpu::{GpuLlama, GpuLlamaOptions, MoeGpuPath};
use crucible::models::{KvCache, LlamaModel};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../tests/fixtures/moe/", $name, "/config.json")).as_slice(),
            include_bytes!(concat!("../../tests/fixtures/moe/", $name, "/model.safetensors")).as_slice(),
            [
                include_bytes!(concat!("../../tests/fixtures/moe/", $name, "/logits_prefill.f32")).as_slice(),
                include_bytes!(concat!("../../tests/fixtures/moe/", $name, "/logits_decode_0.f32")).as_slice(),
                include_bytes!(concat!("../../tests/fixtures/moe/", $name, "/logits_decode_1.f32")).as_slice(),
                include_bytes!(concat!("../../tests/fixtures/moe/", $name, "/logits_decode_2.f32")).as_slice(),
            ],
        )
    };
}

/// The token steps of every fixture (tests/fixtures/moe/manifest.json).
const STEPS: [&[u32]; 4] = [&[1, 17, 42, 99, 5, 63, 120], &[7], &[88], &[31]];

async fn check(name: &str, config: &[u8], weights: &[u8], logits: [&[u8]; 4], max_batch: usize) {
    let files = MemFiles { name: name.to_string(), files: BTreeMap::from([("config.json".to_string(), config.to_vec()), ("model.safetensors".to_string(), weights.to_vec())]) };
    let mut ckpt = Checkpoint::open(Box::new(files)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = LlamaModel::from_checkpoint(&mut ckpt).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ctx = GpuContext::new_default().await.unwrap_or_else(|e| panic!("GPU tests need a WebGPU adapter: {e}"));
    console_log!("adapter: {}", ctx.adapter_summary());
    let mut gpu = GpuLlama::new(ctx, &model, GpuLlamaOptions { max_context: 32, max_batch, ..Default::default() }).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(gpu.moe_path(), Some(&MoeGpuPath::ById), "{name}: experts by id");
    let mut cache = KvCache::new(&model.config);
    let (mut worst, mut routed) = (0.0f32, 0usize);
    for (step, (toks, want)) in STEPS.iter().zip(logits).enumerate() {
        let got = gpu.forward(toks).await.unwrap_or_else(|e| panic!("{name} step {step}: {e}"));
        let want: Vec<f32> = want.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(got.len(), want.len(), "{name} step {step}");
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-4, "{name} step {step}: max |GPU − transformers| = {d:e} > 1e-4");
        worst = worst.max(d);
        let (_, trace) = model.forward_traced(toks, &mut cache).unwrap();
        assert_eq!(gpu.routes().len(), trace.len(), "{name} step {step}: routed tokens");
        for (t, (g, c)) in gpu.routes().iter().zip(&trace).enumerate() {
            for (layer, (gl, cl)) in g.iter().zip(c).enumerate() {
                let ge: Vec<usize> = gl.iter().map(|x| x.expert).collect();
                let ce: Vec<usize> = cl.iter().map(|x| x.expert).collect();
                assert_eq!(ge, ce, "{name} step {step} token {t} layer {layer}: experts");
                for (a, b) in gl.iter().zip(cl) {
                    assert!((a.weight - b.weight).abs() <= 1e-5, "{name} step {step} token {t} layer {layer}: weight {} vs {}", a.weight, b.weight);
                }
                routed += gl.len();
            }
        }
    }
    assert!(routed > 0, "{name}: no expert choices compared");
    assert_eq!(gpu.router_readbacks(), 0, "{name}: router readbacks on the by-id path");
    console_log!("{name} max_batch {max_batch}: max |GPU − transformers| = {worst:.2e}, {routed} expert choices equal to the CPU's, 0 router readbacks");
}

#[wasm_bindgen_test]
async fn tiny_mixtral_by_id_matches_transformers_in_the_browser() {
    let (n, c, w, l) = fixture!("mixtral");
    check(n, c, w, l, 32).await;
    check(n, c, w, l, 1).await;
}

#[wasm_bindgen_test]
async fn tiny_qwen2_moe_by_id_matches_transformers_in_the_browser() {
    let (n, c, w, l) = fixture!("qwen2_moe");
    check(n, c, w, l, 32).await;
}
