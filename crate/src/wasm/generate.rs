//! The Generate tab's engine: a [`Generator`] holds one model and its tokenizer inside a Web Worker
//! (`web/src/generate.worker.ts`, one worker per model) and produces text one token at a time, so
//! the worker streams every piece to the page and can stop between two steps.
//!
//! References: HF transformers `GenerationMixin.generate` / `TextIteratorStreamer` (prefill the
//! prompt once, then one cached decode step per token; the streamer emits text only once it forms
//! whole characters) and Hugging Face `tokenizers` `DecodeStream` (`step_decode_stream`, used here:
//! the bytes of a multi-byte UTF-8 character split over several byte-level BPE tokens are held back
//! until the character is complete). The model is `models::llama` (Llama-family CPU path, with MoE
//! blocks), sampling is `sample::Sampler` (HF logits processors), perplexity is
//! [`LlamaModel::perplexity`] — the same code as `crucible run` / `crucible eval`.
//!
//! Data path:
//!   GGUF `File`  → `BlobSource` (FileReaderSync) → `Gguf` metadata → tokenizer + `LlamaModel::from_gguf`
//!   HF folder `File`s (config.json, *.safetensors [+ index], tokenizer.json) → `JsModelFiles`
//!       → `Checkpoint` → `LlamaModel::from_checkpoint` (+ optional quantize-on-load to Q8_0 / Q4_0)
//!   `start(prompt)`: ids (T,) → forward → logits (T, vocab), the last row kept for the first sample
//!   `step()`: sample from the kept row → token → decode piece → forward([token]) → next row (vocab,)
//!
//! Backends: the CPU path always works; `use_gpu()` uploads the model to WebGPU
//! (`models::llama_gpu::GpuLlama`: our WGSL kernels, KV cache on the GPU, logits read back each
//! step) when the browser has an adapter and the model is one the GPU path runs (MoE layers
//! included: router, experts and shared expert on the GPU, the experts chosen read back from
//! `GpuLlama::routes` for the heat map — with the logits, once per step, when the experts run by
//! id; `moe_gpu` in the backend JSON says which path and why). A GPU failure in the middle of a generation (device lost, an
//! out-of-memory) moves the generation to the CPU: the tokens so far are run through the CPU
//! model, and the step reports the switch and its reason.
//!
//! Every method returns `Result<_, JsError>` whose message names the file / tensor / field; nothing
//! here panics on bad input.

use js_sys::Function;
use serde_json::json;
use tokenizers::Tokenizer;
use wasm_bindgen::prelude::*;

use crate::formats::checkpoint::Checkpoint;
use crate::gpu::GpuContext;
use crate::models::llama_gpu::{GpuLlama, GpuLlamaOptions};
use crate::formats::gguf::Gguf;
use crate::formats::tokenizer::{special_tokens_from_gguf, tokenizer_from_gguf, tokenizer_from_json};
use crate::models::config::MoeStyle;
use crate::models::llama::{KvCache, Linear, LlamaModel, WeightStorage};
use crate::models::moe::ExpertTrace;
use crate::sample::{Sampler, SamplingParams};
use crate::tensor::quant::BlockFormat;

use super::{BlobSource, JsModelFiles, read_model_list};

fn err(context: &str, e: impl std::fmt::Display) -> JsError {
    JsError::new(&format!("{context}: {e}"))
}

/// One model, its tokenizer and the state of the generation in progress.
#[wasm_bindgen]
pub struct Generator {
    name: String,
    /// "gguf" or "safetensors"
    format: &'static str,
    model: LlamaModel,
    tokenizer: Tokenizer,
    /// Tokens that end a generation (EOS; HF configs may list several).
    eos: Vec<u32>,
    /// Quantize-on-load applied, if any.
    quantized_on_load: Option<BlockFormat>,
    session: Option<Session>,
    /// The model on WebGPU, when `use_gpu` succeeded and nothing failed since.
    gpu: Option<GpuLlama>,
    /// Why the model runs on the CPU (set once a GPU was asked for and could not be used or failed).
    cpu_reason: Option<String>,
    /// Positions the GPU KV cache holds.
    gpu_context: usize,
}

/// A generation between `start` and its last `step`.
struct Session {
    cache: KvCache,
    sampler: Sampler,
    /// Prompt + generated ids (the sampler's history: penalties and n-gram bans look at it).
    history: Vec<u32>,
    prompt_len: usize,
    generated: usize,
    max_tokens: usize,
    /// Logits (vocab,) the next token is drawn from.
    next_logits: Vec<f32>,
    done: Option<&'static str>,
    // `tokenizers` DecodeStream state (`step_decode_stream`).
    dec_ids: Vec<u32>,
    dec_prefix: String,
    dec_prefix_index: usize,
}

/// The experts of one token per layer as JSON: `[[[expert, weight], …k], …layers]` (empty lists
/// for dense layers); `null` for a dense model.
fn trace_json(trace: &ExpertTrace, t: usize, moe: bool) -> serde_json::Value {
    if !moe {
        return serde_json::Value::Null;
    }
    match trace.get(t) {
        Some(layers) => json!(layers.iter().map(|l| l.iter().map(|c| json!([c.expert, c.weight])).collect::<Vec<_>>()).collect::<Vec<_>>()),
        None => serde_json::Value::Null,
    }
}

/// Parameters of a linear layer (weights + bias).
fn linear_params(l: &Linear) -> usize {
    l.out_features * l.in_features + l.bias.as_ref().map_or(0, Vec::len)
}

/// The storage of a linear layer, as shown to the user.
fn storage_name(l: &Linear) -> String {
    match &l.weight {
        WeightStorage::F32(_) => "F32".into(),
        WeightStorage::F16(_) => "F16".into(),
        WeightStorage::Blocks { format, .. } => format.name().to_string(),
        WeightStorage::Split(s) => s.format.name().to_string(),
    }
}

impl Generator {
    fn new(name: String, format: &'static str, model: LlamaModel, tokenizer: Tokenizer, eos: Vec<u32>, quantized_on_load: Option<BlockFormat>) -> Generator {
        Generator { name, format, model, tokenizer, eos, quantized_on_load, session: None, gpu: None, cpu_reason: None, gpu_context: 0 }
    }

    fn moe(&self) -> bool {
        self.model.config.moe.is_some()
    }

    /// forward (traced for MoE models) of `tokens` after the session's cache.
    fn forward(model: &LlamaModel, tokens: &[u32], cache: &mut KvCache, traced: bool) -> Result<(Vec<f32>, ExpertTrace), JsError> {
        if traced {
            model.forward_traced(tokens, cache).map_err(|e| JsError::new(&e.to_string()))
        } else {
            model.forward(tokens, cache).map(|l| (l, Vec::new())).map_err(|e| JsError::new(&e.to_string()))
        }
    }

    /// `{backend, adapter, reason, moe_gpu}` as JSON values (`moe_gpu`: on the GPU, how MoE layers
    /// run: experts by id without a readback per layer, or the reason they read the router back).
    fn backend_json(&self) -> serde_json::Value {
        match &self.gpu {
            Some(g) => json!({ "backend": "gpu", "adapter": g.ctx().adapter_info.name, "cpu_reason": null, "moe_gpu": g.moe_path().map(|p| p.to_string()) }),
            None => json!({ "backend": "cpu", "adapter": null, "cpu_reason": self.cpu_reason, "moe_gpu": null }),
        }
    }

    /// Leave the GPU for good (its error as the reason) and rebuild the session's CPU cache from
    /// the tokens so far; returns the CPU logits after them (vocab,).
    fn fall_back(&mut self, reason: String) -> Result<Vec<f32>, JsError> {
        self.gpu = None;
        self.cpu_reason = Some(format!("WebGPU failed, continuing on the CPU: {reason}"));
        let s = self.session.as_mut().ok_or_else(|| JsError::new("no generation in progress"))?;
        s.cache = KvCache::new(&self.model.config);
        let logits = self.model.forward(&s.history, &mut s.cache).map_err(|e| JsError::new(&e.to_string()))?;
        let v = self.model.config.vocab_size;
        Ok(logits[logits.len() - v..].to_vec())
    }

    fn parse_quantize(quantize: Option<String>) -> Result<Option<BlockFormat>, JsError> {
        match quantize.as_deref().map(str::trim) {
            None | Some("") | Some("none") => Ok(None),
            Some(q) => match q.to_ascii_lowercase().as_str() {
                "q8_0" => Ok(Some(BlockFormat::Q8_0)),
                "q4_0" => Ok(Some(BlockFormat::Q4_0)),
                _ => Err(JsError::new(&format!("quantize on load: {q:?} is not a supported format (q8_0, q4_0, or none)"))),
            },
        }
    }
}

/// EOS ids from a config.json / generation_config.json value (`eos_token_id`: an integer or a list).
fn eos_ids(v: &serde_json::Value) -> Vec<u32> {
    match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect(),
        _ => Vec::new(),
    }
}

#[wasm_bindgen]
impl Generator {
    /// A model from a GGUF file (llama architecture; F32/F16/Q8_0/Q4_0/Q4_1 weights; the
    /// tokenizer embedded in the file). `quantize`: `"q8_0"`, `"q4_0"` or none/empty (re-quantizes
    /// the weights on load). Must run in a Web Worker (`FileReaderSync`).
    pub fn from_gguf(file: web_sys::File, quantize: Option<String>) -> Result<Generator, JsError> {
        let q = Generator::parse_quantize(quantize)?;
        let name = file.name();
        let mut src = BlobSource::new(name.clone(), file).map_err(|e| JsError::new(&e.to_string()))?;
        let gguf = Gguf::read(&mut src).map_err(|e| JsError::new(&e.to_string()))?;
        let tokenizer = tokenizer_from_gguf(&gguf).map_err(|e| JsError::new(&e.to_string()))?;
        let eos = special_tokens_from_gguf(&gguf).map_err(|e| JsError::new(&e.to_string()))?.eos.into_iter().collect();
        let mut model = LlamaModel::from_gguf(&mut src).map_err(|e| JsError::new(&e.to_string()))?;
        if let Some(f) = q {
            model.weights = model.weights.quantize(f, &name).map_err(|e| JsError::new(&e.to_string()))?;
        }
        Ok(Generator::new(name, "gguf", model, tokenizer, eos, q))
    }

    /// A model from a Hugging Face folder: `files` is a `Map`/object from relative path to `File`,
    /// or an array of `File`s, holding config.json, model.safetensors (or shards + index) and
    /// tokenizer.json (generation_config.json is read for EOS ids when present). `name` names the
    /// model in messages. Must run in a Web Worker.
    pub fn from_hf(name: String, files: JsValue, quantize: Option<String>) -> Result<Generator, JsError> {
        let q = Generator::parse_quantize(quantize)?;
        let list = read_model_list(&name, &files).map_err(|m| JsError::new(&m))?;
        let model_files = JsModelFiles { name: name.clone(), files: list };
        let mut ckpt = Checkpoint::open(Box::new(model_files)).map_err(|e| JsError::new(&e.to_string()))?;
        let tok_bytes = ckpt
            .read_file("tokenizer.json")
            .map_err(|e| JsError::new(&e.to_string()))?
            .ok_or_else(|| JsError::new(&format!("{name}: tokenizer.json is missing: add the model's tokenizer.json with its config.json and safetensors")))?;
        let tokenizer = tokenizer_from_json(&format!("{name}/tokenizer.json"), &tok_bytes).map_err(|e| JsError::new(&e.to_string()))?;
        let mut eos = Vec::new();
        if let Ok(Some(bytes)) = ckpt.read_file("generation_config.json")
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            eos = eos_ids(&v);
        }
        if eos.is_empty()
            && let Some(cfg) = ckpt.config().map_err(|e| JsError::new(&e.to_string()))?
        {
            eos = eos_ids(&cfg);
        }
        let mut model = LlamaModel::from_checkpoint(&mut ckpt).map_err(|e| JsError::new(&e.to_string()))?;
        if let Some(f) = q {
            model.weights = model.weights.quantize(f, &name).map_err(|e| JsError::new(&e.to_string()))?;
        }
        let vocab = model.config.vocab_size as u32;
        eos.retain(|&id| id < vocab);
        Ok(Generator::new(name, "safetensors", model, tokenizer, eos, q))
    }

    /// What was loaded, as JSON: `{name, format, family, backend, params, weight_bytes,
    /// quantization, layers, hidden, heads, kv_heads, vocab, context, eos, moe: null |
    /// {style, experts, top_k, layers_sparse}}`.
    pub fn info(&self) -> String {
        let c = &self.model.config;
        let w = &self.model.weights;
        let mut params = linear_params(&w.embed_tokens) + w.norm.len() + w.lm_head.as_ref().map_or(0, linear_params);
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        let count = |l: &Linear, kinds: &mut std::collections::BTreeMap<String, usize>| {
            if l.out_features * l.in_features > 0 {
                *kinds.entry(storage_name(l)).or_default() += l.out_features * l.in_features;
            }
            linear_params(l)
        };
        for l in &w.layers {
            params += l.input_layernorm.len() + l.post_attention_layernorm.len();
            for lin in [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj] {
                params += count(lin, &mut kinds);
            }
            if let Some(b) = &l.moe {
                params += linear_params(&b.router);
                for e in &b.experts {
                    params += count(&e.gate_proj, &mut kinds) + count(&e.up_proj, &mut kinds) + count(&e.down_proj, &mut kinds);
                }
                if let Some(s) = &b.shared {
                    params += count(&s.mlp.gate_proj, &mut kinds) + count(&s.mlp.up_proj, &mut kinds) + count(&s.mlp.down_proj, &mut kinds) + linear_params(&s.gate);
                }
            }
        }
        // The quantization of the layers' projections (the bulk of the weights), most common first.
        let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1));
        let quantization = kinds.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(" + ");
        let moe = c.moe.as_ref().map(|m| {
            json!({
                "style": match m.style { MoeStyle::Mixtral => "mixtral", MoeStyle::Qwen2Moe => "qwen2_moe" },
                "experts": m.num_experts,
                "top_k": m.top_k,
                "shared_expert": m.shared_expert_intermediate_size.is_some(),
                "layers_sparse": (0..c.num_hidden_layers).filter(|&i| m.is_sparse(i)).collect::<Vec<_>>(),
            })
        });
        json!({
            "name": self.name,
            "format": self.format,
            "family": format!("{:?}", c.family).to_lowercase(),
            "backend": if self.gpu.is_some() { "gpu" } else { "cpu" },
            "adapter": self.gpu.as_ref().map(|g| g.ctx().adapter_info.name.clone()),
            "cpu_reason": self.cpu_reason,
            "moe_gpu": self.gpu.as_ref().and_then(|g| g.moe_path()).map(|p| p.to_string()),
            "params": params,
            "weight_bytes": w.weight_bytes(),
            "quantization": quantization,
            "embedding": storage_name(&w.embed_tokens),
            "quantized_on_load": self.quantized_on_load.map(|f| f.name()),
            "layers": c.num_hidden_layers,
            "hidden": c.hidden_size,
            "heads": c.num_attention_heads,
            "kv_heads": c.num_key_value_heads,
            "vocab": c.vocab_size,
            "context": c.max_position_embeddings,
            "eos": self.eos,
            "moe": moe,
        })
        .to_string()
    }

    /// Token ids of `text` as the model sees it (special tokens such as BOS added as the
    /// tokenizer is configured to).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsError> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| err(&format!("{}: tokenizing", self.name), e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Move the model to WebGPU if this browser can run it there: opens the default adapter
    /// (`navigator.gpu`, also in a worker), uploads the weights once and allocates a KV cache of
    /// `max_context` positions (0: min(model context, 2048)). On any failure the model stays on
    /// the CPU and the reason is kept. Returns JSON `{backend: "gpu"|"cpu", adapter, cpu_reason}`.
    pub async fn use_gpu(&mut self, max_context: u32) -> String {
        if self.gpu.is_none() {
            let max_context = if max_context == 0 { self.model.config.max_position_embeddings.min(2048) } else { max_context as usize };
            match GpuContext::new_default().await {
                Err(e) => self.cpu_reason = Some(format!("no WebGPU device: {e}")),
                Ok(ctx) => match GpuLlama::new(ctx, &self.model, GpuLlamaOptions { max_context, ..Default::default() }) {
                    Ok(g) => {
                        self.gpu = Some(g);
                        self.gpu_context = max_context;
                        self.cpu_reason = None;
                    }
                    // (the GPU path's messages end with advice for the CLI: not for the page)
                    Err(e) => self.cpu_reason = Some(format!("this model does not run on WebGPU here: {}", e.to_string().replace("; use --backend cpu", ""))),
                },
            }
        }
        self.backend_json().to_string()
    }

    /// Run on the CPU from now on (`reason` is shown to the user); the GPU copy is dropped.
    pub fn use_cpu(&mut self, reason: String) {
        self.gpu = None;
        self.cpu_reason = Some(reason);
    }

    /// Begin a generation: tokenize `prompt`, check the sampling options (`sampling_json`: the
    /// fields of `sample::SamplingParams`, e.g. `{"temperature":0}` for greedy; unknown fields are
    /// an error), run the prompt through the model (prefill, on the GPU when `use_gpu` succeeded)
    /// and keep the last logits. Returns JSON `{prompt_tokens, ids, pieces, experts, backend,
    /// adapter, cpu_reason}` (`experts[t]`: the experts prompt token t used per layer, MoE models only,
    /// else null). Any generation in progress is dropped.
    pub async fn start(&mut self, prompt: String, sampling_json: String, max_tokens: u32) -> Result<String, JsError> {
        self.session = None;
        let params: SamplingParams = serde_json::from_str(&sampling_json).map_err(|e| err("sampling options", e))?;
        let sampler = Sampler::new(params).map_err(|e| err("sampling options", e))?;
        let prompt_ids = self.tokenize(&prompt)?;
        if prompt_ids.is_empty() {
            return Err(JsError::new("the prompt is empty (it tokenizes to no tokens): type a prompt"));
        }
        let mut ctx = self.model.config.max_position_embeddings;
        if self.gpu.is_some() {
            ctx = ctx.min(self.gpu_context);
        }
        if prompt_ids.len() >= ctx {
            return Err(JsError::new(&format!("{}: the prompt has {} tokens, the model's context here is {ctx}: shorten the prompt", self.name, prompt_ids.len())));
        }
        let max_tokens = (max_tokens as usize).min(ctx - prompt_ids.len());
        let t = prompt_ids.len();
        let v = self.model.config.vocab_size;
        let moe = self.moe();
        self.session = Some(Session {
            cache: KvCache::new(&self.model.config),
            sampler,
            history: prompt_ids.clone(),
            prompt_len: t,
            generated: 0,
            max_tokens,
            next_logits: Vec::new(),
            done: if max_tokens == 0 { Some("max tokens") } else { None },
            dec_ids: Vec::new(),
            dec_prefix: String::new(),
            dec_prefix_index: 0,
        });
        let mut experts = serde_json::Value::Null;
        let gpu_logits = match self.gpu.as_mut() {
            Some(g) => {
                g.reset();
                let r = g.forward_last(&prompt_ids).await.map_err(|e| e.to_string());
                if moe && r.is_ok() {
                    experts = json!((0..t).map(|i| trace_json(g.routes(), i, true)).collect::<Vec<_>>());
                }
                Some(r)
            }
            None => None,
        };
        let next_logits = match gpu_logits {
            Some(Ok(l)) => l,
            Some(Err(e)) => self.fall_back(e)?,
            None => {
                let s = self.session.as_mut().expect("session set above");
                let (logits, trace) = Generator::forward(&self.model, &prompt_ids, &mut s.cache, moe)?;
                if moe {
                    experts = json!((0..t).map(|i| trace_json(&trace, i, true)).collect::<Vec<_>>());
                }
                logits[(t - 1) * v..t * v].to_vec()
            }
        };
        self.session.as_mut().expect("session set above").next_logits = next_logits;
        let pieces: Vec<String> = prompt_ids.iter().map(|&id| self.tokenizer.id_to_token(id).unwrap_or_default()).collect();
        let mut out = json!({ "prompt_tokens": t, "ids": prompt_ids, "pieces": pieces, "experts": experts });
        if let (Some(o), serde_json::Value::Object(b)) = (out.as_object_mut(), self.backend_json()) {
            o.extend(b);
        }
        Ok(out.to_string())
    }

    /// The next token: JSON `{text, token, done, reason, generated, experts, backend, adapter,
    /// cpu_reason, fallback}`. `text` is the newly complete text (may be empty while a multi-byte character is
    /// incomplete, or for special tokens); `token` is the id drawn (null once done); `reason` is
    /// `"end of sequence"` or `"max tokens"` when `done`; `experts` lists the experts the token
    /// used per layer (MoE only); `fallback` is the reason when this step left the GPU for the
    /// CPU. Call `start` first.
    pub async fn step(&mut self) -> Result<String, JsError> {
        let moe = self.moe();
        let name = self.name.clone();
        let s = self.session.as_mut().ok_or_else(|| JsError::new("step() before start(): start a generation first"))?;
        if let Some(reason) = s.done {
            return Ok(json!({ "text": "", "token": null, "done": true, "reason": reason, "generated": s.generated, "experts": null }).to_string());
        }
        let next = s.sampler.sample(&mut s.next_logits, &s.history).map_err(|e| err(&name, e))?;
        s.generated += 1;
        s.history.push(next);
        if self.eos.contains(&next) {
            s.done = Some("end of sequence");
            return Ok(json!({ "text": "", "token": next, "done": true, "reason": "end of sequence", "generated": s.generated, "experts": null }).to_string());
        }
        // UTF-8-safe: text only once the bytes so far form whole characters (special tokens skipped).
        let text = tokenizers::tokenizer::step_decode_stream(&self.tokenizer, vec![next], true, &mut s.dec_ids, &mut s.dec_prefix, &mut s.dec_prefix_index)
            .map_err(|e| err(&format!("{name}: decoding token {next}"), e))?
            .unwrap_or_default();
        let mut experts = serde_json::Value::Null;
        let mut fallback = serde_json::Value::Null;
        if s.generated >= s.max_tokens {
            s.done = Some("max tokens");
            if moe && self.gpu.is_none() {
                // The token was drawn but not yet run: run it for its experts (heat map).
                let (_, trace) = Generator::forward(&self.model, &[next], &mut s.cache, true)?;
                experts = trace_json(&trace, 0, true);
            } else if moe && let Some(g) = self.gpu.as_mut() {
                // The same on the GPU. The generation is over: a failure here only leaves this
                // token's heat-map column empty (its text is already out), so it is not an error.
                if g.forward_last(&[next]).await.is_ok() {
                    experts = trace_json(g.routes(), 0, true);
                }
            }
        } else if let Some(g) = self.gpu.as_mut() {
            match g.forward_last(&[next]).await {
                Ok(l) => {
                    s.next_logits = l;
                    experts = trace_json(g.routes(), 0, moe);
                }
                Err(e) => {
                    let l = self.fall_back(e.to_string())?;
                    fallback = json!(self.cpu_reason);
                    self.session.as_mut().expect("session").next_logits = l;
                }
            }
        } else {
            let (logits, trace) = Generator::forward(&self.model, &[next], &mut s.cache, moe)?;
            s.next_logits = logits;
            experts = trace_json(&trace, 0, moe);
        }
        let s = self.session.as_ref().expect("session");
        let mut out = json!({ "text": text, "token": next, "done": s.done.is_some(), "reason": s.done, "generated": s.generated, "experts": experts, "fallback": fallback });
        if let (Some(o), serde_json::Value::Object(b)) = (out.as_object_mut(), self.backend_json()) {
            o.extend(b);
        }
        Ok(out.to_string())
    }

    /// Tokens in the current generation (prompt + generated).
    pub fn history(&self) -> Vec<u32> {
        self.session.as_ref().map(|s| s.history.clone()).unwrap_or_default()
    }

    /// Prompt tokens of the current generation.
    pub fn prompt_len(&self) -> usize {
        self.session.as_ref().map_or(0, |s| s.prompt_len)
    }

    /// Perplexity of `text` under the model ([`LlamaModel::perplexity`], the computation of
    /// `crucible eval`): windows of `context` tokens (0: the model's context, capped at 512)
    /// moved by `stride` (0: context / 2). `on_progress(done_windows, total_windows)` after each
    /// window; a return value of `false` cancels (the result is then `null`). Returns JSON
    /// `{tokens, scored, windows, context, stride, nll, perplexity}` or `null`.
    pub fn perplexity(&self, text: &str, context: u32, stride: u32, on_progress: Option<Function>) -> Result<String, JsError> {
        let ids = self.tokenize(text)?;
        let context = if context == 0 { self.model.config.max_position_embeddings.min(512) } else { context as usize };
        let stride = if stride == 0 { (context / 2).max(1) } else { stride as usize };
        let result = self
            .model
            .perplexity(&ids, context, stride, |done, total| match &on_progress {
                None => true,
                Some(f) => f.call2(&JsValue::NULL, &(done as f64).into(), &(total as f64).into()).map(|r| r.as_bool() != Some(false)).unwrap_or(true),
            })
            .map_err(|e| err(&self.name, e))?;
        serde_json::to_string(&result).map_err(|e| err("perplexity", e))
    }
}
