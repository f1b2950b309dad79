//! `arcee_fusion`: keep the other model's change only where its importance (|Δ| times the
//! row's KL divergence between the two softmaxes) is an upper outlier.
//!
//! Reference: Arcee AI, "Arcee Fusion" (https://arcee.ai); mergekit 0.1.5
//! `mergekit/merge_methods/arcee_fusion.py` (`_compute_importance`, `DynamicThresholdFusion`).
//!
//! ```text
//! p = softmax(x) + 1e-8, q = softmax(base) + 1e-8        (per line along the last axis)
//! kl = Σ p·ln(p/q) per line;  imp = |x − base| · kl       (kl broadcast over the line)
//! Q(f) = sorted(flat(imp))[int(f·(n−1))]                  (f32 product, truncated)
//! thr = Q(0.5) + 1.5·(Q(0.75) − Q(0.25));  out = base + (x − base)·[imp ≥ thr]
//! ```
//! Precision (0.1.5): the importance is computed with tensor ops in the input dtype D (softmax
//! runs in f32 internally and rounds to D), emulated with `DType::round`. The fusion mask is
//! an f32 tensor, so `base + (x − base)·mask` is computed in f32: mergekit's result for
//! bf16/f16 inputs is an f32 tensor (it is saved as F32 unless `out_dtype` is set). This method
//! therefore returns those f32 values unrounded; encoding to D gives the D result.
//!
//! Deviations: (1) for more than 10⁶ elements mergekit estimates the quantiles from 10⁶ random
//! samples drawn with replacement (nondeterministic); we use the exact sorted values of all
//! elements. (2) torch's vectorized `exp` differs from libm's by an ulp in some elements, so
//! importances can differ in the last bit, which can flip elements that sit exactly at the
//! threshold.
//!
//! Shapes: base, other `[*shape]`; kl `[lines, 1]`; output `[*shape]`.

use super::{Ctx, for_each_line, sum_f32};
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx) -> Result<Vec<f32>, MergeError> {
    let b = ctx.base_data().expect("arcee_fusion requires a base (checked by Ctx)");
    let x = ctx.data(ctx.others[0]);
    let r = |v: f32| ctx.r(v);
    let n = ctx.numel;
    if n == 0 {
        return Ok(Vec::new());
    }
    let shape = ctx.inputs.shape;
    let axis = shape.len().saturating_sub(1);
    let mut imp = vec![0.0f32; n];
    let mut pbuf = Vec::new();
    let mut qbuf = Vec::new();
    for_each_line(shape, axis, |line| {
        softmax(line.iter().map(|j| x[j]), &mut pbuf);
        softmax(line.iter().map(|j| b[j]), &mut qbuf);
        let kl = r(sum_f32(pbuf.iter().zip(&qbuf).map(|(&p, &q)| {
            let p = r(r(p) + 1e-8);
            let q = r(r(q) + 1e-8);
            r(p * r(libm::logf(r(p / q))))
        })));
        for j in line.iter() {
            let diff = r(r(x[j] - b[j]).abs());
            imp[j] = r(diff * kl);
        }
    });
    // sorted(imp)[k] for the three quantile positions, by selection (NaN sorts last as in torch)
    let cmp = |a: &f32, b: &f32| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => a.partial_cmp(b).unwrap(),
    };
    let mut work = imp.clone();
    let last = (n - 1) as f32;
    let mut q = |f: f32| {
        let k = ((f * last) as usize).min(n - 1);
        *work.select_nth_unstable_by(k, cmp).1
    };
    let (q1, median, q3) = (q(0.25), q(0.5), q(0.75));
    let threshold = r(median + r(1.5 * r(q3 - q1)));
    Ok((0..n)
        .map(|j| {
            let mask = if imp[j] >= threshold { 1.0f32 } else { 0.0 };
            b[j] + r(x[j] - b[j]) * mask
        })
        .collect())
}

/// Softmax of one line in f32: `exp(v − max) / Σ exp(v − max)`.
fn softmax(values: impl Iterator<Item = f32> + Clone, out: &mut Vec<f32>) {
    let max = values.clone().fold(f32::NEG_INFINITY, f32::max);
    out.clear();
    out.extend(values.map(|v| libm::expf(v - max)));
    let sum = sum_f32(out.iter().copied());
    for v in out.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;

    #[test]
    fn keeps_only_outlier_changes() {
        // One row of 8; base 0 everywhere, x changes one element a lot and others slightly.
        // kl is one number for the row, so imp ∝ |Δ|: |Δ| = [0.01,0.01,0.01,0.01,0.01,0.01,0.01,2]
        // sorted imp: seven equal values then one large; Q(.25) = Q(.5) = Q(.75) = 0.01·kl
        // → thr = 0.01·kl → every element has imp ≥ thr → all changes kept.
        let x = [0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 2.0];
        let o = Owned::new(&[1, 8]).base_model(&[0.0; 8]).model(&x, &[]);
        assert_close(&o.run(Method::ArceeFusion).unwrap(), &x, 1e-7);
        // distinct small changes: |Δ| = [0.01..0.07, 2]; n−1 = 7: Q(.25) = s[1] = 0.02,
        // Q(.5) = s[3] = 0.04, Q(.75) = s[5] = 0.06 → thr = (0.04 + 1.5·0.04)·kl = 0.1·kl
        // → only the last element (2) is kept
        let x = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 2.0];
        let o = Owned::new(&[1, 8]).base_model(&[0.0; 8]).model(&x, &[]);
        assert_close(&o.run(Method::ArceeFusion).unwrap(), &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0], 1e-7);
    }

    #[test]
    fn identical_models_keep_the_base() {
        let o = Owned::new(&[2, 2]).base_model(&[1.0, 2.0, 3.0, 4.0]).model(&[1.0, 2.0, 3.0, 4.0], &[]);
        assert_eq!(o.run(Method::ArceeFusion).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    }
}
