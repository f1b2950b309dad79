// The bundled demo: three tiny Llama-shaped checkpoints (a base and two "fine-tunes" of it), made
// here in a few milliseconds so the Merge tab works with one click and the first paint never waits
// for a download. Deterministic: the same bytes on every load (mulberry32 + Box–Muller).
//
// Shapes (Llama naming, as in HF LlamaForCausalLM): vocab V=64, hidden H=32, FFN F=64, 2 layers,
// 4 query heads / 2 KV heads of head_dim 8.

const V = 64, H = 32, F = 64, L = 2, KV = 16;

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function normal(rand: () => number): number {
  const u = Math.max(rand(), 1e-12), v = rand();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

type Tensor = { name: string; shape: number[]; data: Float32Array };

function tensorList(): { name: string; shape: number[]; norm: boolean }[] {
  const t: { name: string; shape: number[]; norm: boolean }[] = [];
  t.push({ name: 'model.embed_tokens.weight', shape: [V, H], norm: false });
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    t.push({ name: p + 'input_layernorm.weight', shape: [H], norm: true });
    t.push({ name: p + 'self_attn.q_proj.weight', shape: [H, H], norm: false }); // (out, in)
    t.push({ name: p + 'self_attn.k_proj.weight', shape: [KV, H], norm: false });
    t.push({ name: p + 'self_attn.v_proj.weight', shape: [KV, H], norm: false });
    t.push({ name: p + 'self_attn.o_proj.weight', shape: [H, H], norm: false });
    t.push({ name: p + 'post_attention_layernorm.weight', shape: [H], norm: true });
    t.push({ name: p + 'mlp.gate_proj.weight', shape: [F, H], norm: false });
    t.push({ name: p + 'mlp.up_proj.weight', shape: [F, H], norm: false });
    t.push({ name: p + 'mlp.down_proj.weight', shape: [H, F], norm: false });
  }
  t.push({ name: 'model.norm.weight', shape: [H], norm: true });
  t.push({ name: 'lm_head.weight', shape: [V, H], norm: false });
  return t;
}

/** Base weights N(0, 0.02²) (norms 1), plus a fine-tune delta N(0, 0.004²) drawn from `deltaSeed`. */
function weights(deltaSeed: number | null): Tensor[] {
  const base = mulberry32(1234);
  const delta = deltaSeed === null ? null : mulberry32(deltaSeed);
  return tensorList().map(({ name, shape, norm }) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      data[i] = norm ? 1 : 0.02 * normal(base);
      if (delta) data[i] += 0.004 * normal(delta);
    }
    return { name, shape, data };
  });
}

/** safetensors bytes: u64 LE header length, JSON header (padded with spaces to 8 bytes), data. */
export function safetensorsBytes(tensors: Tensor[]): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hb.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  let p = 8 + hb.length;
  for (const t of tensors) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), p);
    p += t.data.byteLength;
  }
  return out;
}

const CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: V,
  hidden_size: H,
  intermediate_size: F,
  num_hidden_layers: L,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 8,
  hidden_act: 'silu',
  max_position_embeddings: 128,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  tie_word_embeddings: false,
  torch_dtype: 'float32',
  bos_token_id: 1,
  eos_token_id: 2,
};

export interface DemoModel {
  name: string;
  files: Map<string, File>;
}

/** The three demo models and the recipe the demo starts with. */
export function demoModels(): { models: DemoModel[]; recipe: Record<string, unknown> } {
  const make = (name: string, deltaSeed: number | null): DemoModel => {
    const st = safetensorsBytes(weights(deltaSeed));
    const files = new Map<string, File>();
    files.set('model.safetensors', new File([st as BlobPart], 'model.safetensors'));
    files.set('config.json', new File([JSON.stringify(CONFIG, null, 2) + '\n'], 'config.json', { type: 'application/json' }));
    return { name, files };
  };
  const models = [make('tiny-base', null), make('tiny-math', 77), make('tiny-code', 99)];
  const recipe = {
    merge_method: 'ties',
    base_model: 'tiny-base',
    models: [
      { model: 'tiny-math', parameters: { weight: 0.5, density: 0.5 } },
      { model: 'tiny-code', parameters: { weight: 0.5, density: 0.5 } },
    ],
    parameters: { normalize: true },
    dtype: 'float32',
  };
  return { models, recipe };
}
