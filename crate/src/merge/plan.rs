//! The merge plan: one entry per output tensor, in mergekit's order, with its inputs, layer
//! position `t`, resolved parameters, dtypes and shape. Pure bookkeeping; no tensor data.
//!
//! Reference: mergekit 0.1.5 `mergekit/plan.py` (`MergePlanner`: normalize_config, plan_module,
//! plan_slice, plan_layer, plan_tensor), `mergekit/parameter_resolver.py`, `mergekit/config.py`
//! (`ConfigReader.parameter_sources`), `mergekit/io/tasks.py` (`LoadTensor`: tied names),
//! `mergekit/architecture/auto.py` (inferred architectures) and the architecture definitions
//! `_data/architectures/{llama,mistral,qwen2,qwen3}.json`. Semantics: `shared/merge-methods.md`
//! §1.1 (parameters, `t`), §1.2 (tensor enumeration, tied `lm_head`), §1.3 (dtypes).
//!
//! Order of the output tensors: pre-weights (`model.embed_tokens.weight`), then every output layer
//! with the architecture's per-layer list, then post-weights (`model.norm.weight`, `lm_head.weight`).
//! `t` is `i/(n−1)` for layer `i` of an output slice of `n` layers (1 when `n == 1`) and restarts in
//! every slice; pre- and post-weights have `t = 0` and take their models and parameters from the
//! first and the last slice respectively.

use std::collections::HashMap;

use crate::merge::methods::{BaseUse, Method, ParamDefault, ParamKind, ParamSpec};
use crate::merge::recipe::{Layout, Parameters, Recipe, Value};
use crate::merge::{MergeError, Params, Scalar};
use crate::tensor::{DType, numel};

/// Dtype and shape of one tensor of one input checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// What the planner needs to know about one input model: its tensor list and its config.json.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    /// The model reference as written in the recipe.
    pub name: String,
    /// config.json, when the checkpoint has one.
    pub config: Option<serde_json::Value>,
    order: Vec<String>,
    tensors: HashMap<String, TensorMeta>,
}

impl ModelSummary {
    /// `tensors` in file order.
    pub fn new(name: impl Into<String>, config: Option<serde_json::Value>, tensors: impl IntoIterator<Item = (String, TensorMeta)>) -> Self {
        let mut order = Vec::new();
        let mut map = HashMap::new();
        for (n, m) in tensors {
            order.push(n.clone());
            map.insert(n, m);
        }
        ModelSummary { name: name.into(), config, order, tensors: map }
    }
    pub fn get(&self, tensor: &str) -> Option<&TensorMeta> {
        self.tensors.get(tensor)
    }
    pub fn has(&self, tensor: &str) -> bool {
        self.tensors.contains_key(tensor)
    }
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }
    fn architecture_name(&self) -> Option<&str> {
        self.config.as_ref()?.get("architectures")?.as_array()?.first()?.as_str()
    }
}

/// The tensor layout family the plan uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (also SmolLM, which uses Llama naming).
    Llama,
    Mistral,
    /// Qwen2: Llama naming plus q/k/v biases.
    Qwen2,
    /// Qwen3: Llama naming plus q/k norms.
    Qwen3,
    /// No known architecture: every tensor present in every input, layers found by `.N.` in names.
    Generic,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Generic => "generic (inferred from tensor names)",
        }
    }

    fn from_hf(arch: &str) -> Option<Architecture> {
        match arch {
            "LlamaForCausalLM" | "LLaMaForCausalLM" => Some(Architecture::Llama),
            "MistralForCausalLM" => Some(Architecture::Mistral),
            "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
            "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
            _ => None,
        }
    }

    /// Per-layer tensor suffixes (after `model.layers.{i}.`), in the order of the mergekit JSON.
    fn layer_suffixes(self) -> &'static [&'static str] {
        const LLAMA: &[&str] = &[
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "post_attention_layernorm.weight",
            "mlp.up_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.down_proj.weight",
        ];
        // qwen2.json lists its weights sorted by name.
        const QWEN2: &[&str] = &[
            "input_layernorm.weight",
            "mlp.down_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "post_attention_layernorm.weight",
            "self_attn.k_proj.bias",
            "self_attn.k_proj.weight",
            "self_attn.o_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.q_proj.weight",
            "self_attn.v_proj.bias",
            "self_attn.v_proj.weight",
        ];
        const QWEN3: &[&str] = &[
            "input_layernorm.weight",
            "mlp.down_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "post_attention_layernorm.weight",
            "self_attn.k_norm.weight",
            "self_attn.k_proj.weight",
            "self_attn.q_norm.weight",
            "self_attn.q_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
        ];
        match self {
            Architecture::Llama | Architecture::Mistral => LLAMA,
            Architecture::Qwen2 => QWEN2,
            Architecture::Qwen3 => QWEN3,
            Architecture::Generic => &[],
        }
    }
}

/// One input of one planned tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedInput {
    /// The model reference as written in the recipe.
    pub model: String,
    /// The tensor to read from that model (the source layer's name in a frankenmerge; the tied
    /// `model.embed_tokens.weight` for a missing `lm_head.weight`).
    pub tensor: String,
    /// The dtype stored in the file.
    pub file_dtype: DType,
    /// Per-model parameters resolved for this tensor (looked up with this model's tensor name).
    pub params: Params,
}

/// One output tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    /// Output tensor name.
    pub name: String,
    pub method: Method,
    /// Inputs in the slice's source order (models form: recipe order, then an unlisted base).
    pub inputs: Vec<PlannedInput>,
    /// Index into `inputs` of the base model, if it is one of the inputs.
    pub base: Option<usize>,
    /// Layer position in [0, 1] used for gradients (0 for pre/post weights).
    pub t: f64,
    /// Global parameters resolved for this tensor (looked up with the output name).
    pub global: Params,
    /// The dtype every input is loaded as (recipe `dtype`, else the promoted file dtypes).
    pub load_dtype: DType,
    /// The dtype written (recipe `out_dtype`, else `load_dtype`).
    pub out_dtype: DType,
    /// Shared by every input.
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn out_bytes(&self) -> u64 {
        (self.numel() * self.out_dtype.size()) as u64
    }
}

/// The whole merge, ready to execute.
#[derive(Clone, Debug)]
pub struct Plan {
    pub method: Method,
    pub architecture: Architecture,
    pub tensors: Vec<PlannedTensor>,
    /// Layers of the output model.
    pub num_hidden_layers: usize,
    /// Whether the output config's layer count must be rewritten (the `slices:` form).
    pub layers_changed: bool,
    /// The model whose config.json the output starts from (base model, else the first input).
    pub config_donor: String,
}

impl Plan {
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(PlannedTensor::out_bytes).sum()
    }
    pub fn total_params(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }
    /// The largest output tensor, in elements (memory bound of a streamed merge).
    pub fn largest_tensor(&self) -> usize {
        self.tensors.iter().map(PlannedTensor::numel).max().unwrap_or(0)
    }
}

/// Why a plan could not be made. Messages name the tensor, the model and the parameter.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error("tensor {tensor} is required but not present in model {model}")]
    MissingTensor { tensor: String, model: String },
    #[error("model {0} was not loaded (internal error: every referenced model must be summarized)")]
    ModelNotLoaded(String),
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    #[error("{0}")]
    Layout(String),
}

/// One output slice after normalization (mergekit `OutputSliceDefinition`).
struct SliceRef<'r> {
    sources: Vec<SourceRef<'r>>,
    base_model: Option<&'r str>,
    parameters: Option<&'r Parameters>,
}

struct SourceRef<'r> {
    model: &'r str,
    start: usize,
    end: usize,
    parameters: Option<&'r Parameters>,
}

/// The setting scopes for one lookup, highest precedence first (mergekit
/// `ConfigReader.parameter_sources`): the slice's sources for `model`, the slice, the top level.
fn scopes<'r>(recipe: &'r Recipe, slice: &SliceRef<'r>, model: Option<&str>) -> Vec<&'r Parameters> {
    let mut out = Vec::new();
    if let Some(m) = model {
        for s in &slice.sources {
            if s.model == m
                && let Some(p) = s.parameters
            {
                out.push(p);
            }
        }
    }
    if let Some(p) = slice.parameters {
        out.push(p);
    }
    out.push(&recipe.parameters);
    out
}

/// pydantic's lax validation of one raw value to the parameter's type.
fn validate(kind: ParamKind, v: &Value) -> Result<Value, String> {
    match kind {
        ParamKind::Float => match v {
            Value::Number(x) => Ok(Value::Number(*x)),
            Value::Bool(b) => Ok(Value::Number(if *b { 1.0 } else { 0.0 })),
            Value::Str(s) => s.trim().parse::<f64>().map(Value::Number).map_err(|_| format!("{s:?} is not a number")),
        },
        ParamKind::Int => {
            let x = match v {
                Value::Number(x) => *x,
                Value::Bool(b) => f64::from(u8::from(*b)),
                Value::Str(s) => s.trim().parse::<f64>().map_err(|_| format!("{s:?} is not an integer"))?,
            };
            if x.fract() != 0.0 || !x.is_finite() {
                return Err(format!("{x} is not an integer (a gradient of integers must land on integers)"));
            }
            Ok(Value::Number(x))
        }
        ParamKind::Bool => match v {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::Number(x) if *x == 0.0 => Ok(Value::Bool(false)),
            Value::Number(x) if *x == 1.0 => Ok(Value::Bool(true)),
            Value::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "on" | "t" | "true" | "y" | "yes" => Ok(Value::Bool(true)),
                "0" | "off" | "f" | "false" | "n" | "no" => Ok(Value::Bool(false)),
                _ => Err(format!("{s:?} is not a boolean")),
            },
            Value::Number(x) => Err(format!("{x} is not a boolean (use true/false)")),
        },
    }
}

fn to_scalar(v: Value) -> Scalar {
    match v {
        Value::Number(x) => Scalar::Float(x),
        Value::Bool(b) => Scalar::Bool(b),
        Value::Str(s) => Scalar::Str(s),
    }
}

/// mergekit `resolve_parameter`: the first scope with a non-None value wins, else the default;
/// a required parameter without a value is an error naming the tensor (and model).
fn resolve(spec: &ParamSpec, scopes: &[&Parameters], tensor: &str, t: f64, model: Option<&str>, out_tensor: &str) -> Result<Option<Scalar>, MergeError> {
    let check = |v: &Value| validate(spec.kind, v);
    for scope in scopes {
        if let Some(setting) = scope.get(spec.name) {
            let v = setting.evaluate(tensor, t, &check).map_err(|message| MergeError::BadParameter {
                tensor: tensor.to_string(),
                param: spec.name.to_string(),
                message: match model {
                    Some(m) => format!("for model {m}: {message}"),
                    None => message,
                },
            })?;
            if let Some(v) = v {
                return Ok(Some(to_scalar(v)));
            }
        }
    }
    if spec.required {
        return Err(MergeError::MissingParameter { tensor: out_tensor.to_string(), param: spec.name.to_string(), model: model.map(str::to_string) });
    }
    Ok(match spec.default {
        ParamDefault::None => None,
        ParamDefault::Float(x) => Some(Scalar::Float(x)),
        ParamDefault::Bool(b) => Some(Scalar::Bool(b)),
    })
}

/// Per-model parameters that mergekit binds for every input, the base model included
/// (`ParameterScope.INPUT`); all other per-model parameters are `NON_BASE`.
fn input_scoped(method: Method, param: &str) -> bool {
    matches!((method, param), (Method::Linear, "weight") | (Method::Passthrough, "scale"))
}

/// A weight of the architecture: output name, per-input name template, tied fallback.
struct Weight {
    name: String,
    optional: bool,
    tied: Option<&'static str>,
}

/// Find `.N.` (a layer index between dots) in a tensor name, as mergekit's `RE_LAYER_INDEX`.
/// Returns (byte start of the `.`, byte end after the closing `.`, N).
fn layer_index(name: &str) -> Option<(usize, usize, usize)> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j > i + 1 && j < b.len() && b[j] == b'.' {
                let n = name[i + 1..j].parse().ok()?;
                return Some((i, j + 1, n));
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    None
}

/// The generic layout: non-layer tensors are pre-weights; layer tensors become templates
/// `prefix.{i}.suffix`. Names in the first model's file order.
struct GenericLayout {
    pre: Vec<String>,
    /// (prefix up to the layer index, suffix after it)
    templates: Vec<(String, String)>,
    num_layers: usize,
}

fn generic_layout(models: &[&ModelSummary]) -> Result<GenericLayout, PlanError> {
    let mut pre = Vec::new();
    let mut templates: Vec<(String, String)> = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut num_layers = 0;
    for m in models {
        for name in m.tensor_names() {
            match layer_index(name) {
                Some((s, e, n)) => {
                    let prefix = name[..s].to_string();
                    let suffix = name[e..].to_string();
                    if !prefixes.contains(&prefix) {
                        prefixes.push(prefix.clone());
                    }
                    num_layers = num_layers.max(n + 1);
                    if !templates.iter().any(|(p, s)| *p == prefix && *s == suffix) {
                        templates.push((prefix, suffix));
                    }
                }
                None => {
                    if !pre.iter().any(|p: &String| p == name) {
                        pre.push(name.to_string());
                    }
                }
            }
        }
    }
    if prefixes.len() > 1 {
        return Err(PlanError::Layout(format!(
            "these checkpoints have several layer stacks ({}); only single-stack models can be merged without a known architecture",
            prefixes.join(", ")
        )));
    }
    Ok(GenericLayout { pre, templates, num_layers })
}

fn layer_name(prefix: &str, i: usize, suffix: &str) -> String {
    format!("{prefix}.{i}.{suffix}")
}

/// Plan a merge. `models` must summarize every model in `recipe.referenced_models()`.
pub fn build_plan(recipe: &Recipe, models: &[ModelSummary]) -> Result<Plan, PlanError> {
    let method = recipe.merge_method;
    let info = method.info();
    let find = |name: &str| models.iter().find(|m| m.name == name).ok_or_else(|| PlanError::ModelNotLoaded(name.to_string()));
    let referenced = recipe.referenced_models();
    let refd: Vec<&ModelSummary> = referenced.iter().map(|n| find(n)).collect::<Result<_, _>>()?;

    // Architecture: every referenced model must agree (mergekit refuses to mix without
    // --allow-crimes); any model without a known architecture makes the plan generic.
    let archs: Vec<Option<Architecture>> = refd.iter().map(|m| m.architecture_name().and_then(Architecture::from_hf)).collect();
    let architecture = if archs.iter().all(Option::is_some) {
        let first = archs[0].expect("checked");
        if let Some((i, a)) = archs.iter().enumerate().find(|(_, a)| **a != Some(first)) {
            return Err(PlanError::Layout(format!(
                "models {} ({}) and {} ({}) have different architectures; mixing architectures is not supported",
                refd[0].name,
                first.name(),
                refd[i].name,
                a.map(Architecture::name).unwrap_or("?")
            )));
        }
        first
    } else {
        Architecture::Generic
    };
    let generic = if architecture == Architecture::Generic { Some(generic_layout(&refd)?) } else { None };

    let num_layers_of = |m: &ModelSummary| -> Result<usize, PlanError> {
        if let Some(g) = &generic {
            return Ok(g.num_layers);
        }
        m.config
            .as_ref()
            .and_then(|c| c.get("num_hidden_layers"))
            .and_then(|v| v.as_u64())
            .map(|n| n as usize)
            .ok_or_else(|| PlanError::Model { model: m.name.clone(), message: "config.json has no integer num_hidden_layers".into() })
    };

    // Normalize to output slices (mergekit `normalize_config`).
    let slices: Vec<SliceRef> = match &recipe.layout {
        Layout::Models(ms) => {
            let mut sources = Vec::new();
            for m in ms {
                let n = num_layers_of(find(&m.model)?)?;
                sources.push(SourceRef { model: &m.model, start: 0, end: n, parameters: Some(&m.parameters) });
            }
            if let Some(b) = &recipe.base_model
                && !ms.iter().any(|m| &m.model == b)
            {
                let n = num_layers_of(find(b)?)?;
                sources.push(SourceRef { model: b, start: 0, end: n, parameters: None });
            }
            vec![SliceRef { sources, base_model: None, parameters: None }]
        }
        Layout::Slices(ss) => ss
            .iter()
            .map(|s| SliceRef {
                sources: s.sources.iter().map(|src| SourceRef { model: &src.model, start: src.layer_range[0], end: src.layer_range[1], parameters: Some(&src.parameters) }).collect(),
                base_model: s.base_model.as_deref(),
                parameters: Some(&s.parameters),
            })
            .collect(),
    };

    // Structural checks per slice (mergekit `InputContract.validate_ids`).
    for (k, s) in slices.iter().enumerate() {
        let label = if matches!(recipe.layout, Layout::Slices(_)) { format!("slices[{k}]") } else { "models".to_string() };
        for (i, a) in s.sources.iter().enumerate() {
            if s.sources[..i].iter().any(|b| b.model == a.model) {
                return Err(PlanError::Layout(format!("{label}: model {} is listed twice (duplicate merge inputs)", a.model)));
            }
        }
        let n = s.sources[0].end - s.sources[0].start;
        if let Some(src) = s.sources.iter().find(|src| src.end - src.start != n) {
            return Err(PlanError::Layout(format!("{label}: all sources must contain the same number of layers ({} has {n}, {} has {})", s.sources[0].model, src.model, src.end - src.start)));
        }
        let base = s.base_model.or(recipe.base_model.as_deref());
        if info.base != BaseUse::Ignored {
            let has_base = base.is_some_and(|b| s.sources.iter().any(|src| src.model == b));
            if let Some(b) = base
                && !has_base
            {
                return Err(PlanError::Layout(format!("{label}: base model {b} is not one of the merge inputs; add it as a source")));
            }
            if info.base == BaseUse::Required && !has_base {
                return Err(PlanError::Layout(format!("{label}: merge method {} requires a base_model", method.name())));
            }
        }
        for src in &s.sources {
            let m = find(src.model)?;
            let available = num_layers_of(m)?;
            if src.end > available {
                return Err(PlanError::Layout(format!("{label}: layer_range [{}, {}] of {} is out of range (it has {available} layers)", src.start, src.end, src.model)));
            }
        }
    }

    let mut planner = Planner { recipe, method, params: info.params, models, tensors: Vec::new() };
    let llama_like = architecture != Architecture::Generic;

    // Pre-weights: models and parameters of the first slice, t = 0.
    let pre: Vec<Weight> = match &generic {
        Some(g) => g.pre.iter().map(|n| Weight { name: n.clone(), optional: false, tied: None }).collect(),
        None => vec![Weight { name: "model.embed_tokens.weight".into(), optional: false, tied: None }],
    };
    for w in &pre {
        let n_in = slices[0].sources.len();
        let inputs: Vec<(&str, String)> = slices[0].sources.iter().take(n_in).map(|s| (s.model, w.name.clone())).collect();
        planner.plan_tensor(w, &inputs, &slices[0], 0.0, !llama_like)?;
    }

    // Layers.
    let mut out_layer = 0usize;
    for s in &slices {
        let n = s.sources[0].end - s.sources[0].start;
        for idx in 0..n {
            let t = if n > 1 { idx as f64 / (n - 1) as f64 } else { 1.0 };
            let per_layer: Vec<(String, String)> = match &generic {
                Some(g) => g.templates.iter().map(|(p, x)| (p.clone(), x.clone())).collect(),
                None => architecture.layer_suffixes().iter().map(|x| ("model.layers".to_string(), x.to_string())).collect(),
            };
            for (prefix, suffix) in &per_layer {
                let w = Weight { name: layer_name(prefix, out_layer, suffix), optional: false, tied: None };
                let inputs: Vec<(&str, String)> = s.sources.iter().map(|src| (src.model, layer_name(prefix, src.start + idx, suffix))).collect();
                planner.plan_tensor(&w, &inputs, s, t, !llama_like)?;
            }
            out_layer += 1;
        }
    }

    // Post-weights: models and parameters of the last slice, t = 0. mergekit zips the last
    // slice's models with a list as long as the FIRST slice's sources, so only that many of the
    // last slice's models take part (this matters only when the two lengths differ).
    if llama_like {
        let last = slices.last().expect("at least one slice");
        let n_in = slices[0].sources.len().min(last.sources.len());
        for w in [
            Weight { name: "model.norm.weight".into(), optional: false, tied: None },
            Weight { name: "lm_head.weight".into(), optional: true, tied: Some("model.embed_tokens.weight") },
        ] {
            let inputs: Vec<(&str, String)> = last.sources.iter().take(n_in).map(|s| (s.model, w.name.clone())).collect();
            planner.plan_tensor(&w, &inputs, last, 0.0, false)?;
        }
    }

    let layers_changed = matches!(recipe.layout, Layout::Slices(_));
    let config_donor = recipe.base_model.clone().unwrap_or_else(|| referenced[0].clone());
    Ok(Plan { method, architecture, tensors: planner.tensors, num_hidden_layers: out_layer, layers_changed, config_donor })
}

struct Planner<'a> {
    recipe: &'a Recipe,
    method: Method,
    params: &'static [ParamSpec],
    models: &'a [ModelSummary],
    tensors: Vec<PlannedTensor>,
}

impl Planner<'_> {
    /// mergekit `plan_tensor` for one output weight. `inputs` are (model, input tensor name).
    /// `skip_if_missing`: the generic layout keeps only tensors every input has.
    fn plan_tensor(&mut self, w: &Weight, inputs: &[(&str, String)], slice: &SliceRef, t: f64, skip_if_missing: bool) -> Result<(), PlanError> {
        let model = |name: &str| self.models.iter().find(|m| m.name == name).ok_or_else(|| PlanError::ModelNotLoaded(name.to_string()));
        if w.optional || skip_if_missing {
            let present: Vec<bool> = inputs.iter().map(|(m, n)| model(m).map(|m| m.has(n))).collect::<Result<_, _>>()?;
            if w.optional && !present.iter().any(|p| *p) {
                return Ok(()); // mergekit: "Skipping optional weight"
            }
            if skip_if_missing && !present.iter().all(|p| *p) {
                return Ok(());
            }
        }

        // Resolve which tensor each model supplies (the tied name when the weight is missing).
        let mut resolved: Vec<(&ModelSummary, String, &TensorMeta)> = Vec::with_capacity(inputs.len());
        for (m, n) in inputs {
            let ms = model(m)?;
            let (name, meta) = match ms.get(n) {
                Some(meta) => (n.clone(), meta),
                None => match w.tied.and_then(|tn| ms.get(tn).map(|meta| (tn.to_string(), meta))) {
                    Some(found) => found,
                    None => return Err(PlanError::MissingTensor { tensor: n.clone(), model: ms.name.clone() }),
                },
            };
            resolved.push((ms, name, meta));
        }

        // Shapes must agree (mergekit 0.1.5 has no silent truncation).
        let (first_model, first_name, first_meta) = &resolved[0];
        for (ms, name, meta) in &resolved[1..] {
            if meta.shape != first_meta.shape {
                let tensor = if *name == *first_name { w.name.clone() } else { format!("{} ({first_name} / {name})", w.name) };
                return Err(MergeError::ShapeMismatch { tensor, model_a: first_model.name.clone(), shape_a: first_meta.shape.clone(), model_b: ms.name.clone(), shape_b: meta.shape.clone() }.into());
            }
        }

        let base_name = slice.base_model.or(self.recipe.base_model.as_deref());
        let base = base_name.and_then(|b| inputs.iter().position(|(m, _)| *m == b));

        // Parameters: global ones looked up with the output name, per-model ones with each model's
        // input name (mergekit passes the architecture's input name, not the tied fallback).
        let global_scopes = scopes(self.recipe, slice, None);
        let mut global = Params::new();
        for spec in self.params.iter().filter(|p| !p.per_model) {
            if let Some(v) = resolve(spec, &global_scopes, &w.name, t, None, &w.name)? {
                global.insert(spec.name.to_string(), v);
            }
        }
        let mut planned_inputs = Vec::with_capacity(inputs.len());
        for (i, ((m, in_name), (ms, name, meta))) in inputs.iter().zip(&resolved).enumerate() {
            let is_base = base == Some(i);
            let model_scopes = scopes(self.recipe, slice, Some(m));
            let mut params = Params::new();
            for spec in self.params.iter().filter(|p| p.per_model) {
                if is_base && !input_scoped(self.method, spec.name) {
                    continue; // NON_BASE parameters are never resolved for the base model
                }
                if let Some(v) = resolve(spec, &model_scopes, in_name, t, Some(m), &w.name)? {
                    params.insert(spec.name.to_string(), v);
                }
            }
            planned_inputs.push(PlannedInput { model: ms.name.clone(), tensor: name.clone(), file_dtype: meta.dtype, params });
        }

        let load_dtype = match self.recipe.dtype {
            Some(d) => d,
            None => planned_inputs.iter().map(|p| p.file_dtype).reduce(DType::promote).expect("at least one input"),
        };
        let out_dtype = self.recipe.out_dtype.unwrap_or(load_dtype);
        self.tensors.push(PlannedTensor {
            name: w.name.clone(),
            method: self.method,
            inputs: planned_inputs,
            base,
            t,
            global,
            load_dtype,
            out_dtype,
            shape: first_meta.shape.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const H: usize = 4;
    const V: usize = 10;
    const I: usize = 6;

    /// A tiny Llama checkpoint summary with `layers` layers.
    fn llama(name: &str, layers: usize, tied: bool, dtype: DType) -> ModelSummary {
        let mut t = vec![("model.embed_tokens.weight".to_string(), TensorMeta { dtype, shape: vec![V, H] })];
        for i in 0..layers {
            for (s, shape) in [
                ("input_layernorm.weight", vec![H]),
                ("self_attn.q_proj.weight", vec![H, H]),
                ("self_attn.k_proj.weight", vec![H, H]),
                ("self_attn.v_proj.weight", vec![H, H]),
                ("self_attn.o_proj.weight", vec![H, H]),
                ("post_attention_layernorm.weight", vec![H]),
                ("mlp.gate_proj.weight", vec![I, H]),
                ("mlp.up_proj.weight", vec![I, H]),
                ("mlp.down_proj.weight", vec![H, I]),
            ] {
                t.push((format!("model.layers.{i}.{s}"), TensorMeta { dtype, shape }));
            }
        }
        t.push(("model.norm.weight".to_string(), TensorMeta { dtype, shape: vec![H] }));
        if !tied {
            t.push(("lm_head.weight".to_string(), TensorMeta { dtype, shape: vec![V, H] }));
        }
        let cfg = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers, "hidden_size": H});
        ModelSummary::new(name, Some(cfg), t)
    }

    fn plan(yaml: &str, models: &[ModelSummary]) -> Result<Plan, PlanError> {
        build_plan(&Recipe::from_yaml(yaml).unwrap(), models)
    }

    fn get<'p>(p: &'p Plan, name: &str) -> &'p PlannedTensor {
        p.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no {name}"))
    }

    fn f(s: Option<&Scalar>) -> f64 {
        match s {
            Some(Scalar::Float(x)) => *x,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn llama_order_and_t_and_tied_head() {
        let p = plan(
            "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters: {t: [0, 0.5, 0.3, 0.7, 1]}\n",
            &[llama("a", 4, true, DType::F32), llama("b", 4, true, DType::F32)],
        )
        .unwrap();
        assert_eq!(p.architecture, Architecture::Llama);
        assert_eq!(p.num_hidden_layers, 4);
        // 1 pre + 4 layers × 9 + norm; lm_head absent from every input → skipped.
        assert_eq!(p.tensors.len(), 1 + 36 + 1);
        assert_eq!(p.tensors[0].name, "model.embed_tokens.weight");
        assert_eq!(p.tensors[1].name, "model.layers.0.input_layernorm.weight");
        assert_eq!(p.tensors[2].name, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(p.tensors[7].name, "model.layers.0.mlp.up_proj.weight");
        assert_eq!(p.tensors[9].name, "model.layers.0.mlp.down_proj.weight");
        assert_eq!(p.tensors.last().unwrap().name, "model.norm.weight");
        // slerp_gradient4: 0, 0.4333, 0.5667, 1; pre/post t = 0 → first element.
        let want = [0.0, 0.433_333_333_333_333_3, 0.566_666_666_666_666_7, 1.0];
        for (i, w) in want.iter().enumerate() {
            let t = get(&p, &format!("model.layers.{i}.mlp.down_proj.weight"));
            assert!((f(t.global.get("t")) - w).abs() < 1e-12, "layer {i}: {:?}", t.global);
            assert!((t.t - i as f64 / 3.0).abs() < 1e-15);
        }
        assert_eq!(f(get(&p, "model.embed_tokens.weight").global.get("t")), 0.0);
        assert_eq!(f(get(&p, "model.norm.weight").global.get("t")), 0.0);
        assert_eq!(get(&p, "model.norm.weight").base, Some(0));
    }

    #[test]
    fn two_layer_gradient_gives_end_points() {
        let p = plan(
            "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters: {t: [0, 0.5, 0.3, 0.7, 1]}\n",
            &[llama("a", 2, true, DType::F32), llama("b", 2, true, DType::F32)],
        )
        .unwrap();
        assert_eq!(f(get(&p, "model.layers.0.self_attn.q_proj.weight").global.get("t")), 0.0);
        assert_eq!(f(get(&p, "model.layers.1.self_attn.q_proj.weight").global.get("t")), 1.0);
    }

    #[test]
    fn per_model_weight_gradient_and_base_appended() {
        // linear_gradient4: weights [0, 1, 0.25] over 4 layers → 0, 0.6667, 0.75, 0.25.
        let p = plan(
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: [0, 1, 0.25]}\n  - model: b\n    parameters: {weight: 1.0}\n",
            &[llama("a", 4, false, DType::F32), llama("b", 4, false, DType::F32)],
        )
        .unwrap();
        let want = [0.0, 2.0 / 3.0, 0.75, 0.25];
        for (i, w) in want.iter().enumerate() {
            let t = get(&p, &format!("model.layers.{i}.self_attn.o_proj.weight"));
            assert!((f(t.inputs[0].params.get("weight")) - w).abs() < 1e-12);
            assert_eq!(f(t.inputs[1].params.get("weight")), 1.0);
            // normalize defaults to true for linear
            assert_eq!(t.global.get("normalize"), Some(&Scalar::Bool(true)));
        }
        // untied heads present in both → planned last
        assert_eq!(p.tensors.last().unwrap().name, "lm_head.weight");

        // A base_model that is not listed is appended after the listed models.
        let p = plan(
            "merge_method: task_arithmetic\nbase_model: c\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.25}\n",
            &[llama("a", 2, true, DType::F32), llama("b", 2, true, DType::F32), llama("c", 2, true, DType::F32)],
        )
        .unwrap();
        let t = get(&p, "model.layers.1.mlp.up_proj.weight");
        assert_eq!(t.inputs.iter().map(|i| i.model.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(t.base, Some(2));
        // NON_BASE parameters are not resolved for the base model.
        assert!(!t.inputs[2].params.contains_key("weight"));
        assert_eq!(f(t.inputs[1].params.get("weight")), 0.25);
    }

    #[test]
    fn filters_and_precedence() {
        let p = plan(
            "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight:\n        - filter: self_attn\n          value: 0.9\n  - model: b\nparameters:\n  weight: 0.1\n  normalize: false\n",
            &[llama("a", 1, true, DType::F32), llama("b", 1, true, DType::F32)],
        )
        .unwrap();
        let attn = get(&p, "model.layers.0.self_attn.v_proj.weight");
        assert_eq!(f(attn.inputs[0].params.get("weight")), 0.9);
        assert_eq!(f(attn.inputs[1].params.get("weight")), 0.1);
        // a's filter does not match an MLP weight → falls through to the global 0.1
        let mlp = get(&p, "model.layers.0.mlp.gate_proj.weight");
        assert_eq!(f(mlp.inputs[0].params.get("weight")), 0.1);
        assert_eq!(mlp.global.get("normalize"), Some(&Scalar::Bool(false)));
        // single layer: t = 1
        assert_eq!(mlp.t, 1.0);
    }

    #[test]
    fn passthrough_slices_map_layers_and_take_pre_post_from_first_last() {
        let p = plan(
            "merge_method: passthrough\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n  - sources:\n      - model: b\n        layer_range: [1, 2]\n        parameters:\n          scale:\n            - {filter: o_proj, value: 0.5}\n            - {filter: down_proj, value: 0.5}\n            - value: 1.0\n",
            &[llama("a", 2, false, DType::F32), llama("b", 2, false, DType::F32)],
        )
        .unwrap();
        assert_eq!(p.num_hidden_layers, 3);
        assert!(p.layers_changed);
        assert_eq!(p.tensors.len(), 1 + 27 + 2);
        let l2 = get(&p, "model.layers.2.self_attn.o_proj.weight");
        assert_eq!(l2.inputs[0].model, "b");
        assert_eq!(l2.inputs[0].tensor, "model.layers.1.self_attn.o_proj.weight");
        assert_eq!(f(l2.inputs[0].params.get("scale")), 0.5);
        assert_eq!(f(get(&p, "model.layers.2.mlp.up_proj.weight").inputs[0].params.get("scale")), 1.0);
        // the second slice has one layer: t = 1; the first slice restarts at 0
        assert_eq!(l2.t, 1.0);
        assert_eq!(get(&p, "model.layers.0.mlp.up_proj.weight").t, 0.0);
        assert_eq!(get(&p, "model.layers.1.mlp.up_proj.weight").inputs[0].model, "a");
        assert_eq!(get(&p, "model.embed_tokens.weight").inputs[0].model, "a");
        assert_eq!(get(&p, "model.norm.weight").inputs[0].model, "b");
        assert_eq!(get(&p, "lm_head.weight").inputs[0].model, "b");
        // passthrough scale is optional: no default value when unset
        assert!(!get(&p, "model.layers.0.mlp.up_proj.weight").inputs[0].params.contains_key("scale"));
    }

    #[test]
    fn post_weights_take_as_many_last_slice_models_as_the_first_slice_has() {
        // mergekit zips the last slice's models with a list as long as the first slice's sources
        // (checked byte for byte against mergekit-yaml 0.1.5 on the golden fixture models).
        let p = plan(
            "merge_method: linear\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 2], parameters: {weight: 1}}\n  - sources:\n      - {model: b, layer_range: [2, 4], parameters: {weight: 0.3}}\n      - {model: c, layer_range: [1, 3], parameters: {weight: [0.7, 0.1]}}\n",
            &[llama("a", 4, false, DType::F32), llama("b", 4, false, DType::F32), llama("c", 4, false, DType::F32)],
        )
        .unwrap();
        assert_eq!(p.num_hidden_layers, 4);
        let models = |n: &str| get(&p, n).inputs.iter().map(|i| i.model.clone()).collect::<Vec<_>>();
        assert_eq!(models("model.embed_tokens.weight"), ["a"]);
        assert_eq!(models("model.norm.weight"), ["b"]);
        assert_eq!(models("lm_head.weight"), ["b"]);
        let l3 = get(&p, "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(l3.inputs.iter().map(|i| i.tensor.as_str()).collect::<Vec<_>>(), ["model.layers.3.self_attn.q_proj.weight", "model.layers.2.self_attn.q_proj.weight"]);
        assert_eq!(f(l3.inputs[1].params.get("weight")), 0.1);
        assert_eq!(f(get(&p, "model.layers.2.mlp.up_proj.weight").inputs[1].params.get("weight")), 0.7);
    }

    #[test]
    fn lm_head_falls_back_to_tied_embedding_when_some_inputs_lack_it() {
        let p = plan(
            "merge_method: linear\nmodels:\n  - {model: a, parameters: {weight: 1}}\n  - {model: b, parameters: {weight: 1}}\n",
            &[llama("a", 1, false, DType::F32), llama("b", 1, true, DType::F32)],
        )
        .unwrap();
        let head = get(&p, "lm_head.weight");
        assert_eq!(head.inputs[0].tensor, "lm_head.weight");
        assert_eq!(head.inputs[1].tensor, "model.embed_tokens.weight");
    }

    #[test]
    fn dtypes_cast_on_load_and_out_dtype() {
        let models = [llama("a", 1, true, DType::BF16), llama("b", 1, true, DType::F32)];
        let p = plan("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n", &models).unwrap();
        assert_eq!(p.tensors[0].load_dtype, DType::F32); // promoted
        assert_eq!(p.tensors[0].out_dtype, DType::F32);
        let p = plan("merge_method: linear\ndtype: bfloat16\nout_dtype: float16\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n", &models).unwrap();
        assert_eq!(p.tensors[0].load_dtype, DType::BF16);
        assert_eq!(p.tensors[0].out_dtype, DType::F16);
        assert_eq!(p.tensors[0].inputs[1].file_dtype, DType::F32);
        assert_eq!(p.total_bytes(), p.total_params() * 2);
    }

    #[test]
    fn errors_name_the_tensor_model_and_parameter() {
        // Shape mismatch names the tensor and both shapes and models.
        let mut b = llama("b", 1, true, DType::F32);
        b.tensors.get_mut("model.layers.0.mlp.up_proj.weight").unwrap().shape = vec![7, H];
        let e = plan("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n", &[llama("a", 1, true, DType::F32), b]).unwrap_err().to_string();
        assert!(e.contains("model.layers.0.mlp.up_proj.weight") && e.contains("[6, 4]") && e.contains("[7, 4]") && e.contains(" a") && e.contains(" b"), "{e}");

        // Missing tensor names the model.
        let mut b = llama("b", 1, true, DType::F32);
        b.tensors.remove("model.layers.0.self_attn.k_proj.weight");
        let e = plan("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n", &[llama("a", 1, true, DType::F32), b]).unwrap_err().to_string();
        assert_eq!(e, "tensor model.layers.0.self_attn.k_proj.weight is required but not present in model b");

        // Missing required parameter names the parameter, tensor and model.
        let e = plan("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: b}]\n", &[llama("a", 1, true, DType::F32), llama("b", 1, true, DType::F32)]).unwrap_err().to_string();
        assert!(e.contains("\"weight\"") && e.contains("model.embed_tokens.weight") && e.contains("model b"), "{e}");

        // slerp needs a base model and t.
        let e = plan("merge_method: slerp\nmodels: [{model: a}, {model: b}]\nparameters: {t: 0.5}\n", &[llama("a", 1, true, DType::F32), llama("b", 1, true, DType::F32)]).unwrap_err().to_string();
        assert!(e.contains("requires a base_model"), "{e}");
        let e = plan("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\n", &[llama("a", 1, true, DType::F32), llama("b", 1, true, DType::F32)]).unwrap_err().to_string();
        assert!(e.contains("\"t\""), "{e}");

        // A bad value names the parameter.
        let e = plan("merge_method: linear\nmodels: [{model: a, parameters: {weight: heavy}}]\n", &[llama("a", 1, true, DType::F32)]).unwrap_err().to_string();
        assert!(e.contains("weight") && e.contains("heavy"), "{e}");

        // Layer range past the end.
        let e = plan("merge_method: passthrough\nslices:\n  - sources: [{model: a, layer_range: [0, 3]}]\n", &[llama("a", 2, true, DType::F32)]).unwrap_err().to_string();
        assert!(e.contains("out of range") && e.contains("a"), "{e}");
    }

    #[test]
    fn generic_fallback_uses_tensors_present_everywhere() {
        let mk = |name: &str, extra: bool| {
            let mut t = vec![("wte".to_string(), TensorMeta { dtype: DType::F32, shape: vec![V, H] })];
            for i in 0..2 {
                t.push((format!("h.{i}.attn.weight"), TensorMeta { dtype: DType::F32, shape: vec![H, H] }));
                t.push((format!("h.{i}.ln.bias"), TensorMeta { dtype: DType::F32, shape: vec![H] }));
            }
            if extra {
                t.push(("only_here".to_string(), TensorMeta { dtype: DType::F32, shape: vec![H] }));
            }
            ModelSummary::new(name, Some(json!({"architectures": ["GPT2LMHeadModel"]})), t)
        };
        let p = plan("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\n", &[mk("a", true), mk("b", false)]).unwrap();
        assert_eq!(p.architecture, Architecture::Generic);
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["wte", "h.0.attn.weight", "h.0.ln.bias", "h.1.attn.weight", "h.1.ln.bias"]);
        assert_eq!(p.num_hidden_layers, 2);
    }

    #[test]
    fn qwen2_plans_biases() {
        let mut a = llama("a", 1, true, DType::F32);
        for s in ["q", "k", "v"] {
            let n = format!("model.layers.0.self_attn.{s}_proj.bias");
            a.order.push(n.clone());
            a.tensors.insert(n, TensorMeta { dtype: DType::F32, shape: vec![H] });
        }
        a.config = Some(json!({"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 1}));
        let p = plan("merge_method: passthrough\nmodels: [{model: a}]\n", &[a]).unwrap();
        assert_eq!(p.architecture, Architecture::Qwen2);
        assert_eq!(p.tensors.len(), 1 + 12 + 1);
        assert_eq!(p.tensors[6].name, "model.layers.0.self_attn.k_proj.bias");
    }
}
