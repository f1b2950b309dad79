// Local files → one model's files keyed by their path relative to the model folder.
// Nothing is read here: `File` objects are handles; the engine reads tensor by tensor later.

export type ModelFileMap = Map<string, File>;

/** Files from `<input webkitdirectory>`: drop the picked folder's own name from each path. */
export function fromDirectoryInput(list: FileList): { folder: string | null; files: ModelFileMap } {
  const files: ModelFileMap = new Map();
  let folder: string | null = null;
  for (const f of Array.from(list)) {
    const rel = f.webkitRelativePath || f.name;
    const parts = rel.split('/');
    if (parts.length > 1) {
      folder ??= parts[0];
      parts.shift();
    }
    const path = parts.join('/');
    if (!isHidden(path)) files.set(path, f);
  }
  return { folder, files };
}

/** Files picked one by one (`<input multiple>`): keyed by name. */
export function fromFileInput(list: FileList | File[]): ModelFileMap {
  const files: ModelFileMap = new Map();
  for (const f of Array.from(list)) files.set(f.name, f);
  return files;
}

function isHidden(path: string): boolean {
  return path.split('/').some((p) => p.startsWith('.'));
}

function entryFile(e: FileSystemFileEntry): Promise<File> {
  return new Promise((res, rej) => e.file(res, rej));
}

async function readAll(dir: FileSystemDirectoryEntry): Promise<FileSystemEntry[]> {
  const reader = dir.createReader();
  const out: FileSystemEntry[] = [];
  // readEntries returns at most ~100 entries per call: call until it returns none.
  for (;;) {
    const batch = await new Promise<FileSystemEntry[]>((res, rej) => reader.readEntries(res, rej));
    if (batch.length === 0) return out;
    out.push(...batch);
  }
}

async function walk(dir: FileSystemDirectoryEntry, prefix: string, files: ModelFileMap, depth: number): Promise<void> {
  if (depth > 4) return;
  for (const e of await readAll(dir)) {
    if (e.name.startsWith('.')) continue;
    if (e.isFile) files.set(prefix + e.name, await entryFile(e as FileSystemFileEntry));
    else if (e.isDirectory) await walk(e as FileSystemDirectoryEntry, prefix + e.name + '/', files, depth + 1);
  }
}

/**
 * A drop: each dropped folder is one model (named after the folder); loose dropped files together
 * form one more model (a `.safetensors` with its `config.json`).
 */
export async function fromDrop(dt: DataTransfer): Promise<{ name: string | null; files: ModelFileMap }[]> {
  const models: { name: string | null; files: ModelFileMap }[] = [];
  const loose: ModelFileMap = new Map();
  const entries = Array.from(dt.items)
    .filter((i) => i.kind === 'file')
    .map((i) => i.webkitGetAsEntry?.() ?? null);
  if (entries.every((e) => e === null)) {
    for (const f of Array.from(dt.files)) loose.set(f.name, f);
  } else {
    for (const e of entries) {
      if (!e) continue;
      if (e.isDirectory) {
        const files: ModelFileMap = new Map();
        await walk(e as FileSystemDirectoryEntry, '', files, 0);
        models.push({ name: e.name, files });
      } else if (e.isFile) {
        loose.set(e.name, await entryFile(e as FileSystemFileEntry));
      }
    }
  }
  if (loose.size) models.push({ name: null, files: loose });
  return models;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
