//! A merge the page's worker drives step by step (wasm32 only).
//!
//! `new MergeSession(recipe, files, seed, shardSize, onOutput)` opens the inputs, plans the merge
//! and creates the output files (`onOutput("create", …)` for the side files at once, for the
//! weights as they start); each `step()` merges one output tensor — or one element chunk of a
//! large tensor of an elementwise method (`merge::run::elementwise`) — hands its bytes to
//! `onOutput("chunk", …)` and returns. Between steps the worker awaits its asynchronous disk
//! writes (File System Access writable streams) and reads its messages (cancel), so memory stays
//! bounded by one step's output and a cancel takes effect within one step. `cancel()` (or any error)
//! drops the merge: every output file not yet finished gets `onOutput("abort", file)`.
//!
//! Same engine, same bytes as `crucible merge` (`merge::run::MergeJob`, the loop `run_merge` runs);
//! the "what the merge did" rows (`merge::stats`) come with each step.
//! Reference: mergekit 0.1.5 `mergekit/merge.py` (`run_merge`), see `merge/run.rs`.

use js_sys::Function;
use wasm_bindgen::prelude::*;

use super::{JsOutputDir, read_model_files};
use crate::formats::checkpoint::ModelFiles;
use crate::formats::IoError;
use crate::merge::recipe::Recipe;
use crate::merge::rng::SeededRandomness;
use crate::merge::run::{MergeJob, Step};
use crate::merge::stats::StatsCollector;

/// One merge in progress (see the module docs).
#[wasm_bindgen]
pub struct MergeSession {
    job: Option<MergeJob<'static>>,
    rng: SeededRandomness,
    stats: StatsCollector,
    /// Stats rows already returned by `step`.
    stats_sent: usize,
    total_tensors: usize,
    total_bytes: u64,
}

#[wasm_bindgen]
impl MergeSession {
    /// Open and plan a merge. Arguments as for `merge` (`files`: model reference → its files, as a
    /// `Map`/object of relative path → `File` or `Blob`, or an array of `File`s; `seed`: decimal
    /// u64; `out_shard_size`: like `--out-shard-size`, or empty for mergekit's 5B);
    /// `on_output(kind, file, arg)` as for `merge`. Throws the engine's error (recipe, missing
    /// file, bad header, plan) with nothing created.
    #[wasm_bindgen(constructor)]
    pub fn new(recipe_yaml: &str, files: JsValue, seed: &str, out_shard_size: Option<String>, on_output: Function) -> Result<MergeSession, JsError> {
        let recipe = Recipe::from_yaml(recipe_yaml).map_err(|e| JsError::new(&e.to_string()))?;
        let seed: u64 = seed.trim().parse().map_err(|_| JsError::new(&format!("seed {seed:?} is not a whole number between 0 and 18446744073709551615")))?;
        let out_shard_size = match out_shard_size.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(crate::formats::parse_size(s).map_err(|e| JsError::new(&format!("output shard size: {e}")))?),
        };
        let models = read_model_files(&files).map_err(|m| JsError::new(&m))?;
        let mut open_model = |name: &str| -> Result<Box<dyn ModelFiles>, IoError> {
            match models.get(name) {
                Some(m) => Ok(Box::new(m.clone())),
                None => Err(IoError::new(
                    name,
                    format!(
                        "no files were added for this model in the page (add its folder, or its .safetensors and config.json); models with files: {}",
                        models.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )),
            }
        };
        let out = JsOutputDir { on_output };
        let job = MergeJob::new(&recipe, &mut open_model, Box::new(out), out_shard_size).map_err(|e| JsError::new(&e.to_string()))?;
        let total_tensors = job.plan().tensors.len();
        let total_bytes = job.plan().total_bytes();
        Ok(MergeSession { job: Some(job), rng: SeededRandomness::new(seed), stats: StatsCollector::new(), stats_sent: 0, total_tensors, total_bytes })
    }

    /// Output tensors of the plan.
    #[wasm_bindgen(getter)]
    pub fn total_tensors(&self) -> usize {
        self.total_tensors
    }

    /// Bytes of output tensor data of the plan.
    #[wasm_bindgen(getter)]
    pub fn total_bytes(&self) -> f64 {
        self.total_bytes as f64
    }

    /// Elements per chunk for elementwise methods (default 4 Mi). The bytes do not depend on it.
    pub fn set_chunk_elements(&mut self, n: usize) {
        if let Some(j) = self.job.as_mut() {
            j.set_chunk_elements(n);
        }
    }

    /// Merge the next tensor or chunk. Returns JSON:
    /// `{"kind": "chunk" | "tensor", done_tensors, total_tensors, done_bytes, total_bytes, tensor,
    /// stats: [rows finished since the last step]}`, or after the last tensor (the files are
    /// finished now) `{"kind": "done", files, tensors, parameters, bytes_written, stats: [those
    /// rows], stats_csv: every row as `crucible merge --stats` writes them}`. Throws the engine's
    /// error; the merge is then dropped (its unfinished files aborted).
    pub fn step(&mut self) -> Result<String, JsError> {
        let job = self.job.as_mut().ok_or_else(|| JsError::new("this merge is finished or cancelled"))?;
        let step = match job.step(&mut self.rng, Some(&mut self.stats)) {
            Ok(s) => s,
            Err(e) => {
                self.job = None;
                return Err(JsError::new(&e.to_string()));
            }
        };
        let rows = &self.stats.rows()[self.stats_sent.min(self.stats.rows().len())..];
        self.stats_sent = self.stats.rows().len();
        let rows = serde_json::to_value(rows).unwrap_or_else(|_| serde_json::json!([]));
        let v = match step {
            Step::Chunk(ref p) | Step::Tensor(ref p) => {
                let kind = if matches!(step, Step::Chunk(_)) { "chunk" } else { "tensor" };
                serde_json::json!({
                    "kind": kind,
                    "done_tensors": p.done_tensors,
                    "total_tensors": p.total_tensors,
                    "done_bytes": p.done_bytes,
                    "total_bytes": p.total_bytes,
                    "tensor": p.tensor,
                    "stats": rows,
                })
            }
            Step::Done(report) => {
                self.job = None;
                serde_json::json!({
                    "kind": "done",
                    "files": report.files,
                    "tensors": report.tensors,
                    "parameters": report.parameters,
                    "bytes_written": report.bytes_written,
                    "stats": rows,
                    "stats_csv": self.stats.to_csv(),
                })
            }
        };
        Ok(v.to_string())
    }

    /// Stop the merge: every output file not yet finished gets `on_output("abort", file)`.
    /// Files already finished are the caller's to remove (a merge finishes its files only at the end).
    pub fn cancel(&mut self) {
        self.job = None;
    }
}
