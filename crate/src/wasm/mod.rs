//! The JavaScript boundary (wasm32 only). The page calls these functions from a Web Worker
//! (`web/src/merge.worker.ts`), never from the UI thread, so that a long merge never blocks it.
//!
//! Every exported function returns `Result<_, JsError>` (thrown in JS as an `Error` whose message
//! is the engine's error: it names the file, the tensor, the model or the YAML line). Nothing here
//! panics on bad input; a panic anyway (a bug) is logged with its message by
//! `console_error_panic_hook`.
//!
//! Data path of a merge in the browser:
//!   `File`s picked by the user (per model: relative path → `File`)
//!     → `BlobSource` (`ByteSource`: `blob.slice(a, b)` read with `FileReaderSync`, one tensor at a time)
//!     → `MergeSession` (`merge_session.rs`: `MergeJob` steps, the same engine as the CLI)
//!     → `JsOutputDir` / `JsSink` (`ByteSink`: chunks of ≤ 4 MiB handed to `on_output`)
//!     → the worker collects them into `Blob`s the page offers for download.

pub mod plan;
pub mod merge_session;
mod generate;

use std::collections::BTreeMap;

use js_sys::{Array, Function, Map, Object, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::formats::checkpoint::{ModelFiles, OutputDir};
use crate::formats::{ByteSink, ByteSource, IoError};
use crate::merge::methods::Method;
use crate::merge::recipe::{Recipe, RecipeError};

thread_local! {
    /// The message of the last panic (a bug), for `last_panic`.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs once when the module is instantiated: panics (bugs: bad input is an error value, never a
/// panic) are logged with their message and kept for `last_panic`.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        let msg = info.to_string();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
    }));
}

/// The message of the last panic, if one happened. After a panic the module's state is not to be
/// trusted: the page shows this message and replaces the worker.
#[wasm_bindgen]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow().clone())
}

/// The crate version (shown in the page footer).
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Every merge method with its parameter list, as JSON: `[MethodInfo, ...]` in registry order
/// (`name`, `base`, `min_models`, `max_models`, `params: [{name, per_model, kind, default,
/// required, help}]`, `help`). The page builds its parameter form from this.
#[wasm_bindgen]
pub fn methods() -> Result<String, JsError> {
    let infos: Vec<_> = Method::ALL.iter().map(|m| m.info()).collect();
    serde_json::to_string(&infos).map_err(|e| JsError::new(&format!("method list: {e}")))
}

/// Checks a recipe. Returns JSON, never throws for a bad recipe:
/// `{"ok": true, "tree": <the YAML as JSON>}` or
/// `{"ok": false, "message": "...", "line": L, "column": C, "tree": <JSON or null>}`
/// (`line`/`column` are 1-based and present when the YAML itself does not parse). `tree` lets the
/// page fill its form from YAML typed by the user.
#[wasm_bindgen]
pub fn parse_recipe(yaml: &str) -> Result<String, JsError> {
    let result = match serde_yaml_ng::from_str::<serde_json::Value>(yaml) {
        Err(e) => {
            let loc = e.location();
            serde_json::json!({
                "ok": false,
                "message": e.to_string(),
                "line": loc.as_ref().map(|l| l.line()),
                "column": loc.as_ref().map(|l| l.column()),
                "tree": null,
            })
        }
        Ok(tree) => match Recipe::from_yaml(yaml) {
            Ok(_) => serde_json::json!({ "ok": true, "tree": tree }),
            Err(RecipeError::Syntax { line, column, message }) => {
                serde_json::json!({ "ok": false, "message": message, "line": line, "column": column, "tree": tree })
            }
            Err(e) => serde_json::json!({ "ok": false, "message": e.to_string(), "tree": tree }),
        },
    };
    Ok(result.to_string())
}

/// Merges the models of `recipe_yaml` and streams the output files to `on_output`.
///
/// - `files`: a `Map` (or plain object) from each model reference used in the recipe (`model:`
///   and `base_model:` values) to that model's files: either a `Map`/object from relative path
///   (`model.safetensors`, `config.json`, `model-00001-of-00002.safetensors`, ...) to `File`, or an
///   array of `File`s (keyed by `File.name`).
/// - `seed`: decimal u64 for the random methods (DARE, DELLA); the CLI's `--seed` gives the same bytes.
/// - `out_shard_size`: tensor bytes per output file, like the CLI's `--out-shard-size` (`"500M"`,
///   `"5B"`: K/M/B = thousand/million/billion; `"0"` never shards), or `undefined`/`""` for
///   mergekit's default.
/// - `on_progress({done_tensors, total_tensors, done_bytes, total_bytes, tensor, stats})` after each
///   tensor; `stats`: the `merge::stats::StatsRow`s finished since the previous call (JSON objects).
///   The returned summary has `stats` (all rows) and `stats_csv` (the CLI's `--stats` CSV).
/// - `on_output(kind, file, chunk)`: `kind` is `"create"`, `"chunk"` (with a `Uint8Array` that JS
///   owns), `"finish"` (the file is complete) or `"abort"` (an error: discard the file).
///
/// Must run in a Web Worker (`FileReaderSync`). Returns a short JSON summary of what was written.
#[wasm_bindgen]
pub fn merge(
    recipe_yaml: &str,
    files: JsValue,
    seed: &str,
    out_shard_size: Option<String>,
    on_progress: Function,
    on_output: Function,
) -> Result<String, JsError> {
    // The one-shot form of `MergeSession`: the same steps, run back to back.
    let mut session = merge_session::MergeSession::new(recipe_yaml, files, seed, out_shard_size, on_output)?;
    let mut all_rows: Vec<serde_json::Value> = Vec::new();
    loop {
        let step = session.step()?;
        let mut v: serde_json::Value = serde_json::from_str(&step).map_err(|e| JsError::new(&format!("internal error: step summary: {e}")))?;
        if let Some(rows) = v.get("stats").and_then(|r| r.as_array()) {
            all_rows.extend(rows.iter().cloned());
        }
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("done") => {
                v["stats"] = serde_json::Value::Array(all_rows);
                if let Some(o) = v.as_object_mut() {
                    o.remove("kind");
                }
                return Ok(v.to_string());
            }
            Some("tensor") => {
                let o = js_sys::JSON::parse(&step).map_err(|e| JsError::new(&js_message(&e)))?;
                let _ = on_progress.call1(&JsValue::NULL, &o);
            }
            _ => {}
        }
    }
}

/// A `File`, or a `Blob` (a cached download) seen as a `File` named after its path: the data is
/// not copied (a `File` made from a `Blob` refers to the same bytes).
fn as_file(v: JsValue, path: &str) -> Option<web_sys::File> {
    if let Some(f) = v.dyn_ref::<web_sys::File>() {
        return Some(f.clone());
    }
    let blob = v.dyn_into::<web_sys::Blob>().ok()?;
    let name = path.rsplit('/').next().unwrap_or(path);
    web_sys::File::new_with_blob_sequence(&Array::of1(&blob), name).ok()
}

/// One model's files (a `Map`/object from relative path to `File` or `Blob`, or an array of
/// `File`s keyed by name) → (path, file) pairs; `name` names the model in messages.
pub(crate) fn read_model_list(name: &str, value: &JsValue) -> Result<Vec<(String, web_sys::File)>, String> {
    let mut list = Vec::new();
    if Array::is_array(value) {
        for f in Array::from(value).iter() {
            let file: web_sys::File = f.dyn_into().map_err(|_| format!("files for model {name}: expected File objects in the array (or a Map from path to File or Blob)"))?;
            list.push((file.name(), file));
        }
    } else {
        for (path, f) in entries(value).map_err(|e| format!("files for model {name}: {e}"))? {
            let file = as_file(f, &path).ok_or_else(|| format!("files for model {name}: {path} is not a File or a Blob"))?;
            list.push((path, file));
        }
    }
    Ok(list)
}

/// The `files` argument (model name → its files) → model name → `JsModelFiles`.
pub(crate) fn read_model_files(files: &JsValue) -> Result<BTreeMap<String, JsModelFiles>, String> {
    let mut models = BTreeMap::new();
    for (name, value) in entries(files).map_err(|e| format!("files: {e}"))? {
        let files = read_model_list(&name, &value)?;
        models.insert(name.clone(), JsModelFiles { name, files });
    }
    Ok(models)
}

/// Key/value pairs of a JS `Map` or plain object, keys as strings.
fn entries(v: &JsValue) -> Result<Vec<(String, JsValue)>, &'static str> {
    let mut out = Vec::new();
    if let Some(map) = v.dyn_ref::<Map>() {
        let mut err = None;
        map.for_each(&mut |value, key| match key.as_string() {
            Some(k) => out.push((k, value)),
            None => err = Some("Map keys must be strings"),
        });
        if let Some(e) = err {
            return Err(e);
        }
    } else if v.is_object() {
        for pair in Object::entries(v.unchecked_ref()).iter() {
            let pair = Array::from(&pair);
            out.push((pair.get(0).as_string().unwrap_or_default(), pair.get(1)));
        }
    } else {
        return Err("expected a Map or an object");
    }
    Ok(out)
}

/// One model's files as the user picked them.
#[derive(Clone)]
pub(crate) struct JsModelFiles {
    pub(crate) name: String,
    /// (relative path inside the model folder, file)
    pub(crate) files: Vec<(String, web_sys::File)>,
}

impl JsModelFiles {
    fn find(&self, file: &str) -> Option<&web_sys::File> {
        // Exact relative path first, then the last path component (a folder picked with its
        // parent folder's name in front, or files picked one by one).
        let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
        self.files
            .iter()
            .find(|(p, _)| p == file)
            .or_else(|| self.files.iter().find(|(p, _)| base(p) == base(file)))
            .map(|(_, f)| f)
    }
}

impl ModelFiles for JsModelFiles {
    fn name(&self) -> &str {
        &self.name
    }
    fn open(&mut self, file: &str) -> Result<Box<dyn ByteSource>, IoError> {
        let display = format!("{}/{}", self.name, file);
        let f = self.find(file).ok_or_else(|| IoError::new(&display, "file not found among the files added for this model"))?;
        Ok(Box::new(BlobSource::new(display, f.clone())?))
    }
    fn exists(&self, file: &str) -> bool {
        self.find(file).is_some()
    }
    fn list(&self) -> Vec<String> {
        self.files.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// A `File` read at random offsets with `FileReaderSync` (available in Web Workers only).
pub(crate) struct BlobSource {
    name: String,
    file: web_sys::File,
    len: u64,
    reader: web_sys::FileReaderSync,
}

impl BlobSource {
    pub(crate) fn new(name: String, file: web_sys::File) -> Result<Self, IoError> {
        let reader = web_sys::FileReaderSync::new().map_err(|e| IoError::new(&name, format!("FileReaderSync is unavailable ({}): merges run in a Web Worker", js_message(&e))))?;
        let len = file.size() as u64;
        Ok(BlobSource { name, file, len, reader })
    }
}

impl ByteSource for BlobSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len).ok_or_else(|| {
            IoError::new(&self.name, format!("read of {} bytes at offset {offset} is past the end ({} bytes): file truncated?", buf.len(), self.len))
        })?;
        let blob = self.file.slice_with_f64_and_f64(offset as f64, end as f64).map_err(|e| IoError::new(&self.name, js_message(&e)))?;
        let ab = self.reader.read_as_array_buffer(&blob).map_err(|e| IoError::new(&self.name, format!("read failed: {}", js_message(&e))))?;
        let bytes = Uint8Array::new(&ab);
        if bytes.length() as usize != buf.len() {
            return Err(IoError::new(&self.name, format!("read {} bytes at offset {offset} but expected {}: was the file changed on disk?", bytes.length(), buf.len())));
        }
        bytes.copy_to(buf);
        Ok(())
    }
}

/// Output files handed to JS chunk by chunk.
struct JsOutputDir {
    on_output: Function,
}

impl OutputDir for JsOutputDir {
    fn create(&mut self, file: &str) -> Result<Box<dyn ByteSink>, IoError> {
        call_output(&self.on_output, "create", file, &JsValue::UNDEFINED).map_err(|e| IoError::new(file, e))?;
        Ok(Box::new(JsSink { name: file.to_string(), on_output: self.on_output.clone(), buf: Vec::new(), bytes: 0, done: false }))
    }
}

/// Chunks are buffered to this size before crossing into JS (one copy each).
const CHUNK: usize = 4 << 20;

struct JsSink {
    name: String,
    on_output: Function,
    buf: Vec<u8>,
    bytes: u64,
    done: bool,
}

impl JsSink {
    fn flush(&mut self) -> Result<(), IoError> {
        if !self.buf.is_empty() {
            let chunk = Uint8Array::from(&self.buf[..]);
            call_output(&self.on_output, "chunk", &self.name, &chunk).map_err(|e| IoError::new(&self.name, e))?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl ByteSink for JsSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        if self.done {
            return Err(IoError::new(&self.name, "write after finish"));
        }
        self.bytes += bytes.len() as u64;
        if self.buf.len() + bytes.len() > CHUNK {
            self.flush()?;
        }
        if bytes.len() >= CHUNK {
            let chunk = Uint8Array::from(bytes);
            call_output(&self.on_output, "chunk", &self.name, &chunk).map_err(|e| IoError::new(&self.name, e))
        } else {
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }
    fn finish(&mut self) -> Result<(), IoError> {
        if self.done {
            return Err(IoError::new(&self.name, "finished twice"));
        }
        self.flush()?;
        self.done = true;
        call_output(&self.on_output, "finish", &self.name, &(self.bytes as f64).into()).map_err(|e| IoError::new(&self.name, e))
    }
}

impl Drop for JsSink {
    fn drop(&mut self) {
        if !self.done {
            // An error or a cancel: tell JS to discard what it has of this file.
            let _ = call_output(&self.on_output, "abort", &self.name, &JsValue::UNDEFINED);
        }
    }
}

fn call_output(f: &Function, kind: &str, file: &str, arg: &JsValue) -> Result<(), String> {
    f.call3(&JsValue::NULL, &kind.into(), &file.into(), arg).map(|_| ()).map_err(|e| format!("output callback failed: {}", js_message(&e)))
}

/// The message of a thrown JS value.
fn js_message(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}
