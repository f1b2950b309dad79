// The Merge tab. State is two things:
//   - `yamlText`, the recipe (mergekit YAML) that a merge runs, and `tree`, the same recipe as the
//     JSON tree the engine's YAML parser returns. The form reads and writes `tree` (then `yamlText`
//     is regenerated); the YAML view writes `yamlText` (then `tree` is re-parsed by the engine).
//   - `modelFiles`, model name (as used in the recipe) → that model's files by relative path.
// Every string that comes from a file, a folder or the engine reaches the page through
// `textContent` / `value`, never through HTML.

import { checkRecipe, defaultValue, engineVersion, loadEngine, methods as engineMethods, type MethodInfo, type ParamSpec } from './engine';
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
  // A model still called by its placeholder name takes the folder's name.
  if (folder && /^model-\d+$/.test(name) && !modelRefs(tree).includes(folder) && !modelFiles.has(folder)) {
    renameModel(name, folder);
  } else {
    renderModels();
  }
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
  return modelRefs(tree).filter((n) => !modelFiles.get(n)?.size);
}

function updateMergeButton() {
  const btn = $<HTMLButtonElement>('merge-btn');
  btn.disabled = running || !recipeOk || !methodList.length;
  const missing = missingFiles();
  btn.title = !recipeOk ? 'fix the recipe first' : missing.length ? `add files for: ${missing.join(', ')}` : '';
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
  for (const n of modelRefs(tree)) files.set(n, modelFiles.get(n)!);
  worker ??= newWorker();
  running = true;
  $<HTMLButtonElement>('cancel-btn').disabled = false;
  updateMergeButton();
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
    setFiles: (name, files) => {
      modelFiles.set(name, files);
      renderModels();
    },
  });
}

main();
