// The Merge tab. State is two things:
//   - `yamlText`, the recipe (mergekit YAML) that a merge runs, and `tree`, the same recipe as the
//     JSON tree the engine's YAML parser returns. The form reads and writes `tree` (then `yamlText`
//     is regenerated); the YAML view writes `yamlText` (then `tree` is re-parsed by the engine).
//   - `modelFiles`, model name (as used in the recipe) → that model's files by relative path.
//   - `modelSources`, model name → where its files come from (local files, the bundled demo, or a
//     Hugging Face Hub repo + revision), and `hubState`, a hub model's config + safetensors headers
//     once read (hub.ts). Hub weights are downloaded only on Merge (cache.ts).
// Every string that comes from a file, a folder or the engine reaches the page through
// `textContent` / `value`, never through HTML.

import { checkRecipe, defaultValue, engineVersion, loadEngine, methods as engineMethods, planMerge, type MethodInfo, type ParamSpec, type PlanResult } from './engine';
import { checkRepoId, checkRevision, HubError, initialHubBase, loadHubModel, normalizeBase, planInput, type HubModel } from './hub';
import { cacheAvailable, cachedBlob, cacheUsage, clearCache, downloadToCache, CACHE_NAME } from './cache';
import { demoModels } from './demo';
import { formatBytes, fromDirectoryInput, fromDrop, fromFileInput, type ModelFileMap } from './files';
import { gpuStatus } from './gpu';
import { toYaml, type Json } from './yaml';
import { fitsZip, zipStore } from './zip';
import type { FromWorker, ToWorker } from './merge.worker';
import { outputChoices, pickOutput, type OutputTarget } from './output';
import { StatsPanel } from './stats';
import { initShare } from './share-panel';
import { setLastMerge } from './last-merge';

type Tree = { [key: string]: Json };

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<Record<string, string>> = {}, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) if (v !== undefined) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---------------------------------------------------------------- state

let methodList: MethodInfo[] = [];
let tree: Tree = { merge_method: 'linear', models: [], dtype: 'float32' };
let yamlText = toYaml(tree);
let recipeOk = false;
const modelFiles = new Map<string, ModelFileMap>();

/** Where a model's files come from. SHARE serialises this (share-panel.ts `hubSource`). */
export type ModelSource = { kind: 'local' } | { kind: 'bundled'; name: string } | { kind: 'hub'; repo: string; revision: string };
const modelSources = new Map<string, ModelSource>();
/** A hub model being read (config.json + safetensors headers), read, or failed. The same object
 * moves with a rename, so a read that finishes after a rename lands on the right card. */
type HubEntry = { status: 'loading' | 'ready' | 'error'; repo: string; revision: string; model?: HubModel; error?: string };
const hubState = new Map<string, HubEntry>();
/** Hub base URL (settings field; `?hub=` in the page URL; default https://huggingface.co). */
let hubBase = initialHubBase();
let view: 'form' | 'yaml' = 'form';

const isObj = (v: Json | undefined): v is { [key: string]: Json } => !!v && typeof v === 'object' && !Array.isArray(v);

/** Every model reference in the recipe, in order of appearance, without repeats. */
function modelRefs(t: Tree): string[] {
  const out: string[] = [];
  const add = (v: Json | undefined) => {
    if (typeof v === 'string' && v && !out.includes(v)) out.push(v);
  };
  add(t.base_model);
  if (Array.isArray(t.models)) for (const m of t.models) if (isObj(m)) add(m.model);
  if (Array.isArray(t.slices))
    for (const s of t.slices) if (isObj(s) && Array.isArray(s.sources)) for (const src of s.sources) if (isObj(src)) add(src.model);
  return out;
}

function currentMethod(): MethodInfo | undefined {
  return methodList.find((m) => m.name === tree.merge_method);
}

function modelsArray(): { [key: string]: Json }[] {
  if (!Array.isArray(tree.models)) tree.models = [];
  return tree.models as { [key: string]: Json }[];
}

// ---------------------------------------------------------------- recipe ⇄ YAML

function fromForm() {
  // Keep a tidy key order for the keys the form owns; anything else (slices, tokenizer_source, ...) follows.
  const order = ['merge_method', 'base_model', 'models', 'slices', 'parameters', 'dtype', 'out_dtype'];
  const t: Tree = {};
  for (const k of order) if (k in tree && tree[k] !== undefined) t[k] = tree[k];
  for (const [k, v] of Object.entries(tree)) if (!(k in t) && v !== undefined) t[k] = v;
  if (Array.isArray(t.models) && t.models.length === 0 && Array.isArray(t.slices)) delete t.models;
  tree = t;
  yamlText = toYaml(tree);
  $<HTMLTextAreaElement>('yaml-text').value = yamlText;
  validate();
  renderModels();
}

function fromYaml(text: string) {
  yamlText = text;
  const res = validate();
  if (res && isObj(res.tree as Json)) {
    tree = res.tree as Tree;
    renderForm();
    renderModels();
  }
}

function validate() {
  const status = $('recipe-status');
  status.className = 'recipe-status';
  if (!methodList.length) return null;
  const res = checkRecipe(yamlText);
  recipeOk = res.ok;
  if (!res.ok && !res.line && !modelsArray().length && !Array.isArray(tree.slices)) {
    // Nothing to merge yet: an empty recipe is the starting point, not a mistake.
    status.textContent = 'Add models (or load the demo) to build a recipe.';
    updateMergeButton();
    return res;
  }
  if (res.ok) {
    status.textContent = 'Recipe OK.';
    status.classList.add('ok');
  } else {
    const where = res.line ? `YAML error at line ${res.line}, column ${res.column}: ` : 'Recipe error: ';
    status.textContent = where + (res.message ?? 'invalid recipe');
    status.classList.add('error');
  }
  updateMergeButton();
  return res;
}

// ---------------------------------------------------------------- models

function uniqueName(base: string): string {
  const clean = base.trim().replace(/\s+/g, '-') || 'model';
  const taken = new Set([...modelRefs(tree), ...modelFiles.keys()]);
  if (!taken.has(clean)) return clean;
  for (let i = 2; ; i++) if (!taken.has(`${clean}-${i}`)) return `${clean}-${i}`;
}

function addModel(name: string, files?: ModelFileMap) {
  if (Array.isArray(tree.slices)) {
    // Slices name their sources themselves: a new model is added as a source in the YAML view.
    if (!files) {
      setRunStatus('info', 'This recipe uses slices: add the new model as a source of a slice in the YAML view; its card appears then.');
      return;
    }
  } else {
    modelsArray().push({ model: name });
  }
  if (files) modelFiles.set(name, files);
  fromForm();
  renderForm();
}

function removeModel(name: string) {
  if (Array.isArray(tree.models)) tree.models = tree.models.filter((m) => !(isObj(m) && m.model === name));
  if (tree.base_model === name) delete tree.base_model;
  modelFiles.delete(name);
  modelSources.delete(name);
  hubState.delete(name);
  fromForm();
  renderForm();
}

function renameModel(from: string, to: string): string | null {
  to = to.trim();
  if (!to) return 'a model needs a name';
  if (to === from) return null;
  if (modelRefs(tree).includes(to) || modelFiles.has(to)) return `another model is already called ${to}`;
  const fix = (o: Json | undefined) => {
    if (isObj(o) && o.model === from) o.model = to;
  };
  if (Array.isArray(tree.models)) tree.models.forEach(fix);
  if (tree.base_model === from) tree.base_model = to;
  if (Array.isArray(tree.slices)) for (const s of tree.slices) if (isObj(s) && Array.isArray(s.sources)) s.sources.forEach(fix);
  const f = modelFiles.get(from);
  if (f) {
    modelFiles.delete(from);
    modelFiles.set(to, f);
  }
  for (const m of [modelSources, hubState] as Map<string, unknown>[]) {
    if (m.has(from)) {
      m.set(to, m.get(from));
      m.delete(from);
    }
  }
  fromForm();
  renderForm();
  return null;
}

/** Whether a model's files look complete enough to try (the engine has the final word). */
function filesNote(files: ModelFileMap | undefined): { text: string; bad: boolean } {
  if (!files || files.size === 0) return { text: 'no files yet', bad: true };
  const names = [...files.keys()];
  const st = names.filter((n) => n.endsWith('.safetensors'));
  if (!st.length) return { text: 'no .safetensors file among these files', bad: true };
  if (!names.some((n) => n === 'config.json' || n.endsWith('/config.json'))) return { text: 'no config.json (the output will have none)', bad: false };
  return { text: '', bad: false };
}

function renderModels() {
  const list = $('model-list');
  list.replaceChildren();
  const names = modelRefs(tree);
  for (const name of modelFiles.keys()) if (!names.includes(name)) names.push(name);
  if (!names.length) {
    list.append(el('p', { class: 'hint empty' }, 'No models yet: load the demo, add a model, or drop a folder above.'));
  }
  names.forEach((name, idx) => {
    const card = el('div', { class: 'model-card', 'data-index': String(idx) });
    card.dataset.model = name;
    const head = el('div', { class: 'model-head' });
    const nameInput = el('input', { type: 'text', class: 'model-name', 'aria-label': `name of model ${idx + 1}` });
    nameInput.value = name;
    const nameErr = el('span', { class: 'field-error' });
    nameInput.addEventListener('change', () => {
      const err = renameModel(name, nameInput.value);
      if (err) {
        nameErr.textContent = err;
        nameInput.value = name;
      }
    });
    head.append(nameInput);
    if (tree.base_model === name) head.append(el('span', { class: 'badge' }, 'base'));
    const remove = el('button', { type: 'button', class: 'icon', title: 'Remove this model', 'aria-label': 'Remove this model' }, '×');
    remove.addEventListener('click', () => removeModel(name));
    head.append(remove, nameErr);
    card.append(head);
    const hub = hubState.get(name);
    if (hub && !modelFiles.get(name)?.size) {
      card.classList.add('hub');
      card.append(hubCardBody(name, hub));
      list.append(card);
      return;
    }

    const pick = el('div', { class: 'pickers' });
    const dirInput = el('input', { type: 'file', class: 'dir-input', 'aria-label': 'model folder' });
    dirInput.webkitdirectory = true;
    dirInput.multiple = true;
    const fileInput = el('input', { type: 'file', class: 'files-input', multiple: '', accept: '.safetensors,.json,.txt,.model,.yml,.yaml', 'aria-label': 'model files' });
    const dirLabel = el('label', { class: 'button secondary' }, 'Choose folder…');
    dirLabel.append(dirInput);
    const fileLabel = el('label', { class: 'button secondary' }, 'Choose files…');
    fileLabel.append(fileInput);
    dirInput.addEventListener('change', () => {
      if (!dirInput.files?.length) return;
      const { folder, files } = fromDirectoryInput(dirInput.files);
      setFiles(name, files, folder);
    });
    fileInput.addEventListener('change', () => {
      if (!fileInput.files?.length) return;
      const merged = new Map(modelFiles.get(name) ?? []);
      for (const [k, v] of fromFileInput(fileInput.files)) merged.set(k, v);
      setFiles(name, merged, null);
    });
    pick.append(dirLabel, fileLabel);
    if (modelFiles.get(name)?.size) {
      const clear = el('button', { type: 'button', class: 'link' }, 'clear files');
      clear.addEventListener('click', () => {
        modelFiles.delete(name);
        renderModels();
        updateMergeButton();
      });
      pick.append(clear);
    }
    card.append(pick);

    const files = modelFiles.get(name);
    const ul = el('ul', { class: 'file-list' });
    if (files)
      for (const [path, f] of [...files].sort(([a], [b]) => a.localeCompare(b))) {
        const li = el('li');
        li.append(el('span', { class: 'file-name' }, path), el('span', { class: 'file-size' }, formatBytes(f.size)));
        ul.append(li);
      }
    card.append(ul);
    const note = filesNote(files);
    if (note.text) card.append(el('p', { class: note.bad ? 'note bad' : 'note' }, note.text));

    card.addEventListener('dragover', (e) => {
      e.preventDefault();
      e.stopPropagation();
      card.classList.add('drag');
    });
    card.addEventListener('dragleave', () => card.classList.remove('drag'));
    card.addEventListener('drop', async (e) => {
      e.preventDefault();
      e.stopPropagation();
      card.classList.remove('drag');
      if (!e.dataTransfer) return;
      const groups = await fromDrop(e.dataTransfer);
      const all = new Map(modelFiles.get(name) ?? []);
      for (const g of groups) for (const [k, v] of g.files) all.set(k, v);
      setFiles(name, all, groups.length === 1 ? groups[0].name : null);
    });
    list.append(card);
  });
  updateMergeButton();
}

function setFiles(name: string, files: ModelFileMap, folder: string | null) {
  modelFiles.set(name, files);
  modelSources.set(name, { kind: 'local' });
  hubState.delete(name);
  // A model still called by its placeholder name takes the folder's name.
  if (folder && /^model-\d+$/.test(name) && !modelRefs(tree).includes(folder) && !modelFiles.has(folder)) {
    renameModel(name, folder);
  } else {
    renderModels();
  }
}

// ---------------------------------------------------------------- hub sources, the plan, downloads

/** The hub repo and revision of a model added from the hub (SHARE puts it in links). */
export function hubSource(name: string): { repo: string; revision: string } | null {
  const s = modelSources.get(name);
  return s?.kind === 'hub' ? { repo: s.repo, revision: s.revision } : null;
}

/** Where every model's files come from, for serialisers (SHARE). */
export function sourcesOfModels(): Map<string, ModelSource> {
  return new Map(modelSources);
}

/**
 * Add (or re-read) model `name` from the hub: config.json, the index if sharded, and only the
 * safetensors headers (Range requests). The weights are downloaded on Merge. Throws a HubError
 * whose message names the repo and the file; the card shows it too.
 */
export async function addHubModel(name: string, repo: string, revision = 'main'): Promise<void> {
  repo = repo.trim();
  revision = revision.trim() || 'main';
  const bad = checkRepoId(repo) ?? checkRevision(revision);
  if (bad) throw new HubError(bad);
  if (!modelRefs(tree).includes(name)) {
    if (Array.isArray(tree.slices)) throw new HubError('this recipe uses slices: name the model as a slice source in the YAML view first, then add it from the hub under that name');
    modelsArray().push({ model: name });
  }
  modelFiles.delete(name);
  modelSources.set(name, { kind: 'hub', repo, revision });
  const entry: HubEntry = { status: 'loading', repo, revision };
  hubState.set(name, entry);
  fromForm();
  renderForm();
  try {
    entry.model = await loadHubModel(hubBase, repo, revision);
    entry.status = 'ready';
  } catch (e) {
    entry.status = 'error';
    entry.error = e instanceof Error ? e.message : String(e);
    throw e instanceof HubError ? e : new HubError(entry.error);
  } finally {
    renderModels();
  }
}

/** A hub model's card body: repo@revision, what was read, or the error. */
function hubCardBody(name: string, h: HubEntry): HTMLElement {
  const box = el('div', { class: 'hub-source' });
  const line = el('p', { class: 'hub-line' });
  line.append(el('span', { class: 'badge hub' }, 'hub'), el('code', { class: 'hub-repo' }, `${h.repo}@${h.revision}`));
  if (h.model?.commit) line.append(el('span', { class: 'file-note hub-commit', title: h.model.commit }, `commit ${h.model.commit.slice(0, 12)}`));
  box.append(line);
  if (h.status === 'loading') box.append(el('p', { class: 'note hub-loading' }, 'reading config.json and the safetensors headers…'));
  if (h.status === 'error') {
    box.append(el('p', { class: 'note bad hub-error' }, h.error ?? 'failed'));
    const retry = el('button', { type: 'button', class: 'link' }, 'try again');
    retry.addEventListener('click', () => addHubModel(name, h.repo, h.revision).catch(() => undefined));
    box.append(retry);
  }
  if (h.model) {
    const ul = el('ul', { class: 'file-list' });
    for (const f of h.model.files) {
      const li = el('li');
      const what = f.path.endsWith('.safetensors') ? `header read (${formatBytes(f.prefix?.length ?? 0)})` : f.prefix ? 'read' : 'on merge';
      li.append(el('span', { class: 'file-name' }, f.path), el('span', { class: 'file-size' }, formatBytes(f.size)), el('span', { class: 'file-note' }, what));
      ul.append(li);
    }
    box.append(ul);
  }
  return box;
}

// The plan: made by the engine from headers only (crate/src/merge/preview.rs), shown before Merge.

/** First 8 + N bytes of a local safetensors file (N = its header length). */
const prefixes = new WeakMap<File, Promise<Uint8Array>>();
function filePrefix(f: File): Promise<Uint8Array> {
  let p = prefixes.get(f);
  if (!p) {
    p = (async () => {
      const head = new Uint8Array(await f.slice(0, 8).arrayBuffer());
      if (head.length < 8) return head;
      const n = Number(new DataView(head.buffer).getBigUint64(0, true));
      if (n > 100_000_000 || 8 + n > f.size) return head; // the engine says what is wrong
      return new Uint8Array(await f.slice(0, 8 + n).arrayBuffer());
    })();
    prefixes.set(f, p);
  }
  return p;
}

async function localPlanInput(name: string, files: ModelFileMap) {
  const out: { path: string; size: number; prefix?: Uint8Array }[] = [];
  const seen = new Set<string>();
  for (const [path, f] of files) {
    // The worker finds a file by its path or by its last component: plan with the same names.
    const base = path.replace(/.*\//, '');
    const key = seen.has(base) ? path : base;
    seen.add(key);
    let prefix: Uint8Array | undefined;
    if (base.endsWith('.safetensors')) prefix = await filePrefix(f);
    else if ((base === 'config.json' || base === 'model.safetensors.index.json') && f.size < 64 << 20) prefix = new Uint8Array(await f.arrayBuffer());
    out.push({ path: key, size: f.size, prefix });
  }
  return { name, files: out };
}

let planTimer = 0;
let planGen = 0;

function schedulePlan() {
  clearTimeout(planTimer);
  planTimer = window.setTimeout(() => void refreshPlan(), 150);
}

/** Models the merge reads: the recipe's, and a `tokenizer_source` model that is not one of them. */
function planModels(): string[] {
  const names = modelRefs(tree);
  const ts = tree.tokenizer_source;
  if (typeof ts === 'string' && ts !== 'base' && ts !== 'union' && !names.includes(ts)) names.push(ts);
  return names;
}

function planLine(label: string, id: string, value: number, text: string): HTMLElement {
  const s = el('span', { class: 'plan-item', id });
  s.dataset.value = String(value);
  s.append(el('strong', {}, text), document.createTextNode(` ${label}`));
  return s;
}

/**
 * Recompute the plan and show it; returns it (null when the recipe or a source is not ready).
 * A newer call supersedes this one (null) unless `own`: Merge needs its own answer.
 */
async function refreshPlan(own = false): Promise<PlanResult | null> {
  const gen = ++planGen;
  const summary = $('plan-summary');
  const list = $('plan-models');
  const box = $('plan');
  if (!summary || !list || !box) return null;
  const show = (state: string, text: string) => {
    box.dataset.state = state;
    summary.replaceChildren(text);
    list.replaceChildren();
  };
  if (!methodList.length) return null;
  if (!recipeOk) {
    show('waiting', 'The plan appears when the recipe is valid.');
    return null;
  }
  const names = planModels();
  const waiting = names.filter((n) => !modelFiles.get(n)?.size && hubState.get(n)?.status !== 'ready');
  if (waiting.length) {
    const loading = waiting.filter((n) => hubState.get(n)?.status === 'loading');
    show('waiting', loading.length ? `Reading ${loading.join(', ')} from the hub…` : `The plan appears when every model has files: waiting for ${waiting.join(', ')}.`);
    return null;
  }
  let inputs;
  try {
    inputs = await Promise.all(names.map((n) => (modelFiles.get(n)?.size ? localPlanInput(n, modelFiles.get(n)!) : planInput(n, hubState.get(n)!.model!))));
  } catch (e) {
    if (gen === planGen || own) show('error', `Could not read the models' headers: ${String(e)}`);
    return null;
  }
  if (gen !== planGen && !own) return null;
  const res = planMerge(yamlText, inputs, $<HTMLInputElement>('shard-input').value.trim() || undefined);
  if (!res.ok) {
    show('error', `Plan error: ${res.message}`);
    return res;
  }
  const p = res.plan;
  // Bytes still to download: hub files that are not in the cache yet.
  let total = 0, toFetch = 0;
  const rows: HTMLElement[] = [];
  for (const m of p.models) {
    const h = modelFiles.get(m.name)?.size ? undefined : hubState.get(m.name);
    const li = el('li', { class: 'plan-model' });
    li.dataset.model = m.name;
    li.append(el('strong', {}, m.name), document.createTextNode(' '));
    if (!h?.model) {
      li.append(document.createTextNode(`${modelSources.get(m.name)?.kind === 'bundled' ? 'bundled' : 'local'} · reads ${m.tensors_read} of ${m.tensors} tensors · nothing to download`));
      li.dataset.fetch = '0';
    } else {
      let missing = 0;
      for (const f of m.files) {
        const url = h.model.files.find((x) => x.path === f.file)?.url;
        if (!(url && cacheAvailable() && (await caches.open(CACHE_NAME).then((c) => c.match(url))))) missing += f.size;
      }
      if (gen !== planGen && !own) return null;
      total += m.fetch_bytes;
      toFetch += missing;
      li.dataset.fetch = String(m.fetch_bytes);
      li.append(
        el('code', {}, `${h.repo}@${h.revision}`),
        document.createTextNode(
          ` · reads ${m.tensors_read} of ${m.tensors} tensors · download ${formatBytes(m.fetch_bytes)}` +
            (missing < m.fetch_bytes ? ` (${formatBytes(m.fetch_bytes - missing)} already cached)` : '') +
            `: ${m.files.map((f) => `${f.file} ${formatBytes(f.size)}`).join(', ')}`,
        ),
      );
    }
    rows.push(li);
  }
  box.dataset.state = 'ok';
  summary.replaceChildren(
    planLine('tensors', 'plan-tensors', p.tensors, p.tensors.toLocaleString('en-US')),
    document.createTextNode(' · '),
    planLine('parameters', 'plan-params', p.parameters, p.parameters.toLocaleString('en-US')),
    document.createTextNode(' · '),
    planLine(`output (${p.output_files.join(', ')})`, 'plan-output', p.output_bytes, formatBytes(p.output_bytes)),
    document.createTextNode(' · '),
    planLine(total ? `to download${toFetch < total ? ` (of ${formatBytes(total)}; the rest is cached)` : ''}` : 'to download', 'plan-fetch', toFetch, formatBytes(toFetch)),
  );
  $('plan-fetch').dataset.total = String(total);
  list.replaceChildren(...rows);
  return res;
}

let downloadCtl: AbortController | null = null;

/**
 * Download the files the plan needs from the hub models into the cache (cached files are reused),
 * with progress (bytes, rate) and Cancel. Returns each hub model's files as `File`s for the worker,
 * or null after reporting an error or a cancel (the run is then finished).
 */
async function downloadHubFiles(): Promise<Map<string, Map<string, File>> | null> {
  const ctl = new AbortController();
  downloadCtl = ctl;
  const fail = (kind: 'error' | 'cancelled', text: string) => {
    downloadCtl = null;
    finishRun(kind, text);
    void refreshCacheInfo();
    return null;
  };
  $('progress-text').textContent = 'planning…';
  clearTimeout(planTimer);
  const res = await refreshPlan(true);
  if (ctl.signal.aborted) return fail('cancelled', 'Cancelled before any download.');
  if (!res) return fail('error', 'the plan could not be made: see the Plan above');
  if (!res.ok) return fail('error', res.message);
  const out = new Map<string, Map<string, File>>();
  const todo: { label: string; url: string; size: number; path: string; into: Map<string, File> }[] = [];
  for (const m of res.plan.models) {
    const h = hubState.get(m.name);
    if (!h?.model || modelFiles.get(m.name)?.size) continue;
    const into = new Map<string, File>();
    out.set(m.name, into);
    // Read during planning: config.json and the index are complete in memory.
    for (const f of h.model.files) if (f.prefix && !f.path.endsWith('.safetensors')) into.set(f.path, new File([f.prefix as Uint8Array<ArrayBuffer>], f.path));
    for (const need of m.files) {
      const hf = h.model.files.find((x) => x.path === need.file);
      if (!hf) return fail('error', `${h.repo}@${h.revision}: ${need.file} is needed but was not listed (internal error)`);
      const cached = await cachedBlob(hf.url, need.size);
      if (cached) into.set(need.file, new File([cached], need.file));
      else todo.push({ label: `${h.repo}@${h.revision}: ${need.file}`, url: hf.url, size: need.size, path: need.file, into });
    }
  }
  const total = todo.reduce((a, t) => a + t.size, 0);
  let done = 0, shown = 0;
  const t0 = performance.now();
  const bar = $<HTMLProgressElement>('progress');
  const show = (label: string) => {
    const s = (performance.now() - t0) / 1000;
    bar.max = 1;
    bar.value = total ? done / total : 1;
    $('progress-text').textContent = `downloading ${label} · ${formatBytes(done)} of ${formatBytes(total)} · ${s > 0.2 ? formatBytes(done / s) : '–'}/s`;
  };
  if (todo.length) setRunStatus('info', `Downloading ${todo.length} ${todo.length === 1 ? 'file' : 'files'} (${formatBytes(total)}) from the hub…`);
  try {
    for (const t of todo) {
      show(t.label);
      const blob = await downloadToCache(t.url, t.size, t.label, ctl.signal, (n) => {
        done += n;
        const now = performance.now();
        if (now - shown > 100) {
          shown = now;
          show(t.label);
        }
      });
      t.into.set(t.path, new File([blob], t.path));
    }
  } catch (e) {
    if (ctl.signal.aborted) return fail('cancelled', 'Download cancelled: nothing partial was kept in the cache.');
    return fail('error', e instanceof Error ? e.message : String(e));
  }
  downloadCtl = null;
  void refreshCacheInfo();
  $('progress-text').textContent = 'reading headers…';
  setRunStatus('info', 'Merging…');
  return out;
}

async function refreshCacheInfo() {
  const info = $('cache-info');
  if (!info) return;
  if (!cacheAvailable()) {
    info.textContent = 'Cache Storage is not available here (an insecure origin?): hub downloads are kept in memory only.';
    return;
  }
  const u = await cacheUsage();
  info.dataset.files = String(u.files);
  info.dataset.bytes = String(u.bytes);
  info.textContent =
    `Download cache (${CACHE_NAME}): ${u.files} ${u.files === 1 ? 'file' : 'files'}, ${formatBytes(u.bytes)}` +
    (u.usage !== undefined && u.quota ? ` · this site uses ${formatBytes(u.usage)} of ${formatBytes(u.quota)} available` : '');
}

function wireHub() {
  const form = $<HTMLFormElement>('hub-form');
  const status = $('hub-status');
  const setStatus = (kind: string, text: string) => {
    status.className = `hub-status ${kind}`;
    status.textContent = text;
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const repo = $<HTMLInputElement>('hub-repo').value.trim();
    const revision = $<HTMLInputElement>('hub-revision').value.trim() || 'main';
    const bad = checkRepoId(repo) ?? checkRevision(revision);
    if (bad) return setStatus('error', bad);
    const name = uniqueName(revision === 'main' ? repo : `${repo}@${revision}`);
    setStatus('info', `Reading ${repo}@${revision}…`);
    try {
      await addHubModel(name, repo, revision);
      setStatus('ok', `Added ${name}: config.json and the safetensors headers read; the weights download on Merge.`);
    } catch (err) {
      setStatus('error', err instanceof Error ? err.message : String(err));
    }
  });
  const baseInput = $<HTMLInputElement>('hub-base');
  baseInput.value = hubBase;
  baseInput.addEventListener('change', () => {
    const v = normalizeBase(baseInput.value);
    if (!v) {
      setStatus('error', `${baseInput.value} is not an http(s) URL: the hub URL stays ${hubBase}`);
      baseInput.value = hubBase;
      return;
    }
    hubBase = v;
    baseInput.value = v;
    try {
      localStorage.setItem('crucible.hub', v);
    } catch {
      // not saved: the setting lasts for this page
    }
    setStatus('info', `Hub URL: ${v} (for models added from now on).`);
  });
  $('cache-clear-btn').addEventListener('click', async () => {
    await clearCache();
    await refreshCacheInfo();
    schedulePlan();
  });
  $('shard-input').addEventListener('input', schedulePlan);
  void refreshCacheInfo();
}

// ---------------------------------------------------------------- form

function renderMethodSelect() {
  const sel = $<HTMLSelectElement>('method-select');
  sel.replaceChildren();
  for (const m of methodList) {
    const o = el('option', { value: m.name }, m.name);
    sel.append(o);
  }
  sel.addEventListener('change', () => {
    const m = methodList.find((x) => x.name === sel.value);
    if (!m) return;
    tree.merge_method = m.name;
    // Keep the values the new method also takes; drop the others.
    const keepGlobal = new Set(m.params.filter((p) => !p.per_model).map((p) => p.name));
    const keepModel = new Set(m.params.filter((p) => p.per_model).map((p) => p.name));
    if (isObj(tree.parameters)) {
      for (const k of Object.keys(tree.parameters)) if (!keepGlobal.has(k) && !keepModel.has(k)) delete tree.parameters[k];
      if (!Object.keys(tree.parameters).length) delete tree.parameters;
    }
    for (const entry of modelsArray()) {
      if (isObj(entry.parameters)) {
        for (const k of Object.keys(entry.parameters)) if (!keepModel.has(k)) delete entry.parameters[k];
        if (!Object.keys(entry.parameters).length) delete entry.parameters;
      }
    }
    if (m.base === 'ignored') delete tree.base_model;
    fromForm();
    renderForm();
  });
}

/** Text typed in a parameter field → a YAML value: a number, a list (gradient, JSON syntax), or the text itself. */
function parseParam(text: string): Json | undefined {
  const t = text.trim();
  if (t === '') return undefined;
  if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t)) return Number(t);
  if (t === 'true' || t === 'false') return t === 'true';
  if (t.startsWith('[') || t.startsWith('{')) {
    try {
      return JSON.parse(t) as Json;
    } catch {
      return t;
    }
  }
  return t;
}

function showParam(v: Json | undefined): string {
  if (v === undefined || v === null) return '';
  if (Array.isArray(v) && v.every((x) => x === null || typeof x !== 'object')) return '[' + v.map((x) => JSON.stringify(x)).join(', ') + ']';
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

function paramField(spec: ParamSpec, get: () => Json | undefined, set: (v: Json | undefined) => void, label: string): HTMLElement {
  const wrap = el('div', { class: 'param' });
  wrap.dataset.param = spec.name;
  const id = `p-${label}-${spec.name}`.replace(/[^A-Za-z0-9_-]/g, '_');
  const lab = el('label', { for: id }, spec.name + (spec.required ? ' *' : ''));
  lab.title = spec.help;
  wrap.append(lab);
  const dflt = defaultValue(spec.default);
  const cur = get();
  if (spec.kind === 'bool' && (cur === undefined || typeof cur === 'boolean')) {
    const sel = el('select', { id });
    sel.append(el('option', { value: '' }, dflt === undefined ? '(unset)' : `(default: ${dflt})`), el('option', { value: 'true' }, 'true'), el('option', { value: 'false' }, 'false'));
    sel.value = cur === undefined ? '' : String(cur);
    sel.addEventListener('change', () => {
      set(sel.value === '' ? undefined : sel.value === 'true');
      fromForm();
    });
    wrap.append(sel);
  } else {
    const inp = el('input', { id, type: 'text', class: 'num', spellcheck: 'false' });
    inp.value = showParam(cur);
    inp.placeholder = dflt !== undefined ? `default ${dflt}` : spec.required ? 'required' : '';
    if (spec.required && cur === undefined) wrap.classList.add('missing');
    inp.addEventListener('input', () => {
      set(parseParam(inp.value));
      wrap.classList.toggle('missing', spec.required && inp.value.trim() === '');
      fromForm();
    });
    wrap.append(inp);
  }
  if (spec.help) wrap.append(el('span', { class: 'param-help' }, spec.help));
  return wrap;
}

function renderForm() {
  const m = currentMethod();
  const sel = $<HTMLSelectElement>('method-select');
  sel.value = typeof tree.merge_method === 'string' ? tree.merge_method : '';
  $('method-help').textContent = m ? m.help : `Unknown method ${String(tree.merge_method)}: pick one from the list.`;

  // Base model.
  const baseSel = $<HTMLSelectElement>('base-select');
  baseSel.replaceChildren(el('option', { value: '' }, '(none)'));
  for (const n of modelRefs(tree)) baseSel.append(el('option', { value: n }, n));
  baseSel.value = typeof tree.base_model === 'string' ? tree.base_model : '';
  baseSel.disabled = m?.base === 'ignored';
  $('base-note').textContent = !m ? '' : m.base === 'required' ? 'required by this method' : m.base === 'optional' ? 'optional' : 'not used by this method';

  $<HTMLSelectElement>('dtype-select').value = typeof tree.dtype === 'string' ? tree.dtype : '';
  $<HTMLSelectElement>('out-dtype-select').value = typeof tree.out_dtype === 'string' ? tree.out_dtype : '';

  // Global parameters.
  const g = $('global-params');
  g.replaceChildren();
  const globalSpecs = m?.params.filter((p) => !p.per_model) ?? [];
  if (!globalSpecs.length) g.append(el('p', { class: 'hint' }, 'none'));
  for (const spec of globalSpecs) {
    g.append(
      paramField(
        spec,
        () => (isObj(tree.parameters) ? tree.parameters[spec.name] : undefined),
        (v) => {
          if (!isObj(tree.parameters)) tree.parameters = {};
          const p = tree.parameters as { [k: string]: Json };
          if (v === undefined) delete p[spec.name];
          else p[spec.name] = v;
          if (!Object.keys(p).length) delete tree.parameters;
        },
        'global',
      ),
    );
  }

  // Per-model parameters.
  const pm = $('model-params');
  pm.replaceChildren();
  const modelSpecs = m?.params.filter((p) => p.per_model) ?? [];
  const note = $('form-note');
  note.textContent = '';
  if (Array.isArray(tree.slices)) {
    pm.append(el('p', { class: 'hint' }, 'This recipe uses slices: edit its sources and their parameters in the YAML view.'));
  } else if (!modelSpecs.length) {
    pm.append(el('p', { class: 'hint' }, 'none'));
  } else {
    for (const entry of modelsArray()) {
      const name = typeof entry.model === 'string' ? entry.model : '?';
      const row = el('div', { class: 'model-params-row' });
      row.append(el('div', { class: 'model-params-name' }, name + (tree.base_model === name ? ' (base)' : '')));
      if (m && m.base !== 'ignored' && tree.base_model === name && !isObj(entry.parameters)) {
        // Methods with a base model compute relative to it: its own weight/density are unused.
        row.append(el('p', { class: 'hint' }, `the base model: ${m.name} does not use its per-model parameters`));
        pm.append(row);
        continue;
      }
      const fields = el('div', { class: 'params inline' });
      for (const spec of modelSpecs) {
        fields.append(
          paramField(
            spec,
            () => (isObj(entry.parameters) ? entry.parameters[spec.name] : undefined),
            (v) => {
              if (!isObj(entry.parameters)) entry.parameters = {};
              const p = entry.parameters as { [k: string]: Json };
              if (v === undefined) delete p[spec.name];
              else p[spec.name] = v;
              if (!Object.keys(p).length) delete entry.parameters;
            },
            name,
          ),
        );
      }
      row.append(fields);
      pm.append(row);
    }
    if (!modelsArray().length) pm.append(el('p', { class: 'hint' }, 'Add models to set their parameters.'));
  }
  if (m && !Array.isArray(tree.slices)) {
    // With a base model the bounds count the other models; otherwise every input.
    const n = modelsArray().filter((e) => m.base === 'ignored' || e.model !== tree.base_model).length;
    const models = (k: number) => `${k} ${k === 1 ? 'model' : 'models'}`;
    const others = m.base === 'ignored' ? '' : ' besides the base';
    if (n < m.min_models) note.textContent = `${m.name} needs at least ${models(m.min_models)}${others}.`;
    else if (m.max_models !== null && n > m.max_models) note.textContent = `${m.name} takes at most ${models(m.max_models)}${others}.`;
  }
}

function wireForm() {
  $<HTMLSelectElement>('base-select').addEventListener('change', (e) => {
    const v = (e.target as HTMLSelectElement).value;
    if (v) tree.base_model = v;
    else delete tree.base_model;
    fromForm();
    renderForm();
  });
  const dtypeSel = (id: string, key: string) =>
    $<HTMLSelectElement>(id).addEventListener('change', (e) => {
      const v = (e.target as HTMLSelectElement).value;
      if (v) tree[key] = v;
      else delete tree[key];
      fromForm();
    });
  dtypeSel('dtype-select', 'dtype');
  dtypeSel('out-dtype-select', 'out_dtype');

  let timer = 0;
  const ta = $<HTMLTextAreaElement>('yaml-text');
  ta.addEventListener('input', () => {
    clearTimeout(timer);
    timer = window.setTimeout(() => fromYaml(ta.value), 200);
  });
  const setView = (v: 'form' | 'yaml') => {
    if (v === view) return;
    if (view === 'yaml') {
      clearTimeout(timer);
      fromYaml(ta.value);
    }
    view = v;
    $('recipe-form').hidden = v !== 'form';
    $('recipe-yaml').hidden = v !== 'yaml';
    for (const [id, on] of [['view-form', v === 'form'], ['view-yaml', v === 'yaml']] as const) {
      $(id).classList.toggle('active', on);
      $(id).setAttribute('aria-pressed', String(on));
    }
  };
  $('view-form').addEventListener('click', () => setView('form'));
  $('view-yaml').addEventListener('click', () => setView('yaml'));
}

// ---------------------------------------------------------------- running

let worker: Worker | null = null;
let running = false;
let resultUrls: string[] = [];

function newWorker(): Worker {
  const w = new Worker(new URL('./merge.worker.ts', import.meta.url), { type: 'module', name: 'crucible-merge' });
  w.addEventListener('message', (e: MessageEvent<FromWorker>) => onWorkerMessage(e.data));
  w.addEventListener('error', (e) => finishRun('error', `the merge worker failed: ${e.message || 'unknown error'}`));
  return w;
}

function missingFiles(): string[] {
  return modelRefs(tree).filter((n) => !modelFiles.get(n)?.size && hubState.get(n)?.status !== 'ready');
}

function updateMergeButton() {
  const btn = $<HTMLButtonElement>('merge-btn');
  btn.disabled = running || !recipeOk || !methodList.length;
  const missing = missingFiles();
  btn.title = !recipeOk ? 'fix the recipe first' : missing.length ? `add files for: ${missing.join(', ')}` : '';
  schedulePlan();
}

// "What the merge did" (web/src/stats.ts): a panel after the results, fed by the worker.
let statsPanel: StatsPanel | null = null;
function stats(): StatsPanel {
  if (!statsPanel) {
    const box = document.createElement('div');
    box.id = 'stats';
    $('results').after(box);
    statsPanel = new StatsPanel(box);
  }
  return statsPanel;
}

function clearResults() {
  for (const u of resultUrls) URL.revokeObjectURL(u);
  resultUrls = [];
  $('results').hidden = true;
  $('result-files').replaceChildren();
}

function setRunStatus(kind: 'info' | 'ok' | 'error' | 'cancelled', text: string) {
  const s = $('run-status');
  s.className = `run-status ${kind}`;
  s.textContent = text;
}

async function startMerge() {
  if (running) return;
  clearResults();
  stats().reset();
  const missing = missingFiles();
  if (missing.length) {
    setRunStatus('error', `Add files for ${missing.length > 1 ? 'models' : 'model'} ${missing.join(', ')} first.`);
    return;
  }
  // Output target first: a folder picker needs the click's user activation (output.ts).
  let output: OutputTarget | null;
  try {
    output = await pickOutput(($<HTMLSelectElement>('output-select').value || 'memory') as OutputTarget['kind']);
  } catch (e) {
    setRunStatus('error', `Could not open the output folder: ${String(e)}`);
    return;
  }
  if (!output) {
    setRunStatus('info', 'No folder chosen: nothing was merged.');
    return;
  }
  const seed = $<HTMLInputElement>('seed-input').value.trim() || '0';
  const files = new Map<string, Map<string, File>>();
  for (const n of modelRefs(tree)) if (modelFiles.get(n)?.size) files.set(n, modelFiles.get(n)!);
  worker ??= newWorker();
  running = true;
  $<HTMLButtonElement>('cancel-btn').disabled = false;
  updateMergeButton();
  if ([...modelRefs(tree), ...hubState.keys()].some((n) => !files.has(n) && hubState.get(n)?.status === 'ready')) {
    // Hub models: download the files the plan needs into the cache first (cancellable).
    const got = await downloadHubFiles();
    if (!got) return;
    for (const [n, f] of got) files.set(n, f);
  }
  const bar = $<HTMLProgressElement>('progress');
  bar.removeAttribute('value'); // indeterminate until the first tensor
  $('progress-text').textContent = 'reading headers…';
  setRunStatus('info', 'Merging…');
  const shard = $<HTMLInputElement>('shard-input').value.trim();
  const msg: ToWorker = { type: 'merge', yaml: yamlText, files, seed, outShardSize: shard || undefined, output };
  worker.postMessage(msg);
}

function onWorkerMessage(m: FromWorker) {
  if (m.type === 'ready' || !running) return;
  if (m.type === 'progress') {
    const bar = $<HTMLProgressElement>('progress');
    bar.max = 1;
    bar.value = m.total_bytes > 0 ? m.done_bytes / m.total_bytes : m.total_tensors > 0 ? m.done_tensors / m.total_tensors : 0;
    $('progress-text').textContent = `${m.done_tensors} / ${m.total_tensors} tensors · ${formatBytes(m.done_bytes)} of ${formatBytes(m.total_bytes)} · ${m.tensor}`;
    stats().add(m.stats);
  } else if (m.type === 'cancelled') {
    cancelDone(m.removed);
  } else if (m.type === 'done') {
    const r = m.report;
    const where = m.output === 'directory' ? ' Saved in the chosen folder.' : m.output === 'opfs' ? " Stored in the browser's private storage: download the files below." : '';
    finishRun('ok', `Done in ${(m.ms / 1000).toFixed(2)} s: ${r.tensors} tensors, ${r.parameters.toLocaleString('en-US')} parameters, ${formatBytes(r.bytes_written)} written.${where}`);
    showResults(m.files);
    stats().finish(m.report.stats, m.report.stats_csv);
    setLastMerge(m.files); // the Generate tab can run it (last-merge.ts)
  } else if (m.type === 'error') {
    if (m.fatal) {
      worker?.terminate();
      worker = newWorker();
    }
    finishRun('error', m.message);
  }
}

function finishRun(kind: 'ok' | 'error' | 'cancelled', text: string) {
  if (cancelTimer !== null) clearTimeout(cancelTimer);
  cancelTimer = null;
  running = false;
  $<HTMLButtonElement>('cancel-btn').disabled = true;
  const bar = $<HTMLProgressElement>('progress');
  if (kind === 'ok') bar.value = 1;
  else bar.value = 0;
  if (kind !== 'ok') $('progress-text').textContent = '';
  setRunStatus(kind, kind === 'error' ? `Merge failed: ${text}` : text);
  updateMergeButton();
}

function cancelMerge() {
  if (!running) return;
  if (downloadCtl) {
    downloadCtl.abort(); // downloadHubFiles reports the cancel
    return;
  }
  // The worker stops between two steps, aborts its open files and removes what it created
  // (merge.worker.ts); if it does not answer (a long step), it is terminated.
  if (cancelTimer !== null) return;
  setRunStatus('info', 'Cancelling…');
  worker?.postMessage({ type: 'cancel' } satisfies ToWorker);
  cancelTimer = setTimeout(() => {
    worker?.terminate();
    worker = newWorker();
    cancelDone([]);
  }, 10_000);
}

let cancelTimer: ReturnType<typeof setTimeout> | null = null;

function cancelDone(removed: string[]) {
  if (cancelTimer !== null) clearTimeout(cancelTimer);
  cancelTimer = null;
  clearResults();
  stats().reset();
  finishRun('cancelled', `Merge cancelled: nothing was written${removed.length ? ` (${removed.length} unfinished files removed)` : ''}.`);
}

function fillOutputSelect() {
  const sel = $<HTMLSelectElement>('output-select');
  const hint = $('output-hint');
  const choices = outputChoices();
  sel.replaceChildren(...choices.map((c) => {
    const o = document.createElement('option');
    o.value = c.value;
    o.textContent = c.label;
    return o;
  }));
  const show = () => {
    hint.textContent = choices.find((c) => c.value === sel.value)?.hint ?? '';
  };
  sel.addEventListener('change', show);
  show();
}

function download(name: string, blob: Blob) {
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function showResults(files: { name: string; blob: Blob }[]) {
  const ul = $('result-files');
  ul.replaceChildren();
  for (const f of files) {
    const url = URL.createObjectURL(f.blob);
    resultUrls.push(url);
    const li = el('li');
    const a = el('a', { href: url, download: f.name.replace(/\//g, '_'), class: 'download' }, f.name);
    a.dataset.file = f.name;
    li.append(a, el('span', { class: 'file-size' }, formatBytes(f.blob.size)));
    ul.append(li);
  }
  const zipBtn = $<HTMLButtonElement>('zip-btn');
  const ok = fitsZip(files);
  zipBtn.disabled = !ok;
  zipBtn.title = ok ? '' : 'over 4 GiB: download the files one by one';
  zipBtn.onclick = async () => {
    zipBtn.disabled = true;
    try {
      download('merged-model.zip', await zipStore(files));
    } catch (e) {
      setRunStatus('error', String(e));
    } finally {
      zipBtn.disabled = false;
    }
  };
  $('results').hidden = false;
}

// ---------------------------------------------------------------- start-up

function loadDemo() {
  const { models, recipe } = demoModels();
  for (const n of [...modelFiles.keys()]) modelFiles.delete(n);
  for (const m of models) modelFiles.set(m.name, m.files);
  modelSources.clear();
  hubState.clear();
  for (const m of models) modelSources.set(m.name, { kind: 'bundled', name: m.name });
  tree = recipe as Tree;
  fromForm();
  renderForm();
  setRunStatus('info', 'Demo loaded: three tiny Llama-shaped models (a base and two fine-tunes of it). Press Merge.');
}

function wireGlobalDrop() {
  const zone = $('drop-zone');
  const section = $('models-section');
  section.addEventListener('dragover', (e) => {
    e.preventDefault();
    zone.classList.add('drag');
  });
  section.addEventListener('dragleave', (e) => {
    if (!section.contains(e.relatedTarget as Node)) zone.classList.remove('drag');
  });
  section.addEventListener('drop', async (e) => {
    e.preventDefault();
    zone.classList.remove('drag');
    if (!e.dataTransfer) return;
    for (const g of await fromDrop(e.dataTransfer)) {
      const st = [...g.files.keys()].find((k) => k.endsWith('.safetensors'));
      const name = uniqueName(g.name ?? (st ? st.replace(/\.safetensors$/, '').replace(/.*\//, '') : 'model'));
      addModel(name, g.files);
    }
  });
}

async function main() {
  gpuStatus().then((s) => {
    const pill = $('gpu-status');
    pill.textContent = s.text;
    pill.title = s.detail;
    pill.dataset.state = s.kind;
  });
  wireForm();
  wireGlobalDrop();
  renderModels();
  $('demo-btn').addEventListener('click', loadDemo);
  $('add-model-btn').addEventListener('click', () => addModel(uniqueName(`model-${modelRefs(tree).length + 1}`)));
  $('merge-btn').addEventListener('click', startMerge);
  $('cancel-btn').addEventListener('click', cancelMerge);
  fillOutputSelect();
  wireHub();
  $<HTMLTextAreaElement>('yaml-text').value = yamlText;

  const pill = $('engine-status');
  try {
    await loadEngine();
    methodList = engineMethods();
    pill.textContent = `engine: ready (${methodList.length} methods)`;
    pill.dataset.state = 'ready';
    $('version').textContent = engineVersion();
  } catch (e) {
    pill.textContent = 'engine: failed to load';
    pill.dataset.state = 'error';
    setRunStatus('error', `The engine (WebAssembly) did not load: ${String(e)}`);
    return;
  }
  renderMethodSelect();
  fromForm();
  renderForm();
  worker = newWorker(); // warm up: compile the engine in the worker before the first merge
  wireShare();
}

/** Share by URL (share-panel.ts): the tab's state in the URL fragment; a link opened here is applied. */
function wireShare() {
  void initShare({
    tree: () => tree,
    yaml: () => yamlText,
    models: () => {
      const names = modelRefs(tree);
      for (const n of modelFiles.keys()) if (!names.includes(n)) names.push(n);
      return names;
    },
    files: (name) => modelFiles.get(name),
    setYaml: (text) => {
      $<HTMLTextAreaElement>('yaml-text').value = text;
      fromYaml(text);
    },
    setFiles: (name, files, bundled) => {
      modelFiles.set(name, files);
      modelSources.set(name, bundled ? { kind: 'bundled', name: bundled } : { kind: 'local' });
      hubState.delete(name);
      renderModels();
    },
    hubSource,
    addHubModel,
  });
}

main();
