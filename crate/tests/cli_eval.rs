#![cfg(not(target_arch = "wasm32"))]
//! `crucible eval` and `crucible run` on a Hugging Face folder, end to end through the built
//! binary, against Hugging Face transformers 5.23: the tiny random Mixtral of
//! tests/fixtures/moe/mixtral (config.json + model.safetensors + a tiny BPE tokenizer.json), the
//! text tests/fixtures/moe/eval/text.txt and eval/perplexity.json, all written by
//! scripts/fixtures/make_moe_fixtures.py (perplexity from transformers' own loss over strided
//! windows, the convention stated there and in `LlamaModel::perplexity`; greedy `generate`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crucible::formats::checkpoint::{Checkpoint, DirFiles};
use crucible::formats::tokenizer::tokenizer_from_json;
use crucible::models::LlamaModel;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/moe")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("eval/perplexity.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    v
}

fn crucible(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crucible")).args(args).output().expect("run the crucible binary");
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn field(stdout: &str, key: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key:?} in {stdout}")).trim().to_string()
}

#[test]
fn tokenizer_ids_equal_the_reference() {
    let r = reference();
    let bytes = std::fs::read(fixtures().join("mixtral/tokenizer.json")).unwrap();
    let tok = tokenizer_from_json("tokenizer.json", &bytes).unwrap();
    let text = std::fs::read_to_string(fixtures().join("eval/text.txt")).unwrap();
    let ids = tok.encode(text.as_str(), true).unwrap().get_ids().to_vec();
    let want: Vec<u32> = r["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(ids, want);
}

#[test]
fn eval_perplexity_matches_transformers() {
    let r = reference();
    let model = fixtures().join("mixtral");
    let text = fixtures().join("eval/text.txt");
    let n = r["ids"].as_array().unwrap().len();
    for case in r["cases"].as_array().unwrap() {
        let (context, stride) = (case["context"].as_u64().unwrap().to_string(), case["stride"].as_u64().unwrap().to_string());
        let (ok, stdout, stderr) = crucible(&["eval", "--model", model.to_str().unwrap(), "--text", text.to_str().unwrap(), "--context", &context, "--stride", &stride]);
        assert!(ok, "{stderr}");
        assert_eq!(field(&stdout, "tokens:"), n.to_string());
        let line = field(&stdout, "context:");
        assert!(line.contains(&format!("windows: {}", case["windows"])) && line.contains(&format!("scored tokens: {}", case["scored_tokens"])), "{line} vs {case}");
        let ours: f64 = field(&stdout, "perplexity:").parse().unwrap();
        let theirs = case["perplexity"].as_f64().unwrap();
        let rel = (ours - theirs).abs() / theirs;
        eprintln!("context {context} stride {stride}: ours {ours:.6} transformers {theirs:.6} (rel {rel:.2e})");
        assert!(rel <= 1e-4, "context {context} stride {stride}: perplexity {ours} vs transformers {theirs} (relative {rel:e})");
    }
}

#[test]
fn library_perplexity_counts_and_cancel() {
    let r = reference();
    let mut ckpt = Checkpoint::open(Box::new(DirFiles::new(fixtures().join("mixtral")))).unwrap();
    let model = LlamaModel::from_checkpoint(&mut ckpt).unwrap();
    let ids: Vec<u32> = r["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let case = &r["cases"][0];
    let (c, s) = (case["context"].as_u64().unwrap() as usize, case["stride"].as_u64().unwrap() as usize);
    let mut calls = Vec::new();
    let p = model
        .perplexity(&ids, c, s, |d, t| {
            calls.push((d, t));
            true
        })
        .unwrap()
        .unwrap();
    assert_eq!(p.scored, ids.len() - 1, "stride < context scores every token but the first");
    assert_eq!(calls.len(), p.windows);
    assert!(calls.iter().all(|&(_, t)| t == p.windows), "the total is known up front: {calls:?}");
    assert!((p.nll - case["nll"].as_f64().unwrap()).abs() <= 1e-4);
    // cancelled after the first window
    assert!(model.perplexity(&ids, c, s, |_, _| false).unwrap().is_none());
    assert!(model.perplexity(&ids[..1], c, s, |_, _| true).is_err());
    assert!(model.perplexity(&ids, 4, 5, |_, _| true).is_err());
}

#[test]
fn run_hf_folder_greedy_equals_transformers_generate() {
    let g = &reference()["greedy"];
    let model = fixtures().join("mixtral");
    let (ok, stdout, stderr) = crucible(&["run", "--model", model.to_str().unwrap(), "--prompt", g["prompt"].as_str().unwrap(), "--max-tokens", "6", "--greedy"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("{}\n", g["text"].as_str().unwrap()), "stderr: {stderr}");
    let n_prompt = g["prompt_ids"].as_array().unwrap().len();
    assert!(stderr.contains(&format!("prompt tokens: {n_prompt}, generated tokens: 6")), "{stderr}");
    assert!(stderr.contains("weights: 0.16 MB"), "{stderr}");
}

#[test]
fn quantize_on_load_reports_memory_and_stays_close() {
    let model = fixtures().join("mixtral");
    let text = fixtures().join("eval/text.txt");
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let (ok, f32_out, _) = crucible(&["eval", "--model", m, "--text", t, "--context", "16", "--stride", "8"]);
    assert!(ok);
    let base: f64 = field(&f32_out, "perplexity:").parse().unwrap();
    for (q, tol) in [("q8_0", 0.01), ("q4_0", 0.1)] {
        let (ok, stdout, stderr) = crucible(&["eval", "--model", m, "--text", t, "--context", "16", "--stride", "8", "--quantize", q]);
        assert!(ok, "{stderr}");
        assert!(stderr.contains(&format!("after quantizing to {} on load", q.to_uppercase())), "{stderr}");
        let ppl: f64 = field(&stdout, "perplexity:").parse().unwrap();
        let rel = (ppl - base).abs() / base;
        eprintln!("{q}: perplexity {ppl:.4} vs f32 {base:.4} (rel {rel:.2e}); {}", stderr.lines().last().unwrap_or(""));
        // Stated tolerance: relative perplexity change ≤ 1% (Q8_0), ≤ 10% (Q4_0) on this random model.
        assert!(rel <= tol && rel > 0.0, "{q}: {ppl} vs {base}");
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text = fixtures().join("eval/text.txt");
    let (ok, _, stderr) = crucible(&["eval", "--model", dir, "--text", text.to_str().unwrap()]);
    assert!(!ok && stderr.contains("crucible eval: error") && stderr.contains(dir), "{stderr}");
    let model = fixtures().join("qwen2_moe"); // no tokenizer.json
    let (ok, _, stderr) = crucible(&["run", "--model", model.to_str().unwrap(), "--prompt", "x"]);
    assert!(!ok && stderr.contains("no tokenizer.json"), "{stderr}");
    let mixtral = fixtures().join("mixtral");
    let (ok, _, stderr) = crucible(&["eval", "--model", mixtral.to_str().unwrap(), "--text", "/nonexistent.txt"]);
    assert!(!ok && stderr.contains("/nonexistent.txt"), "{stderr}");
    let (ok, _, stderr) = crucible(&["eval", "--model", mixtral.to_str().unwrap(), "--text", text.to_str().unwrap(), "--context", "8", "--stride", "9"]);
    assert!(!ok && stderr.contains("--stride 9"), "{stderr}");
}
