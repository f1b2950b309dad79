// End-to-end tests of the Generate tab (web/src/generate.ts → generate.worker.ts →
// crate/src/wasm/generate.rs) in Debian's Chromium: the CPU (WebAssembly) path, and the WebGPU
// path (models/llama_gpu.rs) on Chromium's software adapter (SwiftShader) for the first tokens.
//
// References: the real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by scripts/fetch_models.sh; never
// committed) must continue `The capital of France is` greedily with ` Paris.\n` = ids 7042 30 198,
// the reference continuation of llama.cpp / transformers that the native CPU path reproduces
// (crate/tests/smollm2.rs); the tiny Mixtral bundled as the page's demo must give transformers'
// greedy ids and perplexity (tests/fixtures/moe/eval/perplexity.json, made by
// scripts/fixtures/make_moe_fixtures.py).
//
// Needs: `npm run build` (or scripts/test.sh, which builds first) and the GGUF in .cache/models/.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, symlinkSync } from 'node:fs';

import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { e2eSuite, openPage } from './serve.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = resolve(process.env.CRUCIBLE_DIST ?? join(ROOT, 'dist'));
const GGUF = join(ROOT, '.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf');
const MOE = join(ROOT, 'tests/fixtures/moe/eval');
// A file name that is HTML: it must show as text, never run.
const HTML_NAME = '<img src=x onerror="window.__pwned=1">SmolLM2.gguf';

let server;
let browser;
let work;

async function newPage() {
  const opened = await openPage(browser, server.url);
  await opened.page.click('#tab-generate');
  await opened.page.waitForSelector('#generate-tab[data-ready="true"]', { timeout: 30_000 });
  return opened;
}

/** Set the sampling controls: greedy, `max` tokens. */
async function greedy(page, max) {
  await page.check('#gen-greedy');
  await page.fill('#gen-max-tokens', String(max));
}

/** Click Generate and wait until every model has finished; returns each slot's result. */
async function generate(page, prompt) {
  await page.fill('#gen-prompt', prompt);
  await page.click('#gen-run');
  await page.waitForFunction(() => [...document.querySelectorAll('.gen-slot')].every((s) => s.dataset.reason), null, { timeout: 90_000 });
  return page.$$eval('.gen-slot', (ss) =>
    ss.map((s) => ({
      text: s.querySelector('.gen-text').textContent,
      ids: (s.dataset.ids ?? '').split(',').filter(Boolean).map(Number),
      reason: s.dataset.reason,
      forwards: Number(s.dataset.forwards),
      decodeTps: Number(s.dataset.decodeTps),
      stats: s.querySelector('.gen-stats').textContent,
    })),
  );
}

e2eSuite(
  { dist: DIST, prefix: 'crucible-gen-', requires: [[GGUF, "run scripts/fetch_models.sh (npm test's set-up does) first"]], extra: ({ work }) => symlinkSync(GGUF, join(work, HTML_NAME)) },
  (s) => ({ server, browser, work } = s),
);

describe('Generate tab', () => {
  it('SmolLM2-135M Q4_1 (GGUF) on the CPU path: greedy " Paris.", the name as text, Stop', async () => {
    const { page, context, errors } = await newPage();
    await page.selectOption('#gen-backend', 'cpu');
    await page.setInputFiles('#gen-gguf-input', join(work, HTML_NAME));
    await page.waitForSelector('.gen-slot[data-state="ready"], .gen-slot[data-state="error"]', { timeout: 60_000 });
    assert.equal(await page.getAttribute('.gen-slot', 'data-state'), 'ready', await page.textContent('.gen-status'));

    // The HTML file name is text: same characters back, no element made from it, nothing ran.
    assert.equal(await page.textContent('.gen-slot .gen-name'), HTML_NAME);
    assert.equal(await page.locator('.gen-slot img').count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    const info = await page.textContent('.gen-slot .gen-info');
    assert.match(info, /llama · 1\d\d\.\d M parameters · Q4_1/);
    assert.equal(await page.getAttribute('.gen-slot .gen-backend', 'data-backend'), 'cpu');
    assert.match(await page.textContent('.gen-slot .gen-backend-note'), /CPU \(WebAssembly\): CPU chosen in the page/);

    await greedy(page, 3);
    const [r] = await generate(page, 'The capital of France is');
    assert.deepEqual(r.ids, [7042, 30, 198], r.text);
    assert.equal(r.text, ' Paris.\n');
    assert.ok(r.text.startsWith(' Paris.'));
    assert.equal(r.reason, 'max tokens');
    assert.equal(r.forwards, 2);
    assert.ok(r.decodeTps > 0, r.stats);
    assert.match(r.stats, /prefill 5 tokens in .* tokens\/s\) · decode 3 tokens in .* tokens\/s\)/);

    // Stop: a long generation ends after the current token; the model is ready again after it.
    await page.fill('#gen-max-tokens', '200');
    await page.click('#gen-run');
    await page.waitForFunction(() => Number(document.querySelector('.gen-slot')?.dataset.generated ?? 0) >= 2, null, { timeout: 60_000 });
    await page.click('#gen-stop');
    await page.waitForSelector('.gen-slot[data-reason]', { timeout: 30_000 });
    const stopped = await page.$eval('.gen-slot', (s) => ({ reason: s.dataset.reason, n: Number(s.dataset.generated), state: s.dataset.state }));
    assert.equal(stopped.reason, 'stopped');
    assert.ok(stopped.n >= 2 && stopped.n < 30, `stopped after ${stopped.n} tokens`);
    assert.equal(stopped.state, 'ready');
    assert.equal(await page.isDisabled('#gen-run'), false);
    assert.equal(await page.isDisabled('#gen-stop'), true);
    // ... and the same greedy run after a stop gives the same tokens (the cache was reset).
    await greedy(page, 2);
    const [again] = await generate(page, 'The capital of France is');
    assert.deepEqual(again.ids, [7042, 30]);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('bundled tiny Mixtral: transformers greedy ids, expert heat map, perplexity within 1e-4', async () => {
    const ref = JSON.parse(readFileSync(join(MOE, 'perplexity.json'), 'utf8'));
    const text = readFileSync(join(MOE, ref.text), 'utf8');
    const { page, context, errors } = await newPage();
    await page.click('#gen-add-demo'); // backend 'auto': MoE layers run on WebGPU (SwiftShader here)
    await page.waitForSelector('.gen-slot[data-state="ready"], .gen-slot[data-state="error"]', { timeout: 30_000 });
    assert.equal(await page.getAttribute('.gen-slot', 'data-state'), 'ready', await page.textContent('.gen-status'));
    assert.equal(await page.getAttribute('.gen-slot', 'data-moe'), 'true');
    assert.match(await page.textContent('.gen-slot .gen-info'), /MoE: \d+ experts, top-\d/);
    assert.equal(await page.getAttribute('.gen-slot', 'data-backend'), 'gpu', await page.textContent('.gen-slot .gen-backend-note'));
    assert.match(await page.textContent('.gen-slot .gen-backend-note'), /Runs on WebGPU/);
    // The MoE layers run by id (ops::qmatvec_id): no router readback per layer.
    assert.match(await page.textContent('.gen-slot .gen-backend-note'), /MoE experts chosen on the GPU \(no readback per layer\)/);

    await greedy(page, ref.greedy.ids.length);
    const [r] = await generate(page, ref.greedy.prompt);
    assert.deepEqual(r.ids, ref.greedy.ids);
    assert.equal(r.text, ref.greedy.text);
    assert.equal(await page.getAttribute('.gen-slot', 'data-backend'), 'gpu', 'the generation stayed on the GPU');
    // One heat-map column per token: prompt + generated.
    const cols = Number(await page.getAttribute('.gen-slot .gen-heat', 'data-tokens'));
    assert.equal(cols, ref.greedy.prompt_ids.length + ref.greedy.ids.length);
    assert.equal(await page.isVisible('.gen-slot .gen-heat'), true);

    // Perplexity with the reference's first case (window 16 → stride 8).
    const c = ref.cases.find((k) => k.stride * 2 === k.context);
    await page.fill('#gen-ppl-text', text);
    await page.fill('#gen-ppl-context', String(c.context));
    await page.click('#gen-ppl-run');
    await page.waitForSelector('.gen-slot[data-perplexity]', { timeout: 30_000 });
    const ppl = Number(await page.getAttribute('.gen-slot', 'data-perplexity'));
    assert.ok(Math.abs(ppl - c.perplexity) / c.perplexity < 1e-4, `perplexity ${ppl} vs transformers ${c.perplexity}`);
    assert.match(await page.textContent('.gen-slot .gen-ppl'), new RegExp(`over ${c.scored_tokens} tokens; window ${c.context}, stride ${c.stride}`));
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('SmolLM2-135M Q4_1 on WebGPU (SwiftShader): GPU indicator and the first greedy tokens " Paris"', async () => {
    const { page, context, errors } = await newPage();
    await page.selectOption('#gen-backend', 'auto');
    await page.setInputFiles('#gen-gguf-input', GGUF);
    await page.waitForSelector('.gen-slot[data-state="ready"], .gen-slot[data-state="error"]', { timeout: 120_000 });
    assert.equal(await page.getAttribute('.gen-slot', 'data-state'), 'ready', await page.textContent('.gen-status'));
    assert.equal(await page.getAttribute('.gen-slot', 'data-backend'), 'gpu', await page.textContent('.gen-slot .gen-backend-note'));
    assert.match(await page.getAttribute('.gen-slot .gen-backend', 'title'), /^WebGPU: /);
    await greedy(page, 2);
    const [r] = await generate(page, 'The capital of France is');
    assert.deepEqual(r.ids, [7042, 30], r.text);
    assert.equal(r.text, ' Paris.');
    assert.equal(await page.getAttribute('.gen-slot', 'data-backend'), 'gpu');
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('the merge just made runs in the Generate tab without a download (tiny Mixtral + itself, linear 0.5/0.5 = itself)', async () => {
    const ref = JSON.parse(readFileSync(join(MOE, 'perplexity.json'), 'utf8'));
    const dir = join(ROOT, 'tests/fixtures/moe/mixtral');
    const files = readdirSync(dir).filter((f) => !f.endsWith('.f32')).map((f) => join(dir, f));
    const { page, context, errors } = await newPage();
    await page.click('#tab-merge');
    assert.equal(await page.isDisabled('#gen-add-merge'), true);
    for (let i = 0; i < 2; i++) await page.click('#add-model-btn');
    for (const [i, name] of ['a', 'b'].entries()) {
      const input = page.locator('.model-card input.model-name').nth(i);
      await input.fill(name);
      await input.dispatchEvent('change');
      await page.waitForSelector(`.model-card[data-model="${name}"]`);
      await page.locator(`.model-card[data-model="${name}"] input.files-input`).setInputFiles(files);
      await page.locator(`.model-card[data-model="${name}"] .file-list li`).first().waitFor();
    }
    await page.click('#view-yaml');
    await page.fill('#yaml-text', 'merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: 0.5\n  - model: b\n    parameters:\n      weight: 0.5\ndtype: float32\n');
    // The page re-parses 200 ms after the last keystroke (as in merge.test.mjs).
    await page.waitForFunction(() => !document.querySelector('#recipe-status')?.textContent?.startsWith('…'), null, { timeout: 5000 });
    await page.waitForTimeout(400);
    await page.waitForSelector('#recipe-status.ok', { timeout: 10_000 });
    await page.click('#merge-btn');
    await page.waitForSelector('#run-status.ok, #run-status.error', { timeout: 60_000 });
    assert.match(await page.getAttribute('#run-status', 'class'), /ok/, await page.textContent('#run-status'));

    await page.click('#tab-generate');
    await page.selectOption('#gen-backend', 'cpu');
    assert.equal(await page.isDisabled('#gen-add-merge'), false);
    await page.click('#gen-add-merge');
    await page.waitForSelector('.gen-slot[data-state="ready"], .gen-slot[data-state="error"]', { timeout: 30_000 });
    assert.equal(await page.getAttribute('.gen-slot', 'data-state'), 'ready', await page.textContent('.gen-status'));
    assert.match(await page.textContent('.gen-slot .gen-name'), /^merge \(/);
    assert.equal(await page.getAttribute('.gen-slot', 'data-moe'), 'true');
    await greedy(page, ref.greedy.ids.length);
    const [r] = await generate(page, ref.greedy.prompt);
    assert.deepEqual(r.ids, ref.greedy.ids);
    assert.deepEqual(errors, []);
    await context.close();
  });
});
