//! Tokenizers: the one embedded in a GGUF file, and Hugging Face `tokenizer.json`, both as a
//! `tokenizers::Tokenizer`.
//!
//! Byte-level BPE: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"
//! (GPT-2, §2.2); Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword
//! Units" (BPE). Reference implementations: llama.cpp `src/llama-vocab.cpp` (reading the
//! `tokenizer.ggml.*` keys: `tokens`, `merges`, `token_type`, `bos_token_id`, `eos_token_id`,
//! `add_bos_token`; `LLAMA_TOKEN_TYPE_CONTROL = 3`), and Hugging Face `tokenizers`
//! (`models::bpe`, `pre_tokenizers::byte_level`), which does the actual work here.
//!
//! GGUF `tokenizer.ggml.model == "gpt2"` stores the vocabulary already in GPT-2's byte-to-unicode
//! alphabet (`Ġ` for a space, `Ċ` for a newline) and merges as `"a b"` strings, exactly as a
//! `tokenizer.json` BPE model does, so the vocabulary and merges go to `tokenizers::models::bpe::BPE`
//! unchanged. Pre-tokenizer and decoder are ByteLevel (no prefix space, GPT-2 regex); the
//! `tokenizer.ggml.pre` type picks what runs before it, as llama.cpp's `llm_tokenizer_bpe` does:
//! absent / "default" / "gpt2": nothing; "smollm" and the other types llama.cpp groups with it
//! (starcoder, refact, command-r, codeshell, exaone, minerva): every numeric character (`\p{N}`) split
//! off on its own first. Any other pre type (llama3, qwen2, deepseek, …) uses a different regex and is
//! refused with an error naming it rather than tokenized subtly wrong.
//! Other tokenizer models (`llama` SentencePiece, `bert` WordPiece, `t5` Unigram, …) are refused
//! with an error naming the model type.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::formats::gguf::{Gguf, GgufError};

/// `tokenizer.ggml.token_type` values (llama.cpp `enum llama_token_type`).
pub const TOKEN_TYPE_NORMAL: i64 = 1;
pub const TOKEN_TYPE_UNKNOWN: i64 = 2;
pub const TOKEN_TYPE_CONTROL: i64 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Errors building a tokenizer. Every message names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}")]
    Gguf(#[from] GgufError),
    /// The GGUF tokenizer model is one this build does not read.
    #[error("{file}: metadata key \"tokenizer.ggml.model\": tokenizer model {model:?} is not supported (supported: \"gpt2\" byte-level BPE)")]
    UnsupportedModel { file: String, model: String },
    /// Metadata that is present but inconsistent.
    /// The GGUF pre-tokenizer type is one this build does not reproduce.
    #[error("{file}: metadata key \"tokenizer.ggml.pre\": pre-tokenizer type {pre:?} is not supported (supported: default, gpt2, {})", PRE_DIGITS.join(", "))]
    UnsupportedPre { file: String, pre: String },
    #[error("{file}: metadata key {key:?}: {message}")]
    Invalid { file: String, key: String, message: String },
    /// `tokenizers` refused the vocabulary, merges or JSON.
    #[error("{file}: {message}")]
    Build { file: String, message: String },
}

/// `tokenizer.ggml.pre` types whose llama.cpp regexes are `\p{N}` then the GPT-2 regex.
pub const PRE_DIGITS: [&str; 7] = ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"];

/// The pre-tokenizer for a `tokenizer.ggml.pre` type (None: the key is absent).
fn pre_tokenizer(g: &Gguf, pre: Option<&str>) -> Result<PreTokenizerWrapper, TokenizerError> {
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        None | Some("default") | Some("gpt2") => Ok(byte_level.into()),
        Some(p) if PRE_DIGITS.contains(&p) => {
            let digits = Split::new(SplitPattern::Regex(r"\p{N}".into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| invalid(g, "tokenizer.ggml.pre", e.to_string()))?;
            Ok(Sequence::new(vec![digits.into(), byte_level.into()]).into())
        }
        Some(p) => Err(TokenizerError::UnsupportedPre { file: g.file.clone(), pre: p.to_string() }),
    }
}

/// Special token ids and flags read from GGUF metadata next to the tokenizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

fn invalid(g: &Gguf, key: &str, message: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid { file: g.file.clone(), key: key.to_string(), message: message.into() }
}

/// An optional token id key: absent → None; present → must be an integer in 0..n_vocab.
fn optional_id(g: &Gguf, key: &str, n_vocab: usize) -> Result<Option<u32>, TokenizerError> {
    if g.get(key).is_none() {
        return Ok(None);
    }
    let id = g.get_i64(key)?;
    if id < 0 || id as u64 >= n_vocab as u64 {
        return Err(invalid(g, key, format!("token id {id} is outside the vocabulary of {n_vocab} tokens")));
    }
    Ok(Some(id as u32))
}

/// bos/eos ids and `add_bos_token` (default false for gpt2, as llama.cpp does) from the metadata.
pub fn special_tokens_from_gguf(g: &Gguf) -> Result<SpecialTokens, TokenizerError> {
    let n_vocab = g.get_str_array("tokenizer.ggml.tokens")?.len();
    let bos = optional_id(g, "tokenizer.ggml.bos_token_id", n_vocab)?;
    let eos = optional_id(g, "tokenizer.ggml.eos_token_id", n_vocab)?;
    let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
        None => false,
        Some(_) => g.get_bool("tokenizer.ggml.add_bos_token")?,
    };
    Ok(SpecialTokens { bos, eos, add_bos })
}

/// Build the tokenizer embedded in a GGUF file (`tokenizer.ggml.*` keys).
///
/// Only `tokenizer.ggml.model == "gpt2"` (byte-level BPE) is supported. Control tokens
/// (`token_type` 3) become special added tokens (matched whole in the input, skipped by
/// `decode(.., true)`); user-defined tokens (type 4) become non-special added tokens. A BOS token
/// is prepended only when `tokenizer.ggml.add_bos_token` is true.
pub fn tokenizer_from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel { file: g.file.clone(), model: model.to_string() });
    }
    let pre = match g.get("tokenizer.ggml.pre") {
        None => None,
        Some(_) => Some(g.get_str("tokenizer.ggml.pre")?),
    };
    let pre = pre_tokenizer(g, pre)?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(invalid(g, "tokenizer.ggml.tokens", format!("{n} tokens")));
    }
    // tokens: (n_vocab,) strings; id = position.
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.clone(), i as u32).is_some() {
            return Err(invalid(g, "tokenizer.ggml.tokens", format!("token {t:?} appears twice (second at id {i})")));
        }
    }
    // merges: (n_merges,) "left right" strings, in priority order.
    let merges_raw: &[String] = match g.get("tokenizer.ggml.merges") {
        None => &[],
        Some(_) => g.get_str_array("tokenizer.ggml.merges")?,
    };
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(invalid(g, "tokenizer.ggml.merges", format!("merge {i} ({m:?}) is not two tokens separated by a space")));
        };
        merges.push((a.to_string(), b.to_string()));
    }
    // token_type: (n_vocab,) ints, optional.
    let types: Option<Vec<i64>> = match g.get("tokenizer.ggml.token_type") {
        None => None,
        Some(_) => {
            let t = g.get_int_array("tokenizer.ggml.token_type")?;
            if t.len() != n {
                return Err(invalid(g, "tokenizer.ggml.token_type", format!("{} entries for {n} tokens", t.len())));
            }
            Some(t)
        }
    };
    let special = special_tokens_from_gguf(g)?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::Build { file: g.file.clone(), message: format!("tokenizer.ggml.tokens / tokenizer.ggml.merges: {e}") })?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));

    let mut added = Vec::new();
    if let Some(types) = &types {
        for (i, &ty) in types.iter().enumerate() {
            match ty {
                TOKEN_TYPE_CONTROL => added.push(AddedToken::from(tokens[i].clone(), true)),
                TOKEN_TYPE_USER_DEFINED => added.push(AddedToken::from(tokens[i].clone(), false)),
                _ => {}
            }
        }
    }
    // bos/eos are special even where no token_type says so.
    for id in [special.bos, special.eos].into_iter().flatten() {
        let t = &tokens[id as usize];
        if !added.iter().any(|a| &a.content == t) {
            added.push(AddedToken::from(t.clone(), true));
        }
    }
    let (specials, normals): (Vec<_>, Vec<_>) = added.into_iter().partition(|a| a.special);
    tok.add_special_tokens(specials)
        .map_err(|e| TokenizerError::Build { file: g.file.clone(), message: format!("tokenizer.ggml.token_type: {e}") })?;
    tok.add_tokens(normals)
        .map_err(|e| TokenizerError::Build { file: g.file.clone(), message: format!("tokenizer.ggml.token_type: {e}") })?;

    if special.add_bos {
        let Some(bos) = special.bos else {
            return Err(invalid(g, "tokenizer.ggml.add_bos_token", "is true but tokenizer.ggml.bos_token_id is missing"));
        };
        let bos_str = tokens[bos as usize].clone();
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos_str} $A"))
            .and_then(|b| b.try_pair(format!("{bos_str} $A {bos_str} $B")))
            .map_err(|e| invalid(g, "tokenizer.ggml.add_bos_token", e.to_string()))?
            .special_tokens(vec![(bos_str, bos)])
            .build()
            .map_err(|e| invalid(g, "tokenizer.ggml.add_bos_token", e.to_string()))?;
        tok.with_post_processor(Some(post));
    }
    Ok(tok)
}

/// Read a Hugging Face `tokenizer.json`. `file` names it in errors.
pub fn tokenizer_from_json(file: &str, bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Build { file: file.to_string(), message: format!("invalid tokenizer.json: {e}") })
}
