//! `nearswap`: interpolate each element towards the other model in proportion to how close
//! it already is to the base: `w = clamp(t / max(|a − b|, 1e-6), 0, 1)`, `out = w·b + (1−w)·a`.
//!
//! Reference: alchemonaut, QuartetAnemoi-70B-t0.0001 model card
//! (https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001); mergekit 0.1.5
//! `mergekit/merge_methods/nearswap.py` (`nearswap_merge`).
//! Precision (0.1.5): elementwise ops on tensors of the input dtype D, rounded after each op.
//!
//! Shapes: base `a: [*shape]`, other `b: [*shape]` → `[*shape]`.

use super::Ctx;
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx) -> Result<Vec<f32>, MergeError> {
    let t = ctx.global_f64("t")? as f32;
    let a = ctx.base_data().expect("nearswap requires a base (checked by Ctx)");
    let b = ctx.data(ctx.others[0]);
    let dt = ctx.dt;
    let floor = 1e-6f32;
    Ok(a.iter()
        .zip(b)
        .map(|(&a, &b)| {
            let absdiff = dt.round((a - b).abs());
            let clamped = dt.round(if absdiff < floor { floor } else { absdiff });
            // `t / tensor` with a Python float is `tensor.reciprocal() * t` in torch: two ops
            let w = dt.round(dt.round(1.0 / clamped) * t).clamp(0.0, 1.0);
            dt.round(dt.round(w * b) + dt.round(dt.round(1.0 - w) * a))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;

    #[test]
    fn hand_computed() {
        // t = 0.5: a = [0, 0, 0, 1], b = [0.25, 1, 4, 1]
        // |a−b| = [0.25, 1, 4, 0→1e-6]; w = [2→1, 0.5, 0.125, 5e5→1]
        // out = [0.25, 0.5, 0.5, 1]
        let o = Owned::new(&[4]).base_model(&[0.0, 0.0, 0.0, 1.0]).model(&[0.25, 1.0, 4.0, 1.0], &[]).global(&[("t", f(0.5))]);
        assert_eq!(o.run(Method::Nearswap).unwrap(), vec![0.25, 0.5, 0.5, 1.0]);
    }
}
