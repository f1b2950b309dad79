//! F16-weight kernels (ops::hmatvec, ops::hmatmul, the F16 embedding gather) against their CPU
//! references in Chromium: wgpu's WebGPU backend over `navigator.gpu` (SwiftShader without a GPU,
//! which lacks shader-f16: the packed `unpack2x16float` variant runs; the `enable f16;` one too
//! where the adapter has the feature), in a dedicated worker as the page runs it. No adapter
//! FAILS. Tolerances: crate/tests/f16_common/mod.rs.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test f16_kernels_web`
#![cfg(target_arch = "wasm32")]

mod f16_common;
mod gpu_common;

use f16_common::*;
use gpu_common::ctx;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen_test]
async fn f16_kernels_match_reference() {
    let ctx = ctx().await;
    let mut report = String::new();
    for v in variants(&ctx) {
        report += &hmatvec_cases(&ctx, v).await;
        report += &hmatmul_cases(&ctx, v).await;
    }
    report += &embed_f16_case(&ctx).await;
    console_log!("{report}");
}
