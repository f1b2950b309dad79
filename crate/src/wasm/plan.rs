//! `plan_merge`: the merge planned from safetensors headers only (Hub models before any weights
//! are downloaded; local files from their first bytes). The logic is
//! [`crate::merge::preview::preview_merge`]; this file only converts the JS arguments.
//!
//! References: the safetensors format (huggingface/safetensors: 8-byte little-endian header
//! length, JSON header); `huggingface_hub` `get_safetensors_metadata` (the same Range reads);
//! mergekit 0.1.5 `mergekit/plan.py` (the plan).

use js_sys::{Array, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::merge::preview::{preview_merge, KnownFile, KnownModel};
use crate::merge::recipe::Recipe;

/// Plans `recipe_yaml` over `models` and returns JSON, never throwing for a bad recipe or model:
/// `{"ok": true, "plan": PlanPreview}` (see `merge/preview.rs`: `tensors`, `parameters`,
/// `output_bytes`, `models: [{name, tensors, tensors_read, files: [{file, size, role}],
/// fetch_bytes}]`, `output_files`, ...) or `{"ok": false, "message": "..."}` with the engine's
/// message (it names the model, the file, the tensor).
///
/// - `models`: an array of `{name: string, files: [{path: string, size: number, prefix?: Uint8Array}]}`:
///   every file the model has (for a safetensors file, `prefix` holds its first `8 + header
///   length` bytes; for config.json and model.safetensors.index.json the whole file; for a file
///   only known to exist, nothing) and each file's full size.
/// - `out_shard_size`: as the CLI's `--out-shard-size`, or `undefined`/`""` for mergekit's default.
#[wasm_bindgen]
pub fn plan_merge(recipe_yaml: &str, models: JsValue, out_shard_size: Option<String>) -> String {
    let result = (|| -> Result<_, String> {
        let recipe = Recipe::from_yaml(recipe_yaml).map_err(|e| e.to_string())?;
        let shard = match out_shard_size.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(crate::formats::parse_size(s).map_err(|e| format!("output shard size: {e}"))?),
        };
        let models = read_models(&models)?;
        preview_merge(&recipe, models, shard).map_err(|e| e.to_string())
    })();
    match result {
        Ok(plan) => serde_json::json!({ "ok": true, "plan": plan }),
        Err(message) => serde_json::json!({ "ok": false, "message": message }),
    }
    .to_string()
}

fn get(o: &JsValue, key: &str) -> JsValue {
    Reflect::get(o, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn read_models(v: &JsValue) -> Result<Vec<KnownModel>, String> {
    if !Array::is_array(v) {
        return Err("plan_merge: models must be an array of {name, files}".into());
    }
    let mut out = Vec::new();
    for m in Array::from(v).iter() {
        if !m.is_object() {
            return Err("plan_merge: each model must be an object {name, files}".into());
        }
        let name = get(&m, "name").as_string().ok_or("plan_merge: a model has no name")?;
        let files = get(&m, "files");
        if !Array::is_array(&files) {
            return Err(format!("plan_merge: model {name}: files must be an array"));
        }
        let mut model = KnownModel { name: name.clone(), files: Default::default() };
        for f in Array::from(&files).iter() {
            let path = get(&f, "path").as_string().ok_or_else(|| format!("plan_merge: model {name}: a file has no path"))?;
            let size = get(&f, "size").as_f64().filter(|s| *s >= 0.0 && s.fract() == 0.0).ok_or_else(|| format!("plan_merge: model {name}: file {path} has no valid size"))?;
            let prefix = get(&f, "prefix");
            let prefix = if prefix.is_undefined() || prefix.is_null() {
                Vec::new()
            } else {
                prefix.dyn_into::<Uint8Array>().map_err(|_| format!("plan_merge: model {name}: file {path}: prefix must be a Uint8Array"))?.to_vec()
            };
            model.files.insert(path, KnownFile { prefix, size: size as u64 });
        }
        out.push(model);
    }
    Ok(out)
}
