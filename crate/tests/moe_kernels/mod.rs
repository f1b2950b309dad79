//! Checks of the mixture-of-experts kernels (router softmax/top-k, per-expert gather, weighted
//! and sigmoid-gated scatter-add, expert-indexed products `qmatvec_id`, `moe_combine`) against their CPU references, shared by
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

/// qmatvec_id (experts by id, ops::qmatvec_id) against its CPU reference for F32, F16, Q8_0,
/// Q4_0 and Q4_1: ids that cover every expert and repeat experts (within a token's slots and across
/// tokens), inputs shared by a token's slots (x_div = k, gate/up) and one per pair (x_div = 1,
/// down), N not a multiple of 8, ids after an offset (as in the router's [w | idx] output).
/// Tolerance, as qmatvec's: both sides sum K products in f32 in different orders, so
/// |gpu − cpu| ≤ (2K + 4)·ε·Σ_j |w·x| per output (a wrong expert, row, block or nibble is O(1)).
pub async fn qmatvec_id_cases(ctx: &GpuContext) {
    use crate::gpu_common::{EPS, quantized_weight};
    use crucible::ops::qmatvec_id::{self, IdParams, IdWeights};
    use crucible::tensor::quant::BlockFormat;
    // (E, N, K, T, k, x_div)
    let shapes = [(4usize, 32usize, 32usize, 3usize, 2usize, 2usize), (6, 13, 64, 5, 2, 1), (8, 40, 96, 4, 3, 3), (3, 9, 128, 2, 3, 1)];
    for (e, n, k, t, top_k, x_div) in shapes {
        let pairs = t * top_k;
        // Expert 0 twice in token 0's first two slots (a repeat within a token), then 1..E once
        // each, then (3p) mod E (repeats across tokens): every expert appears (pairs > E here).
        let ids: Vec<u32> = (0..pairs).map(|p| if p < 2 { 0 } else if p <= e { (p - 1) as u32 } else { (p * 3 % e) as u32 }).collect();
        let mut seen = vec![false; e];
        ids.iter().for_each(|&i| seen[i as usize] = true);
        assert!(seen.iter().all(|&s| s), "ids {ids:?} cover every expert of {e}");
        assert!(ids[0] == ids[1] && ids.len() > e + 1, "ids {ids:?} repeat an expert");
        let x = data((e * 31 + k) as u64, pairs / x_div * k, 2.0);
        let p = IdParams { n_experts: e, n, k, x_div };
        let dense = data((n * 7 + e) as u64, e * n * k, 1.0);
        let halves: Vec<u16> = dense.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let widened: Vec<f32> = halves.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect();
        let mut cases: Vec<(String, Option<crucible::tensor::quant::SplitBlocks>, Vec<f32>)> = vec![("F32".into(), None, dense.clone()), ("F16".into(), None, widened)];
        for f in BlockFormat::ALL {
            let (s, deq) = quantized_weight(f, e * n, k, (e * 131 + n) as u64);
            cases.push((f.to_string(), Some(s), deq));
        }
        for (name, split, deq) in &cases {
            let w = match split {
                Some(s) => IdWeights::Quant(s),
                None if name == "F16" => IdWeights::F16(&halves),
                None => IdWeights::F32(&dense),
            };
            let label = format!("qmatvec_id {name} E={e} N={n} K={k} T={t} k={top_k} x_div={x_div}");
            let cpu = qmatvec_id::reference(w, &p, &x, &ids).unwrap();
            // All experts in one binding, then split into groups of 1 and 3 experts (one binding
            // and one dispatch per group into the same y, NaN-initialised: every row is written).
            for per_group in [e, 1, 3] {
                let label = format!("{label} groups of {per_group}");
                let gpu = qmatvec_id::qmatvec_id_grouped(ctx, w, &p, &x, &ids, pairs, per_group).await.unwrap_or_else(|err| panic!("{label}: {err}"));
                assert_eq!(gpu.len(), pairs * n, "{label}: output length");
                for pr in 0..pairs {
                    let xr = &x[pr / x_div * k..(pr / x_div + 1) * k];
                    for r in 0..n {
                        let row = &deq[(ids[pr] as usize * n + r) * k..][..k];
                        let s: f64 = row.iter().zip(xr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                        let tol = (2.0 * k as f64 + 4.0) * EPS * s + 1e-30;
                        let (g, c) = (gpu[pr * n + r], cpu[pr * n + r]);
                        assert!(((g - c) as f64).abs() <= tol, "{label} pair {pr} (expert {}) row {r}: gpu {g} cpu {c} tol {tol:e}", ids[pr]);
                    }
                }
            }
        }
    }
    // An expert id out of range is an error naming the pair.
    let e = qmatvec_id::qmatvec_id(ctx, IdWeights::F32(&[0.0; 8]), &IdParams { n_experts: 2, n: 1, k: 4, x_div: 1 }, &[0.0; 4], &[2], 0).await.unwrap_err().to_string();
    assert!(e.contains("pair 0 names expert 2 of 2"), "{e}");
}

/// moe_combine: each token's k rows weighted by the router's weights and summed (k ≤ 4 products
/// and sums in f32: within 4 ulp-ish, 1e-6 relative to the largest term's magnitude).
pub async fn moe_combine_cases(ctx: &GpuContext) {
    use crucible::ops::qmatvec_id;
    for (t, k, h) in [(1usize, 2usize, 8usize), (5, 2, 64), (7, 4, 96), (33, 1, 32)] {
        let w = data((t * 3 + k) as u64, 2 * t * k, 1.0); // [w | ignored], as the router's output
        let src = data((t * 5 + h) as u64, t * k * h, 3.0);
        let label = format!("moe_combine T={t} k={k} H={h}");
        let gpu = qmatvec_id::combine(ctx, &w, &src, t, k, h).await.unwrap_or_else(|e| panic!("{label}: {e}"));
        let cpu = qmatvec_id::combine_reference(&w, &src, t, k, h);
        for (i, (a, b)) in gpu.iter().zip(&cpu).enumerate() {
            let scale: f32 = (0..k).map(|s| (w[i / h * k + s] * src[(i / h * k + s) * h + i % h]).abs()).sum();
            assert!((a - b).abs() <= 1e-6 * scale.max(1e-30) + 1e-30, "{label} [{i}]: gpu {a} cpu {b}");
        }
    }
}

/// qmatvec_id past 65535 workgroups (pairs · ⌈N/8⌉ = 4 · 16400), as real expert shapes need
/// (64 pairs × 14336 rows): the 2-D grid's overshoot is skipped and every row written. Q8_0,
/// tolerance as in `qmatvec_id_cases`.
pub async fn qmatvec_id_2d_grid_case(ctx: &GpuContext) {
    use crate::gpu_common::{EPS, quantized_weight};
    use crucible::ops::qmatvec_id::{self, IdParams, IdWeights};
    use crucible::tensor::quant::BlockFormat;
    let (e, n, k) = (2usize, 8 * 16400usize, 32usize);
    let ids = [1u32, 0, 0, 1];
    let (w, deq) = quantized_weight(BlockFormat::Q8_0, e * n, k, 4242);
    let x = data(99, 2 * k, 2.0);
    let p = IdParams { n_experts: e, n, k, x_div: 2 };
    let gpu = qmatvec_id::qmatvec_id(ctx, IdWeights::Quant(&w), &p, &x, &ids, 3).await.unwrap_or_else(|err| panic!("qmatvec_id 2-D grid: {err}"));
    let cpu = qmatvec_id::reference(IdWeights::Quant(&w), &p, &x, &ids).unwrap();
    assert_eq!(gpu.len(), ids.len() * n, "qmatvec_id 2-D grid: output length");
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        let (pr, r) = (i / n, i % n);
        let row = &deq[(ids[pr] as usize * n + r) * k..][..k];
        let s: f64 = row.iter().zip(&x[pr / 2 * k..]).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
        let tol = (2.0 * k as f64 + 4.0) * EPS * s + 1e-30;
        assert!(((g - c) as f64).abs() <= tol, "qmatvec_id 2-D grid pair {pr} row {r}: gpu {g} cpu {c}");
    }
}
