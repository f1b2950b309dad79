// Where a merge's output files go, in the merge worker. The engine (wasm `MergeSession`) calls
// `create` / `chunk` / `finish` / `abort` synchronously while it merges one step; the worker then
// awaits `flush()` before the next step, so at most one step's bytes wait in memory, whatever the
// size of the model.
//
// - `MemorySink`: each chunk becomes a Blob at once (the browser's blob store holds it and pages
//   large ones to disk); a file is their concatenation. Small merges, and every browser.
// - `DirectorySink`: a folder the user picked with the File System Access API
//   (`showDirectoryPicker`, Chromium): one `createWritable()` stream per file. A writable stream
//   writes to a swap file and replaces the real file only on `close()`, so nothing incomplete
//   ever shows under a real name; `discard()` aborts the streams and removes the files this run
//   created. Spec: https://fs.spec.whatwg.org/ and https://wicg.github.io/file-system-access/.
// - `OpfsSink`: the origin private file system (`navigator.storage.getDirectory()`), written with
//   synchronous access handles (workers only; every current browser). The page offers the files
//   from there as downloads (disk-backed `File`s: nothing is loaded into memory) and as a zip.
//   One merge's output at a time: a new OPFS merge first removes the previous one.

export type OutputTarget =
  | { kind: 'memory' }
  | { kind: 'directory'; handle: FileSystemDirectoryHandle }
  | { kind: 'opfs' };

/** A finished output file: `blob` is the in-memory Blob or the disk-backed File. */
export interface OutputFile {
  name: string;
  blob: Blob;
}

export interface OutputSink {
  readonly kind: OutputTarget['kind'];
  /** The engine's `on_output(kind, file, arg)` callback (synchronous). */
  onOutput(kind: string, file: string, arg: unknown): void;
  /** Wait for every write queued so far; throws the first write error (disk full, permission). */
  flush(): Promise<void>;
  /** After an error or a cancel: abort open files and remove every file this run created. */
  discard(): Promise<string[]>;
  /** After the merge: the finished files, in the order the engine finished them. */
  files(): Promise<OutputFile[]>;
}

/** The OPFS folder that holds the last merge's output. */
export const OPFS_DIR = 'crucible-output';

export async function openSink(target: OutputTarget | undefined): Promise<OutputSink> {
  if (!target || target.kind === 'memory') return new MemorySink();
  if (target.kind === 'directory') return new DirectorySink(target.handle);
  const root = await navigator.storage.getDirectory();
  await root.removeEntry(OPFS_DIR, { recursive: true }).catch(() => undefined);
  return new OpfsSink(await root.getDirectoryHandle(OPFS_DIR, { create: true }));
}

class MemorySink implements OutputSink {
  readonly kind = 'memory' as const;
  private parts = new Map<string, Blob[]>();
  private done: OutputFile[] = [];

  onOutput(kind: string, file: string, arg: unknown) {
    if (kind === 'create') this.parts.set(file, []);
    else if (kind === 'chunk') this.parts.get(file)?.push(new Blob([arg as Uint8Array<ArrayBuffer>]));
    else if (kind === 'finish') {
      this.done.push({ name: file, blob: new Blob(this.parts.get(file) ?? []) });
      this.parts.delete(file);
    } else if (kind === 'abort') this.parts.delete(file);
  }
  async flush() {}
  async discard() {
    const names = [...this.parts.keys(), ...this.done.map((f) => f.name)];
    this.parts.clear();
    this.done = [];
    return names;
  }
  async files() {
    return this.done;
  }
}

/** A sink that writes files to a directory handle: writes run one after another in a promise
 *  chain (the first failure stops the chain); the engine's create / chunk / finish / abort calls
 *  map to `openFile` / `writeChunk` / `closeFile` / `abortHandle` of the file's handle `H`. Tracks
 *  the files this run created (removed by `discard`) and the finished ones (`files`). */
abstract class DirHandleSink<H> {
  private queue: Promise<void> = Promise.resolve();
  private error: unknown = null;
  private open = new Map<string, { h: H; existed: boolean }>();
  private created: string[] = [];
  private finished: string[] = [];

  constructor(protected dir: FileSystemDirectoryHandle) {}

  /** Opens `file` for writing from byte 0; `existed`: the file was there before this run. */
  protected abstract openFile(file: string): Promise<{ h: H; existed: boolean }>;
  protected abstract writeChunk(h: H, file: string, bytes: Uint8Array<ArrayBuffer>): Promise<void> | void;
  protected abstract closeFile(h: H): Promise<void> | void;
  /** Drops an open file's unfinished writes (the base then removes it unless it existed before). */
  protected abstract abortHandle(h: H): Promise<void> | void;

  private enqueue(f: () => Promise<void> | void) {
    this.queue = this.queue.then(async () => {
      if (this.error === null) await f();
    }).catch((e) => {
      this.error ??= e;
    });
  }

  onOutput(kind: string, file: string, arg: unknown) {
    if (kind === 'create') {
      this.enqueue(async () => {
        const f = await this.openFile(file);
        if (!f.existed) this.created.push(file);
        this.open.set(file, f);
      });
    } else if (kind === 'chunk') {
      const bytes = arg as Uint8Array<ArrayBuffer>;
      this.enqueue(async () => {
        const f = this.open.get(file);
        if (f) await this.writeChunk(f.h, file, bytes);
      });
    } else if (kind === 'finish') {
      this.enqueue(async () => {
        const f = this.open.get(file);
        this.open.delete(file);
        if (f) await this.closeFile(f.h);
        this.finished.push(file);
      });
    } else if (kind === 'abort') {
      this.enqueue(() => this.abortFile(file));
    }
  }

  private async abortFile(file: string) {
    const f = this.open.get(file);
    this.open.delete(file);
    if (!f) return;
    await Promise.resolve(this.abortHandle(f.h)).catch(() => undefined);
    if (!f.existed) await this.dir.removeEntry(file).catch(() => undefined);
  }

  async flush() {
    await this.queue;
    if (this.error !== null) throw this.error instanceof Error ? this.error : new Error(String(this.error));
  }

  async discard() {
    await this.queue.catch(() => undefined);
    for (const file of [...this.open.keys()]) await this.abortFile(file);
    for (const file of this.created) await this.dir.removeEntry(file).catch(() => undefined);
    return this.created;
  }

  async files() {
    await this.flush();
    return Promise.all(this.finished.map(async (name) => ({ name, blob: await (await this.dir.getFileHandle(name)).getFile() })));
  }
}

/** A folder on disk picked with `showDirectoryPicker` (File System Access API): one
 *  `createWritable()` stream per file. */
class DirectorySink extends DirHandleSink<FileSystemWritableFileStream> implements OutputSink {
  readonly kind = 'directory' as const;

  protected async openFile(file: string) {
    const existed = await this.dir.getFileHandle(file).then(() => true, () => false);
    const handle = await this.dir.getFileHandle(file, { create: true });
    return { h: await handle.createWritable({ keepExistingData: false }), existed };
  }
  protected async writeChunk(w: FileSystemWritableFileStream, _file: string, bytes: Uint8Array<ArrayBuffer>) {
    await w.write(bytes);
  }
  protected async closeFile(w: FileSystemWritableFileStream) {
    await w.close();
  }
  protected async abortHandle(w: FileSystemWritableFileStream) {
    await w.abort();
  }
}

/** `FileSystemSyncAccessHandle` (worker-only; not in the DOM typings this project compiles with). */
interface SyncHandle {
  write(buffer: BufferSource, options?: { at?: number }): number;
  truncate(size: number): void;
  flush(): void;
  close(): void;
}

/** The origin private file system, written with synchronous access handles (a fresh folder per
 *  merge, so every file is new to this run). */
class OpfsSink extends DirHandleSink<{ handle: SyncHandle; at: number }> implements OutputSink {
  readonly kind = 'opfs' as const;

  protected async openFile(file: string) {
    const fh = await this.dir.getFileHandle(file, { create: true });
    const handle = await (fh as unknown as { createSyncAccessHandle(): Promise<SyncHandle> }).createSyncAccessHandle();
    handle.truncate(0);
    return { h: { handle, at: 0 }, existed: false };
  }
  protected writeChunk(f: { handle: SyncHandle; at: number }, file: string, bytes: Uint8Array<ArrayBuffer>) {
    let done = 0;
    while (done < bytes.length) {
      const n = f.handle.write(bytes.subarray(done), { at: f.at + done });
      if (n <= 0) throw new Error(`${file}: the browser storage refused the write (quota full?)`);
      done += n;
    }
    f.at += done;
  }
  protected closeFile(f: { handle: SyncHandle; at: number }) {
    f.handle.flush();
    f.handle.close();
  }
  protected abortHandle(f: { handle: SyncHandle; at: number }) {
    f.handle.close();
  }
}

// ---------------------------------------------------------------- page side

/** Output choices this browser offers: in memory always; a folder where the File System Access
 *  API exists (Chromium); the origin private file system where `navigator.storage.getDirectory`
 *  exists (every current browser). */
export function outputChoices(): { value: OutputTarget['kind']; label: string; hint: string }[] {
  const out: { value: OutputTarget['kind']; label: string; hint: string }[] = [
    { value: 'memory', label: 'Download when done', hint: 'the files stay in the browser until you save them (small merges)' },
  ];
  if ('showDirectoryPicker' in globalThis) {
    out.push({ value: 'directory', label: 'Write to a folder…', hint: 'streamed to disk as it merges (asks for a folder when you press Merge); for large models' });
  }
  if (typeof navigator !== 'undefined' && navigator.storage && 'getDirectory' in navigator.storage) {
    out.push({ value: 'opfs', label: 'Browser storage, then download', hint: "streamed into the browser's private storage, then offered as downloads; for large models where folders are not available" });
  }
  return out;
}

/** Resolve a choice to a target; for a folder, asks the user for one (must run in the click's
 *  user activation, before any await). Returns null when the user dismisses the picker. */
export async function pickOutput(kind: OutputTarget['kind']): Promise<OutputTarget | null> {
  if (kind === 'directory') {
    const picker = (globalThis as unknown as { showDirectoryPicker(o: object): Promise<FileSystemDirectoryHandle> }).showDirectoryPicker;
    try {
      const handle = await picker.call(globalThis, { id: 'crucible-output', mode: 'readwrite' });
      return { kind: 'directory', handle };
    } catch (e) {
      if (e instanceof DOMException && e.name === 'AbortError') return null;
      throw e;
    }
  }
  return { kind };
}
