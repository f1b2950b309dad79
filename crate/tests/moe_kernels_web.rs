#![cfg(target_arch = "wasm32")]
//! The mixture-of-experts kernels (router softmax/top-k, gather, weighted scatter-add, experts by
//! id `qmatvec_id`, `moe_combine`) against
//! their CPU references in Chromium (wgpu's WebGPU backend, SwiftShader on machines without a
//! GPU), in a dedicated worker as the page runs them. No adapter FAILS these tests.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test moe_kernels_web`

mod gpu_common;
mod moe_kernels;

use gpu_common::ctx;
use moe_kernels::*;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);


#[wasm_bindgen_test]
async fn router_matches_reference_for_both_conventions_and_ties() {
    router_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn gather_matches_reference() {
    gather_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn scatter_add_matches_reference() {
    scatter_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn qmatvec_id_matches_reference_for_every_format() {
    qmatvec_id_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn moe_combine_matches_reference() {
    moe_combine_cases(&ctx().await).await;
}

#[wasm_bindgen_test]
async fn qmatvec_id_on_a_2d_grid() {
    qmatvec_id_2d_grid_case(&ctx().await).await;
}
