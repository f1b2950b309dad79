//! `add`: in-place broadcast add x[i] += y[i mod ny]: the residual connection (ny = n) and a Linear
//! layer's bias added to every token (ny = out_features), as in HF transformers
//! `LlamaDecoderLayer.forward` (`hidden_states = residual + hidden_states`) and `nn.Linear`.
//!
//! Kernel: shaders/add.wgsl (one element per thread, 2-D grid). Exact: one f32 addition per
//! element on both sides, so GPU and [`reference`] agree bit for bit.
//! Limits: x and y must each fit one storage binding (the model's activations always do).

use crate::gpu::GpuContext;

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "add";
pub const WGSL: &str = include_str!("../../../shaders/add.wgsl");
/// Threads per workgroup (`WG` in the shader).
pub const WORKGROUP_SIZE: u32 = 256;

/// Mirrors `struct Meta` in shaders/add.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Elements of x.
    pub n: u32,
    /// Elements of y (n is a multiple of it).
    pub ny: u32,
    pub _pad: [u32; 2],
}

fn check(n: usize, ny: usize) -> Result<(), OpError> {
    if ny == 0 || !n.is_multiple_of(ny) {
        return Err(OpError::shape(KERNEL, format!("x has {n} elements, not a multiple of y's {ny}")));
    }
    if n > u32::MAX as usize {
        return Err(OpError::shape(KERNEL, format!("n = {n} does not fit u32")));
    }
    Ok(())
}

/// CPU reference: x (n) + y broadcast over rows (n / ny rows of ny).
pub fn reference(x: &[f32], y: &[f32]) -> Result<Vec<f32>, OpError> {
    check(x.len(), y.len())?;
    Ok(x.iter().enumerate().map(|(i, &a)| a + y[i % y.len()]).collect())
}

/// Records x += y (broadcast) on GPU-resident buffers into `enc` (nothing is submitted).
pub fn encode(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, meta: &Meta, x: wgpu::BufferBinding<'_>, y: wgpu::BufferBinding<'_>) -> Result<(), OpError> {
    check(meta.n as usize, meta.ny as usize)?;
    let grid = ctx.grid(KERNEL, (meta.n as u64).div_ceil(WORKGROUP_SIZE as u64)).op(KERNEL)?;
    record(ctx, enc, KERNEL, WGSL, meta, &[x, y], grid)
}

/// x + y (broadcast) on the GPU: upload, one dispatch, readback.
pub async fn add(ctx: &GpuContext, x: &[f32], y: &[f32]) -> Result<Vec<f32>, OpError> {
    check(x.len(), y.len())?;
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let xb = ctx.upload_f32("add.x", x).op(KERNEL)?;
    let yb = ctx.upload_f32("add.y", y).op(KERNEL)?;
    let meta = Meta { n: x.len() as u32, ny: y.len() as u32, _pad: [0; 2] };
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
    encode(ctx, &mut enc, &meta, xb.binding(x.len() as u64 * 4), yb.binding(y.len() as u64 * 4))?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("add.x readback", &xb, 0, x.len()).await.op(KERNEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_broadcasts_rows() {
        assert_eq!(reference(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0]).unwrap(), vec![11.0, 22.0, 13.0, 24.0]);
        assert!(reference(&[1.0; 3], &[1.0; 2]).unwrap_err().to_string().contains("not a multiple"));
    }
}
