#!/usr/bin/env node
// Scale benchmark: two synthetic checkpoints with Llama-2-7B shapes merged in one headless
// Chromium tab, reading local files and writing to disk, next to the native CLI on the same files.
//
//   node scripts/bench_7b_merge.mjs [--layers N] [--dir DIR] [--sink opfs|folder] [--method linear|ties|slerp] [--keep]
//   npm run bench:merge7b -- [same options]
//
// Shapes (Llama-2-7B, Touvron et al. 2023; HF meta-llama/Llama-2-7b-hf config.json): vocab 32000,
// hidden 4096, intermediate 11008, 32 layers, 32 heads (no GQA), bf16: 6.74 B parameters,
// 13.5 GB per model. `--layers` takes fewer layers when the disk or the time is short (default:
// as many as fit in the free space of DIR keeping 15 GB free, at most 32); the output states the
// size used. The embedding and lm_head (32000 × 4096 = 131 M elements, 524 MB in f32: the largest
// tensors) are always full size, so the memory figures hold for the full model.
//
// Steps: write both models (sharded safetensors ≤ 5 GB + index + config.json; deterministic
// pseudo-random bf16 values), run the native CLI (`crucible merge`, release build:
// $CRUCIBLE_BIN or target/release/crucible) with a linear recipe (bf16 in, fp32 accumulation,
// bf16 out), then the built page (dist/, `npm run build`) in headless Chromium with the same recipe,
// the models given as local files and the output streamed to disk:
//   --sink opfs   (default) the origin private file system through synchronous access handles;
//   --sink folder the File System Access path (`createWritable` streams on a directory handle); the
//                 headless browser cannot show a folder picker, so the page's picker is replaced
//                 by one that returns an OPFS directory: the writes are the real code path.
// Reported: wall time, throughput (GB of input read per second), peak RSS summed over the
// browser's processes (the one started with our profile folder and its descendants; sampled every
// 100 ms) and the idle baseline (same page, files selected, before Merge), and the same as PSS
// (shared pages split between the processes instead of counted in each; every 0.5 s); for the CLI its wall time, throughput and peak RSS (VmHWM). The browser's output
// is checked against the CLI's: same files, same sizes, and the same bytes at 16 sampled 1 MiB
// ranges per file (reading all of it back would double the run). Everything is deleted at the end
// unless --keep. The last stdout line is JSON with every figure.
// --method (default linear): `ties` merges b into base a at density 0.5 (weight 1), `slerp` at t 0.5:
// whole-tensor methods streamed in chunks with passes over the inputs (merge/methods/streaming.rs).
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from '../tests/e2e/serve.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DIST = resolve(process.env.CRUCIBLE_DIST ?? join(ROOT, 'dist'));
const CLI = process.env.CRUCIBLE_BIN ?? join(ROOT, 'target/release/crucible');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const keep = args.includes('--keep');
const sink = opt('--sink', 'opfs');
const method = opt('--method', 'linear');
if (!['linear', 'ties', 'slerp'].includes(method)) throw new Error(`--method ${method}: expected linear, ties or slerp`);
const work = resolve(opt('--dir', join(ROOT, '.cache/bench7b')));
if (!['opfs', 'folder'].includes(sink)) throw new Error(`--sink ${sink}: expected opfs or folder`);
if (!existsSync(join(DIST, 'index.html'))) throw new Error('dist/ is missing: run `npm run build` first');
if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`cargo build --release -p crucible --bin crucible\` (or set CRUCIBLE_BIN)`);

const V = 32000, H = 4096, I = 11008, FULL_LAYERS = 32;
const LAYER = [
  ['input_layernorm.weight', [H]],
  ['self_attn.q_proj.weight', [H, H]],
  ['self_attn.k_proj.weight', [H, H]],
  ['self_attn.v_proj.weight', [H, H]],
  ['self_attn.o_proj.weight', [H, H]],
  ['post_attention_layernorm.weight', [H]],
  ['mlp.gate_proj.weight', [I, H]],
  ['mlp.up_proj.weight', [I, H]],
  ['mlp.down_proj.weight', [H, I]],
];
const numel = (s) => s.reduce((a, b) => a * b, 1);
const layerBytes = LAYER.reduce((a, [, s]) => a + numel(s) * 2, 0);
const fixedBytes = (2 * V * H + H) * 2;
const modelBytes = (layers) => fixedBytes + layers * layerBytes;
const GB = 1e9;

mkdirSync(work, { recursive: true });
const fs = statfsSync(work);
const free = fs.bavail * fs.bsize;
// Disk use: two inputs, the CLI's output and the browser's (in its profile, same disk here).
const fit = Math.floor((free - 15 * GB - 4 * fixedBytes) / (4 * layerBytes));
const layers = Number(opt('--layers', String(Math.max(1, Math.min(FULL_LAYERS, fit)))));
if (4 * modelBytes(layers) > free - 5 * GB) throw new Error(`${layers} layers need ${(4 * modelBytes(layers) / GB).toFixed(1)} GB; ${(free / GB).toFixed(1)} GB free in ${work}`);
const log = (...m) => console.error(`[bench7b] ${m.join(' ')}`);
log(`${layers} of ${FULL_LAYERS} Llama-2-7B layers: ${(modelBytes(layers) / GB).toFixed(2)} GB per model (full size ${(modelBytes(FULL_LAYERS) / GB).toFixed(2)} GB), ${(free / GB).toFixed(1)} GB free in ${work}`);

// ------------------------------------------------------------------ synthetic checkpoints

/** A block of bf16 values ~ N(0, 0.02)-ish from a 32-bit LCG (seeded per model). */
function block(seed, n) {
  const f = new Float32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const u = x / 4294967296;
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    f[i] = (u + x / 4294967296 - 1) * 0.035;
  }
  const u32 = new Uint32Array(f.buffer);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = (u32[i] + 0x7fff + ((u32[i] >>> 16) & 1)) >>> 16; // round to nearest even
  return Buffer.from(out.buffer);
}

function tensorsOf(layers) {
  const t = [['model.embed_tokens.weight', [V, H]]];
  for (let l = 0; l < layers; l++) for (const [n, s] of LAYER) t.push([`model.layers.${l}.${n}`, s]);
  t.push(['model.norm.weight', [H]], ['lm_head.weight', [V, H]]);
  return t;
}

function writeShard(path, tensors, blk) {
  const header = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const [n, s] of tensors) {
    const b = numel(s) * 2;
    header[n] = { dtype: 'BF16', shape: s, data_offsets: [off, off + b] };
    off += b;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const fd = openSync(path, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeSync(fd, len);
  writeSync(fd, Buffer.from(json));
  let k = 0;
  for (const [n, s] of tensors) {
    let left = numel(s) * 2;
    const isNorm = n.includes('norm');
    while (left > 0) {
      const m = Math.min(left, blk.length);
      // norms near 1 (bf16 0x3f80 = 1.0 plus small noise in the low bits), matrices from the block
      const src = isNorm ? Buffer.from(new Uint16Array(m / 2).map((_, i) => 0x3f80 + ((i * 7 + k) & 7)).buffer) : blk.subarray((k * 4096) % (blk.length - m + 1), (k * 4096) % (blk.length - m + 1) + m);
      writeSync(fd, src);
      left -= m;
    }
    k++;
  }
  closeSync(fd);
}

function writeModel(dir, seed) {
  mkdirSync(dir, { recursive: true });
  const blk = block(seed, 32 << 20); // 64 MiB of values, cycled with a per-tensor shift
  const all = tensorsOf(layers);
  const shards = [];
  let cur = [], size = 0;
  for (const t of all) {
    const b = numel(t[1]) * 2;
    if (cur.length && size + b > 5e9) {
      shards.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(t);
    size += b;
  }
  shards.push(cur);
  const map = {};
  shards.forEach((ts, i) => {
    const file = shards.length === 1 ? 'model.safetensors' : `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
    writeShard(join(dir, file), ts, blk);
    for (const [n] of ts) map[n] = file;
  });
  if (shards.length > 1) writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: modelBytes(layers) }, weight_map: map }, null, 2));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: H, intermediate_size: I, num_hidden_layers: layers,
    num_attention_heads: 32, num_key_value_heads: 32, vocab_size: V, max_position_embeddings: 4096, rms_norm_eps: 1e-5,
    tie_word_embeddings: false, torch_dtype: 'bfloat16',
  }, null, 2));
}

const modelsDir = join(work, 'models');
const cliOut = join(work, 'cli-out');
const profile = join(work, 'chromium-profile');
const cleanup = () => {
  if (!keep) for (const p of [modelsDir, cliOut, profile]) rmSync(p, { recursive: true, force: true });
};
process.on('exit', cleanup);

let t = performance.now();
writeModel(join(modelsDir, 'a'), 1);
writeModel(join(modelsDir, 'b'), 2);
const inputBytes = ['a', 'b'].flatMap((m) => readdirSync(join(modelsDir, m)).map((f) => statSync(join(modelsDir, m, f)).size)).reduce((a, b) => a + b, 0);
log(`wrote 2 models, ${(inputBytes / GB).toFixed(2)} GB, in ${((performance.now() - t) / 1000).toFixed(1)} s`);

const yaml = {
  linear: 'merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\ndtype: bfloat16\n',
  ties: 'merge_method: ties\nbase_model: a\nmodels:\n  - model: b\n    parameters: {weight: 1.0, density: 0.5}\ndtype: bfloat16\n',
  slerp: 'merge_method: slerp\nbase_model: a\nmodels:\n  - model: b\nparameters: {t: 0.5}\ndtype: bfloat16\n',
}[method];
log(`recipe (${method}): ${JSON.stringify(yaml)}`);
writeFileSync(join(work, 'recipe.yml'), yaml);

// ------------------------------------------------------------------ native CLI

function runCli() {
  return new Promise((ok, fail) => {
    rmSync(cliOut, { recursive: true, force: true });
    const t0 = performance.now();
    const p = spawn(CLI, ['merge', join(work, 'recipe.yml'), cliOut, '--quiet'], { cwd: modelsDir, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '', hwm = 0;
    p.stderr.on('data', (d) => (err += d));
    const timer = setInterval(() => {
      try {
        const m = readFileSync(`/proc/${p.pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/);
        if (m) hwm = Math.max(hwm, Number(m[1]) * 1024);
      } catch {
        // exited
      }
    }, 50);
    p.on('exit', (code) => {
      clearInterval(timer);
      if (code !== 0) fail(new Error(`crucible merge failed (${code}): ${err}`));
      else ok({ wall_s: (performance.now() - t0) / 1000, peak_rss_bytes: hwm });
    });
  });
}
const cli = await runCli();
log(`CLI: ${cli.wall_s.toFixed(1)} s, ${(inputBytes / GB / cli.wall_s).toFixed(2)} GB/s input, peak RSS ${(cli.peak_rss_bytes / 2 ** 20).toFixed(0)} MiB`);

// ------------------------------------------------------------------ the page in Chromium

/** Resident bytes of the browser we launched: the process whose command line names our profile
 *  folder and all its descendants (zygotes, renderers, GPU, utility processes), from /proc. Other
 *  Chromium instances on the machine (other test runs) are not counted. */
function ourRss(withPss = false) {
  const ppid = new Map();
  const rss = new Map();
  const roots = [];
  for (const p of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8');
      ppid.set(p, status.match(/PPid:\s+(\d+)/)?.[1]);
      const r = status.match(/VmRSS:\s+(\d+) kB/);
      if (r) rss.set(p, Number(r[1]) * 1024);
      if (readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(`--user-data-dir=${profile}`)) roots.push(p);
    } catch {
      // the process ended while we looked
    }
  }
  const ours = new Set(roots);
  for (let grew = true; grew;) {
    grew = false;
    for (const [p, pp] of ppid) {
      if (!ours.has(p) && ours.has(pp)) {
        ours.add(p);
        grew = true;
      }
    }
  }
  const total = [...ours].reduce((a, p) => a + (rss.get(p) ?? 0), 0);
  if (!withPss) return total;
  // PSS: shared pages (Chromium's code, shared memory) divided among the processes sharing them,
  // so the sum does not count them several times as the RSS sum does.
  let pss = 0;
  for (const p of ours) {
    try {
      pss += Number(readFileSync(`/proc/${p}/smaps_rollup`, 'utf8').match(/Pss:\s+(\d+) kB/)?.[1] ?? 0) * 1024;
    } catch {
      // ended
    }
  }
  return { rss: total, pss };
}

rmSync(profile, { recursive: true, force: true });
const server = await serve(DIST);
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
});
let page_ = null;
try {
  // the persistent context's own first tab (a second tab would add a renderer to the figures)
  const page = context.pages()[0] ?? (await context.newPage());
  page_ = page;
  await page.goto(server.url);
  await page.waitForSelector('#engine-status[data-state="ready"]', { timeout: 60_000 });
  await page.click('#view-yaml');
  await page.fill('#yaml-text', yaml);
  await page.waitForSelector('#recipe-status.ok', { timeout: 10_000 });
  for (const m of ['a', 'b']) {
    const dir = join(modelsDir, m);
    await page.locator(`.model-card[data-model="${m}"] input.files-input`).setInputFiles(readdirSync(dir).map((f) => join(dir, f)));
  }
  if (sink === 'folder') {
    await page.evaluate(() => {
      window.showDirectoryPicker = async () => (await navigator.storage.getDirectory()).getDirectoryHandle('bench-folder', { create: true });
    });
    await page.selectOption('#output-select', 'directory');
  } else {
    await page.selectOption('#output-select', 'opfs');
  }
  await page.waitForTimeout(1000);
  const base = ourRss(true);
  const baseline = base.rss;
  let peak = baseline, peakPss = base.pss, ticks = 0;
  const timer = setInterval(() => {
    if (++ticks % 5 === 0) {
      const m = ourRss(true);
      peak = Math.max(peak, m.rss);
      peakPss = Math.max(peakPss, m.pss);
    } else peak = Math.max(peak, ourRss());
  }, 100);
  const t0 = performance.now();
  await page.click('#merge-btn');
  await page.waitForSelector('#run-status.ok, #run-status.error', { timeout: 3_600_000 });
  const wall = (performance.now() - t0) / 1000;
  clearInterval(timer);
  peak = Math.max(peak, ourRss());
  const status = await page.textContent('#run-status');
  if ((await page.getAttribute('#run-status', 'class')).includes('error')) throw new Error(`merge failed in the page: ${status}`);
  log(`page: ${status}`);

  // Check the browser's files against the CLI's: names, sizes, 16 sampled 1 MiB ranges each.
  const cliFiles = readdirSync(cliOut).sort();
  const ranges = {};
  for (const f of cliFiles) {
    const size = statSync(join(cliOut, f)).size;
    const n = Math.min(16, Math.ceil(size / 2 ** 20));
    ranges[f] = { size, at: [...new Set(Array.from({ length: n }, (_, i) => Math.max(0, Math.min(size - 2 ** 20, Math.floor((size * i) / n)))))] };
  }
  const got = await page.evaluate(async ({ ranges, folder }) => {
    const root = await navigator.storage.getDirectory();
    const dir = await root.getDirectoryHandle(folder);
    const names = [];
    for await (const [name] of dir.entries()) names.push(name);
    const out = { names: names.sort(), files: {} };
    for (const [name, { at }] of Object.entries(ranges)) {
      const file = await (await dir.getFileHandle(name)).getFile();
      const parts = [];
      for (const a of at) parts.push(Array.from(new Uint8Array(await file.slice(a, a + 2 ** 20).arrayBuffer()).subarray(0, 4096)).join(',') + ':' + String(new Uint8Array(await file.slice(a, a + 2 ** 20).arrayBuffer()).reduce((s, x, i) => (s + x * (i % 251 + 1)) % 1000000007, 0)));
      out.files[name] = { size: file.size, parts };
    }
    return out;
  }, { ranges, folder: sink === 'folder' ? 'bench-folder' : 'crucible-output' });
  const mismatches = [];
  if (got.names.join() !== cliFiles.join()) mismatches.push(`files ${got.names} vs CLI ${cliFiles}`);
  for (const f of cliFiles) {
    const g = got.files[f];
    if (!g || g.size !== ranges[f].size) {
      mismatches.push(`${f}: size ${g?.size} vs CLI ${ranges[f].size}`);
      continue;
    }
    const fd = openSync(join(cliOut, f), 'r');
    ranges[f].at.forEach((a, i) => {
      const buf = Buffer.alloc(Math.min(2 ** 20, ranges[f].size - a));
      readSync(fd, buf, 0, buf.length, a);
      const want = Array.from(buf.subarray(0, 4096)).join(',') + ':' + String(buf.reduce((s, x, j) => (s + x * (j % 251 + 1)) % 1000000007, 0));
      if (want !== g.parts[i]) mismatches.push(`${f}: bytes at ${a} differ`);
    });
    closeSync(fd);
  }
  const result = {
    method,
    layers,
    model_gb: Number((modelBytes(layers) / GB).toFixed(3)),
    input_gb: Number((inputBytes / GB).toFixed(3)),
    sink,
    browser: {
      wall_s: Number(wall.toFixed(2)),
      input_gb_per_s: Number((inputBytes / GB / wall).toFixed(3)),
      peak_rss_mib: Math.round(peak / 2 ** 20),
      idle_rss_mib: Math.round(baseline / 2 ** 20),
      merge_rss_mib: Math.round((peak - baseline) / 2 ** 20),
      peak_pss_mib: Math.round(peakPss / 2 ** 20),
      idle_pss_mib: Math.round(base.pss / 2 ** 20),
    },
    cli: { wall_s: Number(cli.wall_s.toFixed(2)), input_gb_per_s: Number((inputBytes / GB / cli.wall_s).toFixed(3)), peak_rss_mib: Math.round(cli.peak_rss_bytes / 2 ** 20) },
    output_matches_cli: mismatches.length === 0,
    mismatches,
  };
  console.log(`\n${layers}/${FULL_LAYERS} layers, ${result.input_gb} GB of input (2 × ${result.model_gb} GB bf16), ${method} merge, output to ${sink}`);
  console.log(`              wall      input rate   peak RSS`);
  console.log(`browser   ${wall.toFixed(1).padStart(7)} s  ${result.browser.input_gb_per_s.toFixed(2).padStart(7)} GB/s  ${String(result.browser.peak_rss_mib).padStart(6)} MiB (RSS summed over the browser's ${'processes'}; idle page ${result.browser.idle_rss_mib} MiB)`);
  console.log(`          PSS (shared pages split between processes): peak ${result.browser.peak_pss_mib} MiB, idle ${result.browser.idle_pss_mib} MiB (sampled every 0.5 s)`);
  console.log(`CLI       ${cli.wall_s.toFixed(1).padStart(7)} s  ${result.cli.input_gb_per_s.toFixed(2).padStart(7)} GB/s  ${String(result.cli.peak_rss_mib).padStart(6)} MiB`);
  console.log(`browser output = CLI output (names, sizes, sampled bytes): ${result.output_matches_cli ? 'yes' : `NO: ${mismatches.slice(0, 5).join('; ')}`}`);
  console.log(JSON.stringify(result));
  if (!result.output_matches_cli) process.exitCode = 1;
} finally {
  // free the browser's copy of the output before deleting the profile
  await page_?.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    for (const n of ['crucible-output', 'bench-folder']) await root.removeEntry(n, { recursive: true }).catch(() => undefined);
  }).catch(() => undefined);
  await context.close();
  await server.close();
}
