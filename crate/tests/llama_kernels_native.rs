#![cfg(not(target_arch = "wasm32"))]
//! The Llama-forward kernels (add, swiglu, embed, rope, attention + split-K reduce, the GPU KV
//! cache) against their CPU references natively through wgpu (Vulkan: Mesa lavapipe on machines
//! without a GPU). No adapter FAILS these tests (install `mesa-vulkan-drivers`).
//!
//! Run: `XDG_RUNTIME_DIR=/tmp cargo test -p crucible --test llama_kernels_native -- --nocapture`

mod gpu_common;
mod llama_kernels;

use gpu_common::ctx;
use llama_kernels::*;


#[test]
fn add_matches_reference() {
    pollster::block_on(add_cases(&ctx()));
}

#[test]
fn swiglu_matches_reference() {
    pollster::block_on(swiglu_cases(&ctx()));
}

#[test]
fn embed_matches_reference() {
    pollster::block_on(embed_cases(&ctx()));
}

#[test]
fn rope_matches_reference_for_every_scaling_and_layout() {
    pollster::block_on(rope_cases(&ctx()));
}

#[test]
fn attention_prefill_and_split_k_decode_match_reference() {
    pollster::block_on(attention_cases(&ctx()));
}

#[test]
fn kv_cache_on_the_gpu_appends_and_serves_decode() {
    pollster::block_on(kv_cache_cases(&ctx()));
}
