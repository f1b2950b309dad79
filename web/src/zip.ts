// A store-only ZIP writer (no compression: safetensors weights barely compress). The archive is a
// Blob composed of the headers and the files' own Blobs — for disk-backed Files (a folder, OPFS)
// nothing is copied into memory: the browser streams the parts when the Blob is downloaded. The
// CRC-32 of each file is computed first, reading it in 8 MiB slices.
// Format: PKWARE APPNOTE 6.3.x, sections 4.3.7 (local header), 4.3.12 (central directory),
// 4.3.16 (end of central directory), and ZIP64 for archives over 4 GiB: 4.5.3 (the Zip64 extended
// information extra field, ID 0x0001), 4.3.14 (Zip64 end of central directory record), 4.3.15
// (its locator). An archive whose sizes and offsets all fit in 32 bits is plain ZIP (no Zip64
// fields), byte for byte what earlier versions wrote.

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

/** Sizes and offsets from this value up need ZIP64 fields. */
export const ZIP_LIMIT = 0xffffffff;

/** Whether these files fit an archive (any size: ZIP64 above 4 GiB; at most 2³² − 1 files). */
export function fitsZip(files: { blob: Blob }[]): boolean {
  return files.length < ZIP_LIMIT;
}

/**
 * One stored ZIP holding `files` (names may contain `/` for folders). `zip64From` (tests only):
 * sizes and offsets from this value up use ZIP64 fields (default: the 32-bit limit).
 */
export async function zipStore(files: { name: string; blob: Blob }[], zip64From = ZIP_LIMIT): Promise<Blob> {
  if (!fitsZip(files)) throw new Error('too many files for one archive: download them one by one');
  const enc = new TextEncoder();
  const parts: BlobPart[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  let anyZip64 = false;
  // DOS date/time of 1980-01-01 00:00: fixed, so the archive's bytes depend on its contents only.
  const dosTime = 0, dosDate = (0 << 9) | (1 << 5) | 1;
  for (const f of files) {
    const name = enc.encode(f.name);
    const crc = await blobCrc32(f.blob);
    const size = f.blob.size;
    const z64 = size >= zip64From || offset >= zip64From;
    anyZip64 ||= z64;
    const version = z64 ? 45 : 20;

    // Local header; with ZIP64 both sizes are 0xFFFFFFFF and follow in the extra field.
    const localExtra = z64 ? 20 : 0;
    const local = new DataView(new ArrayBuffer(30 + name.length + localExtra));
    local.setUint32(0, 0x04034b50, true); // local file header signature
    local.setUint16(4, version, true); // version needed: 2.0, or 4.5 for ZIP64
    local.setUint16(6, 0x0800, true); // flags: UTF-8 names
    local.setUint16(8, 0, true); // method: stored
    local.setUint16(10, dosTime, true);
    local.setUint16(12, dosDate, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, z64 ? ZIP_LIMIT : size, true); // compressed size
    local.setUint32(22, z64 ? ZIP_LIMIT : size, true); // uncompressed size
    local.setUint16(26, name.length, true);
    local.setUint16(28, localExtra, true); // extra length
    new Uint8Array(local.buffer).set(name, 30);
    if (z64) {
      const x = 30 + name.length;
      local.setUint16(x, 0x0001, true); // Zip64 extended information
      local.setUint16(x + 2, 16, true);
      local.setBigUint64(x + 4, BigInt(size), true); // uncompressed
      local.setBigUint64(x + 12, BigInt(size), true); // compressed
    }
    parts.push(local.buffer, f.blob);

    // Central directory entry; with ZIP64 sizes and offset are 0xFFFFFFFF and in the extra field.
    const cdExtra = z64 ? 28 : 0;
    const cd = new DataView(new ArrayBuffer(46 + name.length + cdExtra));
    cd.setUint32(0, 0x02014b50, true); // central directory header signature
    cd.setUint16(4, version, true); // version made by
    cd.setUint16(6, version, true); // version needed
    cd.setUint16(8, 0x0800, true);
    cd.setUint16(10, 0, true);
    cd.setUint16(12, dosTime, true);
    cd.setUint16(14, dosDate, true);
    cd.setUint32(16, crc, true);
    cd.setUint32(20, z64 ? ZIP_LIMIT : size, true);
    cd.setUint32(24, z64 ? ZIP_LIMIT : size, true);
    cd.setUint16(28, name.length, true);
    cd.setUint16(30, cdExtra, true);
    // 32 comment, 34 disk, 36 internal attrs, 38 external attrs: all 0
    cd.setUint32(42, z64 ? ZIP_LIMIT : offset, true); // offset of the local header
    new Uint8Array(cd.buffer).set(name, 46);
    if (z64) {
      const x = 46 + name.length;
      cd.setUint16(x, 0x0001, true);
      cd.setUint16(x + 2, 24, true);
      cd.setBigUint64(x + 4, BigInt(size), true); // uncompressed
      cd.setBigUint64(x + 12, BigInt(size), true); // compressed
      cd.setBigUint64(x + 20, BigInt(offset), true); // local header offset
    }
    central.push(new Uint8Array(cd.buffer));
    offset += 30 + name.length + localExtra + size;
  }
  const cdSize = central.reduce((s, c) => s + c.length, 0);
  const tail: ArrayBuffer[] = [];
  const z64End = anyZip64 || offset >= zip64From || cdSize >= zip64From || files.length >= 0xffff;
  if (z64End) {
    const rec = new DataView(new ArrayBuffer(56));
    rec.setUint32(0, 0x06064b50, true); // zip64 end of central directory record
    rec.setBigUint64(4, 44n, true); // size of the rest of the record
    rec.setUint16(12, 45, true); // version made by
    rec.setUint16(14, 45, true); // version needed
    // 16 this disk, 20 disk of the central directory: 0
    rec.setBigUint64(24, BigInt(files.length), true);
    rec.setBigUint64(32, BigInt(files.length), true);
    rec.setBigUint64(40, BigInt(cdSize), true);
    rec.setBigUint64(48, BigInt(offset), true); // central directory offset
    const loc = new DataView(new ArrayBuffer(20));
    loc.setUint32(0, 0x07064b50, true); // zip64 end of central directory locator
    loc.setUint32(4, 0, true);
    loc.setBigUint64(8, BigInt(offset + cdSize), true); // offset of the zip64 record
    loc.setUint32(16, 1, true); // total disks
    tail.push(rec.buffer, loc.buffer);
  }
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); // end of central directory signature
  const count = z64End && files.length >= 0xffff ? 0xffff : files.length;
  end.setUint16(8, count, true); // entries on this disk
  end.setUint16(10, count, true); // entries in total
  end.setUint32(12, z64End && cdSize >= zip64From ? ZIP_LIMIT : cdSize, true);
  end.setUint32(16, z64End ? ZIP_LIMIT : offset, true); // central directory offset (in the zip64 record)
  tail.push(end.buffer);
  return new Blob([...parts, ...central.map((c) => c.buffer as ArrayBuffer), ...tail], { type: 'application/zip' });
}
