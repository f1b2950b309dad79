//! The JavaScript boundary (`crucible::wasm`) in Chromium, in a dedicated Web Worker as the page
//! runs it: the method list, recipe checks with line/column, and a merge whose inputs are browser
//! `File`s (read through `FileReaderSync`) and whose outputs come back through the JS callback in
//! chunks. The bytes must equal the same merge run over in-memory sources inside the same wasm
//! (so the boundary adds nothing and loses nothing), and the values must equal the linear formula
//! (merge-methods.md §3.1: Σ wᵢ xᵢ / Σ wᵢ with normalize).
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test wasm_boundary`
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crucible::formats::{ByteSink, IoError, MemFiles, MemSink, MemSource, ModelFiles, OutputDir, Writer, read_header, read_tensor};
use crucible::merge::methods::Method;
use crucible::merge::recipe::Recipe;
use crucible::merge::run::{MergeOptions, run_merge};
use crucible::tensor::DType;
use js_sys::{Array, Function, Map, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// [1100, 1000] f32 is 4.4 MB: larger than the 4 MiB chunk the sink hands to JS, so the output
/// crosses the boundary in several chunks.
const BIG: [usize; 2] = [1100, 1000];
const SMALL: [usize; 1] = [8];

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One tiny generic checkpoint (safetensors bytes) and its tensors.
fn checkpoint(seed: u64) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let big = values(BIG[0] * BIG[1], seed);
    let small = values(SMALL[0], seed + 100);
    let decl = vec![("layers.0.big.weight".to_string(), DType::F32, BIG.to_vec()), ("norm.weight".to_string(), DType::F32, SMALL.to_vec())];
    let mut w = Writer::new(MemSink { name: "model.safetensors".into(), ..Default::default() }, &decl, &BTreeMap::new()).unwrap();
    w.write_tensor("layers.0.big.weight", &big).unwrap();
    w.write_tensor("norm.weight", &small).unwrap();
    (w.finish().unwrap().bytes, big, small)
}

const CONFIG: &str = r#"{"architectures": ["TestModel"], "model_type": "test", "num_hidden_layers": 1}"#;

fn file(bytes: &[u8], name: &str) -> web_sys::File {
    let parts = Array::of1(&Uint8Array::from(bytes));
    web_sys::File::new_with_u8_array_sequence(&parts, name).unwrap()
}

fn js_error_message(e: JsError) -> String {
    let v: JsValue = e.into();
    v.dyn_into::<js_sys::Error>().map(|e| String::from(e.message())).unwrap_or_default()
}

/// Runs `crucible::wasm::merge` with JS callbacks; returns the finished files or the error text.
fn merge_via_js(yaml: &str, files: &Map) -> Result<(BTreeMap<String, Vec<u8>>, usize), String> {
    let out: Rc<RefCell<BTreeMap<String, Vec<u8>>>> = Rc::default();
    let finished: Rc<RefCell<Vec<String>>> = Rc::default();
    let progress = Rc::new(RefCell::new(0usize));
    let (o, f) = (out.clone(), finished.clone());
    let on_output = Closure::<dyn FnMut(String, String, JsValue)>::new(move |kind: String, name: String, arg: JsValue| match kind.as_str() {
        "create" => {
            o.borrow_mut().insert(name, Vec::new());
        }
        "chunk" => o.borrow_mut().get_mut(&name).unwrap().extend(arg.dyn_into::<Uint8Array>().unwrap().to_vec()),
        "finish" => f.borrow_mut().push(name),
        "abort" => {
            o.borrow_mut().remove(&name);
        }
        other => panic!("unknown output event {other}"),
    });
    let p = progress.clone();
    let on_progress = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| *p.borrow_mut() += 1);
    crucible::wasm::merge(
        yaml,
        files.clone().into(),
        "7",
        None,
        on_progress.as_ref().unchecked_ref::<Function>().clone(),
        on_output.as_ref().unchecked_ref::<Function>().clone(),
    )
    .map_err(js_error_message)?;
    let out = out.borrow().clone();
    let mut fin = finished.borrow().clone();
    fin.sort();
    assert_eq!(fin, out.keys().cloned().collect::<Vec<_>>(), "every created file was finished");
    let n = *progress.borrow();
    Ok((out, n))
}

/// Sinks that land in a shared map.
struct MemOut(Rc<RefCell<BTreeMap<String, Vec<u8>>>>);
struct Shared(String, Rc<RefCell<BTreeMap<String, Vec<u8>>>>);
impl ByteSink for Shared {
    fn name(&self) -> &str {
        &self.0
    }
    fn write_all(&mut self, b: &[u8]) -> Result<(), IoError> {
        self.1.borrow_mut().entry(self.0.clone()).or_default().extend_from_slice(b);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}
impl OutputDir for MemOut {
    fn create(&mut self, file: &str) -> Result<Box<dyn ByteSink>, IoError> {
        self.0.borrow_mut().insert(file.into(), Vec::new());
        Ok(Box::new(Shared(file.into(), self.0.clone())))
    }
}

const RECIPE: &str = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1.0}\n  - model: b\n    parameters: {weight: 3.0}\ndtype: float32\n";

#[wasm_bindgen_test]
fn methods_lists_every_method_with_parameters() {
    let json: serde_json::Value = serde_json::from_str(&crucible::wasm::methods().map_err(js_error_message).unwrap()).unwrap();
    let names: Vec<&str> = json.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, Method::names());
    let ties = json.as_array().unwrap().iter().find(|m| m["name"] == "ties").unwrap();
    let density = ties["params"].as_array().unwrap().iter().find(|p| p["name"] == "density").unwrap();
    assert_eq!(density["per_model"], true);
    assert_eq!(density["default"], serde_json::json!({ "float": 1.0 }));
}

#[wasm_bindgen_test]
fn parse_recipe_gives_line_and_column() {
    let ok: serde_json::Value = serde_json::from_str(&crucible::wasm::parse_recipe(RECIPE).unwrap()).unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["tree"]["models"][1]["parameters"]["weight"], 3.0);
    let bad: serde_json::Value = serde_json::from_str(&crucible::wasm::parse_recipe("merge_method: linear\nmodels:\n\t- model: a\n").unwrap()).unwrap();
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["line"], 3, "{bad}");
    let unknown: serde_json::Value = serde_json::from_str(&crucible::wasm::parse_recipe("merge_method: tiess\nmodels:\n  - model: a\n").unwrap()).unwrap();
    assert_eq!(unknown["ok"], false);
    assert!(unknown["message"].as_str().unwrap().contains("dare_ties"), "{unknown}");
}

#[wasm_bindgen_test]
fn merge_of_browser_files_equals_the_in_memory_merge() {
    let (a_bytes, a_big, a_small) = checkpoint(1);
    let (b_bytes, b_big, b_small) = checkpoint(2);

    // Model a as a Map of relative path → File; model b as an array of Files.
    let files = Map::new();
    let a = Map::new();
    a.set(&"model.safetensors".into(), &file(&a_bytes, "model.safetensors"));
    a.set(&"config.json".into(), &file(CONFIG.as_bytes(), "config.json"));
    files.set(&"a".into(), &a);
    files.set(&"b".into(), &Array::of2(&file(&b_bytes, "weights.safetensors"), &file(CONFIG.as_bytes(), "config.json")));
    let (out, progress_calls) = merge_via_js(RECIPE, &files).unwrap();
    assert_eq!(progress_calls, 2, "one progress call per tensor");

    // The same merge over in-memory sources.
    let mem = |name: &str, st: &str, bytes: &[u8]| MemFiles::new(name, BTreeMap::from([(st.to_string(), bytes.to_vec()), ("config.json".to_string(), CONFIG.as_bytes().to_vec())]));
    let models = BTreeMap::from([("a".to_string(), mem("a", "model.safetensors", &a_bytes)), ("b".to_string(), mem("b", "weights.safetensors", &b_bytes))]);
    let reference: Rc<RefCell<BTreeMap<String, Vec<u8>>>> = Rc::default();
    let recipe = Recipe::from_yaml(RECIPE).unwrap();
    let mut open = |n: &str| -> Result<Box<dyn ModelFiles>, IoError> { Ok(Box::new(models.get(n).cloned().ok_or_else(|| IoError::new(n, "unknown"))?)) };
    let mut opts = MergeOptions { seed: 7, out_shard_size: None, progress: None, cancelled: None, observer: None };
    run_merge(&recipe, &mut open, &mut MemOut(reference.clone()), &mut opts).unwrap();
    let reference = reference.borrow().clone();
    assert_eq!(out.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>());
    for (name, bytes) in &reference {
        assert!(out[name] == *bytes, "{name}: {} bytes through JS vs {} in memory", out[name].len(), bytes.len());
    }

    // And the values are the linear formula: (1·a + 3·b) / 4.
    let merged = &out["model.safetensors"];
    let mut src = MemSource { name: "model.safetensors".into(), bytes: merged.clone() };
    let header = read_header(&mut src).unwrap();
    let mut v = Vec::new();
    for (t, a, b) in [("layers.0.big.weight", &a_big, &b_big), ("norm.weight", &a_small, &b_small)] {
        read_tensor(&mut src, header.get(t).unwrap(), &mut v).unwrap();
        for i in 0..v.len() {
            let want = (a[i] as f64 + 3.0 * b[i] as f64) / 4.0;
            // One f32 rounding per operation: a few ulps of the inputs' magnitude (≤ 1).
            assert!((v[i] as f64 - want).abs() <= 4.0 * f32::EPSILON as f64, "{t}[{i}]: {} vs {want}", v[i]);
        }
    }
}

#[wasm_bindgen_test]
fn truncated_file_error_names_model_and_file() {
    let (a_bytes, ..) = checkpoint(1);
    let (b_bytes, ..) = checkpoint(2);
    let files = Map::new();
    files.set(&"a".into(), &Array::of2(&file(&a_bytes, "model.safetensors"), &file(CONFIG.as_bytes(), "config.json")));
    files.set(&"b".into(), &Array::of2(&file(&b_bytes[..b_bytes.len() / 2], "model.safetensors"), &file(CONFIG.as_bytes(), "config.json")));
    let err = merge_via_js(RECIPE, &files).unwrap_err();
    assert!(err.contains("model b") && err.contains("b/model.safetensors") && err.contains("truncated"), "{err}");
    let missing = Map::new();
    missing.set(&"a".into(), &Array::of1(&file(&a_bytes, "model.safetensors")));
    let err = merge_via_js(RECIPE, &missing).unwrap_err();
    assert!(err.contains("model b") && err.contains("no files were added"), "{err}");
}

#[wasm_bindgen_test]
fn bad_seed_or_shard_size_is_an_error_not_a_panic() {
    let noop = Function::new_no_args("");
    let e = crucible::wasm::merge(RECIPE, Map::new().into(), "-1", None, noop.clone(), noop.clone()).map(|_| ()).map_err(js_error_message).unwrap_err();
    assert!(e.contains("seed"), "{e}");
    let e = crucible::wasm::merge(RECIPE, Map::new().into(), "0", Some("12Q".into()), noop.clone(), noop).map(|_| ()).map_err(js_error_message).unwrap_err();
    assert!(e.contains("output shard size") && e.contains("12Q"), "{e}");
}

#[wasm_bindgen_test]
fn merge_outside_files_reports_missing_files_cleanly() {
    // A model given neither a Map nor an array of Files.
    let files = Map::new();
    files.set(&"a".into(), &JsValue::from_str("not files"));
    let err = merge_via_js(RECIPE, &files).unwrap_err();
    assert!(err.contains("files for model a"), "{err}");
}
