// Downloads of Hub files into Cache Storage (`caches`, the Service Worker cache API, usable from
// a page), keyed by the file's resolve URL (hub base, repo, revision, file).
//
// Nothing half-downloaded is ever kept: the response body is streamed straight into `cache.put`
// through a counting TransformStream; `cache.put` commits an entry only when the whole body was
// read without error (Service Workers spec, Cache.put: "if reading the body fails, reject and do
// not store"), and the counter errors the stream when the byte count differs from the size the
// header reads announced (a truncated or lying response). Cancel aborts the fetch, which errors
// the stream, so the put rejects and stores nothing; the entry is deleted again anyway in case a
// browser committed it. Only complete, length-checked responses are ever put.
//
// Reference: W3C Service Workers, §Cache (put/match/delete), §CacheStorage; WHATWG Streams
// (TransformStream); Storage Standard (navigator.storage.estimate).

/** Bump when the layout of an entry changes: older caches are then ignored and can be cleared. */
export const CACHE_NAME = 'crucible-hub-v1';
const SIZE_HEADER = 'x-crucible-size';

export function cacheAvailable(): boolean {
  return typeof caches !== 'undefined';
}

/** The cached file as a Blob (disk-backed), or null when absent or of the wrong size. */
export async function cachedBlob(url: string, size: number): Promise<Blob | null> {
  if (!cacheAvailable()) return null;
  const cache = await caches.open(CACHE_NAME);
  const res = await cache.match(url);
  if (!res) return null;
  if (Number(res.headers.get(SIZE_HEADER)) !== size) {
    await cache.delete(url);
    return null;
  }
  const blob = await res.blob();
  if (blob.size !== size) {
    await cache.delete(url);
    return null;
  }
  return blob;
}

export class DownloadError extends Error {}

/**
 * Download `url` (expected to be `size` bytes) into the cache and return it as a Blob.
 * `onBytes(n)` is called for every chunk received. `label` names the file in messages.
 */
export async function downloadToCache(url: string, size: number, label: string, signal: AbortSignal, onBytes: (n: number) => void): Promise<Blob> {
  let res: Response;
  try {
    res = await fetch(url, { signal, cache: 'no-store' });
  } catch (e) {
    if (signal.aborted) throw e;
    throw new DownloadError(`${label}: download failed (network error, or the server does not allow this page through CORS): ${String(e)}`);
  }
  if (!res.ok || !res.body) throw new DownloadError(`${label}: download failed: HTTP ${res.status} ${res.statusText}`);
  const announced = res.headers.get('content-length');
  if (announced !== null && Number(announced) !== size && !res.headers.get('content-encoding'))
    throw new DownloadError(`${label}: the server announces ${announced} bytes but the file's header reads said ${size}: the file changed on the hub, or the server is wrong; add the model again`);
  let got = 0;
  const counter = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, ctl) {
      got += chunk.byteLength;
      if (got > size) {
        ctl.error(new DownloadError(`${label}: received more than the expected ${size} bytes`));
        return;
      }
      onBytes(chunk.byteLength);
      ctl.enqueue(chunk);
    },
    flush(ctl) {
      if (got !== size) ctl.error(new DownloadError(`${label}: received ${got} of ${size} bytes: the download was cut short`));
    },
  });
  const body = res.body.pipeThrough(counter, { signal });
  if (!cacheAvailable()) {
    // No Cache Storage (an insecure origin): keep the file in memory only.
    const blob = await new Response(body).blob();
    if (blob.size !== size) throw new DownloadError(`${label}: received ${blob.size} of ${size} bytes`);
    return blob;
  }
  const cache = await caches.open(CACHE_NAME);
  try {
    await cache.put(url, new Response(body, { headers: { 'content-type': 'application/octet-stream', [SIZE_HEADER]: String(size) } }));
  } catch (e) {
    await cache.delete(url).catch(() => undefined);
    if (signal.aborted) throw new DOMException('download cancelled', 'AbortError');
    throw e instanceof DownloadError ? e : new DownloadError(`${label}: could not store the download in the browser's cache: ${String(e)}`);
  }
  if (got !== size) {
    await cache.delete(url);
    throw new DownloadError(`${label}: received ${got} of ${size} bytes`);
  }
  const blob = await cachedBlob(url, size);
  if (!blob) throw new DownloadError(`${label}: the browser's cache did not keep the file (storage full?)`);
  return blob;
}

/** What the cache holds: its entries and their bytes, and the origin's storage estimate. */
export async function cacheUsage(): Promise<{ files: number; bytes: number; usage?: number; quota?: number }> {
  let files = 0, bytes = 0;
  if (cacheAvailable() && (await caches.has(CACHE_NAME))) {
    const cache = await caches.open(CACHE_NAME);
    for (const req of await cache.keys()) {
      const res = await cache.match(req);
      files++;
      bytes += Number(res?.headers.get(SIZE_HEADER) ?? 0);
    }
  }
  let usage: number | undefined, quota: number | undefined;
  try {
    const est = await navigator.storage?.estimate?.();
    usage = est?.usage;
    quota = est?.quota;
  } catch {
    // no estimate
  }
  return { files, bytes, usage, quota };
}

/** The cached URLs (tests and the settings list). */
export async function cachedUrls(): Promise<string[]> {
  if (!cacheAvailable() || !(await caches.has(CACHE_NAME))) return [];
  const cache = await caches.open(CACHE_NAME);
  return (await cache.keys()).map((r) => r.url);
}

/** Delete this version's cache and any older `crucible-hub-*` ones. */
export async function clearCache(): Promise<void> {
  if (!cacheAvailable()) return;
  for (const k of await caches.keys()) if (k.startsWith('crucible-hub-')) await caches.delete(k);
}
