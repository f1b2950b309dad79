//! `embed`: the embedding gather out[t, :] = E[tokens[t], :] (`nn.Embedding`, HF transformers
//! `LlamaModel.embed_tokens`) from an f32 or F16 table (binary16 widened with WGSL's core
//! `unpack2x16float`, so without `shader-f16`) or from quantized rows (Q8_0 / Q4_0 / Q4_1 in the
//! aligned split layout of [`SplitBlocks`]), dequantized in the kernel with llama.cpp's formulas
//! (`ggml-quants.c` `dequantize_row_*`).
//!
//! Kernel: shaders/embed.wgsl. Numbers: F32, F16, Q8_0 and Q4_0 rows are exact (one rounding, as on
//! the CPU); Q4_1's `d·q + m` may be fused into one FMA on the GPU, so it agrees with
//! [`reference`] within 1 ulp of the largest of |d·q|, |m| (the CPU rounds twice).
//!
//! Limits: the table is uploaded once ([`GpuEmbedTable`]) in row chunks that each fit one storage
//! binding (`max_storage_buffer_binding_size`), one dispatch per chunk; chunk boundaries are
//! multiples of 64 rows, so the same chunks serve a tied LM head through `ops::qmatvec` with its
//! output bound at a 256-byte aligned offset.

use crate::gpu::GpuContext;
use crate::tensor::quant::{BlockFormat, QK, SplitBlocks};

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "embed";
pub const WGSL: &str = include_str!("../../../shaders/embed.wgsl");
/// Threads per workgroup (`WG` in the shader).
pub const WORKGROUP_SIZE: u32 = 256;
/// Chunk boundaries are multiples of this many rows (64 rows · 4 bytes = 256 bytes, the usual
/// `min_storage_buffer_offset_alignment`).
pub const CHUNK_ROW_MULTIPLE: usize = 64;

/// Mirrors `struct Meta` in shaders/embed.wgsl (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    pub t: u32,
    pub h: u32,
    pub row0: u32,
    pub rows: u32,
    /// 0 Q8_0, 1 Q4_0, 2 Q4_1 (as `qmatvec::format_code`), 3 F32, 4 F16.
    pub format: u32,
    pub _pad: [u32; 3],
}

/// An embedding table on the CPU: (vocab, h) row-major.
#[derive(Debug, Clone, Copy)]
pub enum EmbedTable<'a> {
    F32(&'a [f32]),
    /// IEEE binary16 bits (`WeightStorage::F16`), gathered as packed u32 pairs and widened
    /// with `unpack2x16float` (core WGSL: no `shader-f16` needed, exact).
    F16(&'a [u16]),
    Quant(&'a SplitBlocks),
}

fn check(table: EmbedTable<'_>, vocab: usize, h: usize, tokens: &[u32]) -> Result<(), OpError> {
    if h == 0 || vocab == 0 {
        return Err(OpError::shape(KERNEL, format!("table shape ({vocab}, {h}) is empty")));
    }
    match table {
        EmbedTable::F32(w) if w.len() != vocab * h => {
            return Err(OpError::shape(KERNEL, format!("f32 table has {} values, expected ({vocab}) × ({h})", w.len())));
        }
        EmbedTable::F16(w) if w.len() != vocab * h => {
            return Err(OpError::shape(KERNEL, format!("f16 table has {} values, expected ({vocab}) × ({h})", w.len())));
        }
        EmbedTable::Quant(s) => {
            if !h.is_multiple_of(QK) {
                return Err(OpError::shape(KERNEL, format!("{} table: row length {h} is not a multiple of {QK}", s.format)));
            }
            let blocks = vocab * h / QK;
            let mins_ok = s.mins.as_ref().map_or(!s.format.has_min(), |m| s.format.has_min() && m.len() == blocks);
            if s.scales.len() != blocks || s.qs.len() != blocks * s.format.quant_words() || !mins_ok {
                return Err(OpError::shape(KERNEL, format!("{} table: {} blocks, expected ({vocab}) × ({h})/32 = {blocks}", s.format, s.scales.len())));
            }
        }
        _ => {}
    }
    if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, t)| **t as usize >= vocab) {
        return Err(OpError::shape(KERNEL, format!("token {t} at index {i} is out of range (vocab {vocab})")));
    }
    if tokens.len() * h > u32::MAX as usize || vocab > u32::MAX as usize {
        return Err(OpError::shape(KERNEL, "T · h or vocab does not fit u32"));
    }
    Ok(())
}

/// Row `r` of a quantized table dequantized with llama.cpp's formulas (the readable reference).
pub fn dequantize_row(s: &SplitBlocks, h: usize, r: usize, out: &mut [f32]) {
    let nb = h / QK;
    let w = s.format.quant_words();
    for b in 0..nb {
        let blk = r * nb + b;
        let d = s.scales[blk];
        let qs = &s.qs[blk * w..(blk + 1) * w];
        let byte = |k: usize| (qs[k / 4] >> (8 * (k % 4))) as u8;
        for k in 0..QK {
            out[b * QK + k] = match s.format {
                BlockFormat::Q8_0 => (byte(k) as i8) as f32 * d,
                BlockFormat::Q4_0 => {
                    let q = if k < 16 { byte(k) & 0xF } else { byte(k - 16) >> 4 };
                    (q as i32 - 8) as f32 * d
                }
                BlockFormat::Q4_1 => {
                    let q = if k < 16 { byte(k) & 0xF } else { byte(k - 16) >> 4 };
                    q as f32 * d + s.mins.as_ref().map_or(0.0, |m| m[blk])
                }
            };
        }
    }
}

/// CPU reference: the rows of `tokens` from `table` (vocab, h) → (T, h).
pub fn reference(table: EmbedTable<'_>, vocab: usize, h: usize, tokens: &[u32]) -> Result<Vec<f32>, OpError> {
    check(table, vocab, h, tokens)?;
    let mut out = vec![0.0f32; tokens.len() * h];
    for (row, &tok) in out.chunks_exact_mut(h).zip(tokens) {
        let r = tok as usize;
        match table {
            EmbedTable::F32(w) => row.copy_from_slice(&w[r * h..(r + 1) * h]),
            EmbedTable::F16(w) => {
                for (o, &b) in row.iter_mut().zip(&w[r * h..(r + 1) * h]) {
                    *o = crate::models::llama::f16_bits_to_f32(b);
                }
            }
            EmbedTable::Quant(s) => dequantize_row(s, h, r, row),
        }
    }
    Ok(out)
}

/// A storage buffer created once with `data` (model weights: not pooled, kept for the model's life).
pub fn persistent_storage(ctx: &GpuContext, label: &str, data: &[u8]) -> Result<wgpu::Buffer, OpError> {
    use wgpu::util::DeviceExt;
    let limit = ctx.max_binding_bytes();
    if data.len() as u64 > limit {
        return Err(OpError::Gpu {
            op: KERNEL,
            source: crate::gpu::GpuError::TooLarge { label: label.to_string(), bytes: data.len() as u64, limit_name: "max_storage_buffer_binding_size", limit },
        });
    }
    let mut padded;
    let contents = if data.is_empty() {
        padded = vec![0u8; 4];
        &padded[..]
    } else if !data.len().is_multiple_of(4) {
        padded = data.to_vec();
        padded.resize(data.len().div_ceil(4) * 4, 0);
        &padded[..]
    } else {
        data
    };
    Ok(ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
    }))
}

/// One row chunk of an uploaded table: rows row0 .. row0 + rows.
#[derive(Debug)]
pub struct EmbedChunk {
    pub row0: usize,
    pub rows: usize,
    /// F32: the (rows, h) values; F16: their (rows · h) binary16 bits (padded to 4 bytes);
    /// quantized: the quant words (rows · h/32 · W).
    pub table: wgpu::Buffer,
    /// Block scales (quantized), else a 4-byte placeholder.
    pub scales: wgpu::Buffer,
    /// Q4_1 mins, else None (bind `scales` in its place).
    pub mins: Option<wgpu::Buffer>,
}

/// An embedding table resident on the GPU, split into row chunks that each fit one binding.
#[derive(Debug)]
pub struct GpuEmbedTable {
    pub vocab: usize,
    pub h: usize,
    /// None for F32 and F16.
    pub format: Option<BlockFormat>,
    pub chunks: Vec<EmbedChunk>,
    /// F16 table (`format` is None): chunks hold binary16 bits; products over it run
    /// `ops::hmatvec` / `ops::hmatmul`.
    pub f16: bool,
}

impl GpuEmbedTable {
    /// Rows per chunk: as many as one binding holds (the widest array decides), rounded down to
    /// a multiple of [`CHUNK_ROW_MULTIPLE`], capped by `max_rows` (tests).
    pub fn chunk_rows(ctx: &GpuContext, format: Option<BlockFormat>, vocab: usize, h: usize, max_rows: Option<usize>) -> usize {
        let row_bytes = match format {
            None => h * 4,
            Some(f) => h / QK * f.quant_words() * 4,
        } as u64;
        Self::chunk_rows_of(ctx, row_bytes, vocab, max_rows)
    }

    /// [`chunk_rows`](Self::chunk_rows) for rows of `row_bytes` bytes.
    fn chunk_rows_of(ctx: &GpuContext, row_bytes: u64, vocab: usize, max_rows: Option<usize>) -> usize {
        let mut r = (ctx.max_binding_bytes() / row_bytes.max(1)) as usize;
        if let Some(m) = max_rows {
            r = r.min(m);
        }
        if r < vocab {
            r = (r / CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE).max(CHUNK_ROW_MULTIPLE);
        }
        r.clamp(1, vocab.max(1))
    }

    /// Uploads `table` (vocab, h) once.
    pub fn upload(ctx: &GpuContext, label: &str, table: EmbedTable<'_>, vocab: usize, h: usize, max_rows: Option<usize>) -> Result<GpuEmbedTable, OpError> {
        check(table, vocab, h, &[])?;
        let format = match table {
            EmbedTable::F32(_) | EmbedTable::F16(_) => None,
            EmbedTable::Quant(s) => Some(s.format),
        };
        let f16 = matches!(table, EmbedTable::F16(_));
        let per = if f16 { Self::chunk_rows_of(ctx, h as u64 * 2, vocab, max_rows) } else { Self::chunk_rows(ctx, format, vocab, h, max_rows) };
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < vocab {
            let rows = per.min(vocab - row0);
            let chunk = match table {
                EmbedTable::F32(w) => EmbedChunk {
                    row0,
                    rows,
                    table: persistent_storage(ctx, &format!("{label}.f32[{row0}..]"), bytemuck::cast_slice(&w[row0 * h..(row0 + rows) * h]))?,
                    scales: persistent_storage(ctx, &format!("{label}.none"), &[0u8; 4])?,
                    mins: None,
                },
                // Chunks start at multiples of 64 rows, so at even elements: whole u32 pairs.
                EmbedTable::F16(w) => EmbedChunk {
                    row0,
                    rows,
                    table: persistent_storage(ctx, &format!("{label}.f16[{row0}..]"), bytemuck::cast_slice(&w[row0 * h..(row0 + rows) * h]))?,
                    scales: persistent_storage(ctx, &format!("{label}.none"), &[0u8; 4])?,
                    mins: None,
                },
                EmbedTable::Quant(s) => {
                    let nb = h / QK;
                    let (b0, b1) = (row0 * nb, (row0 + rows) * nb);
                    let w = s.format.quant_words();
                    EmbedChunk {
                        row0,
                        rows,
                        table: persistent_storage(ctx, &format!("{label}.qs[{row0}..]"), bytemuck::cast_slice(&s.qs[b0 * w..b1 * w]))?,
                        scales: persistent_storage(ctx, &format!("{label}.scales[{row0}..]"), bytemuck::cast_slice(&s.scales[b0..b1]))?,
                        mins: match &s.mins {
                            Some(m) => Some(persistent_storage(ctx, &format!("{label}.mins[{row0}..]"), bytemuck::cast_slice(&m[b0..b1]))?),
                            None => None,
                        },
                    }
                }
            };
            chunks.push(chunk);
            row0 += rows;
        }
        Ok(GpuEmbedTable { vocab, h, format, chunks, f16 })
    }

    /// Records the gather of `t` tokens (ids in `tokens`, already checked < vocab) into
    /// out (t, h): one dispatch per chunk.
    pub fn encode(&self, ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, t: usize, tokens: wgpu::BufferBinding<'_>, out: wgpu::BufferBinding<'_>) -> Result<(), OpError> {
        let code = if self.f16 { 4 } else { self.format.map_or(3, super::qmatvec::format_code) };
        let groups = ((t * self.h) as u64).div_ceil(WORKGROUP_SIZE as u64);
        let grid = ctx.grid(KERNEL, groups).op(KERNEL)?;
        for c in &self.chunks {
            let meta = Meta { t: t as u32, h: self.h as u32, row0: c.row0 as u32, rows: c.rows as u32, format: code, _pad: [0; 3] };
            let scales = c.scales.as_entire_buffer_binding();
            let mins = c.mins.as_ref().unwrap_or(&c.scales).as_entire_buffer_binding();
            record(ctx, enc, KERNEL, WGSL, &meta, &[tokens.clone(), scales, mins, c.table.as_entire_buffer_binding(), out.clone()], grid)?;
        }
        Ok(())
    }
}

/// The gather on the GPU: uploads the table (chunks of at most `max_rows` rows, for tests) and
/// the tokens, dispatches, reads (T, h) back.
pub async fn embed(ctx: &GpuContext, table: EmbedTable<'_>, vocab: usize, h: usize, tokens: &[u32], max_rows: Option<usize>) -> Result<Vec<f32>, OpError> {
    check(table, vocab, h, tokens)?;
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let gpu = GpuEmbedTable::upload(ctx, "embed.table", table, vocab, h, max_rows)?;
    let tok = persistent_storage(ctx, "embed.tokens", bytemuck::cast_slice(tokens))?;
    let bytes = (tokens.len() * h * 4) as u64;
    let out = ctx.buffer("embed.out", bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC).op(KERNEL)?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
    gpu.encode(ctx, &mut enc, tokens.len(), tok.as_entire_buffer_binding(), out.binding(bytes))?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("embed.out readback", &out, 0, tokens.len() * h).await.op(KERNEL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::quant::quantize;

    #[test]
    fn reference_rows_equal_split_dequantize() {
        let (vocab, h) = (5, 64);
        let w: Vec<f32> = (0..vocab * h).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        for f in BlockFormat::ALL {
            let mut bytes = Vec::new();
            quantize(f, &w, &mut bytes).unwrap();
            let s = SplitBlocks::from_blocks(f, &bytes).unwrap();
            let mut full = Vec::new();
            s.dequantize(&mut full).unwrap();
            let got = reference(EmbedTable::Quant(&s), vocab, h, &[3, 0, 3]).unwrap();
            assert_eq!(&got[..h], &full[3 * h..4 * h], "{f}");
            assert_eq!(&got[h..2 * h], &full[..h], "{f}");
        }
        let e = reference(EmbedTable::F32(&w), vocab, h, &[5]).unwrap_err().to_string();
        assert!(e.contains("token 5 at index 0 is out of range"), "{e}");
    }
}
