//! F16-weight kernel checks shared by crate/tests/f16_kernels_native.rs (lavapipe) and
//! crate/tests/f16_kernels_web.rs (Chromium + SwiftShader): `ops::hmatvec`, `ops::hmatmul` (both
//! variants: `enable f16;` where the device has shader-f16, and the packed u32 +
//! `unpack2x16float` fallback, always run) and the F16 embedding gather, against their CPU
//! references.
//!
//! Tolerance (stated per output): both sides widen every f16 exactly and compute in f32; only the
//! summation order (and fused multiply-adds) differ, so |gpu − ref| ≤ 2·K·ε·Σ_j |w_j·x_j| (ε =
//! 2⁻²³; the classic γ_K bound for two different orders) + 2⁻¹⁴·Σ_{w_j subnormal} |x_j| (a device
//! may flush f16 subnormals to zero: the weights include some on purpose). The gather is exact.

#![allow(dead_code)]

use crucible::gpu::GpuContext;
use crucible::ops::embed::{self, EmbedTable};
use crucible::ops::hmatmul::{self, HMatmulParams};
use crucible::ops::hmatvec::{self, HMatvecParams, HalfVariant};

use crate::gpu_common::{EPS, data};

/// n·k binary16 weights from seeded data in [-2, 2), with special values sprinkled in: ±0,
/// subnormals (smallest 0x0001, largest 0x03FF), ±65504, ±1.
pub fn weights(seed: u64, len: usize) -> Vec<u16> {
    let specials = [0x0000u16, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00];
    data(seed, len, 2.0)
        .iter()
        .enumerate()
        .map(|(i, &v)| if i % 13 == 5 { specials[(i / 13) % specials.len()] } else { half::f16::from_f32(v).to_bits() })
        .collect()
}

fn widen(h: u16) -> f64 {
    half::f16::from_bits(h).to_f64()
}

/// The stated bound for one output: row `wr` dotted with `xr`.
fn bound(wr: &[u16], xr: &[f32]) -> f64 {
    let k = wr.len() as f64;
    let abs: f64 = wr.iter().zip(xr).map(|(&h, &x)| (widen(h) * x as f64).abs()).sum();
    let sub: f64 = wr.iter().zip(xr).filter(|(h, _)| (**h & 0x7C00) == 0 && (**h & 0x03FF) != 0).map(|(_, &x)| (x as f64).abs()).sum();
    2.0 * k * EPS * abs + 2f64.powi(-14) * sub + 1e-30
}

/// The variants this device runs: the packed fallback always, `enable f16;` with shader-f16.
pub fn variants(ctx: &GpuContext) -> Vec<HalfVariant> {
    let mut v = vec![HalfVariant::Packed];
    if HalfVariant::of(ctx) == HalfVariant::F16 {
        v.push(HalfVariant::F16);
    }
    v
}

/// hmatvec vs reference over shapes (N, K, chunk cap) for `v`; returns a report line per case.
pub async fn hmatvec_cases(ctx: &GpuContext, v: HalfVariant) -> String {
    let mut report = String::new();
    for (case, &(n, k, cap)) in [(1usize, 4usize, None), (37, 576, None), (200, 64, Some(64usize)), (130, 1536, Some(64)), (9, 12, Some(4))].iter().enumerate() {
        let w = weights(10 + case as u64, n * k);
        let x = data(100 + case as u64, k, 1.5);
        let want = hmatvec::reference(&w, n, k, &x).unwrap();
        let got = hmatvec::hmatvec(ctx, v, &w, &x, &HMatvecParams { n, k, max_chunk_rows: cap }).await.unwrap_or_else(|e| panic!("hmatvec {v:?} ({n}, {k}): {e}"));
        assert_eq!(got.len(), n);
        let mut worst = 0.0f64;
        for r in 0..n {
            let (d, b) = ((got[r] as f64 - want[r] as f64).abs(), bound(&w[r * k..(r + 1) * k], &x));
            assert!(d <= b, "hmatvec {v:?} (N={n}, K={k}, cap {cap:?}) row {r}: gpu {} ref {} |diff| {d:e} > bound {b:e}", got[r], want[r]);
            worst = worst.max(d / b);
        }
        report += &format!("hmatvec {v:?} N={n} K={k} cap {cap:?}: max |diff| / bound = {worst:.3}\n");
    }
    report
}

/// hmatmul vs reference over shapes (M, N, K, chunk cap) for `v`.
pub async fn hmatmul_cases(ctx: &GpuContext, v: HalfVariant) -> String {
    let mut report = String::new();
    for (case, &(m, n, k, cap)) in [(1usize, 3usize, 4usize, None), (5, 37, 64, None), (70, 130, 576, Some(64usize)), (33, 65, 20, Some(7))].iter().enumerate() {
        let w = weights(20 + case as u64, n * k);
        let x = data(200 + case as u64, m * k, 1.5);
        let p = HMatmulParams { m, n, k, max_chunk_rows: cap };
        let want = hmatmul::reference(&x, &w, &p).unwrap();
        let got = hmatmul::hmatmul(ctx, v, &x, &w, &p).await.unwrap_or_else(|e| panic!("hmatmul {v:?} ({m}, {n}, {k}): {e}"));
        assert_eq!(got.len(), m * n);
        let mut worst = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let (g, r) = (got[i * n + j] as f64, want[i * n + j] as f64);
                let b = bound(&w[j * k..(j + 1) * k], &x[i * k..(i + 1) * k]);
                assert!((g - r).abs() <= b, "hmatmul {v:?} (M={m}, N={n}, K={k}, cap {cap:?}) [{i}, {j}]: gpu {g} ref {r} > bound {b:e}");
                worst = worst.max((g - r).abs() / b);
            }
        }
        report += &format!("hmatmul {v:?} M={m} N={n} K={k} cap {cap:?}: max |diff| / bound = {worst:.3}\n");
    }
    report
}

/// The F16 embedding gather (any H, chunked) equals the reference bit for bit.
pub async fn embed_f16_case(ctx: &GpuContext) -> String {
    let mut report = String::new();
    for (vocab, h, cap) in [(300usize, 6usize, Some(64usize)), (50, 64, None), (129, 3, Some(64))] {
        let w = weights(30 + h as u64, vocab * h);
        let tokens: Vec<u32> = [0, vocab - 1, 64, 7, 128, 3].iter().map(|&t| (t % vocab) as u32).collect();
        let want = embed::reference(EmbedTable::F16(&w), vocab, h, &tokens).unwrap();
        let got = embed::embed(ctx, EmbedTable::F16(&w), vocab, h, &tokens, cap).await.unwrap();
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            // subnormal weights may be flushed (module docs); everything else is exact
            let flushed = *g == 0.0 && r.abs() < 2f32.powi(-14);
            assert!(g.to_bits() == r.to_bits() || flushed, "embed F16 (vocab {vocab}, H {h}) element {i}: gpu {g} ref {r}");
        }
        report += &format!("embed F16 vocab={vocab} H={h} cap {cap:?}: equal\n");
    }
    report
}
