// One model of the Generate tab lives here (one worker per model), off the UI thread: the engine
// reads the picked files synchronously (FileReaderSync), holds the weights, and produces text one
// token at a time (`Generator.step`, crate/src/wasm/generate.rs), on WebGPU when the browser has
// an adapter and the model runs there (`Generator.use_gpu`), else — or after a GPU failure — on
// the CPU, saying why. Between two steps the worker
// yields to its message queue, so a `stop` message ends the generation after the current token.
// Perplexity runs in one call (the page terminates this worker to cancel it).
import init, { Generator, last_panic } from '../pkg/crucible.js';
import { wasmInitError } from './wasm_error';

/** Where the model's files come from. */
export type ModelSourceMsg =
  | { kind: 'gguf'; file: File }
  // A Hugging Face folder: relative path → File (config.json, *.safetensors, tokenizer.json, ...)
  | { kind: 'hf'; name: string; files: Map<string, File> };

/** The fields of the engine's `sample::SamplingParams` (temperature 0 = greedy). */
export type SamplingOptions = {
  temperature: number;
  top_k: number;
  top_p: number;
  min_p: number;
  repetition_penalty: number;
  presence_penalty: number;
  frequency_penalty: number;
  no_repeat_ngram_size: number;
  seed: number;
};

/** `Generator.info()`. */
export type ModelInfo = {
  name: string;
  format: 'gguf' | 'safetensors';
  family: string;
  backend: 'cpu' | 'gpu';
  adapter: string | null;
  cpu_reason: string | null;
  /** On the GPU, how MoE layers run: experts by id (no readback per layer) or the readback's reason. */
  moe_gpu?: string | null;
  params: number;
  weight_bytes: number;
  quantization: string;
  embedding: string;
  quantized_on_load: string | null;
  layers: number;
  hidden: number;
  heads: number;
  kv_heads: number;
  vocab: number;
  context: number;
  eos: number[];
  moe: null | { style: string; experts: number; top_k: number; shared_expert: boolean; layers_sparse: number[] };
};

/** Per layer, the [expert, weight] pairs one token used (empty for dense layers). */
export type TokenExperts = [number, number][][];

export type Perplexity = { tokens: number; scored: number; windows: number; context: number; stride: number; nll: number; perplexity: number };

/** Where the model runs now, and why the CPU when it is the CPU. */
export type Backend = { backend: 'cpu' | 'gpu'; adapter: string | null; cpu_reason: string | null; moe_gpu?: string | null };

export type ToWorker =
  // backend 'auto': WebGPU when possible, else the CPU (with the reason); 'cpu': the CPU only
  | { type: 'load'; source: ModelSourceMsg; quantize?: string; backend: 'auto' | 'cpu' }
  | { type: 'generate'; prompt: string; sampling: SamplingOptions; maxTokens: number }
  | { type: 'stop' }
  | { type: 'perplexity'; text: string; context?: number; stride?: number };

export type FromWorker =
  | { type: 'ready' }
  // wasmBytes: this worker's WebAssembly memory after the load (it never shrinks: the load's peak)
  | { type: 'loaded'; info: ModelInfo; ms: number; wasmBytes: number }
  | { type: 'started'; promptTokens: number; ids: number[]; pieces: string[]; prefillMs: number; experts: TokenExperts[] | null; backend: Backend }
  // fallback: set when this step left the GPU for the CPU (the reason)
  | { type: 'token'; text: string; token: number; generated: number; experts: TokenExperts | null; elapsedMs: number; backend: Backend; fallback: string | null }
  // forwards: decode steps that ran the model (the last drawn token is not run); decodeMs: time of all steps
  | { type: 'done'; reason: string; generated: number; promptTokens: number; prefillMs: number; decodeMs: number; forwards: number; wasmBytes: number }
  | { type: 'ppl-progress'; done: number; total: number }
  | { type: 'ppl'; result: Perplexity | null; ms: number }
  // fatal: the module trapped (wasmBytes: its memory then — near 4 GiB, the load ran out of it)
  | { type: 'error'; message: string; during: 'load' | 'generate' | 'perplexity'; fatal?: boolean; wasmBytes?: number };

const ctx = globalThis as unknown as {
  postMessage(m: FromWorker): void;
  addEventListener(type: 'message', f: (e: MessageEvent<ToWorker>) => void): void;
};

const engine = init().catch((e: unknown) => Promise.reject(wasmInitError(e)));
/** The engine's memory, once it is instantiated (its size is reported with loads and traps). */
let memory: WebAssembly.Memory | null = null;
engine.then((w) => (memory = w.memory), () => undefined);
let gen: Generator | null = null;
let stopRequested = false;
let running = false;

/** Let queued messages (a `stop`) run: a zero-delay macrotask (setTimeout is clamped to 4 ms). */
const channel = new MessageChannel();
const waiters: (() => void)[] = [];
channel.port1.onmessage = () => waiters.shift()?.();
const yieldToQueue = () => new Promise<void>((r) => { waiters.push(r); channel.port2.postMessage(0); });

function fail(err: unknown, during: 'load' | 'generate' | 'perplexity') {
  // A trap (a bug, not bad input) leaves the module unusable: say what panicked; the page
  // replaces this worker.
  if (err instanceof WebAssembly.RuntimeError) {
    const panic = last_panic();
    ctx.postMessage({ type: 'error', during, fatal: true, message: `internal error (please report it): ${panic ?? err.message}`, wasmBytes: memory?.buffer.byteLength ?? 0 });
  } else {
    ctx.postMessage({ type: 'error', during, message: err instanceof Error ? err.message : String(err) });
  }
}

async function generate(prompt: string, sampling: SamplingOptions, maxTokens: number) {
  if (!gen) throw new Error('no model is loaded in this worker');
  running = true;
  stopRequested = false;
  try {
    const t0 = performance.now();
    const s = JSON.parse(await gen.start(prompt, JSON.stringify(sampling), maxTokens));
    const prefillMs = performance.now() - t0;
    const backend = (r: Backend): Backend => ({ backend: r.backend, adapter: r.adapter, cpu_reason: r.cpu_reason, moe_gpu: r.moe_gpu ?? null });
    ctx.postMessage({ type: 'started', promptTokens: s.prompt_tokens, ids: s.ids, pieces: s.pieces, prefillMs, experts: s.experts, backend: backend(s) });
    let generated = 0;
    let decodeMs = 0;
    let reason = 'stopped';
    let forwards = 0;
    for (;;) {
      await yieldToQueue();
      if (stopRequested) break;
      const t = performance.now();
      const r = JSON.parse(await gen.step());
      decodeMs += performance.now() - t;
      if (r.token !== null && !(r.done && r.reason === 'end of sequence')) {
        generated = r.generated;
        ctx.postMessage({ type: 'token', text: r.text, token: r.token, generated, experts: r.experts, elapsedMs: decodeMs, backend: backend(r), fallback: r.fallback ?? null });
      } else if (r.token !== null) generated = r.generated;
      if (r.done) {
        reason = r.reason;
        break;
      }
      forwards++;
    }
    ctx.postMessage({ type: 'done', reason, generated, promptTokens: s.prompt_tokens, prefillMs, decodeMs, forwards, wasmBytes: (await engine).memory.buffer.byteLength });
  } finally {
    running = false;
  }
}

ctx.addEventListener('message', async (e) => {
  const msg = e.data;
  if (msg.type === 'stop') {
    stopRequested = true;
    return;
  }
  try {
    await engine;
  } catch (err) {
    ctx.postMessage({ type: 'error', during: 'load', message: `could not load the engine: ${String(err)}` });
    return;
  }
  if (msg.type === 'load') {
    try {
      const t0 = performance.now();
      gen?.free();
      gen = null;
      const src = msg.source;
      gen = src.kind === 'gguf' ? Generator.from_gguf(src.file, msg.quantize) : Generator.from_hf(src.name, src.files, msg.quantize);
      if (msg.backend === 'auto') await gen.use_gpu(0);
      else gen.use_cpu('CPU chosen in the page');
      ctx.postMessage({ type: 'loaded', info: JSON.parse(gen.info()), ms: performance.now() - t0, wasmBytes: (await engine).memory.buffer.byteLength });
    } catch (err) {
      fail(err, 'load');
    }
  } else if (msg.type === 'generate') {
    if (running) {
      ctx.postMessage({ type: 'error', during: 'generate', message: 'a generation is already running in this model: stop it first' });
      return;
    }
    try {
      await generate(msg.prompt, msg.sampling, msg.maxTokens);
    } catch (err) {
      fail(err, 'generate');
    }
  } else if (msg.type === 'perplexity') {
    try {
      if (!gen) throw new Error('no model is loaded in this worker');
      const t0 = performance.now();
      const r = gen.perplexity(msg.text, msg.context ?? 0, msg.stride ?? 0, (done: number, total: number) => {
        ctx.postMessage({ type: 'ppl-progress', done, total });
        return true;
      });
      ctx.postMessage({ type: 'ppl', result: JSON.parse(r), ms: performance.now() - t0 });
    } catch (err) {
      fail(err, 'perplexity');
    }
  }
});

ctx.postMessage({ type: 'ready' });
