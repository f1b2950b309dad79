//! Checks of the mixture-of-experts kernels (router softmax/top-k, per-expert gather, weighted
//! and sigmoid-gated scatter-add) against their CPU references, shared by
//! crate/tests/moe_kernels_native.rs (lavapipe) and crate/tests/moe_kernels_web.rs (Chromium +
//! SwiftShader). Data: seeded pseudo-random (`gpu_common::data`).

#![allow(dead_code)]

use crucible::gpu::GpuContext;
use crucible::models::MoeStyle;
use crucible::models::moe::ExpertChoice;
use crucible::ops::{moe, router};

use crate::gpu_common::data;

/// Experts must match exactly (in order); weights within 1e-6 absolute (they are ≤ 1; the GPU
/// exp is a few ulp off the CPU's, and a sum of ≤ E terms adds E ulp).
fn check_choices(label: &str, gpu: &[Vec<ExpertChoice>], cpu: &[Vec<ExpertChoice>]) {
    assert_eq!(gpu.len(), cpu.len(), "{label}: tokens");
    for (t, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let ge: Vec<usize> = g.iter().map(|x| x.expert).collect();
        let ce: Vec<usize> = c.iter().map(|x| x.expert).collect();
        assert_eq!(ge, ce, "{label} token {t}: experts");
        for (a, b) in g.iter().zip(c) {
            assert!((a.weight - b.weight).abs() <= 1e-6, "{label} token {t}: weight {} vs {}", a.weight, b.weight);
        }
    }
}

/// Both conventions (Mixtral; Qwen2-MoE with and without norm_topk_prob), several (T, E, k),
/// and exact ties (the lower index first, as models::moe::route).
pub async fn router_cases(ctx: &GpuContext) {
    let styles = [(MoeStyle::Mixtral, false), (MoeStyle::Qwen2Moe, false), (MoeStyle::Qwen2Moe, true)];
    for (t, e, k) in [(1usize, 4usize, 2usize), (37, 8, 2), (5, 60, 4), (70, 16, 1), (3, 8, 8)] {
        let logits = data((t * 131 + e) as u64, t * e, 4.0);
        for (style, norm) in styles {
            let gpu = router::router(ctx, &logits, e, k, style, norm).await.unwrap_or_else(|err| panic!("router ({t}, {e}, {k}): {err}"));
            let cpu = router::reference(&logits, e, k, style, norm);
            check_choices(&format!("router T={t} E={e} k={k} {style:?} norm={norm}"), &gpu, &cpu);
            if router::renorm_for(style, norm) {
                for c in &gpu {
                    let s: f32 = c.iter().map(|x| x.weight).sum();
                    assert!((s - 1.0).abs() <= 1e-6, "renormalised weights sum to {s}");
                }
            }
        }
    }
    // ties: equal logits → equal probabilities → the lower index first
    let ties = [1.0f32, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0];
    for (style, norm) in styles {
        let gpu = router::router(ctx, &ties, 4, 2, style, norm).await.unwrap();
        assert_eq!(gpu[0].iter().map(|c| c.expert).collect::<Vec<_>>(), vec![1, 2], "ties {style:?}");
        assert_eq!(gpu[1].iter().map(|c| c.expert).collect::<Vec<_>>(), vec![0, 1], "all equal {style:?}");
        check_choices("ties", &gpu, &router::reference(&ties, 4, 2, style, norm));
    }
}

/// Gather: bit-exact copies of the listed rows, at an offset into the index list.
pub async fn gather_cases(ctx: &GpuContext) {
    for (t, h) in [(1usize, 8usize), (7, 64), (33, 300)] {
        let x = data(t as u64 * 7 + 1, t * h, 2.0);
        let idx: Vec<u32> = (0..2 * t as u32).map(|i| (i * 5 + 3) % t as u32).collect();
        for (off, n) in [(0usize, t), (t / 2, t), (1, 1)] {
            let gpu = moe::gather(ctx, &x, h, &idx, off, n).await.unwrap_or_else(|e| panic!("gather ({t}, {h}): {e}"));
            assert_eq!(gpu, moe::gather_reference(&x, h, &idx, off, n), "gather T={t} H={h} off={off} n={n}");
        }
    }
    assert!(moe::gather(ctx, &[0.0; 8], 4, &[0, 1], 1, 2).await.unwrap_err().to_string().contains("index list"));
}

/// Scatter-add with router weights (one multiply-add per element: within 1 ulp of the CPU's,
/// the GPU may fuse it) and with the shared expert's sigmoid gate (exp: a few ulp): 1e-6 relative.
pub async fn scatter_cases(ctx: &GpuContext) {
    for (t, h) in [(1usize, 8usize), (9, 64), (40, 96)] {
        let y = data(t as u64 + 5, t * h, 1.0);
        // every token once, in a shuffled order, starting at offset 3 of the list
        let mut idx: Vec<u32> = vec![0; 3];
        idx.extend((0..t as u32).map(|i| (i * 7) % t as u32)); // a permutation: gcd(7, t) = 1
        let n = idx.len() - 3;
        let w = data(t as u64 + 6, idx.len(), 3.0);
        let src = data(t as u64 + 7, n * h, 2.0);
        for mode in [moe::MODE_WEIGHT, moe::MODE_SIGMOID] {
            let gpu = moe::scatter(ctx, &y, h, &idx, &w, 3, &src, mode).await.unwrap_or_else(|e| panic!("scatter ({t}, {h}): {e}"));
            let mut cpu = y.clone();
            moe::scatter_reference(&mut cpu, h, &idx, &w, 3, &src, mode);
            for (i, (a, b)) in gpu.iter().zip(&cpu).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "scatter T={t} H={h} mode {mode} [{i}]: {a} vs {b}");
            }
            // rows really moved: the result differs from y where src is non-zero
            assert!(gpu.iter().zip(&y).any(|(a, b)| a != b), "scatter changed nothing");
        }
    }
}
