//! `slerp`: spherical linear interpolation between the base (t = 0) and one other model.
//!
//! Reference: Shoemake 1985, "Animating rotation with quaternion curves" (SIGGRAPH);
//! mergekit 0.1.5 `mergekit/merge_methods/slerp.py` (`slerp`, `slerp_merge_method`).
//!
//! The whole tensor is one vector (mergekit's leading axis is its batch of logical tensors,
//! which is 1 here). Precision (0.1.5): f32 throughout. Norms are taken per chunk of 2^20
//! elements, then the norm of the chunk norms; each operand is divided by its norm (norms
//! ≤ 1e-8 become 1) before the elementwise product, summed per chunk, then over chunks; the
//! dot is clamped to [-1, 1]; `|dot| > 0.9995` (also antipodal) falls back to lerp. The
//! coefficients multiply the un-normalized inputs; the result is written into a tensor of
//! the input dtype. `t` is an f32 tensor in mergekit, so `1 - t` is an f32 operation.
//!
//! Shapes: base `[*shape]`, other `[*shape]` → `[*shape]`.

use super::{Ctx, MethodReport, norm_f32, sum_f32};
use crate::merge::MergeError;

/// Elements per norm / dot partial sum (mergekit's chunking; `streaming.rs` follows it too).
pub(super) const CHUNK: usize = 1024 * 1024;
const DOT_THRESHOLD: f32 = 0.9995;
const EPS: f32 = 1e-8;

/// `torch.where(norm > eps, norm, 1)`: NaN norms also become 1.
pub(super) fn usable_norm(n: f32) -> f32 {
    if n.is_nan() || n <= EPS { 1.0 } else { n }
}

/// The interpolation coefficients `(c_a, c_b)` and the angle θ for the (unclamped) dot of the
/// normalized operands: clamped to [-1, 1]; `|dot| > 0.9995` falls back to lerp.
pub(super) fn coefficients(t: f32, dot: f32) -> (f32, f32, f32) {
    let dot = dot.clamp(-1.0, 1.0);
    let angle = libm::acosf(dot);
    let (ca, cb) = if dot.abs() > DOT_THRESHOLD {
        (1.0 - t, t)
    } else {
        let theta = libm::acosf(dot);
        let sin_theta = libm::sinf(theta);
        (libm::sinf((1.0 - t) * theta) / sin_theta, libm::sinf(t * theta) / sin_theta)
    };
    (ca, cb, angle)
}

pub(super) fn merge(ctx: &Ctx, report: &mut MethodReport) -> Result<Vec<f32>, MergeError> {
    let t = ctx.global_f64("t")? as f32;
    let v0 = ctx.base_data().expect("slerp requires a base (checked by Ctx)");
    let v1 = ctx.data(ctx.others[0]);
    let (out, theta) = slerp_angle(t, v0, v1);
    if let Some(theta) = theta {
        report.slerp_angle = Some((theta as f64, 1));
    }
    Ok(out)
}

/// Chunked f32 norm as in mergekit: the norm of the per-chunk norms.
fn chunked_norm(v: &[f32]) -> f32 {
    let parts: Vec<f32> = v.chunks(CHUNK).map(|c| norm_f32(c.iter().copied())).collect();
    if parts.len() == 1 { parts[0] } else { norm_f32(parts) }
}

/// SLERP of two flat vectors in f32 (`a` at t = 0, `b` at t = 1), also returning the angle
/// θ = acos(clamped cosine) between `a` and `b` as computed (also when the result falls back to
/// lerp); `None` for empty vectors.
pub(crate) fn slerp_angle(t: f32, a: &[f32], b: &[f32]) -> (Vec<f32>, Option<f32>) {
    if a.is_empty() {
        return (Vec::new(), None);
    }
    let na = usable_norm(chunked_norm(a));
    let nb = usable_norm(chunked_norm(b));
    let mut dot = 0.0f32;
    for (ca, cb) in a.chunks(CHUNK).zip(b.chunks(CHUNK)) {
        dot += sum_f32(ca.iter().zip(cb).map(|(&x, &y)| (x / na) * (y / nb)));
    }
    let (ca, cb, angle) = coefficients(t, dot);
    (a.iter().zip(b).map(|(&x, &y)| ca * x + cb * y).collect(), Some(angle))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;
    use proptest::prelude::*;

    #[test]
    fn hand_computed_quarter_circle() {
        // a = [1,0], b = [0,1]: θ = π/2, t = 0.5 → sin(π/4)/1 each = [0.70710677, 0.70710677]
        let o = Owned::new(&[2]).base_model(&[1.0, 0.0]).model(&[0.0, 1.0], &[]).global(&[("t", f(0.5))]);
        assert_close(&o.run(Method::Slerp).unwrap(), &[0.707_106_77, 0.707_106_77], 1e-6);
        // un-normalized inputs: a = [2,0], b = [0,4], t = 0.5 → [2·0.7071, 4·0.7071]
        let o = Owned::new(&[2]).base_model(&[2.0, 0.0]).model(&[0.0, 4.0], &[]).global(&[("t", f(0.5))]);
        assert_close(&o.run(Method::Slerp).unwrap(), &[std::f32::consts::SQRT_2, 2.828_427], 1e-6);
        // t = 1/3 on θ = π/2: coefficients sin(π/3) = 0.8660254, sin(π/6) = 0.5
        let o = Owned::new(&[2]).base_model(&[1.0, 0.0]).model(&[0.0, 1.0], &[]).global(&[("t", f(1.0 / 3.0))]);
        assert_close(&o.run(Method::Slerp).unwrap(), &[0.866_025_4, 0.5], 1e-6);
    }

    #[test]
    fn nearly_colinear_falls_back_to_lerp() {
        // cos = (1·1 + 1·1.01)/(√2·√(1+1.0201)) = 0.99998 > 0.9995 → lerp: (1-t)a + t·b
        let o = Owned::new(&[2]).base_model(&[1.0, 1.0]).model(&[1.0, 1.01], &[]).global(&[("t", f(0.25))]);
        assert_close(&o.run(Method::Slerp).unwrap(), &[1.0, 1.0025], 1e-7);
        // antipodal also lerps: a=[1,0], b=[-1,0], t=0.5 → [0,0]
        let o = Owned::new(&[2]).base_model(&[1.0, 0.0]).model(&[-1.0, 0.0], &[]).global(&[("t", f(0.5))]);
        assert_eq!(o.run(Method::Slerp).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn base_index_need_not_be_first() {
        let o = Owned::new(&[2]).model(&[0.0, 1.0], &[]).base_model(&[1.0, 0.0]).global(&[("t", f(0.0))]);
        assert_eq!(o.run(Method::Slerp).unwrap(), vec![1.0, 0.0]);
    }

    proptest! {
        #[test]
        fn endpoints_are_the_inputs(a in proptest::collection::vec(-10f32..10.0, 2..50), seed in 0u64..1000) {
            let b: Vec<f32> = a.iter().enumerate().map(|(i, x)| ((i as u64 * 31 + seed) % 17) as f32 - 8.0 + x * 0.1).collect();
            let o0 = Owned::new(&[a.len()]).base_model(&a).model(&b, &[]).global(&[("t", f(0.0))]);
            let o1 = Owned::new(&[a.len()]).base_model(&a).model(&b, &[]).global(&[("t", f(1.0))]);
            let r0 = o0.run(Method::Slerp).unwrap();
            let r1 = o1.run(Method::Slerp).unwrap();
            for i in 0..a.len() {
                prop_assert!((r0[i] - a[i]).abs() <= 1e-5 * (1.0 + a[i].abs()));
                prop_assert!((r1[i] - b[i]).abs() <= 1e-5 * (1.0 + b[i].abs()));
            }
        }
    }
}
