// A store-only ZIP writer (no compression: safetensors weights barely compress, and a stored
// archive is written without holding more than one chunk in memory). Format: PKWARE APPNOTE 6.3.x,
// sections 4.3.7 (local header), 4.3.12 (central directory), 4.3.16 (end of central directory).
// Sizes and offsets are 32-bit: archives over 4 GiB are refused (download the files one by one).

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (IEEE 802.3, reflected, init and final xor 0xFFFFFFFF) continued from `crc`. */
export function crc32(bytes: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

async function blobCrc32(blob: Blob): Promise<number> {
  const step = 8 << 20;
  let crc = 0;
  for (let off = 0; off < blob.size; off += step) {
    crc = crc32(new Uint8Array(await blob.slice(off, off + step).arrayBuffer()), crc);
  }
  return crc;
}

export const ZIP_LIMIT = 0xffffffff;

/** Whether these files fit a (non-ZIP64) archive. */
export function fitsZip(files: { blob: Blob }[]): boolean {
  const total = files.reduce((s, f) => s + f.blob.size + 200, 22);
  return total < ZIP_LIMIT && files.length < 0xffff;
}

/** One stored ZIP holding `files` (names may contain `/` for folders). */
export async function zipStore(files: { name: string; blob: Blob }[]): Promise<Blob> {
  if (!fitsZip(files)) throw new Error('the result is over 4 GiB: download the files one by one');
  const enc = new TextEncoder();
  const parts: BlobPart[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  // DOS date/time of 1980-01-01 00:00: fixed, so the archive's bytes depend on its contents only.
  const dosTime = 0, dosDate = (0 << 9) | (1 << 5) | 1;
  for (const f of files) {
    const name = enc.encode(f.name);
    const crc = await blobCrc32(f.blob);
    const size = f.blob.size;
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true); // local file header signature
    local.setUint16(4, 20, true); // version needed: 2.0
    local.setUint16(6, 0x0800, true); // flags: UTF-8 names
    local.setUint16(8, 0, true); // method: stored
    local.setUint16(10, dosTime, true);
    local.setUint16(12, dosDate, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, size, true); // compressed size
    local.setUint32(22, size, true); // uncompressed size
    local.setUint16(26, name.length, true);
    local.setUint16(28, 0, true); // extra length
    parts.push(local.buffer, name, f.blob);

    const cd = new DataView(new ArrayBuffer(46 + name.length));
    cd.setUint32(0, 0x02014b50, true); // central directory header signature
    cd.setUint16(4, 20, true); // version made by
    cd.setUint16(6, 20, true); // version needed
    cd.setUint16(8, 0x0800, true);
    cd.setUint16(10, 0, true);
    cd.setUint16(12, dosTime, true);
    cd.setUint16(14, dosDate, true);
    cd.setUint32(16, crc, true);
    cd.setUint32(20, size, true);
    cd.setUint32(24, size, true);
    cd.setUint16(28, name.length, true);
    // 30 extra, 32 comment, 34 disk, 36 internal attrs, 38 external attrs: all 0
    cd.setUint32(42, offset, true); // offset of the local header
    new Uint8Array(cd.buffer).set(name, 46);
    central.push(new Uint8Array(cd.buffer));
    offset += 30 + name.length + size;
  }
  const cdSize = central.reduce((s, c) => s + c.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); // end of central directory signature
  end.setUint16(8, files.length, true); // entries on this disk
  end.setUint16(10, files.length, true); // entries in total
  end.setUint32(12, cdSize, true);
  end.setUint32(16, offset, true); // central directory offset
  return new Blob([...parts, ...central.map((c) => c.buffer as ArrayBuffer), end.buffer], { type: 'application/zip' });
}
