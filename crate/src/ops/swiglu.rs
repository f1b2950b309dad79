//! `swiglu`: g[i] = silu(g[i]) · u[i] in place, the gated activation of the Llama MLP
//! (Shazeer, arXiv 2002.05202; HF transformers `LlamaMLP.forward`:
//! `down_proj(act_fn(gate_proj(x)) * up_proj(x))`, `act_fn = SiLU`).
//!
//! Kernel: shaders/swiglu.wgsl. The GPU's `exp` is not correctly rounded (WGSL allows
//! 3 + 2·|x| ulp), so GPU and [`reference`] agree to a few ulp relative, not bit for bit.

use crate::gpu::GpuContext;

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "swiglu";
pub const WGSL: &str = include_str!("../../../shaders/swiglu.wgsl");
/// Threads per workgroup (`WG` in the shader).
pub const WORKGROUP_SIZE: u32 = 256;

/// Mirrors `struct Meta` in shaders/swiglu.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    pub n: u32,
    pub _pad: [u32; 3],
}

/// silu(x) = x / (1 + e^(−x)), as in models/llama.rs.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn check(g: usize, u: usize) -> Result<(), OpError> {
    if g != u {
        return Err(OpError::shape(KERNEL, format!("gate has {g} elements, up has {u}")));
    }
    if g > u32::MAX as usize {
        return Err(OpError::shape(KERNEL, format!("n = {g} does not fit u32")));
    }
    Ok(())
}

/// CPU reference: silu(gate) ⊙ up, gate and up: (n).
pub fn reference(gate: &[f32], up: &[f32]) -> Result<Vec<f32>, OpError> {
    check(gate.len(), up.len())?;
    Ok(gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect())
}

/// Records g = silu(g) ⊙ u on GPU-resident buffers into `enc` (nothing is submitted).
pub fn encode(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, meta: &Meta, g: wgpu::BufferBinding<'_>, u: wgpu::BufferBinding<'_>) -> Result<(), OpError> {
    let grid = ctx.grid(KERNEL, (meta.n as u64).div_ceil(WORKGROUP_SIZE as u64)).op(KERNEL)?;
    record(ctx, enc, KERNEL, WGSL, meta, &[g, u], grid)
}

/// silu(gate) ⊙ up on the GPU: upload, one dispatch, readback.
pub async fn swiglu(ctx: &GpuContext, gate: &[f32], up: &[f32]) -> Result<Vec<f32>, OpError> {
    check(gate.len(), up.len())?;
    if gate.is_empty() {
        return Ok(Vec::new());
    }
    let gb = ctx.upload_f32("swiglu.gate", gate).op(KERNEL)?;
    let ub = ctx.upload_f32("swiglu.up", up).op(KERNEL)?;
    let bytes = gate.len() as u64 * 4;
    let meta = Meta { n: gate.len() as u32, _pad: [0; 3] };
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
    encode(ctx, &mut enc, &meta, gb.binding(bytes), ub.binding(bytes))?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("swiglu.gate readback", &gb, 0, gate.len()).await.op(KERNEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        let y = reference(&[0.0, 1.0, -30.0, -200.0], &[5.0, 2.0, 1.0, 1.0]).unwrap();
        assert_eq!(y[0], 0.0);
        assert!((y[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-7);
        assert!(y[2].abs() < 1e-11 && y[3] == 0.0, "{y:?}");
    }
}
