//! GPU kernels against their CPU references in Chromium: wgpu's WebGPU backend over
//! `navigator.gpu` (SwiftShader on machines without a GPU), run in a dedicated Web Worker as the
//! page runs them. No adapter FAILS these tests (Chromium needs `--enable-unsafe-webgpu`, set in
//! crate/webdriver.json).
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test gpu_web`
//! (.cargo/config.toml makes `wasm-bindgen-test-runner` the runner).
#![cfg(target_arch = "wasm32")]

mod gpu_common;

use gpu_common::*;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);


#[wasm_bindgen_test]
async fn adapter_is_found_and_reports_limits() {
    let ctx = ctx().await;
    assert_eq!(ctx.adapter_info.backend, wgpu::Backend::BrowserWebGpu);
    assert!(ctx.limits.max_storage_buffer_binding_size >= 1 << 20);
    assert!(
        ctx.limits.max_compute_invocations_per_workgroup >= 256,
        "kernels use 256 threads"
    );
}

#[wasm_bindgen_test]
async fn weighted_sum_matches_reference() {
    let ctx = ctx().await;
    weighted_sum_cases(&ctx).await;
}

#[wasm_bindgen_test]
async fn weighted_sum_on_a_2d_grid() {
    let ctx = ctx().await;
    weighted_sum_2d_grid(&ctx).await;
}

#[wasm_bindgen_test]
async fn rmsnorm_matches_reference() {
    let ctx = ctx().await;
    rmsnorm_cases(&ctx).await;
}

#[wasm_bindgen_test]
async fn matmul_matches_reference() {
    let ctx = ctx().await;
    matmul_cases(&ctx).await;
}

#[wasm_bindgen_test]
async fn matvec_matches_reference() {
    let ctx = ctx().await;
    matvec_cases(&ctx).await;
}

#[wasm_bindgen_test]
async fn ops_chain_on_gpu_resident_buffers() {
    let ctx = ctx().await;
    chained_rmsnorm_matmul(&ctx).await;
}

#[wasm_bindgen_test]
async fn buffer_pool_reuses_buffers_across_calls() {
    let ctx = ctx().await;
    check_weighted_sum(&ctx, 3000, &[1.0, 1.0], true, None).await;
    let first = ctx.pool_stats();
    check_weighted_sum(&ctx, 2900, &[1.0, 1.0], true, None).await;
    let second = ctx.pool_stats();
    assert_eq!(second.created, first.created, "{first:?} → {second:?}");
    assert!(second.reused > first.reused);
}

#[wasm_bindgen_test]
async fn qmatvec_matches_reference() {
    let ctx = ctx().await;
    qmatvec_cases(&ctx).await;
    qmatvec_vs_dequantized_matmul(&ctx).await;
}
