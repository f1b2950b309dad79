#![cfg(not(target_arch = "wasm32"))]
//! Mixture-of-experts models on the CPU path against Hugging Face transformers 5.23 (f32, eager
//! attention): tiny random Mixtral (softmax over the top-k), Qwen2-MoE (softmax → top-k without
//! renormalisation, shared expert with sigmoid gate, a dense layer via `mlp_only_layers`) and
//! Qwen2-MoE with `norm_topk_prob` and `decoder_sparse_step` 2; plus the same Mixtral as a GGUF.
//!
//! Fixtures: tests/fixtures/moe/, written by scripts/fixtures/make_moe_fixtures.py (logits of a
//! 7-token prefill and 3 cached one-token decode steps; the router's top-k experts and weights of
//! every token in every sparse layer, captured from the router modules).

mod fixture_io;

use std::path::{Path, PathBuf};

use crucible::formats::checkpoint::{Checkpoint, DirFiles};
use crucible::formats::io::FileSource;
use crucible::models::{ExpertTrace, KvCache, LlamaModel, MoeStyle};
use crucible::tensor::quant::BlockFormat;
use serde_json::Value;
use fixture_io::{read_f32, tokens, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/moe")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    let m: Value = serde_json::from_str(&text).expect("manifest JSON");
    assert_eq!(m["version"], 1, "fixture manifest version");
    m
}

fn load(name: &str) -> LlamaModel {
    let mut ckpt = Checkpoint::open(Box::new(DirFiles::new(fixtures().join(name)))).unwrap();
    LlamaModel::from_checkpoint(&mut ckpt).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const STEPS: [&str; 4] = ["prefill", "decode_0", "decode_1", "decode_2"];

/// Runs prefill + 3 decode steps and checks logits (1e-4 abs) and, per token and sparse layer,
/// the experts chosen (exactly, in order) and their weights (1e-5). Returns the worst logit error.
fn check_against(model: &LlamaModel, entry: &Value, dir: &Path, label: &str) -> f32 {
    let mut cache = KvCache::new(&model.config);
    let mut worst = 0.0f32;
    let sparse: Vec<usize> = entry["sparse_layers"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as usize).collect();
    for step in STEPS {
        let s = &entry["logits"][step];
        assert_eq!(s["start_pos"].as_u64().unwrap() as usize, cache.len(), "{label} {step}");
        let toks = tokens(&s["tokens"]);
        let (ours, trace): (Vec<f32>, ExpertTrace) = model.forward_traced(&toks, &mut cache).unwrap();
        let theirs = read_f32(&dir.join(s["file"].as_str().unwrap()));
        let err = max_abs_diff(&ours, &theirs);
        // Tolerance: 1e-4 absolute on logits of magnitude ≲ 3 (f32; summation order differs from torch's).
        assert!(err <= 1e-4, "{label} {step}: max |ours − transformers| = {err:e} > 1e-4");
        worst = worst.max(err);

        assert_eq!(trace.len(), toks.len(), "{label} {step}: one trace entry per token");
        for (t, per_layer) in trace.iter().enumerate() {
            assert_eq!(per_layer.len(), model.config.num_hidden_layers);
            for (layer, choices) in per_layer.iter().enumerate() {
                if !sparse.contains(&layer) {
                    assert!(choices.is_empty(), "{label} {step}: dense layer {layer} has no experts");
                    continue;
                }
                let want = &s["routes"][layer.to_string()][t];
                let want: Vec<(usize, f32)> = want.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap() as f32)).collect();
                let got: Vec<usize> = choices.iter().map(|c| c.expert).collect();
                assert_eq!(got, want.iter().map(|w| w.0).collect::<Vec<_>>(), "{label} {step} token {t} layer {layer}: experts");
                for (c, (_, w)) in choices.iter().zip(&want) {
                    assert!((c.weight - w).abs() <= 1e-5, "{label} {step} token {t} layer {layer}: weight {} vs {w}", c.weight);
                }
            }
        }
    }
    worst
}

#[test]
fn moe_logits_and_expert_choices_match_transformers() {
    let m = manifest();
    let mut report = Vec::new();
    for entry in m["models"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let model = load(name);
        let moe = model.config.moe.as_ref().expect("an MoE config");
        assert_eq!(moe.top_k as u64, entry["top_k"].as_u64().unwrap());
        let worst = check_against(&model, entry, &fixtures().join(name), name);
        report.push(format!("{name}: max abs err {worst:e}"));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn configs_read_the_moe_fields() {
    let mix = load("mixtral");
    let moe = mix.config.moe.as_ref().unwrap();
    assert_eq!((moe.style, moe.num_experts, moe.top_k, moe.expert_intermediate_size), (MoeStyle::Mixtral, 4, 2, 32));
    assert!(moe.norm_topk_prob && moe.shared_expert_intermediate_size.is_none());
    assert!(mix.weights.layers.iter().all(|l| l.moe.as_ref().is_some_and(|b| b.experts.len() == 4 && b.shared.is_none())));

    let q = load("qwen2_moe");
    let moe = q.config.moe.as_ref().unwrap();
    assert_eq!((moe.style, moe.num_experts, moe.top_k, moe.expert_intermediate_size), (MoeStyle::Qwen2Moe, 6, 2, 32));
    assert_eq!((moe.norm_topk_prob, moe.shared_expert_intermediate_size), (false, Some(64)));
    assert_eq!(moe.sparse_layers, vec![true, false, true]);
    assert!(q.config.qkv_bias);
    assert!(q.weights.layers[1].moe.is_none() && q.weights.layers[1].gate_proj.out_features == 64);

    let qn = load("qwen2_moe_norm");
    let moe = qn.config.moe.as_ref().unwrap();
    assert_eq!((moe.norm_topk_prob, moe.top_k, moe.sparse_layers.clone()), (true, 3, vec![false, true]));
}

#[test]
fn mixtral_gguf_matches_transformers() {
    let m = manifest();
    let entry = m["models"].as_array().unwrap().iter().find(|e| e["name"] == "mixtral").unwrap();
    let path = fixtures().join(m["gguf"]["file"].as_str().unwrap());
    let mut src = FileSource::open(&path).unwrap();
    let model = LlamaModel::from_gguf(&mut src).unwrap();
    let moe = model.config.moe.as_ref().expect("expert_count makes an MoE config");
    assert_eq!((moe.style, moe.num_experts, moe.top_k), (MoeStyle::Mixtral, 4, 2));
    let worst = check_against(&model, entry, &fixtures().join("mixtral"), "mixtral.gguf");
    eprintln!("mixtral.gguf: max abs err {worst:e}");
}

#[test]
fn prefill_then_decode_equals_one_long_prefill_with_the_same_experts() {
    let m = manifest();
    let all = tokens(&m["tokens"]);
    for name in ["mixtral", "qwen2_moe", "qwen2_moe_norm"] {
        let model = load(name);
        let mut long_cache = KvCache::new(&model.config);
        let (long, long_trace) = model.forward_traced(&all, &mut long_cache).unwrap();
        let mut cache = KvCache::new(&model.config);
        let (mut stepped, mut trace) = model.forward_traced(&all[..7], &mut cache).unwrap();
        for &t in &all[7..] {
            let (l, tr) = model.forward_traced(&[t], &mut cache).unwrap();
            stepped.extend(l);
            trace.extend(tr);
        }
        let err = max_abs_diff(&long, &stepped);
        assert!(err <= 1e-5, "{name}: long prefill vs prefill + decode differ by {err:e}");
        let experts = |tr: &ExpertTrace| tr.iter().map(|l| l.iter().map(|c| c.iter().map(|x| x.expert).collect::<Vec<_>>()).collect::<Vec<_>>()).collect::<Vec<_>>();
        assert_eq!(experts(&long_trace), experts(&trace), "{name}");
        // forward and forward_traced give the same logits
        let mut c2 = KvCache::new(&model.config);
        assert_eq!(model.forward(&all, &mut c2).unwrap(), long);
    }
}

#[test]
fn quantize_on_load_stays_close_to_f32() {
    // Q8_0 and Q4_0 (llama.cpp's reference quantizers) over every projection, expert, embedding
    // and head; routers and norms stay f32. The dense Llama fixture of llama_reference.rs and the
    // MoE fixtures, 10-token prefill, logits of magnitude ≲ 3. Stated tolerances (max abs logit
    // error vs the f32 model): Q8_0 0.1, Q4_0 1.5 — an MoE router near a tie may pick another
    // expert once weights are rounded, which moves logits more than rounding alone; the measured
    // errors and the number of changed expert choices are printed.
    let m = manifest();
    let all = tokens(&m["tokens"]);
    let dense = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama/llama_tied");
    for name in ["llama_tied", "mixtral", "qwen2_moe"] {
        let model = if name == "llama_tied" {
            let mut ckpt = Checkpoint::open(Box::new(DirFiles::new(&dense))).unwrap();
            LlamaModel::from_checkpoint(&mut ckpt).unwrap()
        } else {
            load(name)
        };
        let f32_bytes = model.weights.weight_bytes();
        let mut c = KvCache::new(&model.config);
        let (want, want_trace) = model.forward_traced(&all, &mut c).unwrap();
        for (format, tol, ratio) in [(BlockFormat::Q8_0, 0.1f32, 3.5f64), (BlockFormat::Q4_0, 1.5, 6.0)] {
            let q = LlamaModel::new(model.config.clone(), model.weights.clone().quantize(format, name).unwrap(), model.rope_layout);
            let bytes = q.weights.weight_bytes();
            let mut c = KvCache::new(&q.config);
            let (got, trace) = q.forward_traced(&all, &mut c).unwrap();
            let err = max_abs_diff(&got, &want);
            let flips: usize = trace
                .iter()
                .zip(&want_trace)
                .flat_map(|(a, b)| a.iter().zip(b))
                .filter(|(a, b)| a.iter().map(|x| x.expert).collect::<Vec<_>>() != b.iter().map(|x| x.expert).collect::<Vec<_>>())
                .count();
            eprintln!(
                "{name} {format}: weights {bytes} B (f32 {f32_bytes} B, {:.2}x smaller), max abs logit error {err:.4}, changed expert choices {flips}",
                f32_bytes as f64 / bytes as f64
            );
            assert!(err <= tol, "{name} {format}: {err} > {tol}");
            assert!(err > 0.0, "{name} {format}: quantization changed nothing?");
            assert!((f32_bytes as f64 / bytes as f64) > ratio, "{name} {format}: {bytes} B vs f32 {f32_bytes} B");
        }
    }
}

#[test]
fn quantize_refuses_rows_that_are_not_whole_blocks() {
    // hidden_size 32 but a 48-wide shared expert: build one by hand from the Qwen2-MoE fixture.
    let model = load("qwen2_moe");
    let mut w = model.weights.clone();
    let l = &mut w.layers[1];
    let h = l.gate_proj.in_features;
    l.down_proj = crucible::models::Linear::f32(h, 48, vec![0.0; h * 48], None);
    let e = w.quantize(BlockFormat::Q8_0, "qwen2_moe").unwrap_err().to_string();
    assert!(e.contains("model.layers.1.mlp.down_proj.weight") && e.contains("48") && e.contains("block size 32"), "{e}");
}

#[test]
fn half_precision_and_sharded_folders_match_their_rounded_f32_reference() {
    // mixtral_bf16_sharded: bfloat16 in two shards + model.safetensors.index.json; mixtral_f16:
    // float16 in one file. Reference: transformers' f32 forward over the same rounded weights.
    let m = manifest();
    for h in m["half"].as_array().unwrap() {
        let name = h["name"].as_str().unwrap();
        let dir = fixtures().join(name);
        let model = load(name);
        let mut cache = KvCache::new(&model.config);
        let ours = model.forward(&tokens(&h["tokens"]), &mut cache).unwrap();
        let theirs = read_f32(&dir.join(h["logits_prefill"]["file"].as_str().unwrap()));
        let err = max_abs_diff(&ours, &theirs);
        eprintln!("{name}: max abs err {err:e}");
        assert!(err <= 1e-4, "{name}: {err:e}");
        // and it is not the f32 model: rounding to half precision moved the logits
        let f32_model = load("mixtral");
        let mut c = KvCache::new(&f32_model.config);
        assert!(max_abs_diff(&f32_model.forward(&tokens(&h["tokens"]), &mut c).unwrap(), &ours) > 1e-4, "{name}");
    }
}
