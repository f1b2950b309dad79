// The Share panel and links on the page: keeps the URL fragment equal to the Merge tab's state
// (share.ts schema, history.replaceState, debounced), applies a link when the page opens with one,
// asks the recipient for a link's local files (checked by sha256), hides controls for classroom
// flags, and copies the link or the mergekit YAML.
//
// A link is a stranger's input: it is decoded and validated by share.ts; everything from it
// reaches the DOM through textContent / value only; it never starts a download or a merge: bundled
// demo models load at once (no network), hub models wait for a click on "Read from the hub", local
// files wait for the recipient to pick them, and Merge is always the user's click.
//
// Classroom flags follow tensorflow/playground (src/state.ts: `<control>_hide=true` parameters).

import { demoModels } from './demo';
import { applyGenerateState, collectGenerateState } from './generate';
import { formatBytes } from './files';
import { sha256Blob } from './sha256';
import {
  checkGenerate,
  decodeFragment,
  encodeFragment,
  HIDE_FLAG_NAMES,
  HIDE_FLAGS,
  recipeModels,
  type DemoName,
  type GenerateShare,
  type HideFlag,
  type LocalFile,
  type Recipe,
  type ShareState,
  type Source,
} from './share';
import { toYaml, type Json } from './yaml';

/** What the Merge tab (main.ts) lets this panel read and set. */
export interface ShareHost {
  /** The recipe tree the form edits. */
  tree(): Recipe;
  /** The YAML text as the tab holds it. */
  yaml(): string;
  /** Every model the tab knows: the recipe's and those with files. */
  models(): string[];
  files(name: string): Map<string, File> | undefined;
  /** Replace the recipe with this YAML (as typed in the YAML view) and re-render. */
  setYaml(text: string): void;
  /** Give a model its files (`bundled`: the demo model they are) and re-render its card. */
  setFiles(name: string, files: Map<string, File>, bundled?: string): void;
  /** The hub repo and revision of a model added from the hub, if it was (hub.ts, helper HUB). */
  hubSource?(name: string): { repo: string; revision: string } | null;
  /** Add a hub model under `name` (reads config + headers; weights move only on Merge). */
  addHubModel?(name: string, repo: string, revision: string): Promise<void> | void;
}

/** Local files up to this size are hashed as soon as they are picked (for the URL); larger ones on "Copy link". */
const AUTO_HASH_LIMIT = 256 * 1024 * 1024;
const DEBOUNCE_MS = 400;

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T | null;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Record<string, string> = {}, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

let host: ShareHost;
/** Sources a link named that the tab does not have yet (local files not picked, hub models not read). */
const pending = new Map<string, Source>();
/** sha256 per File object: a file is read once. */
const hashes = new WeakMap<File, Promise<string>>();
/** `path:sha256` lines of each bundled demo model → its name: a model with those exact files is shared as the demo. */
const demoKeys = new Map<string, DemoName>();
/** Per pending local source: check the files the user gave its card directly (not through the link panel). */
const cardCheckers = new Map<string, (files: Map<string, File>) => Promise<void>>();
/** The Generate tab's controls as the page first drew them: a link carries them only when they differ. */
let generateDefaults = '';
let timer = 0;
let generation = 0;
/** While the page shows a link it could not open, the URL keeps it until the user changes something. */
let holdUrl = false;

function hashOf(f: File, onProgress?: (done: number, total: number) => void, signal?: AbortSignal): Promise<string> {
  let p = hashes.get(f);
  if (!p) {
    p = sha256Blob(f, onProgress, signal);
    hashes.set(f, p);
    p.catch(() => hashes.delete(f));
  }
  return p;
}

async function filesKey(files: Map<string, File>): Promise<string> {
  const lines = await Promise.all([...files].map(async ([path, f]) => `${path}:${await hashOf(f)}`));
  return lines.sort().join('\n');
}

async function demoOf(files: Map<string, File>): Promise<DemoName | null> {
  if (files.size !== 2 || [...files.values()].some((f) => f.size > 1 << 20)) return null;
  return demoKeys.get(await filesKey(files)) ?? null;
}

// ---------------------------------------------------------------- state → URL

function hideChecked(): HideFlag[] {
  return HIDE_FLAG_NAMES.filter((h) => ($<HTMLInputElement>(`hide-${h}`)?.checked ?? false));
}

function currentView(): 'form' | 'yaml' {
  return $('view-yaml')?.getAttribute('aria-pressed') === 'true' ? 'yaml' : 'form';
}

/**
 * The tab's state. Local files are hashed (cached); with `hashAll` false, files over
 * AUTO_HASH_LIMIT not hashed yet leave their model out (listed in `unhashed`).
 */
async function collect(
  hashAll: boolean,
  onProgress?: (file: string, done: number, total: number) => void,
  signal?: AbortSignal,
): Promise<{ state: ShareState; unhashed: string[]; generateNote: string }> {
  const sources: Source[] = [];
  const unhashed: string[] = [];
  for (const name of host.models()) {
    const hub = host.hubSource?.(name);
    if (hub) {
      sources.push({ name, kind: 'hub', repo: hub.repo, revision: hub.revision });
      continue;
    }
    const files = host.files(name);
    if (!files?.size) {
      const p = pending.get(name);
      if (p) sources.push(p);
      continue;
    }
    const demo = await demoOf(files);
    if (demo) {
      sources.push({ name, kind: 'demo', demo });
      continue;
    }
    if (!hashAll && [...files.values()].some((f) => f.size > AUTO_HASH_LIMIT && !hashes.has(f))) {
      unhashed.push(name);
      continue;
    }
    const list: LocalFile[] = [];
    for (const [path, f] of [...files].sort(([a], [b]) => a.localeCompare(b)))
      list.push({ path, size: f.size, sha256: await hashOf(f, (d, t) => onProgress?.(path, d, t), signal) });
    sources.push({ name, kind: 'local', files: list });
  }
  const gen = generateShare();
  const state: ShareState = {
    sources,
    recipe: host.tree(),
    yaml: host.yaml(),
    seed: $<HTMLInputElement>('seed-input')?.value.trim() || '0',
    shard: $<HTMLInputElement>('shard-input')?.value.trim() ?? '',
    view: currentView(),
    hide: hideChecked(),
  };
  if (gen.value) state.generate = gen.value;
  if (currentTab() === 'generate') state.tab = 'generate';
  return { state, unhashed, generateNote: gen.note };
}

function currentTab(): 'merge' | 'generate' {
  return $('tab-generate')?.getAttribute('aria-selected') === 'true' ? 'generate' : 'merge';
}

/** The Generate tab's controls for the link: absent when they are the defaults; left out (with a note) when not valid. */
function generateShare(): { value?: GenerateShare; note: string } {
  let raw: unknown;
  try {
    if (!$('gen-prompt')) return { note: '' };
    raw = JSON.parse(JSON.stringify(collectGenerateState()));
  } catch {
    return { note: '' };
  }
  if (JSON.stringify(raw) === generateDefaults) return { note: '' };
  try {
    return { value: checkGenerate(raw), note: '' };
  } catch (e) {
    return { note: ` The Generate tab's settings are left out: ${e instanceof Error ? e.message : String(e)}.` };
  }
}

/** Until then, the routine "the address bar holds…" line does not cover the answer to a click (copy). */
let actionUntil = 0;

function setShareStatus(kind: '' | 'ok' | 'error' | 'info', text: string, routine = false) {
  const s = $('share-status');
  if (!s) return;
  if (routine && kind !== 'error' && Date.now() < actionUntil) return;
  if (!routine) actionUntil = Date.now() + 10_000;
  s.className = `share-status ${kind}`.trim();
  s.textContent = text;
}

function urlFor(fragment: string): string {
  return `${location.origin}${location.pathname}${location.search}#${fragment}`;
}

/** Write the state into the URL (replaceState) and the link box. */
async function updateUrl() {
  const gen = ++generation;
  for (const [name, check] of cardCheckers) {
    const files = host.files(name);
    if (files?.size && pending.has(name)) await check(files);
  }
  let res;
  try {
    res = await collect(false, (file, done, total) => {
      if (gen === generation && done < total) setShareStatus('info', `Computing the sha256 of ${file} for the link: ${formatBytes(done)} of ${formatBytes(total)}…`, true);
    });
  } catch (e) {
    if (gen === generation) setShareStatus('error', `Could not read a file for the link: ${e instanceof Error ? e.message : String(e)}`, true);
    return;
  }
  if (gen !== generation) return;
  const enc = await encodeFragment(res.state);
  if (gen !== generation) return;
  if (!enc.ok) {
    setShareStatus('error', enc.message, true);
    return;
  }
  const linkBox = $<HTMLInputElement>('share-link');
  if (linkBox) linkBox.value = urlFor(enc.fragment);
  if (!holdUrl && location.hash.slice(1) !== enc.fragment) history.replaceState(history.state, '', urlFor(enc.fragment));
  setShareStatus(
    res.unhashed.length ? 'info' : '',
    res.unhashed.length
      ? `The link leaves out ${res.unhashed.join(', ')}: their files are large; press Copy link to compute their sha256.`
      : `The address bar holds this recipe (${enc.fragment.length} characters).${res.generateNote}`,
    true,
  );
}

export function scheduleShareUpdate() {
  clearTimeout(timer);
  timer = window.setTimeout(() => void updateUrl(), DEBOUNCE_MS);
}

async function copyText(text: string, fallback: HTMLInputElement | HTMLTextAreaElement): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    fallback.hidden = false;
    fallback.value = text;
    fallback.focus();
    fallback.select();
    return false;
  }
}

let copyAbort: AbortController | null = null;

async function copyLink() {
  copyAbort?.abort();
  const ac = new AbortController();
  copyAbort = ac;
  const btn = $<HTMLButtonElement>('copy-link-btn')!;
  btn.disabled = true;
  const cancel = $<HTMLButtonElement>('copy-cancel-btn');
  try {
    if (cancel) {
      cancel.style.display = ''; // (button CSS overrides the hidden attribute)
      cancel.onclick = () => ac.abort(new DOMException('cancelled', 'AbortError'));
    }
    const { state } = await collect(true, (file, done, total) => setShareStatus('info', `Computing the sha256 of ${file} for the link: ${formatBytes(done)} of ${formatBytes(total)}…`), ac.signal);
    const enc = await encodeFragment(state);
    if (!enc.ok) {
      setShareStatus('error', enc.message);
      return;
    }
    const url = urlFor(enc.fragment);
    holdUrl = false;
    history.replaceState(history.state, '', url);
    const box = $<HTMLInputElement>('share-link')!;
    box.value = url;
    const copied = await copyText(url, box);
    setShareStatus('ok', copied ? 'Link copied. Whoever opens it gets this recipe; nothing runs until they press Merge.' : 'Select the link above and copy it (the clipboard is not available here).');
  } catch (e) {
    setShareStatus(ac.signal.aborted ? 'info' : 'error', ac.signal.aborted ? 'Cancelled: the link was not copied.' : `Could not make the link: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    btn.disabled = false;
    if (cancel) cancel.style.display = 'none';
    if (copyAbort === ac) copyAbort = null;
  }
}

/** The recipe for `mergekit-yaml`: hub models named by their repo (`repo@revision`), others as the tab names them. */
function mergekitYaml(): string {
  const tree = host.tree();
  const rename = new Map<string, string>();
  for (const n of host.models()) {
    const hub = host.hubSource?.(n) ?? (pending.get(n)?.kind === 'hub' ? (pending.get(n) as { repo: string; revision: string }) : null);
    if (hub) rename.set(n, hub.revision === 'main' ? hub.repo : `${hub.repo}@${hub.revision}`);
  }
  if (!rename.size) return host.yaml();
  const map = (v: Json): Json => {
    if (Array.isArray(v)) return v.map(map);
    if (v && typeof v === 'object') {
      const o: { [k: string]: Json } = {};
      for (const [k, x] of Object.entries(v)) o[k] = (k === 'model' || k === 'base_model') && typeof x === 'string' && rename.has(x) ? rename.get(x)! : map(x);
      return o;
    }
    return v;
  };
  return toYaml(map(tree));
}

async function copyYaml() {
  const yaml = mergekitYaml();
  const ta = $<HTMLTextAreaElement>('share-yaml')!;
  const copied = await copyText(yaml, ta);
  setShareStatus(
    'ok',
    copied
      ? 'mergekit YAML copied: save it as recipe.yml and run `mergekit-yaml recipe.yml ./merged` (local models: put their folders next to it under these names).'
      : 'Select the YAML below and copy it (the clipboard is not available here).',
  );
}

// ---------------------------------------------------------------- classroom flags

/** The elements each flag hides. */
function hideTargets(flag: HideFlag): HTMLElement[] {
  const byId = (...ids: string[]) => ids.map((id) => $(id)).filter((e): e is HTMLElement => !!e);
  const row = (id: string) => ($(id)?.closest('.row') as HTMLElement | null) ?? null;
  const withHeading = (id: string) => {
    const e = $(id);
    const h = e?.previousElementSibling;
    return [e, h && h.tagName === 'H3' ? (h as HTMLElement) : null].filter((x): x is HTMLElement => !!x);
  };
  switch (flag) {
    case 'models':
      return byId('models-section');
    case 'demo':
      return byId('demo-btn');
    case 'add':
      return byId('add-model-btn', 'drop-zone');
    case 'hub': {
      const form = $('hub-form');
      const hint = form?.nextElementSibling;
      return [form, hint instanceof HTMLElement && hint.classList.contains('hint') ? hint : null, $('hub-settings')].filter((x): x is HTMLElement => !!x);
    }
    case 'method':
      return [row('method-select'), $('method-help')].filter((x): x is HTMLElement => !!x);
    case 'base':
      return [row('base-select')].filter((x): x is HTMLElement => !!x);
    case 'dtype':
      return [row('dtype-select')].filter((x): x is HTMLElement => !!x);
    case 'params':
      return [...withHeading('global-params'), ...withHeading('model-params')];
    case 'yaml':
      return [$('view-yaml')?.parentElement ?? null, $('recipe-yaml')].filter((x): x is HTMLElement => !!x);
    case 'seed':
      return [row('seed-input')].filter((x): x is HTMLElement => !!x);
    case 'shard':
      return [row('shard-input')].filter((x): x is HTMLElement => !!x);
    case 'share':
      return byId('share-section');
  }
}

function applyHide(flags: HideFlag[]) {
  if (flags.includes('yaml') && currentView() === 'yaml') $('view-form')?.click();
  for (const f of flags)
    for (const e of hideTargets(f)) {
      e.style.display = 'none';
      e.dataset.classroomHidden = f;
    }
  for (const f of HIDE_FLAG_NAMES) {
    const box = $<HTMLInputElement>(`hide-${f}`);
    if (box) box.checked = flags.includes(f);
  }
}

function renderHideBoxes() {
  const box = $('hide-flags');
  if (!box) return;
  box.replaceChildren(el('legend', {}, 'Classroom view: the copied link hides'));
  for (const f of HIDE_FLAG_NAMES) {
    const id = `hide-${f}`;
    const label = el('label', { class: 'hide-flag', for: id });
    const input = el('input', { type: 'checkbox', id });
    input.dataset.flag = f;
    label.append(input, el('code', {}, `${f}_hide`), document.createTextNode(' ' + HIDE_FLAGS[f]));
    box.append(label);
  }
}

// ---------------------------------------------------------------- a link → the tab

function setLinkMessage(kind: 'ok' | 'error' | 'info', lines: string[]) {
  const panel = $('link-panel');
  const msg = $('link-message');
  if (!panel || !msg) return;
  panel.hidden = false;
  msg.className = `link-message ${kind}`;
  msg.replaceChildren(...lines.map((l) => el('span', { class: 'line' }, l)));
}

function shortSha(s: string) {
  return `${s.slice(0, 12)}…${s.slice(-4)}`;
}

/** One pending local source: what the link expects, a picker, and the check of each picked file. */
function renderLocalNeed(src: Extract<Source, { kind: 'local' }>): HTMLElement {
  const box = el('div', { class: 'link-need' });
  box.dataset.model = src.name;
  const head = el('p', { class: 'need-head' });
  head.append(el('strong', {}, src.name), document.createTextNode(': this link expects these local files. Pick them: each is checked by its sha256.'));
  box.append(head);
  const matched = new Map<string, File>();
  const ul = el('ul', { class: 'need-files' });
  const rows = new Map<string, HTMLElement>();
  for (const f of src.files) {
    const li = el('li');
    li.dataset.path = f.path;
    li.append(el('span', { class: 'file-name' }, f.path), el('span', { class: 'file-size' }, `${formatBytes(f.size)} · sha256 ${shortSha(f.sha256)}`), el('span', { class: 'need-state' }, 'waiting'));
    li.title = `sha256 ${f.sha256}`;
    rows.set(f.path, li);
    ul.append(li);
  }
  box.append(ul);
  const input = el('input', { type: 'file', multiple: '', class: 'link-files-input', 'aria-label': `files for ${src.name}` });
  const fileLabel = el('label', { class: 'button secondary' }, 'Choose the files…');
  fileLabel.append(input);
  // Or the whole model folder: its files are matched by size and sha256 the same way.
  const dirInput = el('input', { type: 'file', multiple: '', class: 'link-dir-input', 'aria-label': `folder for ${src.name}` });
  dirInput.webkitdirectory = true;
  const dirLabel = el('label', { class: 'button secondary' }, 'Choose the folder…');
  dirLabel.append(dirInput);
  const label = el('div', { class: 'pickers' });
  label.append(fileLabel, dirLabel);
  const status = el('p', { class: 'need-status', role: 'status' });
  box.append(label, status);
  const say = (kind: 'ok' | 'error' | 'info', lines: string[]) => {
    status.className = `need-status ${kind}`;
    status.replaceChildren(...lines.map((l) => el('span', { class: 'line' }, l)));
  };
  const markRow = (path: string, file: File) => {
    const row = rows.get(path)!;
    row.classList.add('matched');
    row.querySelector('.need-state')!.textContent = file.name === path.split('/').pop() ? 'sha256 matches' : `sha256 matches (${file.name})`;
  };
  // Files given through the model's card instead: checked the same way, by path, size and sha256.
  let checked: Map<string, File> | null = null;
  cardCheckers.set(src.name, async (files) => {
    if (checked === files) return;
    checked = files;
    const errors: string[] = [];
    for (const f of src.files) {
      const file = files.get(f.path);
      if (!file) errors.push(`${f.path} is missing`);
      else if (file.size !== f.size) errors.push(`${f.path} has ${formatBytes(file.size)}, the link's has ${formatBytes(f.size)}`);
      else {
        const sha = await hashOf(file, (d, t) => say('info', [`Checking ${f.path}: ${formatBytes(d)} of ${formatBytes(t)}…`])).catch((e) => `unreadable (${String(e)})`);
        if (sha !== f.sha256) errors.push(`${f.path}'s sha256 is ${shortSha(sha)}, the link's is ${shortSha(f.sha256)}`);
        else markRow(f.path, file);
      }
    }
    if (errors.length) {
      say('error', [`The files given to ${src.name}'s card are not the ones this link expects: ${errors.join('; ')}.`]);
    } else {
      pending.delete(src.name);
      cardCheckers.delete(src.name);
      box.classList.add('done');
      label.style.display = 'none';
      say('ok', [`All ${src.files.length} files match: ${src.name} is ready.`]);
    }
  });
  const onPick = async (from: HTMLInputElement) => {
    let picked = Array.from(from.files ?? []);
    from.value = '';
    // A folder: only files of an expected size are candidates (the rest is not read at all).
    if (from === dirInput) picked = picked.filter((f) => src.files.some((e) => e.size === f.size && !matched.has(e.path)));
    const errors: string[] = [];
    for (const file of picked) {
      const open = src.files.filter((f) => !matched.has(f.path) && f.size === file.size);
      if (!open.length) {
        if (from !== dirInput) errors.push(`${file.name} (${formatBytes(file.size)}) is not a file this link expects: no expected file has that size.`);
        continue;
      }
      let sha: string;
      try {
        sha = await hashOf(file, (d, t) => say('info', [`Checking ${file.name}: ${formatBytes(d)} of ${formatBytes(t)}…`]));
      } catch (e) {
        errors.push(`${file.name} could not be read: ${e instanceof Error ? e.message : String(e)}`);
        continue;
      }
      const hit = open.find((f) => f.sha256 === sha) ?? null;
      if (!hit) {
        const exp = open.find((f) => f.path === file.name || f.path.endsWith('/' + file.name)) ?? open[0];
        errors.push(`${file.name} is not the file this link expects: its sha256 is ${shortSha(sha)}, the link's ${exp.path} has ${shortSha(exp.sha256)}.`);
        continue;
      }
      matched.set(hit.path, file);
      markRow(hit.path, file);
    }
    const left = src.files.filter((f) => !matched.has(f.path));
    if (!left.length) {
      pending.delete(src.name);
      cardCheckers.delete(src.name);
      host.setFiles(src.name, new Map(matched));
      box.classList.add('done');
      label.style.display = 'none';
      say('ok', [...errors, `All ${src.files.length} files match: ${src.name} is ready.`]);
      scheduleShareUpdate();
    } else {
      say(errors.length ? 'error' : 'info', [...errors, `Still needed: ${left.map((f) => f.path).join(', ')}.`]);
    }
  };
  input.addEventListener('change', () => void onPick(input));
  dirInput.addEventListener('change', () => void onPick(dirInput));
  return box;
}

/** The hub URL the page reads from now (main.ts keeps it in the hub settings field). */
function hubBaseNow(): string {
  return $<HTMLInputElement>('hub-base')?.value || 'https://huggingface.co';
}

function renderHubNeed(src: Extract<Source, { kind: 'hub' }>): HTMLElement {
  const box = el('div', { class: 'link-need' });
  box.dataset.model = src.name;
  const head = el('p', { class: 'need-head' });
  head.append(
    el('strong', {}, src.name),
    document.createTextNode(': from the Hugging Face Hub, '),
    el('code', {}, `${src.repo}@${src.revision}`),
    document.createTextNode('. Nothing is fetched until you ask: reading it fetches config.json and the safetensors headers only (the plan: tensors, parameters, bytes) from '),
    el('code', { class: 'hub-base-shown' }, hubBaseNow()),
    document.createTextNode('; the weights download on Merge.'),
  );
  box.append(head);
  if (new URLSearchParams(location.search).has('hub'))
    box.append(el('p', { class: 'note bad' }, 'This hub URL comes from the address of the link (?hub=…), not from your settings: read only if you trust it.'));
  const status = el('p', { class: 'need-status', role: 'status' });
  if (!host.addHubModel) {
    status.textContent = 'This build of the page cannot read hub models: add the model\'s files by hand in its card.';
    box.append(status);
    return box;
  }
  const btn = el('button', { type: 'button', class: 'hub-fetch-btn' }, 'Read it from the hub');
  btn.addEventListener('click', async () => {
    btn.disabled = true;
    status.className = 'need-status info';
    status.textContent = `Reading ${src.repo}@${src.revision} from ${hubBaseNow()}…`;
    try {
      await host.addHubModel!(src.name, src.repo, src.revision);
      pending.delete(src.name);
      box.classList.add('done');
      btn.style.display = 'none'; // (button CSS overrides the hidden attribute)
      status.className = 'need-status ok';
      status.textContent = `${src.repo}@${src.revision} added: see its plan in the model card.`;
      scheduleShareUpdate();
    } catch (e) {
      btn.disabled = false;
      status.className = 'need-status error';
      status.textContent = `Could not read ${src.repo}@${src.revision}: ${e instanceof Error ? e.message : String(e)}`;
    }
  });
  box.append(btn, status);
  return box;
}

function sameJson(a: unknown, b: unknown): boolean {
  const canon = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(canon) : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon((v as Record<string, unknown>)[k])])) : v;
  return JSON.stringify(canon(a)) === JSON.stringify(canon(b));
}

async function applyState(state: ShareState, warnings: string[]) {
  pending.clear();
  cardCheckers.clear();
  host.setYaml(state.yaml);
  const notes: string[] = [];
  if (!sameJson(host.tree(), state.recipe)) notes.push('The link\'s YAML and its recipe differ (the YAML was edited by hand after an error?): the YAML is shown as its author had it.');
  const seed = $<HTMLInputElement>('seed-input');
  if (seed) seed.value = state.seed;
  const shard = $<HTMLInputElement>('shard-input');
  if (shard) shard.value = state.shard;
  if (state.view === 'yaml' && !state.hide.includes('yaml')) $('view-yaml')?.click();
  else $('view-form')?.click();

  if (state.generate) {
    try {
      applyGenerateState(state.generate);
    } catch (e) {
      notes.push(`The Generate tab's settings could not be set: ${e instanceof Error ? e.message : String(e)}.`);
    }
  }
  if (state.tab === 'generate') $('tab-generate')?.click();

  // Bundled demo models: made here, no network.
  let demos: ReturnType<typeof demoModels> | null = null;
  const needs = $('link-needs');
  needs?.replaceChildren();
  for (const src of state.sources) {
    if (src.kind === 'demo') {
      demos ??= demoModels();
      const m = demos.models.find((d) => d.name === src.demo)!;
      host.setFiles(src.name, new Map(m.files), src.demo);
    } else {
      pending.set(src.name, src);
      needs?.append(src.kind === 'local' ? renderLocalNeed(src) : renderHubNeed(src));
    }
  }
  const named = recipeModels(state.recipe);
  const unsourced = named.filter((n) => !state.sources.some((s) => s.name === n));
  const method = typeof state.recipe.merge_method === 'string' ? state.recipe.merge_method : '?';
  const lines = [
    `Opened a shared recipe: ${method} over ${named.length} ${named.length === 1 ? 'model' : 'models'}. Nothing runs until you press Merge.`,
  ];
  const waiting = [...pending.values()];
  if (waiting.length) lines.push(`Needed before merging: ${waiting.map((s) => `${s.name} (${s.kind === 'local' ? 'your local files' : 'from the hub'})`).join(', ')} — see below.`);
  if (unsourced.length) lines.push(`The link does not say where ${unsourced.join(', ')} ${unsourced.length === 1 ? 'comes' : 'come'} from: add ${unsourced.length === 1 ? 'its' : 'their'} files in the model cards.`);
  lines.push(...notes, ...warnings.map((w) => `Note: ${w}.`));
  setLinkMessage('ok', lines);
}

async function openFragment(fragment: string) {
  const res = await decodeFragment(fragment);
  if (!res.ok) {
    holdUrl = true;
    setLinkMessage('error', [res.message, 'The page starts empty instead. Ask for a new link, or build the recipe here.']);
    return;
  }
  applyHide(res.hide);
  if (!res.state) {
    if (res.warnings.length) setLinkMessage('info', res.warnings.map((w) => `Note: ${w}.`));
    return;
  }
  await applyState(res.state, res.warnings);
}

// ---------------------------------------------------------------- start-up

/** Wire the Share panel, open the link the page was opened with (if any), then keep the URL current. */
export async function initShare(h: ShareHost) {
  host = h;
  renderHideBoxes();
  const cancel = $('copy-cancel-btn');
  if (cancel) cancel.style.display = 'none';
  $('copy-link-btn')?.addEventListener('click', () => void copyLink());
  $('copy-yaml-btn')?.addEventListener('click', () => void copyYaml());
  $('link-dismiss')?.addEventListener('click', () => {
    const p = $('link-panel');
    if (p) p.hidden = true;
  });

  try {
    if ($('gen-prompt')) generateDefaults = JSON.stringify(collectGenerateState());
  } catch {
    // no Generate tab
  }
  // The bundled demo models' file hashes (~40 KB each): models with these files are shared as the demo.
  try {
    for (const m of demoModels().models) demoKeys.set(await filesKey(m.files), m.name as DemoName);
  } catch {
    // no WebCrypto: demo models are shared as local files then
  }

  try {
    await openFragment(location.hash);
  } catch (e) {
    // A bug, not the link's fault (the link was validated): say so rather than fail silently.
    holdUrl = true;
    setLinkMessage('error', [`Could not open this link: ${e instanceof Error ? e.message : String(e)}`]);
  }

  // Any change in the tab → the URL, debounced. User edits release a URL held for a broken link.
  const userChange = (e: Event) => {
    if ((e.target as HTMLElement | null)?.id === 'share-link') return;
    holdUrl = false;
    scheduleShareUpdate();
  };
  document.addEventListener('input', userChange, true);
  document.addEventListener('change', userChange, true);
  document.addEventListener('click', (e) => {
    const b = (e.target as HTMLElement | null)?.closest('button');
    // The Share panel's own buttons change nothing in the state.
    if (b && !['copy-link-btn', 'copy-yaml-btn', 'copy-cancel-btn'].includes(b.id)) userChange(e);
  }, true);
  const obs = new MutationObserver(() => scheduleShareUpdate());
  for (const id of ['model-list', 'recipe-status']) {
    const t = $(id);
    if (t) obs.observe(t, { childList: true, subtree: true, characterData: true });
  }
  // A link pasted into this tab's address bar (only the fragment changes: no reload).
  // (replaceState never fires hashchange: this is always the user's doing.) The link opens in a
  // fresh page, as it would in a new tab: nothing of the current tab mixes into it.
  window.addEventListener('hashchange', () => location.reload());
  if (!holdUrl) scheduleShareUpdate();
}

