// The engine on the UI thread: only the quick, synchronous calls (the method list, checking a
// recipe). Merges run in `merge.worker.ts`.
import init, * as wasm from '../pkg/crucible.js';
import { wasmInitError } from './wasm_error';

export type BaseUse = 'required' | 'optional' | 'ignored';
export type ParamKind = 'float' | 'bool' | 'int';

export interface ParamSpec {
  name: string;
  per_model: boolean;
  kind: ParamKind;
  default: unknown;
  required: boolean;
  help: string;
}

export interface MethodInfo {
  name: string;
  base: BaseUse;
  min_models: number;
  max_models: number | null;
  params: ParamSpec[];
  help: string;
}

export interface RecipeCheck {
  ok: boolean;
  message?: string;
  line?: number | null;
  column?: number | null;
  tree: unknown;
}

/** A parameter default as a plain value (serde may give `"none"`, `{"float": 0.5}`, `0.5`, ...). */
export function defaultValue(d: unknown): number | boolean | undefined {
  if (typeof d === 'number' || typeof d === 'boolean') return d;
  if (d && typeof d === 'object') {
    const v = Object.values(d as Record<string, unknown>)[0];
    if (typeof v === 'number' || typeof v === 'boolean') return v;
  }
  return undefined;
}

let ready: Promise<void> | undefined;

export function loadEngine(): Promise<void> {
  const p = ready ?? init().then(() => undefined, (e: unknown) => Promise.reject(wasmInitError(e)));
  ready = p;
  return p;
}

export function methods(): MethodInfo[] {
  return JSON.parse(wasm.methods());
}

export function checkRecipe(yaml: string): RecipeCheck {
  return JSON.parse(wasm.parse_recipe(yaml));
}

export function engineVersion(): string {
  return wasm.version();
}

/** One file a model must supply in full for the merge (crate/src/merge/preview.rs `NeededFile`). */
export interface PlanFile {
  file: string;
  size: number;
  role: 'weights' | 'tokenizer';
}

/** The merge planned from headers only (crate/src/merge/preview.rs `PlanPreview`). */
export interface MergePlan {
  method: string;
  architecture: string;
  tensors: number;
  parameters: number;
  output_bytes: number;
  largest_tensor: number;
  num_hidden_layers: number;
  config_donor: string;
  tokenizer_donor: string;
  models: { name: string; tensors: number; tensors_read: number; files: PlanFile[]; fetch_bytes: number }[];
  output_files: string[];
}

export type PlanResult = { ok: true; plan: MergePlan } | { ok: false; message: string };

/** Plan `yaml` over models given as `{name, files: [{path, size, prefix?}]}` (headers only). */
export function planMerge(yaml: string, models: { name: string; files: { path: string; size: number; prefix?: Uint8Array }[] }[], outShardSize?: string): PlanResult {
  return JSON.parse(wasm.plan_merge(yaml, models, outShardSize));
}
