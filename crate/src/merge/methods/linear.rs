//! `linear`: weighted average of every input (the base too, if listed).
//!
//! Paper: Wortsman et al. 2022, "Model soups" (arXiv:2203.05482).
//! Reference: mergekit 0.1.5 `mergekit/merge_methods/linear.py` (`linear_merge`).
//!
//! Precision (0.1.5): weights are cast to f32; `acc = 0; acc.addcmul_(x_i, w_i)` in input order
//! in f32 (torch's CPU kernel fuses it: one rounding per step, as `fmaf`); then
//! `acc / Σw` (f32 sum of the f32 weights); the result is cast to the input dtype by the caller.
//! Deviation: mergekit has no guard for Σw = 0 with `normalize` and writes inf/NaN; we return
//! `MergeError::BadParameter` for `weight` instead of a broken model.
//!
//! Shapes: every input `[*shape]`, output `[*shape]`.

use super::Ctx;
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx) -> Result<Vec<f32>, MergeError> {
    let normalize = ctx.global_bool("normalize")?;
    let mut weights = Vec::with_capacity(ctx.others.len());
    for &i in &ctx.others {
        weights.push(ctx.model_f64(i, "weight")? as f32);
    }
    let mut acc = vec![0.0f32; ctx.numel];
    for (&i, &w) in ctx.others.iter().zip(&weights) {
        for (a, &x) in acc.iter_mut().zip(ctx.data(i)) {
            // torch's vectorized CPU addcmul is a fused multiply-add (checked: bit-identical to
            // fma on AVX2, not to a separate multiply and add). libm's fmaf is exact on every
            // target, so native and wasm agree.
            *a = libm::fmaf(x, w, *a);
        }
    }
    if normalize {
        let denom = weights.iter().fold(0.0f32, |s, &w| s + w);
        if denom == 0.0 {
            return Err(ctx.bad_param(
                "weight",
                "the weights sum to 0 with normalize: true (mergekit would divide by zero and write inf/NaN); set normalize: false or change the weights",
            ));
        }
        for a in acc.iter_mut() {
            *a /= denom;
        }
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;
    use crate::tensor::DType;
    use proptest::prelude::*;

    #[test]
    fn hand_computed_weighted_average() {
        // (0.3·[1,2,3] + 0.7·[3,-2,1]) / 1.0 = [2.4, -0.8, 1.6]
        let o = Owned::new(&[3]).model(&[1.0, 2.0, 3.0], &[("weight", f(0.3))]).model(&[3.0, -2.0, 1.0], &[("weight", f(0.7))]);
        assert_close(&o.run(Method::Linear).unwrap(), &[2.4, -0.8, 1.6], 1e-6);
        // normalize: false → plain weighted sum; (1·[1,2,3] + 1·[3,-2,1]) = [4,0,4]
        let o = Owned::new(&[3])
            .model(&[1.0, 2.0, 3.0], &[("weight", f(1.0))])
            .model(&[3.0, -2.0, 1.0], &[("weight", f(1.0))])
            .global(&[("normalize", b(false))]);
        assert_eq!(o.run(Method::Linear).unwrap(), vec![4.0, 0.0, 4.0]);
        // normalize: true with weights 1,1 → mean [2,0,2]
        let o = Owned::new(&[3]).model(&[1.0, 2.0, 3.0], &[("weight", f(1.0))]).model(&[3.0, -2.0, 1.0], &[("weight", f(1.0))]);
        assert_eq!(o.run(Method::Linear).unwrap(), vec![2.0, 0.0, 2.0]);
    }

    #[test]
    fn base_model_is_an_ordinary_input() {
        let o = Owned::new(&[2]).base_model(&[0.0, 4.0]).model(&[2.0, 0.0], &[("weight", f(1.0))]);
        // the base has no weight: missing parameter naming the base model
        let e = o.run(Method::Linear).unwrap_err();
        assert!(e.to_string().contains("base"), "{e}");
        let mut o = o;
        o.models[0].2.insert("weight".into(), f(3.0));
        // (3·[0,4] + 1·[2,0]) / 4 = [0.5, 3]
        assert_eq!(o.run(Method::Linear).unwrap(), vec![0.5, 3.0]);
    }

    #[test]
    fn bf16_accumulates_in_f32_and_rounds_once() {
        // Two bf16 inputs 1.0 and 1+2^-7 with weights 0.5: f32 mean = 1+2^-8, a tie that rounds
        // to even (1.0). Pure bf16 arithmetic (≤0.1.4) would compute 0.5+0.50390625 the same,
        // so use three inputs where bf16 partial sums lose bits:
        // 256 + 1 + 1 with weights 1, normalize false: f32 = 258 (exact in bf16), bf16 steps
        // would give 256+1 → 256 (tie to even), +1 → 256.
        let o = Owned::new(&[1])
            .dtype(DType::BF16)
            .model(&[256.0], &[("weight", f(1.0))])
            .model(&[1.0], &[("weight", f(1.0))])
            .model(&[1.0], &[("weight", f(1.0))])
            .global(&[("normalize", b(false))]);
        assert_eq!(o.run(Method::Linear).unwrap(), vec![258.0]);
    }

    #[test]
    fn zero_weight_sum_with_normalize_is_an_error() {
        let o = Owned::new(&[1]).model(&[1.0], &[("weight", f(1.0))]).model(&[2.0], &[("weight", f(-1.0))]);
        let e = o.run(Method::Linear).unwrap_err();
        assert!(matches!(&e, crate::merge::MergeError::BadParameter { param, .. } if param == "weight"), "{e}");
        // without normalize it is a plain weighted sum: 1 − 2 = −1
        let o = o.global(&[("normalize", b(false))]);
        assert_eq!(o.run(Method::Linear).unwrap(), vec![-1.0]);
    }

    proptest! {
        #[test]
        fn one_model_is_that_model(data in proptest::collection::vec(-1e3f32..1e3, 1..40), w in 0.1f64..10.0) {
            let o = Owned::new(&[data.len()]).model(&data, &[("weight", f(w))]);
            let out = o.run(Method::Linear).unwrap();
            for (g, x) in out.iter().zip(&data) {
                prop_assert!((g - x).abs() <= 1e-6 * (1.0 + x.abs()), "{g} vs {x}");
            }
        }
    }
}
