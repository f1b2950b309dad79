//! Rotary position embeddings (RoPE) and their context-extension scalings, on the CPU.
//!
//! Papers: RoFormer (Su et al., arXiv 2104.09864) for RoPE; Position Interpolation (Chen et al.,
//! arXiv 2306.15595) for `linear`; YaRN (Peng et al., arXiv 2309.00071) for `yarn`; the Llama 3
//! herd report (arXiv 2407.21783) for `llama3`; dynamic NTK from /u/bloc97 and /u/emozilla.
//!
//! Reference implementation, matched function by function: Hugging Face transformers 5.23
//! `modeling_rope_utils.py` (`_compute_linear_scaling_rope_parameters`,
//! `_compute_dynamic_ntk_parameters`, `_compute_yarn_parameters`, `_compute_llama3_parameters`)
//! and `models/llama/modeling_llama.py` (`LlamaRotaryEmbedding.compute_default_rope_parameters`,
//! `forward`, `rotate_half`, `apply_rotary_pos_emb`). Like transformers, the base frequencies
//! `base^(2i/d)` are computed in f32 from an f32 exponent; the scalar bookkeeping (YaRN correction
//! range, mscale, dynamic base) is done in f64 as Python does.
//!
//! Notation: d = rotary dimension (head_dim × partial_rotary_factor), i = 0..d/2 the pair index,
//! inv_freq[i] = θ_i, the angle at position p is p·θ_i.
//!
//! Pair layouts: Hugging Face checkpoints rotate halves (x[i], x[i + d/2]); GGUF llama tensors have
//! Q and K rows permuted so that adjacent pairs (x[2i], x[2i+1]) rotate. Both use the same θ_i.

/// How the rotary pairs of one head are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face `rotate_half`: pair i is (x[i], x[i + d/2]).
    Halves,
    /// GGUF / original Meta layout: pair i is (x[2i], x[2i+1]).
    Adjacent,
}

/// A `rope_scaling` (transformers ≤4) / `rope_parameters` (transformers 5) method and its fields.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: θ_i / factor.
    Linear { factor: f64 },
    /// Dynamic NTK: the base grows with the current length once it exceeds `max_position_embeddings`.
    Dynamic { factor: f64 },
    /// YaRN (NTK-by-parts ramp + attention temperature).
    Yarn {
        /// `None`: max_position_embeddings / original_max_position_embeddings (as transformers).
        factor: Option<f64>,
        original_max_position_embeddings: usize,
        /// Explicit `attention_factor`; `None`: derived from factor (and mscale / mscale_all_dim).
        attention_factor: Option<f64>,
        /// `beta_fast` (default 32; 0 or absent means default, as Python's `or 32`).
        beta_fast: f64,
        /// `beta_slow` (default 1).
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        /// Round the correction range outwards to whole dimensions (default true).
        truncate: bool,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

/// Everything needed to compute the rotary frequencies of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// `rope_theta`, the base b.
    pub theta: f64,
    /// Rotary dimension d (even; ≤ head_dim).
    pub dim: usize,
    /// `max_position_embeddings` of the config (used by dynamic and, when factor is absent, yarn).
    pub max_position_embeddings: usize,
    pub scaling: RopeScaling,
}

/// The per-pair inverse frequencies θ_i (length d/2) and the factor multiplying cos and sin
/// (transformers' `attention_scaling`: 1 except for YaRN).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeFreqs {
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
}

/// `base^(2i/d)` for i in 0..d/2 as transformers computes it: exponent `arange(0, d, 2).float() / d`
/// in f32, power rounded to f32.
fn pos_freqs(base: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / dim as f32;
            base.powf(e as f64) as f32
        })
        .collect()
}

/// Plain RoPE: θ_i = 1 / b^(2i/d) (f32 division).
fn default_inv_freq(base: f64, dim: usize) -> Vec<f32> {
    pos_freqs(base, dim).into_iter().map(|p| 1.0f32 / p).collect()
}

/// YaRN's `get_mscale`: 0.1·m·ln(s) + 1 for s > 1, else 1.
fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

/// YaRN's `find_correction_dim`: the (fractional) dimension index whose wavelength fits
/// `num_rotations` times into `max_pos`: d·ln(L / (n·2π)) / (2·ln b).
fn yarn_correction_dim(num_rotations: f64, dim: usize, base: f64, max_pos: usize) -> f64 {
    (dim as f64 * (max_pos as f64 / (num_rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
}

impl RopeConfig {
    /// The inverse frequencies and attention factor, as transformers' rope init functions return
    /// them. `seq_len` matters only for `Dynamic`: the current sequence length (transformers
    /// recomputes dynamic frequencies from `max(position_ids) + 1` when that exceeds
    /// `max_position_embeddings`); `None` means `max_position_embeddings` (the frequencies at init).
    pub fn freqs(&self, seq_len: Option<usize>) -> RopeFreqs {
        let d = self.dim;
        let b = self.theta;
        match &self.scaling {
            RopeScaling::Default => RopeFreqs { inv_freq: default_inv_freq(b, d), attention_factor: 1.0 },
            RopeScaling::Linear { factor } => {
                // `inv_freq /= factor` on an f32 tensor.
                let f = *factor as f32;
                RopeFreqs { inv_freq: default_inv_freq(b, d).into_iter().map(|x| x / f).collect(), attention_factor: 1.0 }
            }
            RopeScaling::Dynamic { factor } => {
                let max = self.max_position_embeddings as f64;
                let len = seq_len.unwrap_or(self.max_position_embeddings).max(self.max_position_embeddings) as f64;
                // b' = b·((s·ℓ/L) − (s−1))^(d/(d−2))
                let base = b * ((factor * len / max) - (factor - 1.0)).powf(d as f64 / (d as f64 - 2.0));
                RopeFreqs { inv_freq: default_inv_freq(base, d), attention_factor: 1.0 }
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, attention_factor, beta_fast, beta_slow, mscale, mscale_all_dim, truncate } => {
                let orig = *original_max_position_embeddings;
                let factor = factor.unwrap_or(self.max_position_embeddings as f64 / orig as f64);
                let attention = match attention_factor {
                    Some(a) => *a,
                    None => match (mscale, mscale_all_dim) {
                        // Python truthiness: both present and non-zero.
                        (Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => yarn_get_mscale(factor, *m) / yarn_get_mscale(factor, *ma),
                        _ => yarn_get_mscale(factor, 1.0),
                    },
                };
                let beta_fast = if *beta_fast == 0.0 { 32.0 } else { *beta_fast };
                let beta_slow = if *beta_slow == 0.0 { 1.0 } else { *beta_slow };
                let mut low = yarn_correction_dim(beta_fast, d, b, orig);
                let mut high = yarn_correction_dim(beta_slow, d, b, orig);
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min((d - 1) as f64);
                if low == high {
                    high += 0.001; // "Prevent singularity"
                }
                let pf = pos_freqs(b, d);
                let fac = factor as f32;
                let inv_freq = pf
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let extrapolation = 1.0f32 / p;
                        let interpolation = 1.0f32 / (fac * p);
                        // ramp = clamp((i − low)/(high − low), 0, 1) in f32; extrapolation factor = 1 − ramp
                        let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                        let ext = 1.0f32 - ramp;
                        interpolation * (1.0 - ext) + extrapolation * ext
                    })
                    .collect();
                RopeFreqs { inv_freq, attention_factor: attention as f32 }
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let f = *factor as f32;
                let inv_freq = default_inv_freq(b, d)
                    .into_iter()
                    .map(|x| {
                        // wavelen = 2π / θ (f32 tensor op)
                        let wavelen = (2.0 * std::f64::consts::PI) as f32 / x;
                        let wl = wavelen as f64;
                        if wl < high_wavelen {
                            x // high frequency: keep
                        } else if wl > low_wavelen {
                            x / f // low frequency: interpolate fully
                        } else {
                            let smooth = ((old as f32 / wavelen) - *low_freq_factor as f32) / (*high_freq_factor as f32 - *low_freq_factor as f32);
                            (1.0 - smooth) * x / f + smooth * x
                        }
                    })
                    .collect();
                RopeFreqs { inv_freq, attention_factor: 1.0 }
            }
        }
    }
}

/// Rotate the first `2 × freqs.inv_freq.len()` dimensions of each of the `n_heads` heads in `x`
/// (shape `(n_heads, head_dim)`, row-major) for position `pos`, in place. cos and sin are
/// multiplied by `freqs.attention_factor` (as transformers does). Dimensions past the rotary
/// dimension are left as they are (partial rotary).
///
/// Halves: y[i] = x[i]·c − x[i+d/2]·s, y[i+d/2] = x[i+d/2]·c + x[i]·s (`q·cos + rotate_half(q)·sin`).
/// Adjacent: y[2i] = x[2i]·c − x[2i+1]·s, y[2i+1] = x[2i+1]·c + x[2i]·s.
pub fn apply_rope(x: &mut [f32], n_heads: usize, head_dim: usize, pos: usize, freqs: &RopeFreqs, layout: RopeLayout) {
    let half = freqs.inv_freq.len();
    debug_assert!(2 * half <= head_dim && x.len() == n_heads * head_dim);
    // cos/sin of p·θ_i: the angle is an f32 product (transformers: `position_ids.float() * inv_freq`).
    let cs: Vec<(f32, f32)> = freqs
        .inv_freq
        .iter()
        .map(|&t| {
            let angle = pos as f32 * t;
            let (s, c) = (angle as f64).sin_cos();
            ((c as f32) * freqs.attention_factor, (s as f32) * freqs.attention_factor)
        })
        .collect();
    for head in x.chunks_exact_mut(head_dim).take(n_heads) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (a, b) = match layout {
                RopeLayout::Halves => (i, i + half),
                RopeLayout::Adjacent => (2 * i, 2 * i + 1),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x1 * c + x0 * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling) -> RopeConfig {
        RopeConfig { theta: 10000.0, dim: 16, max_position_embeddings: 64, scaling }
    }

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        // xorshift: deterministic test data without a dependency
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    #[test]
    fn rotation_preserves_norm_per_head() {
        for layout in [RopeLayout::Halves, RopeLayout::Adjacent] {
            let f = cfg(RopeScaling::Default).freqs(None);
            for pos in [0usize, 1, 7, 100, 4095] {
                let x = rand_vec(3 * 16, pos as u64 + 1);
                let mut y = x.clone();
                apply_rope(&mut y, 3, 16, pos, &f, layout);
                for h in 0..3 {
                    let n0: f32 = x[h * 16..(h + 1) * 16].iter().map(|v| v * v).sum();
                    let n1: f32 = y[h * 16..(h + 1) * 16].iter().map(|v| v * v).sum();
                    assert!((n0 - n1).abs() <= 1e-5 * n0.max(1.0), "{layout:?} pos {pos}: {n0} vs {n1}");
                }
            }
        }
    }

    #[test]
    fn position_zero_is_identity() {
        let f = cfg(RopeScaling::Default).freqs(None);
        let x = rand_vec(16, 9);
        let mut y = x.clone();
        apply_rope(&mut y, 1, 16, 0, &f, RopeLayout::Halves);
        assert_eq!(x, y);
    }

    #[test]
    fn dot_product_depends_only_on_relative_position() {
        for layout in [RopeLayout::Halves, RopeLayout::Adjacent] {
            for scaling in [RopeScaling::Default, RopeScaling::Linear { factor: 4.0 }] {
                let f = cfg(scaling).freqs(None);
                let q = rand_vec(16, 3);
                let k = rand_vec(16, 4);
                let dot_at = |pq: usize, pk: usize| {
                    let (mut a, mut b) = (q.clone(), k.clone());
                    apply_rope(&mut a, 1, 16, pq, &f, layout);
                    apply_rope(&mut b, 1, 16, pk, &f, layout);
                    a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
                };
                for (m, n) in [(5usize, 2usize), (40, 37), (12, 0)] {
                    for shift in [1usize, 10, 50] {
                        let (d0, d1) = (dot_at(m, n), dot_at(m + shift, n + shift));
                        // f32 angles up to ~100 rad: allow 1e-4 absolute on O(1) dot products
                        assert!((d0 - d1).abs() < 1e-4, "{layout:?} ({m},{n})+{shift}: {d0} vs {d1}");
                    }
                }
            }
        }
    }

    #[test]
    fn layouts_agree_after_permuting_pairs() {
        // GGUF's permutation maps HF-halves index i → 2i and i + d/2 → 2i + 1.
        let f = cfg(RopeScaling::Default).freqs(None);
        let x = rand_vec(16, 11);
        let mut adj: Vec<f32> = (0..16).map(|j| if j % 2 == 0 { x[j / 2] } else { x[j / 2 + 8] }).collect();
        let mut hf = x.clone();
        apply_rope(&mut hf, 1, 16, 13, &f, RopeLayout::Halves);
        apply_rope(&mut adj, 1, 16, 13, &f, RopeLayout::Adjacent);
        for i in 0..8 {
            assert_eq!(hf[i], adj[2 * i]);
            assert_eq!(hf[i + 8], adj[2 * i + 1]);
        }
    }

    #[test]
    fn attention_factor_scales_cos_and_sin() {
        let mut f = cfg(RopeScaling::Default).freqs(None);
        let x = rand_vec(16, 5);
        let (mut a, mut b) = (x.clone(), x.clone());
        apply_rope(&mut a, 1, 16, 3, &f, RopeLayout::Halves);
        f.attention_factor = 2.0;
        apply_rope(&mut b, 1, 16, 3, &f, RopeLayout::Halves);
        for (u, v) in a.iter().zip(&b) {
            assert!((2.0 * u - v).abs() < 1e-6);
        }
    }

    #[test]
    fn dynamic_equals_default_up_to_max_position() {
        let d = cfg(RopeScaling::Dynamic { factor: 2.0 });
        let plain = cfg(RopeScaling::Default).freqs(None);
        assert_eq!(d.freqs(None), plain);
        assert_eq!(d.freqs(Some(10)), plain);
        assert_ne!(d.freqs(Some(65)), plain);
    }
}
