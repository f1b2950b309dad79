//! F16 checkpoints end to end: the tiny F16 Llama / Qwen2 of tests/fixtures/llama_f16/ (written by
//! scripts/fixtures/make_llama_fixtures.py: weights saved in float16, reference logits from
//! transformers loading those weights in float32) load with `WeightStorage::F16` projections,
//! embedding and head, hold half the linear-weight bytes of their f32 widening, and give
//! transformers' logits within 1e-4 (7-token prefill + 3 decode steps) on the CPU and on the GPU
//! (lavapipe natively: the `enable f16;` kernels, and the packed `unpack2x16float` ones on a device
//! opened without shader-f16), batched and token by token with 64-row chunks; the GGUF F16 twin
//! (gguf-py, llama.cpp's layout) gives the same logits. No adapter FAILS.
//!
//! Run: `XDG_RUNTIME_DIR=/tmp cargo test -p crucible --test f16_model -- --nocapture`
#![cfg(not(target_arch = "wasm32"))]

mod fixture_io;

use std::path::{Path, PathBuf};

use crucible::formats::checkpoint::{Checkpoint, DirFiles};
use crucible::formats::io::FileSource;
use crucible::gpu::GpuContext;
use crucible::models::llama_gpu::{GpuLlama, GpuLlamaOptions};
use crucible::models::{KvCache, Linear, LlamaModel, WeightStorage};
use crucible::ops::hmatvec::HalfVariant;
use serde_json::Value;
use fixture_io::{read_f32, tokens, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama_f16")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json")).unwrap()
}

fn load_hf(name: &str) -> LlamaModel {
    let mut ckpt = Checkpoint::open(Box::new(DirFiles::new(fixtures().join(name)))).unwrap_or_else(|e| panic!("{name}: {e}"));
    LlamaModel::from_checkpoint(&mut ckpt).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn linears(m: &LlamaModel) -> Vec<&Linear> {
    let w = &m.weights;
    let mut v = vec![&w.embed_tokens];
    for l in &w.layers {
        v.extend([&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj]);
    }
    v.extend(w.lm_head.as_ref());
    v
}

/// Runs the manifest's steps through `run` and compares with transformers; returns the worst |Δ|.
fn check_steps(label: &str, name: &str, model: &Value, mut run: impl FnMut(&[u32]) -> Vec<f32>) -> f32 {
    let dir = fixtures().join(name);
    let mut worst = 0.0f32;
    for step in ["prefill", "decode_0", "decode_1", "decode_2"] {
        let s = &model["logits"][step];
        let ours = run(&tokens(&s["tokens"]));
        let hf = read_f32(&dir.join(s["file"].as_str().unwrap()));
        let d = max_abs_diff(&ours, &hf);
        assert!(d <= 1e-4, "{label} {name} {step}: max |ours − transformers| = {d:e} > 1e-4");
        worst = worst.max(d);
    }
    worst
}

/// The default device (lavapipe here: shader-f16, so the `enable f16;` kernels).
fn ctx() -> GpuContext {
    let ctx = pollster::block_on(GpuContext::new_default()).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    println!("adapter: {}", ctx.adapter_summary());
    ctx
}

/// The same adapter opened without shader-f16: the kernels fall back to packed u32 words.
fn ctx_without_f16() -> GpuContext {
    pollster::block_on(async {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, force_fallback_adapter: false, compatible_surface: None, apply_limit_buckets: false })
            .await
            .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("no shader-f16"),
                required_features: wgpu::Features::empty(),
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .unwrap();
        GpuContext::from_device(device, queue)
    })
}

/// HF F16 folders: every linear stays F16 and holds half the bytes of its f32 widening; CPU
/// logits within 1e-4 of transformers.
#[test]
fn f16_checkpoints_load_as_f16_and_match_transformers_on_cpu() {
    let m = manifest();
    for model in m["models"].as_array().unwrap() {
        let name = model["name"].as_str().unwrap();
        let llama = load_hf(name);
        let (mut f16_bytes, mut f32_bytes) = (0usize, 0usize);
        for lin in linears(&llama) {
            assert!(matches!(lin.weight, WeightStorage::F16(_)), "{name}: a linear is not F16");
            let bias = lin.bias.as_ref().map_or(0, |b| b.len() * 4);
            f16_bytes += lin.weight_bytes() - bias;
            f32_bytes += Linear::f32(lin.out_features, lin.in_features, lin.to_f32(), None).weight_bytes();
        }
        assert_eq!(2 * f16_bytes, f32_bytes, "{name}: resident linear weight bytes");
        let mut cache = KvCache::new(&llama.config);
        let worst = check_steps("CPU", name, model, |t| llama.forward(t, &mut cache).unwrap());
        println!("{name} CPU: max |Δ| vs transformers {worst:.2e}; linear weights {f16_bytes} B (f32: {f32_bytes} B)");
    }
}

/// The GPU path on F16 weights, both kernel variants: a 7-token batch (under
/// HMATMUL_MIN_TOKENS: one hmatvec per token at aligned offsets in one encoder) and token by
/// token with the 128-row embedding / head split into 64-row chunks. (hmatmul: the next tests.)
#[test]
fn f16_checkpoints_match_transformers_on_gpu_both_variants() {
    let m = manifest();
    let option_sets = [
        GpuLlamaOptions { max_context: 32, max_batch: 32, decode_splits: None, max_chunk_rows: None },
        GpuLlamaOptions { max_context: 32, max_batch: 1, decode_splits: None, max_chunk_rows: Some(64) },
    ];
    let mut runs = 0;
    for (variant, make) in [(HalfVariant::F16, ctx as fn() -> GpuContext), (HalfVariant::Packed, ctx_without_f16)] {
        for model in m["models"].as_array().unwrap() {
            let name = model["name"].as_str().unwrap();
            let llama = load_hf(name);
            for (oi, opts) in option_sets.iter().enumerate() {
                let c = make();
                if variant == HalfVariant::F16 && HalfVariant::of(&c) != HalfVariant::F16 {
                    assert!(!c.adapter_info.name.contains("llvmpipe"), "lavapipe offers shader-f16");
                    println!("{name}: this adapter has no shader-f16; the f16 variant is not run");
                    continue;
                }
                assert_eq!(HalfVariant::of(&c), variant);
                let mut gpu = GpuLlama::new(c, &llama, opts.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                let label = format!("GPU {variant:?} options {oi}");
                let worst = check_steps(&label, name, model, |t| pollster::block_on(gpu.forward(t)).unwrap_or_else(|e| panic!("{label} {name}: {e}")));
                println!("{name} {label} (batched prefill {}): max |Δ| vs transformers {worst:.2e}", gpu.batched_prefill());
                runs += 1;
            }
        }
    }
    assert!(runs >= 4, "the packed variant runs on every adapter");
}

/// The GGUF F16 twin (llama.cpp layout: F16 matrices, permuted Q/K, F32 norms) loads as F16 and
/// gives transformers' logits on the CPU and the GPU.
#[test]
fn gguf_f16_matches_transformers() {
    let m = manifest();
    let mut checked = 0;
    for model in m["models"].as_array().unwrap() {
        let Some(file) = model["gguf"].as_str() else { continue };
        let name = model["name"].as_str().unwrap();
        let mut src = FileSource::open(&fixtures().join(file)).unwrap();
        let llama = LlamaModel::from_gguf(&mut src).unwrap_or_else(|e| panic!("{file}: {e}"));
        for lin in linears(&llama) {
            assert!(matches!(lin.weight, WeightStorage::F16(_)), "{file}: a linear is not F16");
        }
        let mut cache = KvCache::new(&llama.config);
        let cpu = check_steps("GGUF CPU", name, model, |t| llama.forward(t, &mut cache).unwrap());
        let mut gpu = GpuLlama::new(ctx(), &llama, GpuLlamaOptions { max_context: 32, ..Default::default() }).unwrap();
        let g = check_steps("GGUF GPU", name, model, |t| pollster::block_on(gpu.forward(t)).unwrap());
        println!("{file}: max |Δ| vs transformers CPU {cpu:.2e}, GPU {g:.2e}");
        checked += 1;
    }
    assert!(checked >= 1);
}

/// A 20-token prompt in one batch (≥ 16 tokens: the F16 products run `hmatmul`, llama_gpu's
/// HMATMUL_MIN_TOKENS) then a decode step: GPU vs our CPU path (itself within 1e-4 of
/// transformers above) within 1e-4, both variants, whole weights and 64-row chunks.
#[test]
fn f16_long_prompt_batched_matches_cpu_on_gpu() {
    let prompt: Vec<u32> = (0..20u32).map(|i| (i * 37 + 5) % 128).collect();
    for name in ["llama_tied_f16", "qwen2_f16"] {
        let llama = load_hf(name);
        let mut cache = KvCache::new(&llama.config);
        let want = llama.forward(&prompt, &mut cache).unwrap();
        let want_next = llama.forward(&[9], &mut cache).unwrap();
        for make in [ctx as fn() -> GpuContext, ctx_without_f16] {
            for chunk in [None, Some(64)] {
                let c = make();
                let v = HalfVariant::of(&c);
                let mut gpu = GpuLlama::new(c, &llama, GpuLlamaOptions { max_context: 32, max_batch: 32, decode_splits: None, max_chunk_rows: chunk }).unwrap();
                assert!(gpu.batched_prefill(), "{name}: F16 weights batch");
                let got = pollster::block_on(gpu.forward(&prompt)).unwrap();
                let next = pollster::block_on(gpu.forward(&[9])).unwrap();
                let (d, dn) = (max_abs_diff(&got, &want), max_abs_diff(&next, &want_next));
                assert!(d <= 1e-4 && dn <= 1e-4, "{name} {v:?} chunk {chunk:?}: max |GPU − CPU| prefill {d:e}, decode {dn:e}");
                println!("{name} {v:?} chunk {chunk:?}: 20-token batch max |GPU − CPU| {d:.2e}, next step {dn:.2e}");
            }
        }
    }
}
