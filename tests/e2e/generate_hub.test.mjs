// End-to-end tests of Hugging Face Hub models in the Generate tab (web/src/generate.ts, hub.ts,
// load-budget.ts) against the built page (dist/) and the local hub-like server (hub_server.mjs).
// The page is pointed at it with `?hub=URL`.
//
// References: the same fixture model loaded from local files in the same page (greedy ids must be
// equal: the hub path hands the engine the same bytes without a round trip through disk); the
// fixture files themselves for the preview's parameters and bytes to download; the hub server's
// request log for "nothing before the click" and "only headers before Load".
//
// Needs: `npm run build`.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { e2eSuite, openPage } from './serve.mjs';
import { repoCommit, serveHub } from './hub_server.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = resolve(process.env.CRUCIBLE_DIST ?? join(ROOT, 'dist'));
// A tiny Llama (4 layers, hidden 16, vocab 64, word-level tokenizer) and a tiny Mixtral in BF16
// shards (+ the tiny Mixtral's tokenizer): made by scripts/fixtures/*.py.
const BASE = join(ROOT, 'tests/fixtures/merge/models/base');
const MIXTRAL_SHARDED = join(ROOT, 'tests/fixtures/moe/mixtral_bf16_sharded');
const MIXTRAL_TOKENIZER = join(ROOT, 'tests/fixtures/moe/mixtral/tokenizer.json');
const MIXTRAL_F16 = join(ROOT, 'tests/fixtures/moe/mixtral_f16');
const PROMPT = 'the merge model';
// The real SmolLM2-135M-Instruct Q4_1 (scripts/fetch_models.sh), served as a GGUF-only repo: greedy
// ` Paris` = ids 7042 30 (llama.cpp / transformers, as in generate.test.mjs).
const SMOL = join(ROOT, '.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf');
const SMOL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';

let server, hub, browser, work, shardedDir;

/** A safetensors file whose header claims `tensors` ({name: [dtype, shape]}) over `data` bytes. */
function safetensors(tensors, data = 16) {
  let off = 0;
  const header = {};
  for (const [name, [dtype, shape]] of Object.entries(tensors)) {
    header[name] = { dtype, shape, data_offsets: [off, off + 4] };
    off += 4;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, Buffer.alloc(Math.max(data, off))]);
}

/** A GGUF v3 header (ggml docs/gguf.md): `general.architecture` = llama and one F32 tensor of
 * `dims` (innermost first), and nothing after it. */
function ggufHeader(dims) {
  const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
  const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
  const str = (t) => Buffer.concat([u64(Buffer.byteLength(t)), Buffer.from(t)]);
  return Buffer.concat([
    Buffer.from('GGUF'), u32(3), u64(1), u64(1),
    str('general.architecture'), u32(8), str('llama'),
    str('blk.0.ffn_up.weight'), u32(dims.length), ...dims.map(u64), u32(0), u64(0),
  ]);
}

/** The base fixture's config with a header claiming a 1.5 B-parameter f32 model (6 GiB as loaded). */
const HUGE = {
  'config.json': readFileSync(join(BASE, 'config.json')),
  'model.safetensors': safetensors({ 'model.embed_tokens.weight': ['F32', [64, 16]], 'model.layers.0.mlp.up_proj.weight': ['F32', [196608, 8192]] }),
  'tokenizer.json': readFileSync(join(BASE, 'tokenizer.json')),
};

e2eSuite(
  {
    dist: DIST,
    prefix: 'crucible-genhub-e2e-',
    requires: [[SMOL, 'run scripts/fetch_models.sh (npm run setup does) first']],
    extra: async ({ work: w }) => {
      // The sharded BF16 Mixtral with a tokenizer, and the huge header, as local folders too.
      shardedDir = join(w, 'mixtral_sharded');
      mkdirSync(shardedDir);
      for (const f of ['config.json', 'model.safetensors.index.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'])
        writeFileSync(join(shardedDir, f), readFileSync(join(MIXTRAL_SHARDED, f)));
      writeFileSync(join(shardedDir, 'tokenizer.json'), readFileSync(MIXTRAL_TOKENIZER));
      mkdirSync(join(w, 'huge'));
      for (const [f, b] of Object.entries(HUGE)) writeFileSync(join(w, 'huge', f), b);
      hub = await serveHub(
        {
          'tiny/mixtral-f16': { 'config.json': readFileSync(join(MIXTRAL_F16, 'config.json')), 'model.safetensors': readFileSync(join(MIXTRAL_F16, 'model.safetensors')), 'tokenizer.json': readFileSync(MIXTRAL_TOKENIZER) },
          'tiny/base': BASE, 'tiny/mixtral-sharded': shardedDir, 'slow/base': BASE, 'bad/huge': HUGE, 'gguf/smollm2': { [SMOL_FILE]: readFileSync(SMOL), 'README.md': Buffer.from('# SmolLM2 GGUF\n') } },
        { slow: { 'slow/base': { chunk: 1024, delayMs: 80 } } },
      );
      return () => hub.close();
    },
  },
  (s) => ({ server, browser, work } = s),
);

async function newPage(url = `${server.url}?hub=${encodeURIComponent(hub.url)}`) {
  const opened = await openPage(browser, url);
  await opened.page.click('#tab-generate');
  await opened.page.waitForSelector('#generate-tab[data-ready="true"]', { timeout: 30_000 });
  return opened;
}

/** Read repo@revision (its GGUF file `gguf` if given) with the hub form; resolves once the status says ok or error. */
async function readHub(page, repo, revision = 'main', gguf = '') {
  await page.evaluate(() => (document.querySelector('#gen-hub-status').className = 'gen-run-status'));
  await page.fill('#gen-hub-repo', repo);
  await page.fill('#gen-hub-revision', revision);
  await page.fill('#gen-hub-gguf', gguf);
  await page.click('#gen-hub-read');
  await page.waitForSelector('#gen-hub-status.ok, #gen-hub-status.error', { timeout: 20_000 });
  return { ok: (await page.getAttribute('#gen-hub-status', 'class')).includes('ok'), text: await page.textContent('#gen-hub-status') };
}

/** Wait for `n` slots to be loaded (ready), failing with the status of one that errs. */
async function slotsReady(page, n) {
  await page.waitForFunction((k) => {
    const s = [...document.querySelectorAll('.gen-slot')];
    return s.some((x) => x.dataset.state === 'error') || (s.length === k && s.every((x) => x.dataset.state === 'ready'));
  }, n, { timeout: 60_000 });
  const bad = await page.$$eval('.gen-slot[data-state="error"] .gen-status', (e) => e.map((x) => x.textContent));
  assert.deepEqual(bad, []);
  // The estimate made from the headers before the load = the engine's own count of the weights it holds.
  // And the estimated peak bounds the worker's WebAssembly memory after the load (which never
  // shrinks, so it is the load's own peak).
  for (const s of await page.$$eval('.gen-slot', (ss) => ss.map((x) => ({ name: x.querySelector('.gen-name').textContent, est: x.dataset.estHeld, engine: x.dataset.weightBytes, peak: Number(x.dataset.estPeak), wasm: Number(x.dataset.wasmBytes) })))) {
    assert.equal(s.est, s.engine, `${s.name}: estimated weights ${s.est} B, the engine holds ${s.engine} B`);
    assert.ok(s.wasm > 0 && s.wasm <= s.peak, `${s.name}: WebAssembly memory ${s.wasm} B after loading, over the estimated peak ${s.peak} B`);
    if (process.env.CRUCIBLE_PRINT_MEMORY) console.log(`memory ${s.name}: estimated peak ${s.peak} B, wasm after load ${s.wasm} B, weights ${s.engine} B`);
  }
}

/** Greedy generation of `max` tokens in every slot; resolves to each slot's name and ids. */
async function greedyIds(page, max) {
  await page.check('#gen-greedy');
  await page.fill('#gen-max-tokens', String(max));
  await page.fill('#gen-prompt', PROMPT);
  await page.click('#gen-run');
  await page.waitForFunction(() => [...document.querySelectorAll('.gen-slot')].every((s) => s.dataset.reason), null, { timeout: 60_000 });
  return page.$$eval('.gen-slot', (ss) => ss.map((s) => ({ name: s.querySelector('.gen-name').textContent, ids: (s.dataset.ids ?? '').split(',').filter(Boolean).map(Number) })));
}

const cachedPaths = (page) => page.evaluate(async () => ((await caches.has('crucible-hub-v1')) ? (await (await caches.open('crucible-hub-v1')).keys()).map((r) => new URL(r.url).pathname) : []));
const numel = (shape) => shape.reduce((a, b) => a * b, 1);
function headerParams(path) {
  const b = readFileSync(path);
  const j = JSON.parse(b.subarray(8, 8 + Number(b.readBigUInt64LE(0))).toString());
  delete j.__metadata__;
  return Object.values(j).reduce((a, t) => a + numel(t.shape), 0);
}
const size = (p) => statSync(p).size;

describe('Hub models in the Generate tab', () => {
  it('previews from headers only, loads from the cache-backed download, and generates what the local files generate (single file and BF16 shards)', async () => {
    const { page, context, errors } = await newPage();
    await page.selectOption('#gen-backend', 'cpu');
    const r = await readHub(page, 'tiny/base');
    assert.ok(r.ok, r.text);
    // Before Load: parameters from the header, download = weights + tokenizer files; the only
    // safetensors requests were Range reads of the header.
    assert.equal(Number(await page.getAttribute('#gen-hub-preview', 'data-params')), headerParams(join(BASE, 'model.safetensors')));
    const download = size(join(BASE, 'model.safetensors')) + size(join(BASE, 'tokenizer.json')) + size(join(BASE, 'tokenizer_config.json'));
    assert.equal(Number(await page.getAttribute('#gen-hub-preview', 'data-download')), download);
    assert.match(await page.textContent('#gen-hub-info'), /tiny\/base@main \(commit [0-9a-f]{12}\): .* parameters · download .* · needs about .* of the browser's 4\.0 GiB WebAssembly memory/);
    const weightGets = () => hub.log.filter((e) => e.method === 'GET' && e.url.endsWith('.safetensors'));
    assert.ok(weightGets().every((e) => e.range !== null && e.status === 206), JSON.stringify(weightGets()));

    await page.click('#gen-hub-load');
    await slotsReady(page, 1);
    assert.equal(await page.textContent('.gen-slot .gen-name'), 'tiny/base@main');
    // Each file was downloaded whole once, at the pinned commit, and is now in the cache.
    const at = (f) => `/tiny/base/resolve/${repoCommit('tiny/base')}/${f}`;
    const want = ['model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].map(at).sort();
    assert.deepEqual((await cachedPaths(page)).filter((p) => p.startsWith('/tiny/base/')).sort(), want);
    assert.deepEqual(hub.log.filter((e) => e.method === 'GET' && e.range === null && e.status === 200 && e.url.startsWith('/tiny/base/') && e.url !== '/tiny/base/resolve/main/config.json').map((e) => e.url).sort(), want);

    // The same model from local files, beside it.
    await page.setInputFiles('#gen-folder-input', BASE);
    await slotsReady(page, 2);
    const [h, l] = await greedyIds(page, 8);
    assert.equal(l.name, 'base');
    assert.ok(h.ids.length > 0, 'the hub model generated nothing');
    assert.deepEqual(h.ids, l.ids, 'hub and local files give different greedy ids');

    // Read again: every file is cached, nothing to download; loading it downloads nothing.
    const before = hub.log.length;
    assert.ok((await readHub(page, 'tiny/base')).ok);
    assert.equal(await page.getAttribute('#gen-hub-preview', 'data-download'), '0');
    await page.click('.gen-slot[data-slot] .gen-remove >> nth=1');
    await page.click('#gen-hub-load');
    await slotsReady(page, 2);
    assert.deepEqual(hub.log.slice(before).filter((e) => e.method === 'GET' && e.range === null && e.url.endsWith('.safetensors')), []);

    // A sharded BF16 Mixtral (index + 2 shards) from the hub and from the folder: same ids.
    for (const b of await page.$$('.gen-slot .gen-remove')) await b.click();
    assert.ok((await readHub(page, 'tiny/mixtral-sharded')).ok);
    const shardParams = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'].reduce((a, f) => a + headerParams(join(shardedDir, f)), 0);
    assert.equal(Number(await page.getAttribute('#gen-hub-preview', 'data-params')), shardParams);
    await page.click('#gen-hub-load');
    await slotsReady(page, 1);
    await page.setInputFiles('#gen-folder-input', shardedDir);
    await slotsReady(page, 2);
    const [hs, ls] = await greedyIds(page, 6);
    assert.ok(hs.ids.length > 0);
    assert.deepEqual(hs.ids, ls.ids);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('an F16 checkpoint: the estimate counts its matrices as the engine keeps them (F16, 2 bytes each)', async () => {
    const { page, context, errors } = await newPage();
    await page.selectOption('#gen-backend', 'cpu');
    assert.ok((await readHub(page, 'tiny/mixtral-f16')).ok);
    await page.click('#gen-hub-load');
    await slotsReady(page, 1); // asserts estimated held bytes = the engine's weight_bytes
    assert.match(await page.textContent('.gen-slot .gen-info'), /F16 weights/);
    const [r] = await greedyIds(page, 4);
    assert.ok(r.ids.length > 0);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('Cancel mid-download keeps nothing of the model in the cache and loads nothing', async () => {
    const { page, context, errors } = await newPage();
    assert.ok((await readHub(page, 'slow/base')).ok);
    await page.click('#gen-hub-load');
    await page.waitForFunction(() => /downloading model\.safetensors · /.test(document.querySelector('#gen-hub-progress-text')?.textContent ?? ''), null, { timeout: 20_000 });
    const slowGet = () => hub.log.find((e) => e.url === `/slow/base/resolve/${repoCommit('slow/base')}/model.safetensors` && e.range === null);
    for (let i = 0; i < 100 && !(slowGet()?.sent > 4096); i++) await new Promise((r) => setTimeout(r, 50));
    await page.click('#gen-hub-cancel');
    await page.waitForFunction(() => /Download cancelled/.test(document.querySelector('#gen-hub-status')?.textContent ?? ''), null, { timeout: 10_000 });
    const got = slowGet();
    assert.ok(got && got.sent > 0 && got.sent < size(join(BASE, 'model.safetensors')), `cancelled mid-file: ${JSON.stringify(got)}`);
    assert.deepEqual((await cachedPaths(page)).filter((p) => p.startsWith('/slow/')), []);
    assert.equal(await page.locator('.gen-slot').count(), 0);
    assert.equal(await page.isDisabled('#gen-hub-load'), false, 'Load can be clicked again');
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('a model too big for the browser is refused before any download, naming the model, the estimate and the budget (hub and local folder)', async () => {
    const { page, context, errors } = await newPage();
    // A repo id that is HTML is refused, shown as text.
    const evil = '<img src=x onerror="window.__pwned=1">';
    const e = await readHub(page, evil);
    assert.ok(!e.ok && e.text.includes(evil), e.text);
    assert.equal(await page.locator('img').count(), 0);
    const r = await readHub(page, 'bad/huge');
    assert.ok(!r.ok);
    assert.match(r.text, /^bad\/huge@main is too big for the browser: loading it needs about \d+\.\d GiB of WebAssembly memory .* over the 4\.0 GiB a page can have .* To run it: .*smaller model\.$/);
    assert.equal(await page.isDisabled('#gen-hub-load'), true);
    assert.deepEqual(hub.log.filter((e) => e.url.startsWith('/bad/huge/') && e.method === 'GET' && e.range === null && e.url.endsWith('.safetensors')), []);
    // Quantize on load to Q4_0 would hold less, but the f32 weights are read first: still refused, and the message says why.
    await page.selectOption('#gen-quantize', 'q4_0');
    assert.match(await page.textContent('#gen-hub-status'), /too big for the browser: .*after quantize-on-load.*quantize-on-load does not help here/);
    // The same header as a local folder: refused by the same check, before the engine sees it.
    await page.selectOption('#gen-quantize', '');
    await page.setInputFiles('#gen-folder-input', join(work, 'huge'));
    await page.waitForSelector('#gen-run-status.error');
    assert.match(await page.textContent('#gen-run-status'), /^huge is too big for the browser: loading it needs about \d+\.\d GiB/);
    // A local GGUF whose header claims 1.6 G f32 weights: the same check, from its tensor infos.
    const gguf = join(work, 'huge.gguf');
    writeFileSync(gguf, ggufHeader([8192, 196608]));
    await page.evaluate(() => (document.querySelector('#gen-run-status').className = 'gen-run-status'));
    await page.setInputFiles('#gen-gguf-input', gguf);
    await page.waitForSelector('#gen-run-status.error');
    assert.match(await page.textContent('#gen-run-status'), /^huge\.gguf is too big for the browser: loading it needs about \d+\.\d GiB of WebAssembly memory \(6\.0 GiB of weights as loaded/);
    assert.equal(await page.locator('.gen-slot').count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('a share link names the hub model and reads nothing from the hub before the click; the click loads the same model', async () => {
    const a = await newPage();
    await a.page.selectOption('#gen-backend', 'cpu');
    assert.ok((await readHub(a.page, 'tiny/base')).ok);
    await a.page.click('#gen-hub-load');
    await slotsReady(a.page, 1);
    const [ref] = await greedyIds(a.page, 8);
    await a.page.waitForFunction(() => /^The address bar holds/.test(document.querySelector('#share-status')?.textContent ?? ''), null, { timeout: 10_000 });
    await a.page.waitForTimeout(600);
    const link = await a.page.inputValue('#share-link');
    assert.match(link, /#v=1&s=/);
    await a.context.close();

    const seen = hub.log.length;
    const b = await newPage(link);
    const btn = b.page.locator('#gen-link-models button.gen-link-hub');
    await btn.waitFor();
    assert.equal(await btn.textContent(), '+ tiny/base@main from the hub');
    assert.equal(await b.page.inputValue('#gen-backend'), 'cpu');
    await b.page.waitForTimeout(500);
    assert.deepEqual(hub.log.slice(seen), [], 'the link made requests before the click');
    await btn.click();
    await b.page.waitForSelector('#gen-hub-status.ok, #gen-hub-status.error', { timeout: 20_000 });
    assert.match(await b.page.getAttribute('#gen-hub-status', 'class'), /ok/, await b.page.textContent('#gen-hub-status'));
    await b.page.click('#gen-hub-load');
    await slotsReady(b.page, 1);
    const [got] = await greedyIds(b.page, 8);
    assert.deepEqual(got.ids, ref.ids);
    assert.deepEqual(b.errors, []);
    await b.context.close();
  });

  it('a GGUF file of a hub repo (SmolLM2-135M Q4_1): header by Range, then downloaded once, greedy " Paris"', async () => {
    const { page, context, errors } = await newPage();
    await page.selectOption('#gen-backend', 'cpu');
    let r = await readHub(page, 'gguf/smollm2', 'main', 'missing.gguf');
    assert.ok(!r.ok);
    assert.match(r.text, /gguf\/smollm2@main: missing\.gguf was not found/);
    r = await readHub(page, 'gguf/smollm2', 'main', SMOL_FILE);
    assert.ok(r.ok, r.text);
    // gguf-py: 134 515 008 elements; nothing but Range reads of the header so far.
    assert.equal(Number(await page.getAttribute('#gen-hub-preview', 'data-params')), 134515008);
    assert.equal(Number(await page.getAttribute('#gen-hub-preview', 'data-download')), size(SMOL));
    const gets = hub.log.filter((e) => e.url.startsWith('/gguf/smollm2/') && e.url.endsWith(SMOL_FILE) && e.method === 'GET');
    assert.ok(gets.length > 0 && gets.every((e) => e.range !== null && e.status === 206), JSON.stringify(gets));
    assert.ok(gets.reduce((a, e) => a + e.sent, 0) < 16 << 20, 'more than the header was read');
    await page.click('#gen-hub-load');
    await slotsReady(page, 1);
    assert.equal(await page.textContent('.gen-slot .gen-name'), `gguf/smollm2@main/${SMOL_FILE}`);
    assert.match(await page.textContent('.gen-slot .gen-info'), /Q4_1/);
    await page.check('#gen-greedy');
    await page.fill('#gen-max-tokens', '2');
    await page.fill('#gen-prompt', 'The capital of France is');
    await page.click('#gen-run');
    await page.waitForSelector('.gen-slot[data-reason]', { timeout: 60_000 });
    assert.equal(await page.getAttribute('.gen-slot', 'data-ids'), '7042,30');
    // After a 256-token prompt (the logits the estimate counts), memory is still under the estimated peak.
    await page.fill('#gen-max-tokens', '1');
    await page.fill('#gen-prompt', Array(256).fill('the').join(' '));
    await page.evaluate(() => delete document.querySelector('.gen-slot').dataset.reason);
    await page.click('#gen-run');
    await page.waitForSelector('.gen-slot[data-reason]', { timeout: 120_000 });
    const mem = await page.$eval('.gen-slot', (x) => ({ wasm: Number(x.dataset.wasmBytes), peak: Number(x.dataset.estPeak) }));
    assert.ok(mem.wasm <= mem.peak, JSON.stringify(mem));
    if (process.env.CRUCIBLE_PRINT_MEMORY) console.log(`memory SmolLM2 after a 256-token prompt: ${mem.wasm} B of the estimated ${mem.peak} B`);
    const whole = hub.log.filter((e) => e.url === `/gguf/smollm2/resolve/${repoCommit('gguf/smollm2')}/${SMOL_FILE}` && e.range === null);
    assert.equal(whole.length, 1);
    assert.deepEqual((await cachedPaths(page)).filter((p) => p.startsWith('/gguf/')), [`/gguf/smollm2/resolve/${repoCommit('gguf/smollm2')}/${SMOL_FILE}`]);
    assert.deepEqual(errors, []);
    await context.close();
  });
});
