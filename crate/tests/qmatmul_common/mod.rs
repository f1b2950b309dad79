//! qmatmul checks shared by crate/tests/qmatmul_native.rs (lavapipe) and
//! crate/tests/qmatmul_web.rs (Chromium + SwiftShader): Y = X · Wᵀ for Q8_0 / Q4_0 / Q4_1 weights
//! against the CPU reference and against T GPU calls of qmatvec, on seeded data.
//!
//! Tolerance (both comparisons): the GPU and the reference each sum K products in f32 in column
//! order; either may fuse a multiply-add or `d·q + m` (one rounding fewer per step), so each is
//! within K·ε·Σ|w·x| (+ ε·Σ|w·x| for the dequantization) of the exact sum: |a − b| ≤
//! 2(K + 2)·ε·Σ_j |w_j · x_j| with w the dequantized weights.

#![allow(dead_code)]

use crucible::gpu::GpuContext;
use crucible::ops::{qmatmul, qmatvec};
use crucible::tensor::quant::{BlockFormat, SplitBlocks, quantize};

use crate::gpu_common::{EPS, data};

fn weight(f: BlockFormat, n: usize, k: usize) -> (SplitBlocks, Vec<f32>) {
    let w = data(31 + (n * 7 + k) as u64, n * k, 0.5);
    let mut bytes = Vec::new();
    quantize(f, &w, &mut bytes).unwrap();
    let s = SplitBlocks::from_blocks(f, &bytes).unwrap();
    let mut deq = Vec::new();
    s.dequantize(&mut deq).unwrap();
    (s, deq)
}

fn tol(deq: &[f32], x: &[f32], k: usize, ti: usize, r: usize) -> f64 {
    let s: f64 = (0..k).map(|j| (deq[r * k + j] as f64 * x[ti * k + j] as f64).abs()).sum();
    2.0 * (k as f64 + 2.0) * EPS * s + 1e-30
}

/// GPU qmatmul (t, n, k) in `f` against the reference; returns the worst |Δ| / tol seen.
pub async fn check_qmatmul(ctx: &GpuContext, f: BlockFormat, t: usize, n: usize, k: usize, max_chunk_rows: Option<usize>) -> f64 {
    let (w, deq) = weight(f, n, k);
    let x = data(5 + (t * 3 + k) as u64, t * k, 2.0);
    let p = qmatmul::QMatmulParams { t, n, k, max_chunk_rows };
    let gpu = qmatmul::qmatmul(ctx, &w, &x, &p)
        .await
        .unwrap_or_else(|e| panic!("qmatmul {f} (T={t}, N={n}, K={k}) failed on the GPU: {e}"));
    let cpu = qmatmul::reference(&w, &p, &x).unwrap();
    assert_eq!(gpu.len(), t * n, "qmatmul {f} (T={t}, N={n}, K={k}): output length");
    let mut worst = 0.0f64;
    for ti in 0..t {
        for r in 0..n {
            let i = ti * n + r;
            let tl = tol(&deq, &x, k, ti, r);
            let diff = (gpu[i] as f64 - cpu[i] as f64).abs();
            assert!(
                diff <= tl,
                "qmatmul {f} (T={t}, N={n}, K={k}, chunk {max_chunk_rows:?}) at token {ti} row {r}: gpu {} cpu {} |diff| {diff:e} > tol {tl:e}",
                gpu[i],
                cpu[i]
            );
            worst = worst.max(diff / tl);
        }
    }
    worst
}

/// GPU qmatmul against T GPU calls of qmatvec (one per token) on the same weight.
pub async fn check_qmatmul_vs_qmatvec(ctx: &GpuContext, f: BlockFormat, t: usize, n: usize, k: usize) {
    let (w, deq) = weight(f, n, k);
    let x = data(77 + (t + n + k) as u64, t * k, 1.5);
    let p = qmatmul::QMatmulParams { t, n, k, max_chunk_rows: None };
    let mm = qmatmul::qmatmul(ctx, &w, &x, &p).await.unwrap_or_else(|e| panic!("qmatmul {f}: {e}"));
    for ti in 0..t {
        let mv = qmatvec::qmatvec(ctx, &w, &x[ti * k..(ti + 1) * k], &qmatvec::QMatvecParams { n, k, max_chunk_rows: None })
            .await
            .unwrap_or_else(|e| panic!("qmatvec {f}: {e}"));
        for r in 0..n {
            let tl = 2.0 * tol(&deq, &x, k, ti, r);
            let diff = (mm[ti * n + r] as f64 - mv[r] as f64).abs();
            assert!(diff <= tl, "qmatmul vs qmatvec {f} (T={t}, N={n}, K={k}) at token {ti} row {r}: {} vs {} |diff| {diff:e} > {tl:e}", mm[ti * n + r], mv[r]);
        }
    }
}

/// The cases both test files run: every format; T below, at and past a 32-token tile; N not a
/// multiple of the 32-row tile; K of one block and of SmolLM2's hidden size; a chunked weight.
pub async fn qmatmul_cases(ctx: &GpuContext) -> String {
    let mut report = Vec::new();
    for f in BlockFormat::ALL {
        for &(t, n, k, chunk) in &[(1, 37, 32, None), (5, 64, 96, None), (33, 70, 576, None), (40, 100, 64, Some(40)), (3, 9, 32, Some(4))] {
            let worst = check_qmatmul(ctx, f, t, n, k, chunk).await;
            report.push(format!("{f} T={t} N={n} K={k} chunk={chunk:?}: max |Δ|/tol {worst:.2e}"));
        }
        check_qmatmul_vs_qmatvec(ctx, f, 6, 48, 128).await;
    }
    report.join("\n")
}
