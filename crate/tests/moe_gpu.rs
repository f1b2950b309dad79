#![cfg(not(target_arch = "wasm32"))]
//! Mixture-of-experts models on the GPU (`models::llama_gpu::GpuLlama` with sparse layers: router
//! softmax/top-k, per-expert gather, expert SwiGLU, weighted scatter-add, Qwen2-MoE's shared
//! expert with its sigmoid gate) natively through wgpu (Mesa lavapipe where there is no GPU; no
//! adapter FAILS these tests), against:
//! - Hugging Face transformers' logits of the tiny Mixtral and Qwen2-MoE fixtures in
//!   tests/fixtures/moe/ (scripts/fixtures/make_moe_fixtures.py): a 7-token prefill then 3
//!   one-token decode steps, within 1e-4;
//! - the CPU path's expert trace (`LlamaModel::forward_traced`): the same experts per token and
//!   layer, in order, and combine weights within 1e-5;
//! - a Q8_0-quantized Mixtral (experts through ops::qmatvec) against the CPU path on the same
//!   quantized weights;
//! - the readback-free path (experts by id: ops::qmatvec_id + moe_combine) taken for F32, F16,
//!   Q8_0, Q4_0 and Q4_1 experts with no router readback, and the fallback (router readback per
//!   layer) taken with its reason when the stacked experts exceed a chunk.
//!
//! Run: `XDG_RUNTIME_DIR=/tmp cargo test -p crucible --test moe_gpu -- --nocapture`

mod fixture_io;
mod gpu_common;

use std::path::{Path, PathBuf};

use crucible::formats::checkpoint::{Checkpoint, DirFiles};
use crucible::models::llama_gpu::{GpuLlama, GpuLlamaOptions};
use crucible::models::{ExpertTrace, KvCache, LlamaModel};
use crucible::tensor::quant::BlockFormat;
use serde_json::Value;

use fixture_io::{max_abs_diff, read_f32, tokens};
use gpu_common::ctx;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/moe")
}

fn load(name: &str) -> LlamaModel {
    let mut ckpt = Checkpoint::open(Box::new(DirFiles::new(fixtures().join(name)))).unwrap();
    LlamaModel::from_checkpoint(&mut ckpt).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Same experts (exactly, in order) and weights within `wtol`; dense layers empty on both sides.
fn check_trace(label: &str, gpu: &ExpertTrace, cpu: &ExpertTrace, wtol: f32) -> usize {
    assert_eq!(gpu.len(), cpu.len(), "{label}: trace tokens");
    let mut routed = 0;
    for (t, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert_eq!(g.len(), c.len(), "{label} token {t}: layers");
        for (layer, (gl, cl)) in g.iter().zip(c).enumerate() {
            let ge: Vec<usize> = gl.iter().map(|x| x.expert).collect();
            let ce: Vec<usize> = cl.iter().map(|x| x.expert).collect();
            assert_eq!(ge, ce, "{label} token {t} layer {layer}: experts");
            for (a, b) in gl.iter().zip(cl) {
                assert!((a.weight - b.weight).abs() <= wtol, "{label} token {t} layer {layer}: weight {} vs {}", a.weight, b.weight);
            }
            routed += gl.len();
        }
    }
    routed
}

fn option_sets() -> [GpuLlamaOptions; 3] {
    [
        GpuLlamaOptions { max_context: 32, max_batch: 32, decode_splits: Some(2), max_chunk_rows: None },
        GpuLlamaOptions { max_context: 32, max_batch: 1, decode_splits: None, max_chunk_rows: None },
        GpuLlamaOptions { max_context: 16, max_batch: 3, decode_splits: None, max_chunk_rows: None },
    ]
}

/// Every MoE fixture, every option set: GPU logits vs transformers (1e-4; the CPU path is held to
/// the same in moe_reference.rs) and the GPU's experts vs the CPU trace, prefill + 3 decode steps.
#[test]
fn moe_fixtures_match_transformers_on_gpu_with_the_cpu_experts() {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    let m: Value = serde_json::from_str(&text).unwrap();
    let mut names = Vec::new();
    for entry in m["models"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        names.push(name.to_string());
        let dir = fixtures().join(name);
        let model = load(name);
        assert!(model.config.moe.is_some(), "{name}: an MoE config");
        for opts in option_sets() {
            let label = format!("{name} max_batch {}", opts.max_batch);
            let mut gpu = GpuLlama::new(ctx(), &model, opts).unwrap_or_else(|e| panic!("{label}: {e}"));
            let mut cache = KvCache::new(&model.config);
            let (mut worst, mut routed) = (0.0f32, 0usize);
            for step in ["prefill", "decode_0", "decode_1", "decode_2"] {
                let s = &entry["logits"][step];
                assert_eq!(s["start_pos"].as_u64().unwrap() as usize, gpu.cache_len(), "{label} {step}");
                let toks = tokens(&s["tokens"]);
                let logits = pollster::block_on(gpu.forward(&toks)).unwrap_or_else(|e| panic!("{label} {step}: {e}"));
                let theirs = read_f32(&dir.join(s["file"].as_str().unwrap()));
                let err = max_abs_diff(&logits, &theirs);
                assert!(err <= 1e-4, "{label} {step}: max |gpu − transformers| = {err:e} > 1e-4");
                worst = worst.max(err);
                let (_, cpu_trace) = model.forward_traced(&toks, &mut cache).unwrap();
                routed += check_trace(&format!("{label} {step}"), gpu.routes(), &cpu_trace, 1e-5);
            }
            assert!(routed > 0, "{label}: no token was routed");
            println!("{label}: max abs logit error vs transformers {worst:e}, {routed} expert choices equal to the CPU's");
        }
    }
    assert_eq!(names, ["mixtral", "qwen2_moe", "qwen2_moe_norm"], "the three MoE fixtures ran");
}

/// Q8_0 experts (ops::qmatvec on the gathered rows) on the GPU against the CPU path on the same
/// quantized weights: 10 tokens, last-token logits via `forward_last` too. Tolerance 1e-4: both
/// sides dequantize the same blocks exactly; only summation order differs.
#[test]
fn quantized_mixtral_on_gpu_matches_cpu() {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    let m: Value = serde_json::from_str(&text).unwrap();
    let all = tokens(&m["tokens"]);
    for name in ["mixtral", "qwen2_moe"] {
        let f = load(name);
        let q = LlamaModel::new(f.config.clone(), f.weights.clone().quantize(BlockFormat::Q8_0, name).unwrap(), f.rope_layout);
        let mut cache = KvCache::new(&q.config);
        let (want, trace) = q.forward_traced(&all, &mut cache).unwrap();
        let mut gpu = GpuLlama::new(ctx(), &q, GpuLlamaOptions { max_context: 32, ..Default::default() }).unwrap();
        let got = pollster::block_on(gpu.forward(&all)).unwrap();
        let err = max_abs_diff(&got, &want);
        println!("{name} Q8_0: max abs logit error GPU vs CPU {err:e} (batched prefill: {})", gpu.batched_prefill());
        assert!(err <= 1e-4, "{name} Q8_0: {err:e}");
        check_trace(&format!("{name} Q8_0"), gpu.routes(), &trace, 1e-5);
        gpu.reset();
        let last = pollster::block_on(gpu.forward_last(&all)).unwrap();
        let v = q.config.vocab_size;
        assert!(max_abs_diff(&last, &want[(all.len() - 1) * v..]) <= 1e-4, "{name} Q8_0 forward_last");
        assert_eq!(gpu.routes().len(), all.len(), "forward_last records every token's experts");
    }
}

/// The readback-free MoE path (experts by id, ops::qmatvec_id + moe_combine) is the one taken for
/// F32, F16 (the mixtral_f16 fixture) and Q8_0 / Q4_0 / Q4_1 experts: no router readback in a prefill and 3 decode steps,
/// logits within 1e-4 of the CPU path on the same (quantized) weights, and the routes reported
/// (read back once per step with the logits) equal to the CPU's: the same experts in order,
/// weights within 1e-5.
#[test]
fn moe_layers_run_by_id_without_router_readbacks() {
    use crucible::models::llama_gpu::MoeGpuPath;
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    let m: Value = serde_json::from_str(&text).unwrap();
    let all = tokens(&m["tokens"]);
    let (prompt, rest) = all.split_at(all.len() - 3);
    for name in ["mixtral", "qwen2_moe", "mixtral_f16"] {
        let f = load(name);
        let formats: &[Option<BlockFormat>] = if name == "mixtral_f16" { &[None] } else { &[None, Some(BlockFormat::Q8_0), Some(BlockFormat::Q4_0), Some(BlockFormat::Q4_1)] };
        for &format in formats {
            let model = match format {
                None => LlamaModel::new(f.config.clone(), f.weights.clone(), f.rope_layout),
                Some(q) => LlamaModel::new(f.config.clone(), f.weights.clone().quantize(q, name).unwrap(), f.rope_layout),
            };
            if name == "mixtral_f16" {
                let e0 = &model.weights.layers[0].moe.as_ref().expect("sparse layer 0").experts[0].gate_proj.weight;
                assert!(matches!(e0, crucible::models::WeightStorage::F16(_)), "{name}: experts load as F16");
            }
            let label = format!("{name} {}", format.map_or("unquantized".to_string(), |q| q.to_string()));
            for max_batch in [32, 1] {
                let mut gpu = GpuLlama::new(ctx(), &model, GpuLlamaOptions { max_context: 32, max_batch, ..Default::default() }).unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(gpu.moe_path(), Some(&MoeGpuPath::ById), "{label}: the by-id path");
                let mut cache = KvCache::new(&model.config);
                let mut routed = 0;
                let steps: Vec<&[u32]> = std::iter::once(prompt).chain(rest.chunks(1)).collect();
                for (i, toks) in steps.iter().enumerate() {
                    let (want, trace) = model.forward_traced(toks, &mut cache).unwrap();
                    let got = pollster::block_on(gpu.forward(toks)).unwrap_or_else(|e| panic!("{label} step {i}: {e}"));
                    let err = max_abs_diff(&got, &want);
                    assert!(err <= 1e-4, "{label} max_batch {max_batch} step {i}: max |gpu − cpu| = {err:e}");
                    routed += check_trace(&format!("{label} step {i}"), gpu.routes(), &trace, 1e-5);
                }
                assert!(routed > 0, "{label}: no expert choices compared");
                assert_eq!(gpu.router_readbacks(), 0, "{label} max_batch {max_batch}: router readbacks on the by-id path");
                println!("{label} max_batch {max_batch}: by id, 0 router readbacks, {routed} expert choices equal to the CPU's");
            }
        }
    }
}

/// The fallback: an expert too big for one binding (emulated by `max_chunk_rows` below N): the
/// layers run with the per-expert plan read back from the router, say why, and still match
/// transformers (1e-4) with the CPU's experts; one readback per sparse layer and token chunk.
#[test]
fn moe_falls_back_to_router_readback_with_a_reason() {
    use crucible::models::llama_gpu::MoeGpuPath;
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    let m: Value = serde_json::from_str(&text).unwrap();
    let entry = &m["models"][0];
    assert_eq!(entry["name"].as_str(), Some("mixtral"));
    let model = load("mixtral");
    let sparse = model.config.moe.as_ref().unwrap().sparse_layers.iter().filter(|s| **s).count() as u64;
    let mut gpu = GpuLlama::new(ctx(), &model, GpuLlamaOptions { max_context: 32, max_batch: 32, decode_splits: None, max_chunk_rows: Some(16) }).unwrap();
    match gpu.moe_path() {
        Some(MoeGpuPath::Readback { reason }) => assert!(reason.contains("one expert's 32 rows exceed max_chunk_rows 16") && reason.contains("experts.gate_proj"), "{reason}"),
        other => panic!("expected the readback path, got {other:?}"),
    }
    assert!(gpu.moe_path().unwrap().to_string().contains("read back once per layer"));
    let mut cache = KvCache::new(&model.config);
    let mut chunks = 0;
    for step in ["prefill", "decode_0"] {
        let s = &entry["logits"][step];
        let toks = tokens(&s["tokens"]);
        let logits = pollster::block_on(gpu.forward(&toks)).unwrap();
        let err = max_abs_diff(&logits, &read_f32(&fixtures().join("mixtral").join(s["file"].as_str().unwrap())));
        assert!(err <= 1e-4, "fallback {step}: {err:e}");
        let (_, trace) = model.forward_traced(&toks, &mut cache).unwrap();
        check_trace(&format!("fallback {step}"), gpu.routes(), &trace, 1e-5);
        chunks += if gpu.batched_prefill() { 1 } else { toks.len() as u64 };
    }
    assert_eq!(gpu.router_readbacks(), sparse * chunks, "one router readback per sparse layer and chunk");
}

/// Experts too big to share one binding (emulated by `max_chunk_rows` = 2 experts' rows) are
/// split into groups, one binding and one qmatvec_id dispatch each, and still run by id: no
/// router readback, logits within 1e-4 of transformers, the CPU's experts.
#[test]
fn moe_by_id_with_experts_split_over_bindings() {
    use crucible::models::llama_gpu::MoeGpuPath;
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    let m: Value = serde_json::from_str(&text).unwrap();
    for (entry, groups) in m["models"].as_array().unwrap().iter().take(2).zip([2usize, 3]) {
        let name = entry["name"].as_str().unwrap();
        let model = load(name);
        let mut gpu = GpuLlama::new(ctx(), &model, GpuLlamaOptions { max_context: 32, max_batch: 32, decode_splits: None, max_chunk_rows: Some(64) }).unwrap();
        assert_eq!(gpu.moe_path(), Some(&MoeGpuPath::ById), "{name}");
        assert_eq!(gpu.moe_expert_bindings(), groups, "{name}: experts of 32 rows in groups of 2");
        let mut cache = KvCache::new(&model.config);
        for step in ["prefill", "decode_0", "decode_1"] {
            let s = &entry["logits"][step];
            let toks = tokens(&s["tokens"]);
            let logits = pollster::block_on(gpu.forward(&toks)).unwrap();
            let err = max_abs_diff(&logits, &read_f32(&fixtures().join(name).join(s["file"].as_str().unwrap())));
            assert!(err <= 1e-4, "{name} grouped {step}: {err:e}");
            let (_, trace) = model.forward_traced(&toks, &mut cache).unwrap();
            check_trace(&format!("{name} grouped {step}"), gpu.routes(), &trace, 1e-5);
        }
        assert_eq!(gpu.router_readbacks(), 0, "{name}: grouped experts by id");
    }
}
