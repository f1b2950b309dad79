//! The `crucible` binary end to end on tiny Llama checkpoints written here with the streaming
//! safetensors writer: linear, slerp and a passthrough frankenmerge are checked numerically
//! against independent f64 evaluations of the formulas in `shared/merge-methods.md` (§3.1 linear,
//! §3.2 slerp, §6.4 passthrough), plus the side files (config.json, tokenizer, recipe, the
//! README.md model card), sharded output, and error cases that must leave no output file behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crucible::formats::io::FileSink;
use crucible::formats::{Checkpoint, DirFiles, DirOutput, ModelFiles, Writer};
use crucible::merge::recipe::Recipe;
use crucible::merge::run::{MergeOptions, RunError, run_merge};
use crucible::tensor::DType;

const H: usize = 8;
const I: usize = 12;
const V: usize = 16;
const LAYER: [(&str, [usize; 2]); 9] = [
    ("input_layernorm.weight", [H, 0]),
    ("self_attn.q_proj.weight", [H, H]),
    ("self_attn.k_proj.weight", [H / 2, H]),
    ("self_attn.v_proj.weight", [H / 2, H]),
    ("self_attn.o_proj.weight", [H, H]),
    ("post_attention_layernorm.weight", [H, 0]),
    ("mlp.gate_proj.weight", [I, H]),
    ("mlp.up_proj.weight", [I, H]),
    ("mlp.down_proj.weight", [H, I]),
];

/// A fresh, empty temporary directory for one test.
fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("crucible-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG; the seed picks the model).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn shape(s: [usize; 2]) -> Vec<usize> {
    if s[1] == 0 { vec![s[0]] } else { s.to_vec() }
}

/// The tensors of a tiny Llama model: (name, shape, values). Norm weights are 1 + small noise
/// (nearly colinear between models: slerp's lerp branch); matrices are independent noise.
fn llama_tensors(seed: u64, layers: usize, tied: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let mut k = 0u64;
    let mut push = |name: String, shp: Vec<usize>, norm: bool| {
        k += 1;
        let n: usize = shp.iter().product();
        let mut v = values(seed * 1000 + k, n);
        if norm {
            v.iter_mut().for_each(|x| *x = 1.0 + 0.01 * *x);
        }
        out.push((name, shp, v));
    };
    push("model.embed_tokens.weight".into(), vec![V, H], false);
    for l in 0..layers {
        for (s, shp) in LAYER {
            push(format!("model.layers.{l}.{s}"), shape(shp), s.contains("norm"));
        }
    }
    push("model.norm.weight".into(), vec![H], true);
    if !tied {
        push("lm_head.weight".into(), vec![V, H], false);
    }
    out
}

/// Write a model directory: model.safetensors (F32), config.json, optional tokenizer files.
fn write_model(dir: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], layers: usize, tokenizer: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let decl: Vec<(String, DType, Vec<usize>)> = tensors.iter().map(|(n, s, _)| (n.clone(), DType::F32, s.clone())).collect();
    let sink = FileSink::create(&dir.join("model.safetensors")).unwrap();
    let mut w = Writer::new(sink, &decl, &BTreeMap::new()).unwrap();
    for (n, _, v) in tensors {
        w.write_tensor(n, v).unwrap();
    }
    w.finish().unwrap();
    let tied = !tensors.iter().any(|t| t.0 == "lm_head.weight");
    let cfg = format!(
        "{{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n  \"hidden_size\": {H},\n  \"intermediate_size\": {I},\n  \"num_hidden_layers\": {layers},\n  \"num_attention_heads\": 2,\n  \"num_key_value_heads\": 1,\n  \"vocab_size\": {V},\n  \"tie_word_embeddings\": {tied},\n  \"torch_dtype\": \"float32\"\n}}\n"
    );
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    if let Some(tag) = tokenizer {
        std::fs::write(dir.join("tokenizer.json"), format!("{{\"model\": \"{tag}\"}}")).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), format!("{{\"from\": \"{tag}\"}}")).unwrap();
    }
}

fn crucible(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crucible")).args(args).current_dir(cwd).output().expect("run the crucible binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// All tensors of an output directory (single file or shards), as f32.
fn read_dir_tensors(dir: &Path) -> BTreeMap<String, (DType, Vec<usize>, Vec<f32>)> {
    let mut ck = Checkpoint::open(Box::new(DirFiles::new(dir)) as Box<dyn ModelFiles>).unwrap();
    let names: Vec<String> = ck.tensor_names().map(str::to_string).collect();
    let mut out = BTreeMap::new();
    for n in names {
        let info = ck.info(&n).unwrap().clone();
        let mut v = Vec::new();
        ck.read(&n, &mut v).unwrap();
        out.insert(n, (info.dtype, info.shape, v));
    }
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<String> = rd.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn by_name(t: &[(String, Vec<usize>, Vec<f32>)]) -> BTreeMap<String, Vec<f32>> {
    t.iter().map(|(n, _, v)| (n.clone(), v.clone())).collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn linear_merge_matches_the_weighted_mean() {
    let d = tmp("linear");
    let (a, b) = (llama_tensors(1, 2, false), llama_tensors(2, 2, true));
    write_model(&d.join("models/a"), &a, 2, Some("A"));
    write_model(&d.join("models/b"), &b, 2, Some("B"));
    let recipe = "merge_method: linear\nmodels:\n  - model: models/a\n    parameters: {weight: 0.25}\n  - model: models/b\n    parameters: {weight: 0.5}\ndtype: float32\n";
    std::fs::write(d.join("recipe.yml"), recipe).unwrap();
    // Run from another directory: model paths resolve relative to the recipe's directory.
    let out = d.join("out");
    let o = crucible(&["merge", d.join("recipe.yml").to_str().unwrap(), out.to_str().unwrap()], Path::new("/"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("merged 21 tensors"), "{}", stderr(&o));

    let got = read_dir_tensors(&out);
    let (ma, mb) = (by_name(&a), by_name(&b));
    // 1 embed + 2 × 9 + norm + lm_head (a has it; b's tied embedding stands in)
    assert_eq!(got.len(), 21);
    for (name, (dtype, _, v)) in &got {
        assert_eq!(*dtype, DType::F32);
        let xa = &ma[name];
        let xb = mb.get(name).unwrap_or_else(|| &mb["model.embed_tokens.weight"]);
        let want: Vec<f64> = xa.iter().zip(xb).map(|(x, y)| (0.25 * *x as f64 + 0.5 * *y as f64) / 0.75).collect();
        assert_close(v, &want, 1e-6, name);
    }
    // Side files: config of the first model (no base), its tokenizer, the recipe as run.
    assert_eq!(files_in(&out), ["README.md", "config.json", "mergekit_config.yml", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    assert_eq!(std::fs::read_to_string(out.join("tokenizer.json")).unwrap(), "{\"model\": \"A\"}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 2);
    let ran = Recipe::from_yaml(&std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap()).unwrap();
    assert_eq!(ran, Recipe::from_yaml(recipe).unwrap());
    let _ = std::fs::remove_dir_all(&d);
}

/// mergekit's slerp (merge-methods.md §3.2) evaluated independently in f64.
fn slerp_ref(t: f64, a: &[f32], b: &[f32]) -> Vec<f64> {
    let a: Vec<f64> = a.iter().map(|x| *x as f64).collect();
    let b: Vec<f64> = b.iter().map(|x| *x as f64).collect();
    let norm = |v: &[f64]| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 1e-8 { n } else { 1.0 }
    };
    let (na, nb) = (norm(&a), norm(&b));
    let dot = a.iter().zip(&b).map(|(x, y)| (x / na) * (y / nb)).sum::<f64>().clamp(-1.0, 1.0);
    if dot.abs() > 0.9995 {
        return a.iter().zip(&b).map(|(x, y)| (1.0 - t) * x + t * y).collect();
    }
    let th = dot.acos();
    let (s0, s1) = (((1.0 - t) * th).sin() / th.sin(), (t * th).sin() / th.sin());
    a.iter().zip(&b).map(|(x, y)| s0 * x + s1 * y).collect()
}

#[test]
fn slerp_merge_matches_the_formula_with_a_gradient() {
    let d = tmp("slerp");
    let (a, b) = (llama_tensors(3, 3, false), llama_tensors(4, 3, false));
    write_model(&d.join("a"), &a, 3, Some("BASE"));
    write_model(&d.join("b"), &b, 3, Some("OTHER"));
    // t gradient [0, 1] over 3 layers: 0, 0.5, 1; pre/post weights t = 0 (→ the base).
    let recipe = "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\nparameters:\n  t:\n    - filter: mlp\n      value: 0.3\n    - value: [0, 1]\n";
    std::fs::write(d.join("recipe.yml"), recipe).unwrap();
    let o = crucible(&["merge", "recipe.yml", "out", "--quiet"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "--quiet prints nothing: {}", stderr(&o));
    let got = read_dir_tensors(&d.join("out"));
    let (ma, mb) = (by_name(&a), by_name(&b));
    assert_eq!(got.len(), 1 + 27 + 2);
    let mut branches = (0, 0);
    for (name, (_, _, v)) in &got {
        let t = if name.contains("mlp") {
            0.3
        } else if let Some(l) = name.strip_prefix("model.layers.") {
            l.split('.').next().unwrap().parse::<f64>().unwrap() / 2.0
        } else {
            0.0
        };
        let want = slerp_ref(t, &ma[name], &mb[name]);
        assert_close(v, &want, 2e-6, &format!("{name} (t = {t})"));
        if name.contains("norm") { branches.0 += 1 } else { branches.1 += 1 }
    }
    assert!(branches.0 > 0 && branches.1 > 0);
    // pre/post weights at t = 0 are exactly the base
    assert_eq!(got["model.embed_tokens.weight"].2, ma["model.embed_tokens.weight"]);
    assert_eq!(got["lm_head.weight"].2, ma["lm_head.weight"]);
    assert_eq!(std::fs::read_to_string(d.join("out/tokenizer_config.json")).unwrap(), "{\"from\": \"BASE\"}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn passthrough_frankenmerge_stacks_layers_and_updates_the_config() {
    let d = tmp("franken");
    let (a, b) = (llama_tensors(5, 2, false), llama_tensors(6, 3, false));
    write_model(&d.join("a"), &a, 2, Some("A"));
    write_model(&d.join("b"), &b, 3, Some("B"));
    let recipe = "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 2]\n  - sources:\n      - model: b\n        layer_range: [1, 3]\n        parameters:\n          scale:\n            - filter: o_proj\n              value: 0.5\n            - filter: down_proj\n              value: 0.5\n            - value: 1.0\n";
    std::fs::write(d.join("recipe.yml"), recipe).unwrap();
    let o = crucible(&["merge", "recipe.yml", "out"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = read_dir_tensors(&d.join("out"));
    let (ma, mb) = (by_name(&a), by_name(&b));
    assert_eq!(got.len(), 1 + 4 * 9 + 2);
    for (name, (_, _, v)) in &got {
        let (src, scale): (&[f32], f32) = match name.strip_prefix("model.layers.") {
            Some(rest) => {
                let (l, suffix) = rest.split_once('.').unwrap();
                let l: usize = l.parse().unwrap();
                if l < 2 {
                    (&ma[name], 1.0)
                } else {
                    let scale = if suffix.contains("o_proj") || suffix.contains("down_proj") { 0.5 } else { 1.0 };
                    (&mb[&format!("model.layers.{}.{suffix}", l - 1)], scale)
                }
            }
            // embeddings from the first slice, norm and lm_head from the last
            None if name.contains("embed") => (&ma[name], 1.0),
            None => (&mb[name], 1.0),
        };
        let want: Vec<f64> = src.iter().map(|x| (*x * scale) as f64).collect();
        assert_close(v, &want, 0.0, name);
    }
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 4);
    // key order of the donor's config is kept
    let keys: Vec<&String> = cfg.as_object().unwrap().keys().collect();
    assert_eq!(keys[0], "architectures");
    assert_eq!(keys[4], "num_hidden_layers");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sharded_output_holds_the_same_tensors() {
    let d = tmp("shards");
    let (a, b) = (llama_tensors(7, 2, false), llama_tensors(8, 2, false));
    write_model(&d.join("a"), &a, 2, None);
    write_model(&d.join("b"), &b, 2, None);
    std::fs::write(d.join("recipe.yml"), "merge_method: linear\nmodels:\n  - {model: a, parameters: {weight: 1}}\n  - {model: b, parameters: {weight: 3}}\nout_dtype: bfloat16\n").unwrap();
    let o = crucible(&["merge", "recipe.yml", "one"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = crucible(&["merge", "recipe.yml", "many", "--out-shard-size", "1K"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    let files = files_in(&d.join("many"));
    assert!(files.contains(&"model.safetensors.index.json".to_string()), "{files:?}");
    let shards: Vec<&String> = files.iter().filter(|f| f.starts_with("model-0")).collect();
    assert!(shards.len() >= 2, "{files:?}");
    assert!(!files.contains(&"model.safetensors".to_string()));
    let (one, many) = (read_dir_tensors(&d.join("one")), read_dir_tensors(&d.join("many")));
    assert_eq!(one, many);
    assert!(one.values().all(|t| t.0 == DType::BF16));
    // no tokenizer in the inputs: none in the output
    assert!(!files.iter().any(|f| f.starts_with("tokenizer")));
    let o = crucible(&["merge", "recipe.yml", "bad", "--out-shard-size", "12X"], &d);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("12X"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

/// An error must leave no output file (and no directory the run created).
fn assert_fails_cleanly(d: &Path, recipe: &str, expect: &[&str]) {
    std::fs::write(d.join("bad.yml"), recipe).unwrap();
    let _ = std::fs::remove_dir_all(d.join("out"));
    let o = crucible(&["merge", "bad.yml", "out"], d);
    assert!(!o.status.success(), "should fail: {recipe}");
    let e = stderr(&o);
    for x in expect {
        assert!(e.contains(x), "stderr should contain {x:?}: {e}");
    }
    assert!(!d.join("out").exists(), "output left behind: {:?}", files_in(&d.join("out")));
}

#[test]
fn errors_are_clear_and_leave_nothing() {
    let d = tmp("errors");
    write_model(&d.join("a"), &llama_tensors(9, 2, false), 2, None);
    write_model(&d.join("b"), &llama_tensors(10, 2, false), 2, None);
    // b2: one projection with another shape
    let mut odd = llama_tensors(11, 2, false);
    if let Some(t) = odd.iter_mut().find(|t| t.0 == "model.layers.1.mlp.up_proj.weight") {
        t.1 = vec![I + 1, H];
        t.2 = values(99, (I + 1) * H);
    }
    write_model(&d.join("b2"), &odd, 2, None);
    // b3: a tensor missing
    let missing: Vec<_> = llama_tensors(12, 2, false).into_iter().filter(|t| t.0 != "model.layers.0.self_attn.k_proj.weight").collect();
    write_model(&d.join("b3"), &missing, 2, None);
    // b4: truncated weights file
    write_model(&d.join("b4"), &llama_tensors(13, 2, false), 2, None);
    let f = d.join("b4/model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 40).unwrap();

    let lin = |m: &str| format!("merge_method: linear\nmodels:\n  - {{model: a, parameters: {{weight: 1}}}}\n  - {{model: {m}, parameters: {{weight: 1}}}}\n");
    assert_fails_cleanly(&d, &lin("b2"), &["model.layers.1.mlp.up_proj.weight", "[12, 8]", "[13, 8]", " a", " b2"]);
    assert_fails_cleanly(&d, &lin("b3"), &["model.layers.0.self_attn.k_proj.weight", "model b3"]);
    assert_fails_cleanly(&d, &lin("b4"), &["b4", "truncated"]);
    assert_fails_cleanly(&d, &lin("nowhere"), &["nowhere", "no such model directory"]);
    assert_fails_cleanly(&d, "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: [1, 2}\n", &["bad.yml", "line 4 column"]);
    assert_fails_cleanly(&d, "merge_method: blend\nmodels: [{model: a}]\n", &["line 1", "\"blend\"", "linear, slerp", "passthrough"]);
    assert_fails_cleanly(&d, "merge_method: linear\nmodels: [{model: a}, {model: b}]\n", &["missing required parameter \"weight\"", "model a"]);
    assert_fails_cleanly(&d, "merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]\n", &["requires a base_model"]);
    let o = crucible(&["merge", "does-not-exist.yml", "out"], &d);
    assert!(!o.status.success() && stderr(&o).contains("does-not-exist.yml"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_cancelled_merge_leaves_no_file() {
    let d = tmp("cancel");
    write_model(&d.join("a"), &llama_tensors(14, 2, false), 2, Some("A"));
    write_model(&d.join("b"), &llama_tensors(15, 2, false), 2, Some("B"));
    let recipe = Recipe::from_yaml("merge_method: linear\nmodels:\n  - {model: a, parameters: {weight: 1}}\n  - {model: b, parameters: {weight: 1}}\n").unwrap();
    for shard_size in [None, Some(2000)] {
        let out = d.join("out");
        let calls = std::cell::Cell::new(0usize);
        let mut progress = |_: &crucible::merge::run::Progress| calls.set(calls.get() + 1);
        let cancelled = || calls.get() >= 5;
        let mut opts = MergeOptions { seed: 0, out_shard_size: shard_size, progress: Some(&mut progress), cancelled: Some(&cancelled), observer: None };
        let root = d.clone();
        let mut open = |m: &str| -> Result<Box<dyn ModelFiles>, crucible::formats::IoError> { Ok(Box::new(DirFiles::new(root.join(m)))) };
        let e = run_merge(&recipe, &mut open, &mut DirOutput::new(&out), &mut opts).unwrap_err();
        assert!(matches!(e, RunError::Cancelled), "{e}");
        assert_eq!(calls.get(), 5);
        // the directory was created for the side files and the first shard; nothing remains in it
        assert_eq!(files_in(&out), Vec::<String>::new());
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tokenizer_source_picks_the_tokenizer_donor() {
    let d = tmp("tokenizer");
    write_model(&d.join("a"), &llama_tensors(16, 1, true), 1, Some("A"));
    write_model(&d.join("b"), &llama_tensors(17, 1, true), 1, Some("B"));
    // c is only a tokenizer donor: it needs no weights
    std::fs::create_dir_all(d.join("c")).unwrap();
    std::fs::write(d.join("c/tokenizer.json"), "{\"model\": \"C\"}").unwrap();
    std::fs::write(d.join("c/tokenizer_config.json"), "{\"from\": \"C\"}").unwrap();
    std::fs::write(d.join("c/special_tokens_map.json"), "{}").unwrap();
    let lin = "merge_method: linear\nmodels:\n  - {model: a, parameters: {weight: 1}}\n  - {model: b, parameters: {weight: 1}}\n";
    for (extra, want) in [("base_model: b\n", "B"), ("tokenizer_source: c\n", "C"), ("base_model: b\ntokenizer_source: base\n", "B"), ("", "A")] {
        std::fs::write(d.join("r.yml"), format!("{lin}{extra}")).unwrap();
        let _ = std::fs::remove_dir_all(d.join("out"));
        let o = crucible(&["merge", "r.yml", "out", "-q"], &d);
        assert!(o.status.success(), "{extra}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(d.join("out/tokenizer.json")).unwrap(), format!("{{\"model\": \"{want}\"}}"), "{extra}");
        assert_eq!(d.join("out/special_tokens_map.json").exists(), want == "C", "{extra}");
    }
    assert_fails_cleanly(&d, &format!("{lin}tokenizer_source: base\n"), &["tokenizer_source: base", "base_model"]);
    let _ = std::fs::remove_dir_all(&d);
}

/// The model card: exactly these bytes for this recipe (front matter with every merged model,
/// the tags and library; method, base, per-model and global parameters with a gradient and a
/// filter, dtypes, donor, the output's size; the recipe as run; the version), the same bytes on
/// a second run (nothing from the clock or the machine), and its YAML block is the recipe.
#[test]
fn model_card_says_how_it_was_made() {
    let d = tmp("card");
    let (base, a, b) = (llama_tensors(3, 2, false), llama_tensors(4, 2, false), llama_tensors(5, 2, false));
    write_model(&d.join("models/base"), &base, 2, Some("BASE"));
    write_model(&d.join("models/a"), &a, 2, None);
    write_model(&d.join("models/b \"q\""), &b, 2, None);
    let recipe = "merge_method: ties\nbase_model: models/base\nmodels:\n  - model: models/a\n    parameters: {weight: [0.2, 0.8], density: 0.5}\n  - model: 'models/b \"q\"'\n    parameters:\n      weight: 0.5\n      density: [{filter: mlp, value: 0.3}, {value: 0.7}]\nparameters: {normalize: false, lambda: 1.5}\ndtype: bfloat16\nout_dtype: float16\n";
    std::fs::write(d.join("recipe.yml"), recipe).unwrap();
    let o = crucible(&["merge", "recipe.yml", "out"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    let card = std::fs::read_to_string(d.join("out/README.md")).unwrap();
    let yaml = std::fs::read_to_string(d.join("out/mergekit_config.yml")).unwrap();
    let want = format!(
        r#"---
base_model:
- "models/a"
- "models/b \"q\""
- "models/base"
library_name: transformers
tags:
- merge
- mergekit
- crucible
---

# Merged model

This model is a merge of pre-trained language models made with Crucible, which runs mergekit 0.1.5 recipes in the browser or with its `crucible merge` command.

## How it was made

- **Method:** `ties` — Trim task vectors by magnitude, elect signs, disjoint mean (TIES).
- **Base model:** `models/base`
- **Models:**
  - `models/a` (weight = [0.2, 0.8] (gradient over the layers), density = 0.5)
  - `models/b "q"` (weight = 0.5, density = mlp: 0.3; default: 0.7)
- **Parameters:** normalize = false, lambda = 1.5
- **Loaded as:** bfloat16
- **Config and tokenizer:** from `models/base`
- **Output:** 21 tensors, 1256 parameters, 2 layers (llama layout), saved as float16

## Recipe

The same recipe is in `mergekit_config.yml`; `mergekit-yaml mergekit_config.yml OUTPUT_DIR` runs it with mergekit.

```yaml
{yaml}```

Made with Crucible {}.
"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(card, want);
    // 1256 = embed 16·8 + 2 layers × (2 norms · 8 + q, o 8·8 + k, v 4·8 + gate, up, down 12·8) + norm 8 + lm_head 16·8
    assert_eq!(base.iter().map(|t| t.2.len()).sum::<usize>(), 128 + 2 * (16 + 128 + 64 + 288) + 8 + 128);
    // The recipe block parses back to the recipe that ran.
    assert_eq!(Recipe::from_yaml(&yaml).unwrap(), Recipe::from_yaml(recipe).unwrap());
    // Deterministic: a second run writes the same bytes.
    let o = crucible(&["merge", "recipe.yml", "again"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("again/README.md")).unwrap(), card.as_bytes());
    let _ = std::fs::remove_dir_all(&d);
}
