//! `plan_merge` (crate/src/wasm/plan.rs) in Chromium, called with JS values as the page calls it:
//! fixture models given as safetensors header prefixes + full sizes (what the page reads from the
//! Hub with Range requests). The plan's numbers must equal those of the same models opened whole
//! in the same wasm; malformed arguments and lying headers come back as `{ok: false, message}`
//! naming the model and the file, never as a throw or a panic.
//!
//! References: safetensors format (8-byte LE header length, JSON header); mergekit 0.1.5 plan
//! (via `build_plan`).
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test wasm_plan`
#![cfg(target_arch = "wasm32")]

use crucible::formats::{MemSource, read_header};
use crucible::wasm::plan::plan_merge;
use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::wasm_bindgen_test;

const BASE_ST: &[u8] = include_bytes!("../../tests/fixtures/merge/models/base/model.safetensors");
const BASE_CFG: &[u8] = include_bytes!("../../tests/fixtures/merge/models/base/config.json");
const BASE_TOK: &[u8] = include_bytes!("../../tests/fixtures/merge/models/base/tokenizer.json");
const SH_CFG: &[u8] = include_bytes!("../../tests/fixtures/merge/models/ft_b_sharded/config.json");
const SH_INDEX: &[u8] = include_bytes!("../../tests/fixtures/merge/models/ft_b_sharded/model.safetensors.index.json");
const SH_1: &[u8] = include_bytes!("../../tests/fixtures/merge/models/ft_b_sharded/model-00001-of-00002.safetensors");
const SH_2: &[u8] = include_bytes!("../../tests/fixtures/merge/models/ft_b_sharded/model-00002-of-00002.safetensors");

fn header_prefix(bytes: &[u8]) -> &[u8] {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    &bytes[..8 + n]
}

fn file(path: &str, size: usize, prefix: Option<&[u8]>) -> JsValue {
    let o = Object::new();
    Reflect::set(&o, &"path".into(), &path.into()).unwrap();
    Reflect::set(&o, &"size".into(), &(size as f64).into()).unwrap();
    if let Some(p) = prefix {
        Reflect::set(&o, &"prefix".into(), &Uint8Array::from(p)).unwrap();
    }
    o.into()
}

fn model(name: &str, files: Vec<JsValue>) -> JsValue {
    let o = Object::new();
    Reflect::set(&o, &"name".into(), &name.into()).unwrap();
    Reflect::set(&o, &"files".into(), &files.into_iter().collect::<Array>()).unwrap();
    o.into()
}

fn base(name: &str, st_size: usize) -> JsValue {
    model(
        name,
        vec![
            file("config.json", BASE_CFG.len(), Some(BASE_CFG)),
            file("model.safetensors", st_size, Some(header_prefix(BASE_ST))),
            file("tokenizer.json", BASE_TOK.len(), None),
        ],
    )
}

fn sharded(name: &str) -> JsValue {
    model(
        name,
        vec![
            file("config.json", SH_CFG.len(), Some(SH_CFG)),
            file("model.safetensors.index.json", SH_INDEX.len(), Some(SH_INDEX)),
            file("model-00001-of-00002.safetensors", SH_1.len(), Some(header_prefix(SH_1))),
            file("model-00002-of-00002.safetensors", SH_2.len(), Some(header_prefix(SH_2))),
        ],
    )
}

fn plan(yaml: &str, models: JsValue) -> serde_json::Value {
    serde_json::from_str(&plan_merge(yaml, models, None)).unwrap()
}

const RECIPE: &str = "merge_method: ties\nbase_model: hub/base\nmodels:\n  - model: hub/sharded\n    parameters: {weight: 0.7, density: 0.3}\ndtype: float32\n";

#[wasm_bindgen_test]
fn plans_from_header_prefixes() {
    let v = plan(RECIPE, [base("hub/base", BASE_ST.len()), sharded("hub/sharded")].into_iter().collect::<Array>().into());
    assert_eq!(v["ok"], true, "{v}");
    let p = &v["plan"];
    // The same headers opened whole: one output tensor per base tensor, and their elements.
    let h = read_header(&mut MemSource { name: "base".into(), bytes: BASE_ST.to_vec() }).unwrap();
    assert_eq!(p["tensors"], h.tensors.len());
    assert_eq!(p["parameters"], h.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum::<usize>());
    let m = |n: &str| p["models"].as_array().unwrap().iter().find(|m| m["name"] == n).unwrap().clone();
    assert_eq!(m("hub/base")["fetch_bytes"], BASE_ST.len() + BASE_TOK.len());
    assert_eq!(m("hub/sharded")["fetch_bytes"], SH_1.len() + SH_2.len());
    assert_eq!(p["tokenizer_donor"], "hub/base");
    assert!(p["output_files"].as_array().unwrap().iter().any(|f| f == "tokenizer.json"), "{p}");
}

#[wasm_bindgen_test]
fn errors_are_values_naming_model_and_file() {
    // The server says the file is 4 bytes shorter than its header describes.
    let v = plan(RECIPE, [base("hub/base", BASE_ST.len() - 4), sharded("hub/sharded")].into_iter().collect::<Array>().into());
    assert_eq!(v["ok"], false);
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("hub/base/model.safetensors"), "{msg}");
    // A model the recipe names but nobody gave.
    let v = plan(RECIPE, [base("hub/base", BASE_ST.len())].into_iter().collect::<Array>().into());
    assert!(v["message"].as_str().unwrap().contains("hub/sharded"), "{v}");
    // Malformed arguments.
    for (models, want) in [
        (JsValue::from_str("nope"), "models must be an array"),
        ([JsValue::from(3)].into_iter().collect::<Array>().into(), "must be an object"),
        ([model("m", vec![file("x", 1, None)]), JsValue::from(Object::new())].into_iter().collect::<Array>().into(), "has no name"),
    ] {
        let v = plan(RECIPE, models);
        assert_eq!(v["ok"], false);
        assert!(v["message"].as_str().unwrap().contains(want), "{v}");
    }
    let bad_size = model("hub/base", vec![{
        let o = Object::new();
        Reflect::set(&o, &"path".into(), &"config.json".into()).unwrap();
        Reflect::set(&o, &"size".into(), &(-1.5f64).into()).unwrap();
        o.into()
    }]);
    let v = plan(RECIPE, [bad_size].into_iter().collect::<Array>().into());
    assert!(v["message"].as_str().unwrap().contains("config.json has no valid size"), "{v}");
    let v = plan("merge_method: [", Array::new().into());
    assert_eq!(v["ok"], false);
}
