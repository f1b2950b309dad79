//! Sparse mixture-of-experts MLP blocks on the CPU (readable f32 reference): a router picks
//! top-k SwiGLU experts per token and mixes their outputs.
//!
//! Papers: Shazeer et al., "Outrageously Large Neural Networks: The Sparsely-Gated
//! Mixture-of-Experts Layer" (arXiv 1701.06538); Jiang et al., "Mixtral of Experts" (arXiv
//! 2401.04088); Qwen1.5-MoE (Qwen team blog, 2024; shared expert as in DeepSeekMoE, arXiv
//! 2401.06066).
//!
//! Reference implementations: Hugging Face transformers 5.23
//! `models/mixtral/modeling_mixtral.py` (`MixtralTopKRouter`, `MixtralExperts`,
//! `MixtralSparseMoeBlock`) and `models/qwen2_moe/modeling_qwen2_moe.py`
//! (`Qwen2MoeTopKRouter`, `Qwen2MoeSparseMoeBlock`); mistral-inference `moe.py`. Router
//! conventions: /work/shared/references.md §4.2.
//!
//! For one token h (H,) of a sparse layer with E experts, k chosen:
//! ```text
//! logits = W_router·h                  (E,)
//! p      = softmax(logits)             (E,)      in f32
//! idx    = top-k(p)                    (k,)      ties: the lower expert index first
//! w      = p[idx] / Σ p[idx]           (k,)      Mixtral always; Qwen2-MoE iff norm_topk_prob
//! y      = Σ_j w_j · down_e(silu(gate_e·h) ⊙ up_e·h)          e = idx_j; gate/up (I_e, H), down (H, I_e)
//! y     += sigmoid(w_sg·h) · shared(h)                          Qwen2-MoE only; w_sg (1, H)
//! ```
//! Mixtral's "softmax over the top-k logits" equals softmax-then-renormalise (same numbers up to
//! rounding), which is how transformers computes it.

use serde::Serialize;

use crate::models::config::{MoeConfig, MoeStyle};
use crate::models::llama::Linear;

/// A SwiGLU MLP: down(silu(gate·x) ⊙ up·x). gate/up (I, H), down (H, I).
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Mlp {
    /// x (T, H) → (T, H).
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut gate = self.gate_proj.forward(x); // (T, I)
        let up = self.up_proj.forward(x); // (T, I)
        for (g, u) in gate.iter_mut().zip(&up) {
            *g = silu(*g) * u;
        }
        self.down_proj.forward(&gate) // (T, H)
    }

    /// Every projection through `f` (quantization, layout changes).
    pub fn map(self, mut f: impl FnMut(Linear) -> Linear) -> Mlp {
        Mlp { gate_proj: f(self.gate_proj), up_proj: f(self.up_proj), down_proj: f(self.down_proj) }
    }

    /// Bytes held by the three weight matrices (and biases).
    pub fn weight_bytes(&self) -> usize {
        self.gate_proj.weight_bytes() + self.up_proj.weight_bytes() + self.down_proj.weight_bytes()
    }
}

/// Qwen2-MoE's shared expert: an MLP every token goes through, scaled by sigmoid(gate·x).
#[derive(Clone, Debug, PartialEq)]
pub struct SharedExpert {
    pub mlp: Mlp,
    /// `shared_expert_gate` (1, H)
    pub gate: Linear,
}

/// One sparse MoE block's weights.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeBlock {
    /// Router (E, H): `block_sparse_moe.gate` (Mixtral) / `mlp.gate` (Qwen2-MoE) / GGUF `ffn_gate_inp`.
    pub router: Linear,
    /// E experts: `experts.{e}.w1/w3/w2` (Mixtral) or `experts.{e}.gate_proj/up_proj/down_proj`.
    pub experts: Vec<Mlp>,
    pub shared: Option<SharedExpert>,
}

/// One routed expert chosen for a token: its index and combine weight.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ExpertChoice {
    pub expert: usize,
    pub weight: f32,
}

/// Per token, per layer, the experts chosen (k entries, best first); dense layers give an empty
/// list. `routes[t][layer]`.
pub type ExpertTrace = Vec<Vec<Vec<ExpertChoice>>>;

/// Top-k experts of one token from its router logits (E,), with the combine weights of `style`.
pub fn route(logits: &[f32], top_k: usize, style: MoeStyle, norm_topk_prob: bool) -> Vec<ExpertChoice> {
    // softmax in f32 with the max subtracted
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
    let sum: f32 = p.iter().sum();
    for v in &mut p {
        *v /= sum;
    }
    // top-k by probability, the lower index first on ties (a stable sort of indices)
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    idx.truncate(top_k);
    let renorm = match style {
        MoeStyle::Mixtral => true,
        MoeStyle::Qwen2Moe => norm_topk_prob,
    };
    let denom: f32 = if renorm { idx.iter().map(|&e| p[e]).sum() } else { 1.0 };
    idx.into_iter().map(|e| ExpertChoice { expert: e, weight: p[e] / denom }).collect()
}

impl MoeBlock {
    /// x (T, H) (the post-attention-normed hidden states) → (T, H), and each token's choices.
    ///
    /// Tokens are gathered per expert (as transformers' `MixtralExperts` does) so each expert's
    /// projections run once over all its tokens; outputs are scatter-added in expert order.
    pub fn forward(&self, x: &[f32], cfg: &MoeConfig) -> (Vec<f32>, Vec<Vec<ExpertChoice>>) {
        let h = self.router.in_features;
        let t = x.len() / h;
        let logits = self.router.forward(x); // (T, E)
        let e_count = self.router.out_features;
        let choices: Vec<Vec<ExpertChoice>> = logits.chunks_exact(e_count).map(|l| route(l, cfg.top_k, cfg.style, cfg.norm_topk_prob)).collect();

        let mut y = vec![0.0f32; t * h];
        for (e, expert) in self.experts.iter().enumerate() {
            // (token, weight) pairs routed to expert e
            let routed: Vec<(usize, f32)> =
                choices.iter().enumerate().filter_map(|(ti, c)| c.iter().find(|ch| ch.expert == e).map(|ch| (ti, ch.weight))).collect();
            if routed.is_empty() {
                continue;
            }
            let mut xs = Vec::with_capacity(routed.len() * h); // (n_e, H)
            for &(ti, _) in &routed {
                xs.extend_from_slice(&x[ti * h..(ti + 1) * h]);
            }
            let out = expert.forward(&xs); // (n_e, H)
            for (&(ti, w), row) in routed.iter().zip(out.chunks_exact(h)) {
                for (yv, ov) in y[ti * h..(ti + 1) * h].iter_mut().zip(row) {
                    *yv += ov * w;
                }
            }
        }
        if let Some(shared) = &self.shared {
            let s = shared.mlp.forward(x); // (T, H)
            let g = shared.gate.forward(x); // (T, 1)
            for ((yr, sr), gv) in y.chunks_exact_mut(h).zip(s.chunks_exact(h)).zip(&g) {
                let sig = 1.0 / (1.0 + (-gv).exp());
                for (yv, sv) in yr.iter_mut().zip(sr) {
                    *yv += sig * sv;
                }
            }
        }
        (y, choices)
    }

    /// Every projection (router excepted) through `f`.
    pub fn map(self, mut f: impl FnMut(Linear) -> Linear) -> MoeBlock {
        MoeBlock {
            router: self.router,
            experts: self.experts.into_iter().map(|m| m.map(&mut f)).collect(),
            shared: self.shared.map(|s| SharedExpert { mlp: s.mlp.map(&mut f), gate: s.gate }),
        }
    }

    /// Bytes held by all weights of the block.
    pub fn weight_bytes(&self) -> usize {
        self.router.weight_bytes()
            + self.experts.iter().map(Mlp::weight_bytes).sum::<usize>()
            + self.shared.as_ref().map_or(0, |s| s.mlp.weight_bytes() + s.gate.weight_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtral_weights_are_softmax_over_the_top_k_logits() {
        let logits = [0.5f32, 2.0, -1.0, 1.5];
        let c = route(&logits, 2, MoeStyle::Mixtral, false);
        assert_eq!((c[0].expert, c[1].expert), (1, 3));
        // softmax([2.0, 1.5])
        let (a, b) = (1.0f32, (-0.5f32).exp());
        assert!((c[0].weight - a / (a + b)).abs() < 1e-6 && (c[1].weight - b / (a + b)).abs() < 1e-6);
    }

    #[test]
    fn qwen2_moe_renormalises_only_when_asked() {
        let logits = [0.5f32, 2.0, -1.0, 1.5];
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        let raw = route(&logits, 2, MoeStyle::Qwen2Moe, false);
        assert!((raw[0].weight - 2.0f32.exp() / z).abs() < 1e-6 && (raw[1].weight - 1.5f32.exp() / z).abs() < 1e-6);
        let norm = route(&logits, 2, MoeStyle::Qwen2Moe, true);
        assert!((norm[0].weight + norm[1].weight - 1.0).abs() < 1e-6);
        // selection is the same whatever the convention
        assert_eq!(raw.iter().map(|c| c.expert).collect::<Vec<_>>(), norm.iter().map(|c| c.expert).collect::<Vec<_>>());
    }

    #[test]
    fn ties_pick_the_lower_index() {
        let c = route(&[1.0, 3.0, 3.0, 3.0], 2, MoeStyle::Mixtral, false);
        assert_eq!((c[0].expert, c[1].expert), (1, 2));
    }
}
