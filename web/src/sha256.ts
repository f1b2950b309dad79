// SHA-256 of a file, for local sources in share links (the link carries each file's sha256; the
// recipient's file is checked against it). WebCrypto's `crypto.subtle.digest` is one-shot: it
// needs the whole file in memory. Files up to ONE_SHOT_LIMIT go that way (fast, native); larger
// ones (multi-GB checkpoints) are read in CHUNK slices through this incremental SHA-256, so memory
// stays at one chunk, progress can be shown and the work can be cancelled.
//
// Reference: FIPS 180-4, "Secure Hash Standard", §5.3.3 (initial hash), §6.2 (SHA-256); the
// constants are the first 32 bits of the fractional parts of the cube roots of the first 64
// primes. Checked against node's crypto in tests/unit/share.test.mjs.

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
  0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** Incremental SHA-256: `update` any number of times, then `hex()` once. */
export class Sha256 {
  private h = new Int32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  private w = new Int32Array(64);
  private buf = new Uint8Array(64);
  private bufLen = 0;
  private total = 0;

  update(data: Uint8Array): this {
    let p = 0;
    this.total += data.length;
    if (this.bufLen) {
      const take = Math.min(64 - this.bufLen, data.length);
      this.buf.set(data.subarray(0, take), this.bufLen);
      this.bufLen += take;
      p = take;
      if (this.bufLen < 64) return this;
      this.block(this.buf, 0);
      this.bufLen = 0;
    }
    for (; p + 64 <= data.length; p += 64) this.block(data, p);
    if (p < data.length) {
      this.buf.set(data.subarray(p), 0);
      this.bufLen = data.length - p;
    }
    return this;
  }

  hex(): string {
    // Padding: 0x80, zeros to 56 mod 64, the message length in bits as a big-endian u64.
    const bits = this.total * 8;
    const pad = new Uint8Array((this.bufLen < 56 ? 56 : 120) - this.bufLen + 8);
    pad[0] = 0x80;
    const dv = new DataView(pad.buffer);
    dv.setUint32(pad.length - 8, Math.floor(bits / 2 ** 32));
    dv.setUint32(pad.length - 4, bits >>> 0);
    this.update(pad);
    return Array.from(this.h, (x) => (x >>> 0).toString(16).padStart(8, '0')).join('');
  }

  private block(d: Uint8Array, off: number) {
    const w = this.w;
    for (let i = 0; i < 16; i++) w[i] = (d[off + 4 * i] << 24) | (d[off + 4 * i + 1] << 16) | (d[off + 4 * i + 2] << 8) | d[off + 4 * i + 3];
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15], b = w[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    const h = this.h;
    let a = h[0], b = h[1], c = h[2], e = h[4], f = h[5], g = h[6], hh = h[7], dd = h[3];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[i] + w[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      hh = g;
      g = f;
      f = e;
      e = (dd + t1) | 0;
      dd = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] = (h[0] + a) | 0;
    h[1] = (h[1] + b) | 0;
    h[2] = (h[2] + c) | 0;
    h[3] = (h[3] + dd) | 0;
    h[4] = (h[4] + e) | 0;
    h[5] = (h[5] + f) | 0;
    h[6] = (h[6] + g) | 0;
    h[7] = (h[7] + hh) | 0;
  }
}

/** Files up to this size are hashed in one `crypto.subtle.digest` call. */
export const ONE_SHOT_LIMIT = 256 * 1024 * 1024;
export const CHUNK = 8 * 1024 * 1024;

const toHex = (buf: ArrayBuffer) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * The sha256 (lower-case hex) of a Blob, reading `chunk` bytes at a time past `oneShot` bytes.
 * `onProgress(doneBytes, totalBytes)`; an aborted `signal` rejects with its reason.
 */
export async function sha256Blob(
  blob: Blob,
  onProgress?: (done: number, total: number) => void,
  signal?: AbortSignal,
  oneShot = ONE_SHOT_LIMIT,
  chunk = CHUNK,
): Promise<string> {
  signal?.throwIfAborted();
  if (blob.size <= oneShot && globalThis.crypto?.subtle) {
    const hex = toHex(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
    onProgress?.(blob.size, blob.size);
    return hex;
  }
  const h = new Sha256();
  for (let off = 0; off < blob.size; off += chunk) {
    signal?.throwIfAborted();
    h.update(new Uint8Array(await blob.slice(off, Math.min(off + chunk, blob.size)).arrayBuffer()));
    onProgress?.(Math.min(off + chunk, blob.size), blob.size);
  }
  signal?.throwIfAborted();
  return h.hex();
}
