//! `model_stock`: interpolate the average of N ≥ 2 fine-tunes towards the base by a ratio
//! derived from the mean pairwise angle between their task vectors.
//!
//! Paper: Jang, Yun, Han 2024, "Model Stock: All we need is just a few fine-tuned models"
//! (arXiv:2403.19522). Reference: mergekit 0.1.5 `mergekit/merge_methods/model_stock.py`
//! (`model_stock_merge_method`).
//!
//! ```text
//! vectors: the flattened tensor, or (filter_wise) each line along the last axis (1-D: one line)
//! o_i = x_i − base;  cos = mean over pairs i<j of clamp(o_i·o_j / max(‖o_i‖‖o_j‖, 1e-6), −1, 1)
//! t = N·cos / (1 + (N−1)·cos)   (t = 0 where |1 + (N−1)·cos| < 1e-6)
//! out = t·mean_i(x_i) + (1 − t)·base
//! ```
//! Precision (0.1.5): tensor ops in the input dtype D, rounded after each op; norms and sums
//! accumulate in f32 and round once. `mean_i(x_i)` is Python `sum(ws) / N`: sequential D adds.
//!
//! Shapes: inputs `[*shape]` → lines `[L, len]` → `[*shape]`.

use super::{Ctx, Line, for_each_line, norm_f32, sum_f32};
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx) -> Result<Vec<f32>, MergeError> {
    let filter_wise = ctx.global_bool("filter_wise")?;
    let dt = ctx.dt;
    let w0 = ctx.base_data().expect("model_stock requires a base (checked by Ctx)");
    let ws: Vec<&[f32]> = ctx.others.iter().map(|&i| ctx.data(i)).collect();
    let count = ws.len();
    let offsets: Vec<Vec<f32>> = ws.iter().map(|w| w.iter().zip(w0).map(|(&a, &b)| dt.round(a - b)).collect()).collect();
    // average = sum(ws) / count  (Python sum starts at int 0: 0 + ws[0] is exact)
    let mut average = ws[0].to_vec();
    for w in &ws[1..] {
        for (a, &x) in average.iter_mut().zip(w.iter()) {
            *a = dt.round(*a + x);
        }
    }
    let countf = count as f32;
    for a in average.iter_mut() {
        *a = dt.round(*a / countf);
    }
    let shape = ctx.inputs.shape;
    let mut out = vec![0.0f32; ctx.numel];
    let mut merge_line = |line: Line| {
        let norms: Vec<f32> = offsets.iter().map(|o| dt.round(norm_f32(line.iter().map(|j| o[j])))).collect();
        let mut cos_sum = 0.0f64;
        let mut pairs = 0usize;
        for a in 0..count {
            for b in a + 1..count {
                let np = dt.round(norms[a] * norms[b]);
                let np = dt.round(if np < 1e-6 { 1e-6 } else { np });
                let dot = dt.round(sum_f32(line.iter().map(|j| dt.round(offsets[a][j] * offsets[b][j]))));
                cos_sum += dt.round(dot / np).clamp(-1.0, 1.0) as f64;
                pairs += 1;
            }
        }
        // torch.stack(cos_thetas).mean(dim=0): f32-accumulated mean, rounded to D
        let cos = dt.round((cos_sum / pairs as f64) as f32);
        let denom = dt.round(1.0 + dt.round((count as f32 - 1.0) * cos));
        let t = if denom.abs() < 1e-6 { 0.0 } else { dt.round(dt.round(countf * cos) / denom) };
        let one_minus_t = dt.round(1.0 - t);
        for j in line.iter() {
            out[j] = dt.round(dt.round(t * average[j]) + dt.round(one_minus_t * w0[j]));
        }
    };
    if filter_wise && !shape.is_empty() {
        for_each_line(shape, shape.len() - 1, &mut merge_line);
    } else {
        merge_line(Line::whole(ctx.numel));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;

    #[test]
    fn identical_fine_tunes_give_the_fine_tune() {
        // cos = 1 → t = N/(1 + N − 1) = 1 → out = mean = the fine-tune
        let o = Owned::new(&[3]).base_model(&[0.0, 1.0, 2.0]).model(&[1.0, 3.0, 2.5], &[]).model(&[1.0, 3.0, 2.5], &[]).model(&[1.0, 3.0, 2.5], &[]);
        assert_close(&o.run(Method::ModelStock).unwrap(), &[1.0, 3.0, 2.5], 1e-6);
    }

    #[test]
    fn hand_computed_orthogonal_and_opposite() {
        // orthogonal task vectors: cos = 0 → t = 0 → base
        let o = Owned::new(&[2]).base_model(&[1.0, 1.0]).model(&[2.0, 1.0], &[]).model(&[1.0, 2.0], &[]);
        assert_eq!(o.run(Method::ModelStock).unwrap(), vec![1.0, 1.0]);
        // o1 = [1,0], o2 = [1,1]: cos = 1/√2 = 0.70710677; t = 2c/(1+c) = 0.82842714
        // mean = [2, 1.5] (base [1,1] + [1, 0.5]); out = t·mean + (1−t)·base
        //      = [1 + t, 1 + 0.5t] = [1.8284271, 1.4142135]
        let o = Owned::new(&[2]).base_model(&[1.0, 1.0]).model(&[2.0, 1.0], &[]).model(&[2.0, 2.0], &[]);
        assert_close(&o.run(Method::ModelStock).unwrap(), &[1.828_427_1, std::f32::consts::SQRT_2], 1e-6);
        // opposite (cos = −1) with N = 2: denominator 0 → singular → t = 0 → base
        let o = Owned::new(&[2]).base_model(&[1.0, 1.0]).model(&[2.0, 1.0], &[]).model(&[0.0, 1.0], &[]);
        assert_eq!(o.run(Method::ModelStock).unwrap(), vec![1.0, 1.0]);
    }

    #[test]
    fn filter_wise_uses_rows() {
        // row 0: o = [1,0] and [1,0] → t = 1 → mean [2,1]; row 1: o = [1,0], [0,1] → t = 0 → base
        let base = [1.0, 1.0, 1.0, 1.0];
        let o = Owned::new(&[2, 2])
            .base_model(&base)
            .model(&[2.0, 1.0, 2.0, 1.0], &[])
            .model(&[2.0, 1.0, 1.0, 2.0], &[])
            .global(&[("filter_wise", b(true))]);
        assert_close(&o.run(Method::ModelStock).unwrap(), &[2.0, 1.0, 1.0, 1.0], 1e-6);
    }
}
