//! The native CLI. `crucible merge RECIPE.yml OUT_DIR` mirrors mergekit 0.1.5's `mergekit-yaml`
//! (reference: `mergekit/scripts/run_yaml.py`, `mergekit/options.py`): the same recipe format,
//! the same output files, `--out-shard-size` with K/M/B suffixes. The engine is the library's
//! `merge::run::run_merge`, the same code the browser runs.
//!
//! `crucible run --model MODEL.gguf --prompt TEXT` generates text on the CPU with the library's
//! `LlamaModel` (reference: llama.cpp `examples/simple`, `llama-cli`; HF transformers `generate`):
//! the tokenizer embedded in the GGUF, one prefill of the prompt, then one cached decode step per
//! token, sampled by `sample::Sampler` (HF logits processors), streamed to stdout as decoded text.
//! `--model` may also be a Hugging Face folder (config.json, safetensors, tokenizer.json), and
//! `--quantize q8_0|q4_0` converts the weights on load.
//!
//! `crucible eval --model PATH --text FILE` prints the perplexity of the text (reference: HF
//! transformers' "Perplexity of fixed-length models" strided windows; `LlamaModel::perplexity`).

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::io::{IsTerminal, Write};
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::time::Instant;

    use clap::{Parser, Subcommand};
    use crucible::formats::io::IoError;
    use crucible::formats::sharded::parse_size;
    use crucible::formats::{DirFiles, DirOutput, ModelFiles};
    use crucible::merge::recipe::Recipe;
    use crucible::merge::run::{MergeOptions, Progress, run_merge};
    use crucible::formats::gguf::Gguf;
    use crucible::formats::io::FileSource;
    use crucible::formats::tokenizer::{special_tokens_from_gguf, tokenizer_from_gguf};
    use crucible::formats::checkpoint::Checkpoint;
    use crucible::formats::tokenizer::tokenizer_from_json;
    use crucible::models::{KvCache, LlamaModel};
    use crucible::tensor::quant::BlockFormat;
    use crucible::sample::{Sampler, SamplingParams};

    #[derive(Parser)]
    #[command(
        name = "crucible",
        version,
        about = "Merge small language models (mergekit-compatible recipes), natively or in the browser.",
        long_about = "Crucible merges language-model checkpoints (safetensors) with mergekit 0.1.5 semantics: the same YAML \
recipes, the same methods and the same output files. Tensors are streamed one at a time, so memory stays a small multiple \
of the largest tensor. The same engine runs in the browser (see README.md, `npm start`)."
    )]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Merge the models of a mergekit YAML recipe into OUT_DIR (like `mergekit-yaml RECIPE OUT_DIR`).
        #[command(long_about = "Merge the models of a mergekit YAML recipe into OUT_DIR, like `mergekit-yaml RECIPE OUT_DIR`.\n\n\
Model references in the recipe are local directories holding `model.safetensors` (or shards with \
`model.safetensors.index.json`) and `config.json`; each is looked up relative to the current directory, then \
relative to the recipe file's directory.\n\n\
Writes `model.safetensors` (or `model-0000k-of-0000n.safetensors` shards and `model.safetensors.index.json`), \
`config.json` (from the base model, else the first model; `num_hidden_layers` updated for `slices:`), the tokenizer \
files of the base model (or of `tokenizer_source`) and `mergekit_config.yml` (the recipe as run). On any error, \
nothing that looks complete is left in OUT_DIR.\n\n\
Methods: linear, slerp, nuslerp, multislerp, karcher, task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, \
breadcrumbs_ties, della, della_linear, model_stock, nearswap, sce, arcee_fusion, passthrough.")]
        Merge {
            /// The mergekit YAML recipe.
            recipe: PathBuf,
            /// Output directory (created if missing).
            out_dir: PathBuf,
            /// Seed of the random methods (dare_*, della*). The same seed gives the same bytes here and in the browser.
            #[arg(long, default_value_t = 0)]
            seed: u64,
            /// Maximum bytes of tensor data per output file: a number with an optional K, M or B suffix (x1000, x10^6, x10^9). Default 5B, like mergekit.
            #[arg(long, value_name = "SIZE", value_parser = parse_shard_size)]
            out_shard_size: Option<u64>,
            /// Print only errors (no progress, no summary).
            #[arg(long, short)]
            quiet: bool,
            /// Also write "what the merge did" per tensor to this CSV file (task-vector norms, cosines, sign
            /// conflicts, trimmed fraction, SLERP angle, ‖merged − base‖; columns: crucible::merge::stats). The
            /// page's "Download statistics (CSV)" gives the same bytes.
            #[arg(long, value_name = "FILE.csv")]
            stats: Option<PathBuf>,
        },
        /// Generate text from a prompt with a GGUF model on the CPU, streamed to stdout.
        #[command(long_about = "Generate text from a prompt with a GGUF model (llama architecture, gpt2 byte-level BPE \
tokenizer embedded in the file) on the CPU. The decoded text streams to stdout as tokens come; generation stops at the \
end-of-sequence token or after --max-tokens. Then stderr gets the prompt and generated token counts and the prefill and \
decode speeds in tokens/s.\n\n\
Sampling defaults to HF transformers' (temperature 1, top-k 50); --greedy takes the argmax (temperature 0).")]
        Run(RunArgs),
        /// Perplexity of a text file under a model (GGUF file or Hugging Face folder), on the CPU.
        #[command(long_about = "Perplexity of a text under a model (a .gguf file or a Hugging Face folder with config.json, \
safetensors and tokenizer.json), on the CPU. The text is tokenized as the model's tokenizer does with its special tokens \
(e.g. a BOS). Windows of at most --context tokens start at 0, --stride, 2·--stride, … (HF transformers' strided \
perplexity); each token from the end of the previous window on is scored once, predicted from the tokens before it in \
its window; the first token is never scored. Prints the token count, windows, scored tokens, mean negative \
log-likelihood (nats) and perplexity = exp(NLL).")]
        Eval(EvalArgs),
    }

    #[derive(clap::Args)]
    struct EvalArgs {
        /// The model: a .gguf file or a Hugging Face folder (config.json + safetensors + tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// The text file (UTF-8).
        #[arg(long)]
        text: PathBuf,
        /// Window length in tokens. Default: the model's max_position_embeddings, at most 1024.
        #[arg(long)]
        context: Option<usize>,
        /// Tokens between window starts, 1..=context. Default: context / 2 (every scored token then has at least
        /// context / 2 tokens of history once past the first window).
        #[arg(long)]
        stride: Option<usize>,
        /// Quantize the weights on load (q8_0 or q4_0; llama.cpp's reference quantizers).
        #[arg(long, value_parser = ["q8_0", "q4_0"])]
        quantize: Option<String>,
    }

    #[derive(clap::Args)]
    struct RunArgs {
        /// The model: a .gguf file, or a Hugging Face folder (config.json, model.safetensors or shards with
        /// model.safetensors.index.json in F32/F16/BF16, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Quantize the weights on load (q8_0 or q4_0; llama.cpp's reference quantizers; every projection, expert,
        /// embedding and head — rows must be whole 32-weight blocks): less memory, slightly different logits.
        #[arg(long, value_parser = ["q8_0", "q4_0"])]
        quantize: Option<String>,
        /// The prompt text (no chat template is applied; no BOS is added unless the GGUF says so).
        #[arg(long)]
        prompt: String,
        /// Maximum number of tokens to generate.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Greedy decoding: always the most likely token (temperature 0).
        #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "min_p", "seed"])]
        greedy: bool,
        /// Temperature (0 = greedy). Default 1.
        #[arg(long)]
        temperature: Option<f32>,
        /// Keep the K most likely tokens (0 disables). Default 50.
        #[arg(long)]
        top_k: Option<usize>,
        /// Nucleus sampling mass in (0, 1] (1 disables). Default 1.
        #[arg(long)]
        top_p: Option<f32>,
        /// Drop tokens less likely than this fraction of the top token, in [0, 1]. Default 0.
        #[arg(long)]
        min_p: Option<f32>,
        /// CTRL repetition penalty over prompt and output (1 disables). Default 1.
        #[arg(long)]
        repetition_penalty: Option<f32>,
        /// Subtracted from the logit of every token already seen. Default 0.
        #[arg(long)]
        presence_penalty: Option<f32>,
        /// Subtracted per occurrence of a token already seen. Default 0.
        #[arg(long)]
        frequency_penalty: Option<f32>,
        /// Ban repeating any n-gram of this size (0 disables). Default 0.
        #[arg(long, value_name = "N")]
        no_repeat_ngram: Option<usize>,
        /// Seed of the sampler (same seed, same tokens on every platform). Default 0.
        #[arg(long)]
        seed: Option<u64>,
        /// Where to compute: cpu (the readable reference path) or gpu (WebGPU kernels through wgpu:
        /// Vulkan / Metal / DX12 natively, lavapipe where there is no GPU).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
        backend: String,
    }

    fn parse_shard_size(s: &str) -> Result<u64, String> {
        match parse_size(s) {
            Ok(0) => Err("the shard size must be greater than 0".into()),
            Ok(n) => Ok(n),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A model reference → a directory: relative to the current directory first, then to the
    /// recipe's directory.
    fn resolve_model(reference: &str, recipe_dir: &Path) -> Result<PathBuf, IoError> {
        let direct = PathBuf::from(reference);
        if direct.is_dir() {
            return Ok(direct);
        }
        let beside = recipe_dir.join(reference);
        if beside.is_dir() {
            return Ok(beside);
        }
        Err(IoError::new(
            reference,
            format!(
                "no such model directory (looked for {} and {}); model references must be local directories",
                direct.display(),
                beside.display()
            ),
        ))
    }

    fn human_bytes(n: u64) -> String {
        const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
        let mut v = n as f64;
        let mut u = 0;
        while v >= 1000.0 && u + 1 < UNITS.len() {
            v /= 1000.0;
            u += 1;
        }
        if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
    }

    fn merge(recipe_path: &Path, out_dir: &Path, seed: u64, out_shard_size: Option<u64>, quiet: bool, stats_path: Option<&Path>) -> Result<String, String> {
        let started = Instant::now();
        let text = std::fs::read_to_string(recipe_path).map_err(|e| format!("{}: {e}", recipe_path.display()))?;
        let recipe = Recipe::from_yaml(&text).map_err(|e| format!("{}: {e}", recipe_path.display()))?;
        let recipe_dir = recipe_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let recipe_dir = if recipe_dir.as_os_str().is_empty() { PathBuf::from(".") } else { recipe_dir };

        let mut open_model = |reference: &str| -> Result<Box<dyn ModelFiles>, IoError> {
            let dir = resolve_model(reference, &recipe_dir)?;
            Ok(Box::new(DirFiles::new(dir)))
        };
        let existed = out_dir.exists();
        let mut out = DirOutput::new(out_dir);
        let tty = std::io::stderr().is_terminal();
        let mut last_pct = usize::MAX;
        let mut on_progress = |p: &Progress| {
            if quiet {
                return;
            }
            let pct = (p.done_bytes * 100).checked_div(p.total_bytes).unwrap_or(100) as usize;
            if tty {
                let mut e = std::io::stderr();
                let _ = write!(e, "\r\x1b[2K[{:>5}/{:<5}] {pct:>3}%  {}", p.done_tensors, p.total_tensors, p.tensor);
                let _ = e.flush();
            } else if pct / 10 != last_pct / 10 || p.done_tensors == p.total_tensors {
                // Without a terminal: one line per 10%.
                eprintln!("[{:>5}/{:<5}] {pct:>3}%  {}", p.done_tensors, p.total_tensors, p.tensor);
            }
            last_pct = pct;
        };
        let mut stats = crucible::merge::stats::StatsCollector::new();
        let observer: Option<&mut dyn crucible::merge::run::MergeObserver> = if stats_path.is_some() { Some(&mut stats) } else { None };
        let mut opts = MergeOptions { seed, out_shard_size, progress: Some(&mut on_progress), cancelled: None, observer };
        let result = run_merge(&recipe, &mut open_model, &mut out, &mut opts);
        let result = match (result, stats_path) {
            (Ok(report), Some(path)) => std::fs::write(path, stats.to_csv())
                .map(|_| report)
                .map_err(|e| format!("the merge is complete in {}, but writing the statistics to {} failed: {e}", out_dir.display(), path.display())),
            (r, _) => r.map_err(|e| e.to_string()),
        };
        if tty && !quiet {
            eprint!("\r\x1b[2K");
        }
        match result {
            Ok(report) => Ok(format!(
                "merged {} tensors ({} parameters, {} layers, {}) with {} in {:.2}s; wrote {} to {}: {}",
                report.tensors,
                report.parameters,
                report.num_hidden_layers,
                report.architecture,
                recipe.merge_method.name(),
                started.elapsed().as_secs_f64(),
                human_bytes(report.bytes_written),
                out_dir.display(),
                report.files.join(", ")
            )),
            Err(e) => {
                // Unfinished outputs were removed by their sinks; remove the directory too if this
                // run created it and it is now empty.
                if !existed {
                    let _ = std::fs::remove_dir(out_dir);
                }
                Err(e)
            }
        }
    }

    fn sampling_params(a: &RunArgs) -> SamplingParams {
        let mut p = if a.greedy { SamplingParams::greedy() } else { SamplingParams::default() };
        if let Some(v) = a.temperature {
            p.temperature = v;
        }
        if let Some(v) = a.top_k {
            p.top_k = v;
        }
        if let Some(v) = a.top_p {
            p.top_p = v;
        }
        if let Some(v) = a.min_p {
            p.min_p = v;
        }
        if let Some(v) = a.repetition_penalty {
            p.repetition_penalty = v;
        }
        if let Some(v) = a.presence_penalty {
            p.presence_penalty = v;
        }
        if let Some(v) = a.frequency_penalty {
            p.frequency_penalty = v;
        }
        if let Some(v) = a.no_repeat_ngram {
            p.no_repeat_ngram_size = v;
        }
        if let Some(v) = a.seed {
            p.seed = v;
        }
        p
    }

    /// A model ready to run, with its tokenizer and end-of-sequence ids.
    struct Loaded {
        model: LlamaModel,
        tokenizer: tokenizers::Tokenizer,
        eos: Vec<u32>,
        /// One line about the weights' memory (and quantization).
        weights: String,
    }

    /// `eos_token_id` of a config.json / generation_config.json: a number or a list of numbers.
    fn eos_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect(),
            _ => Vec::new(),
        }
    }

    fn parse_quantize(q: Option<&str>) -> Option<BlockFormat> {
        match q {
            Some("q8_0") => Some(BlockFormat::Q8_0),
            Some("q4_0") => Some(BlockFormat::Q4_0),
            _ => None,
        }
    }

    /// Load a GGUF file (tokenizer embedded) or a Hugging Face folder (config.json, safetensors,
    /// tokenizer.json; EOS from generation_config.json, else config.json), then quantize if asked.
    fn load_model(path: &Path, quantize: Option<BlockFormat>) -> Result<Loaded, String> {
        let (mut model, tokenizer, eos) = if path.is_dir() {
            let name = path.display().to_string();
            let mut ckpt = Checkpoint::open(Box::new(DirFiles::new(path))).map_err(|e| e.to_string())?;
            let model = LlamaModel::from_checkpoint(&mut ckpt).map_err(|e| e.to_string())?;
            let tok_bytes = ckpt
                .read_file("tokenizer.json")
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{name}: no tokenizer.json (copy the base model's tokenizer files into the folder)"))?;
            let tokenizer = tokenizer_from_json(&format!("{name}/tokenizer.json"), &tok_bytes).map_err(|e| e.to_string())?;
            let mut eos = Vec::new();
            if let Some(bytes) = ckpt.read_file("generation_config.json").map_err(|e| e.to_string())? {
                let gc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| format!("{name}/generation_config.json: not valid JSON ({e})"))?;
                eos = eos_ids(gc.get("eos_token_id"));
            }
            if eos.is_empty()
                && let Some(cfg) = ckpt.config().map_err(|e| e.to_string())?
            {
                eos = eos_ids(cfg.get("eos_token_id"));
            }
            (model, tokenizer, eos)
        } else {
            let mut src = FileSource::open(path).map_err(|e| e.to_string())?;
            let gguf = Gguf::read(&mut src).map_err(|e| e.to_string())?;
            let tokenizer = tokenizer_from_gguf(&gguf).map_err(|e| e.to_string())?;
            let eos = special_tokens_from_gguf(&gguf).map_err(|e| e.to_string())?.eos.into_iter().collect();
            let model = LlamaModel::from_gguf(&mut src).map_err(|e| e.to_string())?;
            (model, tokenizer, eos)
        };
        let before = model.weights.weight_bytes();
        let weights = match quantize {
            None => format!("weights: {:.2} MB", before as f64 / 1e6),
            Some(format) => {
                model.weights = model.weights.quantize(format, &path.display().to_string()).map_err(|e| e.to_string())?;
                let after = model.weights.weight_bytes();
                format!("weights: {:.2} MB after quantizing to {format} on load ({:.2} MB before)", after as f64 / 1e6, before as f64 / 1e6)
            }
        };
        Ok(Loaded { model, tokenizer, eos, weights })
    }

    fn eval(a: &EvalArgs) -> Result<String, String> {
        let t_load = Instant::now();
        let Loaded { model, tokenizer, weights, .. } = load_model(&a.model, parse_quantize(a.quantize.as_deref()))?;
        let load_s = t_load.elapsed().as_secs_f64();
        let text = std::fs::read_to_string(&a.text).map_err(|e| format!("{}: {e}", a.text.display()))?;
        let ids: Vec<u32> = tokenizer.encode(text.as_str(), true).map_err(|e| format!("tokenizing {}: {e}", a.text.display()))?.get_ids().to_vec();
        if ids.len() < 2 {
            return Err(format!("{}: the text has {} token(s); perplexity needs at least 2", a.text.display(), ids.len()));
        }
        let context = a.context.unwrap_or(model.config.max_position_embeddings.min(1024));
        let stride = a.stride.unwrap_or((context / 2).max(1));
        if context < 2 {
            return Err(format!("--context {context}: must be at least 2"));
        }
        if stride == 0 || stride > context {
            return Err(format!("--stride {stride}: must be between 1 and the context ({context})"));
        }
        let tty = std::io::stderr().is_terminal();
        let t = Instant::now();
        let p = model
            .perplexity(&ids, context, stride, |done, total| {
                if tty {
                    eprint!("\r\x1b[2Kwindow {done}/{total}");
                }
                true
            })
            .map_err(|e| e.to_string())?
            .expect("never cancelled");
        if tty {
            eprint!("\r\x1b[2K");
        }
        let secs = t.elapsed().as_secs_f64();
        println!("tokens: {}", p.tokens);
        println!("context: {}, stride: {}, windows: {}, scored tokens: {}", p.context, p.stride, p.windows, p.scored);
        println!("nll: {:.6}", p.nll);
        println!("perplexity: {:.6}", p.perplexity);
        Ok(format!("model {} loaded in {load_s:.2}s ({weights}); evaluated in {secs:.2}s", a.model.display()))
    }

    fn run(a: &RunArgs) -> Result<String, String> {
        let path = &a.model;
        let mut sampler = Sampler::new(sampling_params(a)).map_err(|e| e.to_string())?;

        let t_load = Instant::now();
        let Loaded { model, tokenizer: tok, eos, weights } = load_model(path, parse_quantize(a.quantize.as_deref()))?;
        let load_s = t_load.elapsed().as_secs_f64();

        let enc = tok.encode(a.prompt.as_str(), true).map_err(|e| format!("tokenizing the prompt: {e}"))?;
        let prompt: Vec<u32> = enc.get_ids().to_vec();
        if prompt.is_empty() {
            return Err("the prompt is empty (it tokenizes to no tokens)".into());
        }
        let v = model.config.vocab_size;
        let mut cache = KvCache::new(&model.config);
        let mut history = prompt.clone();
        let mut stdout = std::io::stdout().lock();
        let mut stream = tok.decode_stream(true);

        // --backend gpu: the model uploaded once to the GPU (models::llama_gpu), KV cache there too.
        let mut gpu = if a.backend == "gpu" {
            let t_up = Instant::now();
            let ctx = pollster::block_on(crucible::gpu::GpuContext::new_default()).map_err(|e| e.to_string())?;
            let opts = crucible::models::llama_gpu::GpuLlamaOptions { max_context: (prompt.len() + a.max_tokens).max(1), ..Default::default() };
            let g = crucible::models::llama_gpu::GpuLlama::new(ctx, &model, opts).map_err(|e| e.to_string())?;
            eprintln!("GPU adapter: {} (weights uploaded in {:.2}s, batched prefill: {})", g.ctx().adapter_info.name, t_up.elapsed().as_secs_f64(), g.batched_prefill());
            if let Some(path) = g.moe_path() {
                eprintln!("{path}");
            }
            Some(g)
        } else {
            None
        };

        // Prefill: (T, vocab) logits; the last row gives the first token.
        let t_prefill = Instant::now();
        let mut last: Vec<f32> = match gpu.as_mut() {
            Some(g) => pollster::block_on(g.forward_last(&prompt)).map_err(|e| e.to_string())?,
            None => {
                let logits = model.forward(&prompt, &mut cache).map_err(|e| e.to_string())?;
                logits[(prompt.len() - 1) * v..prompt.len() * v].to_vec()
            }
        };
        let prefill_s = t_prefill.elapsed().as_secs_f64();

        let t_decode = Instant::now();
        let mut generated = 0usize;
        let mut decode_steps = 0usize;
        let mut stop = "max tokens";
        while generated < a.max_tokens {
            let next = sampler.sample(&mut last, &history).map_err(|e| e.to_string())?;
            generated += 1;
            history.push(next);
            if eos.contains(&next) {
                stop = "end of sequence";
                break;
            }
            // Incremental decode: emits text only once the bytes so far form whole UTF-8 characters.
            if let Some(piece) = stream.step(next).map_err(|e| format!("decoding token {next}: {e}"))? {
                stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()).map_err(|e| format!("stdout: {e}"))?;
            }
            if generated == a.max_tokens {
                break;
            }
            last = match gpu.as_mut() {
                Some(g) => pollster::block_on(g.forward_last(&[next])).map_err(|e| e.to_string())?,
                None => model.forward(&[next], &mut cache).map_err(|e| e.to_string())?,
            };
            decode_steps += 1;
        }
        let decode_s = t_decode.elapsed().as_secs_f64();
        let _ = writeln!(stdout);
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { f64::INFINITY };
        Ok(format!(
            "model {} loaded in {load_s:.2}s ({weights}), backend {}\nprompt tokens: {}, generated tokens: {generated} (stopped at {stop})\n\
prefill: {:.1} tokens/s ({} tokens in {prefill_s:.3}s)\ndecode: {:.1} tokens/s ({decode_steps} steps in {decode_s:.3}s, sampling included)",
            path.display(),
            gpu.as_ref().map_or_else(|| "cpu".to_string(), |g| format!("gpu: {}", g.ctx().adapter_info.name)),
            prompt.len(),
            rate(prompt.len(), prefill_s),
            prompt.len(),
            rate(decode_steps, decode_s),
        ))
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        match cli.command {
            Command::Eval(args) => match eval(&args) {
                Ok(summary) => {
                    eprintln!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("crucible eval: error: {message}");
                    ExitCode::FAILURE
                }
            },
            Command::Run(args) => match run(&args) {
                Ok(summary) => {
                    eprintln!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("crucible run: error: {message}");
                    ExitCode::FAILURE
                }
            },
            Command::Merge { recipe, out_dir, seed, out_shard_size, quiet, stats } => match merge(&recipe, &out_dir, seed, out_shard_size, quiet, stats.as_deref()) {
                Ok(summary) => {
                    if !quiet {
                        eprintln!("{summary}");
                    }
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("crucible merge: error: {message}");
                    ExitCode::FAILURE
                }
            },
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

/// The wasm build of the package has no command line; the browser uses the library (`wasm.rs`).
#[cfg(target_arch = "wasm32")]
fn main() {}
