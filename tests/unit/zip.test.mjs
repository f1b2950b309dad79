// Unit tests of the store-only ZIP writer (web/src/zip.ts), in node without a browser: the module is
// compiled with the project's TypeScript compiler into a temporary folder and imported from there.
// The archives are read back by an independent reader written here (APPNOTE 6.3.x: 4.3.7 local
// header, 4.3.12 central directory, 4.3.14/4.3.15 Zip64 end record and locator, 4.5.3 Zip64
// extra field) and, where Info-ZIP's `unzip` is installed, also checked by `unzip -t`.
// ZIP64 is exercised on small files by lowering the threshold (`zipStore(files, zip64From)`):
// the same code writes the fields for > 4 GiB outputs.
//
// Run: node --test tests/unit/zip.test.mjs
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
let out;
let Z;

before(() => {
  out = mkdtempSync(join(tmpdir(), 'crucible-zip-unit-'));
  execFileSync(
    join(ROOT, 'node_modules/.bin/tsc'),
    ['--ignoreConfig', join(ROOT, 'web/src/zip.ts'), '--outDir', out, '--module', 'commonjs', '--target', 'es2022', '--lib', 'es2022,dom', '--strict', '--skipLibCheck'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  writeFileSync(join(out, 'package.json'), '{"type":"commonjs"}');
  Z = createRequire(join(out, 'x.js'))('./zip.js');
});
after(() => out && rmSync(out, { recursive: true, force: true }));

/** CRC-32 (IEEE), bitwise: independent of the module's table-driven one. */
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** Zip64 extended-information fields of an extra block, in order, for the 0xFFFFFFFF fields. */
function zip64Fields(extra) {
  for (let p = 0; p + 4 <= extra.length;) {
    const id = extra.readUInt16LE(p), len = extra.readUInt16LE(p + 2);
    if (id === 0x0001) return Array.from({ length: len / 8 }, (_, i) => Number(extra.readBigUInt64LE(p + 4 + 8 * i)));
    p += 4 + len;
  }
  return [];
}

/** Read a stored archive (plain or Zip64); checks every structure it walks. */
function readZip(zip) {
  const eocd = zip.length - 22;
  assert.equal(zip.readUInt32LE(eocd), 0x06054b50, 'end of central directory');
  let count = zip.readUInt16LE(eocd + 10), cdSize = zip.readUInt32LE(eocd + 12), cd = zip.readUInt32LE(eocd + 16);
  let zip64 = false;
  if (zip.length >= 42 && zip.readUInt32LE(eocd - 20) === 0x07064b50) {
    zip64 = true;
    const rec = Number(zip.readBigUInt64LE(eocd - 20 + 8));
    assert.equal(zip.readUInt32LE(eocd - 20 + 16), 1, 'one disk');
    assert.equal(zip.readUInt32LE(rec), 0x06064b50, 'zip64 end record');
    assert.equal(Number(zip.readBigUInt64LE(rec + 4)), 44);
    assert.equal(zip.readUInt16LE(rec + 14), 45, 'version needed 4.5');
    count = Number(zip.readBigUInt64LE(rec + 32));
    cdSize = Number(zip.readBigUInt64LE(rec + 40));
    cd = Number(zip.readBigUInt64LE(rec + 48));
    assert.equal(rec, cd + cdSize, 'the zip64 record follows the central directory');
  } else {
    assert.equal(eocd, cd + cdSize, 'the end record follows the central directory');
  }
  const entries = [];
  for (let i = 0; i < count; i++) {
    assert.equal(zip.readUInt32LE(cd), 0x02014b50, 'central directory header');
    const crc = zip.readUInt32LE(cd + 16);
    let csize = zip.readUInt32LE(cd + 20), usize = zip.readUInt32LE(cd + 24);
    const nameLen = zip.readUInt16LE(cd + 28), extraLen = zip.readUInt16LE(cd + 30), commentLen = zip.readUInt16LE(cd + 32);
    let local = zip.readUInt32LE(cd + 42);
    const name = zip.subarray(cd + 46, cd + 46 + nameLen).toString('utf8');
    const f64 = zip64Fields(zip.subarray(cd + 46 + nameLen, cd + 46 + nameLen + extraLen));
    if (usize === 0xffffffff) usize = f64.shift();
    if (csize === 0xffffffff) csize = f64.shift();
    if (local === 0xffffffff) local = f64.shift();
    assert.equal(zip.readUInt32LE(local), 0x04034b50, `local header of ${name}`);
    assert.equal(zip.readUInt16LE(local + 8), 0, 'stored');
    assert.equal(zip.readUInt32LE(local + 14), crc, 'local CRC = central CRC');
    const lNameLen = zip.readUInt16LE(local + 26), lExtraLen = zip.readUInt16LE(local + 28);
    assert.equal(zip.subarray(local + 30, local + 30 + lNameLen).toString('utf8'), name);
    let lsize = zip.readUInt32LE(local + 22);
    if (lsize === 0xffffffff) lsize = zip64Fields(zip.subarray(local + 30 + lNameLen, local + 30 + lNameLen + lExtraLen))[0];
    assert.equal(lsize, usize, `local size of ${name}`);
    assert.equal(csize, usize, 'stored: compressed = uncompressed');
    const start = local + 30 + lNameLen + lExtraLen;
    const data = zip.subarray(start, start + usize);
    assert.equal(crc32(data), crc, `CRC of ${name}`);
    entries.push({ name, data: Buffer.from(data), zip64Entry: f64.length > 0 || zip.readUInt16LE(cd + 6) === 45 });
    cd += 46 + nameLen + extraLen + commentLen;
  }
  return { entries, zip64 };
}

function unzipTest(zip, tag) {
  if (!existsSync('/usr/bin/unzip')) return;
  const p = join(out, `${tag}.zip`);
  writeFileSync(p, zip);
  const r = execFileSync('/usr/bin/unzip', ['-t', p], { encoding: 'utf8' });
  assert.match(r, /No errors detected/, r);
}

const FILES = () => [
  { name: 'model.safetensors', blob: new Blob([Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 31) & 0xff))]) },
  { name: 'empty.txt', blob: new Blob([]) },
  { name: 'dir/é—ü.json', blob: new Blob(['{"a": 1}\n']) },
];

describe('zipStore', () => {
  it('crc32 of the standard check string', () => {
    assert.equal(Z.crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
    assert.equal(Z.crc32(new TextEncoder().encode('6789'), Z.crc32(new TextEncoder().encode('12345'))), 0xcbf43926);
  });

  it('a small archive is plain ZIP with every file intact', async () => {
    const files = FILES();
    const zip = Buffer.from(await (await Z.zipStore(files)).arrayBuffer());
    const { entries, zip64 } = readZip(zip);
    assert.equal(zip64, false);
    assert.deepEqual(entries.map((e) => e.name), files.map((f) => f.name));
    assert.ok(entries.every((e) => !e.zip64Entry));
    for (const [i, f] of files.entries()) assert.deepEqual(entries[i].data, Buffer.from(await f.blob.arrayBuffer()));
    // 3 local headers + names + data, 3 central entries + names, the end record
    const names = files.reduce((s, f) => s + Buffer.byteLength(f.name), 0);
    assert.equal(zip.length, 3 * 30 + names + 70_000 + 9 + 3 * 46 + names + 22);
    unzipTest(zip, 'plain');
  });

  it('ZIP64 (forced from size 0): extra fields, the zip64 end record and locator, same contents', async () => {
    const files = FILES();
    const zip = Buffer.from(await (await Z.zipStore(files, 0)).arrayBuffer());
    const { entries, zip64 } = readZip(zip);
    assert.equal(zip64, true);
    assert.ok(entries.every((e) => e.zip64Entry));
    for (const [i, f] of files.entries()) assert.deepEqual(entries[i].data, Buffer.from(await f.blob.arrayBuffer()));
    unzipTest(zip, 'zip64');
  });

  it('ZIP64 from an offset: entries before the threshold stay plain, later ones get zip64 fields', async () => {
    const files = [
      { name: 'a', blob: new Blob([Buffer.alloc(50, 1)]) },
      { name: 'b', blob: new Blob([Buffer.alloc(20, 2)]) },
      { name: 'c', blob: new Blob([Buffer.alloc(10, 3)]) },
    ];
    // a at 0, b at 81, c at 132 (> 100): only c needs the zip64 offset.
    const zip = Buffer.from(await (await Z.zipStore(files, 100)).arrayBuffer());
    const { entries, zip64 } = readZip(zip);
    assert.equal(zip64, true);
    assert.deepEqual(entries.map((e) => e.zip64Entry), [false, false, true]);
    assert.deepEqual(entries.map((e) => e.data[0]), [1, 2, 3]);
    unzipTest(zip, 'zip64-offset');
  });
});
