//! The readable CPU reference of the Llama-family decoder forward pass (Llama, SmolLM2, Mistral,
//! Qwen2), in f32. The GPU path and quantized weights are tested against this.
//!
//! Papers: LLaMA (Touvron et al., arXiv 2302.13971): pre-norm RMSNorm (Zhang & Sennrich, arXiv
//! 1910.07467), SwiGLU MLP (Shazeer, arXiv 2002.05202), rotary embeddings (arXiv 2104.09864);
//! grouped-query attention (Ainslie et al., arXiv 2305.13245).
//!
//! Reference implementation: Hugging Face transformers 5.23 `models/llama/modeling_llama.py`
//! (`LlamaRMSNorm`, `LlamaMLP`, `LlamaAttention` + `eager_attention_forward`,
//! `LlamaDecoderLayer`, `LlamaModel`, `LlamaForCausalLM`); Qwen2 adds q/k/v biases
//! (`models/qwen2/modeling_qwen2.py`), Mistral is the same graph. Tensor names are the HF ones.
//!
//! Per layer, for T new tokens at positions p0..p0+T (p0 = tokens already in the cache):
//! ```text
//! x (T, H) ─ RMSNorm ─ q = h·Wqᵀ (T, nh·hd), k = h·Wkᵀ (T, nkv·hd), v = h·Wvᵀ (T, nkv·hd)
//!            RoPE(q, k) at their positions; k, v appended to the cache (p0+T, nkv, hd)
//!            a[t, h] = softmax_j≤p0+t (q[t,h]·k[j,h/g] / √hd) · v[j,h/g]     (g = nh / nkv)
//! x += a·Woᵀ;  x += W_down·(silu(RMSNorm(x)·W_gateᵀ) ⊙ RMSNorm(x)·W_upᵀ)
//! ```
//! then the final RMSNorm and the head (T, vocab) — `embed_tokens` when tied.
//!
//! Mixture-of-experts models (Mixtral, Qwen2-MoE; `config.moe`) replace the MLP of their sparse
//! layers by a [`MoeBlock`] (see `moe.rs`); [`LlamaModel::forward_traced`] also returns which
//! experts each token used in each layer.

use crate::formats::checkpoint::Checkpoint;
use crate::formats::safetensors::FormatError;
use crate::models::config::{ConfigError, LlamaConfig};
use crate::models::cpu_matvec;
use crate::models::moe::{ExpertTrace, Mlp, MoeBlock, SharedExpert};
use crate::posenc::rope::{RopeFreqs, RopeLayout, RopeScaling, apply_rope};
use crate::tensor::dtype::DType;
use crate::tensor::quant::{self, BlockFormat, QK, SplitBlocks};

/// Errors building or running a model. Each names the model and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error("model {model}: {source}")]
    Config {
        model: String,
        #[source]
        source: ConfigError,
    },
    #[error("model {model}: has no config.json")]
    NoConfig { model: String },
    #[error("model {model}: missing tensor {tensor}")]
    MissingTensor { model: String, tensor: String },
    #[error("model {model}: tensor {tensor} has shape {found:?}, expected {expected:?}")]
    Shape { model: String, tensor: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("model config and weights disagree: {0}")]
    Inconsistent(String),
    #[error("token {token} at index {index} is out of range (vocab_size {vocab})")]
    TokenOutOfRange { token: u32, index: usize, vocab: usize },
    #[error("the KV cache was made for {found} (layers, kv heads, head_dim) but the model has {expected}")]
    CacheMismatch { expected: String, found: String },
    /// Reading a GGUF file (the error names the file and the key or tensor).
    #[error("{0}")]
    Gguf(#[from] crate::formats::gguf::GgufError),
    /// A tensor's data does not fit the layout its metadata promises.
    #[error("model {model}: tensor {tensor}: {message}")]
    Tensor { model: String, tensor: String, message: String },
    /// A metadata entry (GGUF key) the model cannot use.
    #[error("model {model}: metadata key {key}: {message}")]
    Key { model: String, key: String, message: String },
}

/// How a weight matrix is stored. Quantization is a weight dtype: Q8_0 / Q4_0 / Q4_1 (and F16)
/// join this enum, each with its own row dot product; the model code does not change.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightStorage {
    /// Row-major (out_features, in_features).
    F32(Vec<f32>),
    /// IEEE binary16 bits, row-major (out_features, in_features): an F16 checkpoint's weights
    /// kept in half the memory of f32, widened to f32 inside each row dot (CPU) or kernel (GPU:
    /// `ops::hmatvec` / `ops::hmatmul`); every f16 is exactly an f32, so only the summation
    /// order differs from computing on the widened weights. (BF16 checkpoints are not narrowed
    /// to this: bf16 has f32's exponent range, so values beyond ±65504 or below 2⁻²⁴ would
    /// overflow or flush; they are widened to f32.)
    F16(Vec<u16>),
    /// GGUF blocks as stored in the file (llama.cpp `block_q8_0` / `block_q4_0` / `block_q4_1`),
    /// row-major: row o is blocks o·in/32 .. (o+1)·in/32, each 32 consecutive weights of that row.
    /// (out_features · in_features / 32 · format.block_bytes()) bytes.
    Blocks { format: BlockFormat, bytes: Vec<u8> },
    /// The same blocks in the aligned split layout the GPU kernels read ([`SplitBlocks`]: f32
    /// scales and mins, u32 quant words), block order as in `Blocks`; one copy serves the GPU
    /// upload and the CPU fallback.
    Split(SplitBlocks),
}

/// A linear layer y = x·Wᵀ (+ b), W of shape (out_features, in_features) as in `torch.nn.Linear`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub out_features: usize,
    pub in_features: usize,
    pub weight: WeightStorage,
    /// (out_features,)
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// An f32 layer; `weight.len()` must be out × in (checked by the loader).
    pub fn f32(out_features: usize, in_features: usize, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Linear {
        debug_assert_eq!(weight.len(), out_features * in_features);
        Linear { out_features, in_features, weight: WeightStorage::F32(weight), bias }
    }

    /// An F16 layer: `bits` holds out × in IEEE binary16 values, row-major (the error says
    /// when the length or the bias does not match).
    pub fn f16(out_features: usize, in_features: usize, bits: Vec<u16>, bias: Option<Vec<f32>>) -> Result<Linear, String> {
        if bits.len() != out_features * in_features {
            return Err(format!("F16: {} values, expected ({out_features}, {in_features}) = {}", bits.len(), out_features * in_features));
        }
        if let Some(b) = &bias
            && b.len() != out_features
        {
            return Err(format!("bias has {} values, expected {out_features}", b.len()));
        }
        Ok(Linear { out_features, in_features, weight: WeightStorage::F16(bits), bias })
    }

    /// A block-quantized layer over raw GGUF blocks. `in_features` must be a multiple of 32 and
    /// `bytes` exactly out × in / 32 blocks; the error message says which does not hold.
    pub fn quantized(out_features: usize, in_features: usize, format: BlockFormat, bytes: Vec<u8>, bias: Option<Vec<f32>>) -> Result<Linear, String> {
        if !in_features.is_multiple_of(QK) {
            return Err(format!("{format}: row length {in_features} is not a multiple of the block size {QK}"));
        }
        let expected = out_features * (in_features / QK) * format.block_bytes();
        if bytes.len() != expected {
            return Err(format!("{format}: {} bytes, expected {expected} for ({out_features}, {in_features})", bytes.len()));
        }
        if let Some(b) = &bias
            && b.len() != out_features
        {
            return Err(format!("bias has {} values, expected {out_features}", b.len()));
        }
        Ok(Linear { out_features, in_features, weight: WeightStorage::Blocks { format, bytes }, bias })
    }

    /// A block-quantized layer over split blocks (out × in / 32 of them, consistent arrays).
    pub fn split(out_features: usize, in_features: usize, blocks: SplitBlocks, bias: Option<Vec<f32>>) -> Result<Linear, String> {
        let format = blocks.format;
        if !in_features.is_multiple_of(QK) {
            return Err(format!("{format}: row length {in_features} is not a multiple of the block size {QK}"));
        }
        let n = out_features * (in_features / QK);
        let mins_ok = match &blocks.mins {
            Some(m) => format.has_min() && m.len() == n,
            None => !format.has_min(),
        };
        if blocks.scales.len() != n || blocks.qs.len() != n * format.quant_words() || !mins_ok {
            return Err(format!(
                "{format}: split layout with {} scales, {} quant words, {} mins, expected {n} blocks for ({out_features}, {in_features})",
                blocks.scales.len(),
                blocks.qs.len(),
                blocks.mins.as_ref().map_or(0, |m| m.len())
            ));
        }
        if let Some(b) = &bias
            && b.len() != out_features
        {
            return Err(format!("bias has {} values, expected {out_features}", b.len()));
        }
        Ok(Linear { out_features, in_features, weight: WeightStorage::Split(blocks), bias })
    }

    /// This layer with `Blocks` weights moved to the split layout (other storages unchanged).
    pub fn into_split(self) -> Linear {
        match self.weight {
            WeightStorage::Blocks { format, bytes } => {
                let blocks = SplitBlocks::from_blocks(format, &bytes).expect("length checked by Linear::quantized");
                Linear { weight: WeightStorage::Split(blocks), ..self }
            }
            _ => self,
        }
    }

    /// x (T, in) → y (T, out). `x.len()` must be a multiple of `in_features`.
    ///
    /// The fast path (`cpu_matvec.rs`: block scales factored out of the dot products, output rows
    /// split across threads natively); it agrees with [`forward_reference`](Self::forward_reference)
    /// up to f32 rounding.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (inp, out) = (self.in_features, self.out_features);
        let mut y = match &self.weight {
            WeightStorage::F32(w) => return cpu_matvec::forward_f32(w, self.bias.as_deref(), x, inp, out),
            WeightStorage::F16(w) => return cpu_matvec::forward_f16(w, self.bias.as_deref(), x, inp, out),
            WeightStorage::Blocks { format, bytes } => cpu_matvec::forward_blocks(*format, bytes, x, inp, out),
            WeightStorage::Split(s) => cpu_matvec::forward_split(s, x, inp, out),
        };
        if let Some(b) = &self.bias {
            for yr in y.chunks_exact_mut(out) {
                for (yo, bo) in yr.iter_mut().zip(b) {
                    *yo += bo;
                }
            }
        }
        y
    }

    /// The readable reference of [`forward`](Self::forward), single-threaded.
    ///
    /// Quantized weights: each 32-weight block of a row is dequantized once (exactly as
    /// [`quant::dequantize`], into a stack buffer) and dotted with the matching 32 inputs of all
    /// T tokens; everything is f32 (the activations are not quantized).
    pub fn forward_reference(&self, x: &[f32]) -> Vec<f32> {
        let t = x.len() / self.in_features;
        let mut y = vec![0.0f32; t * self.out_features];
        match &self.weight {
            WeightStorage::F32(w) => {
                for (xr, yr) in x.chunks_exact(self.in_features).zip(y.chunks_exact_mut(self.out_features)) {
                    for (o, (yo, wr)) in yr.iter_mut().zip(w.chunks_exact(self.in_features)).enumerate() {
                        let dot: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                        *yo = dot + self.bias.as_ref().map_or(0.0, |b| b[o]);
                    }
                }
            }
            WeightStorage::F16(w) => {
                // Each weight widened exactly (f16 ⊂ f32), then the F32 branch's dot in j order.
                for (xr, yr) in x.chunks_exact(self.in_features).zip(y.chunks_exact_mut(self.out_features)) {
                    for (yo, wr) in yr.iter_mut().zip(w.chunks_exact(self.in_features)) {
                        *yo = xr.iter().zip(wr).map(|(a, &b)| a * f16_bits_to_f32(b)).sum();
                    }
                }
            }
            WeightStorage::Blocks { format, bytes } => {
                // One monomorphized loop per format (the debug build, opt-level 1, does not hoist a
                // `match` out of the inner loop).
                let (inp, out) = (self.in_features, self.out_features);
                let bb = format.block_bytes();
                match format {
                    BlockFormat::Q8_0 => rows_forward(x, &mut y, inp, out, |b, wb| dequantize_q8_0(&bytes[b * bb..(b + 1) * bb], wb)),
                    BlockFormat::Q4_0 => rows_forward(x, &mut y, inp, out, |b, wb| dequantize_q4_0(&bytes[b * bb..(b + 1) * bb], wb)),
                    BlockFormat::Q4_1 => rows_forward(x, &mut y, inp, out, |b, wb| dequantize_q4_1(&bytes[b * bb..(b + 1) * bb], wb)),
                }
            }
            WeightStorage::Split(s) => {
                let (inp, out) = (self.in_features, self.out_features);
                // (Linear::split checks that Q4_1 has mins; missing ones read as 0 like SplitBlocks'.)
                let mins = s.mins.as_deref().unwrap_or(&[]);
                match s.format {
                    BlockFormat::Q8_0 => rows_forward(x, &mut y, inp, out, |b, wb| split_q8_0(s.scales[b], &s.qs[b * 8..b * 8 + 8], wb)),
                    BlockFormat::Q4_0 => rows_forward(x, &mut y, inp, out, |b, wb| split_q4_0(s.scales[b], &s.qs[b * 4..b * 4 + 4], wb)),
                    BlockFormat::Q4_1 => rows_forward(x, &mut y, inp, out, |b, wb| split_q4_1(s.scales[b], mins.get(b).copied().unwrap_or(0.0), &s.qs[b * 4..b * 4 + 4], wb)),
                }
            }
        }
        if !matches!(self.weight, WeightStorage::F32(_))
            && let Some(b) = &self.bias
        {
            for yr in y.chunks_exact_mut(self.out_features) {
                for (yo, bo) in yr.iter_mut().zip(b) {
                    *yo += bo;
                }
            }
        }
        y
    }

    /// Row `i` of W widened to f32 (the embedding gather), into `out` (length in_features).
    /// Quantized weights dequantize that row's blocks only.
    pub fn row(&self, i: usize, out: &mut [f32]) {
        match &self.weight {
            WeightStorage::F32(w) => out.copy_from_slice(&w[i * self.in_features..(i + 1) * self.in_features]),
            WeightStorage::F16(w) => {
                for (o, &h) in out.iter_mut().zip(&w[i * self.in_features..(i + 1) * self.in_features]) {
                    *o = f16_bits_to_f32(h);
                }
            }
            WeightStorage::Blocks { format, bytes } => {
                let row_bytes = self.in_features / QK * format.block_bytes();
                let row = &bytes[i * row_bytes..(i + 1) * row_bytes];
                for (block, o) in row.chunks_exact(format.block_bytes()).zip(out.chunks_exact_mut(QK)) {
                    let o: &mut [f32; QK] = o.try_into().expect("chunks of QK");
                    dequantize_block(*format, block, o);
                }
            }
            WeightStorage::Split(s) => {
                let nb = self.in_features / QK;
                let words = s.format.quant_words();
                for (k, o) in out.chunks_exact_mut(QK).enumerate() {
                    let b = i * nb + k;
                    let o: &mut [f32; QK] = o.try_into().expect("chunks of QK");
                    let qs = &s.qs[b * words..(b + 1) * words];
                    match s.format {
                        BlockFormat::Q8_0 => split_q8_0(s.scales[b], qs, o),
                        BlockFormat::Q4_0 => split_q4_0(s.scales[b], qs, o),
                        BlockFormat::Q4_1 => split_q4_1(s.scales[b], s.mins.as_ref().and_then(|m| m.get(b)).copied().unwrap_or(0.0), qs, o),
                    }
                }
            }
        }
    }

    /// Bytes held by the weight (in its storage) and the bias.
    pub fn weight_bytes(&self) -> usize {
        let w = match &self.weight {
            WeightStorage::F32(w) => w.len() * 4,
            WeightStorage::F16(w) => w.len() * 2,
            WeightStorage::Blocks { bytes, .. } => bytes.len(),
            WeightStorage::Split(s) => (s.scales.len() + s.qs.len() + s.mins.as_ref().map_or(0, |m| m.len())) * 4,
        };
        w + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }

    /// This layer with its weight quantized to `format` (llama.cpp's reference quantizer, see
    /// [`quant::quantize`]) from its f32 values; already-quantized layers are re-quantized from
    /// their dequantized values. The bias stays f32. Errors when `in_features` is not a multiple
    /// of the block size.
    pub fn quantize(self, format: BlockFormat) -> Result<Linear, String> {
        if !self.in_features.is_multiple_of(QK) {
            return Err(format!("cannot quantize to {format}: row length {} is not a multiple of the block size {QK}", self.in_features));
        }
        let Linear { out_features, in_features, weight, bias } = self;
        let w = match weight {
            WeightStorage::F32(w) => w,
            other => Linear { out_features, in_features, weight: other, bias: None }.to_f32(),
        };
        let mut bytes = Vec::new();
        quant::quantize(format, &w, &mut bytes).map_err(|e| e.to_string())?;
        Linear::quantized(out_features, in_features, format, bytes, bias)
    }

    /// The whole weight widened to f32, row-major (out, in) — for tests and uploads.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.weight {
            WeightStorage::F32(w) => w.clone(),
            WeightStorage::F16(w) => w.iter().map(|&h| f16_bits_to_f32(h)).collect(),
            WeightStorage::Blocks { format, bytes } => {
                let mut out = Vec::new();
                quant::dequantize(*format, bytes, &mut out).expect("length checked by Linear::quantized");
                out
            }
            WeightStorage::Split(s) => {
                let mut out = Vec::new();
                s.dequantize(&mut out).expect("layout checked by Linear::split");
                out
            }
        }
    }
}

/// IEEE binary16 → f32, exact (every f16 is an f32). Written out so that the debug build of the
/// matvec does not go through a dependency compiled at opt-level 0.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x3FF) as u32;
    if exp == 0 {
        // zero or subnormal: man · 2⁻²⁴ (exact in f32)
        let v = man as f32 * (1.0 / 16_777_216.0);
        return if sign != 0 { -v } else { v };
    }
    let bits = if exp == 31 { sign | 0x7F80_0000 | (man << 13) } else { sign | ((exp + 112) << 23) | (man << 13) };
    f32::from_bits(bits)
}

/// y (T, out) = x (T, in) · Wᵀ over 32-weight blocks: `deq(b, buf)` writes block `b` (row-major
/// block order, in/32 blocks per row) as f32 into a stack buffer, which is dotted with the matching
/// 32 inputs of every token.
#[inline(always)]
fn rows_forward<F: Fn(usize, &mut [f32; QK])>(x: &[f32], y: &mut [f32], inp: usize, out: usize, deq: F) {
    let t = x.len() / inp;
    let nb = inp / QK;
    let mut wb = [0.0f32; QK];
    for o in 0..out {
        for ti in 0..t {
            y[ti * out + o] = 0.0;
        }
        for b in 0..nb {
            deq(o * nb + b, &mut wb);
            for ti in 0..t {
                let xb: &[f32; QK] = x[ti * inp + b * QK..ti * inp + (b + 1) * QK].try_into().expect("QK inputs");
                y[ti * out + o] += dot32(&wb, xb);
            }
        }
    }
}

/// Split Q8_0 block (scale, 8 words) → `d·q`; byte k of word w is quant 4w + k.
#[inline(always)]
fn split_q8_0(d: f32, qs: &[u32], out: &mut [f32; QK]) {
    let qs: &[u32; 8] = qs.try_into().expect("8 words");
    let mut j = 0;
    while j < QK {
        out[j] = ((qs[j / 4] >> (8 * (j % 4))) as u8 as i8) as f32 * d;
        j += 1;
    }
}

/// Split Q4_0 block (scale, 4 words) → `d·(q − 8)`.
#[inline(always)]
fn split_q4_0(d: f32, qs: &[u32], out: &mut [f32; QK]) {
    let qs: &[u32; 4] = qs.try_into().expect("4 words");
    let mut j = 0;
    while j < QK / 2 {
        let q = (qs[j / 4] >> (8 * (j % 4))) as u8;
        out[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        out[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
        j += 1;
    }
}

/// Split Q4_1 block (scale, min, 4 words) → `d·q + m`.
#[inline(always)]
fn split_q4_1(d: f32, m: f32, qs: &[u32], out: &mut [f32; QK]) {
    let qs: &[u32; 4] = qs.try_into().expect("4 words");
    let mut j = 0;
    while j < QK / 2 {
        let q = (qs[j / 4] >> (8 * (j % 4))) as u8;
        out[j] = (q & 0x0F) as f32 * d + m;
        out[j + QK / 2] = (q >> 4) as f32 * d + m;
        j += 1;
    }
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Q8_0 block (34 bytes) → 32 weights `d·q` (llama.cpp `dequantize_row_q8_0`).
#[inline(always)]
fn dequantize_q8_0(b: &[u8], out: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let qs: &[u8; QK] = b[2..2 + QK].try_into().expect("34-byte block");
    let mut j = 0;
    while j < QK {
        out[j] = (qs[j] as i8) as f32 * d;
        j += 1;
    }
}

/// Q4_0 block (18 bytes) → 32 weights `d·(q − 8)` (llama.cpp `dequantize_row_q4_0`).
#[inline(always)]
fn dequantize_q4_0(b: &[u8], out: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let qs: &[u8; QK / 2] = b[2..2 + QK / 2].try_into().expect("18-byte block");
    let mut j = 0;
    while j < QK / 2 {
        out[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        out[j + QK / 2] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
        j += 1;
    }
}

/// Q4_1 block (20 bytes) → 32 weights `d·q + m` (llama.cpp `dequantize_row_q4_1`, two roundings).
#[inline(always)]
fn dequantize_q4_1(b: &[u8], out: &mut [f32; QK]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs: &[u8; QK / 2] = b[4..4 + QK / 2].try_into().expect("20-byte block");
    let mut j = 0;
    while j < QK / 2 {
        out[j] = (qs[j] & 0x0F) as f32 * d + m;
        out[j + QK / 2] = (qs[j] >> 4) as f32 * d + m;
        j += 1;
    }
}

/// One GGUF block → 32 f32 weights, with the arithmetic of [`quant::dequantize`].
#[inline(always)]
fn dequantize_block(format: BlockFormat, b: &[u8], out: &mut [f32; QK]) {
    match format {
        BlockFormat::Q8_0 => dequantize_q8_0(b, out),
        BlockFormat::Q4_0 => dequantize_q4_0(b, out),
        BlockFormat::Q4_1 => dequantize_q4_1(b, out),
    }
}

/// Σ w[j]·x[j] over one block, with four partial sums (independent chains the debug build keeps
/// in registers).
#[inline(always)]
fn dot32(w: &[f32; QK], x: &[f32; QK]) -> f32 {
    let (mut s0, mut s1, mut s2, mut s3) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let mut j = 0;
    while j < QK {
        s0 += w[j] * x[j];
        s1 += w[j + 1] * x[j + 1];
        s2 += w[j + 2] * x[j + 2];
        s3 += w[j + 3] * x[j + 3];
        j += 4;
    }
    (s0 + s1) + (s2 + s3)
}

#[cfg(test)]
mod quant_tests {
    use super::*;

    #[test]
    fn f16_bits_to_f32_is_exact_for_every_f16() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#06x}: {got} vs {want}");
        }
    }

    /// A quantized layer equals the f32 layer over its dequantized weights (same products; only
    /// the summation order differs), and its rows are the dequantized rows bit for bit.
    #[test]
    fn quantized_linear_matches_dequantized_f32() {
        let (out, inp, t) = (7, 96, 3);
        let w: Vec<f32> = (0..out * inp).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let x: Vec<f32> = (0..t * inp).map(|i| ((i * 53 % 89) as f32 - 44.0) / 23.0).collect();
        let bias: Vec<f32> = (0..out).map(|o| o as f32 * 0.25 - 1.0).collect();
        for format in BlockFormat::ALL {
            let mut bytes = Vec::new();
            quant::quantize(format, &w, &mut bytes).unwrap();
            let q = Linear::quantized(out, inp, format, bytes, Some(bias.clone())).unwrap();
            let deq = q.to_f32();
            let f = Linear::f32(out, inp, deq.clone(), Some(bias.clone()));
            let (yq, yf) = (q.forward(&x), f.forward(&x));
            assert_eq!(yq.len(), t * out);
            for (a, b) in yq.iter().zip(&yf) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{format}: {a} vs {b}");
            }
            let mut row = vec![0.0f32; inp];
            for o in 0..out {
                q.row(o, &mut row);
                assert_eq!(row, deq[o * inp..(o + 1) * inp], "{format} row {o}");
            }
        }
        for format in BlockFormat::ALL {
            let mut bytes = Vec::new();
            quant::quantize(format, &w, &mut bytes).unwrap();
            let q = Linear::quantized(out, inp, format, bytes, Some(bias.clone())).unwrap();
            let s = q.clone().into_split();
            assert!(matches!(s.weight, WeightStorage::Split(_)));
            // same dequantized weights, same summation order: bit for bit
            assert_eq!(s.forward(&x), q.forward(&x), "{format}");
            assert_eq!(s.to_f32(), q.to_f32(), "{format}");
            let (mut a, mut b) = (vec![0.0f32; inp], vec![0.0f32; inp]);
            for o in 0..out {
                s.row(o, &mut a);
                q.row(o, &mut b);
                assert_eq!(a, b, "{format} row {o}");
            }
            let WeightStorage::Split(sb) = s.weight else { unreachable!() };
            assert!(Linear::split(out + 1, inp, sb.clone(), None).unwrap_err().contains("expected 24 blocks"));
            assert!(Linear::split(out, inp, sb, None).is_ok());
        }
        assert!(Linear::quantized(2, 48, BlockFormat::Q8_0, vec![0; 2 * 34], None).unwrap_err().contains("not a multiple"));
        assert!(Linear::quantized(2, 64, BlockFormat::Q4_1, vec![0; 3 * 20], None).unwrap_err().contains("expected 80"));
    }
}

/// One decoder layer's weights.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaLayer {
    /// (H,)
    pub input_layernorm: Vec<f32>,
    /// (nh·hd, H), (nkv·hd, H), (nkv·hd, H), (H, nh·hd)
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// (H,)
    pub post_attention_layernorm: Vec<f32>,
    /// (I, H), (I, H), (H, I). In a sparse MoE layer (`moe` is `Some`) these are empty
    /// (0 × H, H × 0 …: no weights) and unused.
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// The sparse mixture-of-experts MLP that replaces gate/up/down in MoE layers.
    pub moe: Option<MoeBlock>,
}

/// All weights of a Llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaWeights {
    /// `model.embed_tokens.weight` (vocab, H)
    pub embed_tokens: Linear,
    pub layers: Vec<LlamaLayer>,
    /// `model.norm.weight` (H,)
    pub norm: Vec<f32>,
    /// `lm_head.weight` (vocab, H); `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
}

impl LlamaWeights {
    /// Every `Blocks` projection (and the embedding / head) moved to the split layout
    /// ([`Linear::into_split`]): one copy for the GPU upload and the CPU fallback.
    pub fn into_split(self) -> LlamaWeights {
        LlamaWeights {
            embed_tokens: self.embed_tokens.into_split(),
            layers: self
                .layers
                .into_iter()
                .map(|l| LlamaLayer {
                    q_proj: l.q_proj.into_split(),
                    k_proj: l.k_proj.into_split(),
                    v_proj: l.v_proj.into_split(),
                    o_proj: l.o_proj.into_split(),
                    gate_proj: l.gate_proj.into_split(),
                    up_proj: l.up_proj.into_split(),
                    down_proj: l.down_proj.into_split(),
                    moe: l.moe.map(|b| b.map(Linear::into_split)),
                    ..l
                })
                .collect(),
            norm: self.norm,
            lm_head: self.lm_head.map(Linear::into_split),
        }
    }
}

impl LlamaWeights {
    /// Quantize-on-load: every projection, expert, the embedding and the head converted to
    /// `format` ([`Linear::quantize`]); norms, biases and MoE routers stay f32 (the router is tiny
    /// and decides which experts run). `model` names the model in errors, which also name the
    /// tensor whose row length is not a multiple of the block size.
    pub fn quantize(self, format: BlockFormat, model: &str) -> Result<LlamaWeights, ModelError> {
        let q = |lin: Linear, tensor: String| -> Result<Linear, ModelError> {
            if lin.out_features == 0 || lin.in_features == 0 {
                return Ok(lin); // the empty dense MLP of a sparse layer
            }
            lin.quantize(format).map_err(|message| ModelError::Tensor { model: model.to_string(), tensor, message })
        };
        let qm = |m: Mlp, p: &str| -> Result<Mlp, ModelError> {
            Ok(Mlp { gate_proj: q(m.gate_proj, format!("{p}.gate_proj"))?, up_proj: q(m.up_proj, format!("{p}.up_proj"))?, down_proj: q(m.down_proj, format!("{p}.down_proj"))? })
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for (n, l) in self.layers.into_iter().enumerate() {
            let p = format!("model.layers.{n}");
            let moe = match l.moe {
                None => None,
                Some(b) => Some(MoeBlock {
                    router: b.router,
                    experts: b.experts.into_iter().enumerate().map(|(e, m)| qm(m, &format!("{p}.mlp.experts.{e}"))).collect::<Result<_, _>>()?,
                    shared: match b.shared {
                        None => None,
                        Some(s) => Some(SharedExpert { mlp: qm(s.mlp, &format!("{p}.mlp.shared_expert"))?, gate: s.gate }),
                    },
                }),
            };
            layers.push(LlamaLayer {
                input_layernorm: l.input_layernorm,
                q_proj: q(l.q_proj, format!("{p}.self_attn.q_proj.weight"))?,
                k_proj: q(l.k_proj, format!("{p}.self_attn.k_proj.weight"))?,
                v_proj: q(l.v_proj, format!("{p}.self_attn.v_proj.weight"))?,
                o_proj: q(l.o_proj, format!("{p}.self_attn.o_proj.weight"))?,
                post_attention_layernorm: l.post_attention_layernorm,
                gate_proj: q(l.gate_proj, format!("{p}.mlp.gate_proj.weight"))?,
                up_proj: q(l.up_proj, format!("{p}.mlp.up_proj.weight"))?,
                down_proj: q(l.down_proj, format!("{p}.mlp.down_proj.weight"))?,
                moe,
            });
        }
        Ok(LlamaWeights {
            embed_tokens: q(self.embed_tokens, "model.embed_tokens.weight".into())?,
            layers,
            norm: self.norm,
            lm_head: self.lm_head.map(|h| q(h, "lm_head.weight".into())).transpose()?,
        })
    }

    /// Bytes held by all weights in their storage (f32, blocks or split blocks), norms included.
    pub fn weight_bytes(&self) -> usize {
        let layer = |l: &LlamaLayer| {
            (l.input_layernorm.len() + l.post_attention_layernorm.len()) * 4
                + [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj].iter().map(|x| x.weight_bytes()).sum::<usize>()
                + l.moe.as_ref().map_or(0, MoeBlock::weight_bytes)
        };
        self.embed_tokens.weight_bytes() + self.layers.iter().map(layer).sum::<usize>() + self.norm.len() * 4 + self.lm_head.as_ref().map_or(0, Linear::weight_bytes)
    }
}

/// Reads tensors by name, checking their shapes.
struct Loader<'a> {
    ckpt: &'a mut Checkpoint,
    buf: Vec<f32>,
}

impl Loader<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let model = self.ckpt.name().to_string();
        let info = self.ckpt.info(name).ok_or_else(|| ModelError::MissingTensor { model: model.clone(), tensor: name.to_string() })?;
        if info.shape != shape {
            return Err(ModelError::Shape { model, tensor: name.to_string(), expected: shape.to_vec(), found: info.shape.clone() });
        }
        self.ckpt.read(name, &mut self.buf)?;
        Ok(std::mem::take(&mut self.buf))
    }

    /// `{prefix}.weight` (out, in): an F16 tensor stays F16 ([`WeightStorage::F16`]); F32 and
    /// BF16 are widened to f32 (BF16 → F16 could overflow, see `WeightStorage::F16`). The bias
    /// is f32.
    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear, ModelError> {
        let name = format!("{prefix}.weight");
        let b = if bias { Some(self.tensor(&format!("{prefix}.bias"), &[out])?) } else { None };
        if self.ckpt.info(&name).is_some_and(|i| i.dtype == DType::F16 && i.shape == [out, inp]) {
            let mut raw = Vec::new();
            self.ckpt.read_bytes(&name, &mut raw)?;
            let bits: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            let model = self.ckpt.name().to_string();
            return Linear::f16(out, inp, bits, b).map_err(|message| ModelError::Tensor { model, tensor: name, message });
        }
        let w = self.tensor(&name, &[out, inp])?;
        Ok(Linear::f32(out, inp, w, b))
    }

    fn mlp(&mut self, gate: &str, up: &str, down: &str, i: usize, h: usize, bias: bool) -> Result<Mlp, ModelError> {
        Ok(Mlp { gate_proj: self.linear(gate, i, h, bias)?, up_proj: self.linear(up, i, h, bias)?, down_proj: self.linear(down, h, i, bias)? })
    }

    /// The sparse block of layer prefix `p` (`model.layers.N`). Experts are read from the
    /// per-expert names saved by transformers (Mixtral `block_sparse_moe.experts.E.w1/w3/w2`,
    /// Qwen2-MoE `mlp.experts.E.gate_proj/up_proj/down_proj`) or from transformers ≥5's fused
    /// `mlp.experts.gate_up_proj` (E, 2·I, H; gate rows first) and `mlp.experts.down_proj` (E, H, I).
    fn moe(&mut self, p: &str, moe: &crate::models::config::MoeConfig, h: usize) -> Result<MoeBlock, ModelError> {
        let (e, i) = (moe.num_experts, moe.expert_intermediate_size);
        let base = if self.ckpt.info(&format!("{p}.block_sparse_moe.gate.weight")).is_some() { format!("{p}.block_sparse_moe") } else { format!("{p}.mlp") };
        let router = self.linear(&format!("{base}.gate"), e, h, false)?;
        let fused = format!("{base}.experts.gate_up_proj");
        let experts = if self.ckpt.info(&fused).is_some() {
            let gu = self.tensor(&fused, &[e, 2 * i, h])?;
            let dn = self.tensor(&format!("{base}.experts.down_proj"), &[e, h, i])?;
            (0..e)
                .map(|x| {
                    let g = &gu[x * 2 * i * h..(x * 2 + 1) * i * h];
                    let u = &gu[(x * 2 + 1) * i * h..(x + 1) * 2 * i * h];
                    Mlp {
                        gate_proj: Linear::f32(i, h, g.to_vec(), None),
                        up_proj: Linear::f32(i, h, u.to_vec(), None),
                        down_proj: Linear::f32(h, i, dn[x * h * i..(x + 1) * h * i].to_vec(), None),
                    }
                })
                .collect()
        } else {
            let mixtral = self.ckpt.info(&format!("{base}.experts.0.w1.weight")).is_some();
            let mut experts = Vec::with_capacity(e);
            for x in 0..e {
                let q = format!("{base}.experts.{x}");
                experts.push(if mixtral {
                    self.mlp(&format!("{q}.w1"), &format!("{q}.w3"), &format!("{q}.w2"), i, h, false)?
                } else {
                    self.mlp(&format!("{q}.gate_proj"), &format!("{q}.up_proj"), &format!("{q}.down_proj"), i, h, false)?
                });
            }
            experts
        };
        let shared = match moe.shared_expert_intermediate_size {
            None => None,
            Some(si) => {
                let s = format!("{base}.shared_expert");
                Some(SharedExpert {
                    mlp: self.mlp(&format!("{s}.gate_proj"), &format!("{s}.up_proj"), &format!("{s}.down_proj"), si, h, false)?,
                    gate: self.linear(&format!("{base}.shared_expert_gate"), 1, h, false)?,
                })
            }
        };
        Ok(MoeBlock { router, experts, shared })
    }
}

/// Empty dense MLP projections for a sparse layer (see [`LlamaLayer::gate_proj`]).
pub(crate) fn empty_mlp(h: usize) -> (Linear, Linear, Linear) {
    (Linear::f32(0, h, Vec::new(), None), Linear::f32(0, h, Vec::new(), None), Linear::f32(h, 0, Vec::new(), None))
}

impl LlamaWeights {
    /// Load every weight by its Hugging Face name; shapes are checked against `cfg`. Linear
    /// weights (projections, embedding, head) stored as F16 stay F16; the rest is widened to f32.
    /// The head is `lm_head.weight` unless `tie_word_embeddings` is set (a tied checkpoint that
    /// still stores `lm_head.weight` uses the stored copy, as transformers would after loading).
    pub fn load(ckpt: &mut Checkpoint, cfg: &LlamaConfig) -> Result<LlamaWeights, ModelError> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q_out, kv_out) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let mut l = Loader { ckpt, buf: Vec::new() };
        let embed_tokens = l.linear("model.embed_tokens", v, h, false)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for n in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{n}");
            let input_layernorm = l.tensor(&format!("{p}.input_layernorm.weight"), &[h])?;
            let q_proj = l.linear(&format!("{p}.self_attn.q_proj"), q_out, h, cfg.qkv_bias)?;
            let k_proj = l.linear(&format!("{p}.self_attn.k_proj"), kv_out, h, cfg.qkv_bias)?;
            let v_proj = l.linear(&format!("{p}.self_attn.v_proj"), kv_out, h, cfg.qkv_bias)?;
            let o_proj = l.linear(&format!("{p}.self_attn.o_proj"), h, q_out, cfg.o_bias)?;
            let post_attention_layernorm = l.tensor(&format!("{p}.post_attention_layernorm.weight"), &[h])?;
            let (moe, (gate_proj, up_proj, down_proj)) = match &cfg.moe {
                Some(m) if m.is_sparse(n) => (Some(l.moe(&p, m, h)?), empty_mlp(h)),
                _ => {
                    let d = l.mlp(&format!("{p}.mlp.gate_proj"), &format!("{p}.mlp.up_proj"), &format!("{p}.mlp.down_proj"), i, h, cfg.mlp_bias)?;
                    (None, (d.gate_proj, d.up_proj, d.down_proj))
                }
            };
            layers.push(LlamaLayer { input_layernorm, q_proj, k_proj, v_proj, o_proj, post_attention_layernorm, gate_proj, up_proj, down_proj, moe });
        }
        let norm = l.tensor("model.norm.weight", &[h])?;
        let has_head = l.ckpt.info("lm_head.weight").is_some();
        let lm_head = if !cfg.tie_word_embeddings || has_head { Some(l.linear("lm_head", v, h, false)?) } else { None };
        Ok(LlamaWeights { embed_tokens, layers, norm, lm_head })
    }
}

/// Perplexity of a token sequence ([`LlamaModel::perplexity`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Perplexity {
    /// Tokens in the sequence.
    pub tokens: usize,
    /// Tokens scored (predicted from at least one token before them).
    pub scored: usize,
    /// Windows run.
    pub windows: usize,
    pub context: usize,
    pub stride: usize,
    /// Mean negative log-likelihood (nats per scored token).
    pub nll: f64,
    /// exp(nll)
    pub perplexity: f64,
}

/// Keys and values of every layer for the positions seen so far.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Per layer: k and v, each (len, nkv, hd) row-major.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    n_kv_heads: usize,
    head_dim: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `cfg`'s layers and K/V heads.
    pub fn new(cfg: &LlamaConfig) -> KvCache {
        KvCache { layers: vec![(Vec::new(), Vec::new()); cfg.num_hidden_layers], n_kv_heads: cfg.num_key_value_heads, head_dim: cfg.head_dim, len: 0 }
    }

    /// Number of positions cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget every position (start a new sequence).
    pub fn clear(&mut self) {
        for (k, v) in &mut self.layers {
            k.clear();
            v.clear();
        }
        self.len = 0;
    }
}

/// A Llama-family model ready to run on the CPU.
#[derive(Clone, Debug)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    pub weights: LlamaWeights,
    /// Pair layout of the Q/K rows (Halves for safetensors checkpoints, Adjacent for GGUF).
    pub rope_layout: RopeLayout,
    /// Frequencies for every rope type except `Dynamic` (which depends on the sequence length).
    freqs: RopeFreqs,
}

/// RMSNorm over the last dimension: y = w ⊙ x / √(mean(x²) + ε), x (T, H) in place.
fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = g * (*v * r);
        }
    }
}

use crate::models::moe::silu;

impl LlamaModel {
    /// A model from a parsed config and its weights; `rope_layout` says how the loader laid out
    /// Q/K rows.
    pub fn new(config: LlamaConfig, weights: LlamaWeights, rope_layout: RopeLayout) -> LlamaModel {
        let freqs = config.rope.freqs(None);
        LlamaModel { config, weights, rope_layout, freqs }
    }

    /// Load a Hugging Face checkpoint: config.json + safetensors (HF halves RoPE layout).
    pub fn from_checkpoint(ckpt: &mut Checkpoint) -> Result<LlamaModel, ModelError> {
        let model = ckpt.name().to_string();
        let json = ckpt.config()?.ok_or_else(|| ModelError::NoConfig { model: model.clone() })?;
        let config = LlamaConfig::from_json(&json).map_err(|source| ModelError::Config { model, source })?;
        let weights = LlamaWeights::load(ckpt, &config)?;
        Ok(LlamaModel::new(config, weights, RopeLayout::Halves))
    }

    /// Run `tokens` (T ≥ 0 new tokens) after the `cache.len()` positions already in `cache`, append
    /// their keys and values to it, and return the logits (T, vocab) row-major. T > 1 is a prefill,
    /// T = 1 a decode step; any mix works.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        self.forward_impl(tokens, cache, None)
    }

    /// Perplexity of `ids` with windows of at most `context` tokens moved by `stride` (HF
    /// "Perplexity of fixed-length models", with an exact token count): windows begin at 0,
    /// stride, 2·stride, …; window = ids[begin..min(begin + context, n)], each run from an empty
    /// cache; its targets are the tokens at or after the previous window's end that have a token
    /// before them in the window; stop once a window reaches the end. With stride < context every
    /// token but the first is scored exactly once, with at least context − stride tokens of
    /// history (fewer only near the start); with stride = context each window's first token is
    /// not scored. NLL = mean over targets of −log softmax(logits)[target] (f32 log-softmax,
    /// f64 sum); perplexity = exp(NLL).
    ///
    /// `progress(windows_done, windows_total)` is called after each window; returning false
    /// cancels (the result is then `Ok(None)`).
    pub fn perplexity(&self, ids: &[u32], context: usize, stride: usize, mut progress: impl FnMut(usize, usize) -> bool) -> Result<Option<Perplexity>, ModelError> {
        let n = ids.len();
        if n < 2 {
            return Err(ModelError::Inconsistent(format!("perplexity needs at least 2 tokens, the text has {n}")));
        }
        if context < 2 || stride == 0 || stride > context {
            return Err(ModelError::Inconsistent(format!("perplexity: context {context} must be ≥ 2 and stride {stride} in 1..=context")));
        }
        let v = self.config.vocab_size;
        // number of windows: begins 0, s, 2s, … until begin + context ≥ n
        let total = if n <= context { 1 } else { (n - context).div_ceil(stride) + 1 };
        let (mut nll, mut scored, mut prev_end, mut windows) = (0.0f64, 0usize, 0usize, 0usize);
        let mut begin = 0;
        loop {
            let end = (begin + context).min(n);
            let mut cache = KvCache::new(&self.config);
            let logits = self.forward(&ids[begin..end], &mut cache)?; // (end − begin, V)
            for g in prev_end.max(begin + 1)..end {
                let row = &logits[(g - begin - 1) * v..(g - begin) * v];
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
                nll += (lse - row[ids[g] as usize]) as f64;
                scored += 1;
            }
            windows += 1;
            prev_end = end;
            if !progress(windows, total) {
                return Ok(None);
            }
            if end == n {
                break;
            }
            begin += stride;
        }
        let mean = nll / scored as f64;
        Ok(Some(Perplexity { tokens: n, scored, windows, context, stride, nll: mean, perplexity: mean.exp() }))
    }

    /// [`forward`](Self::forward), also returning the experts each new token used:
    /// `trace[t][layer]` lists the top-k (expert, weight) of token t in that layer, best first
    /// (empty for dense layers and dense models). For the Generate tab's heat map.
    pub fn forward_traced(&self, tokens: &[u32], cache: &mut KvCache) -> Result<(Vec<f32>, ExpertTrace), ModelError> {
        let mut trace: ExpertTrace = vec![Vec::with_capacity(self.config.num_hidden_layers); tokens.len()];
        let logits = self.forward_impl(tokens, cache, Some(&mut trace))?;
        Ok((logits, trace))
    }

    fn forward_impl(&self, tokens: &[u32], cache: &mut KvCache, mut trace: Option<&mut ExpertTrace>) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let (h, nh, nkv, hd) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        if cache.layers.len() != c.num_hidden_layers || cache.n_kv_heads != nkv || cache.head_dim != hd {
            return Err(ModelError::CacheMismatch {
                expected: format!("({}, {nkv}, {hd})", c.num_hidden_layers),
                found: format!("({}, {}, {})", cache.layers.len(), cache.n_kv_heads, cache.head_dim),
            });
        }
        if self.weights.layers.len() != c.num_hidden_layers || c.layer_windows.len() != c.num_hidden_layers {
            return Err(ModelError::Inconsistent(format!(
                "num_hidden_layers {}, {} layers of weights, {} layer windows",
                c.num_hidden_layers,
                self.weights.layers.len(),
                c.layer_windows.len()
            )));
        }
        if let Some((index, &token)) = tokens.iter().enumerate().find(|(_, t)| **t as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange { token, index, vocab: c.vocab_size });
        }
        let t_new = tokens.len();
        let p0 = cache.len;
        let total = p0 + t_new;
        if t_new == 0 {
            return Ok(Vec::new());
        }
        // Dynamic NTK: transformers recomputes θ from max(position_ids) + 1 of this call once it
        // exceeds max_position_embeddings (keys already cached keep their old rotation).
        let dynamic;
        let freqs = if matches!(c.rope.scaling, RopeScaling::Dynamic { .. }) {
            dynamic = c.rope.freqs(Some(total));
            &dynamic
        } else {
            &self.freqs
        };
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();

        // x (T, H): embedding gather
        let mut x = vec![0.0f32; t_new * h];
        for (row, &tok) in x.chunks_exact_mut(h).zip(tokens) {
            self.weights.embed_tokens.row(tok as usize, row);
        }

        let mut scores = vec![0.0f32; total];
        for ((layer, (k_cache, v_cache)), window) in self.weights.layers.iter().zip(cache.layers.iter_mut()).zip(&c.layer_windows) {
            // attention block
            let mut hs = x.clone();
            rms_norm(&mut hs, &layer.input_layernorm, c.rms_norm_eps);
            let mut q = layer.q_proj.forward(&hs); // (T, nh·hd)
            let mut k = layer.k_proj.forward(&hs); // (T, nkv·hd)
            let v = layer.v_proj.forward(&hs); // (T, nkv·hd)
            for t in 0..t_new {
                apply_rope(&mut q[t * nh * hd..(t + 1) * nh * hd], nh, hd, p0 + t, freqs, self.rope_layout);
                apply_rope(&mut k[t * nkv * hd..(t + 1) * nkv * hd], nkv, hd, p0 + t, freqs, self.rope_layout);
            }
            k_cache.extend_from_slice(&k); // (p0+T, nkv, hd)
            v_cache.extend_from_slice(&v);

            let mut attn = vec![0.0f32; t_new * nh * hd]; // (T, nh, hd)
            for t in 0..t_new {
                // causal: keys lo..=p0+t; a sliding window of w keeps p0+t − w < j
                let visible = p0 + t + 1;
                let lo = window.map_or(0, |w| visible.saturating_sub(w));
                for head in 0..nh {
                    let kvh = head / group;
                    let qv = &q[(t * nh + head) * hd..(t * nh + head + 1) * hd];
                    let s = &mut scores[lo..visible];
                    for (j, sj) in (lo..visible).zip(s.iter_mut()) {
                        let kj = &k_cache[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
                        *sj = qv.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                    }
                    // softmax in f32 with the max subtracted
                    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f32;
                    for sj in s.iter_mut() {
                        *sj = (*sj - m).exp();
                        sum += *sj;
                    }
                    let out = &mut attn[(t * nh + head) * hd..(t * nh + head + 1) * hd];
                    for (j, sj) in (lo..visible).zip(s.iter()) {
                        let p = sj / sum;
                        let vj = &v_cache[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
                        for (o, vv) in out.iter_mut().zip(vj) {
                            *o += p * vv;
                        }
                    }
                }
            }
            let o = layer.o_proj.forward(&attn); // (T, H)
            for (xi, oi) in x.iter_mut().zip(&o) {
                *xi += oi;
            }

            // MLP block (dense SwiGLU, or the sparse MoE block)
            let mut hs = x.clone();
            rms_norm(&mut hs, &layer.post_attention_layernorm, c.rms_norm_eps);
            let down = match (&layer.moe, &c.moe) {
                (Some(block), Some(mc)) => {
                    let (y, choices) = block.forward(&hs, mc); // (T, H)
                    if let Some(tr) = trace.as_deref_mut() {
                        for (tt, ch) in tr.iter_mut().zip(choices) {
                            tt.push(ch);
                        }
                    }
                    y
                }
                (Some(_), None) => return Err(ModelError::Inconsistent("a layer has MoE weights but the config has no moe section".into())),
                (None, _) => {
                    if let Some(tr) = trace.as_deref_mut() {
                        for tt in tr.iter_mut() {
                            tt.push(Vec::new());
                        }
                    }
                    let mut gate = layer.gate_proj.forward(&hs); // (T, I)
                    let up = layer.up_proj.forward(&hs); // (T, I)
                    for (g, u) in gate.iter_mut().zip(&up) {
                        *g = silu(*g) * u;
                    }
                    layer.down_proj.forward(&gate) // (T, H)
                }
            };
            for (xi, di) in x.iter_mut().zip(&down) {
                *xi += di;
            }
        }
        cache.len = total;

        rms_norm(&mut x, &self.weights.norm, c.rms_norm_eps);
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed_tokens);
        Ok(head.forward(&x)) // (T, vocab)
    }
}
