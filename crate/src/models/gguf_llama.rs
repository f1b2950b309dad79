//! A Llama-family model from a GGUF file: the `llama.*` metadata become a [`LlamaConfig`], the
//! `token_embd` / `blk.N.*` / `output*` tensors become [`LlamaWeights`] whose projections keep
//! their GGUF blocks (Q8_0, Q4_0, Q4_1: quantization is a weight dtype, see
//! [`WeightStorage::Blocks`]); norms are f32.
//!
//! References: the GGUF specification (ggml `docs/gguf.md`: standardized key names
//! `[arch].context_length`, `[arch].embedding_length`, `[arch].block_count`,
//! `[arch].feed_forward_length`, `[arch].attention.head_count(_kv)`,
//! `[arch].attention.layer_norm_rms_epsilon`, `[arch].rope.freq_base`,
//! `[arch].rope.dimension_count`, `[arch].rope.scaling.*`); llama.cpp `src/llama-arch.cpp`
//! (`LLM_TENSOR_NAMES` for `LLM_ARCH_LLAMA`), `src/llama-model.cpp` (`load_tensors`: shapes, the
//! tied head when `output.weight` is absent; `llama_model_rope_type`: `LLAMA_ROPE_TYPE_NORM`, i.e.
//! adjacent pairs, for llama) and `convert_hf_to_gguf.py` (`LlamaModel.permute`, which reorders
//! the rows of Q and K so that adjacent pairs rotate, hence [`RopeLayout::Adjacent`]).
//!
//! Name map (HF ← GGUF), GGUF `ne` is innermost first, so an (out, in) matrix has `ne = [in, out]`:
//! ```text
//! model.embed_tokens            token_embd          (vocab, H)
//! layers.N.input_layernorm      blk.N.attn_norm     (H,)
//! layers.N.self_attn.q_proj     blk.N.attn_q        (nh·hd, H)   rows permuted for adjacent RoPE
//! layers.N.self_attn.k_proj     blk.N.attn_k        (nkv·hd, H)  rows permuted for adjacent RoPE
//! layers.N.self_attn.v_proj     blk.N.attn_v        (nkv·hd, H)
//! layers.N.self_attn.o_proj     blk.N.attn_output   (H, nh·hd)
//! layers.N.post_attention_ln    blk.N.ffn_norm      (H,)
//! layers.N.mlp.gate_proj        blk.N.ffn_gate      (I, H)
//! layers.N.mlp.up_proj          blk.N.ffn_up        (I, H)
//! layers.N.mlp.down_proj        blk.N.ffn_down      (H, I)
//! model.norm                    output_norm         (H,)
//! lm_head                       output              (vocab, H)   absent: tied to token_embd
//! ```
//!
//! Mixtral-style MoE (`[arch].expert_count`, `[arch].expert_used_count`; llama.cpp
//! `LLM_TENSOR_FFN_GATE_INP`, `LLM_TENSOR_FFN_{GATE,UP,DOWN}_EXPS`, `build_moe_ffn` with
//! `LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX` and weight normalisation for llama):
//! ```text
//! block_sparse_moe.gate         blk.N.ffn_gate_inp      (E, H)
//! experts.e.w1 (gate)           blk.N.ffn_gate_exps     (E, I, H)   expert e = slice e
//! experts.e.w3 (up)             blk.N.ffn_up_exps       (E, I, H)
//! experts.e.w2 (down)           blk.N.ffn_down_exps     (E, H, I)
//! ```
//! I is `[arch].expert_feed_forward_length` when present, else `[arch].feed_forward_length`.
//!
//! Qwen2-MoE (`general.architecture = qwen2moe`; llama.cpp `LLM_ARCH_QWEN2MOE`: tensor list in
//! `llama-arch.cpp`, `load_tensors` and `llm_build_qwen2moe` in `src/models/qwen2moe.cpp`;
//! convert_hf_to_gguf.py `Qwen2MoeModel`). Keys `qwen2moe.*` as above plus
//! `expert_feed_forward_length` (I_e, default `feed_forward_length / expert_used_count` as
//! llama.cpp) and `expert_shared_feed_forward_length` (I_s, default `feed_forward_length`). Q/K are
//! not permuted by the converter and llama.cpp ropes them NEOX-style (`LLAMA_ROPE_TYPE_NEOX`), i.e.
//! the HF halves layout, hence [`RopeLayout::Halves`]. attn_q/k/v carry biases. Per sparse layer:
//! ```text
//! mlp.gate                      blk.N.ffn_gate_inp          (E, H)
//! mlp.experts.e.gate_proj       blk.N.ffn_gate_exps         (E, I_e, H)   expert e = slice e
//! mlp.experts.e.up_proj         blk.N.ffn_up_exps           (E, I_e, H)
//! mlp.experts.e.down_proj       blk.N.ffn_down_exps         (E, H, I_e)
//! mlp.shared_expert_gate        blk.N.ffn_gate_inp_shexp    (H,) or (1, H)  sigmoid gate
//! mlp.shared_expert.gate_proj   blk.N.ffn_gate_shexp        (I_s, H)
//! mlp.shared_expert.up_proj     blk.N.ffn_up_shexp          (I_s, H)
//! mlp.shared_expert.down_proj   blk.N.ffn_down_shexp        (H, I_s)
//! ```
//! Routing: softmax over all experts, top-k, and no renormalisation: llama.cpp's qwen2moe graph
//! calls `build_moe_ffn` with `norm_w = false` whatever the HF `norm_topk_prob` was, and the
//! converter writes no key for it. We follow that by default; a file with the
//! `qwen2moe.expert_weights_norm` key (what convert_hf_to_gguf writes from `norm_topk_prob` for
//! other MoE architectures) gets that value instead, so a GGUF of a `norm_topk_prob: true` model can
//! say so (llama.cpp ignores the key for qwen2moe). Beyond llama.cpp, which makes every qwen2moe
//! layer sparse, a layer without `blk.N.ffn_gate_inp` but with the dense `blk.N.ffn_{gate,up,down}`
//! of (I, H) is read as a dense layer (HF `mlp_only_layers` / `decoder_sparse_step`).

use crate::formats::gguf::{GgmlType, Gguf, GgufTensor, read_tensor_f32, read_tensor_raw};
use crate::formats::io::ByteSource;
use crate::models::config::{Family, LlamaConfig, MoeConfig, MoeStyle};
use crate::models::llama::{Linear, LlamaLayer, LlamaModel, LlamaWeights, ModelError, empty_mlp};
use crate::models::moe::{Mlp, MoeBlock, SharedExpert};
use crate::posenc::rope::{RopeConfig, RopeLayout, RopeScaling};

fn tensor_err(g: &Gguf, tensor: &str, message: impl Into<String>) -> ModelError {
    ModelError::Tensor { model: g.file.clone(), tensor: tensor.to_string(), message: message.into() }
}

fn key_err(g: &Gguf, key: &str, message: impl Into<String>) -> ModelError {
    ModelError::Key { model: g.file.clone(), key: key.to_string(), message: message.into() }
}

/// The row-major shape of `name` if present, checked against `expected`.
fn check_shape(g: &Gguf, name: &str, expected: &[usize]) -> Result<(), ModelError> {
    let t = g.tensor(name).ok_or_else(|| ModelError::MissingTensor { model: g.file.clone(), tensor: name.to_string() })?;
    if t.shape != expected {
        return Err(ModelError::Shape { model: g.file.clone(), tensor: name.to_string(), expected: expected.to_vec(), found: t.shape.clone() });
    }
    Ok(())
}

/// [`LlamaConfig`] from the `llama.*` metadata of `g` (and the tensors, for the vocabulary size,
/// the tied head and biases).
pub fn config_from_gguf(g: &Gguf) -> Result<LlamaConfig, ModelError> {
    let arch = g.get_str("general.architecture")?;
    if arch != "llama" && arch != QWEN2MOE {
        return Err(key_err(g, "general.architecture", format!("{arch:?} is not supported (supported: llama, qwen2moe)")));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let positive = |key: &str| -> Result<usize, ModelError> {
        let v = g.get_usize(key)?;
        if v == 0 { Err(key_err(g, key, "must be at least 1")) } else { Ok(v) }
    };
    let hidden_size = positive(&k("embedding_length"))?;
    let intermediate_size = positive(&k("feed_forward_length"))?;
    let num_hidden_layers = g.get_usize(&k("block_count"))?;
    let num_attention_heads = positive(&k("attention.head_count"))?;
    let num_key_value_heads = if g.get(&k("attention.head_count_kv")).is_some() { positive(&k("attention.head_count_kv"))? } else { num_attention_heads };
    if !num_attention_heads.is_multiple_of(num_key_value_heads) {
        return Err(key_err(g, &k("attention.head_count_kv"), format!("{num_key_value_heads} does not divide head_count {num_attention_heads}")));
    }
    let head_dim = if g.get(&k("attention.key_length")).is_some() {
        positive(&k("attention.key_length"))?
    } else {
        if !hidden_size.is_multiple_of(num_attention_heads) {
            return Err(key_err(g, &k("attention.head_count"), format!("embedding_length {hidden_size} is not a multiple of head_count {num_attention_heads}")));
        }
        hidden_size / num_attention_heads
    };
    if let Some(vl) = g.get(&k("attention.value_length")).and_then(|v| v.as_int())
        && vl != head_dim as i128
    {
        return Err(key_err(g, &k("attention.value_length"), format!("{vl} differs from the key length {head_dim} (not supported)")));
    }
    let rms_norm_eps = g.get_f32(&k("attention.layer_norm_rms_epsilon"))?;
    if rms_norm_eps.is_nan() || rms_norm_eps < 0.0 {
        return Err(key_err(g, &k("attention.layer_norm_rms_epsilon"), format!("must not be negative, found {rms_norm_eps}")));
    }
    let max_position_embeddings = positive(&k("context_length"))?;

    // Vocabulary: the rows of token_embd (ne[1]); the token list and llama.vocab_size must agree.
    let embd = g.tensor("token_embd.weight").ok_or_else(|| ModelError::MissingTensor { model: g.file.clone(), tensor: "token_embd.weight".into() })?;
    if embd.ne.len() != 2 {
        return Err(tensor_err(g, "token_embd.weight", format!("expected 2 dimensions, found ne = {:?}", embd.ne)));
    }
    let vocab_size = embd.shape[0];
    if let Ok(tokens) = g.get_str_array("tokenizer.ggml.tokens")
        && tokens.len() != vocab_size
    {
        return Err(key_err(g, "tokenizer.ggml.tokens", format!("{} tokens but token_embd.weight has {vocab_size} rows", tokens.len())));
    }
    if g.get(&k("vocab_size")).is_some() && g.get_usize(&k("vocab_size"))? != vocab_size {
        return Err(key_err(g, &k("vocab_size"), format!("{} but token_embd.weight has {vocab_size} rows", g.get_usize(&k("vocab_size"))?)));
    }

    let theta = if g.get(&k("rope.freq_base")).is_some() { g.get_f64(&k("rope.freq_base"))? } else { 10000.0 };
    if theta.is_nan() || theta <= 1.0 {
        return Err(key_err(g, &k("rope.freq_base"), format!("must be greater than 1, found {theta}")));
    }
    let dim = if g.get(&k("rope.dimension_count")).is_some() { g.get_usize(&k("rope.dimension_count"))? } else { head_dim };
    if dim < 4 || !dim.is_multiple_of(2) || dim > head_dim {
        return Err(key_err(g, &k("rope.dimension_count"), format!("{dim} must be even, at least 4 and at most the head size {head_dim}")));
    }
    if g.tensor("rope_freqs.weight").is_some() {
        // llama 3.1 frequency factors baked into a tensor (convert_hf_to_gguf `generate_extra_tensors`).
        return Err(tensor_err(g, "rope_freqs.weight", "per-frequency RoPE factors (llama3 rope scaling) are not supported yet"));
    }
    let scaling = rope_scaling(g, arch, max_position_embeddings)?;
    let rope = RopeConfig { theta, dim, max_position_embeddings, scaling };

    let moe = if arch == QWEN2MOE {
        Some(qwen2moe_config(g, intermediate_size, num_hidden_layers, hidden_size)?)
    } else if g.get(&k("expert_count")).is_some() && g.get_usize(&k("expert_count"))? > 0 {
        let num_experts = g.get_usize(&k("expert_count"))?;
        let top_k = positive(&k("expert_used_count"))?;
        if top_k > num_experts {
            return Err(key_err(g, &k("expert_used_count"), format!("{top_k} is more than expert_count {num_experts}")));
        }
        let expert_i = if g.get(&k("expert_feed_forward_length")).is_some() { positive(&k("expert_feed_forward_length"))? } else { intermediate_size };
        Some(MoeConfig {
            style: MoeStyle::Mixtral,
            num_experts,
            top_k,
            expert_intermediate_size: expert_i,
            norm_topk_prob: true,
            shared_expert_intermediate_size: None,
            sparse_layers: vec![true; num_hidden_layers],
        })
    } else {
        None
    };
    let has = |n: &str| g.tensor(n).is_some();
    Ok(LlamaConfig {
        family: if arch == QWEN2MOE { Family::Qwen2 } else { Family::Llama },
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        max_position_embeddings,
        tie_word_embeddings: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_gate.bias"),
        layer_windows: vec![None; num_hidden_layers],
        rope,
        moe,
    })
}

/// `[arch].rope.scaling.type` (none, linear, yarn) with `.factor` and
/// `.original_context_length`; the older `[arch].rope.scale_linear` means linear. YaRN takes
/// `.yarn_beta_fast` / `.yarn_beta_slow` when present and derives the attention factor as
/// transformers does (0.1·ln s + 1); no yarn GGUF has been checked against llama.cpp yet.
fn rope_scaling(g: &Gguf, arch: &str, ctx: usize) -> Result<RopeScaling, ModelError> {
    let k = |s: &str| format!("{arch}.{s}");
    let factor = |key: &str| -> Result<f64, ModelError> {
        let f = g.get_f64(key)?;
        if f.is_nan() || f < 1.0 {
            return Err(key_err(g, key, format!("must be at least 1, found {f}")));
        }
        Ok(f)
    };
    let ty = if g.get(&k("rope.scaling.type")).is_some() { g.get_str(&k("rope.scaling.type"))?.to_string() } else { String::new() };
    Ok(match ty.as_str() {
        "" if g.get(&k("rope.scale_linear")).is_some() => RopeScaling::Linear { factor: factor(&k("rope.scale_linear"))? },
        "" | "none" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: factor(&k("rope.scaling.factor"))? },
        "yarn" => {
            let opt = |s: &str| -> Result<Option<f64>, ModelError> { if g.get(&k(s)).is_some() { Ok(Some(g.get_f64(&k(s))?)) } else { Ok(None) } };
            let original = if g.get(&k("rope.scaling.original_context_length")).is_some() { g.get_usize(&k("rope.scaling.original_context_length"))? } else { ctx };
            RopeScaling::Yarn {
                factor: Some(factor(&k("rope.scaling.factor"))?),
                original_max_position_embeddings: original.max(1),
                attention_factor: None,
                beta_fast: opt("rope.scaling.yarn_beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0),
                beta_slow: opt("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                mscale: None,
                mscale_all_dim: None,
                truncate: true,
            }
        }
        other => {
            return Err(key_err(g, &k("rope.scaling.type"), format!("{other:?} is not supported (supported: none, linear, yarn)")));
        }
    })
}

/// Little-endian IEEE binary16 bytes → their u16 bits.
fn f16_bits(raw: &[u8]) -> Vec<u16> {
    raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

/// `general.architecture` of the Qwen2-MoE GGUF files llama.cpp writes.
const QWEN2MOE: &str = "qwen2moe";

/// The RoPE pair layout of the Q/K rows in `g`: llama's converter permutes them to adjacent
/// pairs (`LLAMA_ROPE_TYPE_NORM`); qwen2moe keeps HF's rows and llama.cpp ropes halves
/// (`LLAMA_ROPE_TYPE_NEOX`).
pub fn rope_layout(g: &Gguf) -> Result<RopeLayout, ModelError> {
    Ok(if g.get_str("general.architecture")? == QWEN2MOE { RopeLayout::Halves } else { RopeLayout::Adjacent })
}

/// The [`MoeConfig`] of a `qwen2moe` file (see the module docs for the keys, defaults and the
/// llama.cpp behaviour followed). Sparse layers are those with `blk.N.ffn_gate_inp.weight`, or
/// without the dense `blk.N.ffn_gate.weight`. The router's rows are checked against
/// `qwen2moe.expert_count` here so a wrong count names the key and the tensor.
fn qwen2moe_config(g: &Gguf, intermediate_size: usize, layers: usize, hidden: usize) -> Result<MoeConfig, ModelError> {
    let key = |s: &str| format!("{QWEN2MOE}.{s}");
    let positive = |k: &str| -> Result<usize, ModelError> {
        let v = g.get_usize(k)?;
        if v == 0 { Err(key_err(g, k, "must be at least 1")) } else { Ok(v) }
    };
    let optional = |k: &str, default: usize| -> Result<usize, ModelError> { if g.get(k).is_some() { positive(k) } else { Ok(default) } };
    // llama.cpp load_tensors: "n_expert must be > 0 for QWEN2MOE" (same for n_expert_used).
    let num_experts = positive(&key("expert_count"))?;
    let top_k = positive(&key("expert_used_count"))?;
    if top_k > num_experts {
        return Err(key_err(g, &key("expert_used_count"), format!("{top_k} is more than expert_count {num_experts}")));
    }
    let expert_i = optional(&key("expert_feed_forward_length"), intermediate_size / top_k)?;
    if expert_i == 0 {
        return Err(key_err(g, &key("expert_feed_forward_length"), format!("absent, and feed_forward_length {intermediate_size} / expert_used_count {top_k} is 0")));
    }
    let shared_i = optional(&key("expert_shared_feed_forward_length"), intermediate_size)?;
    let norm_topk_prob = if g.get(&key("expert_weights_norm")).is_some() { g.get_bool(&key("expert_weights_norm"))? } else { false };
    let sparse_layers: Vec<bool> = (0..layers)
        .map(|n| g.tensor(&format!("blk.{n}.ffn_gate_inp.weight")).is_some() || g.tensor(&format!("blk.{n}.ffn_gate.weight")).is_none())
        .collect();
    for (n, _) in sparse_layers.iter().enumerate().filter(|(_, s)| **s) {
        let name = format!("blk.{n}.ffn_gate_inp.weight");
        if let Some(t) = g.tensor(&name)
            && t.shape.len() == 2
            && t.shape[1] == hidden
            && t.shape[0] != num_experts
        {
            return Err(key_err(g, &key("expert_count"), format!("{num_experts}, but router {name} has {} rows (one per expert): fix the key or the file", t.shape[0])));
        }
    }
    Ok(MoeConfig {
        style: MoeStyle::Qwen2Moe,
        num_experts,
        top_k,
        expert_intermediate_size: expert_i,
        norm_topk_prob,
        shared_expert_intermediate_size: Some(shared_i),
        sparse_layers,
    })
}

/// Reads tensors of one GGUF file by name, checking shapes against the config.
struct GgufLoader<'a> {
    g: &'a Gguf,
    src: &'a mut dyn ByteSource,
    raw: Vec<u8>,
}

impl GgufLoader<'_> {
    fn info(&self, name: &str, shape: &[usize]) -> Result<GgufTensor, ModelError> {
        check_shape(self.g, name, shape)?;
        Ok(self.g.tensor(name).expect("checked").clone())
    }

    /// A 1-D (or any) tensor widened to f32.
    fn f32(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let info = self.info(name, shape)?;
        let mut out = Vec::new();
        read_tensor_f32(self.src, &info, &mut out)?;
        Ok(out)
    }

    /// `{prefix}.weight` (out, in): block-quantized types keep their blocks, F16 stays F16
    /// ([`WeightStorage::F16`](crate::models::WeightStorage::F16)), F32/BF16 are widened to f32
    /// (BF16 → F16 could overflow), others are an error naming the tensor and type.
    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear, ModelError> {
        let name = format!("{prefix}.weight");
        let info = self.info(&name, &[out, inp])?;
        let b = if bias { Some(self.f32(&format!("{prefix}.bias"), &[out])?) } else { None };
        match info.ggml_type.block_format() {
            Some(format) => {
                read_tensor_raw(self.src, &info, &mut self.raw)?;
                Linear::quantized(out, inp, format, std::mem::take(&mut self.raw), b).map_err(|m| tensor_err(self.g, &name, m))
            }
            None if info.ggml_type == GgmlType::F16 => {
                // (take the buffer: the largest tensor's bytes are not kept for the whole load)
                read_tensor_raw(self.src, &info, &mut self.raw)?;
                let bits = f16_bits(&std::mem::take(&mut self.raw));
                Linear::f16(out, inp, bits, b).map_err(|m| tensor_err(self.g, &name, m))
            }
            None => {
                let mut w = Vec::new();
                read_tensor_f32(self.src, &info, &mut w)?;
                Ok(Linear::f32(out, inp, w, b))
            }
        }
    }
}

impl GgufLoader<'_> {
    /// A stacked expert tensor `name` of shape (E, out, inp) as E layers: block-quantized types
    /// keep their blocks (expert e's rows are the e-th contiguous slice), others are widened to f32.
    fn experts(&mut self, name: &str, e: usize, out: usize, inp: usize) -> Result<Vec<Linear>, ModelError> {
        let info = self.info(name, &[e, out, inp])?;
        match info.ggml_type.block_format() {
            Some(format) => {
                read_tensor_raw(self.src, &info, &mut self.raw)?;
                let per = self.raw.len() / e;
                self.raw
                    .chunks_exact(per.max(1))
                    .map(|c| Linear::quantized(out, inp, format, c.to_vec(), None).map_err(|m| tensor_err(self.g, name, m)))
                    .collect()
            }
            None if info.ggml_type == GgmlType::F16 => {
                read_tensor_raw(self.src, &info, &mut self.raw)?;
                let bits = f16_bits(&std::mem::take(&mut self.raw));
                bits.chunks_exact((out * inp).max(1)).map(|c| Linear::f16(out, inp, c.to_vec(), None).map_err(|m| tensor_err(self.g, name, m))).collect()
            }
            None => {
                let mut w = Vec::new();
                read_tensor_f32(self.src, &info, &mut w)?;
                Ok(w.chunks_exact(out * inp).map(|c| Linear::f32(out, inp, c.to_vec(), None)).collect())
            }
        }
    }

    fn moe(&mut self, p: &str, m: &MoeConfig, h: usize) -> Result<MoeBlock, ModelError> {
        let (e, i) = (m.num_experts, m.expert_intermediate_size);
        let router = self.linear(&format!("{p}.ffn_gate_inp"), e, h, false)?;
        let gate = self.experts(&format!("{p}.ffn_gate_exps.weight"), e, i, h)?;
        let up = self.experts(&format!("{p}.ffn_up_exps.weight"), e, i, h)?;
        let down = self.experts(&format!("{p}.ffn_down_exps.weight"), e, h, i)?;
        let experts = gate.into_iter().zip(up).zip(down).map(|((gate_proj, up_proj), down_proj)| Mlp { gate_proj, up_proj, down_proj }).collect();
        let shared = match m.shared_expert_intermediate_size {
            Some(is) => Some(self.shared_expert(p, is, h)?),
            None => None,
        };
        Ok(MoeBlock { router, experts, shared })
    }

    /// Qwen2-MoE's shared expert of layer prefix `p` (`blk.N`): `ffn_{gate,up,down}_shexp` and the
    /// gate row `ffn_gate_inp_shexp`, which llama.cpp declares `{n_embd}` and the converter writes
    /// from HF's (1, H) `shared_expert_gate` (GGUF ne [H, 1]): either shape is read as (1, H).
    fn shared_expert(&mut self, p: &str, is: usize, h: usize) -> Result<SharedExpert, ModelError> {
        let mlp = Mlp {
            gate_proj: self.linear(&format!("{p}.ffn_gate_shexp"), is, h, false)?,
            up_proj: self.linear(&format!("{p}.ffn_up_shexp"), is, h, false)?,
            down_proj: self.linear(&format!("{p}.ffn_down_shexp"), h, is, false)?,
        };
        let name = format!("{p}.ffn_gate_inp_shexp");
        let shape = self.g.tensor(&format!("{name}.weight")).map(|t| t.shape.clone());
        let gate = if shape.as_deref() == Some(&[h][..]) {
            Linear::f32(1, h, self.f32(&format!("{name}.weight"), &[h])?, None)
        } else {
            self.linear(&name, 1, h, false)?
        };
        Ok(SharedExpert { mlp, gate })
    }
}

/// All weights named as llama.cpp's `LLM_ARCH_LLAMA`, shapes checked against `cfg`.
pub fn weights_from_gguf(g: &Gguf, src: &mut dyn ByteSource, cfg: &LlamaConfig) -> Result<LlamaWeights, ModelError> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q_out, kv_out) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
    let mut l = GgufLoader { g, src, raw: Vec::new() };
    let embed_tokens = l.linear("token_embd", v, h, false)?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for n in 0..cfg.num_hidden_layers {
        let p = format!("blk.{n}");
        let (moe, (gate_proj, up_proj, down_proj)) = match &cfg.moe {
            Some(m) if m.is_sparse(n) => (Some(l.moe(&p, m, h)?), empty_mlp(h)),
            _ => (
                None,
                (
                    l.linear(&format!("{p}.ffn_gate"), i, h, cfg.mlp_bias)?,
                    l.linear(&format!("{p}.ffn_up"), i, h, cfg.mlp_bias)?,
                    l.linear(&format!("{p}.ffn_down"), h, i, cfg.mlp_bias)?,
                ),
            ),
        };
        layers.push(LlamaLayer {
            input_layernorm: l.f32(&format!("{p}.attn_norm.weight"), &[h])?,
            q_proj: l.linear(&format!("{p}.attn_q"), q_out, h, cfg.qkv_bias)?,
            k_proj: l.linear(&format!("{p}.attn_k"), kv_out, h, cfg.qkv_bias)?,
            v_proj: l.linear(&format!("{p}.attn_v"), kv_out, h, cfg.qkv_bias)?,
            o_proj: l.linear(&format!("{p}.attn_output"), h, q_out, cfg.o_bias)?,
            post_attention_layernorm: l.f32(&format!("{p}.ffn_norm.weight"), &[h])?,
            gate_proj,
            up_proj,
            down_proj,
            moe,
        });
    }
    let norm = l.f32("output_norm.weight", &[h])?;
    let lm_head = if cfg.tie_word_embeddings { None } else { Some(l.linear("output", v, h, false)?) };
    Ok(LlamaWeights { embed_tokens, layers, norm, lm_head })
}

impl LlamaModel {
    /// Load a llama-architecture GGUF file: config from its metadata, weights with their GGUF
    /// block types, Q/K in GGUF's adjacent-pair RoPE layout.
    pub fn from_gguf(src: &mut dyn ByteSource) -> Result<LlamaModel, ModelError> {
        let g = Gguf::read(src)?;
        let config = config_from_gguf(&g)?;
        let weights = weights_from_gguf(&g, src, &config)?;
        Ok(LlamaModel::new(config, weights, rope_layout(&g)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::io::MemSource;
    use crate::models::KvCache;
    use crate::tensor::quant::{BlockFormat, quantize};

    /// A GGUF metadata value of the few types these tests write.
    enum V {
        U32(u32),
        F32(f32),
        Str(&'static str),
        Strs(Vec<String>),
    }

    /// A tensor to write: name, row-major shape, ggml type number, data bytes.
    struct T {
        name: String,
        shape: Vec<usize>,
        ty: u32,
        data: Vec<u8>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// GGUF v3 bytes (ggml `docs/gguf.md`), alignment 32.
    fn write_gguf(kv: &[(&str, V)], tensors: &[T]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            put_str(&mut out, k);
            match v {
                V::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                V::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                V::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                V::Strs(a) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    for s in a {
                        put_str(&mut out, s);
                    }
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes()); // ne: innermost first
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        let start = out.len();
        for (t, o) in tensors.iter().zip(offsets) {
            out.resize(start + o as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }

    const H: usize = 64;
    const I: usize = 96;
    const V_: usize = 10;
    const NH: usize = 4;
    const NKV: usize = 2;
    const HD: usize = H / NH;
    const LAYERS: usize = 2;

    /// Deterministic values in about [−0.5, 0.5].
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 1009) as f32 / 1009.0 - 0.5) * 0.8).collect()
    }

    fn tensor(name: &str, shape: &[usize], format: Option<BlockFormat>, seed: usize) -> T {
        let x = values(shape.iter().product(), seed);
        let (ty, data) = match format {
            None => (0, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Some(f) => {
                let mut b = Vec::new();
                quantize(f, &x, &mut b).unwrap();
                (
                    match f {
                        BlockFormat::Q4_0 => 2,
                        BlockFormat::Q4_1 => 3,
                        BlockFormat::Q8_0 => 8,
                    },
                    b,
                )
            }
        };
        T { name: name.to_string(), shape: shape.to_vec(), ty, data }
    }

    fn norm(name: &str) -> T {
        let x: Vec<f32> = (0..H).map(|i| 1.0 + (i % 5) as f32 * 0.05).collect();
        T { name: name.to_string(), shape: vec![H], ty: 0, data: x.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    fn metadata() -> Vec<(&'static str, V)> {
        vec![
            ("general.architecture", V::Str("llama")),
            ("llama.context_length", V::U32(256)),
            ("llama.embedding_length", V::U32(H as u32)),
            ("llama.block_count", V::U32(LAYERS as u32)),
            ("llama.feed_forward_length", V::U32(I as u32)),
            ("llama.attention.head_count", V::U32(NH as u32)),
            ("llama.attention.head_count_kv", V::U32(NKV as u32)),
            ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
            ("llama.rope.freq_base", V::F32(10000.0)),
            ("llama.rope.dimension_count", V::U32(HD as u32)),
            ("tokenizer.ggml.tokens", V::Strs((0..V_).map(|i| format!("t{i}")).collect())),
        ]
    }

    /// A tiny llama GGUF: Q8_0 embedding, Q4_1 / Q4_0 / Q8_0 projections, F32 norms, optionally an
    /// untied F32 head.
    fn tensors(untied: bool) -> Vec<T> {
        let mut t = vec![tensor("token_embd.weight", &[V_, H], Some(BlockFormat::Q8_0), 1)];
        for n in 0..LAYERS {
            let s = 10 * (n + 1);
            t.push(norm(&format!("blk.{n}.attn_norm.weight")));
            t.push(tensor(&format!("blk.{n}.attn_q.weight"), &[NH * HD, H], Some(BlockFormat::Q4_1), s));
            t.push(tensor(&format!("blk.{n}.attn_k.weight"), &[NKV * HD, H], Some(BlockFormat::Q4_1), s + 1));
            t.push(tensor(&format!("blk.{n}.attn_v.weight"), &[NKV * HD, H], Some(BlockFormat::Q4_0), s + 2));
            t.push(tensor(&format!("blk.{n}.attn_output.weight"), &[H, NH * HD], Some(BlockFormat::Q8_0), s + 3));
            t.push(norm(&format!("blk.{n}.ffn_norm.weight")));
            t.push(tensor(&format!("blk.{n}.ffn_gate.weight"), &[I, H], Some(BlockFormat::Q4_1), s + 4));
            t.push(tensor(&format!("blk.{n}.ffn_up.weight"), &[I, H], Some(BlockFormat::Q4_1), s + 5));
            t.push(tensor(&format!("blk.{n}.ffn_down.weight"), &[H, I], Some(BlockFormat::Q4_0), s + 6));
        }
        t.push(norm("output_norm.weight"));
        if untied {
            t.push(tensor("output.weight", &[V_, H], None, 99));
        }
        t
    }

    fn load(kv: &[(&str, V)], t: &[T]) -> Result<LlamaModel, ModelError> {
        let mut src = MemSource { name: "tiny.gguf".into(), bytes: write_gguf(kv, t) };
        LlamaModel::from_gguf(&mut src)
    }

    /// The same model with every weight dequantized to f32.
    fn dequantized(m: &LlamaModel) -> LlamaModel {
        let f = |l: &Linear| Linear::f32(l.out_features, l.in_features, l.to_f32(), l.bias.clone());
        let w = &m.weights;
        let weights = LlamaWeights {
            embed_tokens: f(&w.embed_tokens),
            layers: w
                .layers
                .iter()
                .map(|l| LlamaLayer {
                    input_layernorm: l.input_layernorm.clone(),
                    q_proj: f(&l.q_proj),
                    k_proj: f(&l.k_proj),
                    v_proj: f(&l.v_proj),
                    o_proj: f(&l.o_proj),
                    post_attention_layernorm: l.post_attention_layernorm.clone(),
                    gate_proj: f(&l.gate_proj),
                    up_proj: f(&l.up_proj),
                    down_proj: f(&l.down_proj),
                    moe: None,
                })
                .collect(),
            norm: w.norm.clone(),
            lm_head: w.lm_head.as_ref().map(f),
        };
        LlamaModel::new(m.config.clone(), weights, m.rope_layout)
    }

    #[test]
    fn tiny_llama_config_weights_and_forward() {
        for untied in [false, true] {
            let m = load(&metadata(), &tensors(untied)).unwrap();
            let c = &m.config;
            assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size), (H, I, LAYERS, V_));
            assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.max_position_embeddings), (NH, NKV, HD, 256));
            assert_eq!(c.rope, RopeConfig { theta: 10000.0, dim: HD, max_position_embeddings: 256, scaling: RopeScaling::Default });
            assert_eq!((c.tie_word_embeddings, m.weights.lm_head.is_some()), (!untied, untied));
            assert_eq!(m.rope_layout, RopeLayout::Adjacent);
            assert!(matches!(m.weights.layers[1].v_proj.weight, crate::models::WeightStorage::Blocks { format: BlockFormat::Q4_0, .. }));

            // The quantized model runs like its dequantized f32 twin (prefill 3, decode 2).
            let r = dequantized(&m);
            let (mut cq, mut cf) = (KvCache::new(c), KvCache::new(c));
            for toks in [&[1u32, 7, 3][..], &[9], &[0]] {
                let (a, b) = (m.forward(toks, &mut cq).unwrap(), r.forward(toks, &mut cf).unwrap());
                assert_eq!(a.len(), toks.len() * V_);
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn errors_name_the_key_or_tensor() {
        let msg = |kv: Vec<(&'static str, V)>, t: Vec<T>| load(&kv, &t).unwrap_err().to_string();

        let kv: Vec<_> = metadata().into_iter().filter(|(k, _)| *k != "llama.embedding_length").collect();
        let e = msg(kv, tensors(false));
        assert!(e.contains("tiny.gguf") && e.contains("llama.embedding_length") && e.contains("missing"), "{e}");

        let mut kv = metadata();
        kv[0].1 = V::Str("gpt2");
        let e = msg(kv, tensors(false));
        assert!(e.contains("general.architecture") && e.contains("gpt2"), "{e}");

        let mut kv = metadata();
        kv.push(("llama.rope.scaling.type", V::Str("longrope")));
        let e = msg(kv, tensors(false));
        assert!(e.contains("llama.rope.scaling.type") && e.contains("longrope"), "{e}");

        let mut kv = metadata();
        kv[6].1 = V::U32(3); // head_count_kv 3 does not divide 4
        assert!(msg(kv, tensors(false)).contains("llama.attention.head_count_kv"));

        let mut kv = metadata();
        kv.pop();
        kv.push(("tokenizer.ggml.tokens", V::Strs(vec!["a".into(); 3])));
        assert!(msg(kv, tensors(false)).contains("tokenizer.ggml.tokens"));

        let t: Vec<T> = tensors(false).into_iter().filter(|t| t.name != "blk.1.ffn_up.weight").collect();
        let e = msg(metadata(), t);
        assert!(e.contains("blk.1.ffn_up.weight") && e.contains("missing"), "{e}");

        // (out, in) stored the wrong way round: ne = [out, in] instead of [in, out].
        let mut t = tensors(false);
        let q = t.iter_mut().find(|t| t.name == "blk.0.attn_k.weight").unwrap();
        q.shape = vec![H, NKV * HD];
        let e = msg(metadata(), t);
        assert!(e.contains("blk.0.attn_k.weight") && e.contains("[32, 64]") && e.contains("[64, 32]"), "{e}");

        // Unsupported ggml type (Q5_0 = 6, 32-element blocks of 22 bytes) on a projection.
        let mut t = tensors(false);
        let g = t.iter_mut().find(|t| t.name == "blk.0.ffn_gate.weight").unwrap();
        (g.ty, g.data) = (6, vec![0; I * H / 32 * 22]);
        let e = msg(metadata(), t);
        assert!(e.contains("blk.0.ffn_gate.weight") && e.contains("Q5_0") && e.contains("not supported"), "{e}");
    }
}
