//! `hmatvec`: y = W · x for F16 weights, W: (N rows, K cols) IEEE binary16, x: (K) f32, y: (N)
//! f32: the decode-time product of a Linear layer of an F16 checkpoint (`y = x Wᵀ` of
//! `torch.nn.functional.linear` for one token), with f16 → f32 done in the kernel so the weights
//! stay in half the memory of f32 on the GPU.
//!
//! Two variants of one kernel (shaders/hmatvec.wgsl), chosen at run time ([`HalfVariant::of`]):
//! - [`HalfVariant::F16`]: `enable f16;` and `array<vec4<f16>>` storage, where the device has
//!   `shader-f16` (WebGPU spec §"shader-f16"; lavapipe and most desktop GPUs);
//! - [`HalfVariant::Packed`]: the same bytes read as `array<vec2<u32>>` and widened with core
//!   WGSL `unpack2x16float` (no feature needed: SwiftShader in Chromium lacks `shader-f16`).
//!
//! Both keep every f16 exact in f32 and accumulate in f32. References: llama.cpp's f16 `mul_mat_vec`
//! kernels (Vulkan `mul_mat_vec.comp`, WebGPU `mul_mat_vec.wgsl`); the kernel shape is
//! shaders/qmatvec.wgsl's (8 rows × 8 threads per 64-thread workgroup).
//!
//! Numbers: the CPU [`reference`] widens each weight exactly and sums w·x in f32 in column
//! order; the GPU sums in another order (per-thread vec4 partials, a tree), so they agree within
//! the f32 summation bound K·ε·Σ|w·x|, not bit for bit.
//!
//! Splitting: W is split by rows into chunks of at most one storage binding
//! (`max_storage_buffer_binding_size`); x must fit one binding. K must be a multiple of 4 (vec4
//! loads; callers widen other shapes to f32).

use std::sync::LazyLock;

use crate::gpu::GpuContext;
use crate::models::llama::f16_bits_to_f32;

use super::{GpuResultExt, OpError, record};

pub const KERNEL_F16: &str = "hmatvec_f16";
pub const KERNEL_PACKED: &str = "hmatvec_packed";
/// The kernel body; the host prepends [`PRELUDE_F16`] or [`PRELUDE_PACKED`].
pub const WGSL_BODY: &str = include_str!("../../../shaders/hmatvec.wgsl");
/// Threads per workgroup (`WG` in the shader).
pub const WORKGROUP_SIZE: u32 = 64;
/// Output rows per workgroup (`ROWS` in the shader).
pub const ROWS_PER_GROUP: u32 = 8;

/// Prelude of the `shader-f16` variant: binding 1 as f16 vectors; `w4(i)` = weights 4i..4i+3,
/// `w1(i)` = weight i, widened to f32.
pub const PRELUDE_F16: &str = "enable f16;
@group(0) @binding(1) var<storage, read> w: array<vec4<f16>>;
fn w4(i: u32) -> vec4<f32> { return vec4<f32>(w[i]); }
fn w1(i: u32) -> f32 { return f32(w[i >> 2u][i & 3u]); }
";

/// Prelude of the fallback: binding 1 as u32 pairs (little-endian: element 2j is the low half of
/// word j, which `unpack2x16float` returns as .x).
pub const PRELUDE_PACKED: &str = "@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;
fn w4(i: u32) -> vec4<f32> { let p = w[i]; return vec4<f32>(unpack2x16float(p.x), unpack2x16float(p.y)); }
fn w1(i: u32) -> f32 { let p = w[i >> 2u]; let word = select(p.x, p.y, (i & 2u) != 0u); return unpack2x16float(word)[i & 1u]; }
";

/// How a kernel reads binary16 weights (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfVariant {
    /// `enable f16;` f16 storage (needs `wgpu::Features::SHADER_F16`).
    F16,
    /// u32 words widened with `unpack2x16float` (core WGSL).
    Packed,
}

impl HalfVariant {
    /// [`HalfVariant::F16`] when the device has `shader-f16`, else [`HalfVariant::Packed`].
    pub fn of(ctx: &GpuContext) -> HalfVariant {
        if ctx.features.contains(wgpu::Features::SHADER_F16) { HalfVariant::F16 } else { HalfVariant::Packed }
    }

    pub fn prelude(self) -> &'static str {
        match self {
            HalfVariant::F16 => PRELUDE_F16,
            HalfVariant::Packed => PRELUDE_PACKED,
        }
    }

    /// Errors when the variant needs a feature the device lacks (naming the kernel).
    pub(crate) fn check(self, ctx: &GpuContext, kernel: &'static str) -> Result<(), OpError> {
        if self == HalfVariant::F16 && !ctx.features.contains(wgpu::Features::SHADER_F16) {
            return Err(OpError::shape(kernel, "the f16 variant needs the device feature shader-f16, which this device lacks: use HalfVariant::of(ctx) (the packed variant)"));
        }
        Ok(())
    }
}

static WGSL_F16: LazyLock<String> = LazyLock::new(|| format!("{PRELUDE_F16}{WGSL_BODY}"));
static WGSL_PACKED: LazyLock<String> = LazyLock::new(|| format!("{PRELUDE_PACKED}{WGSL_BODY}"));

/// (kernel name, full WGSL source) of `v`.
pub fn kernel(v: HalfVariant) -> (&'static str, &'static str) {
    match v {
        HalfVariant::F16 => (KERNEL_F16, WGSL_F16.as_str()),
        HalfVariant::Packed => (KERNEL_PACKED, WGSL_PACKED.as_str()),
    }
}

/// Mirrors `struct Meta` in shaders/hmatvec.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Output rows in this dispatch.
    pub rows: u32,
    /// Row length K (a multiple of 4).
    pub k: u32,
    pub _pad: [u32; 2],
}

/// Shape of y = W · x: W (n, k), x (k), y (n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HMatvecParams {
    pub n: usize,
    pub k: usize,
    /// Upper bound on rows per chunk (None: as many as one binding holds). For tests.
    pub max_chunk_rows: Option<usize>,
}

/// Checks K (a positive multiple of 4), W's length and x's.
pub(crate) fn check_shape(kernel: &'static str, w: usize, n: usize, k: usize) -> Result<(), OpError> {
    if k == 0 || !k.is_multiple_of(4) {
        return Err(OpError::shape(kernel, format!("K = {k} must be a positive multiple of 4 (vec4 loads of the f16 weights)")));
    }
    let want = n.checked_mul(k).ok_or_else(|| OpError::shape(kernel, format!("N = {n} × K = {k} overflows")))?;
    if w != want {
        return Err(OpError::shape(kernel, format!("W has {w} f16 values, expected (N={n}) × (K={k}) = {want}")));
    }
    if n > u32::MAX as usize || k > u32::MAX as usize {
        return Err(OpError::shape(kernel, format!("N = {n} or K = {k} does not fit u32")));
    }
    Ok(())
}

fn check(w: &[u16], n: usize, k: usize, x: &[f32]) -> Result<(), OpError> {
    check_shape(KERNEL_PACKED, w.len(), n, k)?;
    if x.len() != k {
        return Err(OpError::shape(KERNEL_PACKED, format!("x has {} elements, expected K = {k}", x.len())));
    }
    Ok(())
}

/// CPU reference: y[r] = Σ_j f32(W[r, j]) · x[j], each f16 widened exactly, summed in f32 in j
/// order. Returns y: (n).
pub fn reference(w: &[u16], n: usize, k: usize, x: &[f32]) -> Result<Vec<f32>, OpError> {
    check(w, n, k, x)?;
    Ok(w.chunks_exact(k).take(n).map(|row| row.iter().zip(x).fold(0.0f32, |s, (&h, &v)| s + f16_bits_to_f32(h) * v)).collect())
}

/// Rows per chunk so that a chunk's (rows, K) f16 fit one binding; a multiple of 64 rows when
/// the weight is split (so a chunk starts on a 256-byte aligned column of y for every K).
pub fn chunk_rows(ctx: &GpuContext, n: usize, k: usize, max: Option<usize>) -> usize {
    let mut r = (ctx.max_binding_bytes() / (k as u64 * 2).max(1)) as usize;
    if let Some(cap) = max {
        r = r.min(cap.max(1));
    }
    if r < n {
        r = (r / 64 * 64).max(64.min(r.max(1)));
    }
    r.clamp(1, n.max(1))
}

/// Records one dispatch on GPU-resident buffers into `enc` (nothing is submitted).
/// w: (meta.rows · K) binary16; x: (K) f32; y: (meta.rows) f32.
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
    let grid = ctx.grid(kernel, (meta.rows as u64).div_ceil(ROWS_PER_GROUP as u64)).op(kernel)?;
    record(ctx, enc, kernel, wgsl, meta, &[w, x, y], grid)
}

/// y = W · x on the GPU with `variant`: uploads x and W chunk by chunk (rows), dispatches, reads
/// back. Equal to [`reference`] within the f32 summation bound (module docs).
pub async fn hmatvec(ctx: &GpuContext, variant: HalfVariant, w: &[u16], x: &[f32], p: &HMatvecParams) -> Result<Vec<f32>, OpError> {
    let (n, k) = (p.n, p.k);
    check(w, n, k, x)?;
    let (kernel, _) = kernel(variant);
    variant.check(ctx, kernel)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let r = chunk_rows(ctx, n, k, p.max_chunk_rows);
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let x_buf = ctx.upload_f32("hmatvec.x", x).op(kernel)?;
    let w_buf = ctx.buffer("hmatvec.w", (r * k * 2) as u64, storage).op(kernel)?;
    let y_buf = ctx.buffer("hmatvec.y", (r * 4) as u64, storage | wgpu::BufferUsages::COPY_SRC).op(kernel)?;
    let mut y = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let rows = r.min(n - start);
        ctx.queue.write_buffer(&w_buf, 0, bytemuck::cast_slice(&w[start * k..(start + rows) * k]));
        let meta = Meta { rows: rows as u32, k: k as u32, _pad: [0; 2] };
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(kernel) });
        encode(ctx, &mut enc, variant, &meta, w_buf.binding((rows * k * 2) as u64), x_buf.binding((k * 4) as u64), y_buf.binding((rows * 4) as u64))?;
        ctx.queue.submit([enc.finish()]);
        y.extend_from_slice(&ctx.read_f32("hmatvec.y readback", &y_buf, 0, rows).await.op(kernel)?);
        start += rows;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_widened_row_dot_x() {
        // 1.0 = 0x3C00, -2.0 = 0xC000, 0.5 = 0x3800, 65504 = 0x7BFF (largest f16).
        let w = [0x3C00, 0xC000, 0x3800, 0x0000, 0x7BFF, 0, 0, 0x3C00];
        let x = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(reference(&w, 2, 4, &x).unwrap(), vec![1.0 - 4.0 + 2.0, 65504.0 + 8.0]);
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let e = reference(&[0; 6], 1, 6, &[0.0; 6]).unwrap_err().to_string();
        assert!(e.contains("K = 6 must be a positive multiple of 4"), "{e}");
        let e = reference(&[0; 8], 3, 4, &[0.0; 4]).unwrap_err().to_string();
        assert!(e.contains("W has 8 f16 values, expected (N=3) × (K=4) = 12"), "{e}");
        let e = reference(&[0; 8], 2, 4, &[0.0; 3]).unwrap_err().to_string();
        assert!(e.contains("x has 3 elements, expected K = 4"), "{e}");
    }

    #[test]
    fn both_sources_start_with_their_prelude() {
        assert!(kernel(HalfVariant::F16).1.starts_with("enable f16;"));
        assert!(kernel(HalfVariant::Packed).1.contains("unpack2x16float"));
        assert!(!kernel(HalfVariant::Packed).1.starts_with("enable"));
    }
}
