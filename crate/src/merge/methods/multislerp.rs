//! `multislerp`: barycentric SLERP of any number of models (or of their task vectors against
//! an optional base) on the hypersphere, via the tangent space at the weighted mean direction.
//!
//! Reference: C. Goddard, "Multi-SLERP" (https://goddard.blog/posts/multislerp-wow-what-a-cool-idea);
//! mergekit 0.1.5 `mergekit/merge_methods/multislerp.py` (`multislerp`).
//!
//! ```text
//! X_i = flat(x_i − base) (or flat(x_i));  w = w/Σw if normalize_weights
//! n_i = ‖X_i‖;  U_i = X_i/(n_i + eps);  m = Σ w_i U_i
//! ‖m‖ < eps: two inputs → w₀X₀ + w₁X₁ (+ base); otherwise an error
//! m = m/‖m‖;  T_i = U_i − (U_i·m) m;  τ = Σ w_i T_i;  s = ‖τ‖ + eps
//! out = (m cos s + τ sin(s)/s) · Σ w_i n_i  (+ base)
//! ```
//! One non-base model: that model's tensor unchanged.
//!
//! Precision (0.1.5): all tensor ops in the input dtype D (weights are a D tensor), emulated
//! with `DType::round` per op; reductions accumulate in f32 and round once.
//!
//! Shapes: inputs `[*shape]` → flattened `[N, numel]` → `[*shape]`.

use super::{Ctx, norm_f32, sum_f32};
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx) -> Result<Vec<f32>, MergeError> {
    let normalize = ctx.global_bool("normalize_weights")?;
    let eps = ctx.global_f64("eps")? as f32;
    let models = &ctx.others;
    let mut weights = Vec::with_capacity(models.len());
    for &i in models {
        weights.push(ctx.r(ctx.model_f64(i, "weight")? as f32));
    }
    if models.len() == 1 {
        return Ok(ctx.data(models[0]).to_vec());
    }
    let dt = ctx.dt;
    let base = ctx.base_data();
    // X: [N, numel]
    let xs: Vec<Vec<f32>> = models
        .iter()
        .map(|&i| match base {
            Some(b) => ctx.data(i).iter().zip(b).map(|(&x, &y)| dt.round(x - y)).collect(),
            None => ctx.data(i).to_vec(),
        })
        .collect();
    if normalize {
        let total = dt.round(sum_f32(weights.iter().copied()));
        for w in weights.iter_mut() {
            *w = dt.round(*w / total);
        }
    }
    let norms: Vec<f32> = xs.iter().map(|x| dt.round(norm_f32(x.iter().copied()))).collect();
    let units: Vec<Vec<f32>> = xs
        .iter()
        .zip(&norms)
        .map(|(x, &n)| {
            let d = dt.round(n + eps);
            x.iter().map(|&v| dt.round(v / d)).collect()
        })
        .collect();
    let numel = ctx.numel;
    // weighted sum over the model axis: products rounded, sum in f32 rounded once
    let weighted_sum = |vs: &[Vec<f32>]| -> Vec<f32> {
        (0..numel).map(|j| dt.round(vs.iter().zip(&weights).fold(0.0f32, |s, (v, &w)| s + dt.round(v[j] * w)))).collect()
    };
    let mut mean = weighted_sum(&units);
    let mean_norm = dt.round(norm_f32(mean.iter().copied()));
    if mean_norm < eps {
        if xs.len() == 2 {
            let mut out: Vec<f32> = (0..numel).map(|j| dt.round(dt.round(xs[0][j] * weights[0]) + dt.round(xs[1][j] * weights[1]))).collect();
            if let Some(b) = base {
                for (o, &y) in out.iter_mut().zip(b) {
                    *o = dt.round(*o + y);
                }
            }
            return Ok(out);
        }
        return Err(ctx.bad_inputs(
            "the weighted sum of the input directions is zero (antipodal inputs whose weights cancel); use different weights",
        ));
    }
    for m in mean.iter_mut() {
        *m = dt.round(*m / mean_norm);
    }
    let tangents: Vec<Vec<f32>> = units
        .iter()
        .map(|u| {
            let dot = dt.round(sum_f32(u.iter().zip(&mean).map(|(&a, &b)| dt.round(a * b))));
            u.iter().zip(&mean).map(|(&a, &m)| dt.round(a - dt.round(dot * m))).collect()
        })
        .collect();
    let tangent = weighted_sum(&tangents);
    let tn = dt.round(dt.round(norm_f32(tangent.iter().copied())) + eps);
    let cos = dt.round(libm::cosf(tn));
    let sin_over = dt.round(dt.round(libm::sinf(tn)) / tn);
    let avg_norm = dt.round(norms.iter().zip(&weights).fold(0.0f32, |s, (&n, &w)| s + dt.round(n * w)));
    let mut out: Vec<f32> = (0..numel).map(|j| dt.round(dt.round(dt.round(mean[j] * cos) + dt.round(tangent[j] * sin_over)) * avg_norm)).collect();
    if let Some(b) = base {
        for (o, &y) in out.iter_mut().zip(b) {
            *o = dt.round(*o + y);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;

    #[test]
    fn hand_computed_two_orthogonal() {
        // X = [1,0], [0,1], w = 0.5 each: U = X/(1+1e-8) ≈ X; m = [0.5,0.5] → [0.7071,0.7071];
        // U_i·m = 0.7071, T_0 = [0.5,-0.5], T_1 = [-0.5,0.5], τ = 0 → s = 1e-8:
        // out = m·cos(1e-8)·Σ w n = [0.70710677, 0.70710677]
        let o = Owned::new(&[2]).model(&[1.0, 0.0], &[("weight", f(1.0))]).model(&[0.0, 1.0], &[("weight", f(1.0))]);
        assert_close(&o.run(Method::Multislerp).unwrap(), &[0.707_106_77, 0.707_106_77], 1e-6);
    }

    #[test]
    fn hand_computed_three_with_base() {
        // base 0 so X = x. x = [2,0], [0,1], [0,1] with weights 1,1,1 (normalized to 1/3).
        // U = [1,0],[0,1],[0,1]; m = [1/3, 2/3]/‖·‖ = [0.4472136, 0.8944272]
        // T_0 = [1,0] − 0.4472136·m = [0.8, −0.4]; T_1 = T_2 = [0,1] − 0.8944272·m = [−0.4, 0.2]
        // τ = (T_0 + 2T_1)/3 = [0, 0] → s = 1e-8 → out = m · Σ w n = m · (2+1+1)/3 = m·4/3
        //   = [0.5962848, 1.1925696]   (computed by hand, checked in Python)
        let o = Owned::new(&[2])
            .base_model(&[0.0, 0.0])
            .model(&[2.0, 0.0], &[("weight", f(1.0))])
            .model(&[0.0, 1.0], &[("weight", f(1.0))])
            .model(&[0.0, 1.0], &[("weight", f(1.0))]);
        assert_close(&o.run(Method::Multislerp).unwrap(), &[0.596_284_8, 1.192_569_6], 1e-6);
    }

    #[test]
    fn nonzero_tangent() {
        // x = [1,0], [0,1] with weights 3 and 1 → w = [0.75, 0.25]
        // m = [0.75,0.25]/0.7905694 = [0.9486833, 0.3162278]
        // T_0 = [1,0] − 0.9486833·m = [0.1, −0.3];  T_1 = [0,1] − 0.3162278·m = [−0.3, 0.9]
        // τ = 0.75·T_0 + 0.25·T_1 = [0, 0]. The tangent mean at the Euclidean mean direction
        // vanishes for two points, so out = m·Σ w n = m·1 = [0.9486833, 0.3162278]
        let o = Owned::new(&[2]).model(&[1.0, 0.0], &[("weight", f(3.0))]).model(&[0.0, 1.0], &[("weight", f(1.0))]);
        assert_close(&o.run(Method::Multislerp).unwrap(), &[0.948_683_3, 0.316_227_8], 1e-6);
    }

    #[test]
    fn single_model_is_returned_and_antipodal_three_is_an_error() {
        let o = Owned::new(&[2]).base_model(&[5.0, 5.0]).model(&[1.0, 2.0], &[("weight", f(1.0))]);
        assert_eq!(o.run(Method::Multislerp).unwrap(), vec![1.0, 2.0]);
        // two antipodal with equal weights: lerp fallback → 0.5·[1,0] + 0.5·[−1,0] = 0
        let o = Owned::new(&[2]).model(&[1.0, 0.0], &[("weight", f(1.0))]).model(&[-1.0, 0.0], &[("weight", f(1.0))]);
        assert_eq!(o.run(Method::Multislerp).unwrap(), vec![0.0, 0.0]);
        let o = Owned::new(&[2])
            .model(&[1.0, 0.0], &[("weight", f(1.0))])
            .model(&[-1.0, 0.0], &[("weight", f(2.0))])
            .model(&[1.0, 0.0], &[("weight", f(1.0))]);
        assert!(matches!(o.run(Method::Multislerp), Err(crate::merge::MergeError::BadInputs { .. })));
    }
}
