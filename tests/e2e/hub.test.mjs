// End-to-end tests of Hugging Face Hub sources in the Merge tab, against the built page (dist/)
// and a local hub-like server (hub_server.mjs) serving the merge fixtures as repos `models/<name>`.
// The page is pointed at it with `?hub=URL`. References: the native CLI (`crucible merge`) on the
// same recipe with the local folders; the fixture files themselves for the plan's numbers.
//
// Needs: `npm run build` and the CLI binary (target/debug/crucible or $CRUCIBLE_BIN).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';

import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { e2eSuite, openPage } from './serve.mjs';
import { repoCommit, serveHub } from './hub_server.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FIX = join(ROOT, 'tests/fixtures/merge');
const DIST = join(ROOT, 'dist');
const CLI = process.env.CRUCIBLE_BIN ?? join(resolve(ROOT, process.env.CARGO_TARGET_DIR ?? 'target'), 'debug/crucible');

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');
const fixture = (model, file) => join(FIX, 'models', model, file);
const size = (model, file) => statSync(fixture(model, file)).size;

/** A safetensors file's header: its JSON (tensors only) and the header's byte length (8 + N). */
function header(path) {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const json = JSON.parse(buf.subarray(8, 8 + n).toString());
  delete json.__metadata__;
  return { tensors: json, prefix: 8 + n };
}

let server, hub, browser, work;

/** A folder of files as repo content, with `edit(files)` applied (a Buffer per file name). */
function repoOf(model, edit = (f) => f) {
  const files = {};
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) files[f] = readFileSync(fixture(model, f));
  return edit(files);
}

e2eSuite(
  {
    dist: DIST,
    prefix: 'crucible-hub-e2e-',
    requires: [[CLI, 'run `cargo build -p crucible --bin crucible` first']],
    extra: async () => {
      hub = await serveHub(
        {
          'models/base': join(FIX, 'models/base'),
          'models/ft_a': join(FIX, 'models/ft_a'),
          'models/ft_b_sharded': join(FIX, 'models/ft_b_sharded'),
          'slow/ft_b': join(FIX, 'models/ft_b'),
          'norange/base': join(FIX, 'models/base'),
          'bad/noweights': { 'config.json': readFileSync(fixture('base', 'config.json')) },
          // The header describes 49 536 bytes of file; the server has 4 bytes fewer.
          'bad/lying': repoOf('base', (f) => ({ ...f, 'model.safetensors': f['model.safetensors'].subarray(0, f['model.safetensors'].length - 4) })),
        },
        { noRange: ['norange/base'], slow: { 'slow/ft_b': { chunk: 1024, delayMs: 80 } } },
      );
      return () => hub.close();
    },
  },
  (s) => ({ server, browser, work } = s),
);

async function newPage() {
  return openPage(browser, `${server.url}?hub=${encodeURIComponent(hub.url)}`, { acceptDownloads: true });
}

/** Add a hub repo with the form; resolves to the status line's class and text. */
async function addHub(page, repo, revision = 'main') {
  await page.fill('#hub-repo', repo);
  await page.fill('#hub-revision', revision);
  await page.click('#hub-add-btn');
  await page.waitForSelector('#hub-status.ok, #hub-status.error', { timeout: 20_000 });
  const cls = await page.getAttribute('#hub-status', 'class');
  const text = await page.textContent('#hub-status');
  return { ok: cls.includes('ok'), text };
}

async function setYaml(page, yaml) {
  await page.click('#view-yaml');
  await page.fill('#yaml-text', yaml);
  await page.waitForTimeout(400); // re-parsed 200 ms after the last keystroke
}

async function downloadResult(page, file) {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click(`a.download[data-file="${file}"]`)]);
  const path = join(work, `dl-${Date.now()}-${file.replace(/\//g, '_')}`);
  await dl.saveAs(path);
  return readFileSync(path);
}

const cachedUrls = (page) => page.evaluate(async () => ((await caches.has('crucible-hub-v1')) ? (await (await caches.open('crucible-hub-v1')).keys()).map((r) => r.url) : []));

describe('Hub sources', () => {
  it('reads only config + headers, shows the plan, then downloads, caches and merges like the CLI', async () => {
    const { page, context, errors } = await newPage();
    for (const repo of ['models/base', 'models/ft_a', 'models/ft_b_sharded']) {
      const r = await addHub(page, repo);
      assert.ok(r.ok, r.text);
      await page.waitForSelector(`.model-card[data-model="${repo}"] .hub-source .file-list li`);
    }
    // Before Merge: every safetensors request was a Range request, and exactly the headers moved.
    const st = hub.log.filter((e) => e.url.endsWith('.safetensors') && e.method === 'GET');
    assert.ok(st.every((e) => e.range !== null && e.status === 206), JSON.stringify(st));
    const weightFiles = [['base', 'model.safetensors'], ['ft_a', 'model.safetensors'], ['ft_b_sharded', 'model-00001-of-00002.safetensors'], ['ft_b_sharded', 'model-00002-of-00002.safetensors']];
    const headerBytes = weightFiles.reduce((a, [m, f]) => a + header(fixture(m, f)).prefix, 0);
    assert.equal(st.reduce((a, e) => a + e.sent, 0), headerBytes);

    // The recipe (the same one the CLI runs on the local folders of the same names).
    await page.selectOption('#method-select', 'ties');
    await page.selectOption('#base-select', 'models/base');
    const set = async (model, param, value) => {
      const row = page.locator('.model-params-row', { hasText: model });
      await row.locator(`.param[data-param="${param}"] input`).fill(value);
    };
    await set('models/ft_a', 'weight', '1.0');
    await set('models/ft_a', 'density', '0.5');
    await set('models/ft_b_sharded', 'weight', '0.7');
    await set('models/ft_b_sharded', 'density', '0.3');
    await page.waitForSelector('#recipe-status.ok');
    await page.waitForSelector('#plan[data-state="ok"]');

    // The plan's numbers, from the fixture files: one output tensor per base tensor, their
    // elements, and every weight file plus the base's tokenizer files to download.
    const base = header(fixture('base', 'model.safetensors')).tensors;
    const numel = Object.values(base).reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    const fetch = weightFiles.reduce((a, [m, f]) => a + size(m, f), 0) + size('base', 'tokenizer.json') + size('base', 'tokenizer_config.json');
    assert.equal(Number(await page.getAttribute('#plan-tensors', 'data-value')), Object.keys(base).length);
    assert.equal(Number(await page.getAttribute('#plan-params', 'data-value')), numel);
    assert.equal(Number(await page.getAttribute('#plan-fetch', 'data-value')), fetch);
    assert.equal(Number(await page.getAttribute('.plan-model[data-model="models/ft_b_sharded"]', 'data-fetch')), size('ft_b_sharded', 'model-00001-of-00002.safetensors') + size('ft_b_sharded', 'model-00002-of-00002.safetensors'));
    assert.equal(hub.log.filter((e) => e.method === 'GET' && e.range === null && e.url.endsWith('.safetensors')).length, 0, 'no weights moved before Merge');

    await page.click('#merge-btn');
    await page.waitForSelector('#run-status.ok, #run-status.error', { timeout: 60_000 });
    assert.match(await page.getAttribute('#run-status', 'class'), /ok/, await page.textContent('#run-status'));
    const yaml = await page.inputValue('#yaml-text');
    const recipe = join(work, 'hub-ties.yml');
    writeFileSync(recipe, yaml);
    const out = join(work, 'hub-ties-cli');
    execFileSync(CLI, ['merge', recipe, out], { cwd: FIX, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const f of ['model.safetensors', 'config.json', 'tokenizer.json', 'tokenizer_config.json']) {
      assert.equal(sha256(await downloadResult(page, f)), sha256(readFileSync(join(out, f))), `${f} differs from the CLI's`);
    }
    // Each needed file was downloaded whole exactly once, and now sits in the cache.
    // config.json is read at `main`; every other file at the commit `main` resolved to then.
    const at = (m, f) => `/models/${m}/resolve/${repoCommit(`models/${m}`)}/${f}`;
    const full = hub.log.filter((e) => e.method === 'GET' && e.range === null && e.status === 200).map((e) => e.url);
    const expectUrls = [...weightFiles.map(([m, f]) => at(m, f)), at('base', 'tokenizer.json'), at('base', 'tokenizer_config.json')];
    assert.deepEqual([...full].sort(), [...expectUrls, '/models/base/resolve/main/config.json', '/models/ft_a/resolve/main/config.json', '/models/ft_b_sharded/resolve/main/config.json', at('ft_b_sharded', 'model.safetensors.index.json')].sort());
    assert.deepEqual(hub.log.filter((e) => e.url.includes('/resolve/main/')).map((e) => e.url.replace(/.*\//, '')), ['config.json', 'config.json', 'config.json']);
    assert.deepEqual((await cachedUrls(page)).map((u) => new URL(u).pathname).sort(), [...expectUrls].sort());
    await page.waitForFunction((n) => document.querySelector('#cache-info')?.getAttribute('data-files') === String(n), expectUrls.length);
    assert.equal(Number(await page.getAttribute('#cache-info', 'data-bytes')), fetch);
    // The plan now says nothing is left to download; a second merge fetches nothing.
    await page.waitForSelector('#plan-fetch[data-value="0"]');
    const before = hub.log.length;
    await page.evaluate(() => (document.querySelector('#run-status').className = 'run-status')); // forget the first run's state
    await page.click('#merge-btn');
    await page.waitForSelector('#run-status.ok, #run-status.error', { timeout: 60_000 });
    assert.match(await page.getAttribute('#run-status', 'class'), /ok/, await page.textContent('#run-status'));
    assert.deepEqual(hub.log.slice(before).filter((e) => e.method === 'GET'), []);
    // Clear the cache: it says so and holds nothing.
    await page.click('#hub-settings summary');
    await page.click('#cache-clear-btn');
    await page.waitForSelector('#cache-info[data-files="0"]');
    assert.deepEqual(await cachedUrls(page), []);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('cancel mid-download leaves nothing of that file in the cache', async () => {
    const { page, context, errors } = await newPage();
    for (const repo of ['models/base', 'slow/ft_b']) assert.ok((await addHub(page, repo)).ok);
    await setYaml(page, 'merge_method: linear\nmodels:\n  - model: models/base\n    parameters: {weight: 0.5}\n  - model: slow/ft_b\n    parameters: {weight: 0.5}\ndtype: float32\n');
    await page.waitForSelector('#plan[data-state="ok"]');
    await page.click('#merge-btn');
    // The slow file trickles 1 KiB every 80 ms (4 s in all): cancel once some of it has arrived.
    await page.waitForFunction(() => /downloading slow\/ft_b@main: model\.safetensors · /.test(document.querySelector('#progress-text')?.textContent ?? ''), null, { timeout: 20_000 });
    const slowGet = () => hub.log.find((e) => e.url === `/slow/ft_b/resolve/${repoCommit('slow/ft_b')}/model.safetensors` && e.range === null);
    for (let i = 0; i < 100 && !(slowGet()?.sent > 4096); i++) await new Promise((r) => setTimeout(r, 50));
    await page.click('#cancel-btn');
    await page.waitForSelector('#run-status.cancelled', { timeout: 10_000 });
    const urls = (await cachedUrls(page)).map((u) => new URL(u).pathname);
    assert.ok(!urls.some((u) => u.startsWith('/slow/ft_b/')), `a cancelled download was cached: ${urls}`);
    assert.ok(urls.includes(`/models/base/resolve/${repoCommit('models/base')}/model.safetensors`), `the complete file stays cached: ${urls}`);
    const slow = slowGet();
    assert.ok(slow && slow.sent > 0 && slow.sent < size('ft_b', 'model.safetensors'), `cancelled mid-file: ${JSON.stringify(slow)}`);
    assert.equal(await page.locator('#results').isHidden(), true);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('names the repo and the file in errors: unknown repo, missing file, no Range support, a lying header', async () => {
    const { page, context, errors } = await newPage();
    let r = await addHub(page, 'nobody/missing');
    assert.ok(!r.ok);
    assert.match(r.text, /repo nobody\/missing was not found/);
    r = await addHub(page, 'models/base', 'v9');
    assert.match(r.text, /models\/base has no revision v9/);
    r = await addHub(page, 'bad/noweights');
    assert.match(r.text, /bad\/noweights@main: model\.safetensors was not found/);
    r = await addHub(page, 'norange/base');
    assert.match(r.text, /norange\/base@main: model\.safetensors: the server ignored the Range request/);
    // The lying file's header reads fine; the engine refuses it when planning, naming the file.
    r = await addHub(page, 'bad/lying');
    assert.ok(r.ok, r.text);
    await setYaml(page, 'merge_method: linear\nmodels:\n  - model: bad/lying\n    parameters: {weight: 1.0}\ndtype: float32\n');
    await page.waitForSelector('#plan[data-state="error"]');
    const plan = await page.textContent('#plan-summary');
    assert.match(plan, /bad\/lying\/model\.safetensors/);
    assert.match(plan, /49532 bytes/);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('shows names with HTML in them as text', async () => {
    const { page, context, errors } = await newPage();
    const evil = '<img src=x onerror="window.__pwned=1">';
    let r = await addHub(page, evil);
    assert.ok(!r.ok);
    assert.ok(r.text.includes(evil), r.text);
    r = await addHub(page, 'models/base');
    assert.ok(r.ok, r.text);
    const input = page.locator('.model-card input.model-name').first();
    await input.fill(evil);
    await input.dispatchEvent('change');
    await page.waitForSelector('.model-card .hub-source .file-list li');
    await page.waitForFunction((n) => document.querySelector('.model-card')?.getAttribute('data-model') === n, evil);
    assert.equal(await page.locator('.model-card .hub-repo').textContent(), 'models/base@main');
    assert.equal(await page.evaluate(() => document.querySelectorAll('img').length), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.deepEqual(errors, []);
    await context.close();
  });
});
