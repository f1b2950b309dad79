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
use crate::merge::methods::{MethodReport, merge_tensor_report};
use crate::merge::plan::{ModelSummary, Plan, PlanError, PlannedTensor, TensorMeta, build_plan};
use crate::merge::recipe::{Recipe, RecipeError, TokenizerSource};
use crate::merge::rng::{Randomness, SeededRandomness};
use crate::merge::{MergeError, MergeInputs, ModelTensor};

/// Options of one merge run (the CLI flags; the page's settings).
pub struct MergeOptions<'a> {
    /// Seed of the random sparsifiers (dare_*, della*): same seed, same bytes, native or wasm.
    pub seed: u64,
    /// Maximum bytes of tensor data per output file (`--out-shard-size`); default 5B like mergekit.
    pub out_shard_size: Option<u64>,
    /// Called after each output tensor is written.
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
    /// Polled between tensors; `true` stops the merge with `RunError::Cancelled`.
    pub cancelled: Option<&'a dyn Fn() -> bool>,
    /// Sees every merged tensor (or chunk of one) with its inputs: the "what the merge did"
    /// statistics (`merge::stats`) are computed here while streaming, at no extra read.
    pub observer: Option<&'a mut dyn MergeObserver>,
}

/// Watches a merge tensor by tensor. For a tensor merged in element chunks, `observe` is called
/// once per chunk (`offset` = index of the chunk's first element in the flattened tensor;
/// `inputs.models[i].data` and `merged` are the chunk's values), then `tensor_done` once.
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
    inner: &'a mut dyn OutputDir,
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

/// `run_merge` with a caller-supplied source of random masks (tests inject recorded masks).
#[allow(clippy::result_large_err)]
pub fn run_merge_with(
    recipe: &Recipe,
    open_model: &mut OpenModel,
    out: &mut dyn OutputDir,
    opts: &mut MergeOptions,
    rng: &mut dyn Randomness,
) -> Result<MergeReport, RunError> {
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
    let index_of: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();

    // 2. Plan every output tensor (all structural errors surface here, before any output exists).
    let plan = build_plan(recipe, &summaries)?;
    if plan.tensors.is_empty() {
        return Err(RunError::Invalid("the recipe selects no tensors: nothing to merge".into()));
    }

    // 3. Side files, prepared before any tensor is computed: config.json, tokenizer files,
    //    the recipe. Donor of the config: base model, else the first input; of the tokenizer:
    //    `tokenizer_source`, else the same donor.
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
    side.push((RECIPE_FILE.into(), recipe.to_yaml().into_bytes()));

    // 4. Output layout (shards decided up front, headers written from the plan). mergekit saves
    //    the tensors in its executor's order, which sorts tasks by their group label: for a saved
    //    tensor, the largest of the input tensor names it reads (`GatherTensors.group_label`).
    //    That order decides which shard a tensor lands in and the index's weight_map order.
    let declared: Vec<(String, crate::tensor::DType, Vec<usize>)> = save_order(&plan).into_iter().map(|i| &plan.tensors[i]).map(|t| (t.name.clone(), t.out_dtype, t.shape.clone())).collect();
    let layout = ShardedLayout::new(&declared, opts.out_shard_size.unwrap_or(DEFAULT_SHARD_SIZE)).map_err(|source| RunError::Write { tensor: "(layout)".into(), source })?;
    let order: Vec<usize> = {
        let pos: HashMap<&str, usize> = plan.tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        layout.write_order().map(|(n, _, _)| pos[n.as_str()]).collect()
    };
    let mut out_files: Vec<String> = layout.shards.iter().map(|s| s.file.clone()).collect();
    if layout.shards.len() > 1 {
        out_files.push(crate::formats::checkpoint::INDEX_FILE.to_string());
    }
    let metadata: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let count = Rc::new(Cell::new(0u64));
    let mut counting = CountingDir { inner: out, count: count.clone() };

    // Side sinks are created and filled now but finished only after the weights.
    let mut side_sinks: Vec<Box<dyn ByteSink>> = Vec::with_capacity(side.len());
    for (file, bytes) in &side {
        let mut sink = counting.create(file).map_err(|e| RunError::Output { file: file.clone(), message: e.to_string() })?;
        sink.write_all(bytes).map_err(|e| RunError::Output { file: file.clone(), message: e.to_string() })?;
        side_sinks.push(sink);
    }

    // 5. Stream the tensors.
    let total_tensors = plan.tensors.len();
    let total_bytes = plan.total_bytes();
    let mut writer = ShardedWriter::new(&mut counting, layout, &metadata);
    let max_inputs = plan.tensors.iter().map(|t| t.inputs.len()).max().unwrap_or(0);
    let mut bufs: Vec<Vec<f32>> = (0..max_inputs).map(|_| Vec::new()).collect();
    let mut done_bytes = 0u64;
    for (done, &ti) in order.iter().enumerate() {
        if opts.cancelled.is_some_and(|c| c()) {
            return Err(RunError::Cancelled);
        }
        let t = &plan.tensors[ti];
        for (input, buf) in t.inputs.iter().zip(bufs.iter_mut()) {
            let ck = &mut checkpoints[index_of[input.model.as_str()]];
            ck.read(&input.tensor, buf).map_err(|source| RunError::Read { tensor: t.name.clone(), input: input.tensor.clone(), model: input.model.clone(), source })?;
            if input.file_dtype != t.load_dtype {
                // mergekit casts on load (`x.to(dtype)`): round to the load dtype.
                let d = t.load_dtype;
                buf.iter_mut().for_each(|v| *v = d.round(*v));
            }
        }
        let inputs = MergeInputs {
            tensor: &t.name,
            shape: &t.shape,
            dtype: t.load_dtype,
            models: t.inputs.iter().zip(bufs.iter()).map(|(i, b)| ModelTensor { model: &i.model, data: b, params: &i.params }).collect(),
            base: t.base,
            global: &t.global,
        };
        let (merged, method_report) = merge_tensor_report(t.method, &inputs, rng)?;
        if merged.len() != t.numel() {
            return Err(RunError::Invalid(format!("tensor {}: method {} returned {} values for shape {:?}", t.name, t.method.name(), merged.len(), t.shape)));
        }
        if let Some(o) = opts.observer.as_mut() {
            o.observe(t, &inputs, &merged, 0);
            o.method_report(t, &method_report);
        }
        writer.write_tensor(&t.name, &merged).map_err(|source| RunError::Write { tensor: t.name.clone(), source })?;
        if let Some(o) = opts.observer.as_mut() {
            o.tensor_done(t);
        }
        done_bytes += t.out_bytes();
        if let Some(p) = opts.progress.as_mut() {
            p(&Progress { done_tensors: done + 1, total_tensors, done_bytes, total_bytes, tensor: t.name.clone() });
        }
    }
    if opts.cancelled.is_some_and(|c| c()) {
        return Err(RunError::Cancelled);
    }

    // 6. Finish: weights (and index), then the side files.
    writer.finish().map_err(|source| RunError::Write { tensor: "(finishing the output)".into(), source })?;
    let mut files = out_files;
    for ((file, _), mut sink) in side.iter().zip(side_sinks) {
        sink.finish().map_err(|e| RunError::Output { file: file.clone(), message: e.to_string() })?;
        files.push(file.clone());
    }
    Ok(MergeReport {
        tensors: total_tensors,
        parameters: plan.total_params(),
        bytes_written: count.get(),
        files,
        num_hidden_layers: plan.num_hidden_layers,
        architecture: plan.architecture.name(),
    })
}
