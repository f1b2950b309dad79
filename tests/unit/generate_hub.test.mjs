// Unit tests, in node, of what the Generate tab's hub models and the "too big for the browser"
// check add: the share schema's `{kind: 'hub', repo, revision}` model (web/src/share.ts) and the
// load estimate with its header readers (web/src/load-budget.ts). The modules are compiled with
// the project's TypeScript compiler into a temporary folder (as tests/unit/share.test.mjs does).
//
// References: the fixtures' own safetensors headers (tensor counts by hand); gguf-py's GGUFReader
// (tensor count, elements and bytes of SmolLM2-135M-Instruct Q4_1: 272 tensors, 134 515 008
// elements, 96 576 768 bytes; run `python -c "import gguf; ..."` to re-derive); the tiny Mixtral
// GGUF and safetensors fixtures hold the same 39 328 weights.
//
// Run: node --test tests/unit/generate_hub.test.mjs
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { deflateRawSync } from 'node:zlib';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const SMOL = join(ROOT, '.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf');
let out, S, B;

before(() => {
  out = mkdtempSync(join(tmpdir(), 'crucible-genhub-unit-'));
  execFileSync(
    join(ROOT, 'node_modules/.bin/tsc'),
    ['--ignoreConfig', join(ROOT, 'web/src/share.ts'), join(ROOT, 'web/src/load-budget.ts'), '--outDir', out, '--module', 'commonjs', '--target', 'es2022', '--lib', 'es2022,dom', '--strict', '--skipLibCheck'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  writeFileSync(join(out, 'package.json'), '{"type":"commonjs"}');
  const require = createRequire(join(out, 'x.js'));
  S = require('./share.js');
  B = require('./load-budget.js');
});
after(() => out && rmSync(out, { recursive: true, force: true }));

const fragmentOf = (body) => `#v=1&s=${deflateRawSync(Buffer.from(JSON.stringify(body))).toString('base64url')}`;
const gen = (models) => ({
  prompt: 'x', greedy: true, maxTokens: 32, quantize: '', pplText: '', models,
  sampling: { temperature: 1, top_k: 50, top_p: 1, min_p: 0, repetition_penalty: 1, presence_penalty: 0, frequency_penalty: 0, no_repeat_ngram_size: 0, seed: 0 },
});
const body = (models) => ({ m: [], r: { merge_method: 'linear', models: [] }, g: gen(models) });

describe('share schema: hub models in the Generate tab', () => {
  it('a hub model round-trips as {kind, repo, revision}; the revision defaults to main', async () => {
    const models = [{ kind: 'hub', repo: 'HuggingFaceTB/SmolLM2-135M-Instruct', revision: 'main' }, { kind: 'bundled', name: 'tiny-mixtral' }, { kind: 'hub', repo: 'owner/smol-gguf', revision: '607a30d783dfa663caf39e06633721c8d4cfcd7e', gguf: 'q4/model.Q4_1.gguf' }];
    const dec = await S.decodeFragment(fragmentOf(body(models)));
    assert.equal(dec.ok, true, dec.message);
    assert.deepEqual(dec.state.generate.models, models);
    const enc = await S.encodeFragment(dec.state);
    const again = await S.decodeFragment(enc.fragment);
    assert.deepEqual(again.state.generate.models, models);
    const noRev = await S.decodeFragment(fragmentOf(body([{ kind: 'hub', repo: 'owner/name' }])));
    assert.deepEqual(noRev.state.generate.models, [{ kind: 'hub', repo: 'owner/name', revision: 'main' }]);
  });

  it('hub entries are validated like the Merge tab\'s hub sources, naming the field', async () => {
    const cases = [
      [{ kind: 'hub', repo: '../etc/passwd', revision: 'main' }, 'generate.models[0].repo', /is not a Hugging Face repo id/],
      [{ kind: 'hub', repo: '<img src=x>', revision: 'main' }, 'generate.models[0].repo', /is not a Hugging Face repo id/],
      [{ kind: 'hub', repo: 'a/b', revision: 'main/../x' }, 'generate.models[0].revision', /is not a revision/],
      [{ kind: 'hub', repo: 'a/b', revision: 7 }, 'generate.models[0].revision', /expected a string|expected text/],
      [{ kind: 'hub', revision: 'main' }, 'generate.models[0].repo', /expected/],
      [{ kind: 'hub', repo: 'a/b', revision: 'main', name: 'x' }, 'generate.models[0]', /unknown field "name"/],
      [{ kind: 'hub', repo: 'a/b', size: 5 }, 'generate.models[0]', /unknown field "size"/],
      [{ kind: 'bundled', name: 'x', repo: 'a/b' }, 'generate.models[0]', /unknown field "repo"/],
      [{ kind: 'hub', repo: 'a/b', revision: 'main', gguf: '../x.gguf' }, 'generate.models[0].gguf', /is not a relative file path/],
      [{ kind: 'hub', repo: 'a/b', revision: 'main', gguf: 'model.safetensors' }, 'generate.models[0].gguf', /is not a \.gguf file name/],
    ];
    for (const [m, field, pattern] of cases) {
      const r = await S.decodeFragment(fragmentOf(body([m])));
      assert.equal(r.ok, false, JSON.stringify(m));
      assert.equal(r.field, field, `${JSON.stringify(m)}: ${r.message}`);
      assert.match(r.message, pattern);
    }
  });
});

const GiB = 1024 ** 3;

describe('load budget: the estimate', () => {
  it('counts weights as the engine holds them, the read buffer, the KV cache and the overhead', () => {
    const shape = {
      format: 'safetensors',
      tensors: [
        { name: 'model.embed_tokens.weight', dtype: 'F32', shape: [64, 32] }, // 2048 × 4 loaded
        { name: 'model.layers.0.self_attn.q_proj.weight', dtype: 'BF16', shape: [32, 32] }, // widened: 1024 × 4
        { name: 'model.layers.0.mlp.up_proj.weight', dtype: 'F16', shape: [96, 32] }, // kept F16: 3072 × 2
        { name: 'model.layers.0.input_layernorm.weight', dtype: 'F16', shape: [32] }, // 1-D: widened, 32 × 4
        { name: 'model.layers.0.block_sparse_moe.gate.weight', dtype: 'F32', shape: [4, 32] }, // router: never quantized
      ],
      layers: 1, kvHeads: 2, headDim: 8, context: 4096, tokenizerBytes: 1000,
    };
    const e = B.estimateLoad(shape, '');
    assert.equal(e.params, 2048 + 1024 + 3072 + 32 + 128);
    assert.equal(e.fileBytes, 2048 * 4 + 1024 * 2 + 3072 * 2 + 32 * 2 + 128 * 4);
    assert.equal(e.loaded, 2048 * 4 + 1024 * 4 + 3072 * 2 + 32 * 4 + 128 * 4);
    assert.equal(e.held, e.loaded);
    assert.equal(e.readBuffer, 2048 * 4);
    assert.equal(e.positions, 2048); // min(context 4096, 2048)
    assert.equal(e.kv, 2 * 1 * 2048 * 2 * 8 * 4);
    assert.equal(e.logits, 256 * 64 * 4); // 256 rows of the 64-token vocabulary (embed_tokens rows)
    assert.equal(e.peak, Math.max(e.loaded + e.readBuffer, e.held + e.kv + e.logits) + B.ENGINE_OVERHEAD + 4 * 1000);
    assert.equal(e.budget, 4 * GiB);
    const q = B.estimateLoad(shape, 'q4_0');
    // quantized: embedding, q_proj, up_proj (rows of 32); not the norm or the router
    assert.equal(q.held, ((2048 + 1024 + 3072) / 32) * 18 + 32 * 4 + 128 * 4);
    assert.equal(q.loaded, e.loaded);
    assert.equal(B.estimateLoad(shape, 'q8_0').held, ((2048 + 1024 + 3072) / 32) * 34 + 32 * 4 + 128 * 4);
    assert.equal(B.checkLoad('tiny', shape, ''), null);
    // A fused expert tensor (E, 2·I, H) in BF16 is read whole as f32 before the split.
    const fused = B.estimateLoad({ ...shape, tensors: [...shape.tensors, { name: 'model.layers.0.mlp.experts.gate_up_proj', dtype: 'BF16', shape: [4, 64, 32] }] }, '');
    assert.equal(fused.readBuffer, 4 * 64 * 32 * 4);
  });

  it('refuses a model over 4 GiB with its name, the estimate, the budget and advice that would work', () => {
    // 1.5 G f32 weights: 6 GiB as loaded — no quantize-on-load helps (loaded first).
    const big = { format: 'safetensors', tensors: Array.from({ length: 48 }, (_, i) => ({ name: `model.layers.${i}.mlp.up_proj.weight`, dtype: 'F32', shape: [8192, 4096] })), layers: 48, kvHeads: 8, headDim: 128, context: 4096, tokenizerBytes: 0 };
    const m = B.checkLoad('owner/big@main', big, 'q4_0');
    assert.match(m, /^owner\/big@main is too big for the browser: loading it needs about 6\.\d GiB of WebAssembly memory \(6\.0 GiB of weights as loaded, 864 MiB after quantize-on-load, a 768 MiB KV cache for 2048 positions\), over the 4\.0 GiB a page can have/);
    assert.match(m, /quantize-on-load does not help here/);
    assert.match(m, /or pick a smaller model\.$/);
    // 3.9 GB of F16 matrices (kept F16) + a 512 MiB KV cache: over; Q8_0 brings the held weights
    // and the cache under the budget, and the advice says so.
    const f16 = { format: 'safetensors', tensors: Array.from({ length: 100 }, (_, i) => ({ name: `w${i}.weight`, dtype: 'F16', shape: [19000, 1024] })), layers: 32, kvHeads: 8, headDim: 128, context: 32768, tokenizerBytes: 0 };
    const e = B.estimateLoad(f16, '');
    assert.ok(e.peak > e.budget && e.held + e.kv > e.loaded + e.readBuffer, JSON.stringify(e));
    const advice = B.checkLoad('f16-model', f16, '');
    assert.match(advice, /To run it: pick "Quantize on load: Q8_0" \(about 3\.\d GiB\); or pick a smaller model\.$/);
    assert.equal(B.checkLoad('f16-model', f16, 'q8_0'), null);
  });
});

describe('load budget: the GPU buffers', () => {
  it('weights in the split layout, the GPU KV cache, and one layer\'s cache against the binding limit', () => {
    const shape = {
      format: 'gguf',
      tensors: [
        { name: 'token_embd.weight', dtype: 'Q8_0', shape: [1000, 64] }, // split: 36 B per 32
        { name: 'blk.0.attn_q.weight', dtype: 'Q4_1', shape: [64, 64] }, // split: 24 B per 32
        { name: 'blk.0.attn_norm.weight', dtype: 'F32', shape: [64] },
      ],
      layers: 2, kvHeads: 4, headDim: 16, context: 100000, tokenizerBytes: 0,
    };
    const e = B.estimateLoad(shape, '');
    assert.equal(e.held, (64000 / 32) * 34 + (4096 / 32) * 20 + 64 * 4);
    assert.equal(e.gpu.weights, (64000 / 32) * 36 + (4096 / 32) * 24 + 64 * 4);
    assert.equal(e.gpu.kvLayer, 2048 * 4 * 16 * 4);
    assert.equal(e.gpu.kv, 2 * 2 * e.gpu.kvLayer);
    assert.equal(B.checkGpu(e, { maxBufferSize: 1 << 30, maxStorageBufferBindingSize: 128 << 20 }), null);
    const small = { maxBufferSize: 256 << 10, maxStorageBufferBindingSize: 128 << 20 };
    assert.match(B.checkGpu(e, small), /^its KV cache needs 512 KiB per layer for 2048 positions, over this GPU's largest storage buffer \(256 KiB\): it will run on the CPU$/);
    assert.match(B.describeEstimate(e, small), /; WebGPU: its KV cache needs 512 KiB per layer/);
    assert.match(B.describeEstimate(e, { maxBufferSize: 1 << 30, maxStorageBufferBindingSize: 128 << 20 }), /; on WebGPU also [\d.]+ (KiB|MiB) of GPU buffers \(each at most 128 MiB\)$/);
  });
});

describe('load budget: header readers', () => {
  it('reads a safetensors header from a Blob; errors name the file', async () => {
    const p = join(ROOT, 'tests/fixtures/merge/models/base/model.safetensors');
    const buf = readFileSync(p);
    const n = Number(buf.readBigUInt64LE(0));
    const want = JSON.parse(buf.subarray(8, 8 + n).toString());
    delete want.__metadata__;
    const got = await B.blobSafetensorsHeader(new Blob([buf]), 'base/model.safetensors');
    assert.deepEqual(got.map((t) => [t.name, t.dtype, t.shape]), Object.entries(want).map(([k, v]) => [k, v.dtype, v.shape]));
    await assert.rejects(B.blobSafetensorsHeader(new Blob([buf.subarray(0, 100)]), 'cut/model.safetensors'), /cut\/model\.safetensors: header length \d+ does not fit a safetensors file of 100 bytes/);
    const bad = Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"a"')]);
    await assert.rejects(B.blobSafetensorsHeader(new Blob([bad]), 'bad.safetensors'), /bad\.safetensors: the safetensors header is not valid JSON/);
  });

  it('reads GGUF tensor infos and attention metadata: the tiny Mixtral GGUF holds the weights of its safetensors twin', async () => {
    const g = await B.ggufShape(new Blob([readFileSync(join(ROOT, 'tests/fixtures/moe/mixtral.gguf'))]), 'mixtral.gguf');
    const cfg = JSON.parse(readFileSync(join(ROOT, 'tests/fixtures/moe/mixtral/config.json'), 'utf8'));
    const st = await B.folderShape('mixtral', new Map([
      ['config.json', new Blob([JSON.stringify(cfg)])],
      ['model.safetensors', new Blob([readFileSync(join(ROOT, 'tests/fixtures/moe/mixtral/model.safetensors'))])],
    ]));
    assert.equal(g.tensors.length, 23);
    assert.equal(st.tensors.length, 41);
    const count = (s) => B.estimateLoad(s, '').params;
    assert.equal(count(g), 39328);
    assert.equal(count(st), 39328);
    assert.equal(g.layers, cfg.num_hidden_layers);
    assert.equal(g.kvHeads, cfg.num_key_value_heads);
    assert.equal(g.headDim, cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads);
    assert.deepEqual([st.layers, st.kvHeads, st.headDim], [g.layers, g.kvHeads, g.headDim]);
    await assert.rejects(B.ggufShape(new Blob([Buffer.from('GGML0000')]), 'x.gguf'), /x\.gguf: not a GGUF file/);
    await assert.rejects(B.ggufShape(new Blob([readFileSync(join(ROOT, 'tests/fixtures/moe/mixtral.gguf')).subarray(0, 200)]), 'cut.gguf'), /cut\.gguf: the GGUF header ends past the end of the file/);
  });

  it('the GGUF format fixture (every metadata value type, arrays of strings / bools / u64, six tensor types): gguf-py\'s counts', async () => {
    // tests/fixtures/gguf/main.gguf (scripts/fixtures/make_gguf_fixtures.py); gguf-py: 34 tensors,
    // 84 744 elements, 247 456 bytes, llama.block_count 2; f32.arange has GGUF dims [8, 3].
    const g = await B.ggufShape(new Blob([readFileSync(join(ROOT, 'tests/fixtures/gguf/main.gguf'))]), 'main.gguf');
    assert.equal(g.tensors.length, 34);
    const e = B.estimateLoad(g, '');
    assert.equal(e.params, 84744);
    assert.equal(e.fileBytes, 247456);
    assert.equal(g.layers, 2);
    assert.deepEqual(g.tensors[0], { name: 'f32.arange', dtype: 'F32', shape: [3, 8] });
    assert.deepEqual(g.tensors[1], { name: 'f16.weight', dtype: 'F16', shape: [4, 40] });
    assert.deepEqual([...new Set(g.tensors.map((t) => t.dtype))].sort(), ['BF16', 'F16', 'F32', 'Q4_0', 'Q4_1', 'Q8_0']);
  });

  it('SmolLM2-135M Q4_1 GGUF: gguf-py\'s element and byte counts; fits the budget', async () => {
    assert.ok(existsSync(SMOL), `${SMOL} is missing: run scripts/fetch_models.sh (npm run setup does)`);
    const g = await B.ggufShape(new Blob([readFileSync(SMOL)]), 'SmolLM2.gguf');
    assert.equal(g.tensors.length, 272);
    const e = B.estimateLoad(g, '');
    assert.equal(e.params, 134515008);
    assert.equal(e.fileBytes, 96576768);
    assert.deepEqual([g.layers, g.kvHeads, g.headDim, g.context], [30, 3, 64, 8192]);
    assert.equal(B.checkLoad('SmolLM2', g, ''), null);
  });
});
