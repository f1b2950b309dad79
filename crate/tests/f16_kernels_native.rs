//! F16-weight kernels (ops::hmatvec, ops::hmatmul, the F16 embedding gather) against their CPU
//! references natively through wgpu (Mesa lavapipe where there is no GPU; it has shader-f16, so
//! both variants run there: `enable f16;` and the packed fallback, forced by naming it). No
//! adapter FAILS. Tolerances: crate/tests/f16_common/mod.rs.
//!
//! Run: `XDG_RUNTIME_DIR=/tmp cargo test -p crucible --test f16_kernels_native -- --nocapture`
#![cfg(not(target_arch = "wasm32"))]

mod f16_common;
mod gpu_common;

use crucible::ops::hmatvec::{self, HMatvecParams, HalfVariant};
use f16_common::*;
use gpu_common::ctx;

#[test]
fn hmatvec_both_variants_match_reference() {
    let ctx = ctx();
    let vs = variants(&ctx);
    if ctx.adapter_info.name.contains("llvmpipe") {
        assert!(vs.contains(&HalfVariant::F16), "lavapipe offers shader-f16; the f16 variant must be tested: {}", ctx.adapter_summary());
    }
    for v in vs {
        println!("{}", pollster::block_on(hmatvec_cases(&ctx, v)));
    }
}

#[test]
fn hmatmul_both_variants_match_reference() {
    let ctx = ctx();
    for v in variants(&ctx) {
        println!("{}", pollster::block_on(hmatmul_cases(&ctx, v)));
    }
}

#[test]
fn embed_f16_matches_reference() {
    let ctx = ctx();
    println!("{}", pollster::block_on(embed_f16_case(&ctx)));
}

#[test]
fn hmatvec_errors_are_values() {
    let ctx = ctx();
    let e = pollster::block_on(hmatvec::hmatvec(&ctx, HalfVariant::Packed, &[0; 12], &[0.0; 6], &HMatvecParams { n: 2, k: 6, max_chunk_rows: None })).unwrap_err().to_string();
    assert!(e.contains("K = 6 must be a positive multiple of 4"), "{e}");
}
