//! Hugging Face `config.json` of a Llama-family model (Llama, SmolLM2, Mistral, Qwen2) parsed into
//! a typed [`LlamaConfig`].
//!
//! Reference: transformers 5.23 `models/llama/configuration_llama.py`,
//! `models/mistral/configuration_mistral.py`, `models/qwen2/configuration_qwen2.py` (fields and
//! defaults) and `modeling_rope_utils.py` (`RotaryEmbeddingConfigMixin.standardize_rope_params`:
//! RoPE parameters come either from transformers ≥5's `rope_parameters` dict, which holds
//! `rope_theta`, or from the older top-level `rope_theta` plus a `rope_scaling` dict whose method is
//! named by `rope_type` or the legacy `type`; `original_max_position_embeddings` defaults to
//! `max_position_embeddings` for llama3 and yarn).
//!
//! Mixture-of-experts configs (transformers 5.23 `models/mixtral/configuration_mixtral.py`:
//! `num_local_experts`, `num_experts_per_tok`, `sliding_window` on every layer;
//! `models/qwen2_moe/configuration_qwen2_moe.py`: `num_experts`, `num_experts_per_tok`,
//! `moe_intermediate_size`, `shared_expert_intermediate_size`, `norm_topk_prob`,
//! `decoder_sparse_step`, `mlp_only_layers`, `qkv_bias`) become a Mistral / Qwen2 family config
//! with [`LlamaConfig::moe`] set.
//!
//! Every error names the field (dotted path for nested fields).

use serde_json::{Map, Value};

use crate::posenc::rope::{RopeConfig, RopeScaling};

/// A `config.json` field that is missing, of the wrong type, or out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config.json: field {field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `rope_scaling.factor`.
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.to_string(), message: message.into() }
}

/// Which architecture the config describes (it decides biases and defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

/// The shape and hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// GQA: each group of num_attention_heads / num_key_value_heads query heads shares a K/V head.
    pub num_key_value_heads: usize,
    /// `head_dim`, or hidden_size / num_attention_heads when absent or null.
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q_proj, k_proj, v_proj carry a bias (Llama `attention_bias`; always for Qwen2).
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama `attention_bias`).
    pub o_bias: bool,
    /// gate/up/down_proj carry a bias (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer, the sliding-window size when that layer attends to a window only: a query at
    /// position p sees keys j with p − w < j ≤ p (transformers `sliding_window_overlay`).
    /// Mistral: `sliding_window` on every layer. Qwen2 with `use_sliding_window`: the layers that
    /// `layer_types` marks `sliding_attention` (absent: layers ≥ `max_window_layers`, default 28).
    pub layer_windows: Vec<Option<usize>>,
    pub rope: RopeConfig,
    /// Sparse mixture-of-experts MLPs (Mixtral, Qwen2-MoE); `None` for dense models.
    pub moe: Option<MoeConfig>,
}

/// How a router's top-k choices become combine weights (see /work/shared/references.md §4.2).
/// Expert selection is the same for all (softmax is monotone); only the weights differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeStyle {
    /// Mixtral (HF `MixtralTopKRouter`, mistral-inference `moe.py`): softmax over the top-k
    /// logits, i.e. softmax over all experts renormalised over the chosen ones.
    Mixtral,
    /// Qwen2-MoE (HF `Qwen2MoeTopKRouter` + `Qwen2MoeSparseMoeBlock`): softmax over all experts,
    /// top-k, renormalised only if `norm_topk_prob`; plus a shared expert scaled by
    /// sigmoid(shared_expert_gate·x).
    Qwen2Moe,
}

/// The sparse MLP of a mixture-of-experts model.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub style: MoeStyle,
    /// Routed experts per MoE layer (`num_local_experts` / `num_experts`).
    pub num_experts: usize,
    /// Experts chosen per token (`num_experts_per_tok`).
    pub top_k: usize,
    /// Hidden size of each routed expert's SwiGLU (Mixtral: `intermediate_size`; Qwen2-MoE:
    /// `moe_intermediate_size`).
    pub expert_intermediate_size: usize,
    /// Divide the top-k probabilities by their sum (always for Mixtral).
    pub norm_topk_prob: bool,
    /// Qwen2-MoE's shared expert: its SwiGLU hidden size (`shared_expert_intermediate_size`).
    pub shared_expert_intermediate_size: Option<usize>,
    /// Per layer: true when the layer's MLP is the sparse block; false for a dense MLP of
    /// `intermediate_size` (Qwen2-MoE `mlp_only_layers` and `decoder_sparse_step`).
    pub sparse_layers: Vec<bool>,
}

impl MoeConfig {
    /// Whether layer `i` routes through experts.
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.sparse_layers.get(layer).copied().unwrap_or(false)
    }
}

fn get<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}

fn req_usize(obj: &Map<String, Value>, prefix: &str, field: &str) -> Result<usize, ConfigError> {
    let path = format!("{prefix}{field}");
    match get(obj, field) {
        None => Err(err(&path, "missing")),
        Some(v) => as_usize(v, &path),
    }
}

fn opt_usize(obj: &Map<String, Value>, prefix: &str, field: &str) -> Result<Option<usize>, ConfigError> {
    get(obj, field).map(|v| as_usize(v, &format!("{prefix}{field}"))).transpose()
}

fn as_usize(v: &Value, path: &str) -> Result<usize, ConfigError> {
    if let Some(u) = v.as_u64() {
        return usize::try_from(u).map_err(|_| err(path, format!("{u} is too large")));
    }
    // 2048.0 is accepted as 2048 (some configs write integers as floats)
    if let Some(f) = v.as_f64()
        && f >= 0.0
        && f.fract() == 0.0
        && f < 1e15
    {
        return Ok(f as usize);
    }
    Err(err(path, format!("expected a non-negative integer, found {v}")))
}

fn opt_f64(obj: &Map<String, Value>, prefix: &str, field: &str) -> Result<Option<f64>, ConfigError> {
    get(obj, field)
        .map(|v| v.as_f64().filter(|f| f.is_finite()).ok_or_else(|| err(&format!("{prefix}{field}"), format!("expected a number, found {v}"))))
        .transpose()
}

fn req_f64(obj: &Map<String, Value>, prefix: &str, field: &str) -> Result<f64, ConfigError> {
    opt_f64(obj, prefix, field)?.ok_or_else(|| err(&format!("{prefix}{field}"), "missing"))
}

fn opt_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, ConfigError> {
    get(obj, field).map(|v| v.as_bool().ok_or_else(|| err(field, format!("expected true or false, found {v}")))).transpose()
}

fn positive(v: usize, field: &str) -> Result<usize, ConfigError> {
    if v == 0 { Err(err(field, "must be at least 1")) } else { Ok(v) }
}

impl LlamaConfig {
    /// Parse `config.json` text.
    pub fn from_json_str(text: &str) -> Result<LlamaConfig, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| err("(root)", format!("not valid JSON ({e})")))?;
        Self::from_json(&v)
    }

    /// Parse a parsed `config.json` (as [`Checkpoint::config`](crate::formats::checkpoint::Checkpoint::config) gives it).
    pub fn from_json(v: &Value) -> Result<LlamaConfig, ConfigError> {
        let obj = v.as_object().ok_or_else(|| err("(root)", "expected a JSON object"))?;
        let model_type = match get(obj, "model_type") {
            None => None,
            Some(t) => Some(t.as_str().ok_or_else(|| err("model_type", format!("expected a string, found {t}")))?),
        };
        let family = match model_type {
            // SmolLM2 and TinyLlama are `llama`; a config without model_type is read as Llama.
            Some("llama") | None => Family::Llama,
            Some("mistral") => Family::Mistral,
            Some("qwen2") => Family::Qwen2,
            // Mixture-of-experts variants: the same attention, a sparse MLP (`moe` below).
            Some("mixtral") => Family::Mistral,
            Some("qwen2_moe") => Family::Qwen2,
            Some(other) => {
                return Err(err("model_type", format!("{other:?} is not a Llama-family model (supported: llama, mistral, qwen2, mixtral, qwen2_moe)")));
            }
        };
        let moe_style = match model_type {
            Some("mixtral") => Some(MoeStyle::Mixtral),
            Some("qwen2_moe") => Some(MoeStyle::Qwen2Moe),
            _ => None,
        };

        let hidden_size = positive(req_usize(obj, "", "hidden_size")?, "hidden_size")?;
        let intermediate_size = positive(req_usize(obj, "", "intermediate_size")?, "intermediate_size")?;
        let num_hidden_layers = req_usize(obj, "", "num_hidden_layers")?;
        let num_attention_heads = positive(req_usize(obj, "", "num_attention_heads")?, "num_attention_heads")?;
        let vocab_size = positive(req_usize(obj, "", "vocab_size")?, "vocab_size")?;
        let num_key_value_heads = positive(opt_usize(obj, "", "num_key_value_heads")?.unwrap_or(num_attention_heads), "num_key_value_heads")?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(err("num_key_value_heads", format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}")));
        }
        let head_dim = match opt_usize(obj, "", "head_dim")? {
            Some(d) => positive(d, "head_dim")?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(err("head_dim", format!("absent, and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")));
                }
                hidden_size / num_attention_heads
            }
        };
        let rms_norm_eps = opt_f64(obj, "", "rms_norm_eps")?.unwrap_or(1e-6);
        if rms_norm_eps < 0.0 {
            return Err(err("rms_norm_eps", format!("must not be negative, found {rms_norm_eps}")));
        }
        let max_position_embeddings = match opt_usize(obj, "", "max_position_embeddings")? {
            Some(m) => positive(m, "max_position_embeddings")?,
            None => match family {
                Family::Llama => 2048,
                Family::Mistral => 4096 * 32,
                Family::Qwen2 => 32768,
            },
        };
        if let Some(act) = get(obj, "hidden_act") {
            let act = act.as_str().ok_or_else(|| err("hidden_act", format!("expected a string, found {act}")))?;
            if act != "silu" && act != "swish" {
                return Err(err("hidden_act", format!("{act:?} is not supported (only silu, the SwiGLU of Llama-family models)")));
            }
        }
        let tie_word_embeddings = opt_bool(obj, "tie_word_embeddings")?.unwrap_or(false);
        let attention_bias = opt_bool(obj, "attention_bias")?.unwrap_or(false);
        let mlp_bias = opt_bool(obj, "mlp_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Llama => (attention_bias, attention_bias),
            Family::Mistral => (false, false),
            // Qwen2-MoE makes it a field (`qkv_bias`, default true); Qwen2 always has it.
            Family::Qwen2 if moe_style.is_some() => (opt_bool(obj, "qkv_bias")?.unwrap_or(true), false),
            Family::Qwen2 => (true, false),
        };
        let layer_windows = match family {
            Family::Llama => vec![None; num_hidden_layers],
            Family::Mistral => {
                let w = opt_usize(obj, "", "sliding_window")?.map(|w| positive(w, "sliding_window")).transpose()?;
                vec![w; num_hidden_layers]
            }
            Family::Qwen2 => {
                let window = if opt_bool(obj, "use_sliding_window")?.unwrap_or(false) {
                    opt_usize(obj, "", "sliding_window")?.map(|w| positive(w, "sliding_window")).transpose()?
                } else {
                    None
                };
                match window {
                    None => vec![None; num_hidden_layers],
                    Some(w) => match get(obj, "layer_types") {
                        Some(types) => {
                            let types = types.as_array().ok_or_else(|| err("layer_types", format!("expected a list, found {types}")))?;
                            if types.len() != num_hidden_layers {
                                return Err(err("layer_types", format!("has {} entries for {num_hidden_layers} layers", types.len())));
                            }
                            types
                                .iter()
                                .enumerate()
                                .map(|(i, t)| match t.as_str() {
                                    Some("sliding_attention") => Ok(Some(w)),
                                    Some("full_attention") => Ok(None),
                                    _ => Err(err(&format!("layer_types[{i}]"), format!("expected \"full_attention\" or \"sliding_attention\", found {t}"))),
                                })
                                .collect::<Result<Vec<_>, _>>()?
                        }
                        None if moe_style.is_some() => {
                            // Qwen2MoeConfig.__post_init__: odd-numbered (1-based) layers below
                            // max_window_layers slide.
                            let below = opt_usize(obj, "", "max_window_layers")?.unwrap_or(28);
                            (0..num_hidden_layers).map(|i| if (i + 1) % 2 == 1 && i < below { Some(w) } else { None }).collect()
                        }
                        None => {
                            let first = opt_usize(obj, "", "max_window_layers")?.unwrap_or(28);
                            (0..num_hidden_layers).map(|i| if i >= first { Some(w) } else { None }).collect()
                        }
                    },
                }
            }
        };

        let rope = parse_rope(obj, head_dim, max_position_embeddings)?;
        let moe = match moe_style {
            None => None,
            Some(style) => Some(parse_moe(obj, style, intermediate_size, num_hidden_layers)?),
        };

        Ok(LlamaConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: rms_norm_eps as f32,
            max_position_embeddings,
            tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: mlp_bias && family == Family::Llama,
            layer_windows,
            rope,
            moe,
        })
    }
}

/// The MoE fields of a Mixtral or Qwen2-MoE `config.json`.
fn parse_moe(obj: &Map<String, Value>, style: MoeStyle, intermediate_size: usize, layers: usize) -> Result<MoeConfig, ConfigError> {
    let experts_field = match style {
        MoeStyle::Mixtral => "num_local_experts",
        MoeStyle::Qwen2Moe => "num_experts",
    };
    // transformers' defaults: Mixtral 8 experts, 2 per token; Qwen2-MoE 60 experts, 4 per token.
    let (default_experts, default_k) = match style {
        MoeStyle::Mixtral => (8, 2),
        MoeStyle::Qwen2Moe => (60, 4),
    };
    let num_experts = positive(opt_usize(obj, "", experts_field)?.unwrap_or(default_experts), experts_field)?;
    let top_k = positive(opt_usize(obj, "", "num_experts_per_tok")?.unwrap_or(default_k), "num_experts_per_tok")?;
    if top_k > num_experts {
        return Err(err("num_experts_per_tok", format!("{top_k} is more than the {num_experts} experts ({experts_field})")));
    }
    Ok(match style {
        MoeStyle::Mixtral => MoeConfig {
            style,
            num_experts,
            top_k,
            expert_intermediate_size: intermediate_size,
            norm_topk_prob: true,
            shared_expert_intermediate_size: None,
            sparse_layers: vec![true; layers],
        },
        MoeStyle::Qwen2Moe => {
            let expert_i = positive(opt_usize(obj, "", "moe_intermediate_size")?.unwrap_or(1408), "moe_intermediate_size")?;
            let shared = positive(opt_usize(obj, "", "shared_expert_intermediate_size")?.unwrap_or(5632), "shared_expert_intermediate_size")?;
            let step = positive(opt_usize(obj, "", "decoder_sparse_step")?.unwrap_or(1), "decoder_sparse_step")?;
            let mut mlp_only = Vec::new();
            if let Some(list) = get(obj, "mlp_only_layers") {
                let list = list.as_array().ok_or_else(|| err("mlp_only_layers", format!("expected a list of layer indices, found {list}")))?;
                for (i, v) in list.iter().enumerate() {
                    mlp_only.push(as_usize(v, &format!("mlp_only_layers[{i}]"))?);
                }
            }
            // Qwen2MoeDecoderLayer: sparse unless listed in mlp_only_layers, and only every
            // decoder_sparse_step-th layer (1-based).
            let sparse_layers = (0..layers).map(|i| !mlp_only.contains(&i) && (i + 1) % step == 0).collect();
            MoeConfig {
                style,
                num_experts,
                top_k,
                expert_intermediate_size: expert_i,
                norm_topk_prob: opt_bool(obj, "norm_topk_prob")?.unwrap_or(false),
                shared_expert_intermediate_size: Some(shared),
                sparse_layers,
            }
        }
    })
}

/// RoPE parameters from `rope_parameters` (transformers ≥5) or `rope_theta` + `rope_scaling`.
fn parse_rope(obj: &Map<String, Value>, head_dim: usize, max_position_embeddings: usize) -> Result<RopeConfig, ConfigError> {
    let empty = Map::new();
    // transformers' `convert_rope_params_to_dict`: `rope_scaling or rope_parameters`, i.e. a
    // non-empty `rope_scaling` object wins over `rope_parameters`.
    let scaling = match get(obj, "rope_scaling") {
        None => None,
        Some(p) => Some(p.as_object().ok_or_else(|| err("rope_scaling", format!("expected an object or null, found {p}")))?).filter(|m| !m.is_empty()),
    };
    let (params, prefix) = match (scaling, get(obj, "rope_parameters")) {
        (Some(p), _) => (p, "rope_scaling."),
        (None, Some(p)) => (p.as_object().ok_or_else(|| err("rope_parameters", format!("expected an object, found {p}")))?, "rope_parameters."),
        (None, None) => (&empty, "rope_scaling."),
    };
    let theta = match opt_f64(params, prefix, "rope_theta")? {
        Some(t) => t,
        None => opt_f64(obj, "", "rope_theta")?.unwrap_or(10000.0),
    };
    if theta <= 1.0 {
        return Err(err(if params.contains_key("rope_theta") { "rope_parameters.rope_theta" } else { "rope_theta" }, format!("must be greater than 1, found {theta}")));
    }
    let partial = match opt_f64(params, prefix, "partial_rotary_factor")? {
        Some(p) => p,
        None => opt_f64(obj, "", "partial_rotary_factor")?.unwrap_or(1.0),
    };
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(err("partial_rotary_factor", format!("must be in (0, 1], found {partial}")));
    }
    let dim = (head_dim as f64 * partial) as usize; // int(head_dim * partial_rotary_factor)
    if dim < 4 || !dim.is_multiple_of(2) {
        return Err(err("head_dim", format!("rotary dimension {dim} must be even and at least 4")));
    }

    let type_field = if params.contains_key("rope_type") { "rope_type" } else { "type" };
    let rope_type = match get(params, type_field) {
        None => "default",
        Some(t) => t.as_str().ok_or_else(|| err(&format!("{prefix}{type_field}"), format!("expected a string, found {t}")))?,
    };
    // original_max_position_embeddings: the dict's, else a top-level field, else
    // max_position_embeddings. (transformers 5.23 `standardize_rope_params` would let a top-level
    // field win, but for Llama/Mistral/Qwen2 configs it runs before extra config.json keys become
    // attributes, so the dict's value is the one used; checked against LlamaConfig(...).)
    let original = |params: &Map<String, Value>| -> Result<usize, ConfigError> {
        let (o, field) = match opt_usize(params, prefix, "original_max_position_embeddings")? {
            Some(o) => (o, format!("{prefix}original_max_position_embeddings")),
            None => (
                opt_usize(obj, "", "original_max_position_embeddings")?.unwrap_or(max_position_embeddings),
                "original_max_position_embeddings".to_string(),
            ),
        };
        positive(o, &field)
    };
    let factor_at_least_1 = |params: &Map<String, Value>| -> Result<f64, ConfigError> {
        let f = req_f64(params, prefix, "factor")?;
        if f < 1.0 {
            return Err(err(&format!("{prefix}factor"), format!("must be at least 1, found {f}")));
        }
        Ok(f)
    };
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: factor_at_least_1(params)? },
        "dynamic" => RopeScaling::Dynamic { factor: factor_at_least_1(params)? },
        "yarn" => {
            let truncate = match get(params, "truncate") {
                None => true,
                Some(t) => t.as_bool().ok_or_else(|| err(&format!("{prefix}truncate"), format!("expected true or false, found {t}")))?,
            };
            let factor = opt_f64(params, prefix, "factor")?;
            if let Some(f) = factor
                && f < 1.0
            {
                return Err(err(&format!("{prefix}factor"), format!("must be at least 1, found {f}")));
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original(params)?,
                attention_factor: opt_f64(params, prefix, "attention_factor")?,
                beta_fast: opt_f64(params, prefix, "beta_fast")?.unwrap_or(32.0),
                beta_slow: opt_f64(params, prefix, "beta_slow")?.unwrap_or(1.0),
                mscale: opt_f64(params, prefix, "mscale")?,
                mscale_all_dim: opt_f64(params, prefix, "mscale_all_dim")?,
                truncate,
            }
        }
        "llama3" => {
            let low = req_f64(params, prefix, "low_freq_factor")?;
            let high = req_f64(params, prefix, "high_freq_factor")?;
            if high <= low {
                return Err(err(&format!("{prefix}high_freq_factor"), format!("must be greater than low_freq_factor ({high} ≤ {low})")));
            }
            RopeScaling::Llama3 { factor: factor_at_least_1(params)?, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: original(params)? }
        }
        other => return Err(err(&format!("{prefix}{type_field}"), format!("{other:?} is not supported (supported: default, linear, dynamic, yarn, llama3)"))),
    };
    Ok(RopeConfig { theta, dim, max_position_embeddings, scaling })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"hidden_act":"silu",
      "hidden_size":576,"intermediate_size":1536,"max_position_embeddings":8192,"model_type":"llama",
      "num_attention_heads":9,"num_hidden_layers":30,"num_key_value_heads":3,"rms_norm_eps":1e-05,
      "rope_scaling":null,"rope_theta":100000,"tie_word_embeddings":true,"vocab_size":49152}"#;

    #[test]
    fn smollm2_v4_style() {
        let c = LlamaConfig::from_json_str(SMOLLM2).unwrap();
        assert_eq!((c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim), (576, 9, 3, 64));
        assert!(c.tie_word_embeddings && !c.qkv_bias);
        assert_eq!(c.rope, RopeConfig { theta: 100000.0, dim: 64, max_position_embeddings: 8192, scaling: RopeScaling::Default });
    }

    #[test]
    fn llama3_legacy_type_key_and_v5_rope_parameters_agree() {
        let old = r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,
          "max_position_embeddings":131072,"rope_theta":500000.0,
          "rope_scaling":{"type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let new = r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,
          "max_position_embeddings":131072,
          "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let (a, b) = (LlamaConfig::from_json_str(old).unwrap(), LlamaConfig::from_json_str(new).unwrap());
        assert_eq!(a.rope, b.rope);
        assert_eq!(a.rope.scaling, RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 });
    }

    #[test]
    fn rope_scaling_wins_over_rope_parameters_as_in_transformers() {
        let c = LlamaConfig::from_json_str(r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10,
          "max_position_embeddings":4096,"original_max_position_embeddings":1024,"rope_theta":50000.0,
          "rope_parameters":{"rope_type":"default","rope_theta":10000.0},
          "rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":2048}}"#)
            .unwrap();
        assert_eq!(c.rope.theta, 50000.0);
        match c.rope.scaling {
            RopeScaling::Yarn { factor, original_max_position_embeddings, truncate, .. } => {
                // transformers 5.23 LlamaConfig(...) gives {'rope_type': 'yarn', 'factor': 4.0,
                // 'original_max_position_embeddings': 2048, 'rope_theta': 50000.0}
                assert_eq!((factor, original_max_position_embeddings, truncate), (Some(4.0), 2048, true));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qwen2_has_qkv_bias_and_no_window_by_default() {
        let c = LlamaConfig::from_json_str(r#"{"model_type":"qwen2","hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,
          "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":10,"sliding_window":4096,"use_sliding_window":false}"#)
            .unwrap();
        assert!(c.qkv_bias && !c.o_bias && c.layer_windows == vec![None]);
        assert_eq!(c.max_position_embeddings, 32768);
    }

    #[test]
    fn moe_fields_defaults_and_errors() {
        let base = |extra: &str| format!(r#"{{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":4,"num_attention_heads":4,"vocab_size":10{extra}}}"#);
        // Mixtral: transformers' defaults (8 experts, top-2), the MLP size is the experts'
        let c = LlamaConfig::from_json_str(&base(r#","model_type":"mixtral","sliding_window":4096"#)).unwrap();
        let m = c.moe.unwrap();
        assert_eq!((m.style, m.num_experts, m.top_k, m.expert_intermediate_size, m.norm_topk_prob), (MoeStyle::Mixtral, 8, 2, 128, true));
        assert_eq!((c.family, c.layer_windows[3]), (Family::Mistral, Some(4096)));
        // Qwen2-MoE: every 2nd layer sparse, minus mlp_only_layers; qkv_bias is a field
        let c = LlamaConfig::from_json_str(&base(
            r#","model_type":"qwen2_moe","num_experts":6,"num_experts_per_tok":2,"moe_intermediate_size":32,"shared_expert_intermediate_size":96,"decoder_sparse_step":2,"mlp_only_layers":[3],"qkv_bias":false"#,
        ))
        .unwrap();
        let m = c.moe.unwrap();
        assert_eq!(m.sparse_layers, vec![false, true, false, false]);
        assert_eq!((m.shared_expert_intermediate_size, m.norm_topk_prob, c.qkv_bias), (Some(96), false, false));
        for (extra, field) in [
            (r#","model_type":"mixtral","num_local_experts":2,"num_experts_per_tok":3"#, "num_experts_per_tok"),
            (r#","model_type":"qwen2_moe","num_experts":0"#, "num_experts"),
            (r#","model_type":"qwen2_moe","mlp_only_layers":[1,"x"]"#, "mlp_only_layers[1]"),
            (r#","model_type":"qwen2_moe","decoder_sparse_step":0"#, "decoder_sparse_step"),
        ] {
            let e = LlamaConfig::from_json_str(&base(extra)).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let base = |extra: &str| format!(r#"{{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10{extra}}}"#);
        let cases = [
            (r#"{"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":10}"#.to_string(), "hidden_size"),
            (base(r#","num_key_value_heads":3"#), "num_key_value_heads"),
            (base(r#","rope_scaling":{"rope_type":"linear"}"#), "rope_scaling.factor"),
            (base(r#","rope_scaling":{"rope_type":"longrope","factor":2}"#), "rope_scaling.rope_type"),
            (base(r#","rope_parameters":{"rope_type":"llama3","factor":8,"high_freq_factor":4}"#), "rope_parameters.low_freq_factor"),
            (base(r#","model_type":"gpt2""#), "model_type"),
            (base(r#","hidden_act":"gelu""#), "hidden_act"),
            (base(r#","head_dim":"x""#), "head_dim"),
            (base(r#","tie_word_embeddings":1"#), "tie_word_embeddings"),
        ];
        for (json, field) in cases {
            let e = LlamaConfig::from_json_str(&json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.to_string().contains(field));
        }
    }
}
