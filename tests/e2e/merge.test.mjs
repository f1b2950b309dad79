// End-to-end tests of the built page (dist/) in Debian's Chromium, driven by playwright-core.
// The native CLI (target/debug/crucible, or $CRUCIBLE_BIN) is the reference: every merge done
// through the page must give the same bytes as `crucible merge` on the same recipe.
//
// Needs: `npm run build` (or scripts/test.sh, which builds first) and the CLI binary.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, writeSync, copyFileSync } from 'node:fs';

import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { e2eSuite, openPage } from './serve.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FIX = join(ROOT, 'tests/fixtures/merge');
const DIST = join(ROOT, 'dist');
const CLI = process.env.CRUCIBLE_BIN ?? join(resolve(ROOT, process.env.CARGO_TARGET_DIR ?? 'target'), 'debug/crucible');

const ALL_METHODS = [
  'linear', 'slerp', 'nuslerp', 'multislerp', 'karcher', 'task_arithmetic', 'ties', 'dare_ties', 'dare_linear',
  'breadcrumbs', 'breadcrumbs_ties', 'della', 'della_linear', 'model_stock', 'nearswap', 'sce', 'arcee_fusion', 'passthrough',
];

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

let server;
let browser;
let work;

/** Run the native CLI on `yaml` with model paths relative to `cwd`; returns the output folder. */
function cliMerge(yaml, cwd, name, seed = '0', shard = null) {
  const recipe = join(work, `${name}.yml`);
  const out = join(work, `${name}-cli`);
  writeFileSync(recipe, yaml);
  rmSync(out, { recursive: true, force: true });
  execFileSync(CLI, ['merge', recipe, out, '--seed', seed, ...(shard ? ['--out-shard-size', shard] : [])], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  return out;
}

async function newPage() {
  return openPage(browser, server.url, { acceptDownloads: true });
}

/** Files of a fixture model folder, as paths for setInputFiles. */
const modelFilePaths = (dir) => readdirSync(dir).map((f) => join(dir, f));

async function setModelFiles(page, model, paths) {
  const card = page.locator(`.model-card[data-model="${model}"]`);
  await card.locator('input.files-input').setInputFiles(paths);
  await page.locator(`.model-card[data-model="${model}"] .file-list li`).first().waitFor();
}

async function setYaml(page, yaml) {
  await page.click('#view-yaml');
  await page.fill('#yaml-text', yaml);
  // The page re-parses 200 ms after the last keystroke.
  await page.waitForFunction(() => !document.querySelector('#recipe-status')?.textContent?.startsWith('…'), null, { timeout: 5000 });
  await page.waitForTimeout(400);
}

async function runMerge(page) {
  await page.click('#merge-btn');
  await page.waitForSelector('#run-status.ok, #run-status.error', { timeout: 120_000 });
  const cls = await page.getAttribute('#run-status', 'class');
  const text = await page.textContent('#run-status');
  return { ok: cls.includes('ok'), text };
}

async function downloadResult(page, file) {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click(`a.download[data-file="${file}"]`)]);
  const path = join(work, `dl-${Date.now()}-${file.replace(/\//g, '_')}`);
  await dl.saveAs(path);
  return readFileSync(path);
}

/** CRC-32 (IEEE), bitwise: an independent check of the page's table-driven one. */
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** Entries of a stored (method 0) zip, checked against its central directory and CRCs. */
function readStoredZip(zip) {
  const eocd = zip.length - 22;
  assert.equal(zip.readUInt32LE(eocd), 0x06054b50, 'end of central directory');
  const count = zip.readUInt16LE(eocd + 10);
  let cd = zip.readUInt32LE(eocd + 16);
  const entries = [];
  for (let i = 0; i < count; i++) {
    assert.equal(zip.readUInt32LE(cd), 0x02014b50, 'central directory header');
    const crc = zip.readUInt32LE(cd + 16), size = zip.readUInt32LE(cd + 24), nameLen = zip.readUInt16LE(cd + 28);
    const name = zip.subarray(cd + 46, cd + 46 + nameLen).toString();
    const local = zip.readUInt32LE(cd + 42);
    assert.equal(zip.readUInt32LE(local), 0x04034b50, 'local header');
    assert.equal(zip.readUInt16LE(local + 8), 0, 'stored');
    const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
    const data = zip.subarray(start, start + size);
    assert.equal(crc32(data), crc, `CRC of ${name}`);
    entries.push({ name, data });
    cd += 46 + nameLen + zip.readUInt16LE(cd + 30) + zip.readUInt16LE(cd + 32);
  }
  return entries;
}

e2eSuite({ dist: DIST, prefix: 'crucible-e2e-', requires: [[CLI, 'run `cargo build -p crucible --bin crucible` first']] }, (s) => ({ server, browser, work } = s));

describe('Merge tab', () => {
  it('loads, lists every merge method and reports the WebGPU status', async () => {
    const { page, context, errors } = await newPage();
    const names = await page.$$eval('#method-select option', (os) => os.map((o) => o.value));
    assert.deepEqual([...names].sort(), [...ALL_METHODS].sort());
    await page.waitForFunction(() => !document.querySelector('#gpu-status')?.textContent?.includes('checking'));
    // Chromium with --enable-unsafe-webgpu has an adapter (SwiftShader where there is no GPU).
    assert.equal(await page.getAttribute('#gpu-status', 'data-state'), 'adapter', await page.textContent('#gpu-status'));
    // The demo loads with one click and its recipe is valid.
    await page.click('#demo-btn');
    assert.equal(await page.locator('.model-card').count(), 3);
    await page.waitForSelector('#recipe-status.ok');
    // ...and merges with one more click.
    const res = await runMerge(page);
    assert.ok(res.ok, res.text);
    assert.match(res.text, /21 tensors/);
    const st = await downloadResult(page, 'model.safetensors');
    const headerLen = Number(st.readBigUInt64LE(0));
    const header = JSON.parse(st.subarray(8, 8 + headerLen).toString());
    assert.equal(Object.keys(header).filter((k) => k !== '__metadata__').length, 21);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('merges two fixture checkpoints through the form; the download equals the CLI output (sha256)', async () => {
    const { page, context, errors } = await newPage();
    // Three models named as the CLI will find them (paths relative to tests/fixtures/merge).
    for (let i = 0; i < 3; i++) await page.click('#add-model-btn');
    const names = ['models/base', 'models/ft_a', 'models/ft_b'];
    for (let i = 0; i < 3; i++) {
      const input = page.locator('.model-card input.model-name').nth(i);
      await input.fill(names[i]);
      await input.dispatchEvent('change');
      await page.waitForSelector(`.model-card[data-model="${names[i]}"]`);
    }
    // models/ft_a through the folder picker (webkitdirectory), the others file by file.
    await page.locator('.model-card[data-model="models/ft_a"] input.dir-input').setInputFiles(join(FIX, 'models/ft_a'));
    await page.locator('.model-card[data-model="models/ft_a"] .file-list li').first().waitFor();
    assert.deepEqual(
      (await page.locator('.model-card[data-model="models/ft_a"] .file-name').allTextContents()).sort(),
      readdirSync(join(FIX, 'models/ft_a')).sort(),
    );
    for (const n of ['models/base', 'models/ft_b']) await setModelFiles(page, n, modelFilePaths(join(FIX, n)));
    await page.selectOption('#method-select', 'ties');
    await page.selectOption('#base-select', 'models/base');
    // Per-model parameters of the two fine-tunes.
    const set = async (model, param, value) => {
      const row = page.locator('.model-params-row', { hasText: model });
      await row.locator(`.param[data-param="${param}"] input`).fill(value);
    };
    await set('models/ft_a', 'weight', '1.0');
    await set('models/ft_a', 'density', '0.5');
    await set('models/ft_b', 'weight', '0.7');
    await set('models/ft_b', 'density', '0.3');
    await page.waitForSelector('#recipe-status.ok');
    const yaml = await page.inputValue('#yaml-text');
    assert.match(yaml, /merge_method: ties/);
    const res = await runMerge(page);
    assert.ok(res.ok, res.text);
    const got = await downloadResult(page, 'model.safetensors');
    const cli = cliMerge(yaml, FIX, 'ui-ties');
    assert.equal(sha256(got), sha256(readFileSync(join(cli, 'model.safetensors'))));
    const cfg = await downloadResult(page, 'config.json');
    assert.equal(cfg.toString(), readFileSync(join(cli, 'config.json'), 'utf8'));
    // "Download all": a stored zip holding the same files, CRCs right.
    const [zdl] = await Promise.all([page.waitForEvent('download'), page.click('#zip-btn')]);
    assert.equal(zdl.suggestedFilename(), 'merged-model.zip');
    const zpath = join(work, 'merged.zip');
    await zdl.saveAs(zpath);
    const entries = readStoredZip(readFileSync(zpath));
    const listed = await page.$$eval('a.download', (as) => as.map((a) => a.dataset.file));
    assert.deepEqual(entries.map((e) => e.name), listed);
    assert.equal(sha256(entries.find((e) => e.name === 'model.safetensors').data), sha256(got));
    assert.deepEqual(errors, []);
    await context.close();
  });

  const manifest = JSON.parse(readFileSync(join(FIX, 'manifest.json'), 'utf8'));
  for (const name of ['dare_ties', 'della', 'slerp_slices', 'ties_sharded_in', 'linear_sharded_out', 'linear_bf16', 'passthrough_frankenmerge']) {
    it(`fixture recipe ${name}: the wasm merge equals the native CLI byte for byte`, async () => {
      const yaml = readFileSync(join(FIX, 'recipes', `${name}.yml`), 'utf8');
      const seed = '42';
      const { page, context, errors } = await newPage();
      await setYaml(page, yaml);
      await page.waitForSelector('#recipe-status.ok');
      const models = await page.$$eval('.model-card', (cs) => cs.map((c) => c.dataset.model));
      assert.ok(models.length >= 1, 'the YAML view created the model cards');
      for (const m of models) await setModelFiles(page, m, modelFilePaths(join(FIX, m)));
      await page.fill('#seed-input', seed);
      const shard = manifest.cases.find((c) => c.name === name)?.out_shard_size;
      if (shard) await page.fill('#shard-input', String(shard));
      const res = await runMerge(page);
      assert.ok(res.ok, res.text);
      const cli = cliMerge(yaml, FIX, `fixture-${name}`, seed, shard ? String(shard) : null);
      if (shard) assert.ok(readdirSync(cli).includes('model.safetensors.index.json'), 'the CLI sharded its output');
      const outputs = await page.$$eval('a.download', (as) => as.map((a) => a.dataset.file));
      const expected = readdirSync(cli).filter((f) => f !== 'mergekit_config.yml').sort();
      assert.deepEqual(outputs.filter((f) => f !== 'mergekit_config.yml').sort(), expected);
      for (const f of expected) {
        const got = await downloadResult(page, f);
        assert.equal(sha256(got), sha256(readFileSync(join(cli, f))), `${f} differs from the CLI's`);
      }
      assert.deepEqual(errors, []);
      await context.close();
    });
  }

  it('cancel mid-merge says cancelled and downloads nothing', async () => {
    // Two models large enough that the merge takes a while (della: seconds): 24 tensors of 512×2048 f32 (4 MiB each).
    const big = (dir, seed) => {
      mkdirSync(dir, { recursive: true });
      const n = 24, shape = [512, 2048], bytes = shape[0] * shape[1] * 4;
      const header = { __metadata__: { format: 'pt' } };
      for (let i = 0; i < n; i++) header[`model.layers.${i}.mlp.up_proj.weight`] = { dtype: 'F32', shape, data_offsets: [i * bytes, (i + 1) * bytes] };
      let json = JSON.stringify(header);
      json += ' '.repeat((8 - (json.length % 8)) % 8);
      const fd = openSync(join(dir, 'model.safetensors'), 'w');
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      writeSync(fd, len);
      writeSync(fd, Buffer.from(json));
      const data = new Float32Array(shape[0] * shape[1]);
      let x = seed;
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < data.length; j++) {
          x = (x * 1103515245 + 12345) >>> 0;
          data[j] = (x / 4294967296 - 0.5) * 0.04;
        }
        writeSync(fd, Buffer.from(data.buffer));
      }
      closeSync(fd);
      // Not a Llama: the engine's generic enumeration (every tensor present in every input).
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ architectures: ['BigTestModel'], model_type: 'big_test', num_hidden_layers: n }));
    };
    big(join(work, 'big/a'), 1);
    big(join(work, 'big/b'), 2);
    const { page, context } = await newPage();
    const downloads = [];
    page.on('download', (d) => downloads.push(d));
    await setYaml(page, 'merge_method: della\nbase_model: big_a\nmodels:\n  - model: big_b\n    parameters: {weight: 1.0, density: 0.5}\ndtype: float32\n');
    await page.waitForSelector('#recipe-status.ok');
    await setModelFiles(page, 'big_a', [join(work, 'big/a/model.safetensors'), join(work, 'big/a/config.json')]);
    await setModelFiles(page, 'big_b', [join(work, 'big/b/model.safetensors'), join(work, 'big/b/config.json')]);
    await page.click('#merge-btn');
    await page.waitForFunction(
      () => /tensors/.test(document.querySelector('#progress-text')?.textContent ?? '') || document.querySelector('#run-status.error, #run-status.ok'),
      null,
      { timeout: 60_000 },
    );
    assert.equal(await page.getAttribute('#run-status', 'class'), 'run-status info', `the merge ended before Cancel: ${await page.textContent('#run-status')}`);
    await page.click('#cancel-btn');
    await page.waitForSelector('#run-status.cancelled');
    assert.match(await page.textContent('#run-status'), /cancelled/i);
    assert.equal(await page.isHidden('#results'), true);
    assert.equal(await page.locator('a.download').count(), 0);
    // The worker is gone: nothing arrives later either.
    await page.waitForTimeout(1500);
    assert.equal(await page.locator('a.download').count(), 0);
    assert.equal(downloads.length, 0);
    assert.equal(await page.getAttribute('#run-status', 'class'), 'run-status cancelled');
    // And a fresh worker merges again afterwards.
    await setYaml(page, 'merge_method: linear\nmodels:\n  - model: models/base\n    parameters: {weight: 1.0}\n  - model: models/ft_a\n    parameters: {weight: 1.0}\ndtype: float32\n');
    for (const m of ['models/base', 'models/ft_a']) await setModelFiles(page, m, modelFilePaths(join(FIX, m)));
    const res = await runMerge(page);
    assert.ok(res.ok, res.text);
    await context.close();
  });

  it('bad input: a truncated .safetensors and bad YAML give the engine error naming the file / line', async () => {
    const dir = join(work, 'trunc');
    mkdirSync(dir, { recursive: true });
    const whole = readFileSync(join(FIX, 'models/ft_a/model.safetensors'));
    writeFileSync(join(dir, 'model.safetensors'), whole.subarray(0, Math.floor(whole.length / 2)));
    copyFileSync(join(FIX, 'models/ft_a/config.json'), join(dir, 'config.json'));

    const { page, context, errors } = await newPage();
    const downloads = [];
    page.on('download', (d) => downloads.push(d));
    await setYaml(page, 'merge_method: linear\nmodels:\n  - model: models/base\n    parameters: {weight: 1.0}\n  - model: truncated\n    parameters: {weight: 1.0}\n');
    await page.waitForSelector('#recipe-status.ok');
    await setModelFiles(page, 'models/base', modelFilePaths(join(FIX, 'models/base')));
    await setModelFiles(page, 'truncated', [join(dir, 'model.safetensors'), join(dir, 'config.json')]);
    const res = await runMerge(page);
    assert.equal(res.ok, false);
    assert.match(res.text, /truncated/);
    assert.match(res.text, /model\.safetensors/);
    assert.equal(await page.locator('a.download').count(), 0);

    // Bad YAML: a tab where YAML wants spaces, on line 3.
    await setYaml(page, 'merge_method: linear\nmodels:\n\t- model: a\n');
    await page.waitForSelector('#recipe-status.error');
    const msg = await page.textContent('#recipe-status');
    assert.match(msg, /line 3, column \d+/);
    assert.equal(await page.isDisabled('#merge-btn'), true);
    // An unknown method: the engine lists the valid ones.
    await setYaml(page, 'merge_method: tiess\nmodels:\n  - model: a\n');
    await page.waitForSelector('#recipe-status.error');
    assert.match(await page.textContent('#recipe-status'), /tiess/);
    assert.match(await page.textContent('#recipe-status'), /dare_ties/);
    assert.equal(downloads.length, 0);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('dropping a .safetensors with its config.json adds a model named after the file', async () => {
    const { page, context, errors } = await newPage();
    const payload = ['model.safetensors', 'config.json'].map((f) => ({ name: f === 'model.safetensors' ? 'ft_b.safetensors' : f, b64: readFileSync(join(FIX, 'models/ft_b', f)).toString('base64') }));
    await page.evaluate((files) => {
      const dt = new DataTransfer();
      for (const f of files) dt.items.add(new File([Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))], f.name));
      const zone = document.querySelector('#drop-zone');
      zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
      zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, payload);
    await page.waitForSelector('.model-card[data-model="ft_b"]');
    const files = await page.locator('.model-card[data-model="ft_b"] .file-name').allTextContents();
    assert.deepEqual(files.sort(), ['config.json', 'ft_b.safetensors']);
    assert.match(await page.inputValue('#yaml-text'), /- model: ft_b/);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it('a file named with HTML is shown as text, never as markup', async () => {
    const evil = '<img src=x onerror=window.__xss=1>.safetensors';
    const dir = join(work, 'evil');
    mkdirSync(dir, { recursive: true });
    copyFileSync(join(FIX, 'models/ft_a/model.safetensors'), join(dir, evil));
    copyFileSync(join(FIX, 'models/ft_a/config.json'), join(dir, 'config.json'));
    const { page, context, errors } = await newPage();
    await setYaml(page, 'merge_method: linear\nmodels:\n  - model: models/base\n    parameters: {weight: 1.0}\n  - model: "<b>evil</b>"\n    parameters: {weight: 1.0}\n');
    await page.waitForSelector('#recipe-status.ok');
    await setModelFiles(page, 'models/base', modelFilePaths(join(FIX, 'models/base')));
    const card = page.locator('.model-card').nth(1);
    await card.locator('input.files-input').setInputFiles([join(dir, evil), join(dir, 'config.json')]);
    await card.locator('.file-list li').first().waitFor();
    const shown = await card.locator('.file-name').allTextContents();
    assert.ok(shown.includes(evil), `file list shows ${JSON.stringify(shown)}`);
    assert.equal(await card.locator('input.model-name').inputValue(), '<b>evil</b>');
    assert.equal(await page.locator('main img, main b').count(), 0);
    // The engine finds the lone .safetensors whatever its name and merges it.
    const res = await runMerge(page);
    assert.ok(res.ok, res.text);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    assert.equal(await page.locator('img').count(), 0);
    assert.deepEqual(errors, []);
    await context.close();
  });
});

/** A generic (non-Llama) f32 model: `tensors` = [[name, shape], …], pseudo-random values. */
function writeF32Model(dir, seed, tensors) {
  mkdirSync(dir, { recursive: true });
  const header = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const [name, shape] of tensors) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 4;
    header[name] = { dtype: 'F32', shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const fd = openSync(join(dir, 'model.safetensors'), 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeSync(fd, len);
  writeSync(fd, Buffer.from(json));
  let x = seed;
  for (const [, shape] of tensors) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let j = 0; j < data.length; j++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      data[j] = (x / 4294967296 - 0.5) * 0.04;
    }
    writeSync(fd, Buffer.from(data.buffer));
  }
  closeSync(fd);
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ architectures: ['BigTestModel'], model_type: 'big_test', num_hidden_layers: 1 }));
}

/** Files of an OPFS folder of the page: name → sha256 (hex), computed in the page. */
async function opfsHashes(page, folder) {
  return page.evaluate(async (folder) => {
    const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle(folder);
    const out = {};
    for await (const [name, h] of dir.entries()) {
      if (h.kind !== 'file') continue;
      const digest = await crypto.subtle.digest('SHA-256', await (await h.getFile()).arrayBuffer());
      out[name] = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
    }
    return out;
  }, folder);
}

/** Replace the page's folder picker by one returning an OPFS folder (headless Chromium shows no
 *  picker): the merge then writes through the real File System Access path (`createWritable`). */
async function pickOpfsFolder(page, folder) {
  await page.evaluate(async (folder) => {
    const root = await navigator.storage.getDirectory();
    await root.removeEntry(folder, { recursive: true }).catch(() => undefined);
    window.showDirectoryPicker = async () => root.getDirectoryHandle(folder, { create: true });
  }, folder);
  await page.selectOption('#output-select', 'directory');
}

describe('Merge output to disk', () => {
  // One tensor above the engine's 4 Mi-element chunk: linear streams it in two chunks.
  const WIDE = [['model.layers.0.mlp.up_proj.weight', [2304, 2048]], ['model.layers.0.input_layernorm.weight', [64]]];
  const wideYaml = 'merge_method: linear\nmodels:\n  - model: wide_a\n    parameters: {weight: 0.3}\n  - model: wide_b\n    parameters: {weight: 0.7}\ndtype: float32\n';
  const setupWide = () => {
    const d = join(work, 'wide');
    if (!existsSync(join(d, 'wide_b'))) {
      writeF32Model(join(d, 'wide_a'), 11, WIDE);
      writeF32Model(join(d, 'wide_b'), 12, WIDE);
    }
    return d;
  };

  for (const [kind, folder] of [['directory', 'picked-folder'], ['opfs', 'crucible-output']]) {
    it(`output "${kind}": the files stream to disk (${folder}) and equal the CLI's, chunked tensor included`, async () => {
      const d = setupWide();
      const { page, context, errors } = await newPage();
      await setYaml(page, wideYaml);
      await page.waitForSelector('#recipe-status.ok');
      for (const m of ['wide_a', 'wide_b']) await setModelFiles(page, m, modelFilePaths(join(d, m)));
      if (kind === 'directory') await pickOpfsFolder(page, folder);
      else await page.selectOption('#output-select', 'opfs');
      const res = await runMerge(page);
      assert.ok(res.ok, res.text);
      assert.match(res.text, kind === 'directory' ? /chosen folder/ : /private storage/);
      const cli = cliMerge(wideYaml, d, `wide-${kind}`);
      const want = Object.fromEntries(readdirSync(cli).map((f) => [f, sha256(readFileSync(join(cli, f)))]));
      assert.ok('README.md' in want && 'model.safetensors' in want, Object.keys(want).join());
      assert.deepEqual(await opfsHashes(page, folder), want);
      // The result list offers the same files (disk-backed), e.g. the card.
      const card = await downloadResult(page, 'README.md');
      assert.equal(sha256(card), want['README.md']);
      assert.deepEqual(errors, []);
      await context.close();
    });
  }

  it('cancel mid-merge with folder output leaves nothing in the folder', async () => {
    const d = join(work, 'slow');
    const tensors = Array.from({ length: 24 }, (_, i) => [`model.layers.${i}.mlp.up_proj.weight`, [512, 2048]]);
    writeF32Model(join(d, 'slow_a'), 1, tensors);
    writeF32Model(join(d, 'slow_b'), 2, tensors);
    const { page, context, errors } = await newPage();
    await setYaml(page, 'merge_method: della\nbase_model: slow_a\nmodels:\n  - model: slow_b\n    parameters: {weight: 1.0, density: 0.5}\ndtype: float32\n');
    await page.waitForSelector('#recipe-status.ok');
    for (const m of ['slow_a', 'slow_b']) await setModelFiles(page, m, modelFilePaths(join(d, m)));
    await pickOpfsFolder(page, 'cancel-folder');
    await page.click('#merge-btn');
    await page.waitForFunction(
      () => /tensors/.test(document.querySelector('#progress-text')?.textContent ?? '') || document.querySelector('#run-status.error, #run-status.ok'),
      null,
      { timeout: 60_000 },
    );
    assert.equal(await page.getAttribute('#run-status', 'class'), 'run-status info', `the merge ended before Cancel: ${await page.textContent('#run-status')}`);
    // Files exist while it runs (the side files are created first)...
    const during = await page.evaluate(async () => {
      const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('cancel-folder');
      const names = [];
      for await (const [n] of dir.entries()) names.push(n);
      return names;
    });
    assert.ok(during.length > 0, 'the merge had created its files');
    await page.click('#cancel-btn');
    await page.waitForSelector('#run-status.cancelled', { timeout: 30_000 });
    assert.match(await page.textContent('#run-status'), /cancelled.*unfinished files removed/i);
    // ...and none once it is cancelled.
    assert.deepEqual(await opfsHashes(page, 'cancel-folder'), {});
    assert.equal(await page.locator('a.download').count(), 0);
    assert.deepEqual(errors, []);
    await context.close();
  });
});
