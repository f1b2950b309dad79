// End-to-end tests of Share by URL (web/src/share.ts, web/src/share-panel.ts) on the built page
// (dist/, or $CRUCIBLE_DIST) in Debian's Chromium driven by playwright-core: a link reproduces a
// merge byte for byte in a fresh page; a link's local files are asked for and checked by sha256;
// broken and oversize links say what is wrong; names from a link are text; classroom flags hide
// their controls; the mergekit YAML is copied.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { readFileSync, readdirSync } from 'node:fs';

import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { e2eSuite, openPage } from './serve.mjs';
import { serveHub } from './hub_server.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FIX = join(ROOT, 'tests/fixtures/merge');
const DIST = process.env.CRUCIBLE_DIST ?? join(ROOT, 'dist');

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');
/** A fragment holding `body` (the schema's JSON), made here with node's zlib. */
const fragmentOf = (body) => `#v=1&s=${deflateRawSync(Buffer.from(JSON.stringify(body))).toString('base64url')}`;

let server;
let browser;
let work;

async function newPage(url = server.url) {
  return openPage(browser, url, { acceptDownloads: true, permissions: ['clipboard-read', 'clipboard-write'] });
}

async function setYaml(page, yaml) {
  await page.click('#view-yaml');
  await page.fill('#yaml-text', yaml);
  await page.waitForTimeout(400);
}

async function setModelFiles(page, model, paths) {
  const card = page.locator(`.model-card[data-model="${model}"]`);
  await card.locator('input.files-input').setInputFiles(paths);
  await page.locator(`.model-card[data-model="${model}"] .file-list li`).first().waitFor();
}

const modelFilePaths = (dir) => readdirSync(dir).map((f) => join(dir, f));

async function runMerge(page) {
  await page.click('#merge-btn');
  await page.waitForSelector('#run-status.ok, #run-status.error', { timeout: 120_000 });
  const cls = await page.getAttribute('#run-status', 'class');
  return { ok: cls.includes('ok'), text: await page.textContent('#run-status') };
}

async function download(page, file) {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click(`a.download[data-file="${file}"]`)]);
  const path = join(work, `dl-${Date.now()}-${file}`);
  await dl.saveAs(path);
  return readFileSync(path);
}

/** The link of the page's current state once the debounced update has written it. */
async function currentLink(page) {
  await page.waitForFunction(() => /^The address bar holds/.test(document.querySelector('#share-status')?.textContent ?? ''), null, { timeout: 10_000 });
  await page.waitForTimeout(600); // one more debounce period: the last edit is in
  const link = await page.inputValue('#share-link');
  assert.equal(page.url(), link, 'the address bar holds the same link as the share box');
  assert.match(link, /#v=1&s=[A-Za-z0-9_-]+/);
  return link;
}

e2eSuite({ dist: DIST, prefix: 'crucible-share-e2e-', requires: [] }, (s) => ({ server, browser, work } = s));

describe('Share by URL', () => {
  it('round trip: a recipe built in the page, its copied link opened in a fresh page, the same form and the same merged bytes', async () => {
    const a = await newPage();
    await a.page.click('#demo-btn');
    await a.page.waitForSelector('#recipe-status.ok');
    // Change the demo in the form: method dare_ties, one density, a seed, an output shard size.
    await a.page.selectOption('#method-select', 'dare_ties');
    const row = a.page.locator('.model-params-row', { hasText: 'tiny-code' });
    await row.locator('.param[data-param="density"] input').fill('0.7');
    await a.page.fill('#seed-input', '1234');
    await a.page.fill('#shard-input', '20K');
    await a.page.waitForSelector('#recipe-status.ok');
    const yamlA = await a.page.inputValue('#yaml-text');
    assert.match(yamlA, /merge_method: dare_ties/);
    assert.match(yamlA, /density: 0\.7/);
    const res = await runMerge(a.page);
    assert.ok(res.ok, res.text);
    const filesA = await a.page.$$eval('a.download', (as) => as.map((x) => x.dataset.file));
    assert.ok(filesA.includes('model.safetensors.index.json'), `sharded output: ${filesA}`);
    const hashesA = {};
    for (const f of filesA) hashesA[f] = sha256(await download(a.page, f));

    const link = await currentLink(a.page);
    assert.equal(await a.page.isHidden('#copy-cancel-btn'), true, 'Cancel shows only while hashing for Copy link');
    await a.page.click('#copy-link-btn');
    await a.page.waitForSelector('#share-status.ok');
    assert.equal(await a.page.evaluate(() => navigator.clipboard.readText()), link);
    assert.deepEqual(a.errors, []);
    await a.context.close();

    const b = await newPage(link);
    await b.page.waitForSelector('#link-panel:not([hidden])');
    assert.match(await b.page.textContent('#link-message'), /Opened a shared recipe: dare_ties over 3 models\. Nothing runs until you press Merge\./);
    // The form is what it was: YAML text, method, seed, shard size, the three demo models with files.
    assert.equal(await b.page.inputValue('#yaml-text'), yamlA);
    assert.equal(await b.page.inputValue('#method-select'), 'dare_ties');
    assert.equal(await b.page.inputValue('#seed-input'), '1234');
    assert.equal(await b.page.inputValue('#shard-input'), '20K');
    assert.equal(await b.page.inputValue('.model-params-row:has-text("tiny-code") .param[data-param="density"] input'), '0.7');
    assert.deepEqual(await b.page.$$eval('.model-card', (cs) => cs.map((c) => c.dataset.model)), ['tiny-base', 'tiny-math', 'tiny-code']);
    for (const m of ['tiny-base', 'tiny-math', 'tiny-code']) assert.equal(await b.page.locator(`.model-card[data-model="${m}"] .file-list li`).count(), 2);
    // Nothing ran by itself.
    assert.equal(await b.page.isHidden('#results'), true);
    assert.equal(await b.page.textContent('#run-status'), '');
    await b.page.waitForSelector('#recipe-status.ok');
    const res2 = await runMerge(b.page);
    assert.ok(res2.ok, res2.text);
    const filesB = await b.page.$$eval('a.download', (as) => as.map((x) => x.dataset.file));
    assert.deepEqual(filesB, filesA);
    for (const f of filesB) assert.equal(sha256(await download(b.page, f)), hashesA[f], `${f} differs between the two pages`);
    // The opened page writes back the very same link.
    assert.equal(await currentLink(b.page), link);
    assert.deepEqual(b.errors, []);
    await b.context.close();
  });

  it('a local-file source: the link asks for the files, rejects a wrong one by sha256, accepts the right ones, merges the same bytes', async () => {
    const yaml = 'merge_method: linear\nmodels:\n  - model: models/base\n    parameters: {weight: 0.3}\n  - model: models/ft_a\n    parameters: {weight: 0.7}\ndtype: float32\n';
    const a = await newPage();
    await setYaml(a.page, yaml);
    await a.page.waitForSelector('#recipe-status.ok');
    for (const m of ['models/base', 'models/ft_a']) await setModelFiles(a.page, m, [join(FIX, m, 'model.safetensors'), join(FIX, m, 'config.json')]);
    const res = await runMerge(a.page);
    assert.ok(res.ok, res.text);
    const shaA = sha256(await download(a.page, 'model.safetensors'));
    const link = await currentLink(a.page);
    await a.context.close();

    const b = await newPage(link);
    await b.page.waitForSelector('#link-panel:not([hidden])');
    assert.match(await b.page.textContent('#link-message'), /Needed before merging: models\/base \(your local files\), models\/ft_a \(your local files\)/);
    assert.equal(await b.page.inputValue('#yaml-text'), yaml);
    const need = b.page.locator('.link-need[data-model="models/ft_a"]');
    const stBytes = readFileSync(join(FIX, 'models/ft_a/model.safetensors'));
    const row = need.locator('li[data-path="model.safetensors"]');
    assert.match(await row.textContent(), new RegExp(`model\\.safetensors48\\.4 KiB · sha256 ${sha256(stBytes).slice(0, 12)}…`));
    // ft_b's weights: the same size, other bytes → refused by sha256, nothing set.
    await need.locator('input.link-files-input').setInputFiles([join(FIX, 'models/ft_b/model.safetensors')]);
    await need.locator('.need-status.error').waitFor();
    assert.match(await need.locator('.need-status').textContent(), /model\.safetensors is not the file this link expects: its sha256 is [0-9a-f]{12}…[0-9a-f]{4}, the link's model\.safetensors has [0-9a-f]{12}…/);
    assert.equal(await b.page.locator('.model-card[data-model="models/ft_a"] .file-list li').count(), 0);
    // A file of no expected size is refused before reading it.
    await need.locator('input.link-files-input').setInputFiles([join(FIX, 'models/ft_a/tokenizer.json')]);
    await b.page.waitForFunction(() => /no expected file has that size/.test(document.querySelector('.link-need[data-model="models/ft_a"] .need-status')?.textContent ?? ''));
    // Merge is refused while files are missing.
    await b.page.click('#merge-btn');
    await b.page.waitForSelector('#run-status.error');
    assert.match(await b.page.textContent('#run-status'), /Add files for models models\/base, models\/ft_a first/);
    // Wrong files given through the model's card instead of the link panel: checked all the same.
    await setModelFiles(b.page, 'models/base', [join(FIX, 'models/ft_b/model.safetensors'), join(FIX, 'models/ft_b/config.json')]);
    const baseNeed = b.page.locator('.link-need[data-model="models/base"]');
    await baseNeed.locator('.need-status.error').waitFor({ timeout: 10_000 });
    assert.match(await baseNeed.locator('.need-status').textContent(), /The files given to models\/base's card are not the ones this link expects: model\.safetensors's sha256 is [0-9a-f]{12}…[0-9a-f]{4}, the link's is/);
    // The right files: models/base as its whole folder (tokenizer files and all: only the expected
    // files are taken), models/ft_a file by file. Accepted by their sha256.
    for (const m of ['models/base', 'models/ft_a']) {
      const n = b.page.locator(`.link-need[data-model="${m}"]`);
      if (m === 'models/base') await n.locator('input.link-dir-input').setInputFiles(join(FIX, m));
      else await n.locator('input.link-files-input').setInputFiles([join(FIX, m, 'model.safetensors'), join(FIX, m, 'config.json')]);
      await n.locator('.need-status.ok').waitFor();
      assert.match(await n.locator('.need-status').textContent(), /All 2 files match/);
      assert.equal(await b.page.locator(`.model-card[data-model="${m}"] .file-list li`).count(), 2);
    }
    const res2 = await runMerge(b.page);
    assert.ok(res2.ok, res2.text);
    assert.equal(sha256(await download(b.page, 'model.safetensors')), shaA);
    assert.equal(await currentLink(b.page), link);
    assert.deepEqual(b.errors, []);
    await b.context.close();
  });

  it('malformed and oversize links give their messages, the page starts empty, the URL is kept', async () => {
    const bomb = `#v=1&s=${deflateRawSync(Buffer.from('{"m":[],"r":{"merge_method":"linear"},"y":"' + ' '.repeat(5_000_000) + '"}')).toString('base64url')}`;
    // One of each kind here (every message is checked in tests/unit/share.test.mjs).
    const cases = [
      ['#v=2&s=AAAA', /This link is not valid: v: unknown version "2"/],
      ['#v=1&s=' + 'A'.repeat(17000), /This link is not valid: link: too long \(17 KiB; a link holds at most 16 KiB\)/],
      [bomb, /This link is not valid: s: decompresses to more than 64 KiB/],
      [fragmentOf({ m: [{ n: 'a', l: [['model.safetensors', 10, 'NOT-HEX']] }], r: { merge_method: 'linear' } }), /models\[0\]\.files\[0\]\.sha256: "NOT-HEX" is not a sha256/],
      [fragmentOf({ m: Array.from({ length: 17 }, (_, i) => ({ n: `m${i}`, d: 'tiny-base' })), r: { merge_method: 'linear' } }), /models: too many models: 17 \(at most 16\)/],
    ];
    const { page, context, errors } = await newPage();
    for (const [frag, pattern] of cases) {
      await page.goto('about:blank'); // a fresh document each time (a fragment-only change would reload the page itself)
      await page.goto(server.url + frag);
      await page.waitForSelector('#engine-status[data-state="ready"]', { timeout: 30_000 });
      await page.waitForSelector('#link-message.error');
      const msg = await page.textContent('#link-message');
      assert.match(msg, pattern, frag.slice(0, 60));
      assert.match(msg, /The page starts empty instead/);
      assert.equal(await page.locator('.model-card').count(), 0);
      await page.waitForTimeout(700);
      assert.equal(page.url(), server.url + frag, 'the broken link stays in the address bar');
    }
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('a model name containing HTML shows as text in the link panel, the cards and the YAML', async () => {
    const evil = '<img src=x onerror="window.__xss=1">';
    const sha = sha256(readFileSync(join(FIX, 'models/ft_a/model.safetensors')));
    const frag = fragmentOf({
      m: [{ n: evil, l: [['<b>model</b>.safetensors', 49536, sha]] }, { n: 'tiny-base', d: 'tiny-base' }],
      r: { merge_method: 'linear', models: [{ model: evil, parameters: { weight: 1 } }, { model: 'tiny-base', parameters: { weight: 1 } }] },
    });
    const { page, context, errors } = await newPage(server.url + frag);
    await page.waitForSelector('.link-need');
    assert.equal(await page.locator('.link-need strong').textContent(), evil);
    assert.equal(await page.locator('.link-need li .file-name').textContent(), '<b>model</b>.safetensors');
    assert.match(await page.textContent('#link-message'), /Needed before merging: <img src=x onerror="window.__xss=1"> \(your local files\)/);
    assert.equal(await page.locator('.model-card input.model-name').first().inputValue(), evil);
    assert.ok((await page.inputValue('#yaml-text')).includes(JSON.stringify(evil)));
    assert.equal(await page.locator('img, main b').count(), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('classroom flags hide their controls; the Share panel lists every flag and carries them into the link', async () => {
    const { page, context, errors } = await newPage(server.url + '#yaml_hide=true&method_hide=true&seed_hide=true&models_hide=false&hub_hide=true');
    await page.waitForFunction(() => document.querySelector('#view-yaml')?.parentElement?.style.display === 'none');
    for (const sel of ['#view-yaml', '#recipe-yaml', '#method-select', '#seed-input', '#hub-form', '#hub-settings']) assert.equal(await page.isHidden(sel), true, `${sel} is hidden`);
    for (const sel of ['#models-section', '#base-select', '#shard-input', '#merge-btn', '#share-section']) assert.equal(await page.isVisible(sel), true, `${sel} is visible`);
    const flags = await page.$$eval('#hide-flags input', (is) => is.map((i) => [i.dataset.flag, i.checked]));
    assert.deepEqual(flags.map(([f]) => f), ['models', 'demo', 'add', 'hub', 'method', 'base', 'dtype', 'params', 'yaml', 'seed', 'shard', 'share']);
    assert.deepEqual(flags.filter(([, c]) => c).map(([f]) => f), ['hub', 'method', 'yaml', 'seed']);
    assert.match(await page.textContent('#hide-flags'), /yaml_hide the YAML view/);
    // The demo, and one more flag ticked: the link carries all of them, and opens hidden.
    await page.click('#demo-btn');
    await page.check('#hide-params');
    const link = await currentLink(page);
    assert.match(link, /&hub_hide=true&method_hide=true&params_hide=true&yaml_hide=true&seed_hide=true$/);
    await context.close();
    const b = await newPage(link);
    await b.page.waitForSelector('#link-panel:not([hidden])');
    for (const sel of ['#global-params', '#model-params', '#method-select', '#view-yaml']) assert.equal(await b.page.isHidden(sel), true, `${sel} is hidden`);
    assert.equal(await b.page.locator('.model-card').count(), 3);
    const res = await runMerge(b.page);
    assert.ok(res.ok, res.text);
    assert.deepEqual([...errors, ...b.errors], []);
    await b.context.close();
  });

  it('a hub source in a link fetches nothing by itself: it shows the repo and waits for a click', async () => {
    const frag = fragmentOf({
      m: [{ n: 'tiny-base', d: 'tiny-base' }, { n: 'smol', h: 'HuggingFaceTB/SmolLM2-135M', r: 'main' }],
      r: { merge_method: 'linear', models: [{ model: 'tiny-base', parameters: { weight: 0.5 } }, { model: 'smol', parameters: { weight: 0.5 } }] },
    });
    const context = await browser.newContext();
    const page = await context.newPage();
    const foreign = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(server.url) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) foreign.push(r.url());
    });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(server.url + frag);
    await page.waitForSelector('.link-need[data-model="smol"]');
    assert.match(await page.textContent('.link-need[data-model="smol"]'), /from the Hugging Face Hub, HuggingFaceTB\/SmolLM2-135M@main\. Nothing is fetched until you ask: .* from https:\/\/huggingface\.co;/);
    assert.equal(await page.locator('.link-need[data-model="smol"] .note.bad').count(), 0);
    assert.match(await page.textContent('#link-message'), /Needed before merging: smol \(from the hub\)/);
    await page.waitForTimeout(1500);
    assert.deepEqual(foreign, [], 'no request left the page before a click');
    // The copied YAML names the hub model by its repo, as mergekit-yaml wants it.
    await context.grantPermissions(['clipboard-read', 'clipboard-write']);
    await page.click('#copy-yaml-btn');
    await page.waitForSelector('#share-status.ok');
    const yaml = await page.evaluate(() => navigator.clipboard.readText());
    assert.match(yaml, /- model: HuggingFaceTB\/SmolLM2-135M\n/);
    assert.match(yaml, /- model: tiny-base\n/);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('a link with hub sources: nothing fetched before the click, headers only on "Read", weights on Merge; same bytes as local files', async () => {
    const hub = await serveHub({ 'models/base': join(FIX, 'models/base'), 'models/ft_a': join(FIX, 'models/ft_a') });
    try {
      const recipe = { merge_method: 'task_arithmetic', base_model: 'models/base', models: [{ model: 'models/ft_a', parameters: { weight: 0.6 } }], dtype: 'float32' };
      // The reference: the same recipe on the local fixture files.
      const a = await newPage();
      await setYaml(a.page, 'merge_method: task_arithmetic\nbase_model: models/base\nmodels:\n  - model: models/ft_a\n    parameters:\n      weight: 0.6\ndtype: float32\n');
      await a.page.waitForSelector('#recipe-status.ok');
      for (const m of ['models/base', 'models/ft_a']) await setModelFiles(a.page, m, [join(FIX, m, 'model.safetensors'), join(FIX, m, 'config.json')]);
      const ra = await runMerge(a.page);
      assert.ok(ra.ok, ra.text);
      const shaA = sha256(await download(a.page, 'model.safetensors'));
      await a.context.close();

      const body = { m: [{ n: 'models/base', h: 'models/base', r: 'main' }, { n: 'models/ft_a', h: 'models/ft_a', r: 'main' }], r: recipe };
      const b = await newPage(`${server.url}?hub=${encodeURIComponent(hub.url)}${fragmentOf(body)}`);
      await b.page.waitForSelector('.link-need[data-model="models/ft_a"] .hub-fetch-btn');
      // The hub URL came with the link's address: shown, with a warning.
      assert.equal(await b.page.textContent('.link-need[data-model="models/ft_a"] .hub-base-shown'), hub.url);
      assert.match(await b.page.textContent('.link-need[data-model="models/ft_a"] .note.bad'), /comes from the address of the link/);
      await b.page.waitForTimeout(1000);
      assert.deepEqual(hub.log, [], 'no request to the hub before a click');
      for (const m of ['models/base', 'models/ft_a']) {
        const need = b.page.locator(`.link-need[data-model="${m}"]`);
        await need.locator('.hub-fetch-btn').click();
        await need.locator('.need-status.ok').waitFor({ timeout: 20_000 });
        assert.match(await need.locator('.need-status').textContent(), new RegExp(`${m}@main added`));
        assert.equal(await need.locator('.hub-fetch-btn').isHidden(), true);
      }
      // Reading a hub model fetched headers only: every GET of a .safetensors file was a Range request.
      const weightGets = () => hub.log.filter((e) => e.method === 'GET' && e.url.endsWith('.safetensors'));
      assert.ok(weightGets().length > 0);
      assert.ok(weightGets().every((e) => e.range), JSON.stringify(weightGets()));
      // The address bar keeps the hub sources.
      const link = await currentLink(b.page);
      const s = new URL(link).hash.slice(1).split('&').find((p) => p.startsWith('s=')).slice(2);
      assert.deepEqual(JSON.parse(inflateRawSync(Buffer.from(s, 'base64url')).toString()).m, body.m);
      await b.page.waitForSelector('#recipe-status.ok');
      const rb = await runMerge(b.page);
      assert.ok(rb.ok, rb.text);
      assert.ok(weightGets().some((e) => !e.range || e.sent > 4096), 'Merge downloaded the weights');
      assert.equal(sha256(await download(b.page, 'model.safetensors')), shaA);
      assert.deepEqual(b.errors, []);
      await b.context.close();
    } finally {
      await hub.close();
    }
  });

  it('the Generate tab\'s prompt and sampling controls, and the open tab, travel in the link', async () => {
    const a = await newPage();
    await a.page.click('#demo-btn');
    await a.page.click('#tab-generate');
    await a.page.fill('#gen-prompt', 'Once upon a <i>time</i>');
    await a.page.fill('#gen-max-tokens', '12');
    await a.page.selectOption('#gen-quantize', 'q4_0');
    await a.page.selectOption('#gen-backend', 'cpu');
    const link = await currentLink(a.page);
    await a.context.close();
    const b = await newPage(link);
    await b.page.waitForFunction(() => /Opened a shared recipe/.test(document.querySelector('#link-message')?.textContent ?? ''));
    assert.equal(await b.page.getAttribute('#tab-generate', 'aria-selected'), 'true');
    assert.equal(await b.page.inputValue('#gen-prompt'), 'Once upon a <i>time</i>');
    assert.equal(await b.page.inputValue('#gen-max-tokens'), '12');
    assert.equal(await b.page.inputValue('#gen-quantize'), 'q4_0');
    assert.equal(await b.page.inputValue('#gen-backend'), 'cpu');
    assert.equal(await b.page.locator('i').count(), 0);
    // The Merge tab's recipe came along.
    assert.equal(await b.page.locator('.model-card').count(), 3);
    assert.equal(await currentLink(b.page), link);
    await b.context.close();
  });

  it('"Copy mergekit YAML" copies the recipe', async () => {
    const { page, context, errors } = await newPage();
    await page.click('#demo-btn');
    await page.waitForSelector('#recipe-status.ok');
    await page.click('#copy-yaml-btn');
    await page.waitForSelector('#share-status.ok');
    assert.match(await page.textContent('#share-status'), /mergekit-yaml recipe\.yml/);
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), await page.inputValue('#yaml-text'));
    assert.deepEqual(errors, []);
    await context.close();
  });
});
