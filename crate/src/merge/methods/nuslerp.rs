//! `nuslerp`: SLERP of two models, or of their task vectors against an optional base, with
//! the interpolation position taken from the two weights, and optional per-row operation.
//!
//! Reference: Shoemake 1985 (SLERP); mergekit 0.1.5 `mergekit/merge_methods/nuslerp.py`
//! (`nuslerp`, `nuslerp_merge_method`).
//!
//! `t = w₂/(w₁+w₂)` (0.5 if |w₁+w₂| < 1e-6), the two non-base models in recipe order.
//! Vectors: `nuslerp_flatten` (default) → the whole tensor; else lines along the last axis
//! (each row of `[out, in]`), or along axis 0 with `nuslerp_row_wise` (each column).
//! `u = v / max(‖v‖, 1e-7)`, `c = clamp(Σ u₀u₁, −1, 1)`; colinear iff `1 − c² ≤ 1e-16`;
//! otherwise `(sin((1−t)θ)·v₀ + sin(tθ)·v₁) / sin θ`. No 0.9995 threshold here.
//!
//! Precision (0.1.5): every op runs on tensors of the input dtype D (emulated with
//! `DType::round` after each op; reductions accumulate in f32 and round once). `t` is a
//! Python float, so `1 − t` is computed in f64 and enters each op as an f32 scalar.
//!
//! Shapes: inputs `[*shape]` → `[*shape]`.

use super::{Ctx, Line, MethodReport, for_each_line, norm_f32, sum_f32};
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx, report: &mut MethodReport) -> Result<Vec<f32>, MergeError> {
    let flatten = ctx.global_bool("nuslerp_flatten")?;
    let row_wise = ctx.global_bool("nuslerp_row_wise")?;
    let (i0, i1) = (ctx.others[0], ctx.others[1]);
    let w0 = ctx.model_f64(i0, "weight")?;
    let w1 = ctx.model_f64(i1, "weight")?;
    let total = w0 + w1;
    let t = if total.abs() < 1e-6 { 0.5 } else { w1 / total };

    let (mut v0, mut v1) = (ctx.data(i0).to_vec(), ctx.data(i1).to_vec());
    let base = ctx.base_data();
    if let Some(b) = base {
        for j in 0..ctx.numel {
            v0[j] = ctx.r(v0[j] - b[j]);
            v1[j] = ctx.r(v1[j] - b[j]);
        }
    }
    let shape = ctx.inputs.shape;
    let mut out = vec![0.0f32; ctx.numel];
    let (mut angle_sum, mut lines) = (0.0f64, 0u64);
    if flatten || shape.len() <= 1 {
        angle_sum += nuslerp_line(ctx, t, &v0, &v1, Line::whole(ctx.numel), &mut out) as f64;
        lines += 1;
    } else {
        let axis = if row_wise { 0 } else { shape.len() - 1 };
        for_each_line(shape, axis, |line| {
            angle_sum += nuslerp_line(ctx, t, &v0, &v1, line, &mut out) as f64;
            lines += 1;
        });
    }
    report.slerp_angle = Some((angle_sum, lines));
    if let Some(b) = base {
        for j in 0..ctx.numel {
            out[j] = ctx.r(b[j] + out[j]);
        }
    }
    Ok(out)
}

/// NuSLERP of the elements of `line` in `v0` and `v1`, written to the same elements of `out`.
/// Returns the angle θ between the two lines (acos of the clamped cosine, rounded to the dtype
/// as the method computes it; also when it falls back to lerp).
fn nuslerp_line(ctx: &Ctx, t: f64, v0: &[f32], v1: &[f32], line: Line, out: &mut [f32]) -> f32 {
    let dt = ctx.dt;
    let n0 = dt.round(norm_f32(line.iter().map(|j| v0[j]))).max(dt.round(1e-7));
    let n1 = dt.round(norm_f32(line.iter().map(|j| v1[j]))).max(dt.round(1e-7));
    let cos = dt.round(sum_f32(line.iter().map(|j| dt.round(dt.round(v0[j] / n0) * dt.round(v1[j] / n1))))).clamp(-1.0, 1.0);
    let colinear = dt.round(1.0 - dt.round(cos * cos)) <= (1e-8f64 * 1e-8) as f32;
    let one_minus_t = (1.0 - t) as f32;
    let tf = t as f32;
    let theta = dt.round(libm::acosf(cos));
    if colinear {
        for j in line.iter() {
            out[j] = dt.round(dt.round(one_minus_t * v0[j]) + dt.round(tf * v1[j]));
        }
    } else {
        let sin_theta = dt.round(libm::sinf(theta));
        let s0 = dt.round(libm::sinf(dt.round(one_minus_t * theta)));
        let s1 = dt.round(libm::sinf(dt.round(tf * theta)));
        for j in line.iter() {
            out[j] = dt.round(dt.round(dt.round(s0 * v0[j]) + dt.round(s1 * v1[j])) / sin_theta);
        }
    }
    theta
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;

    #[test]
    fn hand_computed_without_base() {
        // x1 = [1,0], x2 = [0,1], equal weights → t = 0.5, θ = π/2:
        // (sin(π/4)·x1 + sin(π/4)·x2)/1 = [0.70710677, 0.70710677]
        let o = Owned::new(&[2]).model(&[1.0, 0.0], &[("weight", f(1.0))]).model(&[0.0, 1.0], &[("weight", f(1.0))]);
        assert_close(&o.run(Method::Nuslerp).unwrap(), &[0.707_106_77, 0.707_106_77], 1e-6);
        // weights 1 and 2 → t = 2/3: coefficients sin(π/6) = 0.5 and sin(π/3) = 0.8660254
        let o = Owned::new(&[2]).model(&[1.0, 0.0], &[("weight", f(1.0))]).model(&[0.0, 1.0], &[("weight", f(2.0))]);
        assert_close(&o.run(Method::Nuslerp).unwrap(), &[0.5, 0.866_025_4], 1e-6);
    }

    #[test]
    fn with_base_slerps_task_vectors() {
        // base [1,1]; deltas [1,0] and [0,1]; t = 0.5 → base + [0.7071, 0.7071]
        let o = Owned::new(&[2])
            .base_model(&[1.0, 1.0])
            .model(&[2.0, 1.0], &[("weight", f(0.5))])
            .model(&[1.0, 2.0], &[("weight", f(0.5))]);
        assert_close(&o.run(Method::Nuslerp).unwrap(), &[1.707_106_8, 1.707_106_8], 1e-6);
    }

    #[test]
    fn row_and_column_axes() {
        // 2x2, x1 = [[1,0],[2,0]], x2 = [[0,1],[2,0]], t = 0.5, flatten false:
        // row 0: orthogonal → [0.7071, 0.7071]; row 1: identical (colinear) → lerp [2, 0]
        let x1 = [1.0, 0.0, 2.0, 0.0];
        let x2 = [0.0, 1.0, 2.0, 0.0];
        let o = Owned::new(&[2, 2])
            .model(&x1, &[("weight", f(1.0))])
            .model(&x2, &[("weight", f(1.0))])
            .global(&[("nuslerp_flatten", b(false))]);
        assert_close(&o.run(Method::Nuslerp).unwrap(), &[0.707_106_77, 0.707_106_77, 2.0, 0.0], 1e-6);
        // row_wise: lines along axis 0 (columns): col 0 = [1,2] vs [0,2], col 1 = [0,0] vs [1,0].
        // col 0: cos = 4/(√5·2) = 0.894427, θ = 0.4636476; coef = sin(θ/2)/sinθ = 0.5137431
        //   → 0.5137431·([1,2]+[0,2]) = [0.5137431, 2.0549726]
        // col 1: ‖[0,0]‖ clamps to 1e-7, u0 = 0 → cos = 0, θ = π/2 → 0.7071·[1,0] = [0.7071, 0]
        // (numbers from Python: math.sin(th/2)/math.sin(th), th = math.acos(4/(math.sqrt(5)*2)))
        let o = Owned::new(&[2, 2])
            .model(&x1, &[("weight", f(1.0))])
            .model(&x2, &[("weight", f(1.0))])
            .global(&[("nuslerp_flatten", b(false)), ("nuslerp_row_wise", b(true))]);
        assert_close(&o.run(Method::Nuslerp).unwrap(), &[0.513_743_1, 0.707_106_77, 2.054_972_6, 0.0], 1e-6);
    }

    #[test]
    fn needs_two_non_base_models() {
        let o = Owned::new(&[2]).base_model(&[1.0, 1.0]).model(&[2.0, 1.0], &[("weight", f(0.5))]);
        assert!(o.run(Method::Nuslerp).is_err());
    }
}
