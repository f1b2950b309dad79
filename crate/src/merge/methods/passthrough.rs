//! `passthrough`: copy the single input tensor, optionally multiplied by its `scale`
//! (used with `slices` for frankenmerges).
//!
//! Reference: mergekit 0.1.5 `mergekit/merge_methods/passthrough.py`
//! (`passthrough_merge_method`). Precision: `tensor * scale` is one op in the input dtype.
//!
//! Shapes: input `[*shape]` → `[*shape]`.

use super::Ctx;
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx) -> Result<Vec<f32>, MergeError> {
    let i = ctx.others[0];
    let x = ctx.data(i);
    Ok(match ctx.opt_f64("scale", Some(i))? {
        None => x.to_vec(),
        Some(s) => {
            let s = s as f32;
            x.iter().map(|&v| ctx.r(v * s)).collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;
    use crate::tensor::DType;

    #[test]
    fn copies_or_scales() {
        let o = Owned::new(&[3]).model(&[1.0, -2.0, 3.5], &[]);
        assert_eq!(o.run(Method::Passthrough).unwrap(), vec![1.0, -2.0, 3.5]);
        let o = Owned::new(&[3]).model(&[1.0, -2.0, 3.5], &[("scale", f(0.5))]);
        assert_eq!(o.run(Method::Passthrough).unwrap(), vec![0.5, -1.0, 1.75]);
        // bf16: 1.0078125 · 0.3 = 0.30234375 → bf16 0.302734375
        let o = Owned::new(&[1]).dtype(DType::BF16).model(&[1.007_812_5], &[("scale", f(0.3))]);
        assert_eq!(o.run(Method::Passthrough).unwrap(), vec![0.302_734_38]);
    }
}
