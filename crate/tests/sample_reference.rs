#![cfg(not(target_arch = "wasm32"))]
//! Crucible's samplers against Hugging Face `generate`'s logits processors.
//!
//! Fixtures: `tests/fixtures/sampling/` made by `scripts/fixtures/make_sampling_fixtures.py`
//! (transformers 5.x): random logits rows (vocab 50–200, one with pre-masked tokens) and token
//! histories, each HF processor alone and the chains HF's own `_get_logits_processor` builds.
//! Presence / frequency cases use the OpenAI / llama.cpp formula (not an HF processor).

use std::path::{Path, PathBuf};

use crucible::sample::{self, Sampler, SamplingError, SamplingParams};
use serde::Deserialize;

#[derive(Deserialize)]
struct Manifest {
    version: u32,
    rows: Vec<Row>,
    cases: Vec<Case>,
    generate: Vec<GenerateRun>,
}

/// One `model.generate` run of a tiny random Llama: per step the raw logits and HF's scores.
#[derive(Deserialize)]
struct GenerateRun {
    name: String,
    params: SamplingParams,
    vocab: usize,
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    logits: usize,
    scores: usize,
}

#[derive(Deserialize)]
struct Row {
    vocab: usize,
    history: Vec<u32>,
    offset: usize,
}

#[derive(Deserialize)]
struct Case {
    row: usize,
    kind: String,
    name: String,
    hf_processors: Vec<String>,
    params: SamplingParams,
    offset: usize,
    argmax: Option<u32>,
}

struct Fixtures {
    manifest: Manifest,
    inputs: Vec<f32>,
    outputs: Vec<f32>,
    generate: Vec<f32>,
}

impl Fixtures {
    fn input(&self, row: usize) -> (&[f32], &[u32]) {
        let r = &self.manifest.rows[row];
        (&self.inputs[r.offset..r.offset + r.vocab], &r.history)
    }
    fn expected(&self, case: &Case) -> &[f32] {
        let v = self.manifest.rows[case.row].vocab;
        &self.outputs[case.offset..case.offset + v]
    }
    fn case(&self, row: usize, name: &str) -> &Case {
        self.manifest.cases.iter().find(|c| c.row == row && c.name == name).expect("case in manifest")
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sampling")
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(dir().join(name)).expect("fixture file");
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn load() -> Fixtures {
    let text = std::fs::read_to_string(dir().join("manifest.json")).expect("manifest.json");
    let manifest: Manifest = serde_json::from_str(&text).expect("manifest parses");
    assert_eq!(manifest.version, 2, "fixture version");
    Fixtures { manifest, inputs: read_f32("inputs.f32"), outputs: read_f32("outputs.f32"), generate: read_f32("generate.f32") }
}

/// −inf positions identical; finite values within 1e-6 relative (floor 1e-3 on the magnitude).
fn compare(ours: &[f32], hf: &[f32], what: &str) -> f64 {
    assert_eq!(ours.len(), hf.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (&a, &b)) in ours.iter().zip(hf).enumerate() {
        assert_eq!(a == f32::NEG_INFINITY, b == f32::NEG_INFINITY, "{what}: token {i}: ours {a}, HF {b}");
        if b.is_finite() {
            assert!(a.is_finite(), "{what}: token {i}: ours {a}, HF {b}");
            let rel = (a as f64 - b as f64).abs() / (b.abs() as f64).max(1e-3);
            assert!(rel <= 1e-6, "{what}: token {i}: ours {a}, HF {b} (rel {rel:e})");
            worst = worst.max(rel);
        }
    }
    worst
}

#[test]
fn every_processor_and_chain_matches_hf() {
    let f = load();
    assert!(f.manifest.cases.len() >= 100, "fixture cases");
    let mut worst = 0.0f64;
    let mut names = std::collections::BTreeSet::new();
    for case in &f.manifest.cases {
        let (row, history) = f.input(case.row);
        let sampler = Sampler::new(case.params.clone()).expect("fixture params are valid");
        let mut ours = row.to_vec();
        sampler.process(&mut ours, history).expect("process");
        let what = format!("row {} {} {} {:?}", case.row, case.kind, case.name, case.hf_processors);
        worst = worst.max(compare(&ours, f.expected(case), &what));
        names.insert(case.name.clone());
    }
    // each HF processor alone and the chains are all present
    for n in ["repetition_1.3", "ngram_2", "temperature_0.7", "top_k_5", "top_p_0.6", "min_p_0.2", "chain_all"] {
        assert!(names.contains(n), "missing case {n}");
    }
    eprintln!("{} cases, worst relative difference {worst:e}", f.manifest.cases.len());
}

#[test]
fn free_functions_match_hf_alone() {
    // The building blocks, called directly, equal HF's processors constructed alone.
    let f = load();
    for case in f.manifest.cases.iter().filter(|c| c.kind == "alone") {
        let (row, history) = f.input(case.row);
        let p = &case.params;
        let mut ours = row.to_vec();
        match case.hf_processors[0].as_str() {
            "RepetitionPenaltyLogitsProcessor" => sample::repetition_penalty(&mut ours, history, p.repetition_penalty),
            "NoRepeatNGramLogitsProcessor" => sample::no_repeat_ngram(&mut ours, history, p.no_repeat_ngram_size),
            "TemperatureLogitsWarper" => sample::temperature(&mut ours, p.temperature),
            "TopKLogitsWarper" => sample::top_k(&mut ours, p.top_k),
            "TopPLogitsWarper" => sample::top_p(&mut ours, p.top_p),
            "MinPLogitsWarper" => sample::min_p(&mut ours, p.min_p),
            "PresenceFrequencyPenalty" => {
                sample::presence_frequency_penalty(&mut ours, history, p.presence_penalty, p.frequency_penalty)
            }
            other => panic!("unknown processor {other}"),
        }
        compare(&ours, f.expected(case), &format!("row {} {}", case.row, case.name));
    }
}

#[test]
fn replays_hf_generate_loops() {
    // The decode loop of `generate`: history = prompt + tokens so far. Every step's processed
    // scores equal HF's; greedy runs pick HF's tokens; sampled runs' HF tokens survive our chain.
    let f = load();
    assert!(f.manifest.generate.len() >= 3);
    for run in &f.manifest.generate {
        let v = run.vocab;
        let mut sampler = Sampler::new(run.params.clone()).unwrap();
        let mut history = run.prompt.clone();
        assert_eq!(run.steps.len(), run.tokens.len());
        for (t, (step, &token)) in run.steps.iter().zip(&run.tokens).enumerate() {
            let raw = &f.generate[step.logits..step.logits + v];
            let hf = &f.generate[step.scores..step.scores + v];
            let mut ours = raw.to_vec();
            let picked = sampler.sample(&mut ours, &history).unwrap();
            compare(&ours, hf, &format!("generate {} step {t}", run.name));
            if run.params.is_greedy() {
                assert_eq!(picked, token, "generate {} step {t}: greedy token", run.name);
            } else {
                assert!(ours[token as usize].is_finite(), "generate {} step {t}: HF drew a token we removed", run.name);
            }
            history.push(token);
        }
    }
}

#[test]
fn greedy_picks_equal_argmax_of_hf_scores() {
    let f = load();
    let mut changed = 0;
    for case in &f.manifest.cases {
        let (row, history) = f.input(case.row);
        let expected = case.argmax.expect("fixture rows keep a token");
        // argmax of HF's processed scores, lowest id on ties
        assert_eq!(sample::argmax(f.expected(case)), Some(expected), "{}", case.name);
        if case.name.starts_with("chain_greedy") {
            assert!(case.params.is_greedy());
            let mut s = Sampler::new(case.params.clone()).unwrap();
            let mut l = row.to_vec();
            assert_eq!(s.sample(&mut l, history).unwrap(), expected, "greedy row {}", case.row);
            if sample::argmax(row) != Some(expected) {
                changed += 1;
            }
        }
    }
    // the fixtures include rows where the penalties change the greedy pick
    assert!(changed >= 1, "no greedy pick changed by the penalties");
}

#[test]
fn sampling_frequencies_follow_processed_softmax() {
    let f = load();
    let n = 20_000usize;
    for (row, name, seed) in [(0, "chain_all", 1u64), (3, "chain_topp_hot", 2), (3, "chain_presence_frequency", 3), (0, "chain_defaults_minp", 4)] {
        let case = f.case(row, name);
        let (logits, history) = f.input(row);
        let probs = sample::softmax(f.expected(case)).expect("some token kept");
        let mut params = case.params.clone();
        params.seed = seed;
        let mut s = Sampler::new(params).unwrap();
        let mut counts = vec![0usize; logits.len()];
        let mut scratch = logits.to_vec();
        for _ in 0..n {
            scratch.copy_from_slice(logits);
            counts[s.sample(&mut scratch, history).unwrap() as usize] += 1;
        }
        let mut chi2 = 0.0;
        let mut dof = 0;
        for (t, (&c, &p)) in counts.iter().zip(&probs).enumerate() {
            let freq = c as f64 / n as f64;
            if p == 0.0 {
                assert_eq!(c, 0, "{name}: removed token {t} drawn");
                continue;
            }
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!((freq - p).abs() <= 5.0 * se + 1.0 / n as f64, "{name}: token {t}: freq {freq}, p {p}, se {se}");
            chi2 += (c as f64 - n as f64 * p).powi(2) / (n as f64 * p);
            dof += 1;
        }
        assert!(dof >= 10, "{name}: only {dof} candidates, a weak test");
        // chi-square with dof−1 degrees of freedom: mean dof−1, sd √(2(dof−1)); allow 5 sd
        let k = (dof - 1) as f64;
        assert!(chi2 < k + 5.0 * (2.0 * k).sqrt() + 5.0, "{name}: chi2 {chi2} with {k} dof");
        eprintln!("{name}: {dof} candidate tokens, chi2 {chi2:.1} (dof {k})");
    }
}

#[test]
fn same_seed_same_tokens() {
    let f = load();
    let case = f.case(5, "chain_topp_hot");
    let (logits, prompt) = f.input(5);
    let generate = |seed: u64| {
        let mut params = case.params.clone();
        params.seed = seed;
        let mut s = Sampler::new(params).unwrap();
        let mut history = prompt.to_vec();
        for _ in 0..100 {
            let mut l = logits.to_vec();
            let t = s.sample(&mut l, &history).unwrap();
            history.push(t);
        }
        history[prompt.len()..].to_vec()
    };
    let a = generate(7);
    assert_eq!(a, generate(7));
    assert_ne!(a, generate(8));
    // a clone continues the same stream
    let mut s = Sampler::new(case.params.clone()).unwrap();
    let mut l = logits.to_vec();
    s.sample(&mut l, prompt).unwrap();
    let mut c = s.clone();
    let draws: Vec<f64> = (0..5).map(|_| s.next_uniform()).collect();
    assert_eq!(draws, (0..5).map(|_| c.next_uniform()).collect::<Vec<_>>());
}

#[test]
fn validation_errors_name_their_field() {
    let d = SamplingParams::default();
    let cases: Vec<(&str, SamplingParams)> = vec![
        ("temperature", SamplingParams { temperature: -0.1, ..d.clone() }),
        ("temperature", SamplingParams { temperature: f32::NAN, ..d.clone() }),
        ("temperature", SamplingParams { temperature: f32::INFINITY, ..d.clone() }),
        ("top_p", SamplingParams { top_p: 0.0, ..d.clone() }),
        ("top_p", SamplingParams { top_p: 1.5, ..d.clone() }),
        ("top_p", SamplingParams { top_p: f32::NAN, ..d.clone() }),
        ("min_p", SamplingParams { min_p: -0.01, ..d.clone() }),
        ("min_p", SamplingParams { min_p: 1.01, ..d.clone() }),
        ("repetition_penalty", SamplingParams { repetition_penalty: 0.0, ..d.clone() }),
        ("repetition_penalty", SamplingParams { repetition_penalty: -1.0, ..d.clone() }),
        ("repetition_penalty", SamplingParams { repetition_penalty: f32::INFINITY, ..d.clone() }),
        ("presence_penalty", SamplingParams { presence_penalty: f32::NAN, ..d.clone() }),
        ("frequency_penalty", SamplingParams { frequency_penalty: f32::NEG_INFINITY, ..d.clone() }),
    ];
    for (field, p) in cases {
        let err = Sampler::new(p).expect_err(field);
        match &err {
            SamplingError::InvalidParam { field: f, .. } => assert_eq!(*f, field),
            other => panic!("{field}: unexpected {other:?}"),
        }
        assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
    }
    // edges that are allowed
    for p in [
        SamplingParams { temperature: 0.0, ..d.clone() },
        SamplingParams { top_p: 1.0, min_p: 1.0, ..d.clone() },
        SamplingParams { presence_penalty: -2.0, frequency_penalty: 2.0, ..d.clone() },
    ] {
        Sampler::new(p).unwrap();
    }
    // unknown field in JSON names the field
    let e = serde_json::from_str::<SamplingParams>(r#"{"top_q": 0.5}"#).unwrap_err().to_string();
    assert!(e.contains("top_q"), "{e}");
}

#[test]
fn bad_logits_are_errors_not_panics() {
    let mut s = Sampler::new(SamplingParams::default()).unwrap();
    assert_eq!(s.sample(&mut [], &[]), Err(SamplingError::EmptyLogits));
    let mut l = vec![0.0, f32::NAN, 1.0];
    assert!(matches!(s.sample(&mut l, &[]), Err(SamplingError::NonFiniteLogit { index: 1, .. })));
    let mut l = vec![0.0, f32::INFINITY];
    assert!(matches!(s.sample(&mut l, &[]), Err(SamplingError::NonFiniteLogit { index: 1, .. })));
    let mut l = vec![f32::NEG_INFINITY; 4];
    assert_eq!(s.sample(&mut l, &[]), Err(SamplingError::NoCandidate));
    // n-gram size 1 bans every seen token: on a vocab of 2 with both seen, nothing is left
    let mut g = Sampler::new(SamplingParams { no_repeat_ngram_size: 1, ..SamplingParams::greedy() }).unwrap();
    assert_eq!(g.sample(&mut [1.0, 2.0], &[0, 1]), Err(SamplingError::NoCandidate));
    // history ids beyond the vocabulary are ignored (as HF's n-gram processor does)
    let mut l = vec![1.0, 2.0];
    let mut r = Sampler::new(SamplingParams { repetition_penalty: 2.0, no_repeat_ngram_size: 1, ..SamplingParams::greedy() }).unwrap();
    assert_eq!(r.sample(&mut l, &[7, 99, u32::MAX]), Ok(1));
    assert_eq!(l, vec![1.0, 2.0]);
}

#[test]
fn defaults_are_hf_generation_defaults() {
    let d = SamplingParams::default();
    assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p), (1.0, 50, 1.0, 0.0));
    assert_eq!((d.repetition_penalty, d.presence_penalty, d.frequency_penalty, d.no_repeat_ngram_size), (1.0, 0.0, 0.0, 0));
    assert!(!d.is_greedy() && SamplingParams::greedy().is_greedy());
    assert_eq!(serde_json::from_str::<SamplingParams>("{}").unwrap(), d);
    let back: SamplingParams = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(back, d);
    let partial: SamplingParams = serde_json::from_str(r#"{"top_p": 0.9, "seed": 5}"#).unwrap();
    assert_eq!(partial, SamplingParams { top_p: 0.9, seed: 5, ..d });
}
