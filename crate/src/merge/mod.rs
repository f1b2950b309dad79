//! The merge engine: mergekit 0.1.5 recipes, planned into one entry per output tensor, executed
//! tensor by tensor (memory bounded by the largest tensor, never by the model size).
//!
//! Data path: `recipe` (YAML ⇄ typed recipe) → `plan` (tensor enumeration, layer position `t`,
//! parameter resolution) → `run` (streamed read → `methods::merge_tensor` → streamed write).
//! The math of every method follows `shared/merge-methods.md` (mergekit 0.1.5 semantics).

pub mod methods;
pub mod params;
pub mod plan;
pub mod preview;
pub mod recipe;
pub mod rng;
pub mod run;
pub mod stats;

pub use params::{Params, Scalar};

use crate::tensor::DType;

/// One input model's copy of the tensor being merged.
pub struct ModelTensor<'a> {
    /// The model reference as written in the recipe (for messages).
    pub model: &'a str,
    /// Values widened to f32 from the dtype the tensor was loaded as. Shape: `MergeInputs::shape`.
    pub data: &'a [f32],
    /// This model's per-model parameters (`weight`, `density`, `gamma`, `epsilon`, `scale`, ...),
    /// resolved for this tensor; absent keys fall back to the method default.
    pub params: &'a Params,
}

/// Everything a method sees for one output tensor. No method mixes information across tensors.
pub struct MergeInputs<'a> {
    /// Output tensor name (used for messages and to seed random masks).
    pub tensor: &'a str,
    /// Shape shared by every input, e.g. `[out, in]` for a projection, `[hidden]` for a norm.
    pub shape: &'a [usize],
    /// The dtype every input was loaded as (recipe `dtype`, else the promoted file dtype).
    /// Methods that compute "in the input dtype" in mergekit emulate it with `DType::round`.
    pub dtype: DType,
    /// All inputs in recipe order, the base model included when it is an input.
    pub models: Vec<ModelTensor<'a>>,
    /// Index into `models` of the base model, if the recipe has one and it has this tensor.
    pub base: Option<usize>,
    /// Global (shared) parameters resolved for this tensor (`t`, `normalize`, `lambda`, ...).
    pub global: &'a Params,
}

/// Errors of the merge engine. Messages name the tensor, the model and the parameter involved.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("unknown merge method {0:?}; valid methods: {valid}", valid = methods::Method::names().join(", "))]
    UnknownMethod(String),
    #[error("tensor {tensor}: missing required parameter {param:?}{}", model.as_ref().map(|m| format!(" for model {m}")).unwrap_or_default())]
    MissingParameter { tensor: String, param: String, model: Option<String> },
    #[error("tensor {tensor}: parameter {param:?} {message}")]
    BadParameter { tensor: String, param: String, message: String },
    #[error("tensor {tensor}: method {method} {message}")]
    BadInputs { tensor: String, method: String, message: String },
    #[error("tensor {tensor}: shape {shape_a:?} in {model_a} but {shape_b:?} in {model_b}")]
    ShapeMismatch { tensor: String, model_a: String, shape_a: Vec<usize>, model_b: String, shape_b: Vec<usize> },
}
