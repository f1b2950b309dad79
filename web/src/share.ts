// Share by URL: the Merge tab's state as ONE typed schema, versioned, compressed into the URL
// fragment, and validated field by field when a link is opened.
//
// Habits from tensorflow/playground (https://github.com/tensorflow/playground, src/state.ts): the
// whole state lives in the fragment, and `<control>_hide=true` parameters hide controls for a
// simplified classroom view. Compression: the Compression Streams API ('deflate-raw' = RFC 1951),
// base64url = RFC 4648 §5.
//
// Fragment:  #v=1&s=<base64url(deflate-raw(JSON of ShareBody))>[&<control>_hide=true ...]
//
// A fragment is untrusted input (anyone can send a link): `decodeFragment` caps its size before
// and while decompressing, checks every field against the schema, and answers with a value
// (`{ ok: false, field, message }`) instead of throwing. Nothing here touches the DOM or the
// network: node imports this file for the unit tests (tests/unit/share.test.mjs).

import { toYaml, type Json } from './yaml';

export const SHARE_VERSION = 1;
/** Longest fragment accepted (characters after '#'). */
export const MAX_FRAGMENT = 16 * 1024;
/** Largest decompressed body accepted: decompression stops past it. */
export const MAX_BODY = 64 * 1024;
/** Most models a link may name (sources, and entries of the recipe's `models`). */
export const MAX_MODELS = 16;
/** Most files one local source may list. */
export const MAX_FILES = 64;
export const MAX_NAME = 200;
export const MAX_YAML = 32 * 1024;
/** A link never starts a download larger than this without a click. */
export const AUTO_FETCH_LIMIT = 100 * 1000 * 1000;

/** The merge methods of the engine (crate/src/merge/methods), for a clear error before the engine is loaded. */
export const METHODS = [
  'linear', 'slerp', 'nuslerp', 'multislerp', 'karcher', 'task_arithmetic', 'ties', 'dare_ties', 'dare_linear',
  'breadcrumbs', 'breadcrumbs_ties', 'della', 'della_linear', 'model_stock', 'nearswap', 'sce', 'arcee_fusion', 'passthrough',
] as const;

/** The bundled demo checkpoints (web/src/demo.ts). */
export const DEMO_MODELS = ['tiny-base', 'tiny-math', 'tiny-code'] as const;
export type DemoName = (typeof DEMO_MODELS)[number];

export const DTYPES = ['float32', 'float16', 'bfloat16'] as const;

/** Classroom flags: `<flag>_hide=true` in the fragment hides that control. */
export const HIDE_FLAGS = {
  models: 'the Models section (model cards, pickers, demo button)',
  demo: 'the "Load the demo" button',
  add: 'the "+ Add a model" button and the drop zone',
  hub: 'adding models from the Hugging Face Hub, and the hub settings',
  method: 'the method picker',
  base: 'the base model picker',
  dtype: 'the compute and output dtype pickers',
  params: 'the method and per-model parameters',
  yaml: 'the YAML view (the form stays)',
  seed: 'the seed',
  shard: 'the output shard size',
  share: 'the Share panel',
} as const;
export type HideFlag = keyof typeof HIDE_FLAGS;
export const HIDE_FLAG_NAMES = Object.keys(HIDE_FLAGS) as HideFlag[];

export interface LocalFile {
  /** Path inside the model folder, as the recipe's model sees it (`model.safetensors`, `config.json`). */
  path: string;
  size: number;
  /** Lower-case hex. */
  sha256: string;
}

/** Where one model's files come from. `name` is the model's name in the recipe. */
export type Source =
  | { name: string; kind: 'demo'; demo: DemoName }
  | { name: string; kind: 'hub'; repo: string; revision: string }
  | { name: string; kind: 'local'; files: LocalFile[] };

/** The sampling controls of the Generate tab (generate.worker.ts `SamplingOptions`). */
export const SAMPLING_KEYS = ['temperature', 'top_k', 'top_p', 'min_p', 'repetition_penalty', 'presence_penalty', 'frequency_penalty', 'no_repeat_ngram_size', 'seed'] as const;
export const GENERATE_MODEL_KINDS = ['local-gguf', 'local-folder', 'merge', 'bundled', 'hub'] as const;
export const QUANTIZE = ['', 'q8_0', 'q4_0'] as const;
export const MAX_GENERATE_MODELS = 3;

/** The Generate tab's controls (generate.ts `GenerateState`): models are only named, never loaded by a link. */
export interface GenerateShare {
  prompt: string;
  greedy: boolean;
  maxTokens: number;
  sampling: Record<(typeof SAMPLING_KEYS)[number], number>;
  quantize: (typeof QUANTIZE)[number];
  /** Where the models run: WebGPU when there is an adapter ('auto') or the CPU. */
  backend?: 'auto' | 'cpu';
  pplText: string;
  /** Hub models by repo and revision (validated as the Merge tab's hub sources); a link never reads them before a click. */
  models: ({ kind: 'local-gguf' | 'local-folder'; name: string; size: number } | { kind: 'merge' | 'bundled'; name: string } | { kind: 'hub'; repo: string; revision: string; gguf?: string })[];
}

/** The recipe as the form holds it: the JSON tree of the mergekit YAML. */
export type Recipe = { [key: string]: Json };

/** The Merge tab's whole state. */
export interface ShareState {
  sources: Source[];
  /** The recipe (method, base, models with their parameters, global parameters, dtypes, slices...). */
  recipe: Recipe;
  /** The YAML text exactly as the tab shows it (comments and layout included). */
  yaml: string;
  seed: string;
  /** `--out-shard-size`: '' (mergekit's default) or like `500M`, `2B`. */
  shard: string;
  /** Which recipe view is open. */
  view: 'form' | 'yaml';
  /** Classroom flags: controls hidden in this view. */
  hide: HideFlag[];
  /** The open tab (absent: the Merge tab). */
  tab?: 'merge' | 'generate';
  /** The Generate tab's controls, when they differ from the page's defaults. */
  generate?: GenerateShare;
}

/** The serialised body (inside `s=`): short keys, and no `yaml` when it is `toYaml(recipe)`. */
interface Body {
  m: ({ n: string; d: string } | { n: string; h: string; r: string } | { n: string; l: [string, number, string][] })[];
  r: Recipe;
  y?: string;
  seed?: string;
  shard?: string;
  view?: 'yaml';
  tab?: 'generate';
  g?: GenerateShare;
}

export type DecodeResult =
  | { ok: true; state: ShareState | null; hide: HideFlag[]; warnings: string[] }
  | { ok: false; field: string; message: string };

export class SchemaError extends Error {
  constructor(
    readonly field: string,
    readonly detail: string,
  ) {
    super(`${field}: ${detail}`);
  }
}

// ---------------------------------------------------------------- validation

const show = (v: unknown): string => {
  let s: string;
  try {
    s = typeof v === 'string' ? JSON.stringify(v) : v === undefined ? 'nothing' : Array.isArray(v) ? 'a list' : v === null ? 'null' : typeof v === 'object' ? 'an object' : String(v);
  } catch {
    s = String(typeof v);
  }
  return s.length > 80 ? s.slice(0, 77) + '…' : s;
};

const fail = (field: string, detail: string): never => {
  throw new SchemaError(field, detail);
};

const isPlainObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);

function obj(v: unknown, field: string): Record<string, unknown> {
  if (!isPlainObject(v)) fail(field, `expected an object, got ${show(v)}`);
  return v as Record<string, unknown>;
}

function str(v: unknown, field: string, max: number): string {
  if (typeof v !== 'string') return fail(field, `expected text, got ${show(v)}`);
  if (v.length > max) fail(field, `longer than ${max} characters`);
  return v;
}

function onlyKeys(o: Record<string, unknown>, keys: string[], field: string) {
  for (const k of Object.keys(o)) if (!keys.includes(k)) fail(field, `unknown field ${show(k)} (known: ${keys.join(', ')})`);
}

/** A model's name in the recipe: any text (HTML included: it is data), but no control characters. */
export function checkModelName(v: unknown, field: string): string {
  const s = str(v, field, MAX_NAME);
  if (!s.trim()) fail(field, 'a model name cannot be empty');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(s)) fail(field, 'a model name cannot contain control characters (newlines, tabs...)');
  return s;
}

/** A Hugging Face repo id: `name` or `owner/name` (letters, digits, `-`, `_`, `.`; at most 96 characters; huggingface_hub's validate_repo_id). */
export function checkRepo(v: unknown, field: string): string {
  const s = str(v, field, 200);
  if (s.length > 96 || !/^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)?$/.test(s) || s.includes('..') || s.includes('--') || s.endsWith('.git'))
    fail(field, `${show(s)} is not a Hugging Face repo id (owner/name: letters, digits, - _ .)`);
  return s;
}

/** A git revision: a branch, a tag or a commit id (no `..`, no spaces, no leading `/` or `-`). */
export function checkRevision(v: unknown, field: string): string {
  const s = str(v, field, 200);
  if (!/^[A-Za-z0-9_][A-Za-z0-9._\/-]{0,127}$/.test(s) || s.includes('..') || s.includes('//') || s.endsWith('/') || s.endsWith('.lock'))
    fail(field, `${show(s)} is not a revision (a branch, tag or commit id: letters, digits, . _ - /)`);
  return s;
}

export function checkSha256(v: unknown, field: string): string {
  const s = str(v, field, 200);
  if (!/^[0-9a-f]{64}$/.test(s)) fail(field, `${show(s)} is not a sha256 (64 lower-case hex digits)`);
  return s;
}

/** A path inside a model folder: relative, `/`-separated, no `.` or `..` parts. */
export function checkPath(v: unknown, field: string): string {
  const s = str(v, field, 256);
  const parts = s.split('/');
  // eslint-disable-next-line no-control-regex
  if (!s || parts.some((p) => p === '' || p === '.' || p === '..') || /[\u0000-\u001f\u007f\\]/.test(s))
    fail(field, `${show(s)} is not a relative file path inside the model folder`);
  return s;
}

function checkSize(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(field, `expected a file size in bytes (a whole number ≥ 0), got ${show(v)}`);
  return v as number;
}

export function checkSeed(v: unknown, field = 'seed'): string {
  const s = str(v, field, 20);
  if (!/^\d{1,20}$/.test(s) || BigInt(s) > 18446744073709551615n) fail(field, `${show(s)} is not a seed (a whole number from 0 to 2^64 − 1)`);
  return s;
}

export function checkShard(v: unknown, field = 'shard'): string {
  const s = str(v, field, 24);
  if (s !== '' && !/^\d+(\.\d+)?[KMBkmb]?$/.test(s)) fail(field, `${show(s)} is not a shard size (like 500M or 2B)`);
  return s;
}

/** Any JSON value within limits (depth, list length, text length, finite numbers). */
function checkJson(v: unknown, field: string, depth = 0): Json {
  if (depth > 8) fail(field, 'nested too deeply');
  if (v === null || typeof v === 'boolean') return v as Json;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) fail(field, `expected a finite number, got ${show(v)}`);
    return v;
  }
  if (typeof v === 'string') return str(v, field, 1024);
  if (Array.isArray(v)) {
    if (v.length > 256) fail(field, 'a list longer than 256 items');
    return v.map((x, i) => checkJson(x, `${field}[${i}]`, depth + 1));
  }
  if (isPlainObject(v)) {
    const out: { [k: string]: Json } = {};
    const keys = Object.keys(v);
    if (keys.length > 64) fail(field, 'more than 64 fields');
    for (const k of keys) {
      if (k.length > 64 || k === '__proto__') fail(field, `bad field name ${show(k)}`);
      out[k] = checkJson(v[k], `${field}.${k}`, depth + 1);
    }
    return out;
  }
  return fail(field, `unexpected ${show(v)}`);
}

/** Method / per-model parameters: identifier keys; numbers, booleans, gradients (lists) or filtered values. */
function checkParams(v: unknown, field: string): { [k: string]: Json } {
  const o = obj(v, field);
  for (const k of Object.keys(o)) if (!/^[A-Za-z_][A-Za-z0-9_]{0,63}$/.test(k)) fail(field, `bad parameter name ${show(k)}`);
  const out = checkJson(o, field) as { [k: string]: Json };
  for (const [k, val] of Object.entries(out)) {
    if (typeof val === 'string') fail(`${field}.${k}`, `expected a number, got ${show(val)}`);
  }
  return out;
}

/** The recipe tree: the fields the form edits are checked precisely; other mergekit fields as bounded JSON. */
export function checkRecipe(v: unknown, field = 'recipe'): Recipe {
  const o = obj(v, field);
  const method = str(o.merge_method, `${field}.merge_method`, 64);
  if (!(METHODS as readonly string[]).includes(method))
    fail(`${field}.merge_method`, `unknown method ${show(method)} (known: ${METHODS.join(', ')})`);
  const out = checkJson(o, field) as Recipe;
  if (o.base_model !== undefined) checkModelName(o.base_model, `${field}.base_model`);
  if (o.models !== undefined) {
    if (!Array.isArray(o.models)) fail(`${field}.models`, `expected a list, got ${show(o.models)}`);
    const models = o.models as unknown[];
    if (models.length > MAX_MODELS) fail(`${field}.models`, `too many models: ${models.length} (at most ${MAX_MODELS})`);
    models.forEach((m, i) => {
      const f = `${field}.models[${i}]`;
      const e = obj(m, f);
      checkModelName(e.model, `${f}.model`);
      if (e.parameters !== undefined) checkParams(e.parameters, `${f}.parameters`);
    });
  }
  if (o.slices !== undefined) {
    if (!Array.isArray(o.slices)) fail(`${field}.slices`, `expected a list, got ${show(o.slices)}`);
    (o.slices as unknown[]).forEach((s, i) => {
      const so = obj(s, `${field}.slices[${i}]`);
      if (!Array.isArray(so.sources)) fail(`${field}.slices[${i}].sources`, `expected a list, got ${show(so.sources)}`);
      const sources = so.sources as unknown[];
      if (sources.length > MAX_MODELS) fail(`${field}.slices[${i}].sources`, `too many models: ${sources.length} (at most ${MAX_MODELS})`);
      sources.forEach((src, j) => checkModelName(obj(src, `${field}.slices[${i}].sources[${j}]`).model, `${field}.slices[${i}].sources[${j}].model`));
    });
  }
  if (o.parameters !== undefined) checkParams(o.parameters, `${field}.parameters`);
  for (const k of ['dtype', 'out_dtype'])
    if (o[k] !== undefined && !(DTYPES as readonly string[]).includes(o[k] as string))
      fail(`${field}.${k}`, `unknown dtype ${show(o[k])} (known: ${DTYPES.join(', ')})`);
  return out;
}

/** Every model the recipe names (base, models, slice sources), in order, without repeats. */
export function recipeModels(r: Recipe): string[] {
  const out: string[] = [];
  const add = (v: Json | undefined) => {
    if (typeof v === 'string' && v && !out.includes(v)) out.push(v);
  };
  add(r.base_model);
  if (Array.isArray(r.models)) for (const m of r.models) if (isPlainObject(m)) add((m as { [k: string]: Json }).model);
  if (Array.isArray(r.slices))
    for (const s of r.slices)
      if (isPlainObject(s) && Array.isArray(s.sources)) for (const src of s.sources as Json[]) if (isPlainObject(src)) add((src as { [k: string]: Json }).model);
  return out;
}

function checkBody(v: unknown): ShareState {
  const o = obj(v, 'body');
  onlyKeys(o, ['m', 'r', 'y', 'seed', 'shard', 'view', 'tab', 'g'], 'body');
  const recipe = checkRecipe(o.r, 'recipe');
  if (!Array.isArray(o.m)) fail('models', `expected a list, got ${show(o.m)}`);
  const list = o.m as unknown[];
  if (list.length > MAX_MODELS) fail('models', `too many models: ${list.length} (at most ${MAX_MODELS})`);
  const sources: Source[] = [];
  list.forEach((m, i) => {
    const f = `models[${i}]`;
    const e = obj(m, f);
    const name = checkModelName(e.n, `${f}.name`);
    if (sources.some((s) => s.name === name)) fail(`${f}.name`, `${show(name)} is listed twice`);
    const kinds = ['d', 'h', 'l'].filter((k) => e[k] !== undefined);
    if (kinds.length !== 1) fail(f, 'expected exactly one source: a bundled demo, a hub repo or local files');
    if (e.d !== undefined) {
      onlyKeys(e, ['n', 'd'], f);
      const d = str(e.d, `${f}.demo`, 64);
      if (!(DEMO_MODELS as readonly string[]).includes(d)) fail(`${f}.demo`, `unknown demo model ${show(d)} (known: ${DEMO_MODELS.join(', ')})`);
      sources.push({ name, kind: 'demo', demo: d as DemoName });
    } else if (e.h !== undefined) {
      onlyKeys(e, ['n', 'h', 'r'], f);
      sources.push({ name, kind: 'hub', repo: checkRepo(e.h, `${f}.repo`), revision: checkRevision(e.r ?? 'main', `${f}.revision`) });
    } else {
      onlyKeys(e, ['n', 'l'], f);
      if (!Array.isArray(e.l)) fail(`${f}.files`, `expected a list, got ${show(e.l)}`);
      const fl = e.l as unknown[];
      if (fl.length === 0) fail(`${f}.files`, 'a local source needs at least one file');
      if (fl.length > MAX_FILES) fail(`${f}.files`, `too many files: ${fl.length} (at most ${MAX_FILES})`);
      const files = fl.map((x, j): LocalFile => {
        const ff = `${f}.files[${j}]`;
        if (!Array.isArray(x) || x.length !== 3) fail(ff, `expected [path, size, sha256], got ${show(x)}`);
        const t = x as unknown[];
        return { path: checkPath(t[0], `${ff}.path`), size: checkSize(t[1], `${ff}.size`), sha256: checkSha256(t[2], `${ff}.sha256`) };
      });
      const paths = new Set(files.map((x) => x.path));
      if (paths.size !== files.length) fail(`${f}.files`, 'a path is listed twice');
      sources.push({ name, kind: 'local', files });
    }
  });
  const yaml = o.y === undefined ? toYaml(recipe) : str(o.y, 'yaml', MAX_YAML);
  const seed = o.seed === undefined ? '0' : checkSeed(o.seed);
  const shard = o.shard === undefined ? '' : checkShard(o.shard);
  if (o.view !== undefined && o.view !== 'yaml' && o.view !== 'form') fail('view', `expected "form" or "yaml", got ${show(o.view)}`);
  if (o.tab !== undefined && o.tab !== 'generate' && o.tab !== 'merge') fail('tab', `expected "merge" or "generate", got ${show(o.tab)}`);
  const state: ShareState = { sources, recipe, yaml, seed, shard, view: o.view === 'yaml' ? 'yaml' : 'form', hide: [] };
  if (o.tab === 'generate') state.tab = 'generate';
  if (o.g !== undefined) state.generate = checkGenerate(o.g, 'generate');
  return state;
}

function num(v: unknown, field: string, min: number, max: number, integer = false): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) return fail(field, `expected a number, got ${show(v)}`);
  if (v < min || v > max || (integer && !Number.isInteger(v))) fail(field, `${v} is out of range (${integer ? 'a whole number ' : ''}${min} … ${max})`);
  return v;
}

/** The Generate tab's part of a link. */
export function checkGenerate(v: unknown, field = 'generate'): GenerateShare {
  const o = obj(v, field);
  onlyKeys(o, ['prompt', 'greedy', 'maxTokens', 'sampling', 'quantize', 'backend', 'pplText', 'models'], field);
  if (o.backend !== undefined && o.backend !== 'auto' && o.backend !== 'cpu') fail(`${field}.backend`, `expected "auto" or "cpu", got ${show(o.backend)}`);
  if (typeof o.greedy !== 'boolean') fail(`${field}.greedy`, `expected true or false, got ${show(o.greedy)}`);
  const q = str(o.quantize, `${field}.quantize`, 16);
  if (!(QUANTIZE as readonly string[]).includes(q)) fail(`${field}.quantize`, `unknown quantization ${show(q)} (known: none, q8_0, q4_0)`);
  const so = obj(o.sampling, `${field}.sampling`);
  onlyKeys(so, [...SAMPLING_KEYS], `${field}.sampling`);
  const sampling = {} as GenerateShare['sampling'];
  for (const k of SAMPLING_KEYS) sampling[k] = num(so[k], `${field}.sampling.${k}`, k === 'seed' ? 0 : -1e6, k === 'seed' ? 2 ** 53 : 1e6, k === 'seed' || k === 'top_k' || k === 'no_repeat_ngram_size');
  if (!Array.isArray(o.models)) fail(`${field}.models`, `expected a list, got ${show(o.models)}`);
  const ml = o.models as unknown[];
  if (ml.length > MAX_GENERATE_MODELS) fail(`${field}.models`, `too many models: ${ml.length} (at most ${MAX_GENERATE_MODELS})`);
  const models = ml.map((m, i) => {
    const f = `${field}.models[${i}]`;
    const e = obj(m, f);
    const kind = str(e.kind, `${f}.kind`, 32);
    if (!(GENERATE_MODEL_KINDS as readonly string[]).includes(kind)) fail(`${f}.kind`, `unknown kind ${show(kind)} (known: ${GENERATE_MODEL_KINDS.join(', ')})`);
    if (kind === 'hub') {
      onlyKeys(e, ['kind', 'repo', 'revision', 'gguf'], f);
      const hub: { kind: 'hub'; repo: string; revision: string; gguf?: string } = { kind, repo: checkRepo(e.repo, `${f}.repo`), revision: checkRevision(e.revision ?? 'main', `${f}.revision`) };
      if (e.gguf !== undefined) {
        const g = checkPath(e.gguf, `${f}.gguf`);
        if (!g.endsWith('.gguf')) fail(`${f}.gguf`, `${show(g)} is not a .gguf file name`);
        hub.gguf = g;
      }
      return hub;
    }
    onlyKeys(e, ['kind', 'name', 'size'], f);
    const name = checkModelName(e.name, `${f}.name`);
    if (kind === 'local-gguf' || kind === 'local-folder') return { kind, name, size: checkSize(e.size, `${f}.size`) } as const;
    if (e.size !== undefined) fail(`${f}.size`, `a ${kind} model has no size`);
    return { kind: kind as 'merge' | 'bundled', name };
  });
  const out: GenerateShare = {
    prompt: str(o.prompt, `${field}.prompt`, 8192),
    greedy: o.greedy as boolean,
    maxTokens: num(o.maxTokens, `${field}.maxTokens`, 1, 4096, true),
    sampling,
    quantize: q as GenerateShare['quantize'],
    pplText: str(o.pplText, `${field}.pplText`, 16384),
    models,
  };
  if (o.backend !== undefined) out.backend = o.backend as 'auto' | 'cpu';
  return out;
}

/** The state a tab may share: checked as strictly as a link (a link we write must open). */
export function checkState(s: ShareState): ShareState {
  const body = toBody(s);
  const state = checkBody(JSON.parse(JSON.stringify(body)));
  return { ...state, hide: s.hide.filter((h) => HIDE_FLAG_NAMES.includes(h)) };
}

function toBody(s: ShareState): Body {
  const body: Body = {
    m: s.sources.map((src) =>
      src.kind === 'demo'
        ? { n: src.name, d: src.demo }
        : src.kind === 'hub'
          ? { n: src.name, h: src.repo, r: src.revision }
          : { n: src.name, l: src.files.map((f): [string, number, string] => [f.path, f.size, f.sha256]) },
    ),
    r: s.recipe,
  };
  if (s.yaml !== toYaml(s.recipe)) body.y = s.yaml;
  if (s.seed !== '0' && s.seed !== '') body.seed = s.seed;
  if (s.shard !== '') body.shard = s.shard;
  if (s.view === 'yaml') body.view = 'yaml';
  if (s.tab === 'generate') body.tab = 'generate';
  if (s.generate) body.g = s.generate;
  return body;
}

// ---------------------------------------------------------------- bytes

export function toBase64Url(bytes: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export function fromBase64Url(s: string): Uint8Array {
  if (!/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) throw new SchemaError('s', 'not base64url text (A–Z a–z 0–9 - _)');
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function readAll(stream: ReadableStream<Uint8Array>, cap: number, field: string): Promise<Uint8Array> {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    let r: ReadableStreamReadResult<Uint8Array>;
    try {
      r = await reader.read();
    } catch {
      throw new SchemaError(field, 'not valid compressed data (the link is damaged or incomplete)');
    }
    if (r.done) break;
    total += r.value.length;
    if (total > cap) {
      // Stop the decompression here: a small fragment may inflate to gigabytes.
      reader.cancel().catch(() => {});
      throw new SchemaError(field, `decompresses to more than ${cap / 1024} KiB: too large for a link`);
    }
    chunks.push(r.value);
  }
  const out = new Uint8Array(total);
  let p = 0;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  return out;
}

async function pipeThrough(bytes: Uint8Array, t: CompressionStream | DecompressionStream, cap: number, field: string): Promise<Uint8Array> {
  const writer = t.writable.getWriter();
  // A corrupt input rejects these too; the reader's error is the one reported.
  writer.write(bytes as Uint8Array<ArrayBuffer>).catch(() => {});
  writer.close().catch(() => {});
  return readAll(t.readable as ReadableStream<Uint8Array>, cap, field);
}

export async function deflate(bytes: Uint8Array): Promise<Uint8Array> {
  return pipeThrough(bytes, new CompressionStream('deflate-raw'), Number.MAX_SAFE_INTEGER, 's');
}

export async function inflate(bytes: Uint8Array, cap = MAX_BODY): Promise<Uint8Array> {
  return pipeThrough(bytes, new DecompressionStream('deflate-raw'), cap, 's');
}

// ---------------------------------------------------------------- fragment

export type EncodeResult = { ok: true; fragment: string } | { ok: false; message: string };

/** The state → `v=1&s=...&flag_hide=true` (no leading '#'). */
export async function encodeFragment(state: ShareState): Promise<EncodeResult> {
  let checked: ShareState;
  try {
    checked = checkState(state);
  } catch (e) {
    return { ok: false, message: e instanceof SchemaError ? `This state cannot be shared: ${e.message}` : `This state cannot be shared: ${String(e)}` };
  }
  const json = JSON.stringify(toBody(checked));
  const bytes = new TextEncoder().encode(json);
  if (bytes.length > MAX_BODY) return { ok: false, message: `The recipe is too large for a link (${Math.ceil(bytes.length / 1024)} KiB, at most ${MAX_BODY / 1024} KiB): copy the YAML instead.` };
  const s = toBase64Url(await deflate(bytes));
  let frag = `v=${SHARE_VERSION}&s=${s}`;
  for (const h of HIDE_FLAG_NAMES) if (checked.hide.includes(h)) frag += `&${h}_hide=true`;
  if (frag.length > MAX_FRAGMENT) return { ok: false, message: `The link would be ${Math.ceil(frag.length / 1024)} KiB (at most ${MAX_FRAGMENT / 1024} KiB): copy the YAML instead.` };
  return { ok: true, fragment: frag };
}

/** Only the hide flags of a fragment, as `&`-joined parameters. */
export function hideParams(hide: HideFlag[]): string {
  return HIDE_FLAG_NAMES.filter((h) => hide.includes(h))
    .map((h) => `${h}_hide=true`)
    .join('&');
}

/**
 * `#v=1&s=...` (with or without '#') → the state, or a message naming the field at fault.
 * An empty fragment gives `{ ok: true, state: null }` (no link); one with only hide flags gives
 * `state: null` and the flags.
 */
export async function decodeFragment(fragment: string): Promise<DecodeResult> {
  try {
    return await decode(fragment);
  } catch (e) {
    if (e instanceof SchemaError) return { ok: false, field: e.field, message: `This link is not valid: ${e.message}` };
    return { ok: false, field: 'link', message: `This link is not valid: ${e instanceof Error ? e.message : String(e)}` };
  }
}

async function decode(fragment: string): Promise<DecodeResult> {
  let f = fragment.startsWith('#') ? fragment.slice(1) : fragment;
  if (f.length > MAX_FRAGMENT) throw new SchemaError('link', `too long (${Math.ceil(f.length / 1024)} KiB; a link holds at most ${MAX_FRAGMENT / 1024} KiB)`);
  f = f.trim();
  if (!f) return { ok: true, state: null, hide: [], warnings: [] };
  const params = new Map<string, string>();
  const warnings: string[] = [];
  const hide: HideFlag[] = [];
  for (const part of f.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    let key: string, value: string;
    try {
      key = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1));
    } catch {
      throw new SchemaError('link', 'bad %-escape in the fragment');
    }
    if (params.has(key)) throw new SchemaError(key, 'given twice');
    params.set(key, value);
    if (key.endsWith('_hide')) {
      const flag = key.slice(0, -5);
      if (!(HIDE_FLAG_NAMES as string[]).includes(flag)) {
        warnings.push(`unknown classroom flag ${show(key)} ignored (known: ${HIDE_FLAG_NAMES.map((h) => h + '_hide').join(', ')})`);
      } else if (value !== 'true' && value !== 'false') {
        throw new SchemaError(key, `expected true or false, got ${show(value)}`);
      } else if (value === 'true') hide.push(flag as HideFlag);
    } else if (key !== 'v' && key !== 's') {
      warnings.push(`unknown parameter ${show(key)} ignored`);
    }
  }
  const v = params.get('v');
  const s = params.get('s');
  if (v === undefined && s === undefined) {
    if (!hide.length && warnings.length) throw new SchemaError('link', 'not a Crucible link (no v= and s=)');
    return { ok: true, state: null, hide, warnings };
  }
  if (v === undefined) throw new SchemaError('v', 'missing: a link says its version (v=1)');
  if (v !== String(SHARE_VERSION))
    throw new SchemaError('v', `unknown version ${show(v)}: this page reads version ${SHARE_VERSION} links (made by a newer Crucible? open it there)`);
  if (s === undefined || s === '') throw new SchemaError('s', 'missing: the link carries no state');
  const bytes = await inflate(fromBase64Url(s), MAX_BODY);
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new SchemaError('s', 'not valid JSON after decompression (the link is damaged)');
  }
  const state = checkBody(body);
  state.hide = hide;
  return { ok: true, state, hide, warnings };
}
