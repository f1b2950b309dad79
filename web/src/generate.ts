// The Generate tab: up to three models side by side, one prompt, the outputs streamed token by
// token with tokens/s, Stop, perplexity on a pasted text, the backend each model runs on, and for
// mixture-of-experts models a heat map of the experts each token used.
//
// Each model lives in its own Web Worker (generate.worker.ts → crate/src/wasm/generate.rs), so
// the models generate in parallel and the page never blocks. Everything that comes from a model,
// a file name or a tokenizer reaches the DOM through textContent (never HTML).
//
// Sources: a local GGUF file, a local Hugging Face folder, the merge just made, the bundled demo,
// or a Hub repo + revision (hub.ts: config.json and the safetensors headers first, the files on
// Load through Cache Storage; or a GGUF file of the repo). Every source passes the memory check of
// load-budget.ts (`checkLoad`) before the engine sees it.
//
// State for share-by-URL: `collectGenerateState()` / `applyGenerateState()` (the prompt, the
// sampling controls, max tokens, the perplexity text, and the models as bundled names, local
// files by name and size, or hub repos by repo + revision, read again only on a click).
import type { Backend, FromWorker, ModelInfo, ModelSourceMsg, Perplexity, SamplingOptions, TokenExperts, ToWorker } from './generate.worker';
import { getLastMerge, onLastMergeChange } from './last-merge';
import { checkLoad, describeEstimate, estimateLoad, fmtBytes as fmtMem, folderShape, ggufShape, ggufShapeFrom, safetensorsTensors, shapeFromConfig, type GpuLimits, type LoadEstimate, type ModelShape } from './load-budget';
import { fetchHubFiles, generateFiles, bytesToDownload, initialHubBase, loadHubGguf, loadHubModel, normalizeBase, checkRepoId, checkRevision, readHubPrefix, type HubFile, type HubModel } from './hub';
import './generate.css';
import demoConfigUrl from '../../tests/fixtures/moe/mixtral/config.json?url';
import demoWeightsUrl from '../../tests/fixtures/moe/mixtral/model.safetensors?url';
import demoTokenizerUrl from '../../tests/fixtures/moe/mixtral/tokenizer.json?url';

const MAX_MODELS = 3;

type SourceDesc =
  | { kind: 'local-gguf'; name: string; size: number }
  | { kind: 'local-folder'; name: string; size: number }
  | { kind: 'merge'; name: string }
  | { kind: 'bundled'; name: string }
  // gguf: a GGUF file of the repo, loaded instead of its safetensors
  | { kind: 'hub'; name: string; repo: string; revision: string; gguf?: string };

type Slot = {
  id: number;
  worker: Worker;
  source: SourceDesc;
  msg: ModelSourceMsg;
  quantize: string;
  backendChoice: 'auto' | 'cpu';
  name: string;
  info?: ModelInfo;
  /** the memory estimate made before loading (load-budget.ts), when the headers could be read */
  est: LoadEstimate | null;
  state: 'loading' | 'ready' | 'generating' | 'perplexity' | 'error';
  /** per token shown (prompt then generated): its piece and the experts it used (MoE) */
  tokens: { piece: string; prompt: boolean; experts: TokenExperts | null }[];
  el: {
    root: HTMLElement;
    name: HTMLElement;
    backend: HTMLElement;
    info: HTMLElement;
    status: HTMLElement;
    text: HTMLElement;
    stats: HTMLElement;
    ppl: HTMLElement;
    heat: HTMLCanvasElement;
    heatNote: HTMLElement;
    backendNote: HTMLElement;
  };
};

const slots: Slot[] = [];
let nextId = 1;

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} K`;
  return String(n);
}

/** The backend pill of a model: GPU with its adapter, or CPU with the reason. */
function showBackend(slot: Slot, b: Backend) {
  const pill = slot.el.backend;
  pill.dataset.backend = b.backend;
  slot.el.root.dataset.backend = b.backend;
  if (b.backend === 'gpu') {
    pill.textContent = 'GPU';
    pill.title = `WebGPU: ${b.adapter ?? 'adapter'}${b.moe_gpu ? `; ${b.moe_gpu}` : ''}`;
  } else {
    pill.textContent = 'CPU';
    pill.title = `CPU (WebAssembly): ${b.cpu_reason ?? 'chosen in the page'}`;
  }
  slot.el.backendNote.textContent = b.backend === 'gpu' ? `Runs on WebGPU (${b.adapter ?? 'adapter'}).${b.moe_gpu ? ` ${b.moe_gpu}.` : ''}` : `Runs on the CPU (WebAssembly)${b.cpu_reason ? `: ${b.cpu_reason}` : '.'}`;
}

// ---------------------------------------------------------------------------------------------
// Sampling controls

const NUM_FIELDS: { id: string; key: keyof SamplingOptions; label: string; def: number; step: string; min?: number; max?: number; help: string }[] = [
  { id: 'gen-temperature', key: 'temperature', label: 'Temperature', def: 1, step: '0.05', min: 0, help: '0 = greedy' },
  { id: 'gen-top-k', key: 'top_k', label: 'Top-k', def: 50, step: '1', min: 0, help: '0 = off' },
  { id: 'gen-top-p', key: 'top_p', label: 'Top-p', def: 1, step: '0.01', min: 0, max: 1, help: '1 = off' },
  { id: 'gen-min-p', key: 'min_p', label: 'Min-p', def: 0, step: '0.01', min: 0, max: 1, help: '0 = off' },
  { id: 'gen-repetition', key: 'repetition_penalty', label: 'Repetition penalty', def: 1, step: '0.05', min: 0, help: '1 = off' },
  { id: 'gen-presence', key: 'presence_penalty', label: 'Presence penalty', def: 0, step: '0.1', help: '0 = off' },
  { id: 'gen-frequency', key: 'frequency_penalty', label: 'Frequency penalty', def: 0, step: '0.1', help: '0 = off' },
  { id: 'gen-ngram', key: 'no_repeat_ngram_size', label: 'No-repeat n-gram', def: 0, step: '1', min: 0, help: '0 = off' },
  { id: 'gen-seed', key: 'seed', label: 'Seed', def: 0, step: '1', min: 0, help: 'same seed, same text' },
];

function readSampling(): { sampling: SamplingOptions; maxTokens: number; error?: string } {
  const sampling = {} as SamplingOptions;
  let error: string | undefined;
  for (const f of NUM_FIELDS) {
    const raw = $<HTMLInputElement>(f.id).value.trim();
    const v = Number(raw);
    if (raw === '' || !Number.isFinite(v)) error ??= `${f.label}: ${JSON.stringify(raw)} is not a number`;
    (sampling as Record<string, number>)[f.key] = v;
  }
  for (const k of ['top_k', 'no_repeat_ngram_size', 'seed'] as const) {
    if (!Number.isInteger(sampling[k]) || sampling[k] < 0) error ??= `${NUM_FIELDS.find((f) => f.key === k)!.label} must be a whole number ≥ 0`;
  }
  if ($<HTMLInputElement>('gen-greedy').checked) sampling.temperature = 0;
  const maxTokens = Number($<HTMLInputElement>('gen-max-tokens').value);
  if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > 4096) error ??= 'Max tokens must be a whole number from 1 to 4096';
  return { sampling, maxTokens, error };
}

// ---------------------------------------------------------------------------------------------
// Models

/** A new model slot; `est`: the load estimate made before (shown beside what the engine reports). */
function newSlot(source: SourceDesc, msg: ModelSourceMsg, est: LoadEstimate | null = null) {
  if (slots.length >= MAX_MODELS) {
    setStatus(`At most ${MAX_MODELS} models: remove one first.`, 'error');
    return;
  }
  const quantize = $<HTMLSelectElement>('gen-quantize').value;
  const backendChoice = $<HTMLSelectElement>('gen-backend').value === 'cpu' ? 'cpu' : 'auto';
  const id = nextId++;
  const root = el('section', 'gen-slot card');
  root.dataset.slot = String(id);
  const head = el('div', 'gen-slot-head');
  const name = el('h3', 'gen-name', source.name);
  const backend = el('span', 'pill gen-backend', '…');
  backend.title = 'loading';
  const remove = el('button', 'icon gen-remove', '×');
  remove.type = 'button';
  remove.title = 'Remove this model';
  remove.setAttribute('aria-label', 'Remove this model');
  head.append(name, backend, remove);
  const info = el('p', 'hint gen-info', '');
  const backendNote = el('p', 'hint gen-backend-note', '');
  const status = el('p', 'gen-status', 'Loading…');
  status.setAttribute('role', 'status');
  const text = el('pre', 'gen-text');
  text.setAttribute('aria-live', 'off');
  const stats = el('p', 'hint gen-stats', '');
  const ppl = el('p', 'gen-ppl', '');
  const heatNote = el('p', 'hint gen-heat-note', '');
  heatNote.hidden = true;
  const heat = el('canvas', 'gen-heat');
  heat.hidden = true;
  root.append(head, info, backendNote, status, text, stats, ppl, heatNote, heat);
  $('gen-slots').append(root);

  const slot: Slot = {
    id,
    worker: makeWorker(),
    source,
    msg,
    quantize,
    backendChoice,
    name: source.name,
    est,
    state: 'loading',
    tokens: [],
    el: { root, name, backend, info, status, text, stats, ppl, heat, heatNote, backendNote },
  };
  remove.addEventListener('click', () => removeSlot(slot));
  heat.addEventListener('mousemove', (e) => heatHover(slot, e));
  slots.push(slot);
  startWorker(slot);
  updateButtons();
  modelsChanged();
}

/** Tell the share link (share-panel.ts listens to `change` events) that the model list changed. */
function modelsChanged() {
  $('gen-slots').dispatchEvent(new Event('change', { bubbles: true }));
}

function makeWorker(): Worker {
  return new Worker(new URL('./generate.worker.ts', import.meta.url), { type: 'module' });
}

function startWorker(slot: Slot) {
  slot.state = 'loading';
  slot.el.root.dataset.state = 'loading';
  slot.el.status.textContent = 'Loading the model…';
  slot.el.status.className = 'gen-status';
  slot.worker.onmessage = (e: MessageEvent<FromWorker>) => onMessage(slot, e.data);
  slot.worker.onerror = (e) => {
    setSlotError(slot, `the worker failed: ${e.message || 'unknown error'}`);
  };
  const m: ToWorker = { type: 'load', source: slot.msg, quantize: slot.quantize || undefined, backend: slot.backendChoice };
  slot.worker.postMessage(m);
}

function removeSlot(slot: Slot) {
  slot.worker.terminate();
  slot.el.root.remove();
  slots.splice(slots.indexOf(slot), 1);
  updateButtons();
  modelsChanged();
}

function setSlotError(slot: Slot, message: string) {
  slot.state = 'error';
  slot.el.root.dataset.state = 'error';
  slot.el.status.textContent = message;
  slot.el.status.className = 'gen-status error';
  updateButtons();
}

function setReady(slot: Slot, message?: string) {
  slot.state = 'ready';
  slot.el.root.dataset.state = 'ready';
  if (message !== undefined) {
    slot.el.status.textContent = message;
    slot.el.status.className = 'gen-status ok';
  }
  updateButtons();
}

function describe(info: ModelInfo): string {
  const parts = [
    `${info.family}`,
    `${fmtCount(info.params)} parameters`,
    `${info.quantization || 'F32'} weights${info.quantized_on_load ? ` (quantized on load to ${info.quantized_on_load})` : ''}`,
    `${fmtMem(info.weight_bytes)}`,
    `${info.layers} layers`,
    `context ${info.context}`,
  ];
  if (info.moe) parts.push(`MoE: ${info.moe.experts} experts, top-${info.moe.top_k}${info.moe.shared_expert ? ' + shared expert' : ''} (${info.moe.style})`);
  return parts.join(' · ');
}

function onMessage(slot: Slot, m: FromWorker) {
  switch (m.type) {
    case 'ready':
      return;
    case 'loaded':
      slot.info = m.info;
      slot.el.info.textContent = `${describe(m.info)} · WebAssembly memory after loading ${fmtMem(m.wasmBytes)}`;
      slot.el.root.dataset.wasmBytes = String(m.wasmBytes);
      if (slot.est) {
        const est = slot.est;
        void gpuLimits().then((limits) => {
          slot.el.info.textContent = `${describe(m.info)} · WebAssembly memory after loading ${fmtMem(m.wasmBytes)}; estimate: ${describeEstimate(est, m.info.backend === 'gpu' ? limits : null)}`;
        });
        slot.el.root.dataset.estHeld = String(est.held);
        slot.el.root.dataset.estPeak = String(est.peak);
      }
      slot.el.root.dataset.moe = m.info.moe ? 'true' : 'false';
      slot.el.root.dataset.weightBytes = String(m.info.weight_bytes);
      showBackend(slot, m.info);
      setReady(slot, `Loaded in ${(m.ms / 1000).toFixed(2)} s.`);
      return;
    case 'started': {
      slot.tokens = m.pieces.map((p, i) => ({ piece: p, prompt: true, experts: m.experts?.[i] ?? null }));
      showBackend(slot, m.backend);
      const rate = m.prefillMs > 0 ? (m.promptTokens / m.prefillMs) * 1000 : 0;
      slot.el.stats.textContent = `prefill ${m.promptTokens} tokens in ${(m.prefillMs / 1000).toFixed(2)} s (${rate.toFixed(1)} tokens/s)`;
      slot.el.status.textContent = 'Generating…';
      drawHeat(slot);
      return;
    }
    case 'token': {
      // textContent only: model output is text, never HTML.
      slot.el.text.append(document.createTextNode(m.text));
      slot.tokens.push({ piece: m.text, prompt: false, experts: m.experts });
      if (m.fallback) {
        showBackend(slot, m.backend);
        slot.el.root.dataset.fallback = m.fallback;
      }
      slot.el.root.dataset.generated = String(m.generated);
      // the drawn ids, for tests and the curious (also the token count)
      slot.el.root.dataset.ids = slot.el.root.dataset.ids ? `${slot.el.root.dataset.ids},${m.token}` : String(m.token);
      const rate = m.elapsedMs > 0 ? (m.generated / m.elapsedMs) * 1000 : 0;
      const pre = slot.el.stats.textContent?.split(' · ')[0] ?? '';
      slot.el.stats.textContent = `${pre} · ${m.generated} tokens at ${rate.toFixed(1)} tokens/s`;
      if (slot.info?.moe) drawHeat(slot);
      return;
    }
    case 'done': {
      const prefill = m.prefillMs > 0 ? (m.promptTokens / m.prefillMs) * 1000 : 0;
      const decode = m.decodeMs > 0 ? (m.generated / m.decodeMs) * 1000 : 0;
      slot.el.stats.textContent = `prefill ${m.promptTokens} tokens in ${(m.prefillMs / 1000).toFixed(2)} s (${prefill.toFixed(1)} tokens/s) · decode ${m.generated} tokens in ${(m.decodeMs / 1000).toFixed(2)} s (${decode.toFixed(1)} tokens/s)`;
      slot.el.root.dataset.prefillTps = prefill.toFixed(3);
      slot.el.root.dataset.decodeTps = decode.toFixed(3);
      slot.el.root.dataset.forwards = String(m.forwards);
      slot.el.root.dataset.decodeMs = m.decodeMs.toFixed(1);
      slot.el.root.dataset.prefillMs = m.prefillMs.toFixed(1);
      slot.el.root.dataset.wasmBytes = String(m.wasmBytes);
      slot.el.root.dataset.reason = m.reason;
      setReady(slot, `Done: ${m.reason} (${m.generated} tokens).`);
      if (slot.info?.moe) drawHeat(slot);
      checkAllDone();
      return;
    }
    case 'ppl-progress':
      slot.el.ppl.textContent = `Perplexity: window ${m.done} of ${m.total}…`;
      return;
    case 'ppl': {
      const r: Perplexity | null = m.result;
      if (r) {
        slot.el.ppl.textContent = `Perplexity ${r.perplexity.toFixed(3)} (mean NLL ${r.nll.toFixed(4)} nats over ${r.scored} tokens; window ${r.context}, stride ${r.stride}; ${(m.ms / 1000).toFixed(2)} s)`;
        slot.el.root.dataset.perplexity = String(r.perplexity);
      } else slot.el.ppl.textContent = 'Perplexity: cancelled.';
      setReady(slot);
      checkAllDone();
      return;
    }
    case 'error':
      if (m.fatal && m.during === 'load') {
        // The same load would trap the same way: no retry. A trap with the memory near its 4 GiB
        // is most likely an allocation that could not grow it (a model past the estimate).
        slot.worker.terminate();
        const mem = m.wasmBytes ?? 0;
        const hint = mem >= 2 * 1024 ** 3 ? ` The engine held ${fmtMem(mem)} of WebAssembly memory when it stopped (a page can have at most 4 GiB): the model is most likely too big for the browser; pick “Quantize on load” Q4_0 / Q8_0 or a smaller model.` : '';
        setSlotError(slot, `Could not load ${slot.name}: ${m.message}.${hint}`);
        checkAllDone();
        return;
      }
      if (m.fatal) {
        slot.worker.terminate();
        slot.worker = makeWorker();
        setSlotError(slot, `${m.message} — reloading the model…`);
        startWorker(slot);
        return;
      }
      if (m.during === 'load') setSlotError(slot, `Could not load ${slot.name}: ${m.message}`);
      else if (m.during === 'perplexity') {
        slot.el.ppl.textContent = `Perplexity failed: ${m.message}`;
        setReady(slot);
      } else {
        setReady(slot);
        slot.el.status.textContent = `Generation failed: ${m.message}`;
        slot.el.status.className = 'gen-status error';
      }
      checkAllDone();
      return;
  }
}

function checkAllDone() {
  if (!slots.some((s) => s.state === 'generating' || s.state === 'perplexity')) {
    $<HTMLButtonElement>('gen-stop').disabled = true;
    $<HTMLButtonElement>('gen-ppl-cancel').disabled = true;
  }
  updateButtons();
}

function updateButtons() {
  const ready = slots.filter((s) => s.state === 'ready');
  const busy = slots.some((s) => s.state === 'generating' || s.state === 'perplexity');
  $<HTMLButtonElement>('gen-run').disabled = ready.length === 0 || busy;
  $<HTMLButtonElement>('gen-ppl-run').disabled = ready.length === 0 || busy;
  const full = slots.length >= MAX_MODELS;
  for (const id of ['gen-add-gguf', 'gen-add-folder', 'gen-add-demo']) $<HTMLButtonElement>(id).disabled = full;
  $<HTMLButtonElement>('gen-add-merge').disabled = full || !getLastMerge();
  $('gen-empty').hidden = slots.length > 0;
}

function setStatus(text: string, kind: 'info' | 'error' | 'ok' = 'info') {
  const s = $('gen-run-status');
  s.textContent = text;
  s.className = `gen-run-status ${kind}`;
}

// ---------------------------------------------------------------------------------------------
// Generate, stop, perplexity

function run() {
  const prompt = $<HTMLTextAreaElement>('gen-prompt').value;
  const { sampling, maxTokens, error } = readSampling();
  if (error) {
    setStatus(error, 'error');
    return;
  }
  if (!prompt) {
    setStatus('Type a prompt first.', 'error');
    return;
  }
  setStatus(sampling.temperature === 0 ? 'Greedy decoding.' : `Sampling with seed ${sampling.seed}.`);
  for (const slot of slots) {
    if (slot.state !== 'ready') continue;
    slot.state = 'generating';
    slot.el.root.dataset.state = 'generating';
    for (const k of ['ids', 'fallback', 'generated', 'prefillTps', 'decodeTps', 'forwards', 'decodeMs', 'prefillMs', 'reason']) delete slot.el.root.dataset[k];
    slot.el.text.textContent = '';
    slot.el.stats.textContent = '';
    slot.el.status.textContent = 'Reading the prompt…';
    slot.el.status.className = 'gen-status';
    slot.tokens = [];
    const m: ToWorker = { type: 'generate', prompt, sampling, maxTokens };
    slot.worker.postMessage(m);
  }
  $<HTMLButtonElement>('gen-stop').disabled = false;
  updateButtons();
}

function stop() {
  for (const slot of slots) if (slot.state === 'generating') slot.worker.postMessage({ type: 'stop' } satisfies ToWorker);
  setStatus('Stopping after the current token…');
}

function perplexity() {
  const text = $<HTMLTextAreaElement>('gen-ppl-text').value;
  if (!text.trim()) {
    setStatus('Paste a text to score first.', 'error');
    return;
  }
  const context = Number($<HTMLInputElement>('gen-ppl-context').value) || 0;
  for (const slot of slots) {
    if (slot.state !== 'ready') continue;
    slot.state = 'perplexity';
    slot.el.root.dataset.state = 'perplexity';
    delete slot.el.root.dataset.perplexity;
    slot.el.ppl.textContent = 'Perplexity: tokenizing…';
    slot.worker.postMessage({ type: 'perplexity', text, context } satisfies ToWorker);
  }
  $<HTMLButtonElement>('gen-ppl-cancel').disabled = false;
  updateButtons();
}

/** Perplexity runs in one engine call: cancelling replaces the worker and reloads the model. */
function cancelPerplexity() {
  for (const slot of slots) {
    if (slot.state !== 'perplexity') continue;
    slot.worker.terminate();
    slot.worker = makeWorker();
    slot.el.ppl.textContent = 'Perplexity: cancelled.';
    startWorker(slot);
  }
  $<HTMLButtonElement>('gen-ppl-cancel').disabled = true;
  updateButtons();
}

// ---------------------------------------------------------------------------------------------
// MoE heat map: x = tokens (prompt, then generated), y = (sparse layer, expert); a cell's shade is
// the combine weight the router gave that expert for that token (0 when not chosen).

const CELL_W = 10;
const CELL_H = 6;
const LAYER_GAP = 3;

function heatLayout(slot: Slot) {
  const moe = slot.info?.moe;
  if (!moe) return null;
  const layers = moe.layers_sparse;
  return { layers, experts: moe.experts, rowsH: layers.length * (moe.experts * CELL_H + LAYER_GAP) };
}

function drawHeat(slot: Slot) {
  const lay = heatLayout(slot);
  const c = slot.el.heat;
  if (!lay) {
    c.hidden = true;
    return;
  }
  c.hidden = false;
  slot.el.heatNote.hidden = false;
  slot.el.heatNote.textContent = `Experts used per token (columns: tokens, prompt shaded grey; rows: ${lay.experts} experts × ${lay.layers.length} MoE layers; darker = larger router weight). Hover for details.`;
  const n = slot.tokens.length;
  c.width = Math.max(1, n * CELL_W);
  c.height = lay.rowsH + 4;
  const g = c.getContext('2d');
  if (!g) return;
  g.clearRect(0, 0, c.width, c.height);
  slot.tokens.forEach((t, x) => {
    if (t.prompt) {
      g.fillStyle = '#f0eeea';
      g.fillRect(x * CELL_W, 0, CELL_W, c.height);
    }
    if (!t.experts) return;
    lay.layers.forEach((layer, li) => {
      const y0 = li * (lay.experts * CELL_H + LAYER_GAP);
      for (const [e, w] of t.experts?.[layer] ?? []) {
        const a = Math.max(0.15, Math.min(1, w));
        g.fillStyle = `rgba(180, 68, 28, ${a})`;
        g.fillRect(x * CELL_W + 1, y0 + e * CELL_H, CELL_W - 2, CELL_H - 1);
      }
    });
  });
  c.dataset.tokens = String(n);
}

function heatHover(slot: Slot, e: MouseEvent) {
  const lay = heatLayout(slot);
  if (!lay) return;
  const r = slot.el.heat.getBoundingClientRect();
  const x = Math.floor((e.clientX - r.left) / CELL_W);
  const y = e.clientY - r.top;
  const li = Math.floor(y / (lay.experts * CELL_H + LAYER_GAP));
  const t = slot.tokens[x];
  if (!t || li < 0 || li >= lay.layers.length) return;
  const layer = lay.layers[li];
  const ch = (t.experts?.[layer] ?? []).map(([ex, w]) => `expert ${ex} (${w.toFixed(3)})`).join(', ');
  slot.el.heat.title = `token ${x} ${JSON.stringify(t.piece)}${t.prompt ? ' (prompt)' : ''} · layer ${layer}: ${ch || 'no experts'}`;
}

// ---------------------------------------------------------------------------------------------
// Sources

async function addDemo() {
  try {
    const [config, weights, tokenizer] = await Promise.all(
      [demoConfigUrl, demoWeightsUrl, demoTokenizerUrl].map(async (u) => {
        const r = await fetch(u);
        if (!r.ok) throw new Error(`${u}: HTTP ${r.status}`);
        return r.blob();
      }),
    );
    const files = new Map<string, File>([
      ['config.json', new File([config], 'config.json')],
      ['model.safetensors', new File([weights], 'model.safetensors')],
      ['tokenizer.json', new File([tokenizer], 'tokenizer.json')],
    ]);
    const est = await admit('tiny-mixtral', () => folderShape('tiny-mixtral', files));
    if (est === false) return;
    newSlot({ kind: 'bundled', name: 'tiny-mixtral' }, { kind: 'hf', name: 'tiny-mixtral', files }, est);
  } catch (e) {
    setStatus(`Could not load the bundled demo: ${String(e)}`, 'error');
  }
}

async function addGguf(files: FileList | File[] | null) {
  for (const f of Array.from(files ?? [])) {
    if (slots.length >= MAX_MODELS) break;
    const est = await admit(f.name, () => ggufShape(f, f.name));
    if (est === false) continue;
    newSlot({ kind: 'local-gguf', name: f.name, size: f.size }, { kind: 'gguf', file: f }, est);
  }
}

/**
 * The memory check every source goes through before its load (load-budget.ts `checkLoad`, with
 * the quantize-on-load choice of now): false, with the message shown, when the model is too big
 * for the browser. A header this page cannot read is left to the engine, whose load names the
 * problem.
 */
async function admit(name: string, shape: () => Promise<ModelShape>): Promise<LoadEstimate | null | false> {
  let s: ModelShape;
  try {
    s = await shape();
  } catch {
    return null;
  }
  const q = $<HTMLSelectElement>('gen-quantize').value;
  const tooBig = checkLoad(name, s, q);
  if (tooBig) {
    setStatus(tooBig, 'error');
    $('gen-run-status').dataset.refused = name;
    return false;
  }
  return estimateLoad(s, q);
}

let limitsPromise: Promise<GpuLimits | null> | null = null;

/** The WebGPU adapter's buffer limits (asked once), or null without WebGPU or with 'CPU' picked. */
async function gpuLimits(): Promise<GpuLimits | null> {
  if ($<HTMLSelectElement>('gen-backend').value === 'cpu') return null;
  limitsPromise ??= (async () => {
    try {
      const gpu = (navigator as Navigator & { gpu?: { requestAdapter(): Promise<{ limits: GpuLimits } | null> } }).gpu;
      const a = await gpu?.requestAdapter();
      return a ? { maxBufferSize: a.limits.maxBufferSize, maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize } : null;
    } catch {
      return null;
    }
  })();
  return limitsPromise;
}

async function addFolder(list: FileList | File[] | null) {
  const all = Array.from(list ?? []);
  if (all.length === 0) return;
  const files = new Map<string, File>();
  let folder = '';
  for (const f of all) {
    const rel = (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name;
    const parts = rel.split('/');
    if (parts.length > 1) folder ||= parts[0];
    // The model's own files: the path inside the picked folder.
    files.set(parts.length > 1 ? parts.slice(1).join('/') : rel, f);
  }
  const gguf = all.filter((f) => f.name.endsWith('.gguf'));
  if (gguf.length > 0 && !files.has('config.json')) {
    await addGguf(gguf);
    return;
  }
  const name = folder || 'model';
  const est = await admit(name, () => folderShape(name, files));
  if (est === false) return;
  newSlot({ kind: 'local-folder', name, size: all.reduce((a, f) => a + f.size, 0) }, { kind: 'hf', name, files }, est);
}

async function addMerge() {
  const m = getLastMerge();
  if (!m) return;
  const files = new Map<string, File>();
  for (const f of m.files) files.set(f.name, new File([f.blob], f.name.split('/').pop() ?? f.name));
  if (!files.has('tokenizer.json')) {
    setStatus('The merge has no tokenizer.json (its base model had none): add the model as a folder with a tokenizer instead.', 'error');
    return;
  }
  const name = `merge (${new Date(m.at).toLocaleTimeString()})`;
  const est = await admit(name, () => folderShape(name, files));
  if (est === false) return;
  newSlot({ kind: 'merge', name }, { kind: 'hf', name, files }, est);
}

// ---------------------------------------------------------------------------------------------
// Hub models (hub.ts): repo id + revision → config.json and the safetensors headers (Range reads)
// → parameters, bytes to download and the memory estimate, before any weight moves; Load →
// config.json, the weights, tokenizer.json (+ tokenizer_config.json / generation_config.json)
// from memory / Cache Storage / a download with progress and Cancel → the worker's `hf` source.

/** The hub model read last (its preview is shown), and the download in progress. */
let hubPreview: { model: HubModel; shape: ModelShape; name: string; toFetch: number; total: number; files: HubFile[]; gguf: string } | null = null;
let hubCtl: AbortController | null = null;
let hubReadSeq = 0;
/** The adapter's limits as last asked (null: CPU, or no WebGPU). */
let hubLimits: GpuLimits | null = null;

/** The hub base URL: the Merge tab's setting field when set (it saves it), else `?hub=` / saved / huggingface.co. */
function hubBase(): string {
  const field = document.getElementById('hub-base') as HTMLInputElement | null;
  return (field?.value && normalizeBase(field.value)) || initialHubBase();
}

function setHubStatus(text: string, kind: 'info' | 'error' | 'ok' = 'info') {
  const s = $('gen-hub-status');
  s.textContent = text;
  s.className = `gen-run-status ${kind}`;
}

/** The shape of a hub model from what was read: config.json and the safetensors headers. */
function hubShape(m: HubModel): ModelShape {
  const cfg = m.files.find((f) => f.path === 'config.json')!;
  const config = JSON.parse(new TextDecoder().decode(cfg.prefix));
  const tensors = m.files.filter((f) => f.path.endsWith('.safetensors') && f.prefix).flatMap((f) => safetensorsTensors(f.prefix!, `${m.repo}@${m.revision}: ${f.path}`));
  return shapeFromConfig(config, tensors, m.files.find((f) => f.path === 'tokenizer.json')?.size ?? 0);
}

/** Read `repo@revision`'s config.json and headers; show parameters, download and memory. */
async function readHub(repo: string, revision: string, gguf = ''): Promise<void> {
  const seq = ++hubReadSeq;
  hubPreview = null;
  const box = $('gen-hub-preview');
  box.hidden = true;
  const bad = checkRepoId(repo) ?? checkRevision(revision);
  if (bad) return setHubStatus(bad, 'error');
  setHubStatus(gguf ? `Reading ${repo}@${revision}: the header of ${gguf}…` : `Reading ${repo}@${revision}: config.json and the safetensors headers…`);
  try {
    let model: HubModel, files: HubFile[], shape: ModelShape;
    if (gguf) {
      model = await loadHubGguf(hubBase(), repo, revision, gguf);
      files = model.files;
      shape = await ggufShapeFrom((len) => readHubPrefix(model, gguf, len), `${repo}@${revision}: ${gguf}`);
    } else {
      model = await loadHubModel(hubBase(), repo, revision);
      files = generateFiles(model);
      shape = hubShape(model);
    }
    const toFetch = await bytesToDownload(files);
    hubLimits = await gpuLimits();
    if (seq !== hubReadSeq) return;
    const name = gguf ? `${repo}@${revision}/${gguf}` : `${repo}@${revision}`;
    hubPreview = { model, shape, name, toFetch, total: files.reduce((a, f) => a + f.size, 0), files, gguf };
    showHubPreview();
  } catch (e) {
    if (seq !== hubReadSeq) return;
    setHubStatus(e instanceof Error ? e.message : String(e), 'error');
  }
}

/** The preview line (and the too-big refusal) for the quantize-on-load choice of now. */
function showHubPreview() {
  if (!hubPreview) return;
  const { model, shape, name, toFetch, total } = hubPreview;
  const q = $<HTMLSelectElement>('gen-quantize').value;
  const est = estimateLoad(shape, q);
  const box = $('gen-hub-preview');
  box.hidden = false;
  box.dataset.params = String(est.params);
  box.dataset.download = String(toFetch);
  box.dataset.peak = String(est.peak);
  box.dataset.held = String(est.held);
  const commit = model.commit ? ` (commit ${model.commit.slice(0, 12)})` : '';
  $('gen-hub-info').textContent =
    `${name}${commit}: ${fmtCount(est.params)} parameters · download ${fmtMem(toFetch)}${toFetch < total ? ` (${fmtMem(total - toFetch)} already here)` : ''} · ${describeEstimate(est, hubLimits)}`;
  const tooBig = checkLoad(name, shape, q);
  $<HTMLButtonElement>('gen-hub-load').disabled = !!tooBig || slots.length >= MAX_MODELS;
  if (tooBig) setHubStatus(tooBig, 'error');
  else setHubStatus(`Read ${name}: nothing big was downloaded yet. Load downloads it${toFetch ? '' : ' (every file is already here)'}.`, 'ok');
}

/** Download (or take from the cache) the previewed model's files and load it in a new slot. */
async function loadHub() {
  if (!hubPreview || hubCtl) return;
  const { model, shape, name, gguf } = hubPreview;
  const q = $<HTMLSelectElement>('gen-quantize').value;
  const tooBig = checkLoad(name, shape, q);
  if (tooBig) return setHubStatus(tooBig, 'error');
  if (slots.length >= MAX_MODELS) return setHubStatus(`At most ${MAX_MODELS} models: remove one first.`, 'error');
  const ctl = new AbortController();
  hubCtl = ctl;
  const bar = $<HTMLProgressElement>('gen-hub-progress');
  const text = $('gen-hub-progress-text');
  bar.hidden = false;
  $<HTMLButtonElement>('gen-hub-load').disabled = true;
  $<HTMLButtonElement>('gen-hub-cancel').disabled = false;
  const t0 = performance.now();
  let shown = 0;
  try {
    const files = await fetchHubFiles(model, hubPreview.files, ctl.signal, (done, total, file) => {
      const now = performance.now();
      if (now - shown < 100 && done < total) return;
      shown = now;
      const secs = (now - t0) / 1000;
      bar.max = 1;
      bar.value = total ? done / total : 1;
      text.textContent = total ? `downloading ${file} · ${fmtMem(done)} of ${fmtMem(total)} · ${secs > 0.2 ? fmtMem(done / secs) : '–'}/s` : 'every file is already here';
      text.dataset.done = String(done);
    });
    setHubStatus(`${name}: every file is here; it loads below.`, 'ok');
    // The preview is used up: reading the repo again shows a fresh one.
    hubPreview = null;
    $('gen-hub-preview').hidden = true;
    if (gguf) newSlot({ kind: 'hub', name, repo: model.repo, revision: model.revision, gguf }, { kind: 'gguf', file: files.get(gguf)! }, estimateLoad(shape, q));
    else newSlot({ kind: 'hub', name, repo: model.repo, revision: model.revision }, { kind: 'hf', name, files }, estimateLoad(shape, q));
  } catch (e) {
    if (ctl.signal.aborted) setHubStatus('Download cancelled: nothing partial was kept in the cache.', 'info');
    else setHubStatus(e instanceof Error ? e.message : String(e), 'error');
  } finally {
    hubCtl = null;
    bar.hidden = true;
    text.textContent = '';
    $<HTMLButtonElement>('gen-hub-cancel').disabled = true;
    $<HTMLButtonElement>('gen-hub-load').disabled = slots.length >= MAX_MODELS;
  }
}

// ---------------------------------------------------------------------------------------------
// Share-by-URL state (SHARE, share.ts, adds it to its schema).

/** A model as a link names it (a hub model by repo and revision only). */
export type SharedModel = Exclude<SourceDesc, { kind: 'hub' }> | { kind: 'hub'; repo: string; revision: string; gguf?: string };

export type GenerateState = {
  prompt: string;
  greedy: boolean;
  maxTokens: number;
  sampling: SamplingOptions;
  quantize: string;
  /** 'auto' (WebGPU if available) or 'cpu' */
  backend: string;
  pplText: string;
  /** what was loaded: bundled demos by name; local files / folders by name and size (asked for
   * again); hub models by repo and revision (read again only on a click) */
  models: SharedModel[];
};

export function collectGenerateState(): GenerateState {
  const sampling = {} as SamplingOptions;
  for (const f of NUM_FIELDS) (sampling as Record<string, number>)[f.key] = Number($<HTMLInputElement>(f.id).value);
  return {
    prompt: $<HTMLTextAreaElement>('gen-prompt').value,
    greedy: $<HTMLInputElement>('gen-greedy').checked,
    maxTokens: Number($<HTMLInputElement>('gen-max-tokens').value),
    sampling,
    quantize: $<HTMLSelectElement>('gen-quantize').value,
    backend: $<HTMLSelectElement>('gen-backend').value,
    pplText: $<HTMLTextAreaElement>('gen-ppl-text').value,
    models: slots.map((s): SharedModel => (s.source.kind === 'hub' ? { kind: 'hub', repo: s.source.repo, revision: s.source.revision, ...(s.source.gguf ? { gguf: s.source.gguf } : {}) } : s.source)),
  };
}

/** Set the controls from a (validated) state. Models are never loaded by this: bundled ones are
 * listed for a click, local ones must be picked again. */
export function applyGenerateState(s: Partial<GenerateState>): void {
  if (typeof s.prompt === 'string') $<HTMLTextAreaElement>('gen-prompt').value = s.prompt;
  if (typeof s.greedy === 'boolean') $<HTMLInputElement>('gen-greedy').checked = s.greedy;
  if (typeof s.maxTokens === 'number') $<HTMLInputElement>('gen-max-tokens').value = String(s.maxTokens);
  if (typeof s.quantize === 'string') $<HTMLSelectElement>('gen-quantize').value = s.quantize;
  if (s.backend === 'auto' || s.backend === 'cpu') $<HTMLSelectElement>('gen-backend').value = s.backend;
  if (typeof s.pplText === 'string') $<HTMLTextAreaElement>('gen-ppl-text').value = s.pplText;
  for (const f of NUM_FIELDS) {
    const v = s.sampling?.[f.key];
    if (typeof v === 'number' && Number.isFinite(v)) $<HTMLInputElement>(f.id).value = String(v);
  }
  syncGreedy();
  const links = $('gen-link-models');
  links.replaceChildren();
  links.hidden = true;
  if (s.models?.length) {
    const names = s.models.map((m) => (m.kind === 'hub' ? `${m.repo}@${m.revision}${m.gguf ? `/${m.gguf}` : ''} (hub: click its button to read it)` : m.kind === 'bundled' ? `${m.name} (bundled: click “Demo”)` : `${m.name} (pick it again)`));
    setStatus(`The link used these models: ${names.join(', ')}.`);
    // Hub models: one button each; nothing is requested before the click.
    for (const m of s.models) {
      if (m.kind !== 'hub') continue;
      const b = el('button', 'gen-link-hub', `+ ${m.repo}@${m.revision}${m.gguf ? `/${m.gguf}` : ''} from the hub`);
      b.type = 'button';
      b.dataset.repo = m.repo;
      b.dataset.revision = m.revision;
      b.addEventListener('click', () => {
        $<HTMLInputElement>('gen-hub-repo').value = m.repo;
        $<HTMLInputElement>('gen-hub-revision').value = m.revision;
        $<HTMLInputElement>('gen-hub-gguf').value = m.gguf ?? '';
        b.remove();
        links.hidden = links.childElementCount === 0;
        void readHub(m.repo, m.revision, m.gguf ?? '');
      });
      links.append(b);
      links.hidden = false;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tabs and the panel

function syncGreedy() {
  const greedy = $<HTMLInputElement>('gen-greedy').checked;
  for (const f of NUM_FIELDS) if (f.key !== 'repetition_penalty' && f.key !== 'presence_penalty' && f.key !== 'frequency_penalty' && f.key !== 'no_repeat_ngram_size') $<HTMLInputElement>(f.id).disabled = greedy;
}

function selectTab(which: string) {
  for (const b of Array.from(document.querySelectorAll<HTMLButtonElement>('nav.tabs [role=tab]'))) {
    const on = b.id === which;
    b.classList.toggle('active', on);
    b.setAttribute('aria-selected', String(on));
    const panel = b.getAttribute('aria-controls');
    if (panel) $(panel).hidden = !on;
  }
}

function build(root: HTMLElement) {
  const models = el('section', 'card');
  models.innerHTML = `
    <div class="section-head"><h2>1. Models</h2></div>
    <p class="hint">Up to three models, side by side. A GGUF file (llama architecture: Llama, SmolLM2, Mistral, Mixtral; F32, F16, Q8_0, Q4_0, Q4_1),
      a Hugging Face folder (<code>config.json</code>, safetensors, <code>tokenizer.json</code>; Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE), the merge just made in the Merge tab,
      or the bundled tiny Mixtral (random weights: it shows the expert heat map, not good text). Files are read in place; nothing is uploaded.</p>
    <div class="row">
      <button id="gen-add-gguf" type="button">+ GGUF file</button>
      <input id="gen-gguf-input" type="file" accept=".gguf" multiple hidden>
      <button id="gen-add-folder" type="button">+ Hugging Face folder</button>
      <input id="gen-folder-input" type="file" webkitdirectory multiple hidden>
      <button id="gen-add-merge" type="button" disabled title="Merge in the Merge tab first">+ The merge just made</button>
      <button id="gen-add-demo" type="button" class="secondary">+ Demo: tiny Mixtral (MoE)</button>
    </div>
    <form id="gen-hub-form" class="row gen-hub-form">
      <label for="gen-hub-repo">Hugging Face Hub</label>
      <input id="gen-hub-repo" type="text" spellcheck="false" autocomplete="off" placeholder="repo id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct" aria-label="Hub repo id">
      <input id="gen-hub-revision" type="text" spellcheck="false" autocomplete="off" value="main" size="10" aria-label="Revision (branch, tag or commit)">
      <input id="gen-hub-gguf" type="text" spellcheck="false" autocomplete="off" placeholder="GGUF file (optional)" size="22" aria-label="A GGUF file of the repo to load instead of its safetensors (optional)">
      <button id="gen-hub-read" type="submit">+ From the hub</button>
    </form>
    <div id="gen-hub-preview" class="gen-hub-preview" hidden>
      <p id="gen-hub-info" class="hint"></p>
      <div class="row">
        <button id="gen-hub-load" type="button" class="primary">Load</button>
        <button id="gen-hub-cancel" type="button" class="danger" disabled>Cancel</button>
        <progress id="gen-hub-progress" max="1" value="0" hidden></progress>
        <span id="gen-hub-progress-text" class="hint"></span>
      </div>
    </div>
    <p id="gen-hub-status" class="gen-run-status" role="status"></p>
    <div id="gen-link-models" class="row" hidden></div>
    <div class="row">
      <label for="gen-backend">Run on</label>
      <select id="gen-backend">
        <option value="auto">WebGPU if available, else CPU</option>
        <option value="cpu">CPU (WebAssembly)</option>
      </select>
      <label for="gen-quantize" class="second">Quantize on load</label>
      <select id="gen-quantize">
        <option value="">no</option>
        <option value="q8_0">Q8_0</option>
        <option value="q4_0">Q4_0</option>
      </select>
    </div>
    <p id="gen-empty" class="hint">No model yet.</p>`;
  const prompt = el('section', 'card');
  prompt.innerHTML = `
    <div class="section-head"><h2>2. Prompt and sampling</h2></div>
    <textarea id="gen-prompt" rows="3" spellcheck="false" aria-label="Prompt">The capital of France is</textarea>
    <div class="gen-controls">
      <label class="gen-check"><input id="gen-greedy" type="checkbox"> Greedy</label>
      <label>Max tokens <input id="gen-max-tokens" type="number" min="1" max="4096" step="1" value="32"></label>
    </div>
    <div id="gen-sampling" class="gen-controls"></div>
    <div class="row">
      <button id="gen-run" type="button" class="primary" disabled>Generate</button>
      <button id="gen-stop" type="button" class="danger" disabled>Stop</button>
      <span id="gen-run-status" class="gen-run-status" role="status"></span>
    </div>`;
  const outputs = el('section', 'gen-slots');
  outputs.id = 'gen-slots';
  const ppl = el('section', 'card');
  ppl.innerHTML = `
    <div class="section-head"><h2>Perplexity</h2></div>
    <p class="hint">Paste a text: each model's perplexity on it (exp of the mean negative log-likelihood per token; windows of the context below, moved by half of it), the computation of <code>crucible eval</code>.</p>
    <textarea id="gen-ppl-text" rows="4" spellcheck="false" aria-label="Text to score"></textarea>
    <div class="row">
      <label for="gen-ppl-context">Window</label>
      <input id="gen-ppl-context" type="number" min="2" step="1" value="256">
      <button id="gen-ppl-run" type="button" disabled>Compute perplexity</button>
      <button id="gen-ppl-cancel" type="button" class="danger" disabled>Cancel</button>
    </div>`;
  root.append(models, prompt, outputs, ppl);

  const sampling = $('gen-sampling');
  for (const f of NUM_FIELDS) {
    const label = el('label', undefined, `${f.label} `);
    const input = el('input');
    input.id = f.id;
    input.type = 'number';
    input.step = f.step;
    if (f.min !== undefined) input.min = String(f.min);
    if (f.max !== undefined) input.max = String(f.max);
    input.value = String(f.def);
    label.title = f.help;
    label.append(input);
    sampling.append(label);
  }

  $('gen-add-gguf').addEventListener('click', () => $<HTMLInputElement>('gen-gguf-input').click());
  $('gen-add-folder').addEventListener('click', () => $<HTMLInputElement>('gen-folder-input').click());
  $<HTMLInputElement>('gen-gguf-input').addEventListener('change', (e) => {
    const input = e.target as HTMLInputElement;
    void addGguf(Array.from(input.files ?? []));
    input.value = '';
  });
  $<HTMLInputElement>('gen-folder-input').addEventListener('change', (e) => {
    const input = e.target as HTMLInputElement;
    const list = Array.from(input.files ?? []);
    input.value = '';
    void addFolder(list);
  });
  $('gen-add-merge').addEventListener('click', () => void addMerge());
  $('gen-add-demo').addEventListener('click', () => void addDemo());
  $('gen-hub-form').addEventListener('submit', (e) => {
    e.preventDefault();
    void readHub($<HTMLInputElement>('gen-hub-repo').value.trim(), $<HTMLInputElement>('gen-hub-revision').value.trim() || 'main', $<HTMLInputElement>('gen-hub-gguf').value.trim());
  });
  $('gen-hub-load').addEventListener('click', () => void loadHub());
  $('gen-hub-cancel').addEventListener('click', () => hubCtl?.abort());
  // The estimate depends on quantize-on-load: redo the preview's line when it changes.
  $('gen-quantize').addEventListener('change', () => {
    if (hubPreview && !hubCtl) showHubPreview();
  });
  $('gen-backend').addEventListener('change', async () => {
    hubLimits = await gpuLimits();
    if (hubPreview && !hubCtl) showHubPreview();
  });
  $('gen-run').addEventListener('click', run);
  $('gen-stop').addEventListener('click', stop);
  $('gen-ppl-run').addEventListener('click', perplexity);
  $('gen-ppl-cancel').addEventListener('click', cancelPerplexity);
  $('gen-greedy').addEventListener('change', syncGreedy);
  onLastMergeChange(updateButtons);
  updateButtons();
}

export function initGenerate() {
  const root = document.getElementById('generate-tab');
  if (!root) return;
  build(root);
  for (const b of Array.from(document.querySelectorAll<HTMLButtonElement>('nav.tabs [role=tab]'))) {
    b.addEventListener('click', () => selectTab(b.id));
  }
  root.dataset.ready = 'true';
}

initGenerate();
