// End-to-end tests of "What the merge did" (web/src/stats.ts fed by crate/src/merge/stats.rs
// through the worker): after a merge in the built page, the statistics panel shows per-layer
// charts and the by-kind table, hovering a chart shows values, and the page's CSV download is
// byte for byte the CSV the native CLI writes with `crucible merge RECIPE OUT --stats FILE.csv`.
//
// Needs: `npm run build` and the CLI binary (target/debug/crucible or $CRUCIBLE_BIN).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';

import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { e2eSuite, openPage } from './serve.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FIX = join(ROOT, 'tests/fixtures/merge');
const DIST = join(ROOT, 'dist');
const CLI = process.env.CRUCIBLE_BIN ?? join(resolve(ROOT, process.env.CARGO_TARGET_DIR ?? 'target'), 'debug/crucible');

let server;
let browser;
let work;

/** The CLI's `--stats` CSV for `yaml`, model paths relative to `cwd`. */
function cliStats(yaml, cwd, name, seed = '0') {
  const recipe = join(work, `${name}.yml`);
  const out = join(work, `${name}-cli`);
  const csv = join(work, `${name}-cli.csv`);
  writeFileSync(recipe, yaml);
  rmSync(out, { recursive: true, force: true });
  execFileSync(CLI, ['merge', recipe, out, '--seed', seed, '--stats', csv, '--quiet'], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  return readFileSync(csv, 'utf8');
}

async function newPage() {
  return openPage(browser, server.url, { acceptDownloads: true, viewport: { width: 1280, height: 1000 } });
}

async function setYaml(page, yaml) {
  await page.click('#view-yaml');
  await page.fill('#yaml-text', yaml);
  await page.waitForFunction(() => !document.querySelector('#recipe-status')?.textContent?.startsWith('…'), null, { timeout: 5000 });
  await page.waitForTimeout(400);
}

async function setModelFiles(page, model, dir) {
  const card = page.locator(`.model-card[data-model="${model}"]`);
  await card.locator('input.files-input').setInputFiles(readdirSync(dir).map((f) => join(dir, f)));
  await card.locator('.file-list li').first().waitFor();
}

async function runMerge(page, seed = '0') {
  await page.fill('#seed-input', seed);
  await page.click('#merge-btn');
  await page.waitForSelector('#run-status.ok, #run-status.error', { timeout: 120_000 });
  const ok = (await page.getAttribute('#run-status', 'class')).includes('ok');
  return { ok, text: await page.textContent('#run-status') };
}

async function downloadStatsCsv(page) {
  await page.waitForSelector('#stats[data-state="done"] #stats-csv-btn:not([disabled])');
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#stats-csv-btn')]);
  assert.equal(dl.suggestedFilename(), 'merge-stats.csv');
  const path = join(work, `dl-${Date.now()}.csv`);
  await dl.saveAs(path);
  return readFileSync(path, 'utf8');
}

/** Rows of a CSV without quoted commas (fixture tensor names have none). */
const csvRows = (text) => text.trim().split('\n').map((l) => l.split(','));

e2eSuite({ dist: DIST, prefix: 'crucible-e2e-stats-', requires: [[CLI, 'run `cargo build -p crucible --bin crucible` first']] }, (s) => ({ server, browser, work } = s));

describe('What the merge did', () => {
  it('ties: charts by layer, the by-kind table, and a CSV equal to the CLI --stats CSV', async () => {
    const yaml = readFileSync(join(FIX, 'recipes/ties.yml'), 'utf8');
    const { page, context, errors } = await newPage();
    await setYaml(page, yaml);
    await page.waitForSelector('#recipe-status.ok');
    for (const m of await page.$$eval('.model-card', (cs) => cs.map((c) => c.dataset.model))) await setModelFiles(page, m, join(FIX, m));
    const res = await runMerge(page);
    assert.ok(res.ok, res.text);

    const csv = await downloadStatsCsv(page);
    const cli = cliStats(yaml, FIX, 'ties');
    assert.equal(csv, cli, 'the page CSV equals the CLI --stats CSV byte for byte');
    const rows = csvRows(csv);
    assert.equal(rows.length, 1 + 39, 'a header and one row per output tensor');
    assert.deepEqual(rows[0].slice(5, 8), ['delta_norm[models/ft_a]', 'delta_norm[models/ft_b]', 'delta_norm[models/ft_c]']);

    // Charts by layer: ‖Δ‖ (one series per model), ‖merged − base‖, cosine, fractions; no SLERP angle for ties.
    const charts = await page.$$eval('#stats figure.stats-chart', (fs) => fs.map((f) => f.dataset.chart));
    assert.deepEqual(charts, ['delta-norm', 'merged-norm', 'cosine', 'fractions']);
    const legend = await page.$$eval('#stats figure[data-chart="delta-norm"] .u-legend .u-label', (ls) => ls.map((l) => l.textContent));
    assert.deepEqual(legend, ['layer', 'models/ft_a', 'models/ft_b', 'models/ft_c']);
    assert.match(await page.textContent('#stats-summary'), /^39 tensors · method ties · 4 layers/);

    // Hover: the legend shows the values at the cursor (layer 0..3).
    const over = page.locator('#stats figure[data-chart="fractions"] .u-over');
    await over.scrollIntoViewIfNeeded();
    const box = await over.boundingBox();
    await over.hover({ position: { x: box.width / 2, y: box.height / 2 } });
    await over.hover({ position: { x: 2, y: box.height / 2 } });
    await page.waitForFunction(() => /^\d+$/.test(document.querySelector('#stats figure[data-chart="fractions"] .u-legend .u-value')?.textContent ?? ''));
    const hover = await page.$$eval('#stats figure[data-chart="fractions"] .u-legend .u-value', (vs) => vs.map((v) => v.textContent));
    assert.equal(hover[0], '0', `cursor on layer 0: ${hover}`);
    // Layer 0's element-weighted sign-conflict fraction, from the CSV rows of layer 0.
    const col = (name) => rows[0].indexOf(name);
    const l0 = rows.slice(1).filter((r) => r[col('layer')] === '0');
    const weighted = (c) => l0.reduce((s, r) => s + Number(r[col(c)]) * Number(r[col('numel')]), 0) / l0.reduce((s, r) => s + Number(r[col('numel')]), 0);
    assert.ok(Math.abs(Number(hover[1]) - weighted('sign_conflict_frac')) < 1e-4, `hover ${hover[1]} vs ${weighted('sign_conflict_frac')}`);
    assert.ok(Math.abs(Number(hover[2]) - weighted('trimmed_frac')) < 1e-4, `hover ${hover[2]} vs ${weighted('trimmed_frac')}`);

    // By kind: attention, mlp, norm, embedding, head with their tensor counts.
    const kinds = await page.$$eval('#stats .stats-table tbody tr', (trs) => trs.map((tr) => [tr.dataset.kind, tr.children[1].textContent]));
    assert.deepEqual(kinds, [['attention', '16'], ['mlp', '12'], ['norm', '9'], ['embedding', '1'], ['head', '1']]);
    if (process.env.STATS_SCREENSHOT) await page.locator('#stats').screenshot({ path: process.env.STATS_SCREENSHOT });
    // The kind filter re-draws the layer charts for one kind.
    await page.selectOption('#stats-kind', 'mlp');
    assert.match(await page.textContent('#stats-summary'), /mlp tensors only/);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('slerp: the SLERP angle chart; CSV equals the CLI', async () => {
    const yaml = readFileSync(join(FIX, 'recipes/slerp.yml'), 'utf8');
    const { page, context, errors } = await newPage();
    await setYaml(page, yaml);
    await page.waitForSelector('#recipe-status.ok');
    for (const m of await page.$$eval('.model-card', (cs) => cs.map((c) => c.dataset.model))) await setModelFiles(page, m, join(FIX, m));
    const res = await runMerge(page);
    assert.ok(res.ok, res.text);
    const csv = await downloadStatsCsv(page);
    assert.equal(csv, cliStats(yaml, FIX, 'slerp'));
    const charts = await page.$$eval('#stats figure.stats-chart', (fs) => fs.map((f) => f.dataset.chart));
    assert.ok(charts.includes('angle'), `charts: ${charts}`);
    const angles = csvRows(csv).slice(1).map((r) => r[csvRows(csv)[0].indexOf('slerp_angle_rad')]);
    assert.ok(angles.every((a) => Number(a) > 0 && Number(a) < Math.PI), 'every tensor has an angle');
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('model names with HTML reach the panel as text', async () => {
    const a = '<img src=x onerror="window.__pwned=1">';
    const b = '<b>bold</b>';
    const yaml = `merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: '${a}'\n    parameters: {weight: 0.5}\n  - model: '${b}'\n    parameters: {weight: 0.5}\ndtype: float32\n`;
    const { page, context, errors } = await newPage();
    await setYaml(page, yaml);
    await page.waitForSelector('#recipe-status.ok');
    const dirs = { base: 'models/base', [a]: 'models/ft_a', [b]: 'models/ft_b' };
    const cards = page.locator('.model-card');
    assert.equal(await cards.count(), 3);
    for (let i = 0; i < 3; i++) {
      const d = dirs[await cards.nth(i).getAttribute('data-model')];
      assert.ok(d, 'a card per model of the recipe');
      await cards.nth(i).locator('input.files-input').setInputFiles(readdirSync(join(FIX, d)).map((f) => join(FIX, d, f)));
      await cards.nth(i).locator('.file-list li').first().waitFor();
    }
    const res = await runMerge(page);
    assert.ok(res.ok, res.text);
    await page.waitForSelector('#stats[data-state="done"]');
    const heads = await page.$$eval('#stats .stats-table th', (ths) => ths.map((t) => t.textContent));
    assert.ok(heads.includes(`‖Δ‖ ${a}`) && heads.includes(`‖Δ‖ ${b}`), `headers: ${heads}`);
    assert.equal(await page.locator('#stats img, #stats b').count(), 0, 'no element made from a model name');
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.deepEqual(errors, []);
    await context.close();
  });
});
