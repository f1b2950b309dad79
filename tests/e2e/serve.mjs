// A tiny static file server for dist/ (no dependencies): the e2e tests serve the built page on a
// free localhost port, exactly as a user's `npm start` would.
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createReadStream, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, normalize, resolve, sep } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};

/** Serve `dir` on 127.0.0.1 at a free port. Resolves to { url, close() }. */
export function serve(dir) {
  const root = resolve(dir);
  const server = createServer((req, res) => {
    let path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (path.endsWith('/')) path += 'index.html';
    const file = normalize(join(root, path));
    if (file !== root && !file.startsWith(root + sep)) {
      res.writeHead(403).end();
      return;
    }
    let st;
    try {
      st = statSync(file);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    if (!st.isFile()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'content-length': st.size, 'cache-control': 'no-store' });
    createReadStream(file).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      ok({ url: `http://127.0.0.1:${port}/`, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

// `node tests/e2e/serve.mjs [DIR]`: serve a folder by hand.
if (import.meta.url === `file://${process.argv[1]}`) {
  const { url } = await serve(process.argv[2] ?? 'dist');
  console.log(`serving at ${url}`);
}

/** Headless Chromium as every e2e file runs it: the system's (or $CHROMIUM), WebGPU enabled
 * (SwiftShader when there is no GPU), no background traffic. */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
  });
}

/** The set-up every e2e file shares, as node:test `before` / `after` hooks: check that dist/ and
 * the files in `requires` ([path, how to make it] pairs) exist, make a scratch folder named
 * `prefix…`, serve `dist`, run `extra(state)` (another server, links in the scratch folder; it may
 * return an async closer), launch Chromium, then hand `{ server, browser, work }` to `ready`.
 * `after` closes all of it and removes the scratch folder. */
export function e2eSuite({ dist, prefix, requires = [], extra }, ready) {
  const state = {};
  before(async () => {
    assert.ok(existsSync(join(dist, 'index.html')), `${dist} is missing: run \`npm run build\` (scripts/test.sh does) first`);
    for (const [path, hint] of requires) assert.ok(existsSync(path), `${path} is missing: ${hint}`);
    state.work = mkdtempSync(join(tmpdir(), prefix));
    state.server = await serve(dist);
    state.closeExtra = await extra?.(state);
    state.browser = await launchChromium();
    ready(state);
  });
  after(async () => {
    await state.browser?.close();
    await state.server?.close();
    await state.closeExtra?.();
    if (state.work) rmSync(state.work, { recursive: true, force: true });
  });
}

/** A fresh browser context and page on `url`, collecting uncaught page errors, once `readySelector`
 * is on the page (the engine's ready state by default). */
export async function openPage(browser, url, contextOptions = {}, readySelector = '#engine-status[data-state="ready"]') {
  const context = await browser.newContext(contextOptions);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector(readySelector, { timeout: 30_000 });
  return { page, context, errors };
}
