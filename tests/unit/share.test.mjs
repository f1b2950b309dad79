// Unit tests of the share-by-URL schema (web/src/share.ts), in node without a browser: the module
// is compiled with the project's TypeScript compiler into a temporary folder (CommonJS, so the
// extensionless `./yaml` import resolves) and imported from there. Node 20 has CompressionStream,
// DecompressionStream, atob/btoa and TextEncoder, as browsers do.
//
// Run: node --test tests/unit/share.test.mjs   (scripts/test.sh runs every tests/unit/*.test.mjs)
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after } from 'node:test';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
let out;
let S; // web/src/share.ts
let Y; // web/src/yaml.ts
let H; // web/src/sha256.ts

before(() => {
  out = mkdtempSync(join(tmpdir(), 'crucible-share-unit-'));
  execFileSync(
    join(ROOT, 'node_modules/.bin/tsc'),
    ['--ignoreConfig', join(ROOT, 'web/src/share.ts'), join(ROOT, 'web/src/sha256.ts'), '--outDir', out, '--module', 'commonjs', '--target', 'es2022', '--lib', 'es2022,dom', '--strict', '--skipLibCheck'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  writeFileSync(join(out, 'package.json'), '{"type":"commonjs"}');
  const require = createRequire(join(out, 'x.js'));
  S = require('./share.js');
  Y = require('./yaml.js');
  H = require('./sha256.js');
});
after(() => out && rmSync(out, { recursive: true, force: true }));

const SHA_A = 'a3f1'.repeat(16);
const SHA_B = '0123456789abcdef'.repeat(4);

function sample() {
  const recipe = {
    merge_method: 'ties',
    base_model: 'tiny-base',
    models: [
      { model: 'tiny-math', parameters: { weight: 0.5, density: 0.5 } },
      { model: '<img src=x onerror=alert(1)>', parameters: { weight: [0, 0.5, 1], density: 0.3 } },
      { model: 'hub-model', parameters: { weight: 0.25 } },
    ],
    parameters: { normalize: true, lambda: 1.0 },
    dtype: 'float32',
  };
  return {
    sources: [
      { name: 'tiny-base', kind: 'demo', demo: 'tiny-base' },
      { name: 'tiny-math', kind: 'demo', demo: 'tiny-math' },
      { name: '<img src=x onerror=alert(1)>', kind: 'local', files: [{ path: 'model.safetensors', size: 123456, sha256: SHA_A }, { path: 'config.json', size: 600, sha256: SHA_B }] },
      { name: 'hub-model', kind: 'hub', repo: 'HuggingFaceTB/SmolLM2-135M', revision: 'main' },
    ],
    recipe,
    yaml: Y.toYaml(recipe),
    seed: '42',
    shard: '500M',
    view: 'yaml',
    hide: ['yaml', 'seed'],
  };
}

/** A fragment carrying `body` as its state, built here without share.ts (node's zlib). */
const fragmentOf = (body, extra = '') => `#v=1&s=${deflateRawSync(Buffer.from(typeof body === 'string' ? body : JSON.stringify(body))).toString('base64url')}${extra}`;

/** The body share.ts wrote into a fragment, read back with node's zlib. */
const bodyOf = (fragment) => JSON.parse(inflateRawSync(Buffer.from(new URLSearchParams(fragment).get('s'), 'base64url')).toString());

async function expectError(fragment, field, pattern, what = fragment.slice(0, 80)) {
  const r = await S.decodeFragment(fragment);
  assert.equal(r.ok, false, `expected an error for ${what}`);
  assert.equal(r.field, field, r.message);
  assert.match(r.message, pattern);
  assert.match(r.message, /^This link is not valid: /);
  return r;
}

describe('share schema: round trip', () => {
  it('encode → decode gives the same state (sources, recipe, YAML, seed, shard, view, hide flags)', async () => {
    const st = sample();
    const enc = await S.encodeFragment(st);
    assert.equal(enc.ok, true, enc.message);
    assert.match(enc.fragment, /^v=1&s=[A-Za-z0-9_-]+&yaml_hide=true&seed_hide=true$/);
    const dec = await S.decodeFragment('#' + enc.fragment);
    assert.equal(dec.ok, true, dec.message);
    assert.deepEqual(dec.warnings, []);
    assert.deepEqual(dec.state, { ...st, hide: ['yaml', 'seed'] });
    assert.deepEqual(dec.hide, ['yaml', 'seed']);
  });

  it('the body is compact: short keys, no YAML when it is the recipe\'s, deflate-raw + base64url', async () => {
    const enc = await S.encodeFragment(sample());
    const body = bodyOf(enc.fragment);
    assert.deepEqual(Object.keys(body).sort(), ['m', 'r', 'seed', 'shard', 'view']);
    assert.deepEqual(body.m[2], { n: '<img src=x onerror=alert(1)>', l: [['model.safetensors', 123456, SHA_A], ['config.json', 600, SHA_B]] });
    assert.deepEqual(body.m[3], { n: 'hub-model', h: 'HuggingFaceTB/SmolLM2-135M', r: 'main' });
    assert.ok(enc.fragment.length < JSON.stringify(body).length, `${enc.fragment.length} chars`);
  });

  it('hand-edited YAML (comments, layout) travels exactly', async () => {
    const st = sample();
    st.yaml = '# my recipe\n' + st.yaml.replace('dtype: float32', 'dtype: float32   # keep f32');
    const enc = await S.encodeFragment(st);
    assert.equal(bodyOf(enc.fragment).y, st.yaml);
    const dec = await S.decodeFragment(enc.fragment);
    assert.equal(dec.state.yaml, st.yaml);
    assert.deepEqual(dec.state.recipe, st.recipe);
  });

  it('defaults: seed 0, no shard size, form view, no flags are left out and come back', async () => {
    const st = { ...sample(), seed: '0', shard: '', view: 'form', hide: [] };
    const enc = await S.encodeFragment(st);
    assert.deepEqual(Object.keys(bodyOf(enc.fragment)).sort(), ['m', 'r']);
    assert.doesNotMatch(enc.fragment, /_hide/);
    assert.deepEqual((await S.decodeFragment(enc.fragment)).state, st);
  });

  it('HTML in model names and files paths is kept as data, byte for byte', async () => {
    const st = sample();
    const evil = '"><script>alert(1)</script>&amp;';
    st.sources[2] = { ...st.sources[2], name: evil, files: [{ path: '<b>x</b>.safetensors', size: 1, sha256: SHA_A }] };
    st.recipe.models[1].model = evil;
    st.yaml = Y.toYaml(st.recipe);
    const dec = await S.decodeFragment((await S.encodeFragment(st)).fragment);
    assert.equal(dec.state.sources[2].name, evil);
    assert.equal(dec.state.sources[2].files[0].path, '<b>x</b>.safetensors');
    assert.equal(dec.state.recipe.models[1].model, evil);
    assert.ok(dec.state.yaml.includes(JSON.stringify(evil)));
  });

  it('an empty fragment is no link; hide flags alone are a classroom view', async () => {
    assert.deepEqual(await S.decodeFragment(''), { ok: true, state: null, hide: [], warnings: [] });
    assert.deepEqual(await S.decodeFragment('#'), { ok: true, state: null, hide: [], warnings: [] });
    const r = await S.decodeFragment('#yaml_hide=true&method_hide=true&seed_hide=false');
    assert.deepEqual(r, { ok: true, state: null, hide: ['yaml', 'method'], warnings: [] });
  });

  it('unknown classroom flags and parameters are ignored with a warning', async () => {
    const enc = await S.encodeFragment(sample());
    const r = await S.decodeFragment(enc.fragment + '&colour_hide=true&utm_source=x');
    assert.equal(r.ok, true);
    assert.equal(r.warnings.length, 2);
    assert.match(r.warnings[0], /colour_hide.*known: models_hide/);
    assert.match(r.warnings[1], /utm_source/);
  });

  it('the Generate tab\'s controls and the open tab travel too', async () => {
    const generate = {
      prompt: 'The capital of France is <b>',
      greedy: false,
      maxTokens: 64,
      sampling: { temperature: 0.7, top_k: 40, top_p: 0.9, min_p: 0.05, repetition_penalty: 1.1, presence_penalty: 0, frequency_penalty: 0, no_repeat_ngram_size: 3, seed: 7 },
      quantize: 'q8_0',
      backend: 'cpu',
      pplText: 'Some text.',
      models: [{ kind: 'local-gguf', name: 'smol.gguf', size: 12345 }, { kind: 'bundled', name: 'tiny Mixtral' }],
    };
    const st = { ...sample(), tab: 'generate', generate };
    const dec = await S.decodeFragment((await S.encodeFragment(st)).fragment);
    assert.equal(dec.ok, true, dec.message);
    assert.deepEqual(dec.state, st);
  });

  it('recipeModels lists base, models and slice sources once each', () => {
    assert.deepEqual(S.recipeModels(sample().recipe), ['tiny-base', 'tiny-math', '<img src=x onerror=alert(1)>', 'hub-model']);
    const slices = { merge_method: 'passthrough', slices: [{ sources: [{ model: 'a', layer_range: [0, 2] }] }, { sources: [{ model: 'b', layer_range: [1, 2] }, { model: 'a', layer_range: [0, 1] }] }] };
    assert.deepEqual(S.recipeModels(slices), ['a', 'b']);
  });
});

describe('share schema: what a link may not be', () => {
  const good = () => {
    const st = sample();
    return {
      m: [
        { n: 'tiny-base', d: 'tiny-base' },
        { n: 'loc', l: [['model.safetensors', 10, SHA_A]] },
        { n: 'hub', h: 'owner/name', r: 'main' },
      ],
      r: st.recipe,
    };
  };

  it('a good hand-built body decodes', async () => {
    const r = await S.decodeFragment(fragmentOf(good()));
    assert.equal(r.ok, true, r.message);
    assert.equal(r.state.yaml, Y.toYaml(good().r));
    assert.equal(r.state.seed, '0');
  });

  it('unknown version', async () => {
    await expectError('#v=2&s=AAAA', 'v', /unknown version "2".*version 1/);
    await expectError('#v=abc&s=AAAA', 'v', /unknown version "abc"/);
    await expectError('#s=AAAA', 'v', /missing/);
  });

  it('missing state, not base64url, not deflate, not JSON, not UTF-8', async () => {
    await expectError('#v=1', 's', /missing/);
    await expectError('#v=1&s=', 's', /missing/);
    await expectError('#v=1&s=ab*cd', 's', /not base64url/);
    await expectError('#v=1&s=' + Buffer.from('plain text, not deflate').toString('base64url'), 's', /not valid compressed data/);
    await expectError(fragmentOf('{"m": [], "r": '), 's', /not valid JSON/);
    await expectError('#v=1&s=' + deflateRawSync(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])).toString('base64url'), 's', /not valid JSON/);
    await expectError('#foo', 'link', /not a Crucible link/);
    await expectError('#v=1&v=1&s=x', 'v', /given twice/);
    await expectError('#v=1&s=%zz', 'link', /%-escape/);
  });

  it('oversize: a long fragment is refused before decoding', async () => {
    const long = '#v=1&s=' + 'A'.repeat(S.MAX_FRAGMENT);
    await expectError(long, 'link', /too long \(17 KiB; a link holds at most 16 KiB\)/);
  });

  it('oversize: a small fragment that inflates past the cap stops decompressing and says so', async () => {
    // 5 MB of spaces inside a JSON string deflates to ~5 KB: under the fragment cap, far over the body cap.
    const bomb = fragmentOf('{"m":[],"r":{"merge_method":"linear"},"y":"' + ' '.repeat(5_000_000) + '"}');
    assert.ok(bomb.length < S.MAX_FRAGMENT, `${bomb.length}`);
    await expectError(bomb, 's', /decompresses to more than 64 KiB/);
  });

  it('the encoder refuses a state too large for a link instead of writing one the decoder refuses', async () => {
    const st = sample();
    // Incompressible text: random hex in the YAML's comment.
    let noise = '';
    for (let i = 0; i < 3000; i++) noise += Math.floor(Math.random() * 2 ** 32).toString(36);
    st.yaml = '# ' + noise.slice(0, 30000) + '\n' + st.yaml;
    const enc = await S.encodeFragment(st);
    assert.equal(enc.ok, false);
    assert.match(enc.message, /KiB.*copy the YAML instead/);
  });

  it('wrong types name the field', async () => {
    const cases = [
      [{ ...good(), m: 'x' }, 'models', /expected a list, got "x"/],
      [{ ...good(), r: [1] }, 'recipe', /expected an object, got a list/],
      [{ ...good(), r: { ...good().r, merge_method: 3 } }, 'recipe.merge_method', /expected text, got 3/],
      [{ ...good(), m: [{ n: 5, d: 'tiny-base' }] }, 'models[0].name', /expected text, got 5/],
      [{ ...good(), m: [{ n: 'a', l: [['model.safetensors', '10', SHA_A]] }] }, 'models[0].files[0].size', /expected a file size/],
      [{ ...good(), m: [{ n: 'a', l: [['model.safetensors', -1, SHA_A]] }] }, 'models[0].files[0].size', /expected a file size/],
      [{ ...good(), m: [{ n: 'a', l: [['model.safetensors', 10]] }] }, 'models[0].files[0]', /expected \[path, size, sha256\]/],
      [{ ...good(), r: { ...good().r, models: [{ model: 'a', parameters: { weight: 'heavy' } }] } }, 'recipe.models[0].parameters.weight', /expected a number, got "heavy"/],
      [{ ...good(), r: { ...good().r, parameters: { 'bad key': 1 } } }, 'recipe.parameters', /bad parameter name "bad key"/],
      [{ ...good(), r: { ...good().r, dtype: 'float8' } }, 'recipe.dtype', /unknown dtype "float8"/],
      [{ ...good(), seed: 'abc' }, 'seed', /not a seed/],
      [{ ...good(), seed: '18446744073709551616' }, 'seed', /not a seed/],
      [{ ...good(), shard: '5 GB' }, 'shard', /not a shard size/],
      [{ ...good(), view: 'graph' }, 'view', /expected "form" or "yaml"/],
      [{ ...good(), y: 7 }, 'yaml', /expected text, got 7/],
      [{ ...good(), extra: 1 }, 'body', /unknown field "extra"/],
      [{ ...good(), m: [{ n: 'a', d: 'tiny-base', h: 'x/y' }] }, 'models[0]', /exactly one source/],
      [{ ...good(), m: [{ n: 'a' }] }, 'models[0]', /exactly one source/],
      [{ ...good(), m: [{ n: 'a', d: 'tiny-base' }, { n: 'a', d: 'tiny-math' }] }, 'models[1].name', /listed twice/],
      [{ ...good(), m: [{ n: 'a\nb', d: 'tiny-base' }] }, 'models[0].name', /control characters/],
      [{ ...good(), m: [{ n: '   ', d: 'tiny-base' }] }, 'models[0].name', /cannot be empty/],
      [{ ...good(), m: [{ n: 'x'.repeat(201), d: 'tiny-base' }] }, 'models[0].name', /longer than 200/],
      [{ ...good(), m: [{ n: 'a', d: 'tiny-llama' }] }, 'models[0].demo', /unknown demo model "tiny-llama"/],
      [{ ...good(), m: [{ n: 'a', l: [] }] }, 'models[0].files', /at least one file/],
      [{ ...good(), m: [{ n: 'a', l: [['../../etc/passwd', 1, SHA_A]] }] }, 'models[0].files[0].path', /not a relative file path/],
      [{ ...good(), m: [{ n: 'a', l: [['/abs', 1, SHA_A]] }] }, 'models[0].files[0].path', /not a relative file path/],
      [{ ...good(), m: [{ n: 'a', l: [['x', 1, SHA_A], ['x', 2, SHA_B]] }] }, 'models[0].files', /listed twice/],
      [{ ...good(), r: { ...good().r, models: { model: 'a' } } }, 'recipe.models', /expected a list/],
      [{ ...good(), r: { ...good().r, models: [{ model: 'a', parameters: { weight: Array(300).fill(1) } }] } }, 'recipe.models[0].parameters.weight', /longer than 256/],
    ];
    for (const [body, field, pattern] of cases) await expectError(fragmentOf(body), field, pattern, JSON.stringify(body).slice(0, 200));
  });

  it('the Generate tab\'s part is checked field by field', async () => {
    const g = () => ({
      prompt: 'x', greedy: true, maxTokens: 32, quantize: '', pplText: '', models: [],
      sampling: { temperature: 1, top_k: 50, top_p: 1, min_p: 0, repetition_penalty: 1, presence_penalty: 0, frequency_penalty: 0, no_repeat_ngram_size: 0, seed: 0 },
    });
    assert.equal((await S.decodeFragment(fragmentOf({ ...good(), g: g() }))).ok, true);
    const cases = [
      [{ ...g(), maxTokens: 0 }, 'generate.maxTokens', /0 is out of range \(a whole number 1 … 4096\)/],
      [{ ...g(), maxTokens: 2.5 }, 'generate.maxTokens', /out of range/],
      [{ ...g(), quantize: 'q2_k' }, 'generate.quantize', /unknown quantization "q2_k"/],
      [{ ...g(), backend: 'tpu' }, 'generate.backend', /expected "auto" or "cpu", got "tpu"/],
      [{ ...g(), greedy: 'yes' }, 'generate.greedy', /expected true or false/],
      [{ ...g(), sampling: { ...g().sampling, temperature: 'hot' } }, 'generate.sampling.temperature', /expected a number, got "hot"/],
      [{ ...g(), sampling: { ...g().sampling, mirostat: 1 } }, 'generate.sampling', /unknown field "mirostat"/],
      [{ ...g(), models: [{ kind: 'url', name: 'x' }] }, 'generate.models[0].kind', /unknown kind "url"/],
      [{ ...g(), models: [{ kind: 'local-gguf', name: 'x' }] }, 'generate.models[0].size', /expected a file size/],
      [{ ...g(), models: Array(4).fill({ kind: 'bundled', name: 'x' }) }, 'generate.models', /too many models: 4 \(at most 3\)/],
      [{ ...g(), prompt: 'p'.repeat(9000) }, 'generate.prompt', /longer than 8192/],
    ];
    for (const [gen, field, pattern] of cases) await expectError(fragmentOf({ ...good(), g: gen }), field, pattern, JSON.stringify(gen).slice(0, 120));
    await expectError(fragmentOf({ ...good(), tab: 'settings' }), 'tab', /expected "merge" or "generate"/);
  });

  it('unknown method', async () => {
    const r = await expectError(fragmentOf({ ...good(), r: { merge_method: 'tiess', models: [] } }), 'recipe.merge_method', /unknown method "tiess" \(known: linear, slerp/);
    assert.match(r.message, /dare_ties/);
  });

  it('too many models', async () => {
    const many = Array.from({ length: S.MAX_MODELS + 1 }, (_, i) => ({ n: `m${i}`, d: 'tiny-base' }));
    await expectError(fragmentOf({ ...good(), m: many }), 'models', /too many models: 17 \(at most 16\)/);
    const entries = Array.from({ length: S.MAX_MODELS + 1 }, (_, i) => ({ model: `m${i}` }));
    await expectError(fragmentOf({ ...good(), r: { merge_method: 'linear', models: entries } }), 'recipe.models', /too many models: 17/);
    const files = Array.from({ length: S.MAX_FILES + 1 }, (_, i) => [`f${i}`, 1, SHA_A]);
    await expectError(fragmentOf({ ...good(), m: [{ n: 'a', l: files }] }), 'models[0].files', /too many files: 65/);
  });

  it('bad revision strings and repo ids', async () => {
    for (const rev of ['../main', 'main branch', '-rf', 'a..b', 'refs//x', 'x/', '', 'a;rm', 'x'.repeat(129), 'main\n'])
      await expectError(fragmentOf({ ...good(), m: [{ n: 'a', h: 'owner/name', r: rev }] }), 'models[0].revision', /is not a revision/);
    for (const repo of ['gpt2', 'HuggingFaceTB/SmolLM2-135M', 'a.b_c/d-e'])
      assert.equal((await S.decodeFragment(fragmentOf({ ...good(), m: [{ n: 'a', h: repo, r: 'main' }] }))).ok, true, repo);
    for (const rev of ['main', 'v1.0', 'refs/pr/1', '0123456789abcdef0123456789abcdef01234567'])
      assert.equal((await S.decodeFragment(fragmentOf({ ...good(), m: [{ n: 'a', h: 'owner/name', r: rev }] }))).ok, true, rev);
    for (const repo of ['a/b/c', 'x'.repeat(97), 'a--b/c', '../x', 'owner/..', 'https://evil.example/x', 'owner/name.git', '/x'])
      await expectError(fragmentOf({ ...good(), m: [{ n: 'a', h: repo, r: 'main' }] }), 'models[0].repo', /not a Hugging Face repo id/);
  });

  it('non-hex sha256', async () => {
    for (const sha of ['xyz', SHA_A.toUpperCase(), SHA_A.slice(1), SHA_A + '0', 'g'.repeat(64)])
      await expectError(fragmentOf({ ...good(), m: [{ n: 'a', l: [['model.safetensors', 10, sha]] }] }), 'models[0].files[0].sha256', /not a sha256/);
  });

  it('never throws: garbage of every kind gives a result', async () => {
    for (const f of ['#v=1&s=' + '_'.repeat(5), '#&&&', '#=', '#v', '#v=1&s=AA==', fragmentOf('null'), fragmentOf('[]'), fragmentOf('"x"'), fragmentOf('{"m":[],"r":{"merge_method":"linear","__proto__":{"x":1}}}')]) {
      const r = await S.decodeFragment(f);
      assert.equal(typeof r.ok, 'boolean', f);
      if (!r.ok) assert.match(r.message, /^This link is not valid: /);
    }
  });
});

describe('sha256 of local files (web/src/sha256.ts)', () => {
  const ref = (b) => createHash('sha256').update(b).digest('hex');

  it('the incremental SHA-256 equals node crypto at every padding boundary and split', () => {
    for (const n of [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 1000, 65537]) {
      const b = randomBytes(n);
      assert.equal(new H.Sha256().update(b).hex(), ref(b), `${n} bytes`);
      // The same bytes fed in uneven pieces.
      const h = new H.Sha256();
      for (let p = 0, k = 1; p < n; p += k, k = (k * 7) % 97 + 1) h.update(b.subarray(p, Math.min(n, p + k)));
      assert.equal(h.hex(), ref(b), `${n} bytes in pieces`);
    }
    assert.equal(new H.Sha256().update(Buffer.from('abc')).hex(), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'); // FIPS 180-4 example
  });

  it('sha256Blob: one-shot (WebCrypto) and chunked paths agree, with progress to the end', async () => {
    const b = randomBytes(1_000_003);
    const blob = new Blob([b]);
    assert.equal(await H.sha256Blob(blob), ref(b));
    const seen = [];
    assert.equal(await H.sha256Blob(blob, (d, t) => seen.push([d, t]), undefined, 10, 65536), ref(b));
    assert.equal(seen.length, Math.ceil(b.length / 65536));
    assert.deepEqual(seen.at(-1), [b.length, b.length]);
    assert.ok(seen.every(([d], i) => i === 0 || d > seen[i - 1][0]));
  });

  it('sha256Blob stops when cancelled', async () => {
    const ac = new AbortController();
    const blob = new Blob([randomBytes(300_000)]);
    await assert.rejects(H.sha256Blob(blob, (d) => d >= 100_000 && ac.abort(new Error('cancelled by the test')), ac.signal, 10, 50_000), /cancelled by the test/);
  });
});
