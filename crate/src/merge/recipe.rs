//! Merge recipes: mergekit 0.1.5 YAML (`MergeConfiguration`), typed, validated and written back.
//!
//! Reference: mergekit 0.1.5 `mergekit/config.py` (the configuration model and
//! `evaluate_setting`, which resolves gradients and filters) and `mergekit/parameter_resolver.py`
//! (precedence of the parameter scopes). Semantics: `shared/merge-methods.md` §1 and §1.1.
//!
//! Supported: the `models:` and `slices:` forms, `base_model` (global and per slice),
//! `merge_method`, global / per-slice / per-source parameters whose settings are scalars,
//! gradient lists or filter lists (including the single `{filter, value}` mapping), `dtype`,
//! `out_dtype`, `tokenizer_source: base | <model>`, `layer_range`, `residual_weight` (accepted and
//! kept, unused by mergekit 0.1.5 as well). Rejected with a clear message: `modules:`,
//! `tokenizer:`, `tokenizer_source: union`, `chat_template:` (they need a tokenizer rebuild), and
//! unknown keys (mergekit ignores them silently; a typo such as `paramters:` would then change the
//! merge without a word, so we refuse it).

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value as Yaml;

use crate::merge::methods::Method;
use crate::tensor::DType;

/// Why a recipe could not be read. Syntax and type errors carry the YAML position.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RecipeError {
    /// Malformed YAML or a field of the wrong type, at a position in the recipe text.
    #[error("recipe line {line} column {column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    /// The YAML parsed but the recipe is not valid (no position available).
    #[error("recipe: {0}")]
    Invalid(String),
    /// A mergekit feature this build does not implement yet.
    #[error("recipe: {0} is not supported yet")]
    Unsupported(String),
}

/// A scalar as written in the recipe (YAML numbers are all kept as f64, like mergekit's floats).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Bool(bool),
    Str(String),
}

/// One parameter setting (mergekit `ParameterSetting`), see merge-methods.md §1.1.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    /// Used as is.
    Scalar(Value),
    /// Interpolated at the layer position `t` (numbers), or indexed by it (bools, strings).
    Gradient(Vec<Value>),
    /// `[{filter: "self_attn", value: ...}, ..., {value: default}]`: the first entry whose filter is
    /// missing, `"*"`, or a substring of the tensor name gives the value.
    Filters(Vec<FilterEntry>),
}

/// One entry of a filter list. `value` is a `Setting::Scalar` or a `Setting::Gradient`.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterEntry {
    pub filter: Option<String>,
    pub value: Setting,
}

/// A parameter block (`parameters:`), in recipe order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Parameters(pub Vec<(String, Setting)>);

/// One entry of the `models:` form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputModel {
    #[serde(deserialize_with = "de_model_ref")]
    pub model: String,
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
}

/// One source of an output slice: layers `layer_range[0]..layer_range[1]` of `model`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSlice {
    #[serde(deserialize_with = "de_model_ref")]
    pub model: String,
    #[serde(deserialize_with = "de_layer_range")]
    pub layer_range: [usize; 2],
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
}

/// One output slice of the `slices:` form. All sources must span the same number of layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSlice {
    pub sources: Vec<InputSlice>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_opt_model_ref")]
    pub base_model: Option<String>,
    /// Accepted for compatibility; mergekit 0.1.5 does not use it either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
}

/// Which inputs the recipe lists.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// `models:`: one output slice covering every layer of every model (plus the base model,
    /// appended when it is not listed).
    Models(Vec<InputModel>),
    /// `slices:`: explicit layer ranges (frankenmerges).
    Slices(Vec<OutputSlice>),
}

/// Where the output tokenizer (and config donor for tokenizer files) comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSource {
    /// The base model's tokenizer.
    Base,
    /// A model reference.
    Model(String),
}

/// A parsed, validated mergekit recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub merge_method: Method,
    pub base_model: Option<String>,
    pub layout: Layout,
    /// Top-level ("catch-all") parameters.
    pub parameters: Parameters,
    /// Every input tensor is cast to this dtype when loaded.
    pub dtype: Option<DType>,
    /// The merged tensors are cast to this dtype when saved.
    pub out_dtype: Option<DType>,
    pub tokenizer_source: Option<TokenizerSource>,
}

impl Parameters {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

impl Value {
    fn from_yaml(v: &Yaml) -> Option<Value> {
        match v {
            Yaml::Bool(b) => Some(Value::Bool(*b)),
            Yaml::Number(n) => n.as_f64().map(Value::Number),
            Yaml::String(s) => Some(Value::Str(s.clone())),
            _ => None,
        }
    }
    fn to_yaml(&self) -> Yaml {
        match self {
            Value::Bool(b) => Yaml::Bool(*b),
            Value::Str(s) => Yaml::String(s.clone()),
            Value::Number(x) => {
                // Integral values are written as integers (`weight: 1`), the rest in the shortest
                // form that parses back to the same f64.
                if x.fract() == 0.0 && x.abs() < 9.0e15 {
                    Yaml::Number((*x as i64).into())
                } else {
                    Yaml::Number((*x).into())
                }
            }
        }
    }
    /// A short rendering for messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Number(x) => format!("{x}"),
            Value::Bool(b) => format!("{b}"),
            Value::Str(s) => format!("{s:?}"),
        }
    }
}

/// Does `filter` select `tensor`? (mergekit: missing, `"*"`, or a substring of the name.)
pub fn filter_matches(filter: Option<&str>, tensor: &str) -> bool {
    match filter {
        None | Some("*") => true,
        Some(f) => !tensor.is_empty() && tensor.contains(f),
    }
}

impl Setting {
    /// mergekit 0.1.5 `evaluate_setting(tensor_name, setting, t, validate=...)`.
    ///
    /// `validate` converts one raw value to the parameter's type (the pydantic validation in
    /// mergekit). Gradients of numbers (after validation) are interpolated linearly at `t`:
    /// `scaled = t·(len−1); i0 = ⌊scaled⌋; i1 = min(len−1, i0+1); f = scaled − i0;
    /// value = (1−f)·v[i0] + f·v[i1]`, then validated again. Gradients of bools or strings pick
    /// `v[⌊t·(len−1)⌋]`. `Ok(None)` means "no value here" (no filter matched, or an empty list):
    /// resolution falls through to the next scope.
    pub fn evaluate(&self, tensor: &str, t: f64, validate: &dyn Fn(&Value) -> Result<Value, String>) -> Result<Option<Value>, String> {
        match self {
            Setting::Scalar(v) => validate(v).map(Some),
            Setting::Gradient(list) => {
                if list.is_empty() {
                    return Ok(None);
                }
                let values = list.iter().map(validate).collect::<Result<Vec<_>, _>>()?;
                let nums: Option<Vec<f64>> = values.iter().map(|v| if let Value::Number(x) = v { Some(*x) } else { None }).collect();
                let last = (values.len() - 1) as f64;
                match nums {
                    None => {
                        let i = ((t * last) as usize).min(values.len() - 1);
                        Ok(Some(values[i].clone()))
                    }
                    Some(nums) => {
                        let scaled = t * last;
                        let i0 = (scaled as usize).min(nums.len() - 1);
                        let i1 = (i0 + 1).min(nums.len() - 1);
                        let frac = scaled - i0 as f64;
                        let v = (1.0 - frac) * nums[i0] + frac * nums[i1];
                        validate(&Value::Number(v)).map(Some)
                    }
                }
            }
            Setting::Filters(entries) => {
                for e in entries {
                    if filter_matches(e.filter.as_deref(), tensor) {
                        return e.value.evaluate(tensor, t, validate);
                    }
                }
                Ok(None)
            }
        }
    }

    fn from_yaml(v: &Yaml) -> Result<Setting, String> {
        match v {
            Yaml::Sequence(items) => {
                if items.iter().all(|i| Value::from_yaml(i).is_some()) {
                    Ok(Setting::Gradient(items.iter().map(|i| Value::from_yaml(i).expect("checked")).collect()))
                } else if items.iter().all(|i| matches!(i, Yaml::Mapping(_))) {
                    items.iter().enumerate().map(|(k, i)| FilterEntry::from_yaml(i).map_err(|e| format!("entry {k}: {e}"))).collect::<Result<_, _>>().map(Setting::Filters)
                } else {
                    Err("a list must be either all scalars (a gradient) or all `{filter, value}` mappings (a filter list)".into())
                }
            }
            Yaml::Mapping(_) => Ok(Setting::Filters(vec![FilterEntry::from_yaml(v)?])),
            Yaml::Null => Err("a parameter needs a value (got null)".into()),
            other => Value::from_yaml(other).map(Setting::Scalar).ok_or_else(|| "expected a number, bool, string, gradient list or filter list".into()),
        }
    }

    fn to_yaml(&self) -> Yaml {
        match self {
            Setting::Scalar(v) => v.to_yaml(),
            Setting::Gradient(list) => Yaml::Sequence(list.iter().map(Value::to_yaml).collect()),
            Setting::Filters(entries) => Yaml::Sequence(entries.iter().map(FilterEntry::to_yaml).collect()),
        }
    }
}

impl FilterEntry {
    fn from_yaml(v: &Yaml) -> Result<FilterEntry, String> {
        let Yaml::Mapping(m) = v else { return Err("expected a `{filter, value}` mapping".into()) };
        let mut filter = None;
        let mut value = None;
        for (k, val) in m {
            match k.as_str() {
                Some("filter") => match val {
                    Yaml::String(s) => filter = Some(s.clone()),
                    Yaml::Null => {}
                    _ => return Err("`filter` must be a string (a substring of tensor names, or \"*\")".into()),
                },
                Some("value") => {
                    let s = match val {
                        Yaml::Sequence(items) => {
                            let vals: Option<Vec<Value>> = items.iter().map(Value::from_yaml).collect();
                            Setting::Gradient(vals.ok_or("`value` must be a scalar or a list of scalars")?)
                        }
                        other => Setting::Scalar(Value::from_yaml(other).ok_or("`value` must be a scalar or a list of scalars")?),
                    };
                    value = Some(s);
                }
                Some("pattern") => {
                    return Err("`pattern:` in a filter entry is an old spelling: mergekit 0.1.5 ignores it, so the entry would match every tensor; write `filter:`".into());
                }
                _ => return Err(format!("unknown key {} in a filter entry (expected `filter` and `value`)", describe_key(k))),
            }
        }
        let value = value.ok_or("a filter entry needs a `value`")?;
        Ok(FilterEntry { filter, value })
    }

    fn to_yaml(&self) -> Yaml {
        let mut m = serde_yaml_ng::Mapping::new();
        if let Some(f) = &self.filter {
            m.insert(Yaml::String("filter".into()), Yaml::String(f.clone()));
        }
        m.insert(Yaml::String("value".into()), self.value.to_yaml());
        Yaml::Mapping(m)
    }
}

fn describe_key(k: &Yaml) -> String {
    match k {
        Yaml::String(s) => format!("`{s}`"),
        other => format!("{other:?}"),
    }
}

/// A serde visitor that collects any YAML node and converts it *inside* the visitor, so that
/// serde_yaml_ng attaches the node's own line and column (and path) to a conversion error.
struct Convert<T>(fn(Yaml) -> Result<T, String>);

impl<'de, T> de::Visitor<'de> for Convert<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        (self.0)(Yaml::Bool(v)).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.0)(Yaml::Number(v.into())).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.0)(Yaml::Number(v.into())).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.0)(Yaml::Number(v.into())).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(Yaml::String(v.to_string())).map_err(E::custom)
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        (self.0)(Yaml::Null).map_err(E::custom)
    }
    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        (self.0)(Yaml::Null).map_err(E::custom)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        let v = Yaml::deserialize(d)?;
        (self.0)(v).map_err(de::Error::custom)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let mut items = Vec::new();
        while let Some(e) = seq.next_element::<Yaml>()? {
            items.push(e);
        }
        (self.0)(Yaml::Sequence(items)).map_err(de::Error::custom)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut m = serde_yaml_ng::Mapping::new();
        while let Some((k, v)) = map.next_entry::<Yaml, Yaml>()? {
            m.insert(k, v);
        }
        (self.0)(Yaml::Mapping(m)).map_err(de::Error::custom)
    }
}

fn convert<'de, D: Deserializer<'de>, T>(d: D, f: fn(Yaml) -> Result<T, String>) -> Result<T, D::Error> {
    d.deserialize_any(Convert(f))
}

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        convert(d, |v| Setting::from_yaml(&v))
    }
}

struct ParametersVisitor;

impl<'de> de::Visitor<'de> for ParametersVisitor {
    type Value = Parameters;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a mapping of parameter name to setting")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Parameters, E> {
        Ok(Parameters::default())
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Parameters, A::Error> {
        let mut out: Vec<(String, Setting)> = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let setting = map.next_value::<Setting>()?;
            if out.iter().any(|(k, _)| *k == name) {
                return Err(de::Error::custom(format!("parameter `{name}` is set twice")));
            }
            out.push((name, setting));
        }
        Ok(Parameters(out))
    }
}

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParametersVisitor)
    }
}

impl Serialize for Parameters {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, &v.to_yaml())?;
        }
        m.end()
    }
}

fn model_ref(v: Yaml) -> Result<String, String> {
    match v {
        Yaml::String(s) if !s.trim().is_empty() => Ok(s),
        Yaml::String(_) => Err("model reference is empty".into()),
        Yaml::Mapping(_) => Err("model references as mappings (path/revision/lora) are not supported yet; write the local directory as a string".into()),
        other => Err(format!("model reference must be a string (a local directory), got {}", describe_yaml(&other))),
    }
}

fn describe_yaml(v: &Yaml) -> String {
    match v {
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => format!("{s:?}"),
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a mapping".into(),
        Yaml::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn de_model_ref<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    convert(d, model_ref)
}

fn de_opt_model_ref<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    convert(d, |v| if v.is_null() { Ok(None) } else { model_ref(v).map(Some) })
}

fn de_layer_range<'de, D: Deserializer<'de>>(d: D) -> Result<[usize; 2], D::Error> {
    convert(d, |v| {
        let bad = || "`layer_range` must be two non-negative integers [start, end] with start <= end".to_string();
        let Yaml::Sequence(items) = v else { return Err(bad()) };
        if items.len() != 2 {
            return Err(bad());
        }
        let a = items[0].as_u64().ok_or_else(bad)? as usize;
        let b = items[1].as_u64().ok_or_else(bad)? as usize;
        if a > b {
            return Err(bad());
        }
        Ok([a, b])
    })
}

fn de_method<'de, D: Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
    convert(d, |v| match v {
        Yaml::String(s) => Method::from_name(&s).map_err(|e| e.to_string()),
        other => Err(format!("`merge_method` must be a string, got {}; valid methods: {}", describe_yaml(&other), Method::names().join(", "))),
    })
}

fn de_dtype<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DType>, D::Error> {
    convert(d, |v| match v {
        Yaml::Null => Ok(None),
        Yaml::String(s) => DType::from_torch(&s).map(Some).map_err(|e| e.to_string()),
        other => Err(format!("dtype must be a string (float32, float16, bfloat16), got {}", describe_yaml(&other))),
    })
}

fn de_tokenizer_source<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TokenizerSource>, D::Error> {
    convert(d, |v| match v {
        Yaml::Null => Ok(None),
        Yaml::String(s) if s == "base" => Ok(Some(TokenizerSource::Base)),
        Yaml::String(s) if s == "union" => Err("`tokenizer_source: union` (a merged vocabulary) is not supported yet; use `base` or a model".into()),
        Yaml::String(s) if !s.trim().is_empty() => Ok(Some(TokenizerSource::Model(s))),
        other => Err(format!("`tokenizer_source` must be `base` or a model reference, got {}", describe_yaml(&other))),
    })
}

/// The YAML shape (mergekit's field names). Converted to and from `Recipe`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    models: Option<Vec<InputModel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slices: Option<Vec<OutputSlice>>,
    #[serde(default, skip_serializing)]
    modules: Option<Yaml>,
    #[serde(deserialize_with = "de_method", serialize_with = "ser_method")]
    merge_method: Method,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_opt_model_ref")]
    base_model: Option<String>,
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    parameters: Parameters,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_dtype", serialize_with = "ser_dtype")]
    dtype: Option<DType>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_dtype", serialize_with = "ser_dtype")]
    out_dtype: Option<DType>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_tokenizer_source", serialize_with = "ser_tokenizer_source")]
    tokenizer_source: Option<TokenizerSource>,
    #[serde(default, skip_serializing)]
    tokenizer: Option<Yaml>,
    #[serde(default, skip_serializing)]
    chat_template: Option<Yaml>,
}

fn ser_method<S: Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.name())
}

fn ser_dtype<S: Serializer>(d: &Option<DType>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(d.torch_name()),
        None => s.serialize_none(),
    }
}

fn ser_tokenizer_source<S: Serializer>(t: &Option<TokenizerSource>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(TokenizerSource::Base) => s.serialize_str("base"),
        Some(TokenizerSource::Model(m)) => s.serialize_str(m),
        None => s.serialize_none(),
    }
}

fn syntax_error(e: serde_yaml_ng::Error) -> RecipeError {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let (line, column) = (loc.line(), loc.column());
            // The position is in our prefix; drop serde_yaml_ng's own copy of it.
            let message = text.replacen(&format!(" at line {line} column {column}"), "", 1).replace("struct RawRecipe", "a mapping of recipe keys (merge_method, models or slices, ...)");
            RecipeError::Syntax { line, column, message }
        }
        None => RecipeError::Invalid(text),
    }
}

impl Recipe {
    /// Parse and validate a mergekit YAML recipe.
    pub fn from_yaml(text: &str) -> Result<Recipe, RecipeError> {
        let raw: RawRecipe = serde_yaml_ng::from_str(text).map_err(syntax_error)?;
        if raw.modules.is_some() {
            return Err(RecipeError::Unsupported("`modules:` (multi-module architectures)".into()));
        }
        if raw.tokenizer.is_some() {
            return Err(RecipeError::Unsupported("`tokenizer:` (vocabulary merging); use `tokenizer_source: base` or a model".into()));
        }
        if raw.chat_template.is_some() {
            return Err(RecipeError::Unsupported("`chat_template:` (it needs the tokenizer re-serialized)".into()));
        }
        let layout = match (raw.models, raw.slices) {
            (Some(m), None) if !m.is_empty() => Layout::Models(m),
            (None, Some(s)) if !s.is_empty() => Layout::Slices(s),
            (Some(_), Some(_)) => return Err(RecipeError::Invalid("exactly one of `models` or `slices` must be present, found both".into())),
            _ => return Err(RecipeError::Invalid("exactly one of `models` or `slices` must be present (and not empty)".into())),
        };
        if let Layout::Slices(slices) = &layout {
            for (i, s) in slices.iter().enumerate() {
                if s.sources.is_empty() {
                    return Err(RecipeError::Invalid(format!("slices[{i}] has no sources")));
                }
                let n = |src: &InputSlice| src.layer_range[1] - src.layer_range[0];
                let first = n(&s.sources[0]);
                if let Some(src) = s.sources.iter().find(|src| n(src) != first) {
                    return Err(RecipeError::Invalid(format!(
                        "slices[{i}]: all sources must contain the same number of layers ({} has {:?} = {} layers, {} has {:?} = {})",
                        s.sources[0].model, s.sources[0].layer_range, first, src.model, src.layer_range, n(src)
                    )));
                }
            }
        }
        Ok(Recipe {
            merge_method: raw.merge_method,
            base_model: raw.base_model,
            layout,
            parameters: raw.parameters,
            dtype: raw.dtype,
            out_dtype: raw.out_dtype,
            tokenizer_source: raw.tokenizer_source,
        })
    }

    /// Write the recipe as mergekit YAML. `Recipe::from_yaml(&r.to_yaml()) == Ok(r)`.
    pub fn to_yaml(&self) -> String {
        let (models, slices) = match &self.layout {
            Layout::Models(m) => (Some(m.clone()), None),
            Layout::Slices(s) => (None, Some(s.clone())),
        };
        let raw = RawRecipe {
            models,
            slices,
            modules: None,
            merge_method: self.merge_method,
            base_model: self.base_model.clone(),
            parameters: self.parameters.clone(),
            dtype: self.dtype,
            out_dtype: self.out_dtype,
            tokenizer_source: self.tokenizer_source.clone(),
            tokenizer: None,
            chat_template: None,
        };
        // Serializing plain strings, numbers, sequences and maps cannot fail.
        serde_yaml_ng::to_string(&raw).unwrap_or_else(|e| format!("# could not serialize the recipe: {e}\n"))
    }

    /// Every model the recipe merges, in order of first appearance (inputs first, then the base
    /// model). Duplicates removed. Like mergekit's `referenced_models`, a `tokenizer_source` model
    /// that is not an input is not included.
    pub fn referenced_models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |m: &str| {
            if !out.iter().any(|x| x == m) {
                out.push(m.to_string());
            }
        };
        match &self.layout {
            Layout::Models(ms) => ms.iter().for_each(|m| add(&m.model)),
            Layout::Slices(ss) => {
                for s in ss {
                    s.sources.iter().for_each(|src| add(&src.model));
                    if let Some(b) = &s.base_model {
                        add(b);
                    }
                }
            }
        }
        if let Some(b) = &self.base_model {
            add(b);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(v: &Value) -> Result<Value, String> {
        match v {
            Value::Number(x) => Ok(Value::Number(*x)),
            Value::Bool(b) => Ok(Value::Number(if *b { 1.0 } else { 0.0 })),
            Value::Str(s) => s.trim().parse::<f64>().map(Value::Number).map_err(|_| format!("{s:?} is not a number")),
        }
    }

    fn num(s: &Setting, tensor: &str, t: f64) -> f64 {
        match s.evaluate(tensor, t, &float).unwrap() {
            Some(Value::Number(x)) => x,
            other => panic!("{other:?}"),
        }
    }

    fn grad(v: &[f64]) -> Setting {
        Setting::Gradient(v.iter().map(|x| Value::Number(*x)).collect())
    }

    #[test]
    fn gradient_two_layers_gives_the_end_points() {
        // merge-methods.md §1.1: L = 2, [0, 0.5, 0.3, 0.7, 1] → layer0 0, layer1 1.
        let g = grad(&[0.0, 0.5, 0.3, 0.7, 1.0]);
        assert_eq!(num(&g, "x", 0.0), 0.0);
        assert_eq!(num(&g, "x", 1.0), 1.0);
    }

    #[test]
    fn gradient_four_layers_matches_mergekit() {
        // slerp_gradient4: [0, 0.5, 0.3, 0.7, 1] over 4 layers → 0, 0.4333, 0.5667, 1.
        let g = grad(&[0.0, 0.5, 0.3, 0.7, 1.0]);
        let got: Vec<f64> = (0..4).map(|i| num(&g, "x", i as f64 / 3.0)).collect();
        let want = [0.0, 0.433_333_333_333_333_3, 0.566_666_666_666_666_7, 1.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        // linear_gradient4: weights [0, 1, 0.25] → 0, 0.6667, 0.75, 0.25.
        let g = grad(&[0.0, 1.0, 0.25]);
        let got: Vec<f64> = (0..4).map(|i| num(&g, "x", i as f64 / 3.0)).collect();
        let want = [0.0, 2.0 / 3.0, 0.75, 0.25];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn filters_first_substring_match_wins_and_none_falls_through() {
        let r = Recipe::from_yaml(
            "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 1]\n    - filter: mlp\n      value: 0.25\n    - value: 0.5\n  only_attn: {filter: q_proj, value: 3}\n",
        )
        .unwrap();
        let t = r.parameters.get("t").unwrap();
        assert_eq!(num(t, "model.layers.0.self_attn.q_proj.weight", 1.0), 1.0);
        assert_eq!(num(t, "model.layers.0.self_attn.q_proj.weight", 0.5), 0.5);
        assert_eq!(num(t, "model.layers.0.mlp.up_proj.weight", 1.0), 0.25);
        assert_eq!(num(t, "model.norm.weight", 1.0), 0.5);
        let single = r.parameters.get("only_attn").unwrap();
        assert_eq!(num(single, "model.layers.3.self_attn.q_proj.weight", 0.0), 3.0);
        assert_eq!(single.evaluate("model.layers.3.mlp.up_proj.weight", 0.0, &float).unwrap(), None);
    }

    #[test]
    fn bool_and_string_gradients_pick_an_element() {
        let g = Setting::Gradient(vec![Value::Str("a".into()), Value::Str("b".into()), Value::Str("c".into())]);
        let id = |v: &Value| Ok(v.clone());
        assert_eq!(g.evaluate("x", 0.0, &id).unwrap(), Some(Value::Str("a".into())));
        assert_eq!(g.evaluate("x", 0.99, &id).unwrap(), Some(Value::Str("b".into())));
        assert_eq!(g.evaluate("x", 1.0, &id).unwrap(), Some(Value::Str("c".into())));
    }

    #[test]
    fn bad_yaml_gives_line_and_column() {
        let e = Recipe::from_yaml("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: [1, 2}\n").unwrap_err();
        match &e {
            RecipeError::Syntax { line, column, .. } => {
                assert_eq!(*line, 4, "{e}");
                assert!(*column > 1, "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("recipe line 4 column "), "{e}");
    }

    #[test]
    fn unknown_method_lists_valid_ones_with_position() {
        let e = Recipe::from_yaml("models:\n  - model: a\nmerge_method: lineer\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("\"lineer\""), "{e}");
        assert!(e.contains("linear, slerp"), "{e}");
        assert!(e.contains("passthrough"), "{e}");
    }

    #[test]
    fn unsupported_and_invalid_forms_are_clear() {
        let e = Recipe::from_yaml("merge_method: linear\nmodules: {}\n").unwrap_err().to_string();
        assert!(e.contains("`modules:`") && e.contains("not supported yet"), "{e}");
        let e = Recipe::from_yaml("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: union\n").unwrap_err().to_string();
        assert!(e.contains("union") && e.contains("not supported yet") && e.contains("line 3"), "{e}");
        let e = Recipe::from_yaml("merge_method: linear\n").unwrap_err().to_string();
        assert!(e.contains("exactly one of `models` or `slices`"), "{e}");
        let e = Recipe::from_yaml("merge_method: linear\nmodels: [{model: a}]\nparamters: {weight: 1}\n").unwrap_err().to_string();
        assert!(e.contains("paramters") && e.contains("line 3"), "{e}");
        let e = Recipe::from_yaml("merge_method: slerp\nmodels: [{model: a}]\nparameters:\n  t:\n    - pattern: self_attn\n      value: 0.5\n").unwrap_err().to_string();
        assert!(e.contains("`pattern:`") && e.contains("`filter:`") && e.contains("line 5"), "{e}");
        let e = Recipe::from_yaml("merge_method: linear\nmodels: [{model: a}]\ndtype: int8\n").unwrap_err().to_string();
        assert!(e.contains("int8"), "{e}");
        let e = Recipe::from_yaml("merge_method: passthrough\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n      - {model: b, layer_range: [0, 3]}\n").unwrap_err().to_string();
        assert!(e.contains("slices[0]") && e.contains("same number of layers"), "{e}");
        let e = Recipe::from_yaml("merge_method: passthrough\nslices:\n  - sources:\n      - {model: a, layer_range: [3, 2]}\n").unwrap_err().to_string();
        assert!(e.contains("layer_range") && e.contains("line 4"), "{e}");
    }
}
