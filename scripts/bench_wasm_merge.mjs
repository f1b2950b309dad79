#!/usr/bin/env node
// The wasm side of the merge benchmark: runs one mergekit recipe through the built page (dist/)
// in headless Chromium, exactly as a person would (models given as local files, Merge clicked,
// the Web Worker streams tensor by tensor), and prints how long the merge took and the peak
// resident memory of all Chromium processes together.
//
//   node scripts/bench_wasm_merge.mjs RECIPE.yml [MODELS_DIR] [--seed N]
//
// Model references in the recipe are folders, absolute or relative to MODELS_DIR (default: the
// recipe's folder). The last stdout line is JSON: {"wall_s": …, "peak_bytes": …, "baseline_bytes": …,
// "files": […]}, the bytes being the summed RSS of the browser's processes at the peak and idle.
// scripts/bench_merge.py calls it through its wasm hook:
//   python3 scripts/bench_merge.py --wasm-cmd 'node scripts/bench_wasm_merge.mjs {recipe} {models}'
// Needs `npm run build` first (release wasm in dist/).
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from '../tests/e2e/serve.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DIST = resolve(process.env.CRUCIBLE_DIST ?? join(ROOT, 'dist'));
const args = process.argv.slice(2);
const seedAt = args.indexOf('--seed');
const seed = seedAt >= 0 ? args.splice(seedAt, 2)[1] : '42';
const [recipePath, modelsArg] = args;
if (!recipePath) {
  console.error('usage: node scripts/bench_wasm_merge.mjs RECIPE.yml [MODELS_DIR] [--seed N]');
  process.exit(2);
}
if (!existsSync(join(DIST, 'index.html'))) {
  console.error('dist/ is missing: run `npm run build` first');
  process.exit(2);
}
const yaml = readFileSync(recipePath, 'utf8');
const modelsDir = resolve(modelsArg ?? dirname(recipePath));
// Every model reference of the recipe (models:, slices: sources, base_model:), in order.
const refs = [...new Set([...yaml.matchAll(/^\s*-?\s*(?:model|base_model):\s*["']?([^"'\s#]+)/gm)].map((m) => m[1]))];

/** Chromium processes now running, as pid → resident bytes (from /proc). */
function chromiumRss() {
  const out = new Map();
  for (const p of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (!readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('chromium')) continue;
      const rss = readFileSync(`/proc/${p}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
      if (rss) out.set(p, Number(rss[1]) * 1024);
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}
// Chromium processes that are not ours (another browser on the machine) are left out.
const before = new Set(chromiumRss().keys());
const ourRss = () => [...chromiumRss()].filter(([p]) => !before.has(p)).reduce((a, [, b]) => a + b, 0);

const server = await serve(DIST);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  await page.goto(server.url);
  await page.waitForSelector('#engine-status[data-state="ready"]', { timeout: 60_000 });
  await page.click('#view-yaml');
  await page.fill('#yaml-text', yaml);
  await page.waitForSelector('#recipe-status.ok', { timeout: 10_000 });
  await page.fill('#seed-input', seed);
  for (const ref of refs) {
    const dir = isAbsolute(ref) ? ref : join(modelsDir, ref);
    const files = readdirSync(dir).map((f) => join(dir, f)).filter((f) => statSync(f).isFile());
    await page.locator(`.model-card[data-model="${ref}"] input.files-input`).setInputFiles(files);
  }
  let peak = 0;
  const sample = () => {
    peak = Math.max(peak, ourRss());
  };
  // RSS summed over processes counts shared pages more than once: report the idle page too, so
  // the merge's own cost is peak − baseline.
  const baseline = ourRss();
  sample();
  const timer = setInterval(sample, 100);
  const t0 = performance.now();
  await page.click('#merge-btn');
  await page.waitForSelector('#run-status.ok, #run-status.error', { timeout: 3_600_000 });
  const wall = (performance.now() - t0) / 1000;
  clearInterval(timer);
  sample();
  const status = await page.textContent('#run-status');
  if ((await page.getAttribute('#run-status', 'class')).includes('error')) {
    console.error(`merge failed in the page: ${status}`);
    process.exitCode = 1;
  } else {
    const files = await page.$$eval('a.download[data-file]', (as) => as.map((a) => a.dataset.file));
    console.error(`page: ${status}`);
    console.log(JSON.stringify({ wall_s: Number(wall.toFixed(3)), peak_bytes: peak || null, baseline_bytes: baseline || null, files }));
  }
} finally {
  await browser.close();
  await server.close();
}
