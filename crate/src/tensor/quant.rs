//! Quantized block formats of GGUF / llama.cpp (Q8_0, Q4_0, Q4_1): dequantization, the reference
//! quantizers, and the aligned "split" layout uploaded to the GPU.
//!
//! References:
//! - llama.cpp `ggml/src/ggml-common.h` (`block_q8_0`, `block_q4_0`, `block_q4_1`) and
//!   `ggml/src/ggml-quants.c` (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`,
//!   `quantize_row_q4_1_ref`, `dequantize_row_q8_0`, `dequantize_row_q4_0`, `dequantize_row_q4_1`);
//! - gguf-py (`gguf/quants.py`, classes `Q8_0`, `Q4_0`, `Q4_1`), the Python port of the same math,
//!   against which the tests check every byte and every f32 (fixtures from
//!   `scripts/fixtures/make_gguf_fixtures.py`).
//!
//! Every block holds [`QK`] = 32 consecutive weights of one row (GGUF `ne[0]`, the innermost
//! dimension), little-endian:
//!
//! ```text
//! Q8_0  34 bytes: d: f16 | qs: [i8; 32]                    w[j] = d·qs[j]
//! Q4_0  18 bytes: d: f16 | qs: [u8; 16]                    w[j] = d·(q[j] − 8)
//! Q4_1  20 bytes: d: f16 | m: f16 | qs: [u8; 16]           w[j] = d·q[j] + m
//!       q[j] = qs[j] & 0xF and q[j + 16] = qs[j] >> 4 for j in 0..16
//! ```
//!
//! Dequantization computes in f32 exactly as llama.cpp's `dequantize_row_*` (`d` widened from f16;
//! Q4_1 is `q·d + m` with two roundings, no fused multiply-add), so the results are bit-identical
//! to gguf-py's `gguf.quants.dequantize`.
//!
//! Quantization mirrors llama.cpp's `quantize_row_*_ref` (and gguf-py's `quantize_blocks`), all in
//! f32, with the scale computed in f32 and only stored as f16:
//! - Q8_0: `amax = max |x|`, `d = amax / 127`, `id = d ≠ 0 ? 1/d : 0`, `q = roundf(x·id)` (ties
//!   away from zero);
//! - Q4_0: `max` = the signed value of largest |x| (first one on ties), `d = max / −8`,
//!   `q = min(15, trunc(x·id + 8.5))`;
//! - Q4_1: `d = (max − min) / 15`, `m = min`, `q = min(15, trunc((x − min)·id + 0.5))`.

use half::f16;

/// Weights per block (llama.cpp `QK8_0`, `QK4_0`, `QK4_1`).
pub const QK: usize = 32;

/// A 32-weight block format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl BlockFormat {
    pub const ALL: [BlockFormat; 3] = [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1];

    /// Bytes per block in GGUF (34, 18, 20).
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 2 + QK,
            BlockFormat::Q4_0 => 2 + QK / 2,
            BlockFormat::Q4_1 => 4 + QK / 2,
        }
    }

    /// Bytes of quants per block (32 for Q8_0, 16 for the 4-bit formats).
    pub fn quant_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => QK,
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => QK / 2,
        }
    }

    /// u32 words of quants per block in the split layout (8 or 4).
    pub fn quant_words(self) -> usize {
        self.quant_bytes() / 4
    }

    /// Whether blocks carry a minimum (`m`) besides the scale.
    pub fn has_min(self) -> bool {
        self == BlockFormat::Q4_1
    }

    /// The ggml spelling (`"Q8_0"`).
    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::Q8_0 => "Q8_0",
            BlockFormat::Q4_0 => "Q4_0",
            BlockFormat::Q4_1 => "Q4_1",
        }
    }
}

impl std::fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A length that is not a whole number of blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{format}: {len} values is not a multiple of the block size {QK}")]
    Values { format: BlockFormat, len: usize },
    #[error("{format}: {len} bytes is not a multiple of the block size of {block} bytes")]
    Bytes { format: BlockFormat, len: usize, block: usize },
    #[error("{format}: split layout is inconsistent: {message}")]
    Split { format: BlockFormat, message: String },
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn check_bytes(format: BlockFormat, bytes: &[u8]) -> Result<usize, QuantError> {
    let block = format.block_bytes();
    if !bytes.len().is_multiple_of(block) {
        return Err(QuantError::Bytes { format, len: bytes.len(), block });
    }
    Ok(bytes.len() / block)
}

fn check_values(format: BlockFormat, x: &[f32]) -> Result<usize, QuantError> {
    if !x.len().is_multiple_of(QK) {
        return Err(QuantError::Values { format, len: x.len() });
    }
    Ok(x.len() / QK)
}

/// Dequantize whole blocks (`bytes.len()` a multiple of `format.block_bytes()`), appending
/// `32 × blocks` values to `out`.
pub fn dequantize(format: BlockFormat, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), QuantError> {
    let n = check_bytes(format, bytes)?;
    out.reserve(n * QK);
    for b in bytes.chunks_exact(format.block_bytes()) {
        match format {
            BlockFormat::Q8_0 => {
                let d = f16_at(b, 0);
                out.extend(b[2..2 + QK].iter().map(|&q| (q as i8) as f32 * d));
            }
            BlockFormat::Q4_0 => {
                let d = f16_at(b, 0);
                let qs = &b[2..2 + QK / 2];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
            BlockFormat::Q4_1 => {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..4 + QK / 2];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
    }
    Ok(())
}

/// Quantize `x` (a multiple of 32 values) like llama.cpp's `quantize_row_*_ref`, appending the
/// GGUF block bytes to `out`.
pub fn quantize(format: BlockFormat, x: &[f32], out: &mut Vec<u8>) -> Result<(), QuantError> {
    let n = check_values(format, x)?;
    out.reserve(n * format.block_bytes());
    for blk in x.chunks_exact(QK) {
        match format {
            BlockFormat::Q8_0 => {
                let amax = blk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                // roundf: ties away from zero (f32::round); the cast saturates like the C cast of
                // an in-range value (|x·id| ≤ 127 up to rounding).
                out.extend(blk.iter().map(|&v| ((v * id).round() as i8) as u8));
            }
            BlockFormat::Q4_0 => {
                // The signed value with the largest magnitude; the first one wins ties.
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in blk {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                for j in 0..QK / 2 {
                    out.push(q(blk[j]) | (q(blk[j + QK / 2]) << 4));
                }
            }
            BlockFormat::Q4_1 => {
                let (mut min, mut max) = (f32::MAX, -f32::MAX);
                for &v in blk {
                    min = min.min(v);
                    max = max.max(v);
                }
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
                for j in 0..QK / 2 {
                    out.push(q(blk[j]) | (q(blk[j + QK / 2]) << 4));
                }
            }
        }
    }
    Ok(())
}

/// Blocks split into separate 4-byte-aligned arrays for a GPU storage buffer (WebGPU storage
/// reads whole u32 words, so the f16 scale at the head of an 18- or 34-byte block cannot be read
/// in place). For `n` blocks:
///
/// - `scales[b]`: block `b`'s `d`, widened exactly from f16 to f32;
/// - `mins[b]` (Q4_1 only, `None` otherwise): block `b`'s `m`, widened exactly to f32;
/// - `qs`: `quant_words()` u32 words per block, block `b` at `qs[b·W .. (b+1)·W]` (W = 8 for Q8_0,
///   4 for Q4_0 / Q4_1). The words hold the block's `qs` bytes unchanged, little-endian: byte
///   `k` of word `w` is `qs[4w + k]`, i.e. bits `8k .. 8k+8`. So for
///   - Q8_0: weight `j` is the i8 at word `j / 4`, bits `8·(j % 4)`;
///   - Q4_0 / Q4_1: weight `j < 16` is the low nibble of byte `j` (word `j / 4`, bits
///     `8·(j % 4)`), weight `j + 16` the high nibble of the same byte (bits `8·(j % 4) + 4`).
///
/// Weight `j` of block `b` is `scales[b]·q` (Q8_0), `scales[b]·(q − 8)` (Q4_0) or
/// `scales[b]·q + mins[b]` (Q4_1), bit-identical to [`dequantize`] on the GGUF bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitBlocks {
    pub format: BlockFormat,
    pub scales: Vec<f32>,
    pub mins: Option<Vec<f32>>,
    pub qs: Vec<u32>,
}

impl SplitBlocks {
    /// Split GGUF block bytes (a whole number of blocks).
    pub fn from_blocks(format: BlockFormat, bytes: &[u8]) -> Result<SplitBlocks, QuantError> {
        let n = check_bytes(format, bytes)?;
        let mut scales = Vec::with_capacity(n);
        let mut mins = format.has_min().then(|| Vec::with_capacity(n));
        let mut qs = Vec::with_capacity(n * format.quant_words());
        let head = format.block_bytes() - format.quant_bytes();
        for b in bytes.chunks_exact(format.block_bytes()) {
            scales.push(f16_at(b, 0));
            if let Some(m) = mins.as_mut() {
                m.push(f16_at(b, 2));
            }
            qs.extend(b[head..].chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
        }
        Ok(SplitBlocks { format, scales, mins, qs })
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.scales.len()
    }

    fn check(&self) -> Result<(), QuantError> {
        let n = self.scales.len();
        let err = |message: String| QuantError::Split { format: self.format, message };
        if self.qs.len() != n * self.format.quant_words() {
            return Err(err(format!("{} scales but {} quant words (expected {})", n, self.qs.len(), n * self.format.quant_words())));
        }
        match (&self.mins, self.format.has_min()) {
            (Some(m), true) if m.len() != n => Err(err(format!("{} scales but {} mins", n, m.len()))),
            (None, true) => Err(err("mins missing".into())),
            (Some(_), false) => Err(err("mins present for a format without them".into())),
            _ => Ok(()),
        }
    }

    /// Dequantize from the split arrays (the readable reference of what a GPU kernel computes),
    /// appending `32 × blocks` values to `out`.
    pub fn dequantize(&self, out: &mut Vec<f32>) -> Result<(), QuantError> {
        self.check()?;
        let words = self.format.quant_words();
        out.reserve(self.blocks() * QK);
        for (b, &d) in self.scales.iter().enumerate() {
            let w = &self.qs[b * words..(b + 1) * words];
            let byte = |k: usize| (w[k / 4] >> (8 * (k % 4))) as u8;
            match self.format {
                BlockFormat::Q8_0 => out.extend((0..QK).map(|j| (byte(j) as i8) as f32 * d)),
                BlockFormat::Q4_0 => {
                    out.extend((0..QK / 2).map(|j| ((byte(j) & 0x0F) as i32 - 8) as f32 * d));
                    out.extend((0..QK / 2).map(|j| ((byte(j) >> 4) as i32 - 8) as f32 * d));
                }
                BlockFormat::Q4_1 => {
                    let m = self.mins.as_ref().map_or(0.0, |m| m[b]);
                    out.extend((0..QK / 2).map(|j| (byte(j) & 0x0F) as f32 * d + m));
                    out.extend((0..QK / 2).map(|j| (byte(j) >> 4) as f32 * d + m));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!([34, 18, 20], BlockFormat::ALL.map(|f| f.block_bytes()));
    }

    #[test]
    fn hand_made_blocks_dequantize() {
        // Q4_0: d = 0.5, qs[0] = 0x1F → w[0] = 0.5·(15 − 8) = 3.5, w[16] = 0.5·(1 − 8) = −3.5
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend([0x1F].iter().chain([0x88u8; 15].iter()));
        let mut out = Vec::new();
        dequantize(BlockFormat::Q4_0, &b, &mut out).unwrap();
        assert_eq!((out[0], out[16], out[1], out[17]), (3.5, -3.5, 0.0, 0.0));
        // Q4_1: d = 2, m = −1, qs[3] = 0xA5 → w[3] = 2·5 − 1 = 9, w[19] = 2·10 − 1 = 19
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        b.extend((0..16).map(|j| if j == 3 { 0xA5 } else { 0 }));
        out.clear();
        dequantize(BlockFormat::Q4_1, &b, &mut out).unwrap();
        assert_eq!((out[3], out[19], out[0]), (9.0, 19.0, -1.0));
        // Q8_0: d = 0.25, qs[31] = −128 → −32
        let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend((0..32).map(|j| if j == 31 { 0x80 } else { 4 }));
        out.clear();
        dequantize(BlockFormat::Q8_0, &b, &mut out).unwrap();
        assert_eq!((out[0], out[31]), (1.0, -32.0));
    }

    #[test]
    fn quantize_then_dequantize_is_close() {
        let x = values(32 * 64, 7);
        for f in BlockFormat::ALL {
            let mut q = Vec::new();
            quantize(f, &x, &mut q).unwrap();
            assert_eq!(q.len(), 64 * f.block_bytes());
            let mut y = Vec::new();
            dequantize(f, &q, &mut y).unwrap();
            // |x| < 2. |error| ≤ half a step (plus the f16 rounding of the scale), step = amax/127
            // (Q8_0) or (max − min)/15 (Q4_1); Q4_0 maps the largest |x| to −8, so the opposite
            // extreme clips at +7: up to one whole step, |max|/8.
            let tol = match f {
                BlockFormat::Q8_0 => 2.0 / 127.0 * 0.51 + 1e-3,
                BlockFormat::Q4_0 => 2.0 / 8.0 * 1.01,
                BlockFormat::Q4_1 => 4.0 / 15.0 * 0.51 + 4e-3,
            };
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= tol, "{f}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        for f in BlockFormat::ALL {
            let mut q = Vec::new();
            quantize(f, &[0.0; 32], &mut q).unwrap();
            let mut y = Vec::new();
            dequantize(f, &q, &mut y).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{f}: {y:?}");
        }
    }

    #[test]
    fn split_layout_round_trips() {
        let x = values(32 * 37, 11);
        for f in BlockFormat::ALL {
            let mut q = Vec::new();
            quantize(f, &x, &mut q).unwrap();
            let s = SplitBlocks::from_blocks(f, &q).unwrap();
            assert_eq!(s.blocks(), 37);
            assert_eq!(s.qs.len(), 37 * f.quant_words());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            dequantize(f, &q, &mut a).unwrap();
            s.dequantize(&mut b).unwrap();
            assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{f}");
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let e = quantize(BlockFormat::Q4_0, &[0.0; 33], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("33 values"), "{e}");
        let e = dequantize(BlockFormat::Q8_0, &[0; 35], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("35 bytes"), "{e}");
        let mut s = SplitBlocks::from_blocks(BlockFormat::Q4_1, &[0; 40]).unwrap();
        s.qs.pop();
        assert!(s.dequantize(&mut Vec::new()).is_err());
    }
}
