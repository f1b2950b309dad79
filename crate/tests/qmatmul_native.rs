//! qmatmul (quantized Y = X · Wᵀ, shaders/qmatmul.wgsl) against its CPU reference and against
//! qmatvec, natively through wgpu (Mesa lavapipe on machines without a GPU). No adapter FAILS.
//!
//! Run: `XDG_RUNTIME_DIR=/tmp cargo test -p crucible --test qmatmul_native -- --nocapture`
#![cfg(not(target_arch = "wasm32"))]

mod gpu_common;
mod qmatmul_common;

use crucible::ops::qmatmul;
use crucible::tensor::quant::BlockFormat;
use gpu_common::ctx;
use qmatmul_common::*;


#[test]
fn qmatmul_matches_reference_and_qmatvec() {
    let ctx = ctx();
    let report = pollster::block_on(qmatmul_cases(&ctx));
    println!("{report}");
}

#[test]
fn qmatmul_shape_errors_are_values() {
    let ctx = ctx();
    let p = qmatmul::QMatmulParams { t: 2, n: 3, k: 32, max_chunk_rows: None };
    let mut bytes = Vec::new();
    crucible::tensor::quant::quantize(BlockFormat::Q4_1, &[0.25; 64], &mut bytes).unwrap();
    let w = crucible::tensor::quant::SplitBlocks::from_blocks(BlockFormat::Q4_1, &bytes).unwrap();
    let e = pollster::block_on(qmatmul::qmatmul(&ctx, &w, &[0.0; 64], &p)).unwrap_err().to_string();
    assert!(e.contains("qmatmul") && e.contains("expected (N=3)"), "{e}");
    let e = pollster::block_on(qmatmul::qmatmul(&ctx, &w, &[0.0; 63], &qmatmul::QMatmulParams { n: 2, ..p })).unwrap_err().to_string();
    assert!(e.contains("X has 63 elements"), "{e}");
}

