#![cfg(not(target_arch = "wasm32"))]
//! The CPU Llama-family forward pass against Hugging Face transformers (f32, eager attention).
//!
//! Fixtures: tests/fixtures/llama/, written by scripts/fixtures/make_llama_fixtures.py (tiny random
//! Llama tied / Llama untied + llama3 RoPE / Qwen2 q,k,v bias + yarn / Mistral + dynamic NTK;
//! logits of a 7-token prefill and 3 one-token decode steps with past_key_values; rope.json holds
//! transformers' inv_freq and attention factor for each rope type).

mod fixture_io;

use std::path::{Path, PathBuf};

use crucible::formats::checkpoint::{Checkpoint, DirFiles};
use crucible::models::{KvCache, LlamaConfig, LlamaModel, ModelError};
use crucible::posenc::RopeScaling;
use serde_json::Value;
use fixture_io::{read_f32, tokens, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    let m: Value = serde_json::from_str(&text).expect("manifest JSON");
    assert_eq!(m["version"], 1, "fixture manifest version");
    m
}

fn load(dir: &Path) -> Result<LlamaModel, ModelError> {
    let mut ckpt = Checkpoint::open(Box::new(DirFiles::new(dir)))?;
    LlamaModel::from_checkpoint(&mut ckpt)
}

#[test]
fn logits_match_transformers_prefill_and_decode() {
    let m = manifest();
    let mut report = Vec::new();
    for model in m["models"].as_array().unwrap() {
        let name = model["name"].as_str().unwrap();
        let dir = fixtures().join(name);
        let llama = load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut cache = KvCache::new(&llama.config);
        let steps = ["prefill", "decode_0", "decode_1", "decode_2"];
        let mut worst = 0.0f32;
        for step in steps {
            let s = &model["logits"][step];
            assert_eq!(s["start_pos"].as_u64().unwrap() as usize, cache.len(), "{name} {step}");
            let ours = llama.forward(&tokens(&s["tokens"]), &mut cache).unwrap();
            let theirs = read_f32(&dir.join(s["file"].as_str().unwrap()));
            let shape: Vec<usize> = s["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            assert_eq!(theirs.len(), shape.iter().product::<usize>());
            let err = max_abs_diff(&ours, &theirs);
            // Tolerance: 1e-4 absolute on logits of magnitude ≲ 3 (f32; summation order differs from torch's BLAS).
            assert!(err <= 1e-4, "{name} {step}: max |ours − transformers| = {err:e} > 1e-4");
            worst = worst.max(err);
        }
        report.push(format!("{name}: max abs err {worst:e}"));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn prefill_then_decode_equals_one_long_prefill() {
    let m = manifest();
    let all = tokens(&m["tokens"]);
    let n = m["prefill"].as_u64().unwrap() as usize;
    for model in m["models"].as_array().unwrap() {
        let name = model["name"].as_str().unwrap();
        let llama = load(&fixtures().join(name)).unwrap();
        if matches!(llama.config.rope.scaling, RopeScaling::Dynamic { .. }) {
            // Dynamic NTK changes θ with the length of each call (as transformers does), so a long
            // prefill and prefill + decode legitimately differ past max_position_embeddings.
            continue;
        }
        let v = llama.config.vocab_size;
        let mut long_cache = KvCache::new(&llama.config);
        let long = llama.forward(&all, &mut long_cache).unwrap();
        let mut cache = KvCache::new(&llama.config);
        let mut stepped = llama.forward(&all[..n], &mut cache).unwrap();
        for &t in &all[n..] {
            stepped.extend(llama.forward(&[t], &mut cache).unwrap());
        }
        assert_eq!(cache.len(), all.len());
        assert_eq!(long.len(), all.len() * v);
        let err = max_abs_diff(&long, &stepped);
        // Each row is computed by the same operations in the same order either way: 1e-6 absolute.
        assert!(err <= 1e-6, "{name}: long prefill vs prefill + decode differ by {err:e}");
    }
}

#[test]
fn rope_inv_freq_matches_transformers() {
    let text = std::fs::read_to_string(fixtures().join("rope.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["version"], 1);
    for case in r["cases"].as_array().unwrap() {
        let label = case["label"].as_str().unwrap();
        // The script built LlamaConfig(hidden_size=256, num_attention_heads=4, **config).
        let mut cfg = case["config"].clone();
        let obj = cfg.as_object_mut().unwrap();
        for (k, v) in [("hidden_size", 256), ("num_attention_heads", 4), ("intermediate_size", 8), ("num_hidden_layers", 1), ("vocab_size", 8)] {
            obj.insert(k.into(), v.into());
        }
        let c = LlamaConfig::from_json(&cfg).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(c.rope.dim, case["head_dim"].as_u64().unwrap() as usize);
        let seq_len = case["seq_len"].as_u64().map(|s| s as usize);
        let f = c.rope.freqs(seq_len);
        let want: Vec<f32> = case["inv_freq"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(f.inv_freq.len(), want.len(), "{label}");
        for (i, (a, b)) in f.inv_freq.iter().zip(&want).enumerate() {
            // Relative 1e-6 (a few f32 ulps: transformers' pow runs in f32).
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{label}: inv_freq[{i}] = {a:e}, transformers {b:e}");
        }
        let att = case["attention_factor"].as_f64().unwrap() as f32;
        assert!((f.attention_factor - att).abs() <= 1e-6, "{label}: attention factor {} vs {att}", f.attention_factor);
    }
}

/// A copy of a fixture with its config.json edited, in a fresh temporary directory.
fn edited_copy(name: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let src = fixtures().join(name);
    let dst = std::env::temp_dir().join(format!("crucible-llama-{name}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("model.safetensors"), dst.join("model.safetensors")).unwrap();
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(cfg.as_object_mut().unwrap());
    std::fs::write(dst.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    dst
}

fn rand_suffix() -> u128 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u128
}

#[test]
fn loader_errors_name_the_tensor_and_shapes() {
    // A config that promises more layers than stored: the first missing tensor is named.
    let dir = edited_copy("llama_tied", |c| {
        c.insert("num_hidden_layers".into(), 3.into());
    });
    match load(&dir) {
        Err(ModelError::MissingTensor { tensor, .. }) => assert_eq!(tensor, "model.layers.2.input_layernorm.weight"),
        other => panic!("expected a missing tensor, got {:?}", other.map(|_| ())),
    }
    // Untied config over a tied checkpoint: lm_head.weight is missing.
    let dir2 = edited_copy("llama_tied", |c| {
        c.insert("tie_word_embeddings".into(), false.into());
    });
    let e = load(&dir2).expect_err("error");
    assert!(e.to_string().contains("missing tensor lm_head.weight"), "{e}");
    // A wrong intermediate size: the shape error names the tensor and both shapes.
    let dir3 = edited_copy("llama_tied", |c| {
        c.insert("intermediate_size".into(), 48.into());
    });
    match load(&dir3) {
        Err(ModelError::Shape { tensor, expected, found, .. }) => {
            assert_eq!(tensor, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!((expected, found), (vec![48, 32], vec![64, 32]));
        }
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
    // A bad rope_parameters field is reported by its name.
    let dir4 = edited_copy("llama_llama3", |c| {
        c["rope_parameters"].as_object_mut().unwrap().remove("low_freq_factor");
    });
    let e = load(&dir4).expect_err("error");
    assert!(e.to_string().contains("rope_parameters.low_freq_factor"), "{e}");
    for d in [dir, dir2, dir3, dir4] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bad_tokens_and_caches_are_errors() {
    let llama = load(&fixtures().join("qwen2_yarn")).unwrap();
    let mut cache = KvCache::new(&llama.config);
    match llama.forward(&[3, 128], &mut cache) {
        Err(ModelError::TokenOutOfRange { token: 128, index: 1, vocab: 128 }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(cache.len(), 0, "a failed call leaves the cache as it was");
    let other = load(&fixtures().join("llama_tied")).unwrap();
    let mut cfg = other.config.clone();
    cfg.num_hidden_layers = 5;
    let mut wrong = KvCache::new(&cfg);
    assert!(matches!(llama.forward(&[3], &mut wrong), Err(ModelError::CacheMismatch { .. })));
    assert!(llama.forward(&[], &mut cache).unwrap().is_empty());
}

/// The fixtures exercise what they claim: without the sliding window, or with static RoPE instead of
/// dynamic NTK, our logits no longer match transformers'.
#[test]
fn window_and_dynamic_fixtures_are_sensitive() {
    let m = manifest();
    let all = tokens(&m["tokens"]);
    let n = m["prefill"].as_u64().unwrap() as usize;
    let last_decode_err = |name: &str, edit: &dyn Fn(&mut LlamaConfig)| -> f32 {
        let llama = load(&fixtures().join(name)).unwrap();
        let mut cfg = llama.config.clone();
        edit(&mut cfg);
        let altered = LlamaModel::new(cfg, llama.weights.clone(), llama.rope_layout);
        let mut cache = KvCache::new(&altered.config);
        altered.forward(&all[..n], &mut cache).unwrap();
        let mut last = Vec::new();
        for &t in &all[n..] {
            last = altered.forward(&[t], &mut cache).unwrap();
        }
        let theirs = read_f32(&fixtures().join(name).join("logits_decode_2.f32"));
        max_abs_diff(&last, &theirs)
    };
    assert!(last_decode_err("mistral_window", &|c| c.layer_windows = vec![None; c.num_hidden_layers]) > 1e-2);
    assert!(last_decode_err("qwen2_window", &|c| c.layer_windows = vec![None; c.num_hidden_layers]) > 1e-2);
    assert!(last_decode_err("qwen2_window", &|c| c.layer_windows = vec![Some(3); c.num_hidden_layers]) > 1e-2);
    assert!(last_decode_err("mistral_dynamic", &|c| c.rope.scaling = RopeScaling::Default) > 1e-3);
    assert!(last_decode_err("qwen2_yarn", &|c| c.rope.scaling = RopeScaling::Default) > 1e-2);
    assert!(last_decode_err("llama_llama3", &|c| c.rope.scaling = RopeScaling::Default) > 1e-3);
}

/// llama.cpp's `convert_hf_to_gguf.py` permutes Q and K rows per head
/// (`reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)`: row i → 2i, row i + hd/2 → 2i + 1) so that RoPE
/// rotates adjacent pairs. Permuted weights + `RopeLayout::Adjacent` give the same logits.
#[test]
fn gguf_permuted_qk_with_adjacent_layout_matches() {
    use crucible::models::Linear;
    use crucible::posenc::RopeLayout;
    fn permute(l: &Linear, n_heads: usize) -> Linear {
        let hd = l.out_features / n_heads;
        let src_row = |r: usize| {
            let (h, j) = (r / hd, r % hd);
            h * hd + if j % 2 == 0 { j / 2 } else { j / 2 + hd / 2 }
        };
        let w = l.to_f32(); // (out, in) row-major, any storage
        let mut out = Vec::with_capacity(w.len());
        for r in 0..l.out_features {
            let s = src_row(r);
            out.extend_from_slice(&w[s * l.in_features..(s + 1) * l.in_features]);
        }
        let bias = l.bias.as_ref().map(|b| (0..l.out_features).map(|r| b[src_row(r)]).collect());
        Linear::f32(l.out_features, l.in_features, out, bias)
    }
    let m = manifest();
    for name in ["llama_tied", "qwen2_yarn"] {
        let hf = load(&fixtures().join(name)).unwrap();
        let mut w = hf.weights.clone();
        for layer in &mut w.layers {
            layer.q_proj = permute(&layer.q_proj, hf.config.num_attention_heads);
            layer.k_proj = permute(&layer.k_proj, hf.config.num_key_value_heads);
        }
        let gguf = LlamaModel::new(hf.config.clone(), w, RopeLayout::Adjacent);
        let model = m["models"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap();
        let s = &model["logits"]["prefill"];
        let ours = gguf.forward(&tokens(&s["tokens"]), &mut KvCache::new(&gguf.config)).unwrap();
        let theirs = read_f32(&fixtures().join(name).join(s["file"].as_str().unwrap()));
        let err = max_abs_diff(&ours, &theirs);
        // Same tolerance as the HF-layout comparison: 1e-4 absolute.
        assert!(err <= 1e-4, "{name}: adjacent layout differs by {err:e}");
    }
}
