//! `rope`: rotary position embeddings of Q or K rows on the GPU, in place, for T tokens at
//! positions pos0 .. pos0 + T (RoFormer, arXiv 2104.09864).
//!
//! Every `rope_scaling` (linear, dynamic NTK, YaRN, llama3) is handled on the CPU by
//! [`crate::posenc::rope::RopeConfig::freqs`] (matched to HF transformers `modeling_rope_utils`):
//! it gives the per-pair inverse frequencies θ_i, uploaded as a buffer, and the attention factor
//! (YaRN's mscale) that multiplies cos and sin, passed in the Meta. Both pair layouts: HF halves
//! (i, i + d/2) and GGUF adjacent (2i, 2i + 1). Partial rotary (d < head_dim) leaves the tail.
//!
//! Kernel: shaders/rope.wgsl. The angle p·θ_i is the same f32 product on both sides; the GPU then
//! computes sin/cos itself (Cody–Waite reduction by π/2 and Cephes' polynomials: WGSL's builtins
//! are only specified to 2⁻¹¹ absolute, and SwiftShader's were 3·10⁻⁴ off), where the
//! [`reference`] ([`crate::posenc::rope::apply_rope`], sin/cos in f64) is correctly rounded.
//! Tests allow 2e-6 · (|x0| + |x1|) · max(1, factor) per output plus the reduction's error
//! (~|angle| · 2⁻²⁴).

use crate::gpu::GpuContext;
use crate::posenc::rope::{RopeFreqs, RopeLayout, apply_rope};

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "rope";
pub const WGSL: &str = include_str!("../../../shaders/rope.wgsl");
/// Threads per workgroup (`WG` in the shader).
pub const WORKGROUP_SIZE: u32 = 256;

/// Mirrors `struct Meta` in shaders/rope.wgsl (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    pub t: u32,
    pub n_heads: u32,
    pub head_dim: u32,
    /// Rotary pairs per head (d/2 = `inv_freq.len()`).
    pub half: u32,
    pub pos0: u32,
    /// 0 halves (HF), 1 adjacent (GGUF).
    pub layout: u32,
    pub attention_factor: f32,
    pub _pad: u32,
}

/// The shader's code for a pair layout.
pub fn layout_code(l: RopeLayout) -> u32 {
    match l {
        RopeLayout::Halves => 0,
        RopeLayout::Adjacent => 1,
    }
}

/// Shape of one rope call: x is (t, n_heads, head_dim), positions pos0 .. pos0 + t.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeParams {
    pub t: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub pos0: usize,
    pub layout: RopeLayout,
}

fn check(x_len: usize, freqs: &RopeFreqs, p: &RopeParams) -> Result<(), OpError> {
    let half = freqs.inv_freq.len();
    if half == 0 || 2 * half > p.head_dim {
        return Err(OpError::shape(KERNEL, format!("{half} rotary pairs do not fit head_dim {}", p.head_dim)));
    }
    if x_len != p.t * p.n_heads * p.head_dim {
        return Err(OpError::shape(KERNEL, format!("x has {x_len} elements, expected (T={}) × (heads={}) × (head_dim={})", p.t, p.n_heads, p.head_dim)));
    }
    if p.pos0 + p.t > u32::MAX as usize || x_len > u32::MAX as usize {
        return Err(OpError::shape(KERNEL, "positions or sizes do not fit u32"));
    }
    Ok(())
}

/// CPU reference: [`apply_rope`] on each token's (n_heads, head_dim) row at its position.
pub fn reference(x: &[f32], freqs: &RopeFreqs, p: &RopeParams) -> Result<Vec<f32>, OpError> {
    check(x.len(), freqs, p)?;
    let mut y = x.to_vec();
    let row = p.n_heads * p.head_dim;
    for t in 0..p.t {
        apply_rope(&mut y[t * row..(t + 1) * row], p.n_heads, p.head_dim, p.pos0 + t, freqs, p.layout);
    }
    Ok(y)
}

/// The Meta of one call.
pub fn meta(freqs: &RopeFreqs, p: &RopeParams) -> Meta {
    Meta {
        t: p.t as u32,
        n_heads: p.n_heads as u32,
        head_dim: p.head_dim as u32,
        half: freqs.inv_freq.len() as u32,
        pos0: p.pos0 as u32,
        layout: layout_code(p.layout),
        attention_factor: freqs.attention_factor,
        _pad: 0,
    }
}

/// Records the rotation of x (meta.t, n_heads, head_dim) in place; inv_freq: (meta.half) f32.
pub fn encode(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, meta: &Meta, x: wgpu::BufferBinding<'_>, inv_freq: wgpu::BufferBinding<'_>) -> Result<(), OpError> {
    if meta.half == 0 || 2 * meta.half > meta.head_dim {
        return Err(OpError::shape(KERNEL, format!("{} rotary pairs do not fit head_dim {}", meta.half, meta.head_dim)));
    }
    let pairs = meta.t as u64 * meta.n_heads as u64 * meta.half as u64;
    let grid = ctx.grid(KERNEL, pairs.div_ceil(WORKGROUP_SIZE as u64)).op(KERNEL)?;
    record(ctx, enc, KERNEL, WGSL, meta, &[x, inv_freq], grid)
}

/// RoPE on the GPU: upload x and θ, one dispatch, readback.
pub async fn rope(ctx: &GpuContext, x: &[f32], freqs: &RopeFreqs, p: &RopeParams) -> Result<Vec<f32>, OpError> {
    check(x.len(), freqs, p)?;
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let xb = ctx.upload_f32("rope.x", x).op(KERNEL)?;
    let fb = ctx.upload_f32("rope.inv_freq", &freqs.inv_freq).op(KERNEL)?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
    encode(ctx, &mut enc, &meta(freqs, p), xb.binding(x.len() as u64 * 4), fb.binding(freqs.inv_freq.len() as u64 * 4))?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("rope.x readback", &xb, 0, x.len()).await.op(KERNEL)
}
