//! Task-vector sparsifiers: magnitude (TIES), random (DARE), magnitude_outliers (Breadcrumbs),
//! della_magprune (DELLA), and the L1 rescale they share.
//!
//! Papers: TIES (Yadav et al. 2023, arXiv:2306.01708), DARE (Yu et al. 2023,
//! arXiv:2311.03099), Model Breadcrumbs (Davari & Belilovsky 2023, arXiv:2312.06795),
//! DELLA (Deep et al. 2024, arXiv:2406.11617).
//! Reference: mergekit 0.1.5 `mergekit/sparsify.py` (`magnitude`, `bernoulli`,
//! `magnitude_outliers`, `della_magprune`, `rescaled_masked_tensor`).
//!
//! Every function takes a task vector `d` (values exactly representable in the input dtype D)
//! of `numel` elements and returns the sparsified vector, again D-valued.
//!
//! Precision (0.1.5): magnitude and magnitude_outliers work in D (mask multiply is exact;
//! the rescale factors are D scalars). random and della_magprune work in W = bf16 for bf16
//! inputs and in f32 for f32/f16 inputs (torch.bernoulli has no CPU f16 kernel), then cast to
//! D: the keep probability is a W value, della's ranks and probabilities are W tensors.
//! Rescale: `masked · (‖d‖₁ / ‖masked‖₁)` over the whole tensor, skipped when either norm is
//! below 1e-7; the norms are W/D scalars (f32-accumulated sums rounded once).
//!
//! Deviation: torch breaks ties of equal magnitudes with an unstable argsort; we break them
//! by flat index (stable, deterministic), so results can differ only at exactly equal |d|.

use super::{for_each_line, sum_f32};
use crate::tensor::DType;

/// A sparsifier's complaint about its parameters (`param: Some`) or about the tensor itself
/// (`param: None`); the caller names tensor and model.
#[derive(Debug, Clone, PartialEq)]
pub struct SparsifyError {
    pub param: Option<&'static str>,
    pub message: String,
}

/// `rescaled_masked_tensor(tensor, mask, RescaleNorm.l1)` in dtype `w`, applied to `masked`
/// (which already holds `tensor * mask`).
pub fn rescale_l1(orig: &[f32], masked: &mut [f32], w: DType) {
    let before = w.round(sum_f32(orig.iter().map(|x| x.abs())));
    let after = w.round(sum_f32(masked.iter().map(|x| x.abs())));
    if before < 1e-7 || after < 1e-7 {
        return;
    }
    let scale = w.round(before / after);
    for m in masked.iter_mut() {
        *m = w.round(*m * scale);
    }
}

/// Python `int(x)` for a finite float: truncation toward zero (saturating far outside the
/// range any tensor size can reach; i128 keeps the later arithmetic overflow-free).
pub(super) fn py_int(x: f64) -> i128 {
    x.trunc().clamp(-1e30, 1e30) as i128
}

/// The element range of Python's `seq[start:end]` on a sequence of `len` elements.
pub(super) fn py_slice(len: usize, start: i128, end: i128) -> std::ops::Range<usize> {
    let clip = |i: i128| -> usize {
        let i = if i < 0 { i + len as i128 } else { i };
        i.clamp(0, len as i128) as usize
    };
    let (s, e) = (clip(start), clip(end));
    s..e.max(s)
}

/// Draws a keep mask: `(n, p)` → n booleans, element j kept with probability `p(j)`.
pub type Draw<'a> = dyn FnMut(usize, &dyn Fn(usize) -> f32) -> Vec<bool> + 'a;

/// Index vectors are u32 (half the memory of usize for embedding-sized tensors).
pub(super) fn check_len(n: usize) -> Result<(), SparsifyError> {
    if n > u32::MAX as usize {
        return Err(SparsifyError { param: None, message: format!("tensor has {n} elements; at most {} are supported", u32::MAX) });
    }
    Ok(())
}

/// The magnitude of `x` as an integer key whose order is `|x|.total_cmp` (NaN above +inf):
/// with the sign bit cleared, IEEE-754 bit patterns sort like the values they encode.
#[inline]
pub fn abs_key(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// Mask of the elements whose position in the total order (key ascending, then index
/// ascending) lies in `range`. Equivalent to a stable sort followed by `order[range]`, in O(n)
/// expected time: two selections on a contiguous copy of the keys find the boundary keys, and
/// one pass in index order hands out the ranks among equal boundary keys. (An indirect
/// comparator over an index vector is cache-hostile: 10–20× slower on embedding-sized tensors.)
pub fn rank_range_mask(keys: &[u32], range: std::ops::Range<usize>) -> Vec<bool> {
    let n = keys.len();
    let (s, e) = (range.start, range.end.min(n));
    let mut keep = vec![false; n];
    if s >= e {
        return keep;
    }
    let mut scratch = keys.to_vec();
    let lo = *scratch.select_nth_unstable(s).1;
    // After the first selection, scratch[s+1..] holds exactly the elements ranked after s.
    let hi = if e - 1 == s { lo } else { *scratch[s + 1..].select_nth_unstable(e - 1 - (s + 1)).1 };
    drop(scratch);
    let (mut rank_lo, mut rank_hi) = (0usize, 0usize); // ranks of the first key == lo / == hi
    for &k in keys {
        rank_lo += (k < lo) as usize;
        rank_hi += (k < hi) as usize;
    }
    for (j, &k) in keys.iter().enumerate() {
        let rank = if k == lo {
            rank_lo += 1;
            rank_lo - 1
        } else if k == hi {
            rank_hi += 1;
            rank_hi - 1
        } else {
            keep[j] = k > lo && k < hi;
            continue;
        };
        keep[j] = (s..e).contains(&rank);
    }
    keep
}

fn masked(d: &[f32], keep: impl Fn(usize) -> bool) -> Vec<f32> {
    // `tensor * mask`: a float multiply (NaN · 0 stays NaN, as in torch)
    d.iter().enumerate().map(|(j, &x)| x * if keep(j) { 1.0 } else { 0.0 }).collect()
}

/// TIES trim: keep the `k = max(1, int(ρ·n))` largest |d|; ρ ≤ 0 gives zeros, ρ ≥ 1 is a no-op.
pub fn magnitude(d: &[f32], density: f64, rescale: bool, dt: DType) -> Result<Vec<f32>, SparsifyError> {
    if density.is_nan() {
        return Err(SparsifyError { param: Some("density"), message: "must be a number, got NaN".into() });
    }
    if density >= 1.0 {
        return Ok(d.to_vec());
    }
    let n = d.len();
    if density <= 0.0 || n == 0 {
        return Ok(vec![0.0; n]);
    }
    check_len(n)?;
    let k = py_int(density * n as f64).max(1) as usize;
    // The k first elements under the total order (|d| desc with NaN largest, then index asc).
    // `!abs_bits` turns "magnitude descending" into "key ascending".
    let keys: Vec<u32> = d.iter().map(|x| !abs_key(*x)).collect();
    let keep = rank_range_mask(&keys, 0..k.min(n));
    let mut out = masked(d, |j| keep[j]);
    if rescale {
        rescale_l1(d, &mut out, dt);
    }
    Ok(out)
}

/// What a rank-based sparsifier keeps of a tensor of `n` elements, decided from its parameters
/// and `n` alone (the streamed form of [`magnitude`] / [`magnitude_outliers`], `streaming.rs`).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum RankPlan {
    /// Unchanged (ρ ≥ 1): no mask, no rescale.
    All,
    /// All zeros (TIES with ρ ≤ 0): no rescale.
    Zero,
    /// The elements at positions `range` of the total order by key (`descending`: `!abs_key`,
    /// i.e. |d| descending; else `abs_key`), ties by index; then the optional L1 rescale.
    Range { descending: bool, range: std::ops::Range<usize> },
}

/// [`magnitude`]'s decision for `n` elements (same errors, same k).
pub(super) fn magnitude_plan(n: usize, density: f64) -> Result<RankPlan, SparsifyError> {
    if density.is_nan() {
        return Err(SparsifyError { param: Some("density"), message: "must be a number, got NaN".into() });
    }
    if density >= 1.0 {
        return Ok(RankPlan::All);
    }
    if density <= 0.0 || n == 0 {
        return Ok(RankPlan::Zero);
    }
    check_len(n)?;
    let k = py_int(density * n as f64).max(1) as usize;
    Ok(RankPlan::Range { descending: true, range: 0..k.min(n) })
}

/// [`magnitude_outliers`]'s decision for `n` elements (same errors, same range).
pub(super) fn outliers_plan(n: usize, density: f64, gamma: f64) -> Result<RankPlan, SparsifyError> {
    if density.is_nan() {
        return Err(SparsifyError { param: Some("density"), message: "must be a number, got NaN".into() });
    }
    if !gamma.is_finite() {
        return Err(SparsifyError { param: Some("gamma"), message: format!("must be a finite number, got {gamma}") });
    }
    if density >= 1.0 {
        return Ok(RankPlan::All);
    }
    check_len(n)?;
    let target = py_int(density * n as f64);
    let n_top = py_int(gamma * n as f64);
    let n_bot = (n as i128 - target - n_top).max(0);
    Ok(RankPlan::Range { descending: false, range: py_slice(n, n_bot, n_bot + target) })
}

/// Breadcrumbs (0.1.5, fixed indexing): sort |d| ascending, keep sorted positions
/// `[n_bot, n_bot + target)` with `target = int(ρn)`, `n_top = int(γn)`,
/// `n_bot = max(0, n − target − n_top)`. ρ ≥ 1 is a no-op.
pub fn magnitude_outliers(d: &[f32], density: f64, gamma: f64, rescale: bool, dt: DType) -> Result<Vec<f32>, SparsifyError> {
    if density.is_nan() {
        return Err(SparsifyError { param: Some("density"), message: "must be a number, got NaN".into() });
    }
    if !gamma.is_finite() {
        return Err(SparsifyError { param: Some("gamma"), message: format!("must be a finite number, got {gamma}") });
    }
    if density >= 1.0 {
        return Ok(d.to_vec());
    }
    let n = d.len();
    check_len(n)?;
    let target = py_int(density * n as f64);
    let n_top = py_int(gamma * n as f64);
    let n_bot = (n as i128 - target - n_top).max(0);
    // The elements at sorted positions [s, e) of the total order (|d| asc, NaN last, index asc).
    let range = py_slice(n, n_bot, n_bot + target);
    let keys: Vec<u32> = d.iter().map(|x| abs_key(*x)).collect();
    let keep = rank_range_mask(&keys, range);
    let mut out = masked(d, |j| keep[j]);
    if rescale {
        rescale_l1(d, &mut out, dt);
    }
    Ok(out)
}

/// The working dtype of torch.bernoulli on CPU: bf16 stays bf16, f16/f32 use f32.
pub fn bernoulli_work_dtype(dt: DType) -> DType {
    if dt == DType::BF16 { DType::BF16 } else { DType::F32 }
}

/// DARE: keep each element with probability ρ (drawn by `draw(n, p)`), rescale to the L1 norm.
pub fn bernoulli(
    d: &[f32],
    density: f64,
    rescale: bool,
    dt: DType,
    draw: &mut Draw,
) -> Result<Vec<f32>, SparsifyError> {
    if density >= 1.0 {
        return Ok(d.to_vec());
    }
    if density.is_nan() || density < 0.0 {
        return Err(SparsifyError { param: Some("density"), message: format!("must be in [0, 1] for random drop, got {density}") });
    }
    let w = bernoulli_work_dtype(dt);
    let p = w.round(density as f32);
    let keep = draw(d.len(), &|_| p);
    let mut out = masked(d, |j| keep[j]);
    if rescale {
        rescale_l1(d, &mut out, w);
    }
    for v in out.iter_mut() {
        *v = dt.round(*v);
    }
    Ok(out)
}

/// DELLA MAGPRUNE: per line along axis 1 (1-D tensors are one line), keep probability
/// `p = (ρ−ε) + 2ε·(rank−min)/(max−min)` with rank the 1-based ascending rank of |d| in the
/// line; then the tensor-level L1 rescale. Requires ρ−ε > 0 and ρ+ε < 1 (when 0 < ρ < 1).
pub fn della_magprune(
    d: &[f32],
    shape: &[usize],
    density: f64,
    epsilon: f64,
    rescale: bool,
    dt: DType,
    draw: &mut Draw,
) -> Result<Vec<f32>, SparsifyError> {
    if density.is_nan() {
        return Err(SparsifyError { param: Some("density"), message: "must be a number, got NaN".into() });
    }
    if density >= 1.0 {
        return Ok(d.to_vec());
    }
    if density <= 0.0 {
        return Ok(vec![0.0; d.len()]);
    }
    if !(density + epsilon < 1.0 && density - epsilon > 0.0) {
        return Err(SparsifyError {
            param: Some("epsilon"),
            message: format!("must be chosen such that density ± epsilon is in (0, 1); got density {density}, epsilon {epsilon}"),
        });
    }
    let w = bernoulli_work_dtype(dt);
    // `tensor.unsqueeze(0)` for < 2 dims, then lines along dim 1.
    let line_shape: Vec<usize> = if shape.len() < 2 { vec![1, d.len()] } else { shape.to_vec() };
    if line_shape[1] < 2 {
        return Err(SparsifyError {
            param: None,
            message: format!(
                "della needs at least 2 elements along axis 1 to rank magnitudes (shape {shape:?}); mergekit fails here too: NaN keep probabilities"
            ),
        });
    }
    let lo = (density - epsilon) as f32;
    let eps32 = epsilon as f32;
    let mut probs = vec![0.0f32; d.len()];
    let mut order: Vec<usize> = Vec::new();
    let mut ranks: Vec<f32> = Vec::new();
    for_each_line(&line_shape, 1, |line| {
        order.clear();
        order.extend(0..line.len);
        order.sort_unstable_by(|&a, &b| d[line.at(a)].abs().total_cmp(&d[line.at(b)].abs()).then(a.cmp(&b)));
        ranks.clear();
        ranks.resize(line.len, 0.0);
        for (pos, &k) in order.iter().enumerate() {
            // argsort().to(W) + 1
            ranks[k] = w.round(w.round(pos as f32) + 1.0);
        }
        let min = ranks.iter().copied().fold(f32::INFINITY, f32::min);
        let max = ranks.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let span = w.round(max - min);
        for (k, j) in line.iter().enumerate() {
            let norm = w.round(w.round(ranks[k] - min) / span).clamp(0.0, 1.0);
            probs[j] = w.round(lo + w.round(w.round(norm * 2.0) * eps32));
        }
    });
    let keep = draw(d.len(), &|j| probs[j]);
    let mut out = masked(d, |j| keep[j]);
    if rescale {
        rescale_l1(d, &mut out, w);
    }
    for v in out.iter_mut() {
        *v = dt.round(*v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::rng::{Randomness, SeededRandomness};
    use proptest::prelude::*;

    fn seeded(seed: u64, model: usize) -> impl FnMut(usize, &dyn Fn(usize) -> f32) -> Vec<bool> {
        let mut r = SeededRandomness::new(seed);
        move |n, p| r.keep_mask("t", model, n, p)
    }

    proptest! {
        #[test]
        fn rank_range_mask_equals_stable_sort(keys in proptest::collection::vec(0u32..6, 0..80), a in 0usize..90, b in 0usize..90) {
            let (s, e) = (a.min(b), a.max(b));
            let mut order: Vec<usize> = (0..keys.len()).collect();
            order.sort_by_key(|&j| keys[j]); // stable: equal keys stay in index order
            let mut want = vec![false; keys.len()];
            for &j in order.iter().take(e.min(keys.len())).skip(s) {
                want[j] = true;
            }
            prop_assert_eq!(rank_range_mask(&keys, s..e), want);
        }
    }

    #[test]
    fn magnitude_keeps_top_k() {
        let d = [0.1, -0.5, 0.3, 0.0, -0.2];
        // ρ = 0.4 → k = 2: −0.5 and 0.3
        assert_eq!(magnitude(&d, 0.4, false, DType::F32).unwrap(), vec![0.0, -0.5, 0.3, 0.0, 0.0]);
        // ρ = 0.1 → int(0.5) = 0 → max(1, 0) = 1
        assert_eq!(magnitude(&d, 0.1, false, DType::F32).unwrap(), vec![0.0, -0.5, 0.0, 0.0, 0.0]);
        assert_eq!(magnitude(&d, 0.0, false, DType::F32).unwrap(), vec![0.0; 5]);
        assert_eq!(magnitude(&d, 1.0, false, DType::F32).unwrap(), d.to_vec());
        // ties broken by index: [1,1,1,1] with k = 2 keeps the first two
        assert_eq!(magnitude(&[1.0, -1.0, 1.0, 1.0], 0.5, false, DType::F32).unwrap(), vec![1.0, -1.0, 0.0, 0.0]);
        // rescale: kept |d| = 0.8 of 1.1 → ×1.375: [0, −0.6875, 0.4125, 0, 0]
        let r = magnitude(&d, 0.4, true, DType::F32).unwrap();
        assert!((r[1] + 0.6875).abs() < 1e-6 && (r[2] - 0.4125).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn breadcrumbs_keeps_exactly_target_between_outliers() {
        // n = 10, ρ = 0.5, γ = 0.2: target 5, n_top 2, n_bot 3: ascending |d| ranks 3..8 kept
        let d: Vec<f32> = (1..=10).map(|i| if i % 2 == 0 { i as f32 } else { -(i as f32) }).collect();
        let out = magnitude_outliers(&d, 0.5, 0.2, false, DType::F32).unwrap();
        let want: Vec<f32> = d.iter().map(|&x| if (4.0..=8.0).contains(&x.abs()) { x } else { 0.0 }).collect();
        assert_eq!(out, want);
        // γ = 0 (the ≤0.1.4 bug dropped everything here): keeps the top 5
        let out = magnitude_outliers(&d, 0.5, 0.0, false, DType::F32).unwrap();
        let want: Vec<f32> = d.iter().map(|&x| if x.abs() >= 6.0 { x } else { 0.0 }).collect();
        assert_eq!(out, want);
        // n_bot would be negative: ρ = 0.9, γ = 0.2 → target 9, n_top reduced to 1
        let out = magnitude_outliers(&d, 0.9, 0.2, false, DType::F32).unwrap();
        let want: Vec<f32> = d.iter().map(|&x| if x.abs() <= 9.0 { x } else { 0.0 }).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn breadcrumbs_selection_equals_full_sort() {
        // many equal magnitudes: the kept set must be exactly sorted positions [n_bot, n_bot+target)
        // of the stable order (|d| asc, index asc)
        let d: Vec<f32> = (0..200).map(|i| ((i * 7) % 13) as f32 * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        for (rho, gamma) in [(0.3, 0.1), (0.5, 0.0), (0.05, 0.5), (0.9, 0.2)] {
            let out = magnitude_outliers(&d, rho, gamma, false, DType::F32).unwrap();
            let mut order: Vec<usize> = (0..d.len()).collect();
            order.sort_by(|&a, &b| d[a].abs().total_cmp(&d[b].abs()).then(a.cmp(&b)));
            let n = d.len() as i64;
            let target = (rho * n as f64) as i64;
            let n_bot = (n - target - (gamma * n as f64) as i64).max(0) as usize;
            let mut want = vec![0.0f32; d.len()];
            for &j in &order[n_bot..n_bot + target as usize] {
                want[j] = d[j];
            }
            assert_eq!(out, want, "rho {rho} gamma {gamma}");
        }
    }

    #[test]
    fn python_slice_semantics() {
        assert_eq!(py_slice(10, 3, 8), 3..8);
        assert_eq!(py_slice(10, 3, 20), 3..10);
        assert_eq!(py_slice(10, 3, -1), 3..9);
        assert_eq!(py_slice(10, 8, 3), 8..8);
        // absurd parameters saturate instead of overflowing
        let d = [1.0f32, 2.0, 3.0];
        assert_eq!(magnitude_outliers(&d, -1e300, 1e300, false, DType::F32).unwrap(), vec![0.0; 3]);
    }

    #[test]
    fn della_probabilities_span_density_pm_epsilon() {
        // one row of 5 with distinct magnitudes: p = 0.3, 0.4, 0.5, 0.6, 0.7 by rank; with
        // ρ = 0.5, ε = 0.2. Check via a draw that records p.
        let d = [0.5f32, -0.1, 0.3, 0.2, -0.4];
        let mut seen = Vec::new();
        let mut draw = |n: usize, p: &dyn Fn(usize) -> f32| {
            seen = (0..n).map(p).collect();
            vec![true; n]
        };
        let out = della_magprune(&d, &[5], 0.5, 0.2, true, DType::F32, &mut draw).unwrap();
        assert_eq!(out, d.to_vec());
        let want = [0.7f32, 0.3, 0.5, 0.4, 0.6];
        for (g, w) in seen.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{seen:?}");
        }
        // invalid ρ ± ε
        let e = della_magprune(&d, &[5], 0.5, 0.5, true, DType::F32, &mut seeded(0, 0)).unwrap_err();
        assert_eq!(e.param, Some("epsilon"));
        // a row of one element cannot be ranked
        assert!(della_magprune(&[1.0, 2.0], &[2, 1], 0.5, 0.1, true, DType::F32, &mut seeded(0, 0)).is_err());
        // 2-D: lines along axis 1 (rows)
        let mut seen2 = Vec::new();
        let mut draw2 = |n: usize, p: &dyn Fn(usize) -> f32| {
            seen2 = (0..n).map(p).collect();
            vec![false; n]
        };
        let out = della_magprune(&[1.0, 2.0, 4.0, 3.0], &[2, 2], 0.5, 0.1, true, DType::F32, &mut draw2).unwrap();
        assert_eq!(out, vec![0.0; 4]);
        let want = [0.4f32, 0.6, 0.6, 0.4];
        for (g, w) in seen2.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{seen2:?}");
        }
    }

    proptest! {
        #[test]
        fn dare_keeps_about_density_and_preserves_l1(seed in 0u64..500, density in 0.2f64..0.9) {
            let n = 4000;
            let d: Vec<f32> = (0..n).map(|i| (((i * 7919 + seed as usize) % 2001) as f32 - 1000.0) / 1000.0).collect();
            let out = bernoulli(&d, density, true, DType::F32, &mut seeded(seed, 1)).unwrap();
            let kept = out.iter().zip(&d).filter(|(o, x)| **o != 0.0 && **x != 0.0).count() as f64;
            let nonzero = d.iter().filter(|x| **x != 0.0).count() as f64;
            // binomial: sd ≤ sqrt(0.25/4000) = 0.0079; allow 5 sd
            prop_assert!((kept / nonzero - density).abs() < 0.04, "keep rate {} vs {}", kept / nonzero, density);
            let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
            prop_assert!((l1(&out) - l1(&d)).abs() <= 1e-4 * l1(&d), "{} vs {}", l1(&out), l1(&d));
        }

        #[test]
        fn breadcrumbs_keeps_exactly_target(n in 10usize..300, density in 0.01f64..0.99, gamma in 0.0f64..0.3) {
            let d: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 + 1.0) * if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
            let out = magnitude_outliers(&d, density, gamma, false, DType::F32).unwrap();
            let kept = out.iter().filter(|x| **x != 0.0).count();
            prop_assert_eq!(kept, (density * n as f64) as usize);
        }
    }

    #[test]
    fn same_seed_same_mask_different_seed_different_mask() {
        let d: Vec<f32> = (0..1000).map(|i| i as f32 + 1.0).collect();
        let a = bernoulli(&d, 0.5, false, DType::F32, &mut seeded(3, 1)).unwrap();
        let b = bernoulli(&d, 0.5, false, DType::F32, &mut seeded(3, 1)).unwrap();
        let c = bernoulli(&d, 0.5, false, DType::F32, &mut seeded(4, 1)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bf16_bernoulli_uses_bf16_probability_and_scales() {
        // density 0.3 becomes bf16 0.30078125 as the fill value
        let mut seen = 0.0;
        let mut draw = |n: usize, p: &dyn Fn(usize) -> f32| {
            seen = p(0);
            vec![true; n]
        };
        bernoulli(&[1.0, 2.0], 0.3, true, DType::BF16, &mut draw).unwrap();
        assert_eq!(seen, 0.300_781_25);
    }
}
