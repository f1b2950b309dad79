// The merge runs here, off the UI thread. The engine reads the picked files synchronously
// (FileReaderSync) and merges step by step (`MergeSession.step()`: one tensor, or one element
// chunk of a large tensor of a streamed method: the elementwise ones, and slerp / ties /
// breadcrumbs after their passes over the inputs, see `merge::run`); between steps this worker awaits the disk
// writes of that step (File System Access streams, OPFS) and reads its messages, so memory stays
// bounded by one step and Cancel takes effect within one step: the open files are aborted and every
// file the run created is removed. (If the worker does not answer, the page terminates it.)
import init, { last_panic, MergeSession } from '../pkg/crucible.js';
import { wasmInitError } from './wasm_error';
import { openSink, type OutputSink, type OutputTarget } from './output';
import type { StatsRow } from './stats';

export type ToWorker =
  | {
    type: 'merge';
    yaml: string;
    // model reference → relative path → file (a picked File, or a cached Blob from the hub)
    files: Map<string, Map<string, File | Blob>>;
    seed: string;
    outShardSize?: string;
    // where the files go (default: in memory, offered as downloads)
    output?: OutputTarget;
    // elements per chunk of the streamed methods (tests; the bytes do not depend on it)
    chunkElements?: number;
  }
  | { type: 'cancel' };

export type FromWorker =
  | { type: 'ready' }
  // stats: the "what the merge did" rows finished since the previous progress message
  | { type: 'progress'; done_tensors: number; total_tensors: number; done_bytes: number; total_bytes: number; tensor: string; stats?: StatsRow[] }
  // report.stats: every row; report.stats_csv: the CSV `crucible merge --stats` writes.
  // files: in memory (Blob) or on disk (a disk-backed File of the folder / OPFS).
  | { type: 'done'; files: { name: string; blob: Blob }[]; ms: number; output: OutputTarget['kind']; report: { tensors: number; parameters: number; bytes_written: number; stats?: StatsRow[]; stats_csv?: string } }
  // the merge stopped on Cancel; `removed`: files the run had created and removed again
  | { type: 'cancelled'; removed: string[] }
  | { type: 'error'; message: string; fatal?: boolean };

const ctx = globalThis as unknown as {
  postMessage(m: FromWorker): void;
  addEventListener(type: 'message', f: (e: MessageEvent<ToWorker>) => void): void;
};

const engine = init().catch((e: unknown) => Promise.reject(wasmInitError(e)));
let cancelRequested = false;
let busy = false;

/** Let queued messages (Cancel) run: a macrotask turn. */
function yieldToEvents(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => resolve();
    ch.port2.postMessage(0);
  });
}

function errorMessage(err: unknown): FromWorker {
  // A trap (a bug, not bad input) leaves the module unusable: say what panicked, and the page
  // replaces this worker.
  if (err instanceof WebAssembly.RuntimeError) {
    const panic = last_panic();
    return { type: 'error', fatal: true, message: `internal error (please report it): ${panic ?? err.message}` };
  }
  return { type: 'error', message: err instanceof Error ? err.message : String(err) };
}

async function runMerge(msg: Extract<ToWorker, { type: 'merge' }>) {
  const t0 = performance.now();
  let sink: OutputSink | null = null;
  let session: MergeSession | null = null;
  try {
    sink = await openSink(msg.output);
    const s = sink;
    session = new MergeSession(msg.yaml, msg.files, msg.seed, msg.outShardSize, (kind: string, file: string, arg: unknown) => s.onOutput(kind, file, arg));
    if (msg.chunkElements) session.set_chunk_elements(msg.chunkElements);
    let lastPost = 0;
    for (;;) {
      await yieldToEvents();
      if (cancelRequested) {
        session.cancel();
        const removed = await sink.discard();
        ctx.postMessage({ type: 'cancelled', removed });
        return;
      }
      const r = JSON.parse(session.step());
      await sink.flush();
      if (r.kind === 'done') {
        const files = await sink.files();
        const { kind: _k, files: _f, ...report } = r;
        ctx.postMessage({ type: 'done', files, ms: performance.now() - t0, output: sink.kind, report });
        return;
      }
      // Progress at most ~10 times a second, but every finished tensor's stats rows go out.
      const now = performance.now();
      if (r.kind === 'tensor' && (r.stats.length > 0 || now - lastPost > 100 || r.done_tensors === r.total_tensors)) {
        lastPost = now;
        const { kind: _k, ...p } = r;
        ctx.postMessage({ type: 'progress', ...p });
      } else if (now - lastPost > 100) {
        lastPost = now;
        const { kind: _k, stats: _s, ...p } = r;
        ctx.postMessage({ type: 'progress', ...p });
      }
    }
  } catch (err) {
    try {
      session?.cancel();
    } catch {
      // the module trapped: nothing more to do with it
    }
    await sink?.discard().catch(() => undefined);
    ctx.postMessage(errorMessage(err));
  } finally {
    try {
      session?.free();
    } catch {
      // already freed or the module trapped
    }
  }
}

ctx.addEventListener('message', async (e) => {
  const msg = e.data;
  if (msg.type === 'cancel') {
    if (busy) cancelRequested = true;
    else ctx.postMessage({ type: 'cancelled', removed: [] });
    return;
  }
  if (msg.type !== 'merge') return;
  try {
    await engine;
  } catch (err) {
    ctx.postMessage({ type: 'error', message: `could not load the engine: ${String(err)}` });
    return;
  }
  if (busy) {
    ctx.postMessage({ type: 'error', message: 'a merge is already running in this worker' });
    return;
  }
  busy = true;
  cancelRequested = false;
  try {
    await runMerge(msg);
  } finally {
    busy = false;
    cancelRequested = false;
  }
});

ctx.postMessage({ type: 'ready' });
