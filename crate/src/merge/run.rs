//! Executing a merge: open the inputs, plan, then stream one output tensor at a time
//! (read each input's tensor → cast to the load dtype → `methods::merge_tensor` → encode to the
//! output dtype → append to the output file), and write config.json, the tokenizer files and
//! `mergekit_config.yml` next to the weights.
//!
//! Reference: mergekit 0.1.5 `mergekit/merge.py` (`run_merge`, `_model_out_config`,
//! `_copy_tokenizer`, `_get_donor_model`), `mergekit/io/tasks.py` (`LoadTensor` casts to `dtype`
//! on load, `SaveTensor` casts to `out_dtype` on save), `mergekit/io/tensor_writer.py` (shards).
//! Semantics: `shared/merge-methods.md` §1.3 (dtypes, output files) and §10 (streaming).
//!
//! Memory: one f32 buffer per input model, each reused from tensor to tensor, plus the merged
//! tensor and the method's temporaries: about (#models + 2) × the largest tensor, never the model.
//! Elementwise methods go further: a tensor larger than [`CHUNK_ELEMENTS`] is read, merged and
//! written in element chunks ([`elementwise`] says which tensors qualify), so their memory is
//! (#models + 2) × one chunk whatever the tensor size; the bytes are identical to a whole-tensor
//! merge because every output element depends only on the same element of each input.
//! `slerp` and the magnitude-ranked sparsifiers (`ties`, `breadcrumbs`, `breadcrumbs_ties`)
//! stream too ([`multipass`], `methods::streaming`): before a large tensor's first chunk is
//! merged, its inputs are read chunk by chunk two or three times (norms and dot; rank histograms
//! and L1 norms), then every chunk is merged with those whole-tensor values: same bytes, memory
//! (#models + 2) × one chunk plus 768 KiB of histograms per sparsified model.
//!
//! Driving: [`MergeJob`] holds an opened, planned merge and advances it one tensor (or one chunk)
//! per [`MergeJob::step`], so the page's worker can await asynchronous disk writes between steps;
//! [`run_merge`] is the loop over those steps that the CLI uses.
//!
//! Model card: a short `README.md` ([`model_card`]) is written next to the weights, from the
//! recipe and the plan only (no clock, no paths other than the recipe's), so the CLI and the page
//! write the same bytes.
//!
//! Nothing half-written: every output sink stays unfinished (a native `NAME.partial`) until all
//! tensors are written; an error or a cancel drops them, which removes the partial files.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::formats::checkpoint::{Checkpoint, ModelFiles, OutputDir};
use crate::formats::io::{ByteSink, IoError};
use crate::formats::safetensors::FormatError;
use crate::formats::sharded::{DEFAULT_SHARD_SIZE, ShardedLayout, ShardedWriter};
use crate::merge::Scalar;
use crate::merge::methods::streaming::{MultiPass, streams_in_passes};
use crate::merge::methods::{Method, MethodReport, merge_tensor_report};
use crate::merge::plan::{ModelSummary, Plan, PlanError, PlannedTensor, TensorMeta, build_plan};
use crate::merge::recipe::{Layout, Parameters, Recipe, RecipeError, Setting, TokenizerSource};
use crate::merge::rng::{Randomness, SeededRandomness};
use crate::merge::{MergeError, MergeInputs, ModelTensor};

/// Options of one merge run (the CLI flags; the page's settings).
pub struct MergeOptions<'a> {
    /// Seed of the random sparsifiers (dare_*, della*): same seed, same bytes, native or wasm.
    pub seed: u64,
    /// Maximum bytes of tensor data per output file (`--out-shard-size`); default 5B like mergekit.
    pub out_shard_size: Option<u64>,
    /// Called after each output tensor is written (not after each chunk).
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
    /// Polled between tensors (and between the chunks of a chunked tensor); `true` stops the
    /// merge with `RunError::Cancelled`.
    pub cancelled: Option<&'a dyn Fn() -> bool>,
    /// Sees every merged tensor (or chunk of one) with its inputs: the "what the merge did"
    /// statistics (`merge::stats`) are computed here while streaming, at no extra read.
    pub observer: Option<&'a mut dyn MergeObserver>,
}

/// Watches a merge tensor by tensor. For a tensor merged in element chunks, `observe` is called
/// once per chunk, in order (`offset` = index of the chunk's first element in the flattened
/// tensor; `inputs.models[i].data` and `merged` are the chunk's values and `inputs.shape` is
/// `[chunk length]`; `t.shape` is the tensor's), then `tensor_done` once. A tensor merged whole
/// is one call with `offset` 0 and `inputs.shape == t.shape`.
pub trait MergeObserver {
    /// `inputs` are the values the method saw (already cast to the load dtype); `merged` is what it
    /// returned (before encoding to the output dtype).
    fn observe(&mut self, t: &PlannedTensor, inputs: &MergeInputs, merged: &[f32], offset: usize);
    /// All of `t` has been observed and written.
    fn tensor_done(&mut self, t: &PlannedTensor);
    /// What the method reported for the values just passed to `observe` (trimmed / elected-away
    /// counts, SLERP angle): called after each `observe`. Counts add up over chunks.
    fn method_report(&mut self, _t: &PlannedTensor, _report: &MethodReport) {}
}

/// Where a running merge is.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub done_tensors: usize,
    pub total_tensors: usize,
    /// Bytes of output tensor data written so far.
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// The tensor just written.
    pub tensor: String,
}

/// What a finished merge wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeReport {
    /// Output tensors.
    pub tensors: usize,
    /// Output parameters (elements of all tensors).
    pub parameters: u64,
    /// Bytes written to all output files (headers, tensor data, side files).
    pub bytes_written: u64,
    /// Output files in the order they were completed (weights, index, then side files).
    pub files: Vec<String>,
    /// Layers of the output model.
    pub num_hidden_layers: usize,
    /// The tensor layout family used ("llama", "qwen2", "generic ...").
    pub architecture: &'static str,
}

/// Why a merge failed. Messages name the model, the tensor and the file involved.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("model {model}: cannot open it: {source}")]
    Open { model: String, source: IoError },
    #[error("model {model}: {source}")]
    Checkpoint { model: String, source: FormatError },
    #[error("tensor {tensor}: reading {input} from model {model}: {source}")]
    Read { tensor: String, input: String, model: String, source: FormatError },
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error("tensor {tensor}: writing the output: {source}")]
    Write { tensor: String, source: FormatError },
    #[error("writing {file}: {message}")]
    Output { file: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("merge cancelled; no output was kept")]
    Cancelled,
}

/// Tokenizer files mergekit 0.1.5 copies from the donor model (`_copy_tokenizer`), in its order.
pub const TOKENIZER_FILES: [&str; 10] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
    "chat_template.json",
    "video_preprocessor_config.json",
];

/// The recipe file written next to the output, as mergekit does.
pub const RECIPE_FILE: &str = "mergekit_config.yml";

/// The model card written next to the output ([`model_card`]).
pub const CARD_FILE: &str = "README.md";

/// Elements per chunk when an elementwise method streams a large tensor (4 Mi: 16 MB per f32
/// buffer; a 32000 × 4096 embedding is 32 chunks).
pub const CHUNK_ELEMENTS: usize = 1 << 22;

/// How `run_merge` opens a model reference (a native directory, the page's `File`s).
pub type OpenModel<'a> = dyn FnMut(&str) -> Result<Box<dyn ModelFiles>, IoError> + 'a;

/// Run a merge with the seeded portable RNG (`SeededRandomness::new(opts.seed)`).
// RunError is large (it carries names and shapes for its messages); it is built once per failed merge.
#[allow(clippy::result_large_err)]
pub fn run_merge(recipe: &Recipe, open_model: &mut OpenModel, out: &mut dyn OutputDir, opts: &mut MergeOptions) -> Result<MergeReport, RunError> {
    let mut rng = SeededRandomness::new(opts.seed);
    run_merge_with(recipe, open_model, out, opts, &mut rng)
}

/// An output sink that counts the bytes it passes on.
struct Counting {
    inner: Box<dyn ByteSink>,
    count: Rc<Cell<u64>>,
}

impl ByteSink for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        self.inner.write_all(bytes)?;
        self.count.set(self.count.get() + bytes.len() as u64);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), IoError> {
        self.inner.finish()
    }
}

struct CountingDir<'a> {
    inner: Box<dyn OutputDir + 'a>,
    count: Rc<Cell<u64>>,
}

impl OutputDir for CountingDir<'_> {
    fn create(&mut self, file: &str) -> Result<Box<dyn ByteSink>, IoError> {
        Ok(Box::new(Counting { inner: self.inner.create(file)?, count: self.count.clone() }))
    }
}

/// A small side file read whole from a model (tokenizer files of a donor that is not an input).
fn read_small(files: &mut dyn ModelFiles, file: &str) -> Result<Option<Vec<u8>>, IoError> {
    if !files.exists(file) {
        return Ok(None);
    }
    let mut src = files.open(file)?;
    let mut buf = vec![0u8; src.len() as usize];
    src.read_at(0, &mut buf)?;
    Ok(Some(buf))
}

/// The output config.json: the donor's, with the layer count of a `slices:` merge and the dtype
/// (`out_dtype`, else `dtype`) updated, key order kept (mergekit `_model_out_config`).
pub fn output_config(plan: &Plan, recipe: &Recipe, donor: &serde_json::Value) -> serde_json::Value {
    let mut cfg = donor.clone();
    if let Some(obj) = cfg.as_object_mut() {
        if plan.layers_changed && plan.architecture != crate::merge::plan::Architecture::Generic {
            obj.insert("num_hidden_layers".into(), serde_json::Value::from(plan.num_hidden_layers));
        }
        if let Some(d) = recipe.out_dtype.or(recipe.dtype) {
            let name = serde_json::Value::from(d.torch_name());
            let mut set = false;
            for key in ["torch_dtype", "dtype"] {
                if let Some(v) = obj.get_mut(key) {
                    *v = name.clone();
                    set = true;
                }
            }
            if !set {
                obj.insert("torch_dtype".into(), name);
            }
        }
    }
    cfg
}

/// Indices into `plan.tensors` in the order mergekit 0.1.5 saves them: stably sorted by the
/// largest input tensor name of each (mergekit `graph.py` `build_schedule`, key `group_label`).
pub fn save_order(plan: &Plan) -> Vec<usize> {
    let label = |i: usize| plan.tensors[i].inputs.iter().map(|x| x.tensor.as_str()).max().unwrap_or("");
    let mut order: Vec<usize> = (0..plan.tensors.len()).collect();
    order.sort_by(|&a, &b| label(a).cmp(label(b)));
    order
}

/// Whether `t` can be merged in element chunks with the same result as whole: every output
/// element is a function of the same element of each input and of per-tensor constants known
/// before reading (weights, `t`, `lambda`, …), never of other elements.
///
/// - `linear`, `task_arithmetic`, `nearswap`, `passthrough`: always (`normalize` divides by a
///   sum of weights, not of values; TIES-style consensus is per element).
/// - `ties`, `dare_ties`, `dare_linear`, `breadcrumbs`, `breadcrumbs_ties`, `della`,
///   `della_linear`: only when no model is sparsified (every non-base `density` ≥ 1, mergekit's
///   no-op): magnitude top-k, Breadcrumbs' sorted ranges, DELLA's per-row ranks and the L1
///   rescale all look at the whole tensor, and DARE's masks are drawn per tensor.
/// - `slerp`, `nuslerp`, `multislerp`, `karcher` (norms and dots), `model_stock` (cosines),
///   `sce` (variance top-k and per-tensor energies), `arcee_fusion` (quantiles): never.
pub fn elementwise(t: &PlannedTensor) -> bool {
    match t.method {
        Method::Linear | Method::TaskArithmetic | Method::Nearswap | Method::Passthrough => true,
        Method::Ties | Method::DareTies | Method::DareLinear | Method::Breadcrumbs | Method::BreadcrumbsTies | Method::Della | Method::DellaLinear => {
            t.inputs.iter().enumerate().filter(|(i, _)| Some(*i) != t.base).all(|(_, input)| match input.params.get("density") {
                // mergekit's default density is 1.0 for every task-vector method
                None => true,
                Some(Scalar::Float(d)) => *d >= 1.0,
                Some(Scalar::Bool(b)) => *b,
                // a string the method would parse: decide the same way, else merge whole (and
                // let the method report the bad value)
                Some(Scalar::Str(s)) => s.trim().parse::<f64>().is_ok_and(|d| d >= 1.0),
            })
        }
        Method::Slerp | Method::Nuslerp | Method::Multislerp | Method::Karcher | Method::ModelStock | Method::Sce | Method::ArceeFusion => false,
    }
}

/// Whether `t` is merged in element chunks with several passes over its inputs
/// (`methods::streaming`): `slerp` (norms, then the dot, then the output), and `ties`,
/// `breadcrumbs`, `breadcrumbs_ties` when something is sparsified (exact radix selection of the
/// magnitude ranks, then the output). Same bytes as whole; memory a few chunks.
pub fn multipass(t: &PlannedTensor) -> bool {
    !elementwise(t) && streams_in_passes(t.method)
}

/// Whether `t` streams in element chunks at all ([`elementwise`] or [`multipass`]) when it is
/// larger than the chunk size.
pub fn streams(t: &PlannedTensor) -> bool {
    elementwise(t) || multipass(t)
}

/// Read every input of `t` (elements `range`, else whole) into `bufs`, cast to the load dtype.
#[allow(clippy::result_large_err)]
fn read_inputs(checkpoints: &mut [Checkpoint], index_of: &HashMap<String, usize>, t: &PlannedTensor, bufs: &mut [Vec<f32>], range: Option<(usize, usize)>) -> Result<(), RunError> {
    for (input, buf) in t.inputs.iter().zip(bufs.iter_mut()) {
        let ck = &mut checkpoints[index_of[input.model.as_str()]];
        let read = match range {
            Some((start, len)) => ck.read_range(&input.tensor, start, len, buf),
            None => ck.read(&input.tensor, buf),
        };
        read.map_err(|source| RunError::Read { tensor: t.name.clone(), input: input.tensor.clone(), model: input.model.clone(), source })?;
        if input.file_dtype != t.load_dtype {
            // mergekit casts on load (`x.to(dtype)`): round to the load dtype.
            let d = t.load_dtype;
            buf.iter_mut().for_each(|v| *v = d.round(*v));
        }
    }
    Ok(())
}

/// The method's view of the buffers just read (`shape`: the tensor's, or `[chunk length]`).
fn inputs_of<'a>(t: &'a PlannedTensor, bufs: &'a [Vec<f32>], shape: &'a [usize]) -> MergeInputs<'a> {
    MergeInputs {
        tensor: &t.name,
        shape,
        dtype: t.load_dtype,
        models: t.inputs.iter().zip(bufs.iter()).map(|(i, b)| ModelTensor { model: &i.model, data: b, params: &i.params }).collect(),
        base: t.base,
        global: &t.global,
    }
}

/// One parameter setting as the model card shows it.
fn describe_setting(s: &Setting) -> String {
    match s {
        Setting::Scalar(v) => v.describe(),
        Setting::Gradient(vs) => format!("[{}] (gradient over the layers)", vs.iter().map(|v| v.describe()).collect::<Vec<_>>().join(", ")),
        Setting::Filters(fs) => fs
            .iter()
            .map(|f| format!("{}: {}", f.filter.as_deref().unwrap_or("default"), describe_setting(&f.value)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn describe_params(p: &Parameters) -> String {
    p.0.iter().map(|(k, v)| format!("{k} = {}", describe_setting(v))).collect::<Vec<_>>().join(", ")
}

/// A Markdown code span holding `s` whatever backticks it contains (CommonMark: a longer fence).
fn code(s: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML 1.2).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// The model card (`README.md`) of a merge: Hugging Face front matter (`base_model`: every model
/// merged, `tags: [merge, mergekit, crucible]`, `library_name: transformers`), how it was made
/// (method, base, models or slices with their parameters, dtypes, tokenizer, the output's size),
/// the recipe as `mergekit_config.yml` holds it, and the Crucible version. It depends on the
/// recipe and the plan only — no clock, no machine — so every run of a recipe writes the same bytes.
pub fn model_card(recipe: &Recipe, plan: &Plan) -> String {
    let mut o = String::new();
    o.push_str("---\nbase_model:\n");
    for m in recipe.referenced_models() {
        o.push_str(&format!("- {}\n", yaml_str(&m)));
    }
    o.push_str("library_name: transformers\ntags:\n- merge\n- mergekit\n- crucible\n---\n\n");
    o.push_str("# Merged model\n\n");
    let method = recipe.merge_method;
    o.push_str(&format!(
        "This model is a merge of pre-trained language models made with Crucible, which runs mergekit {} recipes in the browser or with its `crucible merge` command.\n\n",
        crate::formats::sharded::MERGEKIT_VERSION
    ));
    o.push_str("## How it was made\n\n");
    o.push_str(&format!("- **Method:** {} — {}\n", code(method.name()), method.info().help));
    match &recipe.base_model {
        Some(b) => o.push_str(&format!("- **Base model:** {}\n", code(b))),
        None => o.push_str("- **Base model:** none\n"),
    }
    match &recipe.layout {
        Layout::Models(ms) => {
            o.push_str("- **Models:**\n");
            for m in ms {
                let p = if m.parameters.is_empty() { String::new() } else { format!(" ({})", describe_params(&m.parameters)) };
                o.push_str(&format!("  - {}{p}\n", code(&m.model)));
            }
        }
        Layout::Slices(ss) => {
            o.push_str("- **Slices** (output layers in order):\n");
            for (i, sl) in ss.iter().enumerate() {
                let srcs: Vec<String> = sl
                    .sources
                    .iter()
                    .map(|src| {
                        let p = if src.parameters.is_empty() { String::new() } else { format!(" ({})", describe_params(&src.parameters)) };
                        format!("{} layers {}–{}{p}", code(&src.model), src.layer_range[0], src.layer_range[1])
                    })
                    .collect();
                let extra = if sl.parameters.is_empty() { String::new() } else { format!("; parameters: {}", describe_params(&sl.parameters)) };
                o.push_str(&format!("  {}. {}{extra}\n", i + 1, srcs.join(" + ")));
            }
        }
    }
    if !recipe.parameters.is_empty() {
        o.push_str(&format!("- **Parameters:** {}\n", describe_params(&recipe.parameters)));
    }
    if let Some(d) = recipe.dtype {
        o.push_str(&format!("- **Loaded as:** {}\n", d.torch_name()));
    }
    let mut out_dtypes: Vec<&str> = Vec::new();
    for t in &plan.tensors {
        let n = t.out_dtype.torch_name();
        if !out_dtypes.contains(&n) {
            out_dtypes.push(n);
        }
    }
    match &recipe.tokenizer_source {
        Some(TokenizerSource::Base) => o.push_str("- **Tokenizer:** from the base model\n"),
        Some(TokenizerSource::Model(m)) => o.push_str(&format!("- **Tokenizer:** from {}\n", code(m))),
        None => o.push_str(&format!("- **Config and tokenizer:** from {}\n", code(&plan.config_donor))),
    }
    o.push_str(&format!(
        "- **Output:** {} tensors, {} parameters, {} layers ({} layout), saved as {}\n\n",
        plan.tensors.len(),
        plan.total_params(),
        plan.num_hidden_layers,
        plan.architecture.name(),
        out_dtypes.join(", ")
    ));
    o.push_str("## Recipe\n\n");
    o.push_str(&format!("The same recipe is in `{RECIPE_FILE}`; `mergekit-yaml {RECIPE_FILE} OUTPUT_DIR` runs it with mergekit.\n\n"));
    let yaml = recipe.to_yaml();
    let mut longest = 0;
    for line in yaml.lines() {
        let n = line.chars().take_while(|&c| c == '`').count();
        longest = longest.max(n);
    }
    let fence = "`".repeat(longest.max(2) + 1);
    o.push_str(&format!("{fence}yaml\n{yaml}"));
    if !yaml.ends_with('\n') {
        o.push('\n');
    }
    o.push_str(&format!("{fence}\n\nMade with Crucible {}.\n", env!("CARGO_PKG_VERSION")));
    o
}

/// `run_merge` with a caller-supplied source of random masks (tests inject recorded masks).
#[allow(clippy::result_large_err)]
pub fn run_merge_with(
    recipe: &Recipe,
    open_model: &mut OpenModel,
    out: &mut dyn OutputDir,
    opts: &mut MergeOptions,
    rng: &mut dyn Randomness,
) -> Result<MergeReport, RunError> {
    let mut job = MergeJob::new(recipe, open_model, Box::new(out), opts.out_shard_size)?;
    loop {
        if opts.cancelled.is_some_and(|c| c()) {
            return Err(RunError::Cancelled);
        }
        let observer: Option<&mut dyn MergeObserver> = match opts.observer {
            Some(ref mut o) => Some(&mut **o),
            None => None,
        };
        match job.step(rng, observer)? {
            Step::Chunk(_) => {}
            Step::Tensor(p) => {
                if let Some(cb) = opts.progress.as_mut() {
                    cb(&p);
                }
            }
            Step::Done(report) => return Ok(report),
        }
    }
}

/// What one [`MergeJob::step`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Merged and wrote one element chunk of a tensor (`Progress::tensor`), not its last.
    Chunk(Progress),
    /// Finished an output tensor (whole, or its last chunk).
    Tensor(Progress),
    /// Finished the output files: the merge is complete.
    Done(MergeReport),
}

/// A merge opened and planned, executed one tensor (or element chunk) per [`MergeJob::step`].
/// Dropping it before `Step::Done` (an error, a cancel) drops every output sink unfinished, which
/// leaves nothing that looks complete.
pub struct MergeJob<'o> {
    checkpoints: Vec<Checkpoint>,
    index_of: HashMap<String, usize>,
    plan: Plan,
    /// Indices into `plan.tensors` in write order.
    order: Vec<usize>,
    writer: Option<ShardedWriter<CountingDir<'o>>>,
    /// Side files (config, tokenizer, card, recipe), written at the start, finished last.
    side: Vec<(String, Box<dyn ByteSink>)>,
    count: Rc<Cell<u64>>,
    /// One reused f32 buffer per input of the current tensor.
    bufs: Vec<Vec<f32>>,
    /// Position in `order` of the tensor being merged.
    pos: usize,
    /// Elements of that tensor already written (chunked tensors).
    offset: usize,
    done_bytes: u64,
    chunk: usize,
    /// The multi-pass streaming state of the tensor being merged in chunks, if it needs one.
    multipass: Option<MultiPass>,
}

impl<'o> MergeJob<'o> {
    /// Open every input (headers only), plan every output tensor (all structural errors surface
    /// here, before any output exists), and create the output files: the side files are written
    /// now (finished last), the weights as `step` produces them.
    #[allow(clippy::result_large_err)]
    pub fn new(recipe: &Recipe, open_model: &mut OpenModel, out: Box<dyn OutputDir + 'o>, out_shard_size: Option<u64>) -> Result<MergeJob<'o>, RunError> {
        // 1. Open every input (headers only) and summarize it for the planner.
        let names = recipe.referenced_models();
        let mut checkpoints: Vec<Checkpoint> = Vec::with_capacity(names.len());
        let mut summaries: Vec<ModelSummary> = Vec::with_capacity(names.len());
        for name in &names {
            let files = open_model(name).map_err(|source| RunError::Open { model: name.clone(), source })?;
            let mut ck = Checkpoint::open(files).map_err(|source| RunError::Checkpoint { model: name.clone(), source })?;
            let config = ck.config().map_err(|source| RunError::Checkpoint { model: name.clone(), source })?;
            let tensors: Vec<(String, TensorMeta)> = ck
                .tensor_names()
                .filter_map(|t| ck.info(t).map(|i| (t.to_string(), TensorMeta { dtype: i.dtype, shape: i.shape.clone() })))
                .collect();
            summaries.push(ModelSummary::new(name.clone(), config, tensors));
            checkpoints.push(ck);
        }
        let index_of: HashMap<String, usize> = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();

        // 2. Plan every output tensor.
        let plan = build_plan(recipe, &summaries)?;
        if plan.tensors.is_empty() {
            return Err(RunError::Invalid("the recipe selects no tensors: nothing to merge".into()));
        }

        // 3. Side files, prepared before any tensor is computed: config.json, tokenizer files,
        //    the model card, the recipe. Donor of the config: base model, else the first input;
        //    of the tokenizer: `tokenizer_source`, else the same donor.
        let mut side: Vec<(String, Vec<u8>)> = Vec::new();
        let donor_idx = index_of[plan.config_donor.as_str()];
        if let Some(cfg) = &summaries[donor_idx].config {
            let mut text = serde_json::to_string_pretty(&output_config(&plan, recipe, cfg)).map_err(|e| RunError::Invalid(format!("config.json: {e}")))?;
            text.push('\n');
            side.push(("config.json".into(), text.into_bytes()));
        }
        let tok_donor: String = match &recipe.tokenizer_source {
            Some(TokenizerSource::Base) => recipe.base_model.clone().ok_or_else(|| RunError::Invalid("`tokenizer_source: base` needs a `base_model`".into()))?,
            Some(TokenizerSource::Model(m)) => m.clone(),
            None => plan.config_donor.clone(),
        };
        let mut tok_files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut push_tok = |file: &str, got: Option<Vec<u8>>| {
            if let Some(bytes) = got {
                tok_files.push((file.to_string(), bytes));
            }
        };
        match index_of.get(tok_donor.as_str()) {
            Some(&i) => {
                for f in TOKENIZER_FILES {
                    let got = checkpoints[i].read_file(f).map_err(|source| RunError::Checkpoint { model: tok_donor.clone(), source })?;
                    push_tok(f, got);
                }
                if checkpoints[i].read_file("tokenizer.json").map_err(|source| RunError::Checkpoint { model: tok_donor.clone(), source })?.is_none() {
                    let got = checkpoints[i].read_file("vocab.json").map_err(|source| RunError::Checkpoint { model: tok_donor.clone(), source })?;
                    push_tok("vocab.json", got);
                }
            }
            None => {
                let mut files = open_model(&tok_donor).map_err(|source| RunError::Open { model: tok_donor.clone(), source })?;
                for f in TOKENIZER_FILES {
                    let got = read_small(files.as_mut(), f).map_err(|source| RunError::Open { model: tok_donor.clone(), source })?;
                    push_tok(f, got);
                }
                if !files.exists("tokenizer.json") {
                    let got = read_small(files.as_mut(), "vocab.json").map_err(|source| RunError::Open { model: tok_donor.clone(), source })?;
                    push_tok("vocab.json", got);
                }
            }
        }
        side.extend(tok_files);
        side.push((CARD_FILE.into(), model_card(recipe, &plan).into_bytes()));
        side.push((RECIPE_FILE.into(), recipe.to_yaml().into_bytes()));

        // 4. Output layout (shards decided up front, headers written from the plan). mergekit saves
        //    the tensors in its executor's order, which sorts tasks by their group label: for a saved
        //    tensor, the largest of the input tensor names it reads (`GatherTensors.group_label`).
        //    That order decides which shard a tensor lands in and the index's weight_map order.
        let declared: Vec<(String, crate::tensor::DType, Vec<usize>)> = save_order(&plan).into_iter().map(|i| &plan.tensors[i]).map(|t| (t.name.clone(), t.out_dtype, t.shape.clone())).collect();
        let layout = ShardedLayout::new(&declared, out_shard_size.unwrap_or(DEFAULT_SHARD_SIZE)).map_err(|source| RunError::Write { tensor: "(layout)".into(), source })?;
        let order: Vec<usize> = {
            let pos: HashMap<&str, usize> = plan.tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
            layout.write_order().map(|(n, _, _)| pos[n.as_str()]).collect()
        };
        let metadata: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let count = Rc::new(Cell::new(0u64));
        let mut writer = ShardedWriter::new(CountingDir { inner: out, count: count.clone() }, layout, &metadata);

        // Side sinks are created and filled now but finished only after the weights.
        let mut side_sinks: Vec<(String, Box<dyn ByteSink>)> = Vec::with_capacity(side.len());
        for (file, bytes) in side {
            let mut sink = writer.out_mut().create(&file).map_err(|e| RunError::Output { file: file.clone(), message: e.to_string() })?;
            sink.write_all(&bytes).map_err(|e| RunError::Output { file: file.clone(), message: e.to_string() })?;
            side_sinks.push((file, sink));
        }
        let max_inputs = plan.tensors.iter().map(|t| t.inputs.len()).max().unwrap_or(0);
        Ok(MergeJob {
            checkpoints,
            index_of,
            plan,
            order,
            writer: Some(writer),
            side: side_sinks,
            count,
            bufs: (0..max_inputs).map(|_| Vec::new()).collect(),
            pos: 0,
            offset: 0,
            done_bytes: 0,
            chunk: CHUNK_ELEMENTS,
            multipass: None,
        })
    }

    /// Elements per chunk for elementwise methods (default [`CHUNK_ELEMENTS`]; at least 1).
    /// Tests set it small to check that chunked and whole merges write the same bytes.
    pub fn set_chunk_elements(&mut self, n: usize) {
        self.chunk = n.max(1);
    }

    /// The plan being executed.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Output tensors written so far.
    pub fn done_tensors(&self) -> usize {
        self.pos
    }

    /// Merge and write the next tensor, or the next chunk of it; after the last one, finish the
    /// output files (`Step::Done`). Calling `step` again after `Done` is an error.
    #[allow(clippy::result_large_err)]
    pub fn step(&mut self, rng: &mut dyn Randomness, observer: Option<&mut dyn MergeObserver>) -> Result<Step, RunError> {
        let total_tensors = self.plan.tensors.len();
        let total_bytes = self.plan.total_bytes();
        if self.pos == self.order.len() {
            return self.finish().map(Step::Done);
        }
        let writer = self.writer.as_mut().ok_or_else(|| RunError::Invalid("the merge is already finished".into()))?;
        let t = &self.plan.tensors[self.order[self.pos]];
        let numel = t.numel();
        let chunked = numel > self.chunk && streams(t);
        let (start, len) = if chunked { (self.offset, self.chunk.min(numel - self.offset)) } else { (0, numel) };
        if chunked && start == 0 && multipass(t) {
            // The passes over the whole tensor (norms, dots, rank histograms), chunk by chunk,
            // before its first chunk is merged.
            self.multipass = None;
            read_inputs(&mut self.checkpoints, &self.index_of, t, &mut self.bufs, Some((0, len)))?;
            let shape = [len];
            let mp = MultiPass::new(t.method, &inputs_of(t, &self.bufs, &shape), numel)?;
            if let Some(mut mp) = mp {
                for pass in 0..mp.passes() {
                    for s in (0..numel).step_by(self.chunk) {
                        let l = self.chunk.min(numel - s);
                        read_inputs(&mut self.checkpoints, &self.index_of, t, &mut self.bufs, Some((s, l)))?;
                        let shape = [l];
                        mp.feed(pass, &inputs_of(t, &self.bufs, &shape))?;
                    }
                    mp.finish_pass(pass);
                }
                self.multipass = Some(mp);
            } else {
                return Err(RunError::Invalid(format!("tensor {}: method {} cannot be streamed in passes", t.name, t.method.name())));
            }
        }
        read_inputs(&mut self.checkpoints, &self.index_of, t, &mut self.bufs, chunked.then_some((start, len)))?;
        let chunk_shape = [len];
        let inputs = inputs_of(t, &self.bufs, if chunked { &chunk_shape } else { &t.shape });
        let (merged, method_report) = match self.multipass.as_mut() {
            Some(mp) if chunked => mp.merge_chunk(&inputs)?,
            _ => merge_tensor_report(t.method, &inputs, rng)?,
        };
        if merged.len() != len {
            return Err(RunError::Invalid(format!("tensor {}: method {} returned {} values for shape {:?}", t.name, t.method.name(), merged.len(), inputs.shape)));
        }
        let mut observer = observer;
        if let Some(o) = observer.as_mut() {
            o.observe(t, &inputs, &merged, start);
            o.method_report(t, &method_report);
        }
        drop(inputs);
        let written = if chunked { writer.write_tensor_part(&t.name, &merged) } else { writer.write_tensor(&t.name, &merged) };
        written.map_err(|source| RunError::Write { tensor: t.name.clone(), source })?;
        let size = t.out_dtype.size() as u64;
        if chunked && start + len < numel {
            self.offset = start + len;
            let done_bytes = self.done_bytes + self.offset as u64 * size;
            return Ok(Step::Chunk(Progress { done_tensors: self.pos, total_tensors, done_bytes, total_bytes, tensor: t.name.clone() }));
        }
        if let Some(o) = observer.as_mut() {
            o.tensor_done(t);
        }
        self.done_bytes += t.out_bytes();
        self.offset = 0;
        self.multipass = None;
        self.pos += 1;
        Ok(Step::Tensor(Progress { done_tensors: self.pos, total_tensors, done_bytes: self.done_bytes, total_bytes, tensor: t.name.clone() }))
    }

    /// Finish: weights (and index), then the side files.
    #[allow(clippy::result_large_err)]
    fn finish(&mut self) -> Result<MergeReport, RunError> {
        let writer = self.writer.take().ok_or_else(|| RunError::Invalid("the merge is already finished".into()))?;
        let (mut files, _out) = writer.finish().map_err(|source| RunError::Write { tensor: "(finishing the output)".into(), source })?;
        for (file, mut sink) in self.side.drain(..) {
            sink.finish().map_err(|e| RunError::Output { file: file.clone(), message: e.to_string() })?;
            files.push(file);
        }
        Ok(MergeReport {
            tensors: self.plan.tensors.len(),
            parameters: self.plan.total_params(),
            bytes_written: self.count.get(),
            files,
            num_hidden_layers: self.plan.num_hidden_layers,
            architecture: self.plan.architecture.name(),
        })
    }
}
