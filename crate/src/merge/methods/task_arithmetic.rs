//! The generalized task-arithmetic family: `task_arithmetic`, `ties`, `dare_ties`,
//! `dare_linear`, `breadcrumbs`, `breadcrumbs_ties`, `della`, `della_linear`.
//!
//! Papers: Task Arithmetic (Ilharco et al. 2022, arXiv:2212.04089), TIES (Yadav et al. 2023,
//! arXiv:2306.01708), DARE (Yu et al. 2023, arXiv:2311.03099), Model Breadcrumbs (Davari &
//! Belilovsky 2023, arXiv:2312.06795), DELLA (Deep et al. 2024, arXiv:2406.11617).
//! Reference: mergekit 0.1.5 `mergekit/merge_methods/generalized_task_arithmetic.py`
//! (`GeneralizedTaskArithmeticMerge.merge_group`, `get_mask`) and `registry.py` for the
//! per-name sparsifier / consensus / defaults.
//!
//! ```text
//! d_i = sparsify(x_i − base)                 (non-base models in recipe order)
//! W_i = w_i · d_i
//! consensus "sum": s = +1 where Σ W_i ≥ 0 else −1;  M_i = [sign(W_i) == s]  (sign 0 never matches)
//!                  mixed = Σ W_i M_i;  div = Σ w_i M_i (0 → 1)
//! no consensus:    mixed = Σ W_i;      div = Σ w_i (|div| < 1e-8 → 1)
//! normalize: mixed /= div;  lambda ≠ 1: mixed *= lambda;  out = base + mixed
//! ```
//! Precision (0.1.5): everything runs on tensors of the input dtype D: the delta, the weights
//! (a D tensor), each product, each quotient; sums over the model axis accumulate in f32 (in
//! model order) and round once; all emulated with `DType::round`. The sparsifiers' own
//! precision is described in `sparsify.rs`.
//!
//! Shapes: inputs `[*shape]`; deltas `[N, numel]`; output `[*shape]`.

use super::sparsify::{self, SparsifyError};
use super::{Ctx, Fraction, Method, MethodReport};
use crate::merge::MergeError;
use crate::merge::rng::Randomness;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Sparsifier {
    Magnitude,
    Random,
    MagnitudeOutliers,
    DellaMagprune,
}

/// (sparsifier, sign consensus) per registered name.
pub(super) fn family(m: Method) -> (Option<Sparsifier>, bool) {
    match m {
        Method::TaskArithmetic => (None, false),
        Method::Ties => (Some(Sparsifier::Magnitude), true),
        Method::DareTies => (Some(Sparsifier::Random), true),
        Method::DareLinear => (Some(Sparsifier::Random), false),
        Method::Breadcrumbs => (Some(Sparsifier::MagnitudeOutliers), false),
        Method::BreadcrumbsTies => (Some(Sparsifier::MagnitudeOutliers), true),
        Method::Della => (Some(Sparsifier::DellaMagprune), true),
        Method::DellaLinear => (Some(Sparsifier::DellaMagprune), false),
        other => unreachable!("{} is not a task-arithmetic method", other.name()),
    }
}

/// One non-base model's resolved parameters (mergekit binds them before computing).
pub(super) struct ModelParams {
    pub index: usize,
    /// `torch.tensor([...], dtype=D)`: the weights are D values.
    pub weight: f32,
    pub density: f64,
    pub gamma: f64,
    pub epsilon: f64,
}

/// The method's shared settings and per-model parameters.
pub(super) struct Settings {
    pub sparsifier: Option<Sparsifier>,
    pub consensus: bool,
    pub normalize: bool,
    pub rescale: bool,
    pub lambda: f64,
    pub params: Vec<ModelParams>,
}

pub(super) fn settings(ctx: &Ctx) -> Result<Settings, MergeError> {
    let (sparsifier, consensus) = family(ctx.method);
    let _int8_mask = ctx.global_bool("int8_mask")?; // memory layout only in mergekit
    let normalize = ctx.global_bool("normalize")?;
    let rescale = ctx.global_bool("rescale")?;
    let lambda = ctx.global_f64("lambda")?;
    let dt = ctx.dt;
    // Resolve every per-model parameter before computing (mergekit binds them up front).
    let mut params = Vec::with_capacity(ctx.others.len());
    for &i in &ctx.others {
        let weight = ctx.model_f64(i, "weight")?;
        let density = ctx.model_f64(i, "density")?;
        let gamma = if sparsifier == Some(Sparsifier::MagnitudeOutliers) { ctx.model_f64(i, "gamma")? } else { 0.0 };
        let epsilon = if sparsifier == Some(Sparsifier::DellaMagprune) { ctx.model_f64(i, "epsilon")? } else { 0.0 };
        params.push(ModelParams { index: i, weight: dt.round(weight as f32), density, gamma, epsilon });
    }
    Ok(Settings { sparsifier, consensus, normalize, rescale, lambda, params })
}

/// A sparsifier's complaint as a merge error naming tensor, parameter and model.
pub(super) fn sparsify_error(ctx: &Ctx, model: usize, e: SparsifyError) -> MergeError {
    match e.param {
        Some(param) => MergeError::BadParameter {
            tensor: ctx.tensor().to_string(),
            param: param.to_string(),
            message: format!("for model {}: {}", ctx.model_name(model), e.message),
        },
        None => ctx.bad_inputs(format!("model {}: {}", ctx.model_name(model), e.message)),
    }
}

/// Side channel for the statistics: non-zero entries the sparsifier zeroed.
pub(super) fn count_trimmed(before: &[f32], after: &[f32], report: &mut MethodReport) {
    let mut f = Fraction::default();
    for (&before, &after) in before.iter().zip(after) {
        let nz = (before != 0.0) as u64;
        f.whole += nz;
        f.part += nz & (after == 0.0) as u64;
    }
    report.trimmed.get_or_insert_with(Fraction::default).add(f);
}

pub(super) fn merge(ctx: &Ctx, rng: &mut dyn Randomness, report: &mut MethodReport) -> Result<Vec<f32>, MergeError> {
    let st = settings(ctx)?;
    let base = ctx.base_data().expect("task arithmetic requires a base (checked by Ctx)");
    if ctx.others.is_empty() {
        return Ok(base.to_vec());
    }
    let dt = ctx.dt;
    let rescale = st.rescale;

    // sparsified deltas d_i: [N, numel]
    let mut deltas: Vec<Vec<f32>> = Vec::with_capacity(st.params.len());
    for p in &st.params {
        let x = ctx.data(p.index);
        let delta: Vec<f32> = x.iter().zip(base).map(|(&a, &b)| dt.round(a - b)).collect();
        let named = |e: SparsifyError| sparsify_error(ctx, p.index, e);
        let mut draw = |n: usize, prob: &dyn Fn(usize) -> f32| rng.keep_mask(ctx.tensor(), p.index, n, prob);
        let delta = match st.sparsifier {
            None => delta,
            Some(s) => {
                let kept = match s {
                    Sparsifier::Magnitude => sparsify::magnitude(&delta, p.density, rescale, ctx.dt).map_err(named)?,
                    Sparsifier::Random => sparsify::bernoulli(&delta, p.density, rescale, ctx.dt, &mut draw).map_err(named)?,
                    Sparsifier::MagnitudeOutliers => sparsify::magnitude_outliers(&delta, p.density, p.gamma, rescale, ctx.dt).map_err(named)?,
                    Sparsifier::DellaMagprune => {
                        sparsify::della_magprune(&delta, ctx.inputs.shape, p.density, p.epsilon, rescale, ctx.dt, &mut draw).map_err(named)?
                    }
                };
                count_trimmed(&delta, &kept, report);
                kept
            }
        };
        deltas.push(delta);
    }
    Ok(combine(ctx, &st, deltas, base, report))
}

/// Weighting, sign consensus (or plain sum), normalization, lambda and the base: every step is
/// per element, so `combine` on a chunk of the (sparsified) deltas gives that chunk of the output.
/// `deltas[i]` belongs to `st.params[i]`; all slices have `ctx.numel` elements.
pub(super) fn combine(ctx: &Ctx, st: &Settings, mut deltas: Vec<Vec<f32>>, base: &[f32], report: &mut MethodReport) -> Vec<f32> {
    let dt = ctx.dt;
    let (params, consensus, normalize, lambda) = (&st.params[..], st.consensus, st.normalize, st.lambda);
    // weighted deltas W_i: [N, numel]
    for (delta, p) in deltas.iter_mut().zip(params) {
        for v in delta.iter_mut() {
            *v = dt.round(*v * p.weight);
        }
    }
    let n = ctx.numel;
    let mut mixed = vec![0.0f32; n];
    if consensus {
        // Blocked over elements so every inner loop runs over contiguous slices (vectorisable,
        // no per-element indexing into N vectors); the arithmetic order per element is the
        // same as the plain loop: sums in model order starting from 0.
        const BLOCK: usize = 2048;
        let mut sum = vec![0.0f32; BLOCK];
        let mut acc = vec![0.0f32; BLOCK];
        let mut div = vec![0.0f32; BLOCK];
        let mut elected = Fraction::default();
        for start in (0..n).step_by(BLOCK) {
            let end = (start + BLOCK).min(n);
            let len = end - start;
            let (sum, acc, div) = (&mut sum[..len], &mut acc[..len], &mut div[..len]);
            sum.fill(0.0);
            acc.fill(0.0);
            div.fill(0.0);
            for d in &deltas {
                sum.iter_mut().zip(&d[start..end]).for_each(|(s, &x)| *s += x);
            }
            // majority sign of the weighted deltas' sum (0 counts as +; NaN sums elect −)
            sum.iter_mut().for_each(|s| *s = if dt.round(*s) >= 0.0 { 1.0 } else { -1.0 });
            for (d, p) in deltas.iter().zip(params) {
                // `(W * mask).sum(0)`, `(weights * mask).sum(0)` with a boolean mask
                for (((a, v), &x), &majority) in acc.iter_mut().zip(div.iter_mut()).zip(&d[start..end]).zip(sum.iter()) {
                    let m = if sign(x) == majority { 1.0f32 } else { 0.0 };
                    *a += x * m;
                    *v += p.weight * m;
                }
                // side channel for the statistics: non-zero entries voted out by the election
                for (&x, &majority) in d[start..end].iter().zip(sum.iter()) {
                    let nz = (x != 0.0) as u64;
                    elected.whole += nz;
                    elected.part += nz & (sign(x) != majority) as u64;
                }
            }
            for ((out, &a), &v) in mixed[start..end].iter_mut().zip(acc.iter()).zip(div.iter()) {
                let mut m = dt.round(a);
                let mut v = dt.round(v);
                if v == 0.0 {
                    v = 1.0;
                }
                if normalize {
                    m = dt.round(m / v);
                }
                *out = m;
            }
        }
        report.elected_away = Some(elected);
    } else {
        let mut div = dt.round(params.iter().fold(0.0f32, |a, p| a + p.weight));
        if div.abs() < 1e-8 {
            div = 1.0;
        }
        for (j, m) in mixed.iter_mut().enumerate() {
            *m = dt.round(deltas.iter().fold(0.0f32, |a, d| a + d[j]));
            if normalize {
                *m = dt.round(*m / div);
            }
        }
    }
    let lambda32 = lambda as f32;
    mixed
        .iter()
        .zip(base)
        .map(|(&m, &b)| {
            let m = if lambda != 1.0 { dt.round(m * lambda32) } else { m };
            dt.round(b + m)
        })
        .collect()
}

/// `torch.sign`: −1, 0 or +1 (NaN stays NaN and so never matches a majority sign).
#[inline]
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else if x == 0.0 {
        0.0
    } else {
        f32::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;
    use crate::merge::MergeError;
    use crate::merge::rng::ReplayRandomness;
    use crate::tensor::DType;
    use proptest::prelude::*;

    fn two(method: Method, global: &[(&str, crate::merge::Scalar)], p1: &[(&str, crate::merge::Scalar)], p2: &[(&str, crate::merge::Scalar)]) -> Vec<f32> {
        Owned::new(&[4])
            .base_model(&[1.0, 1.0, 1.0, 1.0])
            .model(&[2.0, 0.0, 1.5, 1.0], p1)
            .model(&[0.5, 0.0, 3.0, 1.2], p2)
            .global(global)
            .run(method)
            .unwrap()
    }

    #[test]
    fn task_arithmetic_hand_computed() {
        // d1 = [1, −1, 0.5, 0], d2 = [−0.5, −1, 2, 0.2]; w = 0.6, 0.4; λ = 0.8
        // Σ w d = [0.4, −1.0, 1.1, 0.08]; ×0.8 = [0.32, −0.8, 0.88, 0.064]; + 1
        let out = two(Method::TaskArithmetic, &[("lambda", f(0.8))], &[("weight", f(0.6))], &[("weight", f(0.4))]);
        assert_close(&out, &[1.32, 0.2, 1.88, 1.064], 1e-6);
        // normalize with Σw = 0.5: [0.8, −2, 2.2, 0.16] / ... (w 0.3, 0.2): Σwd = [0.2,−0.5,0.55,0.04]/0.5
        let out = two(Method::TaskArithmetic, &[("normalize", b(true))], &[("weight", f(0.3))], &[("weight", f(0.2))]);
        assert_close(&out, &[1.4, 0.0, 2.1, 1.08], 1e-6);
    }

    #[test]
    fn ties_hand_computed() {
        // density 0.5 → keep 2 of 4 per model by |d|: d1 = [1,−1,0.5,0] keeps [1,−1,0,0] (tie
        // |1| = |−1| by index); d2 = [−0.5,−1,2,0.2] keeps [0,−1,2,0].
        // w = 1 each: W1 = [1,−1,0,0], W2 = [0,−1,2,0]; Σ = [1,−2,2,0] → s = [+,−,+,+]
        // M1 = [1,1,0(sign 0),0], M2 = [0(sign 0),1,1,0]
        // mixed = [1,−2,2,0]; div = [1,2,1,0→1] → [1,−1,2,0]; + base 1 = [2,0,3,1]
        let p = [("weight", f(1.0)), ("density", f(0.5))];
        assert_close(&two(Method::Ties, &[], &p, &p), &[2.0, 0.0, 3.0, 1.0], 1e-6);
        // disagreeing signs: base 0, x1 = [1], x2 = [−3], w = 1: Σ = −2 → only model 2 counts
        let o = Owned::new(&[1]).base_model(&[0.0]).model(&[1.0], &[("weight", f(1.0))]).model(&[-3.0], &[("weight", f(1.0))]);
        assert_eq!(o.run(Method::Ties).unwrap(), vec![-3.0]);
        // a negative weight flips the vote: W = [1·1, −1·(−3)] = [1, 3] → both +, Σ=4, div = 1 + (−1) = 0 → 1
        let o = Owned::new(&[1]).base_model(&[0.0]).model(&[1.0], &[("weight", f(1.0))]).model(&[-3.0], &[("weight", f(-1.0))]);
        assert_eq!(o.run(Method::Ties).unwrap(), vec![4.0]);
    }

    #[test]
    fn breadcrumbs_and_della_hand_computed() {
        // breadcrumbs ρ = 0.5, γ = 0.25 on n = 4: target 2, n_top 1, n_bot 1: ascending |d|
        // d1 = [1,−1,0.5,0]: order 0(3), 0.5(2), 1(0), 1(1) → keep positions 1..3: idx 2, 0
        // d2 = [−0.5,−1,2,0.2]: order 0.2(3), 0.5(0), 1(1), 2(2) → keep idx 0, 1
        // Σ = [1 − 0.5, −1, 0.5, 0] + 1 = [1.5, 0, 1.5, 1]
        let p = [("weight", f(1.0)), ("density", f(0.5)), ("gamma", f(0.25))];
        assert_close(&two(Method::Breadcrumbs, &[], &p, &p), &[1.5, 0.0, 1.5, 1.0], 1e-6);
        // breadcrumbs_ties: W1 = [1,0,0.5,0], W2 = [−0.5,−1,0,0]; Σ = [0.5,−1,0.5,0]
        // M1 = [1,0,1,0], M2 = [0,1,0,0]; mixed = [1,−1,0.5,0] (normalize false) + 1
        assert_close(&two(Method::BreadcrumbsTies, &[], &p, &p), &[2.0, 0.0, 1.5, 1.0], 1e-6);
    }

    #[test]
    fn ties_with_density_one_and_one_model_is_task_arithmetic() {
        let o = |m| {
            Owned::new(&[5])
                .base_model(&[0.5, -1.0, 2.0, 0.0, 3.0])
                .model(&[1.5, -2.0, 2.0, 0.25, -1.0], &[("weight", f(0.7))])
                .global(&[("normalize", b(false))])
                .run(m)
                .unwrap()
        };
        assert_eq!(o(Method::Ties), o(Method::TaskArithmetic));
    }

    #[test]
    fn dare_with_injected_mask_is_exact() {
        // d = [1, −2, 3, −4] masked by [1,0,1,0] → [1,0,3,0]; L1 10/4 → ×2.5 = [2.5,0,7.5,0]
        let mut rng = ReplayRandomness::new(0);
        rng.insert("model.layers.0.mlp.up_proj.weight", 1, vec![true, false, true, false]);
        let o = Owned::new(&[4]).base_model(&[0.0; 4]).model(&[1.0, -2.0, 3.0, -4.0], &[("weight", f(1.0)), ("density", f(0.5))]);
        assert_eq!(o.run_rng(Method::DareLinear, &mut rng).unwrap(), vec![2.5, 0.0, 7.5, 0.0]);
        assert!(rng.missing.is_empty());
        // dare_ties draws the same mask for the same (tensor, model)
        assert_eq!(o.run_rng(Method::DareTies, &mut rng).unwrap(), vec![2.5, 0.0, 7.5, 0.0]);
    }

    #[test]
    fn della_rejects_bad_epsilon_naming_the_model() {
        let o = Owned::new(&[4])
            .base_model(&[0.0; 4])
            .model(&[1.0, -2.0, 3.0, -4.0], &[("weight", f(1.0)), ("density", f(0.9)), ("epsilon", f(0.2))]);
        let e = o.run(Method::Della).unwrap_err();
        assert!(matches!(&e, MergeError::BadParameter { param, .. } if param == "epsilon"), "{e}");
        assert!(e.to_string().contains("m1"), "{e}");
        // rows of one element cannot be ranked (torch.bernoulli would reject NaN probabilities)
        let o = Owned::new(&[2, 1]).base_model(&[0.0; 2]).model(&[1.0, -2.0], &[("weight", f(1.0)), ("density", f(0.5))]);
        assert!(matches!(o.run(Method::Della), Err(MergeError::BadInputs { .. })));
    }

    #[test]
    fn bf16_rounds_after_each_op() {
        // base 1, x = 1.0078125 (= 1 + 2^-7, bf16): delta 2^-7 exact; weight 0.3 → bf16
        // 0.30078125; W = bf16(2^-7 · 0.30078125) = bf16(0.00234985...) = 0.00234985 (exact
        // product 0.0023498535 has 8 significant bits → representable); base + W = 1.00235 → bf16 1.0
        let o = Owned::new(&[1]).dtype(DType::BF16).base_model(&[1.0]).model(&[1.007_812_5], &[("weight", f(0.3))]);
        assert_eq!(o.run(Method::TaskArithmetic).unwrap(), vec![1.0]);
        // weight 0.5 on delta 2^-6 (x = 1.015625): 1 + 2^-7 is representable
        let o = Owned::new(&[1]).dtype(DType::BF16).base_model(&[1.0]).model(&[1.015_625], &[("weight", f(0.5))]);
        assert_eq!(o.run(Method::TaskArithmetic).unwrap(), vec![1.007_812_5]);
    }

    proptest! {
        #[test]
        fn dare_same_seed_same_bytes(seed in 0u64..100) {
            let base: Vec<f32> = (0..64).map(|i| i as f32 * 0.01).collect();
            let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
            let o = Owned::new(&[8, 8]).base_model(&base).model(&x, &[("weight", f(1.0)), ("density", f(0.5))]);
            let a = o.run_rng(Method::DareTies, &mut crate::merge::rng::SeededRandomness::new(seed)).unwrap();
            let b = o.run_rng(Method::DareTies, &mut crate::merge::rng::SeededRandomness::new(seed)).unwrap();
            let c = o.run_rng(Method::DareTies, &mut crate::merge::rng::SeededRandomness::new(seed + 1000)).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_ne!(&a, &c);
        }
    }
}
