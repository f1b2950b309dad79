//! The Llama-family forward pass (Llama, SmolLM2, Mistral, Qwen2) on WebGPU with our WGSL kernels:
//! the same graph as the CPU reference in `models/llama.rs`, which it is tested against.
//!
//! Papers: LLaMA (arXiv 2302.13971), RMSNorm (arXiv 1910.07467), SwiGLU (arXiv 2002.05202), RoPE
//! (arXiv 2104.09864), GQA (arXiv 2305.13245), FlashAttention (arXiv 2205.14135) / flash-decoding
//! for the attention. Reference implementation: HF transformers `models/llama/modeling_llama.py`
//! (numbers) and llama.cpp's GPU backends (the per-token dispatch graph with a resident KV cache).
//!
//! Per token chunk of T ≤ `max_batch` tokens, one command encoder records:
//! ```text
//! embed (ops::embed)                                     tokens (T) → x (T, H)
//! per layer: rmsnorm x → hs; q, k, v = hs·Wᵀ (+ b)         (ops::qmatvec per token for quantized
//!            weights, ops::matmul for f32; ops::add for biases)
//!            rope(q), rope(k) at pos0.. (ops::rope, θ_i from posenc::rope on the CPU)
//!            k, v appended to the GPU KV cache (buffer copies)
//!            attn = attention(q, cache) (ops::attention: online softmax, GQA, causal, window;
//!                   split-K + reduce for decode steps)
//!            x += attn·Woᵀ; hs = rmsnorm(x); x += down(silu(gate(hs)) ⊙ up(hs)) (ops::swiglu, ops::add)
//! rmsnorm(x) → head (embed table when tied) → logits (T, vocab) or the last row only
//! ```
//! Sparse MoE layers (Mixtral, Qwen2-MoE; `models::moe`, Mixtral arXiv 2401.04088) replace the
//! MLP line by: router logits = hs·W_rᵀ (T, E) → ops::router (softmax + top-k, per-style
//! combine weights, out = [w (T, k) | idx (T, k)]) and then, by default ([`MoeGpuPath::ById`],
//! llama.cpp's `mul_mat_id` idea): gate, up = ops::qmatvec_id over the T·k (token, slot) pairs
//! with the experts' projections stacked (one binding per projection, or one per group of experts
//! when they do not fit one together) and the ids read from the router's output on the GPU (T·k, I) → ops::swiglu → down by id (T·k, H) → moe_combine (Σ_s w·out per
//! token) → y; Qwen2-MoE's shared expert on every row, scattered with its sigmoid gate; x += y.
//! Nothing is read back per layer: each layer's [w | idx] is copied behind the logits and comes
//! back with them (one readback per step) for [`GpuLlama::routes`]. When one expert alone does
//! not fit a storage binding (or the experts are not one F32 / F16 / Q8_0 / Q4_0 / Q4_1 format,
//! or `max_chunk_rows` is below N, or CRUCIBLE_MOE_READBACK=1) the layer falls back to
//! [`MoeGpuPath::Readback`] with the reason: submit and read the top-k back (2·T·k floats) →
//! `ops::moe::MoePlan` on the CPU (each expert's tokens) → per expert with tokens: gather
//! (ops::moe) → SwiGLU on the gathered rows (the linear ops above) → weighted scatter-add into y:
//! one GPU→CPU sync per sparse layer and token chunk ([`GpuLlama::router_readbacks`]).
//! Measured on lavapipe (2 shared cores, load 6–9; tiny Mixtral fixture, 64 greedy tokens,
//! `crucible run --backend gpu`, release): decode 15–18 tok/s with the readback, 26–39 by id
//! (F32); with `--quantize q4_0` about 50 → 60 tok/s.
//! then one submit and one readback of the logits (`GpuContext::read_f32`, which awaits the map:
//! the same code runs natively under `pollster` and in the browser where mapping is async).
//!
//! Weights are uploaded once (quantized ones stay in the aligned split layout and are
//! dequantized in the kernels; F16 ones stay binary16 and run through ops::hmatvec / ops::hmatmul,
//! which widen in the kernel: `enable f16;` where the device has shader-f16, packed u32 +
//! `unpack2x16float` otherwise; every weight is split by rows to fit the storage binding limit);
//! the activations are pooled buffers taken once per model and reused for every token.
//!
//! Prefill: batched (T tokens per encoder, attention over T query rows at once) when every f32
//! weight fits one binding and every quantized weight's row length and row count are multiples
//! of the device's `min_storage_buffer_offset_alignment` in floats (per-token `qmatvec` bindings
//! on aligned offsets; 256 bytes = 64 floats on most GPUs, 16 bytes on lavapipe); otherwise token
//! by token. With `CRUCIBLE_QMATMUL=1` batched quantized products run `ops::qmatmul` instead
//! (each weight tile dequantized once per 32 tokens; no alignment condition). It is opt-in:
//! measured on lavapipe (2 shared cores, release, SmolLM2 Q4_1, 5-token prompt) the qmatmul
//! prefill took 78–93 s against 11 s with per-token qmatvec (machine load 5–8 vs 3), so the
//! kernel needs tuning before it is the default; the tiny-fixture tests passed with it on.

use crate::gpu::{GpuContext, GpuError, PooledBuffer};
use crate::models::llama::{Linear, LlamaModel, WeightStorage};
use crate::models::config::LlamaConfig;
use crate::models::moe::{ExpertChoice, ExpertTrace, Mlp, MoeBlock};
use crate::ops::{moe, qmatvec_id, router};
use crate::ops::embed::{EmbedTable, GpuEmbedTable, persistent_storage};
use crate::ops::attention::{self, AttentionParams, GpuKvCache};
use crate::ops::{OpError, add, hmatmul, hmatvec, matmul, matvec, qmatmul, qmatvec, rmsnorm, rope, swiglu};
use crate::posenc::rope::{RopeFreqs, RopeLayout, RopeScaling};
use crate::tensor::quant::SplitBlocks;

/// Errors of the GPU model: a kernel or GPU failure, or a model the GPU path cannot run (named).
#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    #[error("{0}")]
    Op(#[from] OpError),
    #[error("{0}")]
    Gpu(#[from] GpuError),
    #[error("GPU model: {0}")]
    Unsupported(String),
    #[error("token {token} at index {index} is out of range (vocab_size {vocab})")]
    TokenOutOfRange { token: u32, index: usize, vocab: usize },
}

/// Options of [`GpuLlama::new`].
#[derive(Debug, Clone)]
pub struct GpuLlamaOptions {
    /// Positions the KV cache holds (allocated up front, per layer k and v of
    /// max_context × n_kv_heads × head_dim f32). Not capped by `max_position_embeddings`: the CPU
    /// path has no cap either.
    pub max_context: usize,
    /// Tokens per prefill chunk (one encoder each).
    pub max_batch: usize,
    /// Force the number of key splits of decode steps (None: `attention::default_splits`).
    pub decode_splits: Option<usize>,
    /// Upper bound on rows per weight chunk (None: what one binding holds). For tests of the
    /// chunked path.
    pub max_chunk_rows: Option<usize>,
}

impl Default for GpuLlamaOptions {
    fn default() -> Self {
        GpuLlamaOptions { max_context: 2048, max_batch: 32, decode_splits: None, max_chunk_rows: None }
    }
}

/// A linear layer on the GPU: the weight as row chunks (f32 or split blocks) + optional bias.
#[derive(Debug)]
struct GpuLinear {
    table: GpuEmbedTable,
    bias: Option<wgpu::Buffer>,
    out: usize,
}

/// The split layout of a quantized weight (converted from GGUF blocks when needed).
fn split_of(w: &WeightStorage) -> Option<std::borrow::Cow<'_, SplitBlocks>> {
    match w {
        WeightStorage::F32(_) | WeightStorage::F16(_) => None,
        WeightStorage::Split(s) => Some(std::borrow::Cow::Borrowed(s)),
        WeightStorage::Blocks { format, bytes } => SplitBlocks::from_blocks(*format, bytes).ok().map(std::borrow::Cow::Owned),
    }
}

fn upload_table(ctx: &GpuContext, label: &str, lin: &Linear, max_rows: Option<usize>) -> Result<GpuEmbedTable, GpuModelError> {
    let (out, inp) = (lin.out_features, lin.in_features);
    Ok(match &lin.weight {
        WeightStorage::F32(w) => GpuEmbedTable::upload(ctx, label, EmbedTable::F32(w), out, inp, max_rows)?,
        // F16 stays F16 on the GPU (ops::hmatvec / hmatmul widen in the kernel); their vec4
        // loads need a row length that is a multiple of 4, other shapes are widened to f32.
        WeightStorage::F16(w) if inp.is_multiple_of(4) => GpuEmbedTable::upload(ctx, label, EmbedTable::F16(w), out, inp, max_rows)?,
        WeightStorage::F16(_) => GpuEmbedTable::upload(ctx, label, EmbedTable::F32(&lin.to_f32()), out, inp, max_rows)?,
        other => {
            let s = split_of(other).ok_or_else(|| GpuModelError::Unsupported(format!("{label}: blocks do not match the shape ({out}, {inp})")))?;
            GpuEmbedTable::upload(ctx, label, EmbedTable::Quant(&s), out, inp, max_rows)?
        }
    })
}

fn upload_linear(ctx: &GpuContext, label: &str, lin: &Linear, max_rows: Option<usize>) -> Result<GpuLinear, GpuModelError> {
    if lin.out_features == 0 || lin.in_features == 0 {
        return Err(GpuModelError::Unsupported(format!("{label} has no weights ({} × {}): the checkpoint or its config is inconsistent", lin.out_features, lin.in_features)));
    }
    let table = upload_table(ctx, label, lin, max_rows)?;
    let bias = match &lin.bias {
        Some(b) => Some(persistent_storage(ctx, &format!("{label}.bias"), bytemuck::cast_slice(b))?),
        None => None,
    };
    Ok(GpuLinear { table, bias, out: lin.out_features })
}

/// A binding of `len` f32 starting at element `offset` of `buf`.
fn range(buf: &wgpu::Buffer, offset: usize, len: usize) -> wgpu::BufferBinding<'_> {
    wgpu::BufferBinding { buffer: buf, offset: offset as u64 * 4, size: wgpu::BufferSize::new(len.max(1) as u64 * 4) }
}

/// Whether batched quantized products run `ops::qmatmul` (`CRUCIBLE_QMATMUL=1`) instead of one
/// `qmatvec` per token. Off by default: on lavapipe (2 shared cores) qmatmul made SmolLM2's
/// 5-token prefill several times slower than 5 qmatvec dispatches (module docs); on by default
/// once it is tuned / measured faster on a real GPU.
fn qmatmul_prefill() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CRUCIBLE_QMATMUL").as_deref() == Ok("1"))
}

/// Whether `t` tokens of a product over (n rows of k) run one matrix–vector dispatch per token:
/// t = 1, or t < [`HMATMUL_MIN_TOKENS`] with x's and y's per-token bindings on aligned offsets.
fn per_token(ctx: &GpuContext, t: usize, k: usize, n: usize) -> bool {
    let align = (ctx.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
    t == 1 || (t < HMATMUL_MIN_TOKENS && k.is_multiple_of(align) && n.is_multiple_of(align))
}

/// Whether T > 1 rows of y = x·Wᵀ over `table` (out, inp) can be recorded in one go (module docs):
/// f32 weights in one binding; quantized weights always with qmatmul (it binds X and Y whole and
/// writes each chunk's columns through its Meta, so no binding sits at an offset), else when the
/// per-token qmatvec bindings sit on aligned offsets.
fn batchable(table: &GpuEmbedTable, align_floats: usize) -> bool {
    match table.format {
        None if table.f16 => true,
        None => table.chunks.len() == 1,
        Some(_) if qmatmul_prefill() => true,
        Some(_) => table.h.is_multiple_of(align_floats) && table.vocab.is_multiple_of(align_floats),
    }
}

/// Below this many tokens a batched F16 or f32 product runs one `hmatvec` / `matvec` per token
/// (when its bindings sit on aligned offsets) instead of the tiled `hmatmul` / `matmul`: measured
/// on lavapipe (2 shared cores, release, SmolLM2-135M, 5-token prompt) hmatmul's 64-token tiles
/// made the F16 prefill take 110 s where a decode step takes ~6 s, and matmul the f32 prefill
/// 58.8 s where a matvec decode step takes 3.2 s; a tile pays for itself only when it holds many
/// tokens.
const HMATMUL_MIN_TOKENS: usize = 16;

/// Records y (t, n) = x (t, k) · Wᵀ for W = `table` (n rows of k). Caller guarantees t == 1 or
/// [`batchable`]. Quantized: t = 1 one `qmatvec` per chunk, t > 1 one `qmatmul` per chunk (each
/// weight tile dequantized once per 32 tokens; y columns at row0 via Meta.y0); f32: one `matvec`
/// per chunk and token when [`per_token`] (K a multiple of 4; columns at row0), else one `matmul`
/// (one chunk) or one per chunk (t = 1, columns at row0).
fn encode_table(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, table: &GpuEmbedTable, t: usize, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<(), OpError> {
    let (k, n) = (table.h, table.vocab);
    match table.format {
        // F16: one hmatvec per chunk and token (t = 1, or t < HMATMUL_MIN_TOKENS with aligned
        // per-token offsets; y columns at row0: 64-row multiples) or one hmatmul per chunk into
        // the whole y (columns via Meta.c0); variant from ctx.features.
        None if table.f16 => {
            let v = hmatvec::HalfVariant::of(ctx);
            let per_token = per_token(ctx, t, k, n);
            for c in &table.chunks {
                if per_token {
                    let meta = hmatvec::Meta { rows: c.rows as u32, k: k as u32, _pad: [0; 2] };
                    for ti in 0..t {
                        hmatvec::encode(ctx, enc, v, &meta, c.table.as_entire_buffer_binding(), range(x, ti * k, k), range(y, ti * n + c.row0, c.rows))?;
                    }
                } else {
                    let meta = hmatmul::Meta { m: t as u32, rows: c.rows as u32, k: k as u32, ldc: n as u32, c0: c.row0 as u32, _pad: [0; 3] };
                    hmatmul::encode(ctx, enc, v, &meta, c.table.as_entire_buffer_binding(), range(x, 0, t * k), range(y, 0, t * n))?;
                }
            }
        }
        // f32, a decode step or a short prompt ([`per_token`]): one matvec per chunk and token
        // (y columns at row0); matmul's 64 × 64 tiles would compute 63 empty rows per workgroup.
        None if k.is_multiple_of(4) && per_token(ctx, t, k, n) => {
            for c in &table.chunks {
                let meta = hmatvec::Meta { rows: c.rows as u32, k: k as u32, _pad: [0; 2] };
                for ti in 0..t {
                    matvec::encode(ctx, enc, &meta, range(&c.table, 0, c.rows * k), range(x, ti * k, k), range(y, ti * n + c.row0, c.rows))?;
                }
            }
        }
        None => {
            for c in &table.chunks {
                let meta = matmul::Meta { m: t as u32, n: c.rows as u32, k: k as u32, _pad: 0 };
                let out = if table.chunks.len() == 1 { range(y, 0, t * n) } else { range(y, c.row0, c.rows) };
                matmul::encode(ctx, enc, &meta, range(x, 0, t * k), range(&c.table, 0, c.rows * k), out)?;
            }
        }
        Some(f) if t > 1 && qmatmul_prefill() => {
            let code = qmatvec::format_code(f);
            let nb = k / 32;
            for c in &table.chunks {
                let meta = qmatmul::Meta { t: t as u32, rows: c.rows as u32, k: k as u32, format: code, ldy: n as u32, y0: c.row0 as u32, _pad: [0; 2] };
                let sb = c.rows * nb;
                qmatmul::encode(
                    ctx,
                    enc,
                    &meta,
                    range(&c.scales, 0, sb),
                    range(c.mins.as_ref().unwrap_or(&c.scales), 0, sb),
                    range(&c.table, 0, sb * f.quant_words()),
                    range(x, 0, t * k),
                    range(y, 0, t * n),
                )?;
            }
        }
        Some(f) => {
            let code = qmatvec::format_code(f);
            let nb = k / 32;
            for ti in 0..t {
                for c in &table.chunks {
                    let meta = qmatvec::Meta { rows: c.rows as u32, k: k as u32, format: code, _pad: 0 };
                    let sb = c.rows * nb;
                    qmatvec::encode(
                        ctx,
                        enc,
                        &meta,
                        range(&c.scales, 0, sb),
                        range(c.mins.as_ref().unwrap_or(&c.scales), 0, sb),
                        range(&c.table, 0, sb * f.quant_words()),
                        range(x, ti * k, k),
                        range(y, ti * n + c.row0, c.rows),
                    )?;
                }
            }
        }
    }
    Ok(())
}

impl GpuLinear {
    /// Records y (t, out) = x (t, inp) · Wᵀ (+ b).
    fn encode(&self, ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, t: usize, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<(), OpError> {
        encode_table(ctx, enc, &self.table, t, x, y)?;
        if let Some(b) = &self.bias {
            let n = self.out;
            add::encode(ctx, enc, &add::Meta { n: (t * n) as u32, ny: n as u32, _pad: [0; 2] }, range(y, 0, t * n), range(b, 0, n))?;
        }
        Ok(())
    }
}

/// A SwiGLU MLP on the GPU (a dense layer's MLP, a routed expert, a shared expert).
#[derive(Debug)]
struct GpuMlp {
    gate: GpuLinear,
    up: GpuLinear,
    down: GpuLinear,
}

fn upload_mlp(ctx: &GpuContext, p: &str, m: &Mlp, max_rows: Option<usize>) -> Result<GpuMlp, GpuModelError> {
    Ok(GpuMlp {
        gate: upload_linear(ctx, &format!("{p}.gate_proj"), &m.gate_proj, max_rows)?,
        up: upload_linear(ctx, &format!("{p}.up_proj"), &m.up_proj, max_rows)?,
        down: upload_linear(ctx, &format!("{p}.down_proj"), &m.down_proj, max_rows)?,
    })
}

impl GpuMlp {
    fn linears(&self) -> [&GpuLinear; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// Records y (t, H) = down(silu(gate·x) ⊙ up·x) with `gate`/`up` (t, I) as scratch.
    fn encode(&self, ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, t: usize, x: &wgpu::Buffer, gate: &wgpu::Buffer, up: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<(), OpError> {
        let inter = self.gate.out;
        self.gate.encode(ctx, enc, t, x, gate)?;
        self.up.encode(ctx, enc, t, x, up)?;
        swiglu::encode(ctx, enc, &swiglu::Meta { n: (t * inter) as u32, _pad: [0; 3] }, range(gate, 0, t * inter), range(up, 0, t * inter))?;
        self.down.encode(ctx, enc, t, gate, y)
    }
}

/// A sparse MoE block on the GPU (models::moe::MoeBlock): router (E, H), experts, Qwen2-MoE's
/// shared expert and its sigmoid gate (1, H).
#[derive(Debug)]
struct GpuMoe {
    router: GpuLinear,
    experts: GpuExperts,
    shared: Option<(GpuMlp, GpuLinear)>,
}

/// The routed experts of one sparse layer: stacked per projection for `ops::qmatvec_id` (no CPU
/// readback), or one `GpuMlp` each for the per-expert plan read back from the router.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per sparse layer: the size does not matter
enum GpuExperts {
    Stacked { gate: StackedProj, up: StackedProj, down: StackedProj },
    PerExpert(Vec<GpuMlp>),
}

/// One projection of all E experts stacked by rows, (E·N, K): F32 (`qs` holds the floats), F16
/// (`qs` holds binary16 pairs) or split blocks, in groups of consecutive experts that each fit
/// one storage binding per array (one group unless the experts are too big together).
#[derive(Debug)]
struct StackedProj {
    /// `qmatvec_id::Meta.format`.
    format: u32,
    n: usize,
    k: usize,
    groups: Vec<ExpertGroup>,
}

/// Experts `e_first .. e_first + experts` of a [`StackedProj`].
#[derive(Debug)]
struct ExpertGroup {
    e_first: usize,
    experts: usize,
    scales: Option<wgpu::Buffer>,
    mins: Option<wgpu::Buffer>,
    qs: wgpu::Buffer,
    /// Elements of `scales` (and `mins`), of `qs`.
    scale_len: usize,
    qs_len: usize,
}

/// How the sparse MoE layers of a [`GpuLlama`] run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoeGpuPath {
    /// Experts picked on the GPU by `ops::qmatvec_id` from the router's output: no readback
    /// until the logits (the routes of every layer come back with them).
    ById,
    /// The router's top-k read back per sparse layer and token chunk to plan per-expert
    /// dispatches, because (the reason) the stacked experts cannot run by id.
    Readback { reason: String },
}

impl std::fmt::Display for MoeGpuPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MoeGpuPath::ById => write!(f, "MoE experts chosen on the GPU (no readback per layer)"),
            MoeGpuPath::Readback { reason } => write!(f, "MoE routes read back once per layer: {reason}"),
        }
    }
}

/// Stacks projection `pick` of every expert into one [`StackedProj`] (split into groups of
/// experts when they do not fit one binding together); `Ok(Err(reason))` when the experts cannot
/// run by id (mixed or unsupported storage, biases, shapes, one expert too big for a binding or
/// more rows than `max_rows` allows in one chunk).
fn stack_proj(ctx: &GpuContext, label: &str, experts: &[Mlp], pick: fn(&Mlp) -> &Linear, max_rows: Option<usize>) -> Result<Result<StackedProj, String>, GpuModelError> {
    let lins: Vec<&Linear> = experts.iter().map(pick).collect();
    let Some(first) = lins.first() else { return Ok(Err(format!("{label}: no experts"))) };
    let (n, k) = (first.out_features, first.in_features);
    if let Some(i) = lins.iter().position(|l| (l.out_features, l.in_features) != (n, k)) {
        return Ok(Err(format!("{label}: expert {i} is {} × {}, expert 0 {n} × {k}", lins[i].out_features, lins[i].in_features)));
    }
    if lins.iter().any(|l| l.bias.is_some()) {
        return Ok(Err(format!("{label}: experts with biases")));
    }
    // Each expert as u32 words (F32 bits, packed F16 pairs or quant words) + scales / mins.
    type Parts = (Vec<u32>, Vec<f32>, Option<Vec<f32>>);
    let mut parts: Vec<Parts> = Vec::with_capacity(lins.len());
    let format = match &first.weight {
        WeightStorage::F32(_) => qmatvec_id::FORMAT_F32,
        WeightStorage::F16(_) => qmatvec_id::FORMAT_F16,
        other => match split_of(other) {
            Some(sb) => qmatvec::format_code(sb.format),
            None => return Ok(Err(format!("{label}: expert 0's storage is not one qmatvec_id reads (F32, F16, Q8_0, Q4_0, Q4_1)"))),
        },
    };
    if (format == qmatvec_id::FORMAT_F32 || format == qmatvec_id::FORMAT_F16) && !k.is_multiple_of(4) {
        return Ok(Err(format!("{label}: row length {k} is not a multiple of 4 (F32 / F16 by id read 4 weights per step)")));
    }
    for (i, l) in lins.iter().enumerate() {
        let part = match (&l.weight, format) {
            (WeightStorage::F32(w), qmatvec_id::FORMAT_F32) => (w.iter().map(|v| v.to_bits()).collect(), Vec::new(), None),
            (WeightStorage::F16(w), qmatvec_id::FORMAT_F16) => (qmatvec_id::pack_f16(w), Vec::new(), None),
            (other, _) => match split_of(other) {
                Some(sb) if qmatvec::format_code(sb.format) == format => {
                    let sb = sb.into_owned();
                    (sb.qs, sb.scales, sb.mins)
                }
                _ => return Ok(Err(format!("{label}: expert {i}'s storage differs from expert 0's"))),
            },
        };
        parts.push(part);
    }
    // Experts per group: as many as one binding holds (the widest array, qs, decides) and, when
    // `max_rows` caps rows per chunk, as many whole experts as fit in it.
    let limit = ctx.max_binding_bytes();
    let expert_bytes = (parts[0].0.len() as u64 * 4).max(4);
    let mut per_group = (limit / expert_bytes) as usize;
    if let Some(m) = max_rows {
        per_group = per_group.min(m / n.max(1));
    }
    if per_group == 0 {
        return Ok(Err(match max_rows {
            Some(m) if m < n => format!("{label}: one expert's {n} rows exceed max_chunk_rows {m}"),
            _ => format!("{label}: one expert takes {expert_bytes} bytes, more than one storage binding holds ({limit} bytes, max_storage_buffer_binding_size)"),
        }));
    }
    let mut groups = Vec::new();
    for (gi, chunk) in parts.chunks(per_group).enumerate() {
        let e_first = gi * per_group;
        let qs: Vec<u32> = chunk.iter().flat_map(|p| p.0.iter().copied()).collect();
        let scales: Vec<f32> = chunk.iter().flat_map(|p| p.1.iter().copied()).collect();
        let mins: Option<Vec<f32>> = chunk[0].2.as_ref().map(|_| chunk.iter().flat_map(|p| p.2.iter().flatten().copied()).collect());
        let g = format!("{label}.stacked.{e_first}");
        groups.push(ExpertGroup {
            e_first,
            experts: chunk.len(),
            scales: if scales.is_empty() { None } else { Some(persistent_storage(ctx, &format!("{g}.scales"), bytemuck::cast_slice(&scales))?) },
            mins: match &mins {
                Some(m) => Some(persistent_storage(ctx, &format!("{g}.mins"), bytemuck::cast_slice(m))?),
                None => None,
            },
            qs: persistent_storage(ctx, &format!("{g}.qs"), bytemuck::cast_slice(&qs))?,
            scale_len: scales.len(),
            qs_len: qs.len(),
        });
    }
    Ok(Ok(StackedProj { format, n, k, groups }))
}

/// The stacked experts of a block, or the reason they cannot run by id.
fn stack_experts(ctx: &GpuContext, p: &str, b: &MoeBlock, max_rows: Option<usize>) -> Result<Result<GpuExperts, String>, GpuModelError> {
    let gate = match stack_proj(ctx, &format!("{p}.experts.gate_proj"), &b.experts, |m| &m.gate_proj, max_rows)? {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    let up = match stack_proj(ctx, &format!("{p}.experts.up_proj"), &b.experts, |m| &m.up_proj, max_rows)? {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    let down = match stack_proj(ctx, &format!("{p}.experts.down_proj"), &b.experts, |m| &m.down_proj, max_rows)? {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    if (gate.n, gate.k) != (up.n, up.k) || (down.n, down.k) != (gate.k, gate.n) {
        return Ok(Err(format!("{p}.experts: gate {}×{}, up {}×{}, down {}×{} do not form a SwiGLU MLP", gate.n, gate.k, up.n, up.k, down.n, down.k)));
    }
    Ok(Ok(GpuExperts::Stacked { gate, up, down }))
}

/// Uploads a block; its experts stacked for `qmatvec_id` when `by_id` and they can be (else
/// one MLP each), with the reason when they are not.
fn upload_moe(ctx: &GpuContext, p: &str, b: &MoeBlock, max_rows: Option<usize>, by_id: bool) -> Result<(GpuMoe, Option<String>), GpuModelError> {
    let router = upload_linear(ctx, &format!("{p}.gate"), &b.router, max_rows)?;
    let (experts, reason) = match if by_id { stack_experts(ctx, p, b, max_rows)? } else { Err("an earlier sparse layer could not run by id".to_string()) } {
        Ok(s) => (s, None),
        Err(reason) => (GpuExperts::PerExpert(b.experts.iter().enumerate().map(|(e, m)| upload_mlp(ctx, &format!("{p}.experts.{e}"), m, max_rows)).collect::<Result<Vec<_>, _>>()?), Some(reason)),
    };
    let shared = match &b.shared {
        Some(sh) => Some((upload_mlp(ctx, &format!("{p}.shared_expert"), &sh.mlp, max_rows)?, upload_linear(ctx, &format!("{p}.shared_expert_gate"), &sh.gate, max_rows)?)),
        None => None,
    };
    Ok((GpuMoe { router, experts, shared }, reason))
}

/// Records x (pairs / x_div, K) → y (pairs, N) through `w` with the experts at
/// `ids[ids_offset..]` (f32-coded, router output): one qmatvec_id dispatch per expert group.
#[allow(clippy::too_many_arguments)]
fn encode_by_id(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, w: &StackedProj, pairs: usize, x_div: usize, ids: &wgpu::Buffer, ids_len: usize, ids_offset: usize, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<(), OpError> {
    for g in &w.groups {
        let meta = qmatvec_id::Meta { n: w.n as u32, k: w.k as u32, format: w.format, pairs: pairs as u32, x_div: x_div as u32, ids_offset: ids_offset as u32, n_experts: g.experts as u32, e_first: g.e_first as u32 };
        let sc = g.scales.as_ref().map_or_else(|| range(&g.qs, 0, 1), |s| range(s, 0, g.scale_len));
        let mn = match (&g.mins, &g.scales) {
            (Some(m), _) => range(m, 0, g.scale_len),
            (None, Some(s)) => range(s, 0, g.scale_len),
            (None, None) => range(&g.qs, 0, 1),
        };
        qmatvec_id::encode(ctx, enc, &meta, sc, mn, range(&g.qs, 0, g.qs_len), range(ids, 0, ids_len), range(x, 0, pairs / x_div * w.k), range(y, 0, pairs * w.n))?;
    }
    Ok(())
}

impl GpuMoe {
    fn linears(&self) -> Vec<&GpuLinear> {
        let mut v = vec![&self.router];
        if let GpuExperts::PerExpert(experts) = &self.experts {
            v.extend(experts.iter().flat_map(GpuMlp::linears));
        }
        if let Some((m, g)) = &self.shared {
            v.extend(m.linears());
            v.push(g);
        }
        v
    }
}

#[derive(Debug)]
struct GpuLayer {
    input_norm: wgpu::Buffer,
    post_norm: wgpu::Buffer,
    q: GpuLinear,
    k: GpuLinear,
    v: GpuLinear,
    o: GpuLinear,
    /// The dense MLP (None in a sparse MoE layer).
    mlp: Option<GpuMlp>,
    /// The sparse MoE block (Some in a sparse layer).
    moe: Option<GpuMoe>,
    window: Option<usize>,
}

impl GpuLayer {
    fn linears(&self) -> Vec<&GpuLinear> {
        let mut v = vec![&self.q, &self.k, &self.v, &self.o];
        if let Some(m) = &self.mlp {
            v.extend(m.linears());
        }
        if let Some(b) = &self.moe {
            v.extend(b.linears());
        }
        v
    }
}

/// Activations for up to `max_batch` tokens, taken from the pool once and reused every token.
#[derive(Debug)]
struct Scratch {
    tokens: PooledBuffer,
    x: PooledBuffer,
    hs: PooledBuffer,
    q: PooledBuffer,
    k: PooledBuffer,
    v: PooledBuffer,
    attn: PooledBuffer,
    tmp: PooledBuffer,
    gate: PooledBuffer,
    up: PooledBuffer,
    partial: PooledBuffer,
    last: PooledBuffer,
    logits: PooledBuffer,
    /// MoE: router logits (t, E), router output (2·t·k), the plan's token lists (t·k u32) and
    /// weights (t·k), 0..t as u32 (the shared expert's rows), the gathered rows (t, H), an
    /// expert's output (t, H), the shared-expert gate (t). One float where the model has no MoE.
    router_logits: PooledBuffer,
    router_out: PooledBuffer,
    moe_idx: PooledBuffer,
    moe_w: PooledBuffer,
    moe_ident: PooledBuffer,
    moe_x: PooledBuffer,
    moe_out: PooledBuffer,
    moe_gate: PooledBuffer,
}

/// A Llama-family model resident on the GPU, with its KV cache.
pub struct GpuLlama {
    ctx: GpuContext,
    config: LlamaConfig,
    layout: RopeLayout,
    freqs: RopeFreqs,
    inv_freq: wgpu::Buffer,
    embed: GpuEmbedTable,
    layers: Vec<GpuLayer>,
    norm: wgpu::Buffer,
    /// None: tied to `embed`.
    head: Option<GpuLinear>,
    cache: GpuKvCache,
    scratch: Scratch,
    opts: GpuLlamaOptions,
    batched: bool,
    /// Experts chosen per token and layer by the last `forward`/`forward_last` call.
    routes: ExpertTrace,
    /// How sparse layers run (None: no MoE).
    moe_path: Option<MoeGpuPath>,
    /// Router readbacks made by the per-expert plan since creation (0 on the by-id path).
    router_readbacks: u64,
}

impl std::fmt::Debug for GpuLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuLlama").field("adapter", &self.ctx.adapter_info.name).field("layers", &self.layers.len()).field("cache_len", &self.cache.len()).finish_non_exhaustive()
    }
}

impl GpuLlama {
    /// Uploads `model`'s weights to the device of `ctx` and allocates the KV cache and the
    /// activations. Sparse MoE layers run their router, experts and shared expert on the GPU.
    pub fn new(ctx: GpuContext, model: &LlamaModel, opts: GpuLlamaOptions) -> Result<GpuLlama, GpuModelError> {
        let c = &model.config;
        let w = &model.weights;
        let (h, nh, nkv, hd, inter, vocab) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size, c.vocab_size);
        if w.layers.len() != c.num_hidden_layers || c.layer_windows.len() != c.num_hidden_layers {
            return Err(GpuModelError::Unsupported(format!("{} layers of weights, {} in the config", w.layers.len(), c.num_hidden_layers)));
        }
        if hd > attention::MAX_HEAD_DIM {
            return Err(GpuModelError::Unsupported(format!("head_dim {hd} > {} (the attention kernel's limit)", attention::MAX_HEAD_DIM)));
        }
        let opts = GpuLlamaOptions { max_batch: opts.max_batch.max(1), max_context: opts.max_context.max(1), ..opts };
        let mr = opts.max_chunk_rows;
        let embed = upload_table(&ctx, "embed_tokens", &w.embed_tokens, mr)?;
        let mut layers = Vec::with_capacity(w.layers.len());
        // MoE: experts by id (qmatvec_id) unless a block cannot be stacked; then that block and
        // the later ones read the router back (MoeGpuPath::Readback with the first reason).
        // CRUCIBLE_MOE_READBACK=1 forces the readback path (to measure what by id saves).
        let mut moe_reason: Option<String> = (std::env::var("CRUCIBLE_MOE_READBACK").as_deref() == Ok("1")).then(|| "CRUCIBLE_MOE_READBACK=1 is set".to_string());
        for (i, l) in w.layers.iter().enumerate() {
            let p = format!("layers.{i}");
            let moe = match &l.moe {
                Some(b) => {
                    let (m, reason) = upload_moe(&ctx, &format!("{p}.mlp"), b, mr, moe_reason.is_none())?;
                    if moe_reason.is_none() {
                        moe_reason = reason;
                    }
                    Some(m)
                }
                None => None,
            };
            layers.push(GpuLayer {
                input_norm: persistent_storage(&ctx, &format!("{p}.input_layernorm"), bytemuck::cast_slice(&l.input_layernorm))?,
                post_norm: persistent_storage(&ctx, &format!("{p}.post_attention_layernorm"), bytemuck::cast_slice(&l.post_attention_layernorm))?,
                q: upload_linear(&ctx, &format!("{p}.q_proj"), &l.q_proj, mr)?,
                k: upload_linear(&ctx, &format!("{p}.k_proj"), &l.k_proj, mr)?,
                v: upload_linear(&ctx, &format!("{p}.v_proj"), &l.v_proj, mr)?,
                o: upload_linear(&ctx, &format!("{p}.o_proj"), &l.o_proj, mr)?,
                mlp: match &l.moe {
                    Some(_) => None,
                    None => Some(upload_mlp(&ctx, &format!("{p}.mlp"), &Mlp { gate_proj: l.gate_proj.clone(), up_proj: l.up_proj.clone(), down_proj: l.down_proj.clone() }, mr)?),
                },
                moe,
                window: c.layer_windows[i],
            });
        }
        let norm = persistent_storage(&ctx, "norm", bytemuck::cast_slice(&w.norm))?;
        let head = match &w.lm_head {
            Some(lin) => Some(upload_linear(&ctx, "lm_head", lin, mr)?),
            None => None,
        };
        let freqs = c.rope.freqs(None);
        let inv_freq = persistent_storage(&ctx, "rope.inv_freq", bytemuck::cast_slice(&freqs.inv_freq))?;
        let cache = GpuKvCache::new(&ctx, c.num_hidden_layers, nkv, hd, opts.max_context)?;
        // Per-token dispatches repeat (same weights, scratch ranges and Meta for every decode
        // step but RoPE / attention, whose position changes): reuse their uniforms and bind
        // groups instead of creating ~15 per layer per token. 64 per layer covers one decode
        // step's and one prefill chunk's dispatches; the cache empties itself when full.
        // CRUCIBLE_BIND_CACHE=0 turns it off (to measure what it saves).
        if std::env::var("CRUCIBLE_BIND_CACHE").as_deref() != Ok("0") {
            ctx.enable_bind_cache(64 * c.num_hidden_layers.max(1) + 256);
        }

        let align = (ctx.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
        let head_batchable = batchable(head.as_ref().map_or(&embed, |hl| &hl.table), align);
        let batched = head_batchable && layers.iter().all(|l| l.linears().iter().all(|x| batchable(&x.table, align)));
        let t = if batched { opts.max_batch } else { 1 };

        let s = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let f = |label: &'static str, n: usize| ctx.buffer(label, n.max(1) as u64 * 4, s);
        let max_splits = 16usize.max(opts.decode_splits.unwrap_or(1));
        let moe_cfg = c.moe.as_ref();
        if let Some(m) = moe_cfg
            && (m.top_k == 0 || m.top_k > m.num_experts)
        {
            return Err(GpuModelError::Unsupported(format!("num_experts_per_tok {} of num_experts {}: need 1 ≤ k ≤ E", m.top_k, m.num_experts)));
        }
        let (n_experts, top_k) = moe_cfg.map_or((0, 0), |m| (m.num_experts, m.top_k));
        // By id the experts' gate/up rows are (t·k, I_e) and their outputs (t·k, H).
        let mlp_width = inter.max(moe_cfg.map_or(0, |m| (top_k * m.expert_intermediate_size).max(m.shared_expert_intermediate_size.unwrap_or(0))));
        let moe_layers = layers.iter().filter(|l| l.moe.is_some()).count();
        let moe_path = moe_cfg.map(|_| match &moe_reason {
            Some(reason) => MoeGpuPath::Readback { reason: reason.clone() },
            None => MoeGpuPath::ById,
        });
        // The routes of every sparse layer ride with the logits (one readback per step).
        let route_floats = if moe_path == Some(MoeGpuPath::ById) { moe_layers * 2 * t * top_k } else { 0 };
        let scratch = Scratch {
            tokens: f("llama_gpu.tokens", t)?,
            x: f("llama_gpu.x", t * h)?,
            hs: f("llama_gpu.hs", t * h)?,
            q: f("llama_gpu.q", t * nh * hd)?,
            k: f("llama_gpu.k", t * nkv * hd)?,
            v: f("llama_gpu.v", t * nkv * hd)?,
            attn: f("llama_gpu.attn", t * nh * hd)?,
            tmp: f("llama_gpu.tmp", t * h)?,
            gate: f("llama_gpu.gate", t * mlp_width)?,
            up: f("llama_gpu.up", t * mlp_width)?,
            partial: f("llama_gpu.partial", max_splits * nh * (hd + 2))?,
            last: f("llama_gpu.last", h)?,
            logits: f("llama_gpu.logits", t * vocab + route_floats)?,
            router_logits: f("llama_gpu.router_logits", t * n_experts)?,
            router_out: f("llama_gpu.router_out", 2 * t * top_k)?,
            moe_idx: f("llama_gpu.moe_idx", t * top_k)?,
            moe_w: f("llama_gpu.moe_w", t * top_k)?,
            moe_ident: f("llama_gpu.moe_ident", if moe_cfg.is_some() { t } else { 0 })?,
            moe_x: f("llama_gpu.moe_x", if moe_cfg.is_some() { t * h } else { 0 })?,
            moe_out: f("llama_gpu.moe_out", if moe_cfg.is_some() { t * top_k * h } else { 0 })?,
            moe_gate: f("llama_gpu.moe_gate", if moe_cfg.is_some() { t } else { 0 })?,
        };
        if moe_cfg.is_some() {
            let ident: Vec<u32> = (0..t as u32).collect();
            ctx.queue.write_buffer(&scratch.moe_ident, 0, bytemuck::cast_slice(&ident));
        }
        Ok(GpuLlama { ctx, config: c.clone(), layout: model.rope_layout, freqs, inv_freq, embed, layers, norm, head, cache, scratch, opts, batched, routes: Vec::new(), moe_path, router_readbacks: 0 })
    }

    pub fn ctx(&self) -> &GpuContext {
        &self.ctx
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Positions in the KV cache (the position of the next token).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Whether prefill runs T tokens per encoder (else token by token; module docs).
    pub fn batched_prefill(&self) -> bool {
        self.batched && self.opts.max_batch > 1
    }

    /// Per token of the last `forward` / `forward_last` call, per layer, the experts chosen
    /// (best first, with their combine weights); dense layers and non-MoE models give empty lists.
    /// `routes()[t][layer]`, as `LlamaModel::forward_traced`'s trace.
    pub fn routes(&self) -> &ExpertTrace {
        &self.routes
    }

    /// How the sparse MoE layers run (by id on the GPU, or with a router readback per layer and
    /// the reason); None for a dense model.
    pub fn moe_path(&self) -> Option<&MoeGpuPath> {
        self.moe_path.as_ref()
    }

    /// The most bindings (expert groups) one stacked expert projection takes: 1 when all E experts
    /// fit one binding, more when they are split; 0 without by-id MoE layers.
    pub fn moe_expert_bindings(&self) -> usize {
        self.layers
            .iter()
            .filter_map(|l| match l.moe.as_ref().map(|b| &b.experts) {
                Some(GpuExperts::Stacked { gate, up, down }) => Some(gate.groups.len().max(up.groups.len()).max(down.groups.len())),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Router top-k readbacks (GPU→CPU syncs inside a step) made since creation: 0 when the
    /// experts run by id, one per sparse layer and token chunk otherwise.
    pub fn router_readbacks(&self) -> u64 {
        self.router_readbacks
    }

    /// Start a new sequence (the cache buffers are kept).
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), GpuModelError> {
        let vocab = self.config.vocab_size;
        if let Some((index, &token)) = tokens.iter().enumerate().find(|(_, t)| **t as usize >= vocab) {
            return Err(GpuModelError::TokenOutOfRange { token, index, vocab });
        }
        self.cache.check_room(tokens.len())?;
        Ok(())
    }

    /// Runs `tokens` after the cached positions and returns the logits (T, vocab) row-major, as
    /// `LlamaModel::forward` does.
    pub async fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GpuModelError> {
        self.check_tokens(tokens)?;
        self.routes.clear();
        let mut out = Vec::with_capacity(tokens.len() * self.config.vocab_size);
        let step = if self.batched { self.opts.max_batch } else { 1 };
        for chunk in tokens.chunks(step) {
            out.extend(self.forward_chunk(chunk, false).await?);
        }
        Ok(out)
    }

    /// Runs `tokens` after the cached positions and returns the logits of the last one (vocab):
    /// the head runs for that token only.
    pub async fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GpuModelError> {
        self.check_tokens(tokens)?;
        self.routes.clear();
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let step = if self.batched { self.opts.max_batch } else { 1 };
        let n = tokens.len().div_ceil(step);
        let mut last = Vec::new();
        for (i, chunk) in tokens.chunks(step).enumerate() {
            if i + 1 < n {
                self.forward_chunk(chunk, true).await?;
            } else {
                last = self.forward_chunk(chunk, true).await?;
            }
        }
        Ok(last)
    }

    /// One encoder for `tokens` (≤ max_batch, or 1 when not batched); logits of every token or
    /// (`last_only`) of the last.
    async fn forward_chunk(&mut self, tokens: &[u32], last_only: bool) -> Result<Vec<f32>, GpuModelError> {
        let t = tokens.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        let c = &self.config;
        let (h, nh, nkv, hd, vocab) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size);
        let ctx = &self.ctx;
        let s = &self.scratch;
        let pos0 = self.cache.len();
        ctx.queue.write_buffer(&s.tokens, 0, bytemuck::cast_slice(tokens));
        // Dynamic NTK: θ from the length after this call once past max_position_embeddings (as the
        // CPU path and transformers; a prompt split into several chunks past that length gets θ
        // per chunk, where one CPU call uses its whole length); otherwise the frequencies at load.
        if matches!(c.rope.scaling, RopeScaling::Dynamic { .. }) {
            let f = c.rope.freqs(Some(pos0 + t));
            ctx.queue.write_buffer(&self.inv_freq, 0, bytemuck::cast_slice(&f.inv_freq));
        }
        let half = self.freqs.inv_freq.len();
        let rope_meta = |heads: usize| rope::Meta {
            t: t as u32,
            n_heads: heads as u32,
            head_dim: hd as u32,
            half: half as u32,
            pos0: pos0 as u32,
            layout: rope::layout_code(self.layout),
            attention_factor: self.freqs.attention_factor,
            _pad: 0,
        };
        let norm_meta = |rows: usize| rmsnorm::Meta { rows: rows as u32, d: h as u32, eps: c.rms_norm_eps, _pad: 0 };
        let add_meta = add::Meta { n: (t * h) as u32, ny: (t * h) as u32, _pad: [0; 2] };

        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("llama_gpu token") });
        let mut routes: ExpertTrace = vec![vec![Vec::<ExpertChoice>::new(); self.layers.len()]; t];
        // Rows of logits read back; the by-id MoE layers' routes follow them in the same buffer
        // (slot i at rows·vocab + i·2·t·k: [w (t, k) | idx (t, k)] of layer route_layers[i]).
        let rows = if last_only { 1 } else { t };
        let mut route_slot = 0usize;
        let mut route_layers: Vec<usize> = Vec::new();
        self.embed.encode(ctx, &mut enc, t, range(&s.tokens, 0, t), range(&s.x, 0, t * h))?;
        for (li, l) in self.layers.iter().enumerate() {
            rmsnorm::encode(ctx, &mut enc, &norm_meta(t), range(&s.x, 0, t * h), range(&l.input_norm, 0, h), range(&s.hs, 0, t * h))?;
            l.q.encode(ctx, &mut enc, t, &s.hs, &s.q)?;
            l.k.encode(ctx, &mut enc, t, &s.hs, &s.k)?;
            l.v.encode(ctx, &mut enc, t, &s.hs, &s.v)?;
            rope::encode(ctx, &mut enc, &rope_meta(nh), range(&s.q, 0, t * nh * hd), range(&self.inv_freq, 0, half))?;
            rope::encode(ctx, &mut enc, &rope_meta(nkv), range(&s.k, 0, t * nkv * hd), range(&self.inv_freq, 0, half))?;
            self.cache.append(&mut enc, li, &s.k, &s.v, t)?;
            let mut p = AttentionParams { t, n_heads: nh, n_kv_heads: nkv, head_dim: hd, pos0, window: l.window, splits: 1 };
            p.splits = if t == 1 { self.opts.decode_splits.unwrap_or_else(|| attention::default_splits(t, p.max_range())) } else { 1 };
            let (kc, vc) = &self.cache.layers[li];
            let kv = p.kv_len() * nkv * hd;
            let partial = (p.splits > 1).then(|| range(&s.partial, 0, attention::partial_len(&p)));
            attention::encode(ctx, &mut enc, &p, range(&s.q, 0, t * nh * hd), range(kc, 0, kv), range(vc, 0, kv), range(&s.attn, 0, t * nh * hd), partial)?;
            l.o.encode(ctx, &mut enc, t, &s.attn, &s.tmp)?;
            add::encode(ctx, &mut enc, &add_meta, range(&s.x, 0, t * h), range(&s.tmp, 0, t * h))?;
            rmsnorm::encode(ctx, &mut enc, &norm_meta(t), range(&s.x, 0, t * h), range(&l.post_norm, 0, h), range(&s.hs, 0, t * h))?;
            if let Some(m) = &l.mlp {
                m.encode(ctx, &mut enc, t, &s.hs, &s.gate, &s.up, &s.tmp)?;
            } else if let (Some(b), Some(mc), Some(GpuExperts::Stacked { gate, up, down })) = (&l.moe, &c.moe, l.moe.as_ref().map(|b| &b.experts)) {
                // By id (ops::qmatvec_id): route on the GPU, then gate/up of each (token, slot)
                // pair with the chosen expert's rows, SwiGLU over the t·k rows, down by id, the
                // weighted sum of each token's k outputs (moe_combine); nothing is read back.
                let (e_n, k) = (mc.num_experts, mc.top_k);
                let tk = t * k;
                b.router.encode(ctx, &mut enc, t, &s.hs, &s.router_logits)?;
                let rmeta = router::Meta { t: t as u32, e: e_n as u32, k: k as u32, renorm: router::renorm_for(mc.style, mc.norm_topk_prob) as u32 };
                router::encode(ctx, &mut enc, &rmeta, range(&s.router_logits, 0, t * e_n), range(&s.router_out, 0, 2 * tk))?;
                encode_by_id(ctx, &mut enc, gate, tk, k, &s.router_out, 2 * tk, tk, &s.hs, &s.gate)?;
                encode_by_id(ctx, &mut enc, up, tk, k, &s.router_out, 2 * tk, tk, &s.hs, &s.up)?;
                let ie = gate.n;
                swiglu::encode(ctx, &mut enc, &swiglu::Meta { n: (tk * ie) as u32, _pad: [0; 3] }, range(&s.gate, 0, tk * ie), range(&s.up, 0, tk * ie))?;
                encode_by_id(ctx, &mut enc, down, tk, 1, &s.router_out, 2 * tk, tk, &s.gate, &s.moe_out)?;
                let cmeta = qmatvec_id::CombineMeta { t: t as u32, k: k as u32, h: h as u32, _pad: 0 };
                qmatvec_id::encode_combine(ctx, &mut enc, &cmeta, range(&s.router_out, 0, tk), range(&s.moe_out, 0, tk * h), range(&s.tmp, 0, t * h))?;
                if let Some((shared, sgate)) = &b.shared {
                    shared.encode(ctx, &mut enc, t, &s.hs, &s.gate, &s.up, &s.moe_out)?;
                    sgate.encode(ctx, &mut enc, t, &s.hs, &s.moe_gate)?;
                    let smeta = moe::ScatterMeta { n: t as u32, h: h as u32, offset: 0, mode: moe::MODE_SIGMOID };
                    moe::encode_scatter(ctx, &mut enc, &smeta, range(&s.tmp, 0, t * h), range(&s.moe_ident, 0, t), range(&s.moe_gate, 0, t), range(&s.moe_out, 0, t * h))?;
                }
                // This layer's [w | idx] joins the logits' readback (after the rows·vocab logits).
                enc.copy_buffer_to_buffer(&s.router_out, 0, &s.logits, ((rows * vocab + route_slot * 2 * tk) * 4) as u64, (2 * tk * 4) as u64);
                route_layers.push(li);
                route_slot += 1;
            } else if let (Some(b), Some(mc), Some(GpuExperts::PerExpert(experts))) = (&l.moe, &c.moe, l.moe.as_ref().map(|b| &b.experts)) {
                // Route: router logits → softmax/top-k on the GPU; submit and read the top-k back
                // (2·t·k floats) to plan the per-expert dispatches (ops::moe docs).
                let (e_n, k) = (mc.num_experts, mc.top_k);
                b.router.encode(ctx, &mut enc, t, &s.hs, &s.router_logits)?;
                let rmeta = router::Meta { t: t as u32, e: e_n as u32, k: k as u32, renorm: router::renorm_for(mc.style, mc.norm_topk_prob) as u32 };
                router::encode(ctx, &mut enc, &rmeta, range(&s.router_logits, 0, t * e_n), range(&s.router_out, 0, 2 * t * k))?;
                self.router_readbacks += 1;
                let done = std::mem::replace(&mut enc, ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("llama_gpu moe") }));
                ctx.queue.submit([done.finish()]);
                let out = ctx.read_f32("llama_gpu router top-k", &s.router_out, 0, 2 * t * k).await?;
                let choices = router::unpack(&out, t, k);
                let plan = moe::MoePlan::new(&choices, e_n)?;
                ctx.queue.write_buffer(&s.moe_idx, 0, bytemuck::cast_slice(&plan.tokens));
                ctx.queue.write_buffer(&s.moe_w, 0, bytemuck::cast_slice(&plan.weights));
                // y = Σ_e scatter(w · expert_e(gather(hs))) (+ sigmoid(g)·shared(hs)), then x += y.
                enc.clear_buffer(&s.tmp, 0, Some((t * h * 4) as u64));
                let tk = t * k;
                for (e, expert) in experts.iter().enumerate() {
                    let (n, off) = (plan.counts[e], plan.offsets[e]);
                    if n == 0 {
                        continue;
                    }
                    let gmeta = moe::GatherMeta { n: n as u32, h: h as u32, offset: off as u32, _pad: 0 };
                    moe::encode_gather(ctx, &mut enc, &gmeta, range(&s.hs, 0, t * h), range(&s.moe_idx, 0, tk), range(&s.moe_x, 0, n * h))?;
                    expert.encode(ctx, &mut enc, n, &s.moe_x, &s.gate, &s.up, &s.moe_out)?;
                    let smeta = moe::ScatterMeta { n: n as u32, h: h as u32, offset: off as u32, mode: moe::MODE_WEIGHT };
                    moe::encode_scatter(ctx, &mut enc, &smeta, range(&s.tmp, 0, t * h), range(&s.moe_idx, 0, tk), range(&s.moe_w, 0, tk), range(&s.moe_out, 0, n * h))?;
                }
                if let Some((shared, gate)) = &b.shared {
                    shared.encode(ctx, &mut enc, t, &s.hs, &s.gate, &s.up, &s.moe_out)?;
                    gate.encode(ctx, &mut enc, t, &s.hs, &s.moe_gate)?;
                    let smeta = moe::ScatterMeta { n: t as u32, h: h as u32, offset: 0, mode: moe::MODE_SIGMOID };
                    moe::encode_scatter(ctx, &mut enc, &smeta, range(&s.tmp, 0, t * h), range(&s.moe_ident, 0, t), range(&s.moe_gate, 0, t), range(&s.moe_out, 0, t * h))?;
                }
                for (ti, cs) in choices.into_iter().enumerate() {
                    routes[ti][li] = cs;
                }
            } else {
                return Err(GpuModelError::Unsupported(format!("layer {li} has MoE weights but the config has no moe section")));
            }
            add::encode(ctx, &mut enc, &add_meta, range(&s.x, 0, t * h), range(&s.tmp, 0, t * h))?;
        }
        // Final norm; the head on every row or on the last one (copied to the start of `last`).
        let src: &wgpu::Buffer = if last_only {
            enc.copy_buffer_to_buffer(&s.x, ((t - 1) * h * 4) as u64, &s.last, 0, (h * 4) as u64);
            rmsnorm::encode(ctx, &mut enc, &norm_meta(1), range(&s.last, 0, h), range(&self.norm, 0, h), range(&s.hs, 0, h))?;
            &s.hs
        } else {
            rmsnorm::encode(ctx, &mut enc, &norm_meta(t), range(&s.x, 0, t * h), range(&self.norm, 0, h), range(&s.hs, 0, t * h))?;
            &s.hs
        };
        match &self.head {
            Some(head) => head.encode(ctx, &mut enc, rows, src, &s.logits)?,
            None => encode_table(ctx, &mut enc, &self.embed, rows, src, &s.logits)?,
        }
        ctx.queue.submit([enc.finish()]);
        self.cache.advance(t)?;
        let k = c.moe.as_ref().map_or(0, |m| m.top_k);
        let mut logits = ctx.read_f32("llama_gpu logits", &s.logits, 0, rows * vocab + route_slot * 2 * t * k).await?;
        for (i, &li) in route_layers.iter().enumerate() {
            let at = rows * vocab + i * 2 * t * k;
            for (ti, cs) in router::unpack(&logits[at..at + 2 * t * k], t, k).into_iter().enumerate() {
                routes[ti][li] = cs;
            }
        }
        logits.truncate(rows * vocab);
        self.routes.extend(routes);
        Ok(logits)
    }
}
