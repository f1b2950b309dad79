//! `rmsnorm`: y[t, :] = (x[t, :] / sqrt(mean_j x[t, j]² + eps)) · w over the rows of x: (T, d).
//!
//! Math: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (arXiv:1910.07467).
//! Numbers matched: HF transformers `models/llama/modeling_llama.py` `LlamaRMSNorm.forward`:
//! `variance = x.pow(2).mean(-1)`, `x = x * torch.rsqrt(variance + eps)`, `weight * x`
//! (fp32 throughout for fp32 inputs).
//!
//! Kernel: shaders/rmsnorm.wgsl, one 256-thread workgroup per row with a shared-memory tree
//! reduction of x². Rows are split into chunks so that a chunk of x fits one storage binding.

use crate::gpu::GpuContext;

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "rmsnorm";
pub const WGSL: &str = include_str!("../../../shaders/rmsnorm.wgsl");

/// Mirrors `struct Meta` in shaders/rmsnorm.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Rows T in this chunk.
    pub rows: u32,
    /// Row length d.
    pub d: u32,
    pub eps: f32,
    pub _pad: u32,
}

/// Options of [`rmsnorm`].
#[derive(Debug, Clone)]
pub struct RmsNormParams {
    /// Row length d (x has T·d elements, w has d).
    pub d: usize,
    /// `rms_norm_eps` from the model config (Llama: 1e-5 or 1e-6).
    pub eps: f32,
    /// Upper bound on rows per chunk (None: as many as one binding holds). For tests.
    pub max_chunk_rows: Option<usize>,
}

fn check(x: &[f32], w: &[f32], p: &RmsNormParams) -> Result<usize, OpError> {
    if p.d == 0 {
        return Err(OpError::shape(KERNEL, "row length d = 0"));
    }
    if w.len() != p.d {
        return Err(OpError::shape(
            KERNEL,
            format!("weight has {} elements, expected d = {}", w.len(), p.d),
        ));
    }
    if !x.len().is_multiple_of(p.d) {
        return Err(OpError::shape(
            KERNEL,
            format!("x has {} elements, not a multiple of d = {}", x.len(), p.d),
        ));
    }
    if p.eps.is_nan() || p.eps < 0.0 {
        return Err(OpError::shape(
            KERNEL,
            format!("eps = {} must be ≥ 0", p.eps),
        ));
    }
    Ok(x.len() / p.d)
}

/// CPU reference: per row, mean of squares in f64 (the exact value the GPU's f32 tree sum
/// approximates), r = 1/sqrt(mean + eps), then y = (x·r)·w in f32 as HF does.
/// x: (T, d), w: (d) → y: (T, d).
pub fn reference(x: &[f32], w: &[f32], p: &RmsNormParams) -> Result<Vec<f32>, OpError> {
    check(x, w, p)?;
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(p.d) {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / p.d as f64;
        let r = (1.0 / (ms + p.eps as f64).sqrt()) as f32;
        y.extend(row.iter().zip(w).map(|(&v, &wj)| (v * r) * wj));
    }
    Ok(y)
}

/// Records one RMSNorm dispatch on GPU-resident buffers into `enc` (nothing is submitted).
/// x: (meta.rows, meta.d), w: (meta.d), y: (meta.rows, meta.d), all f32.
pub fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    meta: &Meta,
    x: wgpu::BufferBinding<'_>,
    w: wgpu::BufferBinding<'_>,
    y: wgpu::BufferBinding<'_>,
) -> Result<(), OpError> {
    if meta.d == 0 {
        return Err(OpError::shape(KERNEL, "row length d = 0"));
    }
    let grid = ctx.grid(KERNEL, meta.rows as u64).op(KERNEL)?;
    record(ctx, enc, KERNEL, WGSL, meta, &[x, w, y], grid)
}

/// RMSNorm on the GPU. x: (T, d), w: (d) → y: (T, d).
pub async fn rmsnorm(
    ctx: &GpuContext,
    x: &[f32],
    w: &[f32],
    p: &RmsNormParams,
) -> Result<Vec<f32>, OpError> {
    let t = check(x, w, p)?;
    if t == 0 {
        return Ok(Vec::new());
    }
    let d = p.d;
    let row_bytes = d as u64 * 4;
    if row_bytes > ctx.max_binding_bytes() {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "one row of d = {d} floats exceeds the storage binding limit {} bytes",
                ctx.max_binding_bytes()
            ),
        ));
    }
    let mut rows_per_chunk = ((ctx.max_binding_bytes() / row_bytes) as usize).min(t);
    if let Some(cap) = p.max_chunk_rows {
        rows_per_chunk = rows_per_chunk.min(cap.max(1));
    }
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let chunk_bytes = rows_per_chunk as u64 * row_bytes;
    let w_buf = ctx.upload_f32("rmsnorm.w", w).op(KERNEL)?;
    let x_buf = ctx.buffer("rmsnorm.x", chunk_bytes, storage).op(KERNEL)?;
    let y_buf = ctx
        .buffer(
            "rmsnorm.y",
            chunk_bytes,
            storage | wgpu::BufferUsages::COPY_SRC,
        )
        .op(KERNEL)?;

    let mut y = Vec::with_capacity(x.len());
    let mut row0 = 0;
    while row0 < t {
        let rows = rows_per_chunk.min(t - row0);
        let len = rows * d;
        ctx.queue.write_buffer(
            &x_buf,
            0,
            bytemuck::cast_slice(&x[row0 * d..row0 * d + len]),
        );
        let meta = Meta {
            rows: rows as u32,
            d: d as u32,
            eps: p.eps,
            _pad: 0,
        };
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(KERNEL),
            });
        encode(
            ctx,
            &mut enc,
            &meta,
            x_buf.binding(len as u64 * 4),
            w_buf.binding(row_bytes),
            y_buf.binding(len as u64 * 4),
        )?;
        ctx.queue.submit([enc.finish()]);
        let part = ctx
            .read_f32("rmsnorm.y readback", &y_buf, 0, len)
            .await
            .op(KERNEL)?;
        y.extend_from_slice(&part);
        row0 += rows;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_normalises_to_unit_rms() {
        // Row [3, 4]: mean of squares 12.5, eps 0 → y = x / sqrt(12.5).
        let p = RmsNormParams {
            d: 2,
            eps: 0.0,
            max_chunk_rows: None,
        };
        let y = reference(&[3.0, 4.0], &[1.0, 2.0], &p).unwrap();
        let r = 1.0 / 12.5f64.sqrt();
        assert!(
            (y[0] as f64 - 3.0 * r).abs() < 1e-6 && (y[1] as f64 - 8.0 * r).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn shape_errors() {
        let p = RmsNormParams {
            d: 3,
            eps: 1e-5,
            max_chunk_rows: None,
        };
        let e = reference(&[0.0; 7], &[1.0; 3], &p).unwrap_err().to_string();
        assert!(e.contains("not a multiple of d = 3"), "{e}");
        let e = reference(&[0.0; 6], &[1.0; 2], &p).unwrap_err().to_string();
        assert!(e.contains("weight has 2 elements"), "{e}");
    }
}
