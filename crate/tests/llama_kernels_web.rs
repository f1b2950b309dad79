#![cfg(target_arch = "wasm32")]
//! The Llama-forward kernels against their CPU references in Chromium (wgpu's WebGPU backend over
//! `navigator.gpu`, SwiftShader on machines without a GPU), in a dedicated worker as the page runs
//! them. No adapter FAILS these tests.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test llama_kernels_web`

mod gpu_common;
mod llama_kernels;

use gpu_common::ctx;
use llama_kernels::*;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);


#[wasm_bindgen_test]
async fn add_matches_reference() {
    add_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn swiglu_matches_reference() {
    swiglu_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn embed_matches_reference() {
    embed_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn rope_matches_reference_for_every_scaling_and_layout() {
    rope_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn attention_prefill_and_split_k_decode_match_reference() {
    attention_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn kv_cache_on_the_gpu_appends_and_serves_decode() {
    kv_cache_cases(&ctx().await).await;
}
