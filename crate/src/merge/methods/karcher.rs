//! `karcher`: the Riemannian (Karcher / Fréchet) mean of all inputs on the unit hypersphere,
//! rescaled by the mean norm. Equal weights; a listed base is just one more input.
//!
//! Paper: H. Karcher 1977, "Riemannian center of mass and mollifier smoothing" (CPAM 30);
//! as a merge method: arXiv:2603.04972. Reference: mergekit 0.1.5
//! `mergekit/merge_methods/karcher.py` (`karcher_merge_tensors`).
//!
//! ```text
//! n_i = ‖x_i‖ (f32), u_i = x_i/n_i (0 if n_i = 0); keep i with n_i > tol, α' = α/Σα over kept
//! u = Σ α'_i u_i; u = u/‖u‖ (u_0 if ‖u‖ < tol)
//! repeat max_iter: T = Σ α'_i θ_i/sin θ_i (u_i − cos θ_i u), θ_i = acos(clamp(u·u_i)), skip θ_i < tol
//!                  stop if ‖T‖ < tol; u = cos‖T‖ u + sin‖T‖ T/‖T‖; u = u/‖u‖ if ‖u‖ > tol
//! out = (Σ α_i n_i) · u
//! ```
//! Precision (0.1.5): norms are f32 scalars; the unit vectors, the mean and the tangent are
//! tensors of the input dtype D (a 0-dim f32 scalar times a D tensor stays D, and torch rounds
//! that scalar to D before multiplying; dividing by it uses the f32 value), so every tensor
//! op is emulated with `DType::round`; `torch.dot` accumulates in f32 and rounds once. For f32
//! inputs this is the f32 evaluation mergekit does (acos near 1 makes it differ from an f64
//! evaluation by up to ~4e-4 on nearly colinear tensors; we follow f32).
//!
//! Shapes: inputs `[*shape]`, treated as flat vectors → `[*shape]`.

use super::{Ctx, norm_f32, sum_f32};
use crate::merge::MergeError;

pub(super) fn merge(ctx: &Ctx) -> Result<Vec<f32>, MergeError> {
    let max_iter = ctx.global_int("max_iter")?;
    let tol = ctx.global_f64("tol")?;
    let models = &ctx.others;
    if models.len() == 1 {
        return Ok(ctx.data(models[0]).to_vec());
    }
    let dt = ctx.dt;
    let n = models.len();
    let alphas = vec![1.0 / n as f64; n];
    let norms: Vec<f32> = models.iter().map(|&i| norm_f32(ctx.data(i).iter().copied())).collect();
    let units: Vec<Vec<f32>> = models
        .iter()
        .zip(&norms)
        .map(|(&i, &nm)| if nm == 0.0 { vec![0.0; ctx.numel] } else { ctx.data(i).iter().map(|&x| dt.round(x / nm)).collect() })
        .collect();
    // `norm.item() > tol`: the f32 norm widened to f64, compared with the Python float
    let valid: Vec<usize> = (0..n).filter(|&k| norms[k] as f64 > tol).collect();
    if valid.is_empty() {
        // mergekit: sum(tensor * 0) — zeros (NaN/inf inputs propagate)
        let mut out = vec![0.0f32; ctx.numel];
        for &i in models {
            for (o, &x) in out.iter_mut().zip(ctx.data(i)) {
                *o = dt.round(*o + dt.round(x * 0.0));
            }
        }
        return Ok(out);
    }
    let alpha_sum: f64 = valid.iter().map(|&k| alphas[k]).sum();
    let nalphas: Vec<f32> = valid.iter().map(|&k| (alphas[k] / alpha_sum) as f32).collect();
    let vunits: Vec<&Vec<f32>> = valid.iter().map(|&k| &units[k]).collect();

    // mean += alpha * unit (python float times a D tensor, then in-place add)
    let mut mean = vec![0.0f32; ctx.numel];
    for (&a, u) in nalphas.iter().zip(&vunits) {
        for (m, &x) in mean.iter_mut().zip(u.iter()) {
            *m = dt.round(*m + dt.round(a * x));
        }
    }
    let mean_norm = norm_f32(mean.iter().copied());
    if (mean_norm as f64) < tol {
        mean = vunits[0].clone();
    } else {
        for m in mean.iter_mut() {
            *m = dt.round(*m / mean_norm);
        }
    }

    for _ in 0..max_iter.max(0) {
        let mut tangent = vec![0.0f32; ctx.numel];
        for (&a, u) in nalphas.iter().zip(&vunits) {
            let dot = dt.round(sum_f32(mean.iter().zip(u.iter()).map(|(&x, &y)| x * y))).clamp(-1.0, 1.0);
            let theta = dt.round(libm::acosf(dot));
            if (theta as f64) < tol {
                continue;
            }
            // alpha * (theta / sin(theta)): 0-dim D tensors
            let coef = dt.round(a * dt.round(theta / dt.round(libm::sinf(theta))));
            for ((t, &x), &m) in tangent.iter_mut().zip(u.iter()).zip(&mean) {
                *t = dt.round(*t + dt.round(coef * dt.round(x - dt.round(dot * m))));
            }
        }
        let tn = norm_f32(tangent.iter().copied());
        if (tn as f64) < tol {
            break;
        }
        // a 0-dim f32 tensor times a D tensor: torch casts the scalar to D first
        // (checked: bf16 · f32-scalar-tensor == bf16 · bf16(scalar)); division keeps it in f32
        let (c, s) = (dt.round(libm::cosf(tn)), dt.round(libm::sinf(tn)));
        for (m, &t) in mean.iter_mut().zip(&tangent) {
            *m = dt.round(dt.round(c * *m) + dt.round(s * dt.round(t / tn)));
        }
        let un = norm_f32(mean.iter().copied());
        if (un as f64) > tol {
            for m in mean.iter_mut() {
                *m = dt.round(*m / un);
            }
        }
    }
    // scale = Σ α_i n_i over all inputs: Python float times 0-dim f32 tensors
    let scale = alphas.iter().zip(&norms).fold(0.0f32, |s, (&a, &nm)| s + (a as f32) * nm);
    let scale = dt.round(scale);
    Ok(mean.iter().map(|&m| dt.round(scale * m)).collect())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Method;

    #[test]
    fn orthogonal_pair_is_the_arc_midpoint() {
        // x = [2,0], [0,1]: u = [1,0],[0,1]; mean direction [0.7071,0.7071] is already the
        // Karcher mean (tangent terms cancel); scale = (2+1)/2 = 1.5 → [1.0606602, 1.0606602]
        let o = Owned::new(&[2]).model(&[2.0, 0.0], &[]).model(&[0.0, 1.0], &[]);
        assert_close(&o.run(Method::Karcher).unwrap(), &[1.060_660_2, 1.060_660_2], 1e-6);
    }

    #[test]
    fn three_points_converge_to_the_riemannian_mean() {
        // Unit vectors at angles 0, π/2, π/2 on the circle: Karcher mean angle is the
        // arithmetic mean of angles (on a circle arc) = π/3 → direction [0.5, 0.8660254];
        // scale = 1. Converges in a few iterations (tol 1e-5).
        let o = Owned::new(&[2]).model(&[1.0, 0.0], &[]).model(&[0.0, 1.0], &[]).model(&[0.0, 1.0], &[]);
        assert_close(&o.run(Method::Karcher).unwrap(), &[0.5, 0.866_025_4], 2e-5);
    }

    #[test]
    fn zero_inputs_and_single_input() {
        let o = Owned::new(&[2]).model(&[0.0, 0.0], &[]).model(&[0.0, 0.0], &[]);
        assert_eq!(o.run(Method::Karcher).unwrap(), vec![0.0, 0.0]);
        let o = Owned::new(&[2]).model(&[3.0, -1.0], &[]);
        assert_eq!(o.run(Method::Karcher).unwrap(), vec![3.0, -1.0]);
        // one zero input among two: the mean direction is the other's, scale is the mean norm
        let o = Owned::new(&[2]).model(&[0.0, 0.0], &[]).model(&[0.0, 4.0], &[]);
        assert_close(&o.run(Method::Karcher).unwrap(), &[0.0, 2.0], 1e-6);
    }
}
