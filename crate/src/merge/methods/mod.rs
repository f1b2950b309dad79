//! Every mergekit 0.1.5 merge method: the registry (names, parameter lists with defaults) and
//! `merge_tensor`, which dispatches one output tensor to its method's file.
//! Math: `shared/merge-methods.md`; reference: mergekit 0.1.5 `mergekit/merge_methods/`
//! (`registry.py` for the names and defaults, one file per method for the math).
//!
//! Precision: every input arrives widened to f32 from `MergeInputs::dtype` (D). mergekit returns
//! each merged tensor in D, and most methods compute in D (torch ops on bf16/f16 tensors round
//! after every op). Each method emulates that with `DType::round` after each torch op. Sums over
//! the model axis accumulate in f32 in model order and round once (as torch's CPU kernels do);
//! reductions over a tensor or a line (L1 norms, L2 norms, dots) accumulate in f64 and round
//! once. For f32 inputs `round` is the identity. Transcendental functions come from the `libm`
//! crate, so native and wasm builds give identical bits.
//!
//! Checked against mergekit 0.1.5's own functions on random f32/bf16/f16 inputs (throwaway
//! harness; the committed bit-exact cases are in `mergekit_oracle_tests.rs`): bit-identical
//! except for these known deviations:
//! * f32 tensor/line reductions: torch sums in f32 with a cascade (and, for large tensors,
//!   per-thread chunks); our f64 sums are correctly rounded, so norms, dots and L1 rescale
//!   factors can differ by an ulp, giving ~1e-7 relative differences (nuslerp row-wise,
//!   multislerp, karcher, model_stock, sce, rescaled dare/della/ties).
//! * Ties in magnitude: torch's CPU sort/topk is unstable (x86-simd-sort, std::sort); we break
//!   ties by index. Only equal |Δ| are affected, which is common for bf16/f16 task vectors
//!   (ties, breadcrumbs*, della* ranks, sce select_topk).
//! * Random masks (dare_*, della*) come from `rng::Randomness`, not torch's generator.
//! * arcee_fusion: exact quantiles above 10⁶ elements (mergekit samples randomly); softmax
//!   `exp` may differ from torch's by an ulp.
//! * linear with `normalize` and Σw = 0 is an error here (mergekit writes inf/NaN).

mod arcee_fusion;
mod karcher;
mod linear;
#[cfg(test)]
mod mergekit_oracle_tests;
mod model_stock;
mod multislerp;
mod nearswap;
mod nuslerp;
mod passthrough;
mod sce;
mod slerp;
pub mod sparsify;
pub mod streaming;
mod task_arithmetic;

use serde::Serialize;

use super::rng::Randomness;
use super::{MergeError, MergeInputs, Scalar};
use crate::tensor::DType;

/// A merge method, by its mergekit registry name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Linear,
    Slerp,
    Nuslerp,
    Multislerp,
    Karcher,
    TaskArithmetic,
    Ties,
    DareTies,
    DareLinear,
    Breadcrumbs,
    BreadcrumbsTies,
    Della,
    DellaLinear,
    ModelStock,
    Nearswap,
    Sce,
    ArceeFusion,
    Passthrough,
}

impl Method {
    pub const ALL: [Method; 18] = [
        Method::Linear,
        Method::Slerp,
        Method::Nuslerp,
        Method::Multislerp,
        Method::Karcher,
        Method::TaskArithmetic,
        Method::Ties,
        Method::DareTies,
        Method::DareLinear,
        Method::Breadcrumbs,
        Method::BreadcrumbsTies,
        Method::Della,
        Method::DellaLinear,
        Method::ModelStock,
        Method::Nearswap,
        Method::Sce,
        Method::ArceeFusion,
        Method::Passthrough,
    ];

    /// The registry name used in YAML (`merge_method: dare_ties`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::Slerp => "slerp",
            Method::Nuslerp => "nuslerp",
            Method::Multislerp => "multislerp",
            Method::Karcher => "karcher",
            Method::TaskArithmetic => "task_arithmetic",
            Method::Ties => "ties",
            Method::DareTies => "dare_ties",
            Method::DareLinear => "dare_linear",
            Method::Breadcrumbs => "breadcrumbs",
            Method::BreadcrumbsTies => "breadcrumbs_ties",
            Method::Della => "della",
            Method::DellaLinear => "della_linear",
            Method::ModelStock => "model_stock",
            Method::Nearswap => "nearswap",
            Method::Sce => "sce",
            Method::ArceeFusion => "arcee_fusion",
            Method::Passthrough => "passthrough",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Method::ALL.iter().map(|m| m.name()).collect()
    }

    pub fn from_name(name: &str) -> Result<Method, super::MergeError> {
        Method::ALL.iter().copied().find(|m| m.name() == name).ok_or_else(|| super::MergeError::UnknownMethod(name.to_string()))
    }
}

/// How a method uses the recipe's `base_model` (mergekit `BasePolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseUse {
    /// The method needs a base model (task vectors are taken against it).
    Required,
    /// A base is used when given (nuslerp, multislerp: SLERP of task vectors).
    Optional,
    /// The base, if listed, is just one more input (linear, karcher, passthrough).
    Ignored,
}

/// The value type of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Float,
    Bool,
    Int,
}

/// A parameter's default when the recipe does not set it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamDefault {
    /// No default: the parameter is either required or optional-and-absent (passthrough `scale`).
    None,
    Float(f64),
    Bool(bool),
}

/// One parameter a method reads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ParamSpec {
    pub name: &'static str,
    /// true: set per input model (`models[*].parameters`); false: shared by all models.
    pub per_model: bool,
    pub kind: ParamKind,
    pub default: ParamDefault,
    pub required: bool,
    pub help: &'static str,
}

/// What the UI and the recipe validator need to know about a method.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MethodInfo {
    pub name: &'static str,
    pub base: BaseUse,
    /// Bounds on the number of models per tensor. With `base: required|optional` they count the
    /// non-base models; with `base: ignored` they count every input (the base included).
    pub min_models: usize,
    pub max_models: Option<usize>,
    pub params: &'static [ParamSpec],
    pub help: &'static str,
}

const fn float(name: &'static str, per_model: bool, default: Option<f64>, help: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        per_model,
        kind: ParamKind::Float,
        default: match default {
            Some(v) => ParamDefault::Float(v),
            None => ParamDefault::None,
        },
        required: default.is_none(),
        help,
    }
}

const fn boolean(name: &'static str, default: bool, help: &'static str) -> ParamSpec {
    ParamSpec { name, per_model: false, kind: ParamKind::Bool, default: ParamDefault::Bool(default), required: false, help }
}

const WEIGHT_INPUT: ParamSpec = float("weight", true, None, "weight of this model (the base model too, if listed)");
const WEIGHT: ParamSpec = float("weight", true, None, "weight of this model's task vector");
const DENSITY: ParamSpec = float("density", true, Some(1.0), "fraction of the task vector to keep (1 = all)");
const INT8_MASK: ParamSpec = boolean("int8_mask", false, "store masks as int8 (memory only; results are identical)");
const LAMBDA: ParamSpec = float("lambda", false, Some(1.0), "scale of the merged task vector, applied after normalization");

macro_rules! gta_params {
    ($normalize:expr, $rescale:expr $(, $extra:expr)*) => {
        &[
            INT8_MASK,
            boolean("normalize", $normalize, "divide by the sum of the weights"),
            boolean("rescale", $rescale, "rescale sparsified task vectors to their original L1 norm"),
            LAMBDA,
            WEIGHT,
            DENSITY,
            $($extra,)*
        ]
    };
}

const GAMMA: ParamSpec = float("gamma", true, Some(0.01), "fraction of the largest-magnitude entries removed as outliers");
const EPSILON: ParamSpec = float("epsilon", true, Some(0.15), "keep probabilities span density ± epsilon by magnitude rank");

static LINEAR_PARAMS: [ParamSpec; 2] = [WEIGHT_INPUT, boolean("normalize", true, "divide by the sum of the weights")];
static SLERP_PARAMS: [ParamSpec; 1] = [float("t", false, None, "interpolation position: 0 = base model, 1 = the other model")];
static NUSLERP_PARAMS: [ParamSpec; 3] = [
    WEIGHT,
    boolean("nuslerp_row_wise", false, "SLERP each slice along axis 0 instead of along the last axis"),
    boolean("nuslerp_flatten", true, "SLERP the whole tensor as one vector"),
];
static MULTISLERP_PARAMS: [ParamSpec; 3] = [
    WEIGHT,
    boolean("normalize_weights", true, "divide the weights by their sum"),
    float("eps", false, Some(1e-8), "numerical-stability constant"),
];
static KARCHER_PARAMS: [ParamSpec; 2] = [
    ParamSpec { name: "max_iter", per_model: false, kind: ParamKind::Int, default: ParamDefault::Float(10.0), required: false, help: "maximum iterations" },
    float("tol", false, Some(1e-5), "convergence tolerance"),
];
static TASK_ARITHMETIC_PARAMS: &[ParamSpec] = gta_params!(false, false);
static TIES_PARAMS: &[ParamSpec] = gta_params!(true, false);
static DARE_TIES_PARAMS: &[ParamSpec] = gta_params!(false, true);
static DARE_LINEAR_PARAMS: &[ParamSpec] = gta_params!(false, true);
static BREADCRUMBS_PARAMS: &[ParamSpec] = gta_params!(false, false, GAMMA);
static DELLA_PARAMS: &[ParamSpec] = gta_params!(true, true, EPSILON);
static DELLA_LINEAR_PARAMS: &[ParamSpec] = gta_params!(false, true, EPSILON);
static MODEL_STOCK_PARAMS: [ParamSpec; 1] = [boolean("filter_wise", false, "compute the interpolation ratio per row instead of per tensor")];
static NEARSWAP_PARAMS: [ParamSpec; 1] = [float("t", false, None, "similarity threshold: entries closer than t are swapped to the other model")];
static SCE_PARAMS: [ParamSpec; 2] = [INT8_MASK, float("select_topk", false, Some(1.0), "fraction of highest-variance entries to keep")];
static PASSTHROUGH_PARAMS: [ParamSpec; 1] = [ParamSpec {
    name: "scale",
    per_model: true,
    kind: ParamKind::Float,
    default: ParamDefault::None,
    required: false,
    help: "multiply the tensor by this factor (unset: copy unchanged)",
}];

const fn info(
    name: &'static str,
    base: BaseUse,
    min_models: usize,
    max_models: Option<usize>,
    params: &'static [ParamSpec],
    help: &'static str,
) -> MethodInfo {
    MethodInfo { name, base, min_models, max_models, params, help }
}

impl Method {
    /// Registry entry: base use, model counts and parameters with their mergekit 0.1.5 defaults.
    pub fn info(self) -> MethodInfo {
        use BaseUse::*;
        let n = self.name();
        match self {
            Method::Linear => info(n, Ignored, 1, None, &LINEAR_PARAMS, "Weighted average of all models (model soups)."),
            Method::Slerp => info(n, Required, 1, Some(1), &SLERP_PARAMS, "Spherical interpolation between the base and one other model."),
            Method::Nuslerp => info(n, Optional, 2, Some(2), &NUSLERP_PARAMS, "SLERP of two models (or of their task vectors against a base), t from the weights."),
            Method::Multislerp => info(n, Optional, 1, None, &MULTISLERP_PARAMS, "Barycentric SLERP of any number of models on the hypersphere."),
            Method::Karcher => info(n, Ignored, 1, None, &KARCHER_PARAMS, "Riemannian (Karcher) mean of all models on the hypersphere, equal weights."),
            Method::TaskArithmetic => info(n, Required, 0, None, TASK_ARITHMETIC_PARAMS, "Base plus the weighted sum of task vectors."),
            Method::Ties => info(n, Required, 0, None, TIES_PARAMS, "Trim task vectors by magnitude, elect signs, disjoint mean (TIES)."),
            Method::DareTies => info(n, Required, 0, None, DARE_TIES_PARAMS, "Random drop with L1 rescale, then TIES sign election."),
            Method::DareLinear => info(n, Required, 0, None, DARE_LINEAR_PARAMS, "Random drop with L1 rescale, then weighted sum."),
            Method::Breadcrumbs => info(n, Required, 0, None, BREADCRUMBS_PARAMS, "Drop the smallest and the largest (outlier) task-vector entries, then sum."),
            Method::BreadcrumbsTies => info(n, Required, 0, None, BREADCRUMBS_PARAMS, "Breadcrumbs sparsification with TIES sign election."),
            Method::Della => info(n, Required, 0, None, DELLA_PARAMS, "Magnitude-ranked random drop (DELLA) with TIES sign election."),
            Method::DellaLinear => info(n, Required, 0, None, DELLA_LINEAR_PARAMS, "Magnitude-ranked random drop (DELLA), then weighted sum."),
            Method::ModelStock => info(n, Required, 2, None, &MODEL_STOCK_PARAMS, "Interpolate the average fine-tune towards the base by the angle between fine-tunes."),
            Method::Nearswap => info(n, Required, 1, Some(1), &NEARSWAP_PARAMS, "Take the other model's value where it is close to the base."),
            Method::Sce => info(n, Required, 0, None, &SCE_PARAMS, "Select high-variance entries, weight by energy, erase sign conflicts (FuseChat)."),
            Method::ArceeFusion => info(n, Required, 1, Some(1), &[], "Keep the other model's changes where their KL-weighted importance is an outlier."),
            Method::Passthrough => info(n, Ignored, 1, Some(1), &PASSTHROUGH_PARAMS, "Copy one model's tensor, optionally scaled (frankenmerges)."),
        }
    }
}

/// Merge one output tensor. Returns the merged values as f32, already rounded to
/// `inputs.dtype` the way mergekit 0.1.5 returns them; the caller encodes them to the output dtype.
/// Exception: `arcee_fusion` returns mergekit's f32 result unrounded (mergekit's result tensor
/// is f32 for every input dtype; encoding it to `inputs.dtype` gives the rounded values).
///
/// Random methods (dare_*, della*) draw their keep masks from `rng`, keyed by
/// (tensor name, index of the model in `inputs.models`).
pub fn merge_tensor(method: Method, inputs: &MergeInputs, rng: &mut dyn Randomness) -> Result<Vec<f32>, MergeError> {
    merge_tensor_report(method, inputs, rng).map(|(out, _)| out)
}

/// A count of entries: `part` of `whole` (e.g. trimmed entries of the non-zero task-vector
/// entries). Counts add up over the chunks of a tensor merged in element chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Fraction {
    pub part: u64,
    pub whole: u64,
}

impl Fraction {
    pub fn add(&mut self, other: Fraction) {
        self.part += other.part;
        self.whole += other.whole;
    }
    /// `part / whole`, `None` when `whole` is 0.
    pub fn value(self) -> Option<f64> {
        (self.whole > 0).then(|| self.part as f64 / self.whole as f64)
    }
}

/// What a method did to one tensor besides its output: the side channel of the "what the
/// merge did" statistics (`merge::stats`). Never changes the merged values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodReport {
    /// Sparsifying methods (ties, dare_*, breadcrumbs*, della*, sce with `select_topk` < 1):
    /// task-vector entries (all non-base models together) that were non-zero before the
    /// method's trim/drop step and zero after it, of the non-zero entries before it.
    pub trimmed: Option<Fraction>,
    /// Sign-electing methods (ties, dare_ties, breadcrumbs_ties, della, sce): non-zero
    /// (sparsified, weighted) task-vector entries whose sign disagreed with the elected sign
    /// and were left out of the sum, of all non-zero entries entering the election.
    pub elected_away: Option<Fraction>,
    /// slerp / nuslerp: Σ θ over the vectors the method interpolated (radians, θ = acos of the
    /// clamped cosine as the method computed it, also where it fell back to lerp) and their
    /// count: one for the whole tensor, one per line for nuslerp without `nuslerp_flatten`.
    pub slerp_angle: Option<(f64, u64)>,
}

/// `merge_tensor`, also returning what the method reports about what it did (`MethodReport`).
/// The merged values are exactly those of `merge_tensor`.
pub fn merge_tensor_report(method: Method, inputs: &MergeInputs, rng: &mut dyn Randomness) -> Result<(Vec<f32>, MethodReport), MergeError> {
    let ctx = Ctx::new(method, inputs)?;
    let mut report = MethodReport::default();
    let mut out = match method {
        Method::Linear => linear::merge(&ctx)?,
        Method::Slerp => slerp::merge(&ctx, &mut report)?,
        Method::Nuslerp => nuslerp::merge(&ctx, &mut report)?,
        Method::Multislerp => multislerp::merge(&ctx)?,
        Method::Karcher => karcher::merge(&ctx)?,
        Method::TaskArithmetic
        | Method::Ties
        | Method::DareTies
        | Method::DareLinear
        | Method::Breadcrumbs
        | Method::BreadcrumbsTies
        | Method::Della
        | Method::DellaLinear => task_arithmetic::merge(&ctx, rng, &mut report)?,
        Method::ModelStock => model_stock::merge(&ctx)?,
        Method::Nearswap => nearswap::merge(&ctx)?,
        Method::Sce => sce::merge(&ctx, &mut report)?,
        Method::ArceeFusion => arcee_fusion::merge(&ctx)?,
        Method::Passthrough => passthrough::merge(&ctx)?,
    };
    debug_assert_eq!(out.len(), ctx.numel);
    // mergekit returns every merged tensor in the input dtype, except arcee_fusion, whose
    // result is an f32 tensor (see arcee_fusion.rs).
    if ctx.dt != DType::F32 && method != Method::ArceeFusion {
        for v in out.iter_mut() {
            *v = ctx.dt.round(*v);
        }
    }
    Ok((out, report))
}

/// One tensor's inputs, validated against the method's contract, with parameter lookup.
pub(crate) struct Ctx<'a> {
    pub method: Method,
    pub inputs: &'a MergeInputs<'a>,
    /// The loaded dtype D that mergekit computes in.
    pub dt: DType,
    pub numel: usize,
    /// Index of the base model in `inputs.models`; always `None` for `BaseUse::Ignored`.
    pub base: Option<usize>,
    /// Indices of the non-base models in recipe order (every input for `BaseUse::Ignored`).
    pub others: Vec<usize>,
}

impl<'a> Ctx<'a> {
    pub fn new(method: Method, inputs: &'a MergeInputs<'a>) -> Result<Ctx<'a>, MergeError> {
        let info = method.info();
        let numel: usize = inputs.shape.iter().product();
        let bad = |message: String| MergeError::BadInputs { tensor: inputs.tensor.to_string(), method: info.name.to_string(), message };
        if inputs.models.is_empty() {
            return Err(bad("got no input models".into()));
        }
        if numel > u32::MAX as usize {
            return Err(bad(format!("tensor has {numel} elements; at most {} are supported", u32::MAX)));
        }
        for m in &inputs.models {
            if m.data.len() != numel {
                return Err(bad(format!("model {} has {} values but shape {:?} needs {}", m.model, m.data.len(), inputs.shape, numel)));
            }
        }
        if let Some(b) = inputs.base
            && b >= inputs.models.len()
        {
            return Err(bad(format!("base index {b} is out of range for {} models", inputs.models.len())));
        }
        let base = match info.base {
            BaseUse::Ignored => None,
            BaseUse::Required => match inputs.base {
                Some(b) => Some(b),
                None => return Err(bad("requires a base model, and none is an input for this tensor".into())),
            },
            BaseUse::Optional => inputs.base,
        };
        let others: Vec<usize> = (0..inputs.models.len()).filter(|&i| Some(i) != base).collect();
        let what = if info.base == BaseUse::Ignored { "models" } else { "models besides the base" };
        if others.len() < info.min_models {
            return Err(bad(format!("needs at least {} {what}, got {}", info.min_models, others.len())));
        }
        if let Some(max) = info.max_models
            && others.len() > max
        {
            let expect = if max == info.min_models { format!("exactly {max}") } else { format!("at most {max}") };
            return Err(bad(format!("needs {expect} {what}, got {}", others.len())));
        }
        Ok(Ctx { method, inputs, dt: inputs.dtype, numel, base, others })
    }

    pub fn tensor(&self) -> &str {
        self.inputs.tensor
    }

    pub fn data(&self, model: usize) -> &'a [f32] {
        self.inputs.models[model].data
    }

    pub fn model_name(&self, model: usize) -> &'a str {
        self.inputs.models[model].model
    }

    pub fn base_data(&self) -> Option<&'a [f32]> {
        self.base.map(|b| self.data(b))
    }

    /// Round to the input dtype (emulates one torch op on a D tensor).
    #[inline(always)]
    pub fn r(&self, x: f32) -> f32 {
        self.dt.round(x)
    }

    pub fn bad_inputs(&self, message: impl Into<String>) -> MergeError {
        MergeError::BadInputs { tensor: self.tensor().to_string(), method: self.method.name().to_string(), message: message.into() }
    }

    pub fn bad_param(&self, param: &str, message: impl Into<String>) -> MergeError {
        MergeError::BadParameter { tensor: self.tensor().to_string(), param: param.to_string(), message: message.into() }
    }

    fn spec(&self, name: &str) -> &'static ParamSpec {
        self.method
            .info()
            .params
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("internal: method {} reads undeclared parameter {name}", self.method.name()))
    }

    /// Look a parameter up (per-model when `model` is given), falling back to the method default.
    /// `Ok(None)` only for parameters without default that are not required.
    fn lookup(&self, name: &str, model: Option<usize>) -> Result<Option<Scalar>, MergeError> {
        let spec = self.spec(name);
        let params = match model {
            Some(i) => self.inputs.models[i].params,
            None => self.inputs.global,
        };
        if let Some(v) = params.get(name) {
            return Ok(Some(v.clone()));
        }
        match spec.default {
            ParamDefault::Float(v) => Ok(Some(Scalar::Float(v))),
            ParamDefault::Bool(b) => Ok(Some(Scalar::Bool(b))),
            ParamDefault::None if spec.required => Err(MergeError::MissingParameter {
                tensor: self.tensor().to_string(),
                param: name.to_string(),
                model: model.map(|i| self.model_name(i).to_string()),
            }),
            ParamDefault::None => Ok(None),
        }
    }

    fn as_f64(&self, name: &str, model: Option<usize>, v: Scalar) -> Result<f64, MergeError> {
        let who = model.map(|i| format!(" for model {}", self.model_name(i))).unwrap_or_default();
        match v {
            Scalar::Float(f) => Ok(f),
            // pydantic (lax mode) accepts booleans and numeric strings for float parameters.
            Scalar::Bool(b) => Ok(if b { 1.0 } else { 0.0 }),
            Scalar::Str(s) => s.trim().parse::<f64>().map_err(|_| self.bad_param(name, format!("must be a number{who}, got {s:?}"))),
        }
    }

    pub fn opt_f64(&self, name: &str, model: Option<usize>) -> Result<Option<f64>, MergeError> {
        match self.lookup(name, model)? {
            None => Ok(None),
            Some(v) => self.as_f64(name, model, v).map(Some),
        }
    }

    pub fn f64(&self, name: &str, model: Option<usize>) -> Result<f64, MergeError> {
        self.opt_f64(name, model)?.ok_or_else(|| MergeError::MissingParameter {
            tensor: self.tensor().to_string(),
            param: name.to_string(),
            model: model.map(|i| self.model_name(i).to_string()),
        })
    }

    /// A shared float parameter.
    pub fn global_f64(&self, name: &str) -> Result<f64, MergeError> {
        self.f64(name, None)
    }

    /// A per-model float parameter.
    pub fn model_f64(&self, model: usize, name: &str) -> Result<f64, MergeError> {
        self.f64(name, Some(model))
    }

    /// A shared integer parameter (pydantic accepts integral floats).
    pub fn global_int(&self, name: &str) -> Result<i64, MergeError> {
        let v = self.global_f64(name)?;
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(self.bad_param(name, format!("must be an integer, got {v}")));
        }
        Ok(v as i64)
    }

    /// A shared boolean parameter.
    pub fn global_bool(&self, name: &str) -> Result<bool, MergeError> {
        match self.lookup(name, None)? {
            Some(Scalar::Bool(b)) => Ok(b),
            // pydantic (lax mode) accepts 0/1 and the usual strings for booleans.
            Some(Scalar::Float(f)) if f == 0.0 || f == 1.0 => Ok(f == 1.0),
            Some(Scalar::Str(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" | "t" | "y" => Ok(true),
                "false" | "no" | "off" | "0" | "f" | "n" => Ok(false),
                _ => Err(self.bad_param(name, format!("must be true or false, got {s:?}"))),
            },
            Some(other) => Err(self.bad_param(name, format!("must be true or false, got {other:?}"))),
            None => Err(MergeError::MissingParameter { tensor: self.tensor().to_string(), param: name.to_string(), model: None }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Numeric helpers shared by the methods.

/// Sum of f32 values accumulated in f64, rounded once to f32 (an accurate reduction, close to
/// torch's pairwise/vectorized CPU sum).
#[inline]
pub(crate) fn sum_f32(values: impl IntoIterator<Item = f32>) -> f32 {
    values.into_iter().fold(0.0f64, |a, v| a + v as f64) as f32
}

/// Euclidean norm accumulated in f64, rounded once to f32 (`torch.linalg.vector_norm` in f32).
#[inline]
pub(crate) fn norm_f32(values: impl IntoIterator<Item = f32>) -> f32 {
    values.into_iter().fold(0.0f64, |a, v| a + (v as f64) * (v as f64)).sqrt() as f32
}

/// One line of a tensor: the elements `start + k·stride` for `k < len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    pub start: usize,
    pub len: usize,
    pub stride: usize,
}

impl Line {
    /// The whole flattened tensor as one line.
    pub fn whole(numel: usize) -> Line {
        Line { start: 0, len: numel, stride: 1 }
    }

    /// Flat index of the line's `k`-th element.
    #[inline]
    pub fn at(self, k: usize) -> usize {
        self.start + k * self.stride
    }

    /// Flat indices of the line's elements, in order.
    #[inline]
    pub fn iter(self) -> impl Iterator<Item = usize> + Clone {
        (0..self.len).map(move |k| self.start + k * self.stride)
    }
}

/// Calls `f` for every line of a tensor of `shape` along `axis` (outer indices first, then
/// inner). A 0-d tensor is one line of one element.
pub(crate) fn for_each_line(shape: &[usize], axis: usize, mut f: impl FnMut(Line)) {
    if shape.is_empty() {
        return f(Line::whole(1));
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let len = shape[axis];
    for o in 0..outer {
        for i in 0..inner {
            f(Line { start: o * len * inner + i, len, stride: inner });
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use crate::merge::{ModelTensor, Params};

    /// Owned inputs for tests: (model name, data, per-model params).
    pub struct Owned {
        pub tensor: String,
        pub shape: Vec<usize>,
        pub dtype: DType,
        pub models: Vec<(String, Vec<f32>, Params)>,
        pub base: Option<usize>,
        pub global: Params,
    }

    pub fn params(kv: &[(&str, Scalar)]) -> Params {
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    pub fn f(v: f64) -> Scalar {
        Scalar::Float(v)
    }

    pub fn b(v: bool) -> Scalar {
        Scalar::Bool(v)
    }

    impl Owned {
        pub fn new(shape: &[usize]) -> Owned {
            Owned { tensor: "model.layers.0.mlp.up_proj.weight".into(), shape: shape.to_vec(), dtype: DType::F32, models: vec![], base: None, global: Params::new() }
        }
        pub fn model(mut self, data: &[f32], p: &[(&str, Scalar)]) -> Owned {
            let name = format!("m{}", self.models.len());
            self.models.push((name, data.to_vec(), params(p)));
            self
        }
        pub fn base_model(mut self, data: &[f32]) -> Owned {
            self.base = Some(self.models.len());
            self.models.push(("base".into(), data.to_vec(), Params::new()));
            self
        }
        pub fn global(mut self, p: &[(&str, Scalar)]) -> Owned {
            self.global = params(p);
            self
        }
        pub fn dtype(mut self, dt: DType) -> Owned {
            self.dtype = dt;
            self
        }
        pub fn run_rng(&self, method: Method, rng: &mut dyn Randomness) -> Result<Vec<f32>, MergeError> {
            let inputs = MergeInputs {
                tensor: &self.tensor,
                shape: &self.shape,
                dtype: self.dtype,
                models: self.models.iter().map(|(n, d, p)| ModelTensor { model: n, data: d, params: p }).collect(),
                base: self.base,
                global: &self.global,
            };
            merge_tensor(method, &inputs, rng)
        }
        pub fn run(&self, method: Method) -> Result<Vec<f32>, MergeError> {
            self.run_rng(method, &mut crate::merge::rng::SeededRandomness::new(42))
        }
    }

    pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "element {i}: got {g}, want {w} (tol {tol})\ngot  {got:?}\nwant {want:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn every_method_has_info_with_its_name() {
        for m in Method::ALL {
            let i = m.info();
            assert_eq!(i.name, m.name());
            assert_eq!(Method::from_name(i.name).unwrap(), m);
            for p in i.params {
                assert_eq!(p.required, p.default == ParamDefault::None && p.name != "scale", "{}.{}", i.name, p.name);
            }
        }
        let json = serde_json::to_value(Method::Ties.info()).unwrap();
        assert_eq!(json["base"], "required");
        assert_eq!(json["params"][1]["name"], "normalize");
        assert_eq!(json["params"][1]["default"], serde_json::json!({"bool": true}));
        assert_eq!(json["params"][0]["kind"], "bool");
    }

    #[test]
    fn missing_required_parameter_names_tensor_param_and_model() {
        let o = Owned::new(&[2]).base_model(&[0.0, 0.0]).model(&[1.0, 1.0], &[]);
        let e = o.run(Method::TaskArithmetic).unwrap_err();
        match &e {
            MergeError::MissingParameter { tensor, param, model } => {
                assert_eq!(tensor, "model.layers.0.mlp.up_proj.weight");
                assert_eq!(param, "weight");
                assert_eq!(model.as_deref(), Some("m1"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("weight") && e.to_string().contains("m1"));
        let e = Owned::new(&[2]).base_model(&[0.0, 0.0]).model(&[1.0, 1.0], &[]).run(Method::Slerp).unwrap_err();
        assert!(matches!(e, MergeError::MissingParameter { ref param, model: None, .. } if param == "t"), "{e}");
    }

    #[test]
    fn contract_violations_are_errors() {
        // slerp without a base
        let o = Owned::new(&[2]).model(&[0.0, 0.0], &[]).model(&[1.0, 1.0], &[]).global(&[("t", f(0.5))]);
        assert!(matches!(o.run(Method::Slerp), Err(MergeError::BadInputs { .. })));
        // slerp with two non-base models
        let o = Owned::new(&[2]).base_model(&[0.0, 0.0]).model(&[1.0, 1.0], &[]).model(&[2.0, 2.0], &[]).global(&[("t", f(0.5))]);
        let e = o.run(Method::Slerp).unwrap_err();
        assert!(e.to_string().contains("exactly 1"), "{e}");
        // model_stock with one fine-tune
        let o = Owned::new(&[2]).base_model(&[0.0, 0.0]).model(&[1.0, 1.0], &[]);
        assert!(o.run(Method::ModelStock).is_err());
        // passthrough with two inputs
        let o = Owned::new(&[2]).model(&[0.0, 0.0], &[]).model(&[1.0, 1.0], &[]);
        assert!(o.run(Method::Passthrough).is_err());
        // wrong data length
        let o = Owned::new(&[3]).model(&[0.0, 0.0], &[("weight", f(1.0))]);
        let e = o.run(Method::Linear).unwrap_err();
        assert!(e.to_string().contains("m0"), "{e}");
    }

    #[test]
    fn bad_parameter_types_are_errors() {
        let o = Owned::new(&[2]).model(&[0.0, 0.0], &[("weight", Scalar::Str("heavy".into()))]);
        assert!(matches!(o.run(Method::Linear), Err(MergeError::BadParameter { .. })));
        let o = Owned::new(&[2]).model(&[0.0, 0.0], &[("weight", f(1.0))]).global(&[("normalize", f(0.5))]);
        assert!(matches!(o.run(Method::Linear), Err(MergeError::BadParameter { .. })));
    }
}
