//! "What the merge did": per output tensor statistics computed while the merge streams, from the
//! values the method saw and returned (`MergeObserver`), at no extra read.
//!
//! References: task vectors — Ilharco et al. 2022, "Editing Models with Task Arithmetic"
//! (arXiv:2212.04089); sign conflicts — Yadav et al. 2023, "TIES-Merging" (arXiv:2306.01708,
//! §3: "interference due to sign disagreement"); SLERP angle — Shoemake 1985. The trimmed /
//! elected-away counts and the SLERP angle come from the methods themselves
//! (`methods::MethodReport`, mergekit 0.1.5 `generalized_task_arithmetic.py`, `sce.py`,
//! `slerp.py`, `nuslerp.py` semantics). The independent reference implementation of every
//! column is `scripts/fixtures/make_stats_fixture.py` (NumPy + mergekit), checked by
//! `crate/tests/merge_stats.rs`.
//!
//! Definitions, for one output tensor of `n` elements (inputs as the method saw them, i.e. cast
//! to the load dtype, widened to f64; `b` = the base model's tensor when the recipe's base model
//! is an input of this tensor, whatever the method does with it):
//!
//! ```text
//! Δ_i = x_i − b   for every non-base input i in input order (x_i itself when there is no base)
//! delta_norm[i]       = ‖Δ_i‖₂
//! cos_first_two       = ⟨Δ_1, Δ_2⟩ / (‖Δ_1‖‖Δ_2‖)               (≥ 2 task vectors, norms ≠ 0)
//! cos_mean_pairwise   = mean over pairs i < j of cos(Δ_i, Δ_j)     (pairs with a zero norm left out)
//! sign_conflict_frac  = #{e : some Δ_i[e] > 0 and some Δ_j[e] < 0} / n   (≥ 2 task vectors)
//! trimmed_frac        = method report: non-zero task-vector entries its sparsifier zeroed / non-zero entries
//! elected_away_frac   = method report: non-zero entries left out by the sign election / non-zero entries
//! slerp_angle_rad     = method report: θ the method computed (mean over lines for line-wise nuslerp)
//! merged_delta_norm   = ‖merged − b‖₂                              (when there is a base)
//! ```
//! An undefined value is `None` (an empty CSV cell, `null` in JSON). Sums accumulate in f64, in
//! chunks (a tensor merged in element chunks gives the same sums up to f64 rounding).
//!
//! Memory: the accumulators of one tensor (a few f64 per model pair) plus a block buffer of
//! `BLOCK × models` f64, reused.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;

use serde::Serialize;

use crate::merge::MergeInputs;
use crate::merge::methods::{Fraction, MethodReport};
use crate::merge::plan::PlannedTensor;
use crate::merge::run::MergeObserver;

/// What part of the network a tensor belongs to (from its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorKind {
    Attention,
    Mlp,
    Norm,
    Embedding,
    Head,
    Other,
}

impl TensorKind {
    pub const ALL: [TensorKind; 6] = [TensorKind::Attention, TensorKind::Mlp, TensorKind::Norm, TensorKind::Embedding, TensorKind::Head, TensorKind::Other];

    pub fn name(self) -> &'static str {
        match self {
            TensorKind::Attention => "attention",
            TensorKind::Mlp => "mlp",
            TensorKind::Norm => "norm",
            TensorKind::Embedding => "embedding",
            TensorKind::Head => "head",
            TensorKind::Other => "other",
        }
    }

    /// Classify a Hugging Face / GGUF tensor name. Norms first (`post_attention_layernorm` is a
    /// norm, `self_attn.q_norm` too), then embeddings, head, attention, MLP (MoE experts and
    /// routers count as MLP).
    pub fn of(name: &str) -> TensorKind {
        let n = name.to_ascii_lowercase();
        let parts: Vec<&str> = n.split('.').collect();
        let has = |s: &str| parts.iter().any(|p| p.contains(s));
        if has("norm") || parts.iter().any(|p| p.starts_with("ln_") || *p == "ln") {
            TensorKind::Norm
        } else if has("embed") || parts.iter().any(|p| matches!(*p, "wte" | "wpe" | "token_embd")) {
            TensorKind::Embedding
        } else if has("lm_head") || parts.first() == Some(&"output") || parts.iter().any(|p| *p == "head") {
            TensorKind::Head
        } else if has("attn") || has("attention") || parts.iter().any(|p| matches!(*p, "q_proj" | "k_proj" | "v_proj" | "o_proj" | "qkv_proj" | "query_key_value")) {
            TensorKind::Attention
        } else if has("mlp") || has("ffn") || has("feed_forward") || has("expert") || parts.iter().any(|p| matches!(*p, "gate_proj" | "up_proj" | "down_proj" | "fc1" | "fc2" | "w1" | "w2" | "w3")) {
            TensorKind::Mlp
        } else {
            TensorKind::Other
        }
    }
}

/// The layer index of a tensor name: the number after a `layers` / `h` / `blocks` / `blk` /
/// `layer` component (`model.layers.12.mlp.up_proj.weight` → 12), else the first all-digit
/// component; `None` for tensors outside the layer stack (embeddings, final norm, head).
pub fn layer_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    for w in parts.windows(2) {
        if matches!(w[0], "layers" | "h" | "blocks" | "blk" | "layer") && digits(w[1]) {
            return w[1].parse().ok();
        }
    }
    parts.iter().find(|p| digits(p)).and_then(|p| p.parse().ok())
}

/// The statistics of one output tensor (see the module docs for the definitions).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsRow {
    pub tensor: String,
    pub layer: Option<usize>,
    pub kind: TensorKind,
    pub method: &'static str,
    pub numel: u64,
    /// The non-base input models of this tensor, in input order.
    pub models: Vec<String>,
    /// ‖Δ_i‖ per model of `models`.
    pub delta_norms: Vec<f64>,
    pub cos_first_two: Option<f64>,
    pub cos_mean_pairwise: Option<f64>,
    pub sign_conflict_frac: Option<f64>,
    pub trimmed_frac: Option<f64>,
    pub elected_away_frac: Option<f64>,
    pub slerp_angle_rad: Option<f64>,
    pub merged_delta_norm: Option<f64>,
}

/// Elements per block of the streaming accumulation.
const BLOCK: usize = 2048;

/// Accumulators of the tensor being observed.
struct Acc {
    tensor: String,
    models: Vec<String>,
    has_base: bool,
    numel: u64,
    sumsq: Vec<f64>,
    /// Upper triangle of ⟨Δ_i, Δ_j⟩, i < j, row-major.
    dots: Vec<f64>,
    conflicts: u64,
    merged_sumsq: f64,
    trimmed: Option<Fraction>,
    elected: Option<Fraction>,
    angle: Option<(f64, u64)>,
}

/// Collects one `StatsRow` per output tensor while a merge streams (`MergeOptions.observer`).
#[derive(Default)]
pub struct StatsCollector {
    rows: Vec<StatsRow>,
    cur: Option<Acc>,
    /// Block buffer of the task vectors: `[models, BLOCK]`.
    buf: Vec<f64>,
    /// Block buffers of the sign flags and of merged − base: `[BLOCK]`.
    signs: Vec<u8>,
    mbuf: Vec<f64>,
}

/// Σ a·b in f64 with four partial sums (vectorisable; deterministic on every target).
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            s[k] += x[k] * y[k];
        }
    }
    let mut r = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        r += x * y;
    }
    (s[0] + s[1]) + (s[2] + s[3]) + r
}

impl StatsCollector {
    pub fn new() -> StatsCollector {
        StatsCollector::default()
    }

    /// One row per finished output tensor, in the order they were written.
    pub fn rows(&self) -> &[StatsRow] {
        &self.rows
    }

    pub fn into_rows(self) -> Vec<StatsRow> {
        self.rows
    }

    /// The rows as CSV (RFC 4180 quoting, `\n` line ends). Columns:
    /// `tensor, layer, kind, method, numel`, then one `delta_norm[MODEL]` per non-base model
    /// (every model seen in any row, in first-seen order; empty where the tensor does not read
    /// it), then `cos_first_two, cos_mean_pairwise, sign_conflict_frac, trimmed_frac,
    /// elected_away_frac, slerp_angle_rad, merged_delta_norm`. Numbers are printed as the
    /// shortest decimal that reads back to the same f64; undefined values are empty cells.
    pub fn to_csv(&self) -> String {
        rows_to_csv(&self.rows)
    }

    fn start(&mut self, t: &PlannedTensor, inputs: &MergeInputs) {
        let models: Vec<String> = inputs.models.iter().enumerate().filter(|(i, _)| Some(*i) != inputs.base).map(|(_, m)| m.model.to_string()).collect();
        let k = models.len();
        self.cur = Some(Acc {
            tensor: t.name.clone(),
            models,
            has_base: inputs.base.is_some(),
            numel: 0,
            sumsq: vec![0.0; k],
            dots: vec![0.0; k * k.saturating_sub(1) / 2],
            conflicts: 0,
            merged_sumsq: 0.0,
            trimmed: None,
            elected: None,
            angle: None,
        });
    }
}

/// CSV of rows (see `StatsCollector::to_csv`).
pub fn rows_to_csv(rows: &[StatsRow]) -> String {
    let mut models: Vec<&str> = Vec::new();
    for r in rows {
        for m in &r.models {
            if !models.contains(&m.as_str()) {
                models.push(m);
            }
        }
    }
    let mut out = String::new();
    let mut header: Vec<String> = ["tensor", "layer", "kind", "method", "numel"].iter().map(|s| s.to_string()).collect();
    header.extend(models.iter().map(|m| format!("delta_norm[{m}]")));
    header.extend(
        ["cos_first_two", "cos_mean_pairwise", "sign_conflict_frac", "trimmed_frac", "elected_away_frac", "slerp_angle_rad", "merged_delta_norm"]
            .iter()
            .map(|s| s.to_string()),
    );
    out.push_str(&header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","));
    out.push('\n');
    let num = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
    for r in rows {
        let mut cells: Vec<String> = vec![csv_field(&r.tensor), r.layer.map(|l| l.to_string()).unwrap_or_default(), r.kind.name().into(), r.method.into(), r.numel.to_string()];
        for m in &models {
            cells.push(num(r.models.iter().position(|x| x == m).map(|i| r.delta_norms[i])));
        }
        for v in [r.cos_first_two, r.cos_mean_pairwise, r.sign_conflict_frac, r.trimmed_frac, r.elected_away_frac, r.slerp_angle_rad, r.merged_delta_norm] {
            cells.push(num(v));
        }
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

/// One CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

impl MergeObserver for StatsCollector {
    fn observe(&mut self, t: &PlannedTensor, inputs: &MergeInputs, merged: &[f32], offset: usize) {
        if offset == 0 || self.cur.as_ref().is_none_or(|a| a.tensor != t.name) {
            self.start(t, inputs);
        }
        let acc = self.cur.as_mut().expect("started above");
        let others: Vec<&[f32]> = inputs.models.iter().enumerate().filter(|(i, _)| Some(*i) != inputs.base).map(|(_, m)| m.data).collect();
        let base: Option<&[f32]> = inputs.base.map(|b| inputs.models[b].data);
        let k = others.len();
        let n = merged.len();
        acc.numel += n as u64;
        if self.buf.len() < k * BLOCK {
            self.buf.resize(k * BLOCK, 0.0);
        }
        if self.signs.len() < BLOCK {
            self.signs.resize(BLOCK, 0);
            self.mbuf.resize(BLOCK, 0.0);
        }
        let buf = &mut self.buf;
        for start in (0..n).step_by(BLOCK) {
            let len = BLOCK.min(n - start);
            // Δ_i for this block: buf[i·BLOCK .. i·BLOCK + len]
            for (i, x) in others.iter().enumerate() {
                let d = &mut buf[i * BLOCK..i * BLOCK + len];
                let x = &x[start..start + len];
                match base {
                    Some(b) => d.iter_mut().zip(x).zip(&b[start..start + len]).for_each(|((d, &x), &b)| *d = x as f64 - b as f64),
                    None => d.iter_mut().zip(x).for_each(|(d, &x)| *d = x as f64),
                }
                acc.sumsq[i] += dot(d, d);
            }
            let mut p = 0;
            for i in 0..k {
                for j in i + 1..k {
                    acc.dots[p] += dot(&buf[i * BLOCK..i * BLOCK + len], &buf[j * BLOCK..j * BLOCK + len]);
                    p += 1;
                }
            }
            if k >= 2 {
                // per element: bit 0 = some Δ_i > 0, bit 1 = some Δ_i < 0 (contiguous passes)
                let signs = &mut self.signs[..len];
                signs.fill(0);
                for i in 0..k {
                    for (s, &v) in signs.iter_mut().zip(&buf[i * BLOCK..i * BLOCK + len]) {
                        *s |= (v > 0.0) as u8 | (((v < 0.0) as u8) << 1);
                    }
                }
                acc.conflicts += signs.iter().map(|&s| (s == 3) as u64).sum::<u64>();
            }
            if let Some(b) = base {
                // merged − base, summed like the task vectors
                let d = &mut self.mbuf[..len];
                d.iter_mut().zip(&merged[start..start + len]).zip(&b[start..start + len]).for_each(|((d, &m), &b)| *d = m as f64 - b as f64);
                acc.merged_sumsq += dot(d, d);
            }
        }
    }

    fn method_report(&mut self, _t: &PlannedTensor, report: &MethodReport) {
        let Some(acc) = self.cur.as_mut() else { return };
        if let Some(f) = report.trimmed {
            acc.trimmed.get_or_insert_with(Fraction::default).add(f);
        }
        if let Some(f) = report.elected_away {
            acc.elected.get_or_insert_with(Fraction::default).add(f);
        }
        if let Some((s, c)) = report.slerp_angle {
            let a = acc.angle.get_or_insert((0.0, 0));
            a.0 += s;
            a.1 += c;
        }
    }

    fn tensor_done(&mut self, t: &PlannedTensor) {
        let Some(acc) = self.cur.take() else { return };
        let k = acc.models.len();
        let norms: Vec<f64> = acc.sumsq.iter().map(|s| s.sqrt()).collect();
        let cos = |i: usize, j: usize, d: f64| -> Option<f64> {
            let den = norms[i] * norms[j];
            (den > 0.0 && den.is_finite()).then(|| d / den)
        };
        let mut cos_first_two = None;
        let (mut sum, mut count) = (0.0, 0usize);
        let mut p = 0;
        for i in 0..k {
            for j in i + 1..k {
                let c = cos(i, j, acc.dots[p]);
                if i == 0 && j == 1 {
                    cos_first_two = c;
                }
                if let Some(c) = c {
                    sum += c;
                    count += 1;
                }
                p += 1;
            }
        }
        self.rows.push(StatsRow {
            layer: layer_of(&t.name),
            kind: TensorKind::of(&t.name),
            tensor: acc.tensor,
            method: t.method.name(),
            numel: acc.numel,
            delta_norms: norms,
            models: acc.models,
            cos_first_two,
            cos_mean_pairwise: (count > 0).then(|| sum / count as f64),
            sign_conflict_frac: (k >= 2 && acc.numel > 0).then(|| acc.conflicts as f64 / acc.numel as f64),
            trimmed_frac: acc.trimmed.and_then(Fraction::value),
            elected_away_frac: acc.elected.and_then(Fraction::value),
            slerp_angle_rad: acc.angle.and_then(|(s, c)| (c > 0).then(|| s / c as f64)),
            merged_delta_norm: acc.has_base.then(|| acc.merged_sumsq.sqrt()),
        });
    }
}

/// A collector shared with the code that reports progress (the page reads each new row while
/// the merge still holds the observer).
impl MergeObserver for Rc<RefCell<StatsCollector>> {
    fn observe(&mut self, t: &PlannedTensor, inputs: &MergeInputs, merged: &[f32], offset: usize) {
        self.borrow_mut().observe(t, inputs, merged, offset)
    }
    fn tensor_done(&mut self, t: &PlannedTensor) {
        self.borrow_mut().tensor_done(t)
    }
    fn method_report(&mut self, t: &PlannedTensor, report: &MethodReport) {
        self.borrow_mut().method_report(t, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_layers_from_names() {
        let cases = [
            ("model.embed_tokens.weight", TensorKind::Embedding, None),
            ("lm_head.weight", TensorKind::Head, None),
            ("model.norm.weight", TensorKind::Norm, None),
            ("model.layers.3.input_layernorm.weight", TensorKind::Norm, Some(3)),
            ("model.layers.3.post_attention_layernorm.weight", TensorKind::Norm, Some(3)),
            ("model.layers.12.self_attn.q_proj.weight", TensorKind::Attention, Some(12)),
            ("model.layers.0.self_attn.k_norm.weight", TensorKind::Norm, Some(0)),
            ("model.layers.7.mlp.down_proj.weight", TensorKind::Mlp, Some(7)),
            ("model.layers.7.block_sparse_moe.experts.3.w1.weight", TensorKind::Mlp, Some(7)),
            ("transformer.h.2.attn.c_attn.weight", TensorKind::Attention, Some(2)),
            ("blk.5.ffn_up.weight", TensorKind::Mlp, Some(5)),
            ("token_embd.weight", TensorKind::Embedding, None),
            ("output.weight", TensorKind::Head, None),
            ("something.else", TensorKind::Other, None),
        ];
        for (name, kind, layer) in cases {
            assert_eq!(TensorKind::of(name), kind, "{name}");
            assert_eq!(layer_of(name), layer, "{name}");
        }
    }

    #[test]
    fn csv_quotes_names_and_leaves_undefined_cells_empty() {
        let row = StatsRow {
            tensor: "a,b".into(),
            layer: None,
            kind: TensorKind::Other,
            method: "linear",
            numel: 2,
            models: vec!["m\"1".into()],
            delta_norms: vec![0.5],
            cos_first_two: None,
            cos_mean_pairwise: None,
            sign_conflict_frac: None,
            trimmed_frac: None,
            elected_away_frac: None,
            slerp_angle_rad: None,
            merged_delta_norm: Some(0.25),
        };
        let csv = rows_to_csv(&[row]);
        let mut lines = csv.lines();
        assert_eq!(lines.next().unwrap(), "tensor,layer,kind,method,numel,\"delta_norm[m\"\"1]\",cos_first_two,cos_mean_pairwise,sign_conflict_frac,trimmed_frac,elected_away_frac,slerp_angle_rad,merged_delta_norm");
        assert_eq!(lines.next().unwrap(), "\"a,b\",,other,linear,2,0.5,,,,,,,0.25");
        assert!(lines.next().is_none());
    }
}
