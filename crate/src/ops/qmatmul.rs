//! `qmatmul`: Y = X · Wᵀ for a quantized weight W: (N rows, K cols) in Q8_0, Q4_0 or Q4_1 blocks,
//! X: (T, K) f32, Y: (T, N) f32: the prefill-time product of a Linear layer
//! (`torch.nn.functional.linear` for T tokens), with the dequantization done in the kernel.
//!
//! Formats: llama.cpp `ggml/src/ggml-common.h` (`block_q8_0`, `block_q4_0`, `block_q4_1`) and
//! `ggml-quants.c` (`dequantize_row_*`), uploaded in the aligned split layout of [`SplitBlocks`]
//! exactly as for [`qmatvec`](super::qmatvec). Kernel shape after llama.cpp's `mul_mm` shaders
//! (Vulkan `mul_mm.comp`, WebGPU `mul_mat.wgsl`): each workgroup dequantizes a 32-row × 1-block
//! tile of W once into workgroup memory and reuses it for 32 tokens (shaders/qmatmul.wgsl), where
//! T calls of `qmatvec` dequantize every weight T times.
//!
//! Numbers: the CPU [`reference`] is, token by token, [`qmatvec::reference`](super::qmatvec::reference):
//! rows dequantized bit-identically to [`SplitBlocks::dequantize`], Σ w·x in f32 in column order.
//! The GPU also sums in column order but may fuse `x·w + acc` and `d·q + m` into FMAs, so the two
//! agree within the f32 summation bound, not bit for bit.
//!
//! Splitting: W is split by rows into chunks whose quants, scales and mins each fit one storage
//! binding; X (T·K) and Y (T·N) must each fit one binding. A chunk writes its columns of Y through
//! `Meta.y0` / `Meta.ldy`, so no binding needs an offset (no offset-alignment rule).
//! Shapes: grid (⌈rows/32⌉, ⌈T/32⌉), both within `max_compute_workgroups_per_dimension`.

use crate::gpu::GpuContext;
use crate::tensor::quant::{BlockFormat, QK, SplitBlocks};

use super::qmatvec::{self, format_code};
use super::{GpuResultExt, OpError, QUANT_DECODE, record};

pub const KERNEL: &str = "qmatmul";
/// The kernel's source: the shared quant WGSL (`ops::QUANT_DECODE`) then
/// shaders/qmatmul.wgsl.
pub static WGSL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{QUANT_DECODE}{}", include_str!("../../../shaders/qmatmul.wgsl")));
/// Weight rows per workgroup tile (`TR` in the shader).
pub const TILE_ROWS: u32 = 32;
/// Tokens per workgroup tile (`TT` in the shader).
pub const TILE_TOKENS: u32 = 32;

/// Mirrors `struct Meta` in shaders/qmatmul.wgsl (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Tokens T (rows of X and Y).
    pub t: u32,
    /// Weight rows in this dispatch (a chunk of N).
    pub rows: u32,
    /// Row length K (a multiple of 32).
    pub k: u32,
    /// [`format_code`] of the block format.
    pub format: u32,
    /// Row stride of Y (N when Y is the whole output).
    pub ldy: u32,
    /// First column of Y this dispatch writes (the chunk's first row of W).
    pub y0: u32,
    pub _pad: [u32; 2],
}

/// Shape of Y = X · Wᵀ: W (n, k), X (t, k), Y (t, n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QMatmulParams {
    pub t: usize,
    pub n: usize,
    pub k: usize,
    /// Upper bound on rows per chunk (None: as many as one binding holds). For tests.
    pub max_chunk_rows: Option<usize>,
}

/// CPU reference: Y[ti] = [`qmatvec::reference`] of W and X[ti], for each token. Returns (t, n).
pub fn reference(w: &SplitBlocks, p: &QMatmulParams, x: &[f32]) -> Result<Vec<f32>, OpError> {
    let (t, n, k) = (p.t, p.n, p.k);
    if x.len() != t.checked_mul(k).unwrap_or(usize::MAX) {
        return Err(OpError::shape(
            KERNEL,
            format!("X has {} elements, expected T = {t} × K = {k}", x.len()),
        ));
    }
    let mut y = Vec::with_capacity(t * n);
    if t == 0 {
        // Still validate W against (n, k).
        qmatvec::reference(w, n, k, &vec![0.0; k])?;
        return Ok(y);
    }
    for row in x.chunks(k.max(1)) {
        y.extend(qmatvec::reference(w, n, k, row)?);
    }
    Ok(y)
}

/// Records one dispatch on GPU-resident buffers into `enc` (nothing is submitted).
/// scales, mins: (meta.rows · K/32) f32 (for Q8_0 / Q4_0 `mins` may be any f32 binding, e.g.
/// `scales` again); qs: (meta.rows · K/32 · W) u32; x: (T · K) f32; y: (T · ldy) f32, of which
/// columns y0 .. y0 + rows are written.
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
    qmatvec::check_meta(KERNEL, meta.k, meta.format)?;
    if (meta.y0 as u64 + meta.rows as u64) > meta.ldy as u64 {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "columns {} .. {} of Y do not fit its row stride ldy = {}",
                meta.y0,
                meta.y0 as u64 + meta.rows as u64,
                meta.ldy
            ),
        ));
    }
    let max = ctx.limits.max_compute_workgroups_per_dimension as u64;
    let gx = (meta.rows as u64).div_ceil(TILE_ROWS as u64).max(1);
    let gy = (meta.t as u64).div_ceil(TILE_TOKENS as u64).max(1);
    if gx > max || gy > max {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "grid ({gx}, {gy}) for {} rows × {} tokens exceeds {max} workgroups per dimension: split the rows or the tokens",
                meta.rows, meta.t
            ),
        ));
    }
    record(
        ctx,
        enc,
        KERNEL,
        &WGSL,
        meta,
        &[scales, mins, qs, x, y],
        (gx as u32, gy as u32),
    )
}

/// Rows per chunk: what one binding holds (qmatvec's rule), capped so the grid's x stays within
/// the per-dimension limit.
pub fn chunk_rows(ctx: &GpuContext, format: BlockFormat, n: usize, k: usize, max: Option<usize>) -> usize {
    let cap = ctx.limits.max_compute_workgroups_per_dimension.max(1) as usize * TILE_ROWS as usize;
    qmatvec::chunk_rows(ctx, format, n, k, max).min(cap).max(1)
}

/// Y = X · Wᵀ on the GPU: uploads X once and W chunk by chunk (rows), dispatches, reads back.
/// Returns (t, n) row-major, equal to [`reference`] within the f32 summation bound.
pub async fn qmatmul(
    ctx: &GpuContext,
    w: &SplitBlocks,
    x: &[f32],
    p: &QMatmulParams,
) -> Result<Vec<f32>, OpError> {
    let (t, n, k) = (p.t, p.n, p.k);
    if x.len() != t.checked_mul(k).unwrap_or(usize::MAX) {
        return Err(OpError::shape(
            KERNEL,
            format!("X has {} elements, expected T = {t} × K = {k}", x.len()),
        ));
    }
    check_w(w, n, k)?;
    if t == 0 || n == 0 {
        return Ok(vec![0.0; t * n]);
    }
    let nb = k / QK;
    let qw = w.format.quant_words();
    let r = chunk_rows(ctx, w.format, n, k, p.max_chunk_rows);
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let x_buf = ctx.upload_f32("qmatmul.x", x).op(KERNEL)?;
    let s_buf = ctx.buffer("qmatmul.scales", (r * nb * 4) as u64, storage).op(KERNEL)?;
    let m_buf = match w.mins {
        Some(_) => Some(ctx.buffer("qmatmul.mins", (r * nb * 4) as u64, storage).op(KERNEL)?),
        None => None,
    };
    let q_buf = ctx.buffer("qmatmul.qs", (r * nb * qw * 4) as u64, storage).op(KERNEL)?;
    let y_buf = ctx
        .buffer("qmatmul.y", (t * n * 4) as u64, storage | wgpu::BufferUsages::COPY_SRC)
        .op(KERNEL)?;
    let mut start = 0;
    while start < n {
        let rows = r.min(n - start);
        let (b0, b1) = (start * nb, (start + rows) * nb);
        ctx.queue.write_buffer(&s_buf, 0, bytemuck::cast_slice(&w.scales[b0..b1]));
        if let (Some(mb), Some(m)) = (&m_buf, &w.mins) {
            ctx.queue.write_buffer(mb, 0, bytemuck::cast_slice(&m[b0..b1]));
        }
        ctx.queue.write_buffer(&q_buf, 0, bytemuck::cast_slice(&w.qs[b0 * qw..b1 * qw]));
        let meta = Meta {
            t: t as u32,
            rows: rows as u32,
            k: k as u32,
            format: format_code(w.format),
            ldy: n as u32,
            y0: start as u32,
            _pad: [0; 2],
        };
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
        let sb = (rows * nb * 4) as u64;
        encode(
            ctx,
            &mut enc,
            &meta,
            s_buf.binding(sb),
            m_buf.as_ref().unwrap_or(&s_buf).binding(sb),
            q_buf.binding(sb * qw as u64),
            x_buf.binding((t * k * 4) as u64),
            y_buf.binding((t * n * 4) as u64),
        )?;
        // One submit per chunk: the chunk buffers are rewritten by the next write_buffer, which
        // the queue orders after this submission.
        ctx.queue.submit([enc.finish()]);
        start += rows;
    }
    ctx.read_f32("qmatmul.y readback", &y_buf, 0, t * n).await.op(KERNEL)
}

/// W against (n, k): K a multiple of 32, block, word and min counts of an (n, k) weight.
fn check_w(w: &SplitBlocks, n: usize, k: usize) -> Result<(), OpError> {
    if k == 0 || !k.is_multiple_of(QK) {
        return Err(OpError::shape(
            KERNEL,
            format!("K = {k} must be a positive multiple of the block size {QK}"),
        ));
    }
    let blocks = n.checked_mul(k / QK).ok_or_else(|| OpError::shape(KERNEL, format!("N = {n} × K = {k} overflows")))?;
    if w.blocks() != blocks || w.qs.len() != blocks * w.format.quant_words() || w.mins.as_ref().map(|m| m.len()) != w.format.has_min().then_some(blocks) {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "{} weight has {} blocks, {} quant words and {} mins; expected (N={n}) × (K={k})/32 = {blocks} blocks, {} words, {} mins",
                w.format,
                w.blocks(),
                w.qs.len(),
                w.mins.as_ref().map_or(0, |m| m.len()),
                blocks * w.format.quant_words(),
                if w.format.has_min() { blocks } else { 0 }
            ),
        ));
    }
    if n > u32::MAX as usize || k > u32::MAX as usize {
        return Err(OpError::shape(KERNEL, format!("N = {n} or K = {k} does not fit u32")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::quant::quantize;

    #[test]
    fn reference_is_qmatvec_per_token() {
        let w: Vec<f32> = (0..5 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let x: Vec<f32> = (0..3 * 64).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
        for f in BlockFormat::ALL {
            let mut bytes = Vec::new();
            quantize(f, &w, &mut bytes).unwrap();
            let s = SplitBlocks::from_blocks(f, &bytes).unwrap();
            let p = QMatmulParams { t: 3, n: 5, k: 64, max_chunk_rows: None };
            let y = reference(&s, &p, &x).unwrap();
            assert_eq!(y.len(), 15);
            for ti in 0..3 {
                let want = qmatvec::reference(&s, 5, 64, &x[ti * 64..(ti + 1) * 64]).unwrap();
                assert_eq!(&y[ti * 5..(ti + 1) * 5], &want[..], "{f} token {ti}");
            }
            let e = reference(&s, &QMatmulParams { t: 2, ..p }, &x).unwrap_err().to_string();
            assert!(e.contains("X has 192 elements, expected T = 2 × K = 64"), "{e}");
            let e = check_w(&s, 4, 64).unwrap_err().to_string();
            assert!(e.contains("expected (N=4) × (K=64)/32 = 8 blocks"), "{e}");
        }
    }
}
