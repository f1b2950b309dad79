#![cfg(not(target_arch = "wasm32"))]
//! Recipes survive a round trip: parse → `to_yaml` → parse gives the same value, and writing is
//! stable (`to_yaml` of the re-parsed recipe is the same text). Covers every form the parser
//! accepts (mergekit 0.1.5 `MergeConfiguration`, see `shared/merge-methods.md` §1) and every
//! golden fixture recipe in `tests/fixtures/merge/recipes/`.

use crucible::merge::methods::Method;
use crucible::merge::recipe::{FilterEntry, Layout, Recipe, Setting, TokenizerSource, Value};
use crucible::tensor::DType;

const RECIPES: &[&str] = &[
    // models form, per-model scalars, global bool
    "models:\n  - model: a\n    parameters: {weight: 0.7}\n  - model: b\n    parameters: {weight: 0.3}\nmerge_method: linear\nparameters: {normalize: false}\ndtype: float16\n",
    // base model not listed, gradients, density lists, lambda, out_dtype
    "merge_method: ties\nbase_model: ./base\nmodels:\n  - model: ./ft1\n    parameters:\n      weight: [0, 0.5, 1]\n      density: 0.5\n  - model: ./ft2\n    parameters: {weight: 1.0, density: [0.2, 0.8]}\nparameters:\n  normalize: true\n  lambda: 0.8\n  int8_mask: true\nout_dtype: bfloat16\n",
    // filter lists with a default, a gradient inside a filter, the single-mapping form
    "merge_method: slerp\nbase_model: x\nmodels: [{model: x}, {model: y}]\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\n  other: {filter: q_proj, value: 0.25}\n",
    // slices, per-source and per-slice parameters, per-slice base_model, residual_weight
    "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 16]\n  - sources:\n      - model: b\n        layer_range: [8, 24]\n        parameters:\n          scale:\n            - {filter: o_proj, value: 0.5}\n            - {filter: down_proj, value: 0.5}\n            - {value: 1}\n    parameters: {foo: bar}\n    base_model: b\n    residual_weight: 0.25\n",
    // slerp over slices with two sources each, tokenizer_source base, dtype
    "slices:\n  - sources:\n      - {model: m1, layer_range: [0, 4]}\n      - {model: m2, layer_range: [0, 4]}\nmerge_method: slerp\nbase_model: m1\nparameters:\n  t: [0, 1]\ntokenizer_source: base\ndtype: bfloat16\n",
    // tokenizer_source as a model, strings, scientific notation, negative numbers, bool gradients
    "merge_method: dare_ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: -0.5, density: 1.5e-1, epsilon: 1e-3}\n  - model: b\n    parameters: {weight: 2, flags: [true, false, true]}\nparameters: {rescale: yes_please, eps: 1e-8, big: 12345678901}\ntokenizer_source: a\n",
    // empty parameter blocks and nulls where mergekit allows them
    "merge_method: karcher\nmodels:\n  - model: a\n    parameters: {}\n  - model: b\nparameters:\nbase_model:\n",
    // a quoted model path with spaces and unicode
    "merge_method: model_stock\nbase_model: \"models/my base\"\nmodels:\n  - model: \"models/ünïcode model\"\n  - model: 'models/other'\nparameters: {filter_wise: true}\n",
];

fn roundtrip(text: &str, what: &str) -> Recipe {
    let r = Recipe::from_yaml(text).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
    let written = r.to_yaml();
    let back = Recipe::from_yaml(&written).unwrap_or_else(|e| panic!("{what}: written recipe does not parse: {e}\n{written}"));
    assert_eq!(back, r, "{what}: round trip changed the recipe\n--- written ---\n{written}");
    assert_eq!(back.to_yaml(), written, "{what}: writing is not stable");
    r
}

#[test]
fn every_form_round_trips() {
    for (i, text) in RECIPES.iter().enumerate() {
        roundtrip(text, &format!("recipe #{i}"));
    }
}

#[test]
fn every_fixture_recipe_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/merge/recipes");
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    entries.sort();
    let mut n = 0;
    for p in entries.iter().filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml")) {
        let text = std::fs::read_to_string(p).unwrap();
        roundtrip(&text, &p.display().to_string());
        n += 1;
    }
    assert!(n >= 20, "expected the golden fixture recipes in {}, found {n}", dir.display());
}

#[test]
fn parsed_values_are_what_the_yaml_says() {
    let r = roundtrip(RECIPES[1], "ties");
    assert_eq!(r.merge_method, Method::Ties);
    assert_eq!(r.base_model.as_deref(), Some("./base"));
    assert_eq!(r.out_dtype, Some(DType::BF16));
    assert_eq!(r.dtype, None);
    let Layout::Models(ms) = &r.layout else { panic!("models form") };
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[0].parameters.get("weight"), Some(&Setting::Gradient(vec![Value::Number(0.0), Value::Number(0.5), Value::Number(1.0)])));
    assert_eq!(ms[1].parameters.get("density"), Some(&Setting::Gradient(vec![Value::Number(0.2), Value::Number(0.8)])));
    assert_eq!(r.parameters.get("lambda"), Some(&Setting::Scalar(Value::Number(0.8))));
    assert_eq!(r.parameters.get("int8_mask"), Some(&Setting::Scalar(Value::Bool(true))));
    // the base model is referenced after the listed models
    assert_eq!(r.referenced_models(), ["./ft1", "./ft2", "./base"]);

    let r = roundtrip(RECIPES[2], "slerp filters");
    let t = r.parameters.get("t").unwrap();
    let Setting::Filters(f) = t else { panic!("{t:?}") };
    assert_eq!(f.len(), 3);
    assert_eq!(f[0].filter.as_deref(), Some("self_attn"));
    assert_eq!(f[2], FilterEntry { filter: None, value: Setting::Scalar(Value::Number(0.5)) });
    // the single {filter, value} mapping is a one-entry filter list
    assert_eq!(r.parameters.get("other"), Some(&Setting::Filters(vec![FilterEntry { filter: Some("q_proj".into()), value: Setting::Scalar(Value::Number(0.25)) }])));

    let r = roundtrip(RECIPES[3], "passthrough slices");
    let Layout::Slices(s) = &r.layout else { panic!("slices form") };
    assert_eq!(s[1].sources[0].layer_range, [8, 24]);
    assert_eq!(s[1].base_model.as_deref(), Some("b"));
    assert_eq!(s[1].residual_weight, Some(0.25));
    assert_eq!(s[1].parameters.get("foo"), Some(&Setting::Scalar(Value::Str("bar".into()))));

    let r = roundtrip(RECIPES[4], "slerp slices");
    assert_eq!(r.tokenizer_source, Some(TokenizerSource::Base));
    assert_eq!(r.dtype, Some(DType::BF16));

    let r = roundtrip(RECIPES[5], "dare");
    assert_eq!(r.tokenizer_source, Some(TokenizerSource::Model("a".into())));
    let Layout::Models(ms) = &r.layout else { panic!() };
    assert_eq!(ms[0].parameters.get("weight"), Some(&Setting::Scalar(Value::Number(-0.5))));
    assert_eq!(ms[0].parameters.get("density"), Some(&Setting::Scalar(Value::Number(0.15))));
    assert_eq!(ms[0].parameters.get("epsilon"), Some(&Setting::Scalar(Value::Number(0.001))));
    assert_eq!(r.parameters.get("eps"), Some(&Setting::Scalar(Value::Number(1e-8))));
    assert_eq!(r.parameters.get("big"), Some(&Setting::Scalar(Value::Number(12345678901.0))));

    let r = roundtrip(RECIPES[6], "karcher");
    assert!(r.parameters.is_empty());
    assert_eq!(r.base_model, None);

    let r = roundtrip(RECIPES[7], "paths");
    assert_eq!(r.referenced_models(), ["models/ünïcode model", "models/other", "models/my base"]);
}

#[test]
fn written_yaml_keeps_parameter_order() {
    let r = Recipe::from_yaml("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\nparameters: {zeta: 1, alpha: 2, mid: 3}\n").unwrap();
    let y = r.to_yaml();
    let (z, a, m) = (y.find("zeta").unwrap(), y.find("alpha").unwrap(), y.find("mid").unwrap());
    assert!(z < a && a < m, "{y}");
}
