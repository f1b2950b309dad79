//! qmatmul (quantized Y = X · Wᵀ, shaders/qmatmul.wgsl) against its CPU reference and against
//! qmatvec in Chromium: wgpu's WebGPU backend over `navigator.gpu` (SwiftShader without a GPU),
//! in a dedicated worker as the page runs it. No adapter FAILS.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test qmatmul_web`
#![cfg(target_arch = "wasm32")]

mod gpu_common;
mod qmatmul_common;

use gpu_common::ctx;
use qmatmul_common::*;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen_test]
async fn qmatmul_matches_reference_and_qmatvec() {
    let ctx = ctx().await;
    let report = qmatmul_cases(&ctx).await;
    console_log!("{report}");
}
