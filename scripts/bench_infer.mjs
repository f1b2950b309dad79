// `npm run bench:infer`: prefill and decode tokens/s of SmolLM2-135M-Instruct Q4_1 on every path
// this build has, with the memory each used and the memory-bandwidth bound of decoding.
//
//   native CPU    target/release/crucible run --backend cpu (prints tokens/s on stderr); peak RSS
//                 from /usr/bin/time
//   native wgpu   target/release/crucible run --backend gpu (wgpu: Vulkan/Metal/DX12, lavapipe
//                 where there is no GPU); skipped with the reason when the CLI refuses it
//   wasm CPU      the built page (dist/) in headless Chromium: the Generate tab, its worker and
//                 `Generator` (crate/src/wasm/generate.rs), timed by the worker; peak RSS summed
//                 over Chromium's processes (minus nothing: the idle page is printed too)
//   Chromium GPU  the same page with the backend 'auto' and --enable-unsafe-webgpu: WebGPU
//                 (models/llama_gpu.rs through wgpu's browser backend); the adapter is printed
//                 (SwiftShader, a software rasteriser, where the machine has no GPU)
//
// Bandwidth bound: decoding one token reads every weight once (the tied head reads the whole
// embedding table), so decode tokens/s ≤ read bandwidth / weight bytes. The read bandwidth is
// measured here (one thread summing a 256 MiB Float64Array, and Buffer.copy for reference) —
// one core's bandwidth, which is what a single-threaded decode can use.
//
// Usage: node scripts/bench_infer.mjs [--tokens N (default 16)] [--skip-gpu] [--skip-native] [--skip-wasm]
// (--skip-gpu leaves out both GPU rows: on a machine without a GPU they run on software
// rasterisers — lavapipe natively, SwiftShader in Chromium — and take several minutes each.)
// Needs: `npm run build` (dist/), `cargo build --release -p crucible --bin crucible`, and
// .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_models.sh).
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from '../tests/e2e/serve.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DIST = resolve(process.env.CRUCIBLE_DIST ?? join(ROOT, 'dist'));
const CLI = process.env.CRUCIBLE_BIN ?? join(resolve(ROOT, process.env.CARGO_TARGET_DIR ?? 'target'), 'release/crucible');
const GGUF = join(ROOT, '.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf');
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const TOKENS = Number(opt('--tokens', '16'));
// About 60 tokens of prompt, so that the prefill rate is not just start-up.
const PROMPT =
  'The history of Paris begins with a small fishing village on an island in the Seine. Over two thousand years it grew into a great city of bridges, churches and markets, and today it is the capital of France. The capital of France is';

const fmt = (v, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '–');
const mib = (b) => (Number.isFinite(b) ? `${(b / 2 ** 20).toFixed(0)} MiB` : '–');

function run(cmd, argv, timeoutMs) {
  return new Promise((ok) => {
    execFile(cmd, argv, { timeout: timeoutMs, maxBuffer: 16 << 20, env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' } }, (err, stdout, stderr) =>
      ok({ err, stdout: String(stdout), stderr: String(stderr) }),
    );
  });
}

/** `crucible run` under /usr/bin/time: tokens/s from its stderr summary, peak RSS from time. */
async function native(backend) {
  const timeFile = join(work, `time-${backend}.txt`);
  const r = await run('/usr/bin/time', ['-f', '%M', '-o', timeFile, CLI, 'run', '--model', GGUF, '--prompt', PROMPT, '--max-tokens', String(TOKENS), '--greedy', '--backend', backend], 590_000);
  const prefill = r.stderr.match(/prefill: ([\d.]+|inf) tokens\/s \((\d+) tokens in ([\d.]+)s\)/);
  const decode = r.stderr.match(/decode: ([\d.]+|inf) tokens\/s \((\d+) steps in ([\d.]+)s/);
  if (!prefill || !decode) {
    const why = r.stderr.trim().split('\n').filter(Boolean).pop() ?? String(r.err);
    return { path: `native ${backend}`, error: why };
  }
  const adapter = r.stderr.match(/GPU adapter: ([^(\n]+)/)?.[1]?.trim();
  let rss = NaN;
  try {
    rss = Number(readFileSync(timeFile, 'utf8').trim().split('\n').pop()) * 1024;
  } catch {}
  return {
    path: `native ${backend}${adapter ? ` (${adapter})` : ''}`,
    promptTokens: Number(prefill[2]),
    prefill: Number(prefill[2]) / Number(prefill[3]),
    decodeSteps: Number(decode[2]),
    decode: Number(decode[2]) / Number(decode[3]),
    rss,
    text: r.stdout.trim(),
  };
}

/** Resident bytes of this process's descendants (our Chromium: other browsers on the machine,
 * e.g. other test runs, are left out), summed over processes (shared pages count more than once,
 * so the idle page is printed too). */
function ourChromiumRss() {
  const parent = new Map();
  const rss = new Map();
  for (const p of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      parent.set(p, stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const m = readFileSync(`/proc/${p}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
      if (m) rss.set(p, Number(m[1]) * 1024);
    } catch {
      // the process ended while we looked
    }
  }
  const me = String(process.pid);
  let total = 0;
  for (const [p, bytes] of rss) {
    if (p === me) continue;
    for (let q = parent.get(p), n = 0; q && q !== '0' && n < 64; q = parent.get(q), n++) {
      if (q === me) {
        total += bytes;
        break;
      }
    }
  }
  return total;
}

async function wasmRun(backend) {
  const label = backend === 'cpu' ? 'wasm CPU (Chromium)' : 'WebGPU (Chromium)';
  const ourRss = ourChromiumRss;
  const server = await serve(DIST);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(server.url);
    await page.click('#tab-generate');
    await page.waitForSelector('#generate-tab[data-ready="true"]');
    const idle = ourRss();
    let peak = idle;
    const timer = setInterval(() => (peak = Math.max(peak, ourRss())), 100);
    await page.selectOption('#gen-backend', backend);
    await page.setInputFiles('#gen-gguf-input', GGUF);
    await page.waitForSelector('.gen-slot[data-state="ready"], .gen-slot[data-state="error"]', { timeout: 120_000 });
    if ((await page.getAttribute('.gen-slot', 'data-state')) !== 'ready') return { path: label, error: await page.textContent('.gen-status') };
    const on = await page.getAttribute('.gen-slot', 'data-backend');
    const note = await page.textContent('.gen-slot .gen-backend-note');
    if (backend === 'auto' && on !== 'gpu') return { path: label, error: note };
    const weightBytes = Number(await page.getAttribute('.gen-slot', 'data-weight-bytes'));
    await page.check('#gen-greedy');
    await page.fill('#gen-max-tokens', String(TOKENS));
    await page.fill('#gen-prompt', PROMPT);
    await page.click('#gen-run');
    await page.waitForSelector('.gen-slot[data-reason]', { timeout: 590_000 });
    clearInterval(timer);
    const d = await page.$eval('.gen-slot', (s) => ({ ...s.dataset, text: s.querySelector('.gen-text').textContent }));
    const promptTokens = Number((await page.textContent('.gen-slot .gen-stats')).match(/prefill (\d+) tokens/)[1]);
    return {
      path: on === 'gpu' ? `${label}: ${note.replace(/^Runs on WebGPU \((.*)\)\.$/, '$1')}` : label,
      promptTokens,
      prefill: promptTokens / (Number(d.prefillMs) / 1000),
      decodeSteps: Number(d.forwards),
      // the worker's decode time covers every step (sampling + one forward each but the last)
      decode: Number(d.forwards) / (Number(d.decodeMs) / 1000),
      rss: peak,
      idle,
      weightBytes,
      text: d.text.trim(),
    };
  } finally {
    await browser.close();
    await server.close();
  }
}

/** One core's memory bandwidth: read (sum a 256 MiB Float64Array) and copy (Buffer.copy). */
function bandwidth() {
  const n = 32 << 20; // 256 MiB of f64
  const a = new Float64Array(n);
  for (let i = 0; i < n; i += 4096) a[i] = i;
  let best = 0;
  let s = 0;
  for (let rep = 0; rep < 5; rep++) {
    const t = performance.now();
    // four accumulators: the loop is bound by loads, not by one chain of dependent adds
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let i = 0; i < n; i += 4) {
      s0 += a[i];
      s1 += a[i + 1];
      s2 += a[i + 2];
      s3 += a[i + 3];
    }
    s += s0 + s1 + s2 + s3;
    best = Math.max(best, (n * 8) / ((performance.now() - t) / 1000));
  }
  const src = Buffer.alloc(256 << 20, 1);
  const dst = Buffer.alloc(256 << 20);
  let copy = 0;
  for (let rep = 0; rep < 5; rep++) {
    const t = performance.now();
    src.copy(dst);
    copy = Math.max(copy, src.length / ((performance.now() - t) / 1000));
  }
  return { read: best, copy, checksum: s };
}

if (!existsSync(GGUF)) {
  console.error(`${GGUF} is missing: run scripts/fetch_models.sh`);
  process.exit(2);
}
const work = mkdtempSync(join(tmpdir(), 'crucible-bench-infer-'));
const rows = [];
try {
  if (!args.includes('--skip-native')) {
    if (!existsSync(CLI)) rows.push({ path: 'native cpu', error: `${CLI} is missing: cargo build --release -p crucible --bin crucible` });
    else {
      console.error('[bench:infer] native cpu…');
      rows.push(await native('cpu'));
      if (!args.includes('--skip-gpu')) {
        console.error('[bench:infer] native gpu (wgpu)…');
        rows.push(await native('gpu'));
      }
    }
  }
  if (!args.includes('--skip-wasm')) {
    if (!existsSync(join(DIST, 'index.html'))) rows.push({ path: 'wasm CPU (Chromium)', error: 'dist/ is missing: npm run build' });
    else {
      console.error('[bench:infer] wasm cpu in Chromium…');
      rows.push(await wasmRun('cpu'));
      if (!args.includes('--skip-gpu')) {
        console.error('[bench:infer] WebGPU in Chromium…');
        rows.push(await wasmRun('auto'));
      }
    }
  }
  console.error('[bench:infer] memory bandwidth…');
  const bw = bandwidth();
  const weightBytes = rows.find((r) => r.weightBytes)?.weightBytes ?? NaN;

  console.log(`\nSmolLM2-135M-Instruct Q4_1, greedy, prompt ${rows.find((r) => r.promptTokens)?.promptTokens ?? '?'} tokens, up to ${TOKENS} new tokens\n`);
  console.log('| path | prefill tokens/s | decode tokens/s | decode steps | peak RSS | note |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    if (r.error) console.log(`| ${r.path} | – | – | – | – | ${r.error.replace(/\|/g, '/')} |`);
    else console.log(`| ${r.path} | ${fmt(r.prefill)} | ${fmt(r.decode)} | ${r.decodeSteps} | ${mib(r.rss)} | ${r.idle ? `Chromium idle page ${mib(r.idle)}` : ''} |`);
  }
  console.log(`\nweights read per decoded token: ${mib(weightBytes)} (${weightBytes} bytes, from the model's weight_bytes: every projection + the tied head)`);
  console.log(`one core's memory bandwidth: read ${fmt(bw.read / 1e9, 2)} GB/s (sum over a 256 MiB Float64Array), copy ${fmt(bw.copy / 1e9, 2)} GB/s (Buffer.copy 256 MiB)`);
  console.log(`bandwidth bound on decode: ${fmt(bw.read / weightBytes)} tokens/s (read bandwidth / weight bytes)`);
  for (const r of rows.filter((r) => !r.error)) console.log(`  ${r.path}: ${fmt((100 * r.decode * weightBytes) / bw.read)}% of the bound; text: ${JSON.stringify(r.text.slice(0, 60))}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
