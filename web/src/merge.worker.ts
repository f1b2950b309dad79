// The merge runs here, off the UI thread: the engine reads the picked files synchronously
// (FileReaderSync, one tensor at a time) and streams each output file back in chunks.
// Cancel = the page terminates this worker (and starts a fresh one): nothing half-written escapes.
import init, { last_panic, merge } from '../pkg/crucible.js';
import type { StatsRow } from './stats';

export type ToWorker = {
  type: 'merge';
  yaml: string;
  files: Map<string, Map<string, File>>;
  seed: string;
  outShardSize?: string;
};

export type FromWorker =
  | { type: 'ready' }
  // stats: the "what the merge did" rows finished since the previous progress message
  | { type: 'progress'; done_tensors: number; total_tensors: number; done_bytes: number; total_bytes: number; tensor: string; stats?: StatsRow[] }
  // report.stats: every row; report.stats_csv: the CSV `crucible merge --stats` writes
  | { type: 'done'; files: { name: string; blob: Blob }[]; ms: number; report: { tensors: number; parameters: number; bytes_written: number; stats?: StatsRow[]; stats_csv?: string } }
  | { type: 'error'; message: string; fatal?: boolean };

const ctx = globalThis as unknown as {
  postMessage(m: FromWorker): void;
  addEventListener(type: 'message', f: (e: MessageEvent<ToWorker>) => void): void;
};

const engine = init();

ctx.addEventListener('message', async (e) => {
  const msg = e.data;
  if (msg.type !== 'merge') return;
  try {
    await engine;
  } catch (err) {
    ctx.postMessage({ type: 'error', message: `could not load the engine: ${String(err)}` });
    return;
  }
  // Each chunk becomes a Blob at once, so the browser's blob store holds the output (and pages it
  // to disk when it is large) instead of this worker's heap; the file's Blob is their concatenation.
  const parts = new Map<string, Blob[]>();
  const done: { name: string; blob: Blob }[] = [];
  const t0 = performance.now();
  try {
    const report = JSON.parse(merge(
      msg.yaml,
      msg.files,
      msg.seed,
      msg.outShardSize,
      (p: { done_tensors: number; total_tensors: number; done_bytes: number; total_bytes: number; tensor: string; stats?: StatsRow[] }) =>
        ctx.postMessage({ type: 'progress', ...p }),
      (kind: string, file: string, arg: unknown) => {
        if (kind === 'create') parts.set(file, []);
        else if (kind === 'chunk') parts.get(file)?.push(new Blob([arg as Uint8Array<ArrayBuffer>]));
        else if (kind === 'finish') {
          done.push({ name: file, blob: new Blob(parts.get(file) ?? []) });
          parts.delete(file);
        } else if (kind === 'abort') parts.delete(file);
      },
    ));
    ctx.postMessage({ type: 'done', files: done, ms: performance.now() - t0, report });
  } catch (err) {
    // A trap (a bug, not bad input) leaves the module unusable: say what panicked, and the page
    // replaces this worker.
    if (err instanceof WebAssembly.RuntimeError) {
      const panic = last_panic();
      ctx.postMessage({ type: 'error', fatal: true, message: `internal error (please report it): ${panic ?? err.message}` });
    } else {
      ctx.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  }
});

ctx.postMessage({ type: 'ready' });
