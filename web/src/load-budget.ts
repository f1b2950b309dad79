// "Too big for the browser": the memory a model load needs, estimated from its headers alone
// (safetensors JSON headers, GGUF tensor infos, config.json / GGUF metadata), against the memory
// the page can have, checked before any source (hub, local GGUF, local folder, the merge just made)
// is loaded — and for the hub before any weight is downloaded. One function, `checkLoad`, for all.
//
// How the engine holds a model (crate/src/models/llama.rs `LlamaWeights::load`, gguf_llama.rs
// `GgufLoader::linear`, `LlamaWeights::quantize`, wasm/generate.rs `Generator`):
//   - F16 weight matrices stay F16 (`WeightStorage::F16`, 2 bytes per weight: safetensors 2-D
//     F16 tensors, GGUF F16 tensors of 2 or more dimensions); everything else that is not
//     block-quantized — F32, BF16 (bf16 → f16 could overflow), norms, biases — is widened to f32
//     (4 bytes); GGUF Q8_0 / Q4_0 / Q4_1 keep their blocks (34 / 18 / 20 bytes per 32);
//   - quantize-on-load runs after the whole model is loaded (layer by layer, each f32 layer freed
//     as its blocks are made), so the peak of a load is the weights as loaded, and only what is
//     held afterwards shrinks; WebAssembly memory never shrinks, so the peak is what counts;
//   - reading a tensor goes through one buffer of its raw bytes (the largest tensor's size; a
//     checkpoint's fused 3-D expert tensor is read whole as f32 before it is split per expert);
//   - the CPU copy of the weights stays in WebAssembly memory when the model runs on WebGPU too
//     (the CPU fallback), so the WebAssembly budget applies on both backends;
//   - the CPU KV cache grows to the positions used: 2 (k, v) × layers × positions × kv_heads ×
//     head_dim × 4 bytes, counted here for CONTEXT_POSITIONS (the GPU path's default context).
// The budget: the module declares no maximum memory (checked: its memory section has no maximum),
// so a browser gives it at most 65 536 pages of 64 KiB = 4 GiB, the wasm32 limit (v8.dev/blog/
// 4gb-wasm-memory: Chrome 83+; Firefox the same); a growth past what the machine can back fails
// earlier, so this is the most a load can hope for, not a promise. On
// WebGPU the weights and the GPU KV cache also live in GPU buffers, each at most
// maxStorageBufferBindingSize / maxBufferSize (GpuKvCache::new refuses a layer's cache over it;
// weights are split into row chunks under it); WebGPU does not tell a page the GPU's total memory.
//
// References: safetensors format (8-byte little-endian header length, JSON header: dtype, shape,
// data_offsets); GGUF v3 (ggml docs/gguf.md: header, metadata key/values, tensor infos; ggml type
// ids and block sizes from ggml.c `type_traits`); WebGPU §3.6 limits.

/** wasm32: 65 536 pages of 64 KiB. */
export const WASM_BUDGET = 4 * 1024 ** 3;
/** Positions the KV cache is counted for (GpuLlamaOptions' default context, min with the model's). */
export const CONTEXT_POSITIONS = 2048;
/** The engine's own memory besides the weights and the logits: its data, activations, pools
 * (SmolLM2-135M Q4_1 measured: 13 MB of WebAssembly memory beyond its weights after the load). */
export const ENGINE_OVERHEAD = 32 * 1024 ** 2;
/** Tokens whose logits one forward may return at once (a prompt, a perplexity window of the
 * default 256): T × vocab × 4 bytes. */
export const LOGIT_ROWS = 256;
const QK = 32;

/** One tensor as a header describes it. `dtype`: a safetensors dtype (F32, BF16, ...) or a GGUF
 * type name (F32, F16, Q4_1, ...). */
export interface TensorDesc {
  name: string;
  dtype: string;
  shape: number[];
}

/** What the estimate needs of a model: its tensors and the attention shape from its config. */
export interface ModelShape {
  format: 'safetensors' | 'gguf';
  tensors: TensorDesc[];
  layers: number;
  kvHeads: number;
  headDim: number;
  /** the model's context (max_position_embeddings / {arch}.context_length) */
  context: number;
  /** tokenizer.json's size (safetensors), 0 for GGUF (its vocabulary is in the metadata) */
  tokenizerBytes: number;
}

export interface LoadEstimate {
  params: number;
  /** bytes of the weights in the files (as stored) */
  fileBytes: number;
  /** bytes of WebAssembly memory the weights take once loaded (before quantize-on-load) */
  loaded: number;
  /** ... and after quantize-on-load (= loaded without it) */
  held: number;
  /** the largest tensor's raw bytes (the read buffer; f32 for a fused 3-D expert tensor) */
  readBuffer: number;
  /** the CPU KV cache for `positions` positions */
  kv: number;
  /** logits of LOGIT_ROWS tokens (LOGIT_ROWS × vocab × 4) */
  logits: number;
  positions: number;
  /** the peak of WebAssembly memory: max(loaded + read buffer, held + KV + logits) + the engine's own */
  peak: number;
  budget: number;
  /** On WebGPU (GpuLlama): the weights uploaded (quantized ones in the split layout: f32 scale
   * [+ f32 min] + packed quants per block of 32), the GPU KV cache for `positions`, and one
   * layer's k (or v) buffer, which must fit one storage binding. */
  gpu: { weights: number; kv: number; kvLayer: number };
}

/** The WebGPU limits that bound one buffer (GPUSupportedLimits). */
export interface GpuLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
}

const SAFETENSORS_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1 };
/** GGUF types the loader keeps as blocks: bytes per block of 32. */
const BLOCK_BYTES: Record<string, number> = { Q8_0: 34, Q4_0: 18, Q4_1: 20 };
/** ... and in the GPU's aligned split layout (quant::SplitBlocks: f32 scale, f32 min for Q4_1, u32 quant words). */
const SPLIT_BYTES: Record<string, number> = { Q8_0: 36, Q4_0: 20, Q4_1: 24 };

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
/** Whether the GGUF loader keeps F16 matrices (and stacked experts) F16 as the safetensors loader
 * does (gguf_llama.rs `GgufLoader::linear` / `experts`, WeightStorage::F16). */
const GGUF_F16_KEPT = true;

/** Bytes of a tensor in its file. */
export function storedBytes(t: TensorDesc, format: ModelShape['format']): number {
  const n = numel(t.shape);
  if (format === 'gguf') {
    if (BLOCK_BYTES[t.dtype]) return (n / QK) * BLOCK_BYTES[t.dtype];
    const g = GGML_TYPES.find((x) => x.name === t.dtype);
    return g ? (n / g.block) * g.bytes : n * 4;
  }
  return n * (SAFETENSORS_BYTES[t.dtype] ?? 4);
}

/** Bytes of a tensor once loaded: blocks kept, F16 matrices kept, everything else widened to f32. */
export function loadedBytes(t: TensorDesc, format: ModelShape['format']): number {
  const n = numel(t.shape);
  if (format === 'gguf' && BLOCK_BYTES[t.dtype]) return (n / QK) * BLOCK_BYTES[t.dtype];
  if (t.dtype === 'F16' && (format === 'gguf' ? GGUF_F16_KEPT && t.shape.length >= 2 : t.shape.length === 2)) return n * 2;
  return n * 4;
}

/** Whether quantize-on-load converts this tensor: 2-D and up weights whose rows are whole blocks,
 * not norms, biases or MoE routers (LlamaWeights::quantize). */
function quantizable(t: TensorDesc): boolean {
  if (t.shape.length < 2 || t.shape[t.shape.length - 1] % QK !== 0) return false;
  return !/(^|\.)(block_sparse_moe\.gate|mlp\.gate|ffn_gate_inp|shared_expert_gate)\.weight$/.test(t.name);
}

/** The estimate for `shape` loaded with quantize-on-load `quantize` ('' = none, q8_0, q4_0). */
export function estimateLoad(shape: ModelShape, quantize: string): LoadEstimate {
  let params = 0, fileBytes = 0, loaded = 0, held = 0, readBuffer = 0, gpuWeights = 0;
  const qBytes = quantize === 'q8_0' ? 34 : quantize === 'q4_0' ? 18 : 0;
  const qSplit = quantize === 'q8_0' ? 36 : quantize === 'q4_0' ? 20 : 0;
  for (const t of shape.tensors) {
    const n = numel(t.shape);
    params += n;
    const stored = storedBytes(t, shape.format);
    fileBytes += stored;
    // A fused expert tensor of a checkpoint (E, 2·I, H) is read whole as f32, then copied per expert.
    readBuffer = Math.max(readBuffer, shape.format === 'safetensors' && t.shape.length >= 3 ? n * 4 : stored);
    const l = loadedBytes(t, shape.format);
    loaded += l;
    const q = qBytes > 0 && quantizable(t);
    held += q ? (n / QK) * qBytes : l;
    const split = shape.format === 'gguf' ? SPLIT_BYTES[t.dtype] : undefined;
    gpuWeights += q ? (n / QK) * qSplit : split ? (n / QK) * split : l;
  }
  const positions = Math.max(1, Math.min(shape.context || CONTEXT_POSITIONS, CONTEXT_POSITIONS));
  const kv = 2 * shape.layers * positions * shape.kvHeads * shape.headDim * 4;
  const embed = shape.tensors.find((t) => /(^|\.)(embed_tokens|token_embd)\.weight$/.test(t.name));
  const logits = LOGIT_ROWS * (embed?.shape[0] ?? 0) * 4;
  const overhead = ENGINE_OVERHEAD + shape.tokenizerBytes * 4;
  const peak = Math.max(loaded + readBuffer, held + kv + logits) + overhead;
  const kvLayer = positions * shape.kvHeads * shape.headDim * 4;
  return { params, fileBytes, loaded, held, readBuffer, kv, logits, positions, peak, budget: WASM_BUDGET, gpu: { weights: gpuWeights, kv: 2 * shape.layers * kvLayer, kvLayer } };
}

/**
 * What the GPU path needs against this adapter's buffer limits: null when it fits, else why the
 * model will run on the CPU instead (GpuKvCache::new refuses a layer's cache over one binding).
 * WebGPU does not expose the GPU's total memory; an allocation past it fails at upload, and the
 * engine then runs the model on the CPU and says so.
 */
export function checkGpu(e: LoadEstimate, limits: GpuLimits): string | null {
  const binding = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  if (e.gpu.kvLayer > binding)
    return `its KV cache needs ${fmtBytes(e.gpu.kvLayer)} per layer for ${e.positions} positions, over this GPU's largest storage buffer (${fmtBytes(binding)}): it will run on the CPU`;
  return null;
}

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${u[i]}`;
}

/** One line for the page: memory against the budget (and the GPU's share when `limits` are known). */
export function describeEstimate(e: LoadEstimate, limits?: GpuLimits | null): string {
  let s = `needs about ${fmtBytes(e.peak)} of the browser's ${fmtBytes(e.budget)} WebAssembly memory (weights ${fmtBytes(e.held)}${e.held !== e.loaded ? `, ${fmtBytes(e.loaded)} while loading` : ''}; KV cache ${fmtBytes(e.kv)} for ${e.positions} positions)`;
  if (limits) {
    const gpu = checkGpu(e, limits);
    s += gpu ? `; WebGPU: ${gpu}` : `; on WebGPU also ${fmtBytes(e.gpu.weights + e.gpu.kv)} of GPU buffers (each at most ${fmtBytes(Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize))})`;
  }
  return s;
}

/**
 * The check every source goes through before its load: null when `shape` fits with `quantize`,
 * else the message (naming the model, the estimate, the budget and what to do).
 */
export function checkLoad(name: string, shape: ModelShape, quantize: string): string | null {
  const e = estimateLoad(shape, quantize);
  if (e.peak <= e.budget) return null;
  const advice: string[] = [];
  for (const q of ['q8_0', 'q4_0']) {
    if (q === quantize) continue;
    const alt = estimateLoad(shape, q);
    if (alt.peak <= alt.budget) {
      advice.push(`pick "Quantize on load: ${q.toUpperCase()}" (about ${fmtBytes(alt.peak)})`);
      break;
    }
  }
  if (!advice.length && e.loaded > e.held)
    advice.push(`quantize-on-load does not help here: the weights take ${fmtBytes(e.loaded)} while loading, before they are quantized — use a GGUF file of it already quantized to Q4_0 / Q4_1 / Q8_0`);
  else if (!advice.length && shape.format === 'safetensors') advice.push('use a GGUF file of it quantized to Q4_0 / Q4_1 / Q8_0');
  advice.push('or pick a smaller model');
  return `${name} is too big for the browser: loading it needs about ${fmtBytes(e.peak)} of WebAssembly memory (${fmtBytes(e.loaded)} of weights as loaded${e.held !== e.loaded ? `, ${fmtBytes(e.held)} after quantize-on-load` : ''}, a ${fmtBytes(e.kv)} KV cache for ${e.positions} positions), over the ${fmtBytes(e.budget)} a page can have (the wasm32 limit). To run it: ${advice.join('; ')}.`;
}

// ---------------------------------------------------------------------------------------------
// Reading the shapes from headers

/** The attention shape of an HF config.json (LlamaConfig::from_json's fields and defaults). */
export function shapeFromConfig(config: unknown, tensors: TensorDesc[], tokenizerBytes: number): ModelShape {
  const c = (config && typeof config === 'object' ? config : {}) as Record<string, unknown>;
  const n = (k: string) => (typeof c[k] === 'number' && Number.isFinite(c[k]) ? (c[k] as number) : undefined);
  const heads = n('num_attention_heads') ?? 1;
  const hidden = n('hidden_size') ?? 0;
  return {
    format: 'safetensors',
    tensors,
    layers: n('num_hidden_layers') ?? 0,
    kvHeads: n('num_key_value_heads') ?? heads,
    headDim: n('head_dim') ?? Math.floor(hidden / Math.max(1, heads)),
    context: n('max_position_embeddings') ?? CONTEXT_POSITIONS,
    tokenizerBytes,
  };
}

/** The tensors of a safetensors header (`prefix`: its first 8 + N bytes). `file` names it in errors. */
export function safetensorsTensors(prefix: Uint8Array, file: string): TensorDesc[] {
  if (prefix.length < 8) throw new Error(`${file}: shorter than a safetensors header`);
  const n = Number(new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true));
  if (prefix.length < 8 + n) throw new Error(`${file}: the header is ${n} bytes but only ${prefix.length - 8} were read`);
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(new TextDecoder().decode(prefix.subarray(8, 8 + n)));
  } catch (e) {
    throw new Error(`${file}: the safetensors header is not valid JSON (${String(e)})`);
  }
  const out: TensorDesc[] = [];
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') continue;
    const t = v as { dtype?: unknown; shape?: unknown };
    if (typeof t?.dtype !== 'string' || !Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw new Error(`${file}: tensor ${name} has no valid dtype / shape in the header`);
    out.push({ name, dtype: t.dtype, shape: t.shape as number[] });
  }
  return out;
}

/** The safetensors header of a local file or Blob (two small reads). */
export async function blobSafetensorsHeader(blob: Blob, file: string): Promise<TensorDesc[]> {
  const head = new Uint8Array(await blob.slice(0, 8).arrayBuffer());
  if (head.length < 8) throw new Error(`${file}: shorter than a safetensors header`);
  const n = Number(new DataView(head.buffer).getBigUint64(0, true));
  if (n < 2 || n > 100_000_000 || 8 + n > blob.size) throw new Error(`${file}: header length ${n} does not fit a safetensors file of ${blob.size} bytes`);
  const prefix = new Uint8Array(8 + n);
  prefix.set(head, 0);
  prefix.set(new Uint8Array(await blob.slice(8, 8 + n).arrayBuffer()), 8);
  return safetensorsTensors(prefix, file);
}

/** The shape of an HF folder given as path → Blob (config.json, *.safetensors, tokenizer.json). */
export async function folderShape(name: string, files: Map<string, Blob>): Promise<ModelShape> {
  const cfg = files.get('config.json');
  if (!cfg) throw new Error(`${name}: config.json is missing`);
  let config: unknown;
  try {
    config = JSON.parse(await cfg.text());
  } catch (e) {
    throw new Error(`${name}/config.json is not valid JSON (${String(e)})`);
  }
  const tensors: TensorDesc[] = [];
  for (const [path, blob] of files) if (path.endsWith('.safetensors')) tensors.push(...(await blobSafetensorsHeader(blob, `${name}/${path}`)));
  return shapeFromConfig(config, tensors, files.get('tokenizer.json')?.size ?? 0);
}

// GGUF ------------------------------------------------------------------------------------------

/** ggml type ids → name, elements per block, bytes per block (ggml.c type_traits). */
const GGML_TYPES: { id: number; name: string; block: number; bytes: number }[] = [
  { id: 0, name: 'F32', block: 1, bytes: 4 },
  { id: 1, name: 'F16', block: 1, bytes: 2 },
  { id: 2, name: 'Q4_0', block: 32, bytes: 18 },
  { id: 3, name: 'Q4_1', block: 32, bytes: 20 },
  { id: 6, name: 'Q5_0', block: 32, bytes: 22 },
  { id: 7, name: 'Q5_1', block: 32, bytes: 24 },
  { id: 8, name: 'Q8_0', block: 32, bytes: 34 },
  { id: 9, name: 'Q8_1', block: 32, bytes: 36 },
  { id: 10, name: 'Q2_K', block: 256, bytes: 84 },
  { id: 11, name: 'Q3_K', block: 256, bytes: 110 },
  { id: 12, name: 'Q4_K', block: 256, bytes: 144 },
  { id: 13, name: 'Q5_K', block: 256, bytes: 176 },
  { id: 14, name: 'Q6_K', block: 256, bytes: 210 },
  { id: 15, name: 'Q8_K', block: 256, bytes: 292 },
  { id: 30, name: 'BF16', block: 1, bytes: 2 },
];

class NeedMore extends Error {}

/** Parse a GGUF header (metadata + tensor infos) from its first bytes; NeedMore when they end early. */
function parseGguf(b: Uint8Array, file: string): { meta: Map<string, unknown>; tensors: TensorDesc[] } {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let p = 0;
  const need = (n: number) => {
    if (p + n > b.length) throw new NeedMore();
  };
  const u32 = () => (need(4), (p += 4), dv.getUint32(p - 4, true));
  const u64 = () => {
    need(8);
    p += 8;
    const v = dv.getBigUint64(p - 8, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${file}: a GGUF count or size (${v}) is too large`);
    return Number(v);
  };
  const str = () => {
    const n = u64();
    need(n);
    p += n;
    return new TextDecoder().decode(b.subarray(p - n, p));
  };
  const scalar = (t: number): unknown => {
    switch (t) {
      case 0: return (need(1), b[p++]);
      case 1: return (need(1), (p += 1), dv.getInt8(p - 1));
      case 2: return (need(2), (p += 2), dv.getUint16(p - 2, true));
      case 3: return (need(2), (p += 2), dv.getInt16(p - 2, true));
      case 4: return u32();
      case 5: return (need(4), (p += 4), dv.getInt32(p - 4, true));
      case 6: return (need(4), (p += 4), dv.getFloat32(p - 4, true));
      case 7: return (need(1), b[p++] !== 0);
      case 8: return str();
      case 10: return (need(8), (p += 8), Number(dv.getBigUint64(p - 8, true))); // a value: any u64
      case 11: return (need(8), (p += 8), Number(dv.getBigInt64(p - 8, true)));
      case 12: return (need(8), (p += 8), dv.getFloat64(p - 8, true));
      default: throw new Error(`${file}: unknown GGUF metadata type ${t}`);
    }
  };
  need(4);
  if (new TextDecoder().decode(b.subarray(0, 4)) !== 'GGUF') throw new Error(`${file}: not a GGUF file (no GGUF magic)`);
  p = 4;
  const version = u32();
  if (version < 2 || version > 3) throw new Error(`${file}: GGUF version ${version} (2 or 3 are read)`);
  const nTensors = u64();
  const nKv = u64();
  const meta = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const key = str();
    const t = u32();
    if (t === 9) {
      const et = u32();
      const n = u64();
      // Arrays (the vocabulary) are skipped, keeping their length only.
      for (let j = 0; j < n; j++) scalar(et);
      meta.set(key, n);
    } else meta.set(key, scalar(t));
  }
  const tensors: TensorDesc[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    if (nd > 8) throw new Error(`${file}: tensor ${name} has ${nd} dimensions`);
    const dims: number[] = [];
    for (let d = 0; d < nd; d++) dims.push(u64());
    const type = u32();
    u64(); // offset
    const g = GGML_TYPES.find((x) => x.id === type);
    // GGUF dims are innermost first: reversed to the row-major shape (rows last = in_features).
    tensors.push({ name, dtype: g?.name ?? `type ${type}`, shape: dims.reverse() });
  }
  return { meta, tensors };
}

/** The shape of a GGUF file or Blob from its header (read in growing prefixes, up to 256 MiB). */
export function ggufShape(blob: Blob, file: string): Promise<ModelShape> {
  return ggufShapeFrom(async (len) => new Uint8Array(await blob.slice(0, len).arrayBuffer()), file);
}

/** The same from any reader of a file's first `len` bytes (fewer at its end): a hub file by Range. */
export async function ggufShapeFrom(read: (len: number) => Promise<Uint8Array>, file: string): Promise<ModelShape> {
  for (let len = 4 << 20; ; len *= 4) {
    const bytes = await read(len);
    try {
      const { meta, tensors } = parseGguf(bytes, file);
      const arch = String(meta.get('general.architecture') ?? 'llama');
      const n = (k: string) => (typeof meta.get(`${arch}.${k}`) === 'number' ? (meta.get(`${arch}.${k}`) as number) : undefined);
      const heads = n('attention.head_count') ?? 1;
      return {
        format: 'gguf',
        tensors,
        layers: n('block_count') ?? 0,
        kvHeads: n('attention.head_count_kv') ?? heads,
        headDim: n('attention.key_length') ?? Math.floor((n('embedding_length') ?? 0) / Math.max(1, heads)),
        context: n('context_length') ?? CONTEXT_POSITIONS,
        tokenizerBytes: 0,
      };
    } catch (e) {
      if (!(e instanceof NeedMore)) throw e;
      if (bytes.length < len || len >= 256 << 20) throw new Error(`${file}: the GGUF header ends past the end of the file (truncated, or not a GGUF file)`);
    }
  }
}
