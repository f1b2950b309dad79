// A local stand-in for the Hugging Face Hub (no dependencies): serves repos at
// `/{repo}/resolve/{revision}/{file}` the way huggingface.co does for the page —
//   - GET and HEAD, with single-range `Range: bytes=a-b` / `bytes=a-` answered 206 + Content-Range
//     (416 when unsatisfiable), Accept-Ranges, Content-Length;
//   - CORS: `Access-Control-Allow-Origin: *`, preflight (OPTIONS) allowing the Range header, and
//     Content-Range / Content-Length / X-Error-Code exposed to the page;
//   - `X-Repo-Commit` on every file answer: the commit `main` resolves to (a fixed hash per repo,
//     `repoCommit(repo)`); that hash is accepted as a revision too;
//   - errors as the Hub sends them: 401 + `X-Error-Code: RepoNotFound` for an unknown repo,
//     404 + RevisionNotFound for an unknown revision, 404 + EntryNotFound for a missing file.
// Reference: huggingface_hub `file_download.py` (`hf_hub_url`, the resolve endpoint, HEAD for
// metadata) and `utils/_http.py` (`hf_raise_for_status`: the X-Error-Code values).
//
// Knobs for tests: `noRange` (repos whose server ignores Range and answers 200), `slow` (repos
// whose GETs without Range trickle out `chunk` bytes every `delayMs`), and `log` (every request:
// method, url, range, status, bytes of body sent).
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** The commit `main` of `repo` resolves to on this server (40 hex digits, fixed per repo id). */
export const repoCommit = (repo) => createHash('sha1').update(`crucible-test-hub:${repo}`).digest('hex');

/**
 * `repos`: repo id (`owner/name`) → a folder (every file in it) or an object file name → Buffer.
 * Revisions: `main` and its commit. Resolves to { url, close(), log, opts }.
 */
export function serveHub(repos, opts = {}) {
  const files = new Map();
  for (const [repo, src] of Object.entries(repos)) {
    const m = new Map();
    if (typeof src === 'string') {
      for (const f of readdirSync(src)) if (statSync(join(src, f)).isFile()) m.set(f, readFileSync(join(src, f)));
    } else {
      for (const [f, b] of Object.entries(src)) m.set(f, Buffer.from(b));
    }
    files.set(repo, m);
  }
  const log = [];
  const cors = {
    'access-control-allow-origin': '*',
    'access-control-expose-headers': 'Content-Range, Content-Length, Accept-Ranges, X-Error-Code, X-Error-Message, X-Repo-Commit, ETag',
  };
  const server = createServer((req, res) => {
    const entry = { method: req.method, url: req.url, range: req.headers.range ?? null, status: 0, sent: 0 };
    log.push(entry);
    const end = (status, headers = {}, body) => {
      entry.status = status;
      res.writeHead(status, { ...cors, ...headers });
      res.end(body);
    };
    if (req.method === 'OPTIONS') {
      return end(204, { 'access-control-allow-methods': 'GET, HEAD, OPTIONS', 'access-control-allow-headers': 'Range, Content-Type', 'access-control-max-age': '600' });
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return end(405);
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      return end(400);
    }
    const m = /^\/([^/]+\/[^/]+|[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (!m) return end(404, { 'x-error-code': 'EntryNotFound', 'content-type': 'text/plain' }, 'not a resolve URL');
    const [, repo, revision, file] = m;
    const repoFiles = files.get(repo);
    if (!repoFiles) return end(401, { 'x-error-code': 'RepoNotFound', 'content-type': 'text/plain' }, 'Repository Not Found');
    if (revision !== 'main' && revision !== repoCommit(repo)) return end(404, { 'x-error-code': 'RevisionNotFound', 'content-type': 'text/plain' }, 'Revision Not Found');
    const body = repoFiles.get(file);
    if (!body) return end(404, { 'x-error-code': 'EntryNotFound', 'content-type': 'text/plain' }, 'Entry not found');
    const size = body.length;
    const head = req.method === 'HEAD';
    res.setHeader('x-repo-commit', repoCommit(repo));
    const range = req.headers.range;
    if (range && !(opts.noRange ?? []).includes(repo)) {
      const r = /^bytes=(\d+)-(\d*)$/.exec(range.trim());
      const a = r ? Number(r[1]) : NaN;
      const b = r ? (r[2] === '' ? size - 1 : Math.min(Number(r[2]), size - 1)) : NaN;
      if (!r || a > b || a >= size) return end(416, { 'content-range': `bytes */${size}` });
      const part = body.subarray(a, b + 1);
      entry.sent = head ? 0 : part.length;
      return end(206, { 'content-range': `bytes ${a}-${b}/${size}`, 'content-length': String(part.length), 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' }, head ? undefined : part);
    }
    const headers = { 'content-length': String(size), 'accept-ranges': (opts.noRange ?? []).includes(repo) ? 'none' : 'bytes', 'content-type': 'application/octet-stream' };
    entry.status = 200;
    if (head) {
      res.writeHead(200, { ...cors, ...headers });
      return res.end();
    }
    const slow = opts.slow?.[repo];
    if (!slow) {
      entry.sent = size;
      res.writeHead(200, { ...cors, ...headers });
      return res.end(body);
    }
    // Trickle: `chunk` bytes every `delayMs`, stopping when the client goes away.
    res.writeHead(200, { ...cors, ...headers });
    let off = 0;
    const timer = setInterval(() => {
      if (res.destroyed) return clearInterval(timer);
      const part = body.subarray(off, off + slow.chunk);
      off += part.length;
      entry.sent += part.length;
      if (off >= size) {
        clearInterval(timer);
        res.end(part);
      } else res.write(part);
    }, slow.delayMs);
    res.on('close', () => clearInterval(timer));
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      ok({
        url: `http://127.0.0.1:${port}`,
        log,
        opts,
        close: () => new Promise((r) => {
          server.closeAllConnections?.();
          server.close(r);
        }),
      });
    });
  });
}

// `node tests/e2e/hub_server.mjs`: serve the merge fixtures as repos models/<name> by hand.
if (import.meta.url === `file://${process.argv[1]}`) {
  const root = new URL('../fixtures/merge/models/', import.meta.url).pathname;
  const repos = Object.fromEntries(readdirSync(root).map((d) => [`models/${d}`, join(root, d)]));
  const { url } = await serveHub(repos);
  console.log(`hub at ${url} (repos: ${Object.keys(repos).join(', ')})`);
}
