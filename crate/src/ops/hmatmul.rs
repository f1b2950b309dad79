//! `hmatmul`: Y = X · Wᵀ for F16 weights, X: (M, K) f32 (M tokens), W: (N, K) IEEE binary16,
//! Y: (M, N) f32: the batched-prefill product of a Linear layer of an F16 checkpoint
//! (`torch.nn.functional.linear`), widening f16 → f32 in the kernel.
//!
//! Kernel: shaders/hmatmul.wgsl, the register-tiled shape of shaders/matmul.wgsl (64 × 64 tiles,
//! 4 × 4 outputs per thread) with W staged through the f16 loaders of `ops::hmatvec` (two
//! variants from the device's features: `enable f16;` storage with `shader-f16`, packed u32 +
//! `unpack2x16float` without). Reference for the shape: llama.cpp's `mul_mm` shaders (Vulkan
//! `mul_mm.comp`, f16 B widened into shared memory).
//!
//! Numbers: the k order is 0..K-1 in the kernel and in [`reference`] (each f16 widened exactly),
//! so they differ only where the GPU fuses a multiply-add: within K·ε·Σ|x·w| per output.
//!
//! Splitting: W is split by rows into chunks of at most one storage binding
//! ([`hmatvec::chunk_rows`]); each chunk's dispatch binds X and Y whole and writes its columns
//! c0 .. c0 + rows through `Meta.c0` / `Meta.ldc`, so no binding sits at an unaligned offset.
//! X and Y must fit one binding each; K must be a multiple of 4.

use std::sync::LazyLock;

use crate::gpu::GpuContext;
use crate::models::llama::f16_bits_to_f32;

use super::hmatvec::{self, HalfVariant};
use super::{GpuResultExt, OpError, record};

pub const KERNEL_F16: &str = "hmatmul_f16";
pub const KERNEL_PACKED: &str = "hmatmul_packed";
/// The kernel body; the host prepends `hmatvec::PRELUDE_F16` or `hmatvec::PRELUDE_PACKED`.
pub const WGSL_BODY: &str = include_str!("../../../shaders/hmatmul.wgsl");
/// Output tile edge per workgroup (`TILE` in the shader).
pub const TILE: u32 = 64;

static WGSL_F16: LazyLock<String> = LazyLock::new(|| format!("{}{WGSL_BODY}", hmatvec::PRELUDE_F16));
static WGSL_PACKED: LazyLock<String> = LazyLock::new(|| format!("{}{WGSL_BODY}", hmatvec::PRELUDE_PACKED));

/// (kernel name, full WGSL source) of `v`.
pub fn kernel(v: HalfVariant) -> (&'static str, &'static str) {
    match v {
        HalfVariant::F16 => (KERNEL_F16, WGSL_F16.as_str()),
        HalfVariant::Packed => (KERNEL_PACKED, WGSL_PACKED.as_str()),
    }
}

/// Mirrors `struct Meta` in shaders/hmatmul.wgsl (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Tokens M.
    pub m: u32,
    /// Weight rows in this dispatch (a chunk of N).
    pub rows: u32,
    /// Row length K (a multiple of 4).
    pub k: u32,
    /// Row stride of Y (N).
    pub ldc: u32,
    /// First column of Y this dispatch writes.
    pub c0: u32,
    pub _pad: [u32; 3],
}

/// Shapes of Y = X · Wᵀ: X (m, k), W (n, k), Y (m, n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HMatmulParams {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Upper bound on rows per chunk (None: as many as one binding holds). For tests.
    pub max_chunk_rows: Option<usize>,
}

fn check(x: &[f32], w: &[u16], p: &HMatmulParams) -> Result<(), OpError> {
    hmatvec::check_shape(KERNEL_PACKED, w.len(), p.n, p.k)?;
    if x.len() != p.m * p.k {
        return Err(OpError::shape(KERNEL_PACKED, format!("X has {} elements, expected (M={}) × (K={}) = {}", x.len(), p.m, p.k, p.m * p.k)));
    }
    if p.m > u32::MAX as usize {
        return Err(OpError::shape(KERNEL_PACKED, format!("M = {} does not fit u32", p.m)));
    }
    Ok(())
}

/// CPU reference: Y[i, j] = Σ_{k=0}^{K-1} X[i, k] · f32(W[j, k]), summed in f32 in k order.
pub fn reference(x: &[f32], w: &[u16], p: &HMatmulParams) -> Result<Vec<f32>, OpError> {
    check(x, w, p)?;
    let (m, n, k) = (p.m, p.n, p.k);
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            y[i * n + j] = xr.iter().zip(wr).fold(0.0f32, |s, (&a, &b)| s + a * f16_bits_to_f32(b));
        }
    }
    Ok(y)
}

/// Records one dispatch on GPU-resident buffers into `enc` (nothing is submitted).
/// w: (meta.rows · K) binary16; x: (M · K) f32; y: (M · ldc) f32.
pub fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    variant: HalfVariant,
    meta: &Meta,
    w: wgpu::BufferBinding<'_>,
    x: wgpu::BufferBinding<'_>,
    y: wgpu::BufferBinding<'_>,
) -> Result<(), OpError> {
    let (kernel, wgsl) = kernel(variant);
    variant.check(ctx, kernel)?;
    if meta.k == 0 || !meta.k.is_multiple_of(4) {
        return Err(OpError::shape(kernel, format!("K = {} must be a positive multiple of 4", meta.k)));
    }
    if meta.c0 as u64 + meta.rows as u64 > meta.ldc as u64 {
        return Err(OpError::shape(kernel, format!("columns {}..{} exceed ldc = {}", meta.c0, meta.c0 as u64 + meta.rows as u64, meta.ldc)));
    }
    let gx = meta.rows.div_ceil(TILE);
    let gy = meta.m.div_ceil(TILE);
    let max = ctx.limits.max_compute_workgroups_per_dimension;
    if gx > max || gy > max {
        return Err(OpError::shape(kernel, format!("grid ({gx}, {gy}) exceeds max_compute_workgroups_per_dimension {max}")));
    }
    record(ctx, enc, kernel, wgsl, meta, &[w, x, y], (gx.max(1), gy.max(1)))
}

/// Y = X · Wᵀ on the GPU with `variant`: uploads X once and W chunk by chunk (rows), one dispatch
/// per chunk into the whole Y, reads back. Equal to [`reference`] within the bound in the module docs.
pub async fn hmatmul(ctx: &GpuContext, variant: HalfVariant, x: &[f32], w: &[u16], p: &HMatmulParams) -> Result<Vec<f32>, OpError> {
    check(x, w, p)?;
    let (m, n, k) = (p.m, p.n, p.k);
    let (kernel, _) = kernel(variant);
    variant.check(ctx, kernel)?;
    if m == 0 || n == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let r = hmatvec::chunk_rows(ctx, n, k, p.max_chunk_rows);
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let x_buf = ctx.upload_f32("hmatmul.x", x).op(kernel)?;
    let y_buf = ctx.buffer("hmatmul.y", (m * n * 4) as u64, storage | wgpu::BufferUsages::COPY_SRC).op(kernel)?;
    let mut start = 0;
    while start < n {
        let rows = r.min(n - start);
        // one buffer per chunk: the dispatches of one submit read them all
        let w_buf = ctx.buffer("hmatmul.w", (rows * k * 2) as u64, storage).op(kernel)?;
        ctx.queue.write_buffer(&w_buf, 0, bytemuck::cast_slice(&w[start * k..(start + rows) * k]));
        let meta = Meta { m: m as u32, rows: rows as u32, k: k as u32, ldc: n as u32, c0: start as u32, _pad: [0; 3] };
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(kernel) });
        encode(ctx, &mut enc, variant, &meta, w_buf.binding((rows * k * 2) as u64), x_buf.binding((m * k * 4) as u64), y_buf.binding((m * n * 4) as u64))?;
        ctx.queue.submit([enc.finish()]);
        start += rows;
    }
    ctx.read_f32("hmatmul.y readback", &y_buf, 0, m * n).await.op(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_x_times_widened_w_transposed() {
        // W (2, 4): rows [1, -2, 0.5, 0] and [65504, 0, 0, 1]; X (2, 4).
        let w = [0x3C00, 0xC000, 0x3800, 0x0000, 0x7BFF, 0, 0, 0x3C00];
        let x = [1.0, 2.0, 4.0, 8.0, 0.0, 1.0, 0.0, -1.0];
        let p = HMatmulParams { m: 2, n: 2, k: 4, max_chunk_rows: None };
        assert_eq!(reference(&x, &w, &p).unwrap(), vec![-1.0, 65512.0, -2.0, -1.0]);
        let e = reference(&x[..4], &w, &p).unwrap_err().to_string();
        assert!(e.contains("X has 4 elements, expected (M=2) × (K=4) = 8"), "{e}");
    }
}
