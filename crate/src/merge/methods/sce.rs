//! `sce` (Select, Calculate, Erase): keep the highest-variance task-vector entries, weight each
//! model by the energy of its task vector, and erase sign conflicts.
//!
//! Paper: Wan et al. 2024, "FuseChat: Knowledge Fusion of Chat Models" (arXiv:2408.07990).
//! Reference: mergekit 0.1.5 `mergekit/merge_methods/sce.py` (`sce_merge`, `sce_weight`,
//! `sce_mask`) and `generalized_task_arithmetic.py` (`get_mask`, method "sum").
//!
//! ```text
//! T_i = x_i − base                                         [N, *shape]
//! select_topk < 1: v = Var_i(T_i) (population); k = int(count_nonzero(v)·select_topk);
//!                  keep the k largest |v| (same positions for every model)
//! E_i = [sign(T_i) == sign(Σ_i T_i)] (0 counts as +; sign 0 never matches)
//! c_i = mean(T_i²); c = c/Σc (uniform 1/N if Σc < 1e-6)
//! out = base + Σ_i T_i c_i E_i / max(Σ_i c_i E_i, 1e-6)
//! ```
//! Precision (0.1.5): tensor ops in the input dtype D, rounded after each op; reductions
//! accumulate in f32 and round once. `count_nonzero(v) * select_topk` is an int64 tensor times
//! a Python float, i.e. an f32 product, truncated by `int()`.
//!
//! Deviation: `torch.topk` order among equal |v| is unspecified; we keep the lowest indices.

use super::{Ctx, Fraction, MethodReport, sum_f32};
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx, report: &mut MethodReport) -> Result<Vec<f32>, MergeError> {
    let _int8_mask = ctx.global_bool("int8_mask")?;
    let select_topk = ctx.global_f64("select_topk")?;
    let base = ctx.base_data().expect("sce requires a base (checked by Ctx)");
    if ctx.others.is_empty() {
        return Ok(base.to_vec());
    }
    let dt = ctx.dt;
    let n = ctx.numel;
    let models = ctx.others.len();
    let mut tvs: Vec<Vec<f32>> = ctx.others.iter().map(|&i| ctx.data(i).iter().zip(base).map(|(&x, &b)| dt.round(x - b)).collect()).collect();

    if select_topk < 1.0 {
        let mask: Vec<bool> = if select_topk <= 0.0 {
            vec![false; n]
        } else {
            // population variance over the model axis, per element
            let var: Vec<f32> = (0..n)
                .map(|j| {
                    let mean = tvs.iter().map(|t| t[j] as f64).sum::<f64>() / models as f64;
                    let v = tvs.iter().map(|t| (t[j] as f64 - mean) * (t[j] as f64 - mean)).sum::<f64>() / models as f64;
                    dt.round(v as f32)
                })
                .collect();
            let nonzero = var.iter().filter(|v| **v != 0.0).count();
            let k = ((nonzero as f32) * (select_topk as f32)) as usize;
            let mut keep = vec![false; n];
            if k > 0 {
                let keys: Vec<u32> = var.iter().map(|v| !super::sparsify::abs_key(*v)).collect();
                keep = super::sparsify::rank_range_mask(&keys, 0..k.min(n));
            }
            keep
        };
        let mut trimmed = Fraction::default();
        for t in tvs.iter_mut() {
            for (v, &m) in t.iter_mut().zip(&mask) {
                let nz = (*v != 0.0) as u64;
                *v *= if m { 1.0 } else { 0.0 };
                trimmed.whole += nz;
                trimmed.part += nz & (*v == 0.0) as u64;
            }
        }
        report.trimmed = Some(trimmed);
    }

    // matrix-level weights: mean of squares per model, normalized by their (f32 → Python) sum
    let mut weights: Vec<f32> = tvs.iter().map(|t| dt.round(sum_f32(t.iter().map(|&v| dt.round(v * v))) / n.max(1) as f32)).collect();
    let weight_sum = dt.round(sum_f32(weights.iter().copied())) as f64;
    if weight_sum.abs() < 1e-6 {
        let u = dt.round(1.0 / models as f32);
        weights.iter_mut().for_each(|w| *w = u);
    } else {
        let ws = weight_sum as f32;
        weights.iter_mut().for_each(|w| *w = dt.round(*w / ws));
    }

    let floor = dt.round(1e-6);
    let mut out = vec![0.0f32; n];
    let mut elected = Fraction::default();
    for j in 0..n {
        let s = dt.round(tvs.iter().fold(0.0f32, |a, t| a + t[j]));
        let majority = if s >= 0.0 { 1.0f32 } else { -1.0 };
        let mut merged = 0.0f32;
        let mut denom = 0.0f32;
        for (t, &w) in tvs.iter().zip(&weights) {
            let v = t[j];
            let sg = if v > 0.0 { 1.0 } else if v < 0.0 { -1.0 } else { 0.0 };
            let ew = w * if sg == majority { 1.0 } else { 0.0 };
            elected.whole += (v != 0.0) as u64;
            elected.part += (v != 0.0 && sg != majority) as u64;
            merged += dt.round(v * ew);
            denom += ew;
        }
        let merged = dt.round(merged);
        let denom = dt.round(denom);
        let denom = if denom < floor { floor } else { denom };
        out[j] = dt.round(base[j] + dt.round(merged / denom));
    }
    report.elected_away = Some(elected);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;

    #[test]
    fn hand_computed_weights_and_erase() {
        // base 0; T1 = [1, 2, −1, 0], T2 = [3, −2, −1, 0]
        // c1 = mean([1,4,1,0]) = 1.5, c2 = mean([9,4,1,0]) = 3.5 → c = [0.3, 0.7]
        // Σ T = [4, 0, −2, 0] → signs [+, +, −, +]
        // E1 = [1,1,1,0], E2 = [1,0,1,0]
        // out = [ (0.3·1 + 0.7·3)/1, (0.3·2)/0.3, (−0.3 − 0.7)/1, 0/1e-6 ] = [2.4, 2, −1, 0]
        let o = Owned::new(&[4]).base_model(&[0.0; 4]).model(&[1.0, 2.0, -1.0, 0.0], &[]).model(&[3.0, -2.0, -1.0, 0.0], &[]);
        assert_close(&o.run(Method::Sce).unwrap(), &[2.4, 2.0, -1.0, 0.0], 1e-6);
    }

    #[test]
    fn select_topk_keeps_high_variance_entries() {
        // variance per element of T1 = [1, 2, −1, 0], T2 = [3, −2, −1, 0]: [1, 4, 0, 0]
        // nonzero = 2; select_topk 0.5 → k = 1 → keep element 1 only
        // T1 = [0,2,0,0], T2 = [0,−2,0,0]; c1 = c2 = 1 → 0.5 each; Σ = 0 → sign +: E1 = [0,1,0,0]
        // out[1] = 0.5·2 / 0.5 = 2; others 0
        let o = Owned::new(&[4])
            .base_model(&[0.0; 4])
            .model(&[1.0, 2.0, -1.0, 0.0], &[])
            .model(&[3.0, -2.0, -1.0, 0.0], &[])
            .global(&[("select_topk", f(0.5))]);
        assert_close(&o.run(Method::Sce).unwrap(), &[0.0, 2.0, 0.0, 0.0], 1e-6);
    }
}
