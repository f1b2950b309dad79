//! `qmatvec`: y = W · x for a quantized weight W: (N rows, K cols) in Q8_0, Q4_0 or Q4_1 blocks,
//! x: (K) f32, y: (N) f32: the decode-time product of a Linear layer (`y = x Wᵀ` of
//! `torch.nn.functional.linear` for one token), with the dequantization done in the kernel.
//!
//! Formats: llama.cpp `ggml/src/ggml-common.h` (`block_q8_0`, `block_q4_0`, `block_q4_1`) and
//! `ggml-quants.c` (`dequantize_row_*`); uploaded in the aligned split layout of
//! [`SplitBlocks`] (scales and mins as f32, quants as u32 words). The kernel follows the shape of
//! llama.cpp's `mul_mat_vec` shaders (Vulkan `mul_mat_vec.comp`, WebGPU `mul_mat_vec.wgsl`):
//! 64-thread workgroups of 8 output rows × 8 threads, each thread striding over its row's quant
//! words, a shared-memory tree reduction per row; no subgroups.
//!
//! Numbers: the CPU [`reference`] dequantizes each row exactly as [`SplitBlocks::dequantize`]
//! (bit-identical to llama.cpp / gguf-py) and sums w·x in f32 in column order. The GPU sums in
//! another order (per-thread partials, vec4 dots, a tree) and may fuse `d·q + m`, so the two
//! agree within the f32 summation bound, not bit for bit.
//!
//! Splitting: W is split by rows into chunks whose quants, scales and mins each fit one storage
//! binding (`max_storage_buffer_binding_size`, 128 MiB on lavapipe); x must fit one binding.
//! Rows beyond 65535 per chunk use the harness's 2-D grid.

use crate::gpu::GpuContext;
use crate::tensor::quant::{BlockFormat, QK, SplitBlocks};

use super::{GpuResultExt, OpError, QUANT_DECODE, QUANT_ROW_DOT, record};

pub const KERNEL: &str = "qmatvec";
/// The kernel's source: the shared quant WGSL (`ops::QUANT_DECODE`, `ops::QUANT_ROW_DOT`) then
/// shaders/qmatvec.wgsl.
pub static WGSL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{QUANT_DECODE}{QUANT_ROW_DOT}{}", include_str!("../../../shaders/qmatvec.wgsl")));
/// Threads per workgroup (`WG` in the shader).
pub const WORKGROUP_SIZE: u32 = 64;
/// Output rows per workgroup (`ROWS` in the shader): 8 threads per row.
pub const ROWS_PER_GROUP: u32 = 8;

/// Mirrors `struct Meta` in shaders/qmatvec.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Output rows in this dispatch.
    pub rows: u32,
    /// Row length K (a multiple of 32).
    pub k: u32,
    /// [`format_code`] of the block format.
    pub format: u32,
    pub _pad: u32,
}

/// The shader's code for a block format (`params.format`).
pub fn format_code(f: BlockFormat) -> u32 {
    match f {
        BlockFormat::Q8_0 => 0,
        BlockFormat::Q4_0 => 1,
        BlockFormat::Q4_1 => 2,
    }
}

/// Shape of y = W · x: W (n, k), x (k), y (n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QMatvecParams {
    pub n: usize,
    pub k: usize,
    /// Upper bound on rows per chunk (None: as many as one binding holds). For tests.
    pub max_chunk_rows: Option<usize>,
}

/// Checks shapes and the split layout; returns K/32 (blocks per row).
fn check(w: &SplitBlocks, n: usize, k: usize, x: &[f32]) -> Result<usize, OpError> {
    if k == 0 || !k.is_multiple_of(QK) {
        return Err(OpError::shape(
            KERNEL,
            format!("K = {k} must be a positive multiple of the block size {QK}"),
        ));
    }
    if x.len() != k {
        return Err(OpError::shape(
            KERNEL,
            format!("x has {} elements, expected K = {k}", x.len()),
        ));
    }
    let nb = k / QK;
    let blocks = n
        .checked_mul(nb)
        .ok_or_else(|| OpError::shape(KERNEL, format!("N = {n} × K = {k} overflows")))?;
    if w.blocks() != blocks {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "{} weight has {} blocks, expected (N={n}) × (K={k})/32 = {blocks}",
                w.format,
                w.blocks()
            ),
        ));
    }
    let words = blocks * w.format.quant_words();
    if w.qs.len() != words {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "{} weight has {} quant words, expected {blocks} blocks × {} = {words}",
                w.format,
                w.qs.len(),
                w.format.quant_words()
            ),
        ));
    }
    match (&w.mins, w.format.has_min()) {
        (Some(m), true) if m.len() != blocks => Err(OpError::shape(
            KERNEL,
            format!(
                "{} weight has {} mins, expected {blocks}",
                w.format,
                m.len()
            ),
        )),
        (None, true) => Err(OpError::shape(
            KERNEL,
            format!("{} weight has no mins", w.format),
        )),
        (Some(_), false) => Err(OpError::shape(
            KERNEL,
            format!("{} weight carries mins, a format without them", w.format),
        )),
        _ => Ok(nb),
    }?;
    if n > u32::MAX as usize || k > u32::MAX as usize {
        return Err(OpError::shape(
            KERNEL,
            format!("N = {n} or K = {k} does not fit u32"),
        ));
    }
    Ok(nb)
}

/// CPU reference on plain slices: for each row r, dequantize its K/32 blocks (exactly as
/// [`SplitBlocks::dequantize`]) and sum W[r, j] · x[j] in f32 in j order. Returns y: (n).
pub fn reference(w: &SplitBlocks, n: usize, k: usize, x: &[f32]) -> Result<Vec<f32>, OpError> {
    let nb = check(w, n, k, x)?;
    let qw = w.format.quant_words();
    let mut y = Vec::with_capacity(n);
    let mut row = vec![0.0f32; k];
    for r in 0..n {
        // Dequantize row r with SplitBlocks::dequantize's formulas (f32, two roundings for Q4_1).
        for b in 0..nb {
            let blk = r * nb + b;
            let d = w.scales[blk];
            let words = &w.qs[blk * qw..(blk + 1) * qw];
            let byte = |j: usize| (words[j / 4] >> (8 * (j % 4))) as u8;
            let out = &mut row[b * QK..(b + 1) * QK];
            match w.format {
                BlockFormat::Q8_0 => {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = (byte(j) as i8) as f32 * d;
                    }
                }
                BlockFormat::Q4_0 => {
                    for j in 0..QK / 2 {
                        out[j] = ((byte(j) & 0x0F) as i32 - 8) as f32 * d;
                        out[j + QK / 2] = ((byte(j) >> 4) as i32 - 8) as f32 * d;
                    }
                }
                BlockFormat::Q4_1 => {
                    let m = w.mins.as_ref().map_or(0.0, |m| m[blk]);
                    for j in 0..QK / 2 {
                        out[j] = (byte(j) & 0x0F) as f32 * d + m;
                        out[j + QK / 2] = (byte(j) >> 4) as f32 * d + m;
                    }
                }
            }
        }
        y.push(row.iter().zip(x).fold(0.0f32, |s, (a, b)| s + a * b));
    }
    Ok(y)
}

/// Rows per chunk so that the chunk's quants, scales (and mins) and y each fit one binding.
pub fn chunk_rows(
    ctx: &GpuContext,
    format: BlockFormat,
    n: usize,
    k: usize,
    max: Option<usize>,
) -> usize {
    let row_bytes = (k / QK * format.quant_words() * 4).max(4) as u64; // qs is the widest array
    let mut r = (ctx.max_binding_bytes() / row_bytes) as usize;
    r = r.min(n).min(u32::MAX as usize);
    if let Some(cap) = max {
        r = r.min(cap.max(1));
    }
    r.max(1)
}

/// The checks every quantized-product kernel makes of its Meta before a dispatch: K a positive
/// multiple of the block size, a known format code (0 Q8_0, 1 Q4_0, 2 Q4_1).
pub(crate) fn check_meta(kernel: &'static str, k: u32, format: u32) -> Result<(), OpError> {
    if k == 0 || !k.is_multiple_of(QK as u32) {
        return Err(OpError::shape(kernel, format!("K = {k} must be a positive multiple of {QK}")));
    }
    if format > 2 {
        return Err(OpError::shape(kernel, format!("format code {format} is not 0 (Q8_0), 1 (Q4_0) or 2 (Q4_1)")));
    }
    Ok(())
}

/// Records one dispatch on GPU-resident buffers into `enc` (nothing is submitted).
/// scales, mins: (meta.rows · K/32) f32 (for Q8_0 / Q4_0 `mins` may be any f32 binding, e.g.
/// `scales` again); qs: (meta.rows · K/32 · W) u32; x: (K) f32; y: (meta.rows) f32.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    meta: &Meta,
    scales: wgpu::BufferBinding<'_>,
    mins: wgpu::BufferBinding<'_>,
    qs: wgpu::BufferBinding<'_>,
    x: wgpu::BufferBinding<'_>,
    y: wgpu::BufferBinding<'_>,
) -> Result<(), OpError> {
    check_meta(KERNEL, meta.k, meta.format)?;
    let grid = ctx
        .grid(KERNEL, (meta.rows as u64).div_ceil(ROWS_PER_GROUP as u64))
        .op(KERNEL)?;
    record(ctx, enc, KERNEL, &WGSL, meta, &[scales, mins, qs, x, y], grid)
}

/// y = W · x on the GPU: uploads x once and W chunk by chunk (rows), dispatches, reads back.
/// Returns N values, equal to [`reference`] within the f32 summation bound (module docs).
pub async fn qmatvec(
    ctx: &GpuContext,
    w: &SplitBlocks,
    x: &[f32],
    p: &QMatvecParams,
) -> Result<Vec<f32>, OpError> {
    let (n, k) = (p.n, p.k);
    let nb = check(w, n, k, x)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let qw = w.format.quant_words();
    let r = chunk_rows(ctx, w.format, n, k, p.max_chunk_rows);
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let x_buf = ctx.upload_f32("qmatvec.x", x).op(KERNEL)?;
    let s_buf = ctx
        .buffer("qmatvec.scales", (r * nb * 4) as u64, storage)
        .op(KERNEL)?;
    let m_buf = match w.mins {
        Some(_) => Some(
            ctx.buffer("qmatvec.mins", (r * nb * 4) as u64, storage)
                .op(KERNEL)?,
        ),
        None => None,
    };
    let q_buf = ctx
        .buffer("qmatvec.qs", (r * nb * qw * 4) as u64, storage)
        .op(KERNEL)?;
    let y_buf = ctx
        .buffer(
            "qmatvec.y",
            (r * 4) as u64,
            storage | wgpu::BufferUsages::COPY_SRC,
        )
        .op(KERNEL)?;

    let mut y = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let rows = r.min(n - start);
        let (b0, b1) = (start * nb, (start + rows) * nb);
        ctx.queue
            .write_buffer(&s_buf, 0, bytemuck::cast_slice(&w.scales[b0..b1]));
        if let (Some(mb), Some(m)) = (&m_buf, &w.mins) {
            ctx.queue
                .write_buffer(mb, 0, bytemuck::cast_slice(&m[b0..b1]));
        }
        ctx.queue
            .write_buffer(&q_buf, 0, bytemuck::cast_slice(&w.qs[b0 * qw..b1 * qw]));
        let meta = Meta {
            rows: rows as u32,
            k: k as u32,
            format: format_code(w.format),
            _pad: 0,
        };
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(KERNEL),
            });
        let sb = (rows * nb * 4) as u64;
        encode(
            ctx,
            &mut enc,
            &meta,
            s_buf.binding(sb),
            m_buf.as_ref().unwrap_or(&s_buf).binding(sb),
            q_buf.binding(sb * qw as u64),
            x_buf.binding((k * 4) as u64),
            y_buf.binding((rows * 4) as u64),
        )?;
        ctx.queue.submit([enc.finish()]);
        let part = ctx
            .read_f32("qmatvec.y readback", &y_buf, 0, rows)
            .await
            .op(KERNEL)?;
        y.extend_from_slice(&part);
        start += rows;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::quant::quantize;

    #[test]
    fn reference_is_dequantized_row_dot_x() {
        // Two rows of one Q4_1 block each: d = 1, m = -1, all quants 2 (row 0) or 0 (row 1).
        let mut bytes = Vec::new();
        for q in [0x22u8, 0x00] {
            bytes.extend(half::f16::from_f32(1.0).to_le_bytes());
            bytes.extend(half::f16::from_f32(-1.0).to_le_bytes());
            bytes.extend([q; 16]);
        }
        let w = SplitBlocks::from_blocks(BlockFormat::Q4_1, &bytes).unwrap();
        let x: Vec<f32> = (0..32).map(|j| j as f32).collect();
        // Row 0: w = 1·2 − 1 = 1 everywhere → Σx = 496; row 1: w = −1 → −496.
        assert_eq!(reference(&w, 2, 32, &x).unwrap(), vec![496.0, -496.0]);
    }

    #[test]
    fn reference_equals_dequantize_then_dot() {
        // Every format, 3 rows × 64 columns: the reference's in-place dequantization is
        // SplitBlocks::dequantize (bit for bit), and its sum runs in column order.
        let w: Vec<f32> = (0..3 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        for f in BlockFormat::ALL {
            let mut bytes = Vec::new();
            quantize(f, &w, &mut bytes).unwrap();
            let s = SplitBlocks::from_blocks(f, &bytes).unwrap();
            let mut deq = Vec::new();
            s.dequantize(&mut deq).unwrap();
            let want: Vec<u32> = deq
                .chunks(64)
                .map(|row| {
                    row.iter()
                        .zip(&x)
                        .fold(0.0f32, |a, (p, q)| a + p * q)
                        .to_bits()
                })
                .collect();
            let got: Vec<u32> = reference(&s, 3, 64, &x)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(got, want, "{f}");
        }
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let mut bytes = Vec::new();
        quantize(BlockFormat::Q8_0, &[0.5; 64], &mut bytes).unwrap();
        let w = SplitBlocks::from_blocks(BlockFormat::Q8_0, &bytes).unwrap();
        let e = reference(&w, 1, 48, &[0.0; 48]).unwrap_err().to_string();
        assert!(e.contains("K = 48 must be a positive multiple"), "{e}");
        let e = reference(&w, 1, 64, &[0.0; 32]).unwrap_err().to_string();
        assert!(e.contains("x has 32 elements, expected K = 64"), "{e}");
        let e = reference(&w, 3, 32, &[0.0; 32]).unwrap_err().to_string();
        assert!(
            e.contains("Q8_0 weight has 2 blocks, expected (N=3) × (K=32)/32 = 3"),
            "{e}"
        );
        let mut bad = w.clone();
        bad.qs.pop();
        let e = reference(&bad, 2, 32, &[0.0; 32]).unwrap_err().to_string();
        assert!(e.contains("15 quant words"), "{e}");
        bad = w.clone();
        bad.mins = Some(vec![0.0; 2]);
        let e = reference(&bad, 2, 32, &[0.0; 32]).unwrap_err().to_string();
        assert!(e.contains("carries mins"), "{e}");
    }
}
