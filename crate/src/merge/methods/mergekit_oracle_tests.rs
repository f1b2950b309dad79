//! Small cases checked bit-for-bit against mergekit 0.1.5 itself.
//!
//! How the numbers were made: a throwaway Python script (not committed) built each input with
//! numpy (float32, `RandomState(5)`), cast it with torch to the dtype named in the test, called
//! the registered method directly, `registry.get(name)((TensorGroup.from_tensors(ts,
//! base_index=...),), parameters=...)`, from `/opt/mkvenv` (mergekit==0.1.5, torch 2.15 CPU,
//! AVX2), and printed inputs and outputs as the shortest decimal that round-trips in f32.
//! They pin the dtype emulation details that plain math tests cannot see.

use super::Method;
use super::test_util::*;
use crate::tensor::DType;

#[test]
fn linear_f32_uses_fused_multiply_add() {
    // a separate multiply and add would give 0.5427439 for element 2
    let o = Owned::new(&[4])
        .model(&[0.9964398, 0.7124213, 0.059144244, -0.36331087], &[("weight", f(0.1))])
        .model(&[0.003288843, -0.10593044, 0.7930533, -0.63157165], &[("weight", f(0.7))])
        .model(&[-0.0061949086, -0.10106761, -0.05230815, 0.24921766], &[("weight", f(0.35))])
        .global(&[("normalize", b(false))]);
    assert_eq!(o.run(Method::Linear).unwrap(), vec![0.09977796, -0.038282838, 0.54274386, -0.39120504]);
}

#[test]
fn nearswap_bf16() {
    let o = Owned::new(&[6])
        .dtype(DType::BF16)
        .base_model(&[0.19726562, 1.3359375, -0.08691406, 1.5625, -0.30664062, -0.47851562])
        .model(&[0.19824219, 1.3359375, -0.083984375, 1.578125, -0.29492188, -0.47265625], &[])
        .global(&[("t", f(0.003))]);
    assert_eq!(o.run(Method::Nearswap).unwrap(), vec![0.19824219, 1.3359375, -0.083984375, 1.5703125, -0.30273438, -0.4765625]);
}

#[test]
fn karcher_bf16() {
    let o = Owned::new(&[6])
        .dtype(DType::BF16)
        .model(&[-0.3359375, -0.10058594, 1.4140625, 0.22167969, -1.3125, -0.69140625], &[])
        .model(&[-0.578125, 1.1484375, -0.106933594, 2.265625, 0.65625, 0.125], &[])
        .model(&[-0.43554688, 0.97265625, -0.24023438, -0.82421875, 0.56640625, 0.012756348], &[]);
    assert_eq!(o.run(Method::Karcher).unwrap(), vec![-1.0078125, 1.5390625, 0.74609375, 0.51171875, -0.049316406, -0.43359375]);
}

#[test]
fn ties_bf16() {
    let o = Owned::new(&[6])
        .dtype(DType::BF16)
        .base_model(&[1.1875, -0.07373047, -2.859375, 0.7890625, -1.875, 1.5390625])
        .model(&[1.3515625, -0.41601562, -2.78125, 1.25, -1.9765625, 1.8203125], &[("weight", f(0.6)), ("density", f(0.5))])
        .model(&[1.4765625, -0.671875, -2.734375, 1.59375, -2.0625, 2.03125], &[("weight", f(0.45)), ("density", f(0.67))]);
    assert_eq!(o.run(Method::Ties).unwrap(), vec![1.4765625, -0.5234375, -2.859375, 1.40625, -1.875, 1.9140625]);
}

#[test]
fn multislerp_bf16_with_base() {
    let o = Owned::new(&[5])
        .dtype(DType::BF16)
        .base_model(&[1.8203125, -0.42773438, -1.1640625, -1.3984375, 0.87109375])
        .model(&[-0.20214844, -0.59765625, -0.24316406, 2.09375, 0.34765625], &[("weight", f(0.3))])
        .model(&[0.74609375, 0.77734375, 1.015625, 1.0625, -0.7109375], &[("weight", f(0.8))]);
    assert_eq!(o.run(Method::Multislerp).unwrap(), vec![0.4296875, 0.44726562, 0.7734375, 1.4765625, -0.49609375]);
}

#[test]
fn model_stock_bf16() {
    let o = Owned::new(&[6])
        .dtype(DType::BF16)
        .base_model(&[-0.21484375, -0.76171875, -0.7109375, 1.140625, -0.5, -0.07910156])
        .model(&[-0.28320312, -0.8203125, -0.6328125, 1.09375, -0.546875, -0.029785156], &[])
        .model(&[-0.16503906, -0.68359375, -0.6953125, 0.96484375, -0.4375, -0.029296875], &[])
        .model(&[-0.11279297, -0.84765625, -0.45898438, 1.015625, -0.42773438, -0.07470703], &[]);
    assert_eq!(o.run(Method::ModelStock).unwrap(), vec![-0.19921875, -0.7734375, -0.6484375, 1.078125, -0.484375, -0.059814453]);
}
