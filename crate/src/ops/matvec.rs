//! `matvec`: y = W · x for f32 weights, W: (N rows, K cols) f32, x: (K) f32, y: (N) f32: the
//! decode-time product of a Linear layer of an f32 checkpoint (`y = x Wᵀ` of
//! `torch.nn.functional.linear` for one token).
//!
//! Why not `matmul` with M = 1: matmul's 64 × 64 register tiles compute 64 rows of C per
//! workgroup, so one token wastes 63/64 of the work and reads W through 16-wide k-slices; a
//! decode step is a pure stream of W (2 FLOP per 4 bytes), which wants every thread reading
//! consecutive vec4s of a row and a short reduction, as llama.cpp's `mul_mat_vec` kernels do
//! (Vulkan `mul_mat_vec.comp`, WebGPU `mul_mat_vec.wgsl`).
//!
//! The kernel is shaders/hmatvec.wgsl's body (8 rows × 8 threads per 64-thread workgroup, vec4
//! loads, a shared-memory tree per row) with an f32 prelude in place of the f16 ones: one kernel
//! shape for every unquantized weight dtype, the loader (`w4`) being the only difference.
//!
//! Numbers: the CPU [`reference`] sums w·x in f32 in column order; the GPU sums per-thread vec4
//! partials and then a tree, so they agree within the f32 summation bound K·ε·Σ|w·x|.
//!
//! Splitting: W is split by rows into chunks of at most one storage binding; x must fit one
//! binding. K must be a multiple of 4 (vec4 loads; other shapes use `matmul`).

use std::sync::LazyLock;

use crate::gpu::GpuContext;

use super::hmatvec::{self, Meta};
use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "matvec_f32";
/// Output rows per workgroup (`ROWS` in the shader).
pub const ROWS_PER_GROUP: u32 = hmatvec::ROWS_PER_GROUP;

/// Binding 1 as f32 vectors; `w4(i)` = weights 4i..4i+3, `w1(i)` = weight i.
pub const PRELUDE: &str = "@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
fn w4(i: u32) -> vec4<f32> { return w[i]; }
fn w1(i: u32) -> f32 { return w[i >> 2u][i & 3u]; }
";

static WGSL: LazyLock<String> = LazyLock::new(|| format!("{PRELUDE}{}", hmatvec::WGSL_BODY));

/// The full WGSL source (prelude + hmatvec's body).
pub fn wgsl() -> &'static str {
    WGSL.as_str()
}

/// Shape of y = W · x: W (n, k), x (k), y (n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatvecParams {
    pub n: usize,
    pub k: usize,
    /// Upper bound on rows per chunk (None: as many as one binding holds). For tests.
    pub max_chunk_rows: Option<usize>,
}

fn check(w: &[f32], n: usize, k: usize, x: &[f32]) -> Result<(), OpError> {
    if k == 0 || !k.is_multiple_of(4) {
        return Err(OpError::shape(KERNEL, format!("K = {k} must be a positive multiple of 4 (vec4 loads; use matmul for other K)")));
    }
    let want = n.checked_mul(k).ok_or_else(|| OpError::shape(KERNEL, format!("N = {n} × K = {k} overflows")))?;
    if w.len() != want {
        return Err(OpError::shape(KERNEL, format!("W has {} values, expected (N={n}) × (K={k}) = {want}", w.len())));
    }
    if x.len() != k {
        return Err(OpError::shape(KERNEL, format!("x has {} elements, expected K = {k}", x.len())));
    }
    if n > u32::MAX as usize || k > u32::MAX as usize {
        return Err(OpError::shape(KERNEL, format!("N = {n} or K = {k} does not fit u32")));
    }
    Ok(())
}

/// CPU reference: y[r] = Σ_j W[r, j] · x[j], summed in f32 in j order. Returns y: (n).
pub fn reference(w: &[f32], n: usize, k: usize, x: &[f32]) -> Result<Vec<f32>, OpError> {
    check(w, n, k, x)?;
    Ok(w.chunks_exact(k).take(n).map(|row| row.iter().zip(x).fold(0.0f32, |s, (&a, &b)| s + a * b)).collect())
}

/// Records one dispatch on GPU-resident buffers into `enc` (nothing is submitted).
/// w: (meta.rows · K) f32; x: (K) f32; y: (meta.rows) f32.
pub fn encode(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, meta: &Meta, w: wgpu::BufferBinding<'_>, x: wgpu::BufferBinding<'_>, y: wgpu::BufferBinding<'_>) -> Result<(), OpError> {
    if meta.k == 0 || !meta.k.is_multiple_of(4) {
        return Err(OpError::shape(KERNEL, format!("K = {} must be a positive multiple of 4", meta.k)));
    }
    let grid = ctx.grid(KERNEL, (meta.rows as u64).div_ceil(ROWS_PER_GROUP as u64)).op(KERNEL)?;
    record(ctx, enc, KERNEL, wgsl(), meta, &[w, x, y], grid)
}

/// y = W · x on the GPU: uploads x and W chunk by chunk (rows), dispatches, reads back. Equal to
/// [`reference`] within the f32 summation bound (module docs).
pub async fn matvec(ctx: &GpuContext, w: &[f32], x: &[f32], p: &MatvecParams) -> Result<Vec<f32>, OpError> {
    let (n, k) = (p.n, p.k);
    check(w, n, k, x)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut r = ((ctx.max_binding_bytes() / (k as u64 * 4)) as usize).clamp(1, n);
    if let Some(cap) = p.max_chunk_rows {
        r = r.min(cap.max(1));
    }
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let x_buf = ctx.upload_f32("matvec.x", x).op(KERNEL)?;
    let w_buf = ctx.buffer("matvec.w", (r * k * 4) as u64, storage).op(KERNEL)?;
    let y_buf = ctx.buffer("matvec.y", (r * 4) as u64, storage | wgpu::BufferUsages::COPY_SRC).op(KERNEL)?;
    let mut y = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let rows = r.min(n - start);
        ctx.queue.write_buffer(&w_buf, 0, bytemuck::cast_slice(&w[start * k..(start + rows) * k]));
        let meta = Meta { rows: rows as u32, k: k as u32, _pad: [0; 2] };
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
        encode(ctx, &mut enc, &meta, w_buf.binding((rows * k * 4) as u64), x_buf.binding((k * 4) as u64), y_buf.binding((rows * 4) as u64))?;
        ctx.queue.submit([enc.finish()]);
        y.extend_from_slice(&ctx.read_f32("matvec.y readback", &y_buf, 0, rows).await.op(KERNEL)?);
        start += rows;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_row_dot_x() {
        let w = [1.0, -2.0, 0.5, 0.0, 3.0, 0.0, 0.0, 1.0];
        let x = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(reference(&w, 2, 4, &x).unwrap(), vec![1.0 - 4.0 + 2.0, 3.0 + 8.0]);
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let e = reference(&[0.0; 6], 1, 6, &[0.0; 6]).unwrap_err().to_string();
        assert!(e.contains("K = 6 must be a positive multiple of 4"), "{e}");
        let e = reference(&[0.0; 8], 3, 4, &[0.0; 4]).unwrap_err().to_string();
        assert!(e.contains("W has 8 values, expected (N=3) × (K=4) = 12"), "{e}");
        let e = reference(&[0.0; 8], 2, 4, &[0.0; 3]).unwrap_err().to_string();
        assert!(e.contains("x has 3 elements, expected K = 4"), "{e}");
    }

    #[test]
    fn source_is_the_f32_prelude_then_hmatvec_body() {
        assert!(wgsl().starts_with(PRELUDE));
        assert!(wgsl().ends_with(hmatvec::WGSL_BODY));
    }
}
