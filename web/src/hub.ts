// Hugging Face Hub sources: a model is a repo id and a revision. Before any weights move, the page
// reads config.json, model.safetensors.index.json (if the repo is sharded) and only the header of
// each safetensors file, through two HTTP Range requests per file (bytes 0-7: the header length N,
// little-endian u64; then bytes 8..8+N-1: the JSON header). The engine plans the merge from these
// (`plan_merge`, crate/src/merge/preview.rs); the weight files are downloaded only on Merge
// (cache.ts).
//
// References: the safetensors format (huggingface/safetensors, docs: 8-byte header length, JSON
// header, data), huggingface_hub `get_safetensors_metadata` (the same two Range reads) and
// `hf_hub_url` (`{endpoint}/{repo_id}/resolve/{revision}/{filename}`, revision URL-encoded), the
// Hub's error headers (`X-Error-Code`: RepoNotFound, RevisionNotFound, EntryNotFound,
// GatedRepo) as huggingface_hub's `hf_raise_for_status` reads them.
//
// Every name that comes from the Hub or the user is shown with textContent by the caller; this file
// builds messages only.

import { cachedBlob, downloadToCache } from './cache';

export const DEFAULT_HUB = 'https://huggingface.co';
export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';
/** The engine's limit on a safetensors header (formats/safetensors.rs MAX_HEADER_LEN). */
const MAX_HEADER_LEN = 100_000_000;
/** Tokenizer files mergekit copies from the donor (merge/run.rs TOKENIZER_FILES), and vocab.json. */
export const TOKENIZER_FILES = [
  'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer.model', 'added_tokens.json',
  'merges.txt', 'chat_template.jinja', 'generation_config.json', 'chat_template.json', 'video_preprocessor_config.json', 'vocab.json',
];

/** One file of a Hub model: its full size, and what the page holds of it (whole JSON files, headers). */
export interface HubFile {
  path: string;
  size: number;
  url: string;
  /** config.json / the index: the whole file; a safetensors file: its first 8 + N bytes. */
  prefix?: Uint8Array;
}

export interface HubModel {
  repo: string;
  /** As the user gave it (a branch, a tag or a commit). */
  revision: string;
  /** The commit the hub resolved `revision` to (its `X-Repo-Commit` header), when it says: every
   * file after config.json is read at that commit, so a branch that moves meanwhile cannot mix two
   * versions, and cache entries (keyed by URL) never go stale. */
  commit: string | null;
  base: string;
  files: HubFile[];
}

/** The URL of `file` at the model's pinned commit (else its revision). */
export function fileUrl(m: HubModel, file: string): string {
  return resolveUrl(m.base, m.repo, m.commit ?? m.revision, file);
}

export class HubError extends Error {}

/** The hub base URL: `?hub=` in the page URL, else the saved setting, else huggingface.co. */
export function initialHubBase(): string {
  const q = new URLSearchParams(location.search).get('hub');
  if (q) return normalizeBase(q) ?? DEFAULT_HUB;
  try {
    const saved = localStorage.getItem('crucible.hub');
    if (saved) return normalizeBase(saved) ?? DEFAULT_HUB;
  } catch {
    // storage disabled: the default
  }
  return DEFAULT_HUB;
}

/** An http(s) URL without a trailing slash, or null. */
export function normalizeBase(s: string): string | null {
  try {
    const u = new URL(s.trim());
    if (u.protocol !== 'https:' && u.protocol !== 'http:') return null;
    return u.href.replace(/\/+$/, '');
  } catch {
    return null;
  }
}

/** A Hub repo id: `name` or `owner/name`, letters, digits, `-`, `_`, `.` (huggingface_hub's validate_repo_id). */
export function checkRepoId(repo: string): string | null {
  if (!repo) return 'enter a repo id such as HuggingFaceTB/SmolLM2-135M';
  if (repo.length > 96) return `repo id ${repo.slice(0, 40)}… is longer than 96 characters`;
  if (!/^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/.test(repo) || repo.includes('..') || repo.includes('--'))
    return `${repo} is not a valid repo id (owner/name: letters, digits, - _ . only)`;
  return null;
}

export function checkRevision(rev: string): string | null {
  if (!rev) return 'a revision is needed (a branch such as main, a tag or a commit hash)';
  if (rev.length > 200 || !/^[\w.\-/]+$/.test(rev) || rev.split('/').includes('..')) return `${rev} is not a valid revision`;
  return null;
}

export function resolveUrl(base: string, repo: string, revision: string, file: string): string {
  return `${base}/${repo}/resolve/${encodeURIComponent(revision)}/${file.split('/').map(encodeURIComponent).join('/')}`;
}

const where = (repo: string, revision: string, file: string) => `${repo}@${revision}: ${file}`;

/** A failed response → a message naming the repo, the revision and the file. */
function statusMessage(res: Response, repo: string, revision: string, file: string): string {
  const code = res.headers.get('x-error-code') ?? '';
  if (code === 'RepoNotFound' || (res.status === 401 && !code))
    return `repo ${repo} was not found on the hub (HTTP ${res.status}): check the id; a private or gated repo needs access this page does not have`;
  if (code === 'RevisionNotFound') return `repo ${repo} has no revision ${revision} (HTTP ${res.status})`;
  if (code === 'GatedRepo') return `repo ${repo} is gated (HTTP ${res.status}): accept its terms on the hub; this page cannot sign in`;
  if (code === 'EntryNotFound' || res.status === 404) return `${where(repo, revision, file)} was not found (HTTP ${res.status})`;
  return `${where(repo, revision, file)}: the hub answered HTTP ${res.status} ${res.statusText}`;
}

async function get(url: string, init: RequestInit, repo: string, revision: string, file: string): Promise<Response> {
  try {
    return await fetch(url, { ...init, cache: 'no-store' });
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new HubError(`${where(repo, revision, file)}: could not reach ${new URL(url).origin} (network error, or the server does not allow this page through CORS): ${String(e)}`);
  }
}

async function fetchWhole(m: HubModel, file: string, signal?: AbortSignal): Promise<{ bytes: Uint8Array; commit: string | null } | null> {
  const url = fileUrl(m, file);
  const res = await get(url, { signal }, m.repo, m.revision, file);
  if (res.status === 404 && (res.headers.get('x-error-code') ?? 'EntryNotFound') === 'EntryNotFound') return null;
  if (!res.ok) throw new HubError(statusMessage(res, m.repo, m.revision, file));
  const commit = res.headers.get('x-repo-commit');
  return { bytes: new Uint8Array(await res.arrayBuffer()), commit: commit && /^[0-9a-f]{40}$/.test(commit) ? commit : null };
}

/** Bytes [start, end] (inclusive) of a file; the full size from Content-Range. */
async function fetchRange(m: HubModel, file: string, start: number, end: number, signal?: AbortSignal): Promise<{ bytes: Uint8Array; total: number; commit?: string | null }> {
  const url = fileUrl(m, file);
  const ctl = new AbortController();
  const onAbort = () => ctl.abort();
  signal?.addEventListener('abort', onAbort);
  try {
    const res = await get(url, { headers: { Range: `bytes=${start}-${end}` }, signal: ctl.signal }, m.repo, m.revision, file);
    if (res.status === 200) {
      ctl.abort(); // do not download the whole file
      throw new HubError(`${where(m.repo, m.revision, file)}: the server ignored the Range request (HTTP 200 instead of 206): it must support Range requests so that only the header is read`);
    }
    if (res.status !== 206) throw new HubError(statusMessage(res, m.repo, m.revision, file));
    const cr = res.headers.get('content-range');
    const match = cr && /^bytes (\d+)-(\d+)\/(\d+)$/.exec(cr.trim());
    if (!match) {
      ctl.abort();
      throw new HubError(`${where(m.repo, m.revision, file)}: the response has no readable Content-Range header (the server must send it and expose it through CORS)`);
    }
    const bytes = new Uint8Array(await res.arrayBuffer());
    const total = Number(match[3]);
    if (Number(match[1]) !== start || Number(match[2]) !== end || bytes.length !== end - start + 1)
      throw new HubError(`${where(m.repo, m.revision, file)}: asked for bytes ${start}-${end}, got ${bytes.length} bytes (${cr}): the server's Range answer is wrong`);
    const commit = res.headers.get('x-repo-commit');
    return { bytes, total, commit: commit && /^[0-9a-f]{40}$/.test(commit) ? commit : null };
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/** The first 8 + N bytes of a safetensors file (N = its header length) and the file's size. */
async function readHeader(m: HubModel, file: string, signal?: AbortSignal): Promise<HubFile> {
  const first = await fetchRange(m, file, 0, 7, signal);
  const n = Number(new DataView(first.bytes.buffer, first.bytes.byteOffset, 8).getBigUint64(0, true));
  if (n < 2 || n > MAX_HEADER_LEN || 8 + n > first.total)
    throw new HubError(`${where(m.repo, m.revision, file)}: header length ${n} does not fit a safetensors file of ${first.total} bytes (not a safetensors file, or corrupted)`);
  const rest = await fetchRange(m, file, 8, 8 + n - 1, signal);
  if (rest.total !== first.total)
    throw new HubError(`${where(m.repo, m.revision, file)}: the file changed size between two requests (${first.total} then ${rest.total} bytes)`);
  const prefix = new Uint8Array(8 + n);
  prefix.set(first.bytes, 0);
  prefix.set(rest.bytes, 8);
  return { path: file, size: first.total, url: fileUrl(m, file), prefix };
}

/** Run `f` over `items` with at most `limit` at a time, keeping the order of the results. */
async function pool<T, R>(items: T[], limit: number, f: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await f(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/**
 * Load what the plan needs of `repo@revision`: config.json, the index (sharded) or
 * model.safetensors, every weight file's header, and the sizes of the tokenizer files present.
 */
export async function loadHubModel(base: string, repo: string, revision: string, signal?: AbortSignal): Promise<HubModel> {
  const bad = checkRepoId(repo) ?? checkRevision(revision);
  if (bad) throw new HubError(bad);
  const m: HubModel = { repo, revision, commit: null, base, files: [] };
  const got = await fetchWhole(m, 'config.json', signal);
  if (!got) throw new HubError(`${where(repo, revision, 'config.json')} was not found: the repo must be a transformers checkpoint with a config.json`);
  const config = got.bytes;
  try {
    JSON.parse(new TextDecoder().decode(config));
  } catch (e) {
    throw new HubError(`${where(repo, revision, 'config.json')} is not valid JSON (${String(e)})`);
  }
  m.files.push({ path: 'config.json', size: config.length, url: fileUrl(m, 'config.json'), prefix: config });
  m.commit = got.commit; // from here on, every file at that commit

  let weightFiles: string[];
  const index = (await fetchWhole(m, INDEX_FILE, signal))?.bytes;
  if (index) {
    let map: Record<string, unknown>;
    try {
      map = JSON.parse(new TextDecoder().decode(index)).weight_map;
    } catch (e) {
      throw new HubError(`${where(repo, revision, INDEX_FILE)} is not valid JSON (${String(e)})`);
    }
    if (!map || typeof map !== 'object') throw new HubError(`${where(repo, revision, INDEX_FILE)} has no weight_map object`);
    weightFiles = [...new Set(Object.values(map).map(String))];
    for (const f of weightFiles)
      if (!/^[\w.\-]+(\/[\w.\-]+)*$/.test(f) || f.split('/').includes('..')) throw new HubError(`${where(repo, revision, INDEX_FILE)} names a file ${f} that is not a plain relative path`);
    m.files.push({ path: INDEX_FILE, size: index.length, url: fileUrl(m, INDEX_FILE), prefix: index });
  } else {
    weightFiles = [SINGLE_FILE];
  }
  m.files.push(...(await pool(weightFiles, 4, (f) => readHeader(m, f, signal))));

  // Tokenizer files: which exist and how big (HEAD; an absent file is not an error).
  const tok = await pool(TOKENIZER_FILES, 4, async (f): Promise<HubFile | null> => {
    const url = fileUrl(m, f);
    let res: Response;
    try {
      res = await fetch(url, { method: 'HEAD', signal, cache: 'no-store' });
    } catch (e) {
      if (e instanceof DOMException && e.name === 'AbortError') throw e;
      return null;
    }
    if (!res.ok) return null;
    const size = Number(res.headers.get('x-linked-size') ?? res.headers.get('content-length') ?? NaN);
    if (!Number.isFinite(size) || size < 0) throw new HubError(`${where(repo, revision, f)}: the server did not say its size (Content-Length)`);
    return { path: f, size, url };
  });
  for (const t of tok) if (t) m.files.push(t);
  return m;
}

/** A Hub model as the engine's `plan_merge` argument (`{name, files: [{path, size, prefix}]}`). */
export function planInput(name: string, m: HubModel): { name: string; files: { path: string; size: number; prefix?: Uint8Array }[] } {
  return { name, files: m.files.map((f) => ({ path: f.path, size: f.size, prefix: f.prefix })) };
}

// ---------------------------------------------------------------------------------------------
// Whole models for the Generate tab (additive: the Merge tab downloads what its plan needs).

/** Files the Generate tab loads beside the weights: tokenizer.json (needed) and these when present. */
export const GENERATE_EXTRA_FILES = ['tokenizer_config.json', 'generation_config.json'];

/** Every file of `m` the engine's `Generator.from_hf` reads: config.json, the index (sharded), the
 * weight files, tokenizer.json, and tokenizer_config.json / generation_config.json when the repo
 * has them. Throws a HubError naming the repo when tokenizer.json is missing. */
export function generateFiles(m: HubModel): HubFile[] {
  const tok = m.files.find((f) => f.path === 'tokenizer.json');
  if (!tok) throw new HubError(`${where(m.repo, m.revision, 'tokenizer.json')} was not found: the Generate tab needs the model's tokenizer.json`);
  return m.files.filter((f) => f.path === 'config.json' || f.path === INDEX_FILE || f.path.endsWith('.safetensors') || f.path === 'tokenizer.json' || GENERATE_EXTRA_FILES.includes(f.path));
}

/** A file whose bytes the page already holds whole (config.json, the index), not just a header. */
const heldWhole = (f: HubFile) => f.prefix !== undefined && f.prefix.length === f.size && !f.path.endsWith('.safetensors');

/**
 * The bytes of `files` that are neither held in memory nor in the download cache.
 */
export async function bytesToDownload(files: HubFile[]): Promise<number> {
  let n = 0;
  for (const f of files) if (!heldWhole(f) && !(await cachedBlob(f.url, f.size))) n += f.size;
  return n;
}

/**
 * `files` of `m` as `File`s for the engine (path → File): JSON files already read come from
 * memory, cached files from Cache Storage (cache.ts), the rest are downloaded into the cache one
 * after the other. `onProgress(done, total, file)`: bytes downloaded so far of the bytes to
 * download. Cancel through `signal` (an AbortError; the file being downloaded is not kept).
 */
export async function fetchHubFiles(m: HubModel, files: HubFile[], signal: AbortSignal, onProgress: (done: number, total: number, file: string) => void): Promise<Map<string, File>> {
  const out = new Map<string, File>();
  const todo: HubFile[] = [];
  for (const f of files) {
    if (heldWhole(f)) out.set(f.path, new File([f.prefix as Uint8Array<ArrayBuffer>], f.path));
    else {
      const blob = await cachedBlob(f.url, f.size);
      if (blob) out.set(f.path, new File([blob], f.path));
      else todo.push(f);
    }
  }
  const total = todo.reduce((a, f) => a + f.size, 0);
  let done = 0;
  onProgress(0, total, todo[0]?.path ?? '');
  for (const f of todo) {
    if (signal.aborted) throw new DOMException('download cancelled', 'AbortError');
    const blob = await downloadToCache(f.url, f.size, where(m.repo, m.revision, f.path), signal, (n) => {
      done += n;
      onProgress(done, total, f.path);
    });
    out.set(f.path, new File([blob], f.path));
  }
  return out;
}

/** A GGUF file of a hub repo, named by the user: its size and the commit its revision resolves to
 * (from a Range read of its first 8 bytes, which must be the GGUF magic and a version). The file
 * is downloaded on Load like the safetensors ones (`fetchHubFiles`). */
export async function loadHubGguf(base: string, repo: string, revision: string, file: string, signal?: AbortSignal): Promise<HubModel> {
  const bad = checkRepoId(repo) ?? checkRevision(revision);
  if (bad) throw new HubError(bad);
  if (!/^[\w.\-]+(\/[\w.\-]+)*\.gguf$/.test(file) || file.split('/').includes('..'))
    throw new HubError(`${file} is not a GGUF file name in the repo (a plain relative path ending in .gguf)`);
  const m: HubModel = { repo, revision, commit: null, base, files: [] };
  const first = await fetchRange(m, file, 0, 7, signal);
  if (new TextDecoder().decode(first.bytes.subarray(0, 4)) !== 'GGUF') throw new HubError(`${where(repo, revision, file)} is not a GGUF file (no GGUF magic)`);
  m.commit = first.commit ?? null;
  m.files.push({ path: file, size: first.total, url: fileUrl(m, file) });
  return m;
}

/** The first `len` bytes (at most the whole file) of `file` of `m`, by one Range request. */
export async function readHubPrefix(m: HubModel, file: string, len: number, signal?: AbortSignal): Promise<Uint8Array> {
  const size = m.files.find((f) => f.path === file)?.size ?? len;
  return (await fetchRange(m, file, 0, Math.min(len, size) - 1, signal)).bytes;
}
