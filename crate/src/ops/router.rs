//! `router`: a mixture-of-experts router's softmax + top-k on the GPU, one token per thread.
//!
//! Papers: Shazeer et al., "Outrageously Large Neural Networks" (arXiv 1701.06538); Jiang et al.,
//! "Mixtral of Experts" (arXiv 2401.04088); Qwen1.5-MoE (Qwen blog, 2024). Reference
//! implementations: HF transformers `MixtralTopKRouter`, `Qwen2MoeTopKRouter`; the CPU version
//! is `models::moe::route`, which [`reference`] calls.
//!
//! ```text
//! logits (T, E) → out (2·T·k) = [w (T, k) | idx (T, k) as f32]
//! p = softmax(logits[t]); idx = top-k(p), ties to the lower index; w = p[idx] (/ Σ p[idx] if renorm)
//! ```
//! Conventions: Mixtral (softmax over the top-k logits = softmax then renormalise) → renorm;
//! Qwen2-MoE → renorm iff `norm_topk_prob` ([`renorm_for`]). Indices are written as f32 (exact
//! for E < 2²⁴) so weights and indices come back in one readback.
//! Kernel: shaders/router.wgsl. Limits: E ≥ 1, 1 ≤ k ≤ E.

use crate::gpu::GpuContext;
use crate::models::config::MoeStyle;
use crate::models::moe::{ExpertChoice, route};

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "router";
pub const WGSL: &str = include_str!("../../../shaders/router.wgsl");
/// Threads per workgroup (`WG` in the shader).
pub const WORKGROUP_SIZE: u32 = 64;

/// Mirrors `struct Meta` in shaders/router.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Tokens.
    pub t: u32,
    /// Experts (router logits per token).
    pub e: u32,
    /// Experts chosen per token.
    pub k: u32,
    /// 1: divide the chosen probabilities by their sum.
    pub renorm: u32,
}

/// Whether the combine weights are renormalised over the top-k for `style`.
pub fn renorm_for(style: MoeStyle, norm_topk_prob: bool) -> bool {
    match style {
        MoeStyle::Mixtral => true,
        MoeStyle::Qwen2Moe => norm_topk_prob,
    }
}

fn check(meta: &Meta, logits_len: usize) -> Result<(), OpError> {
    if meta.e == 0 || meta.k == 0 || meta.k > meta.e {
        return Err(OpError::shape(KERNEL, format!("top-k {} of {} experts: need 1 ≤ k ≤ E", meta.k, meta.e)));
    }
    if logits_len != meta.t as usize * meta.e as usize {
        return Err(OpError::shape(KERNEL, format!("logits have {logits_len} elements, expected T·E = {}·{}", meta.t, meta.e)));
    }
    Ok(())
}

/// CPU reference: per token the choices of `models::moe::route` (best first).
pub fn reference(logits: &[f32], e: usize, k: usize, style: MoeStyle, norm_topk_prob: bool) -> Vec<Vec<ExpertChoice>> {
    logits.chunks_exact(e.max(1)).map(|l| route(l, k, style, norm_topk_prob)).collect()
}

/// Splits the kernel's output (2·T·k) into per-token choices.
pub fn unpack(out: &[f32], t: usize, k: usize) -> Vec<Vec<ExpertChoice>> {
    let (w, idx) = out.split_at(t * k);
    (0..t).map(|ti| (0..k).map(|j| ExpertChoice { expert: idx[ti * k + j] as usize, weight: w[ti * k + j] }).collect()).collect()
}

/// Records the router on GPU-resident buffers: `logits` (T·E) → `out` (2·T·k).
pub fn encode(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, meta: &Meta, logits: wgpu::BufferBinding<'_>, out: wgpu::BufferBinding<'_>) -> Result<(), OpError> {
    check(meta, meta.t as usize * meta.e as usize)?;
    let grid = ctx.grid(KERNEL, (meta.t as u64).div_ceil(WORKGROUP_SIZE as u64)).op(KERNEL)?;
    record(ctx, enc, KERNEL, WGSL, meta, &[logits, out], grid)
}

/// The router on the GPU: upload, one dispatch, readback, unpacked per token.
pub async fn router(ctx: &GpuContext, logits: &[f32], e: usize, k: usize, style: MoeStyle, norm_topk_prob: bool) -> Result<Vec<Vec<ExpertChoice>>, OpError> {
    let t = logits.len() / e.max(1);
    let meta = Meta { t: t as u32, e: e as u32, k: k as u32, renorm: renorm_for(style, norm_topk_prob) as u32 };
    check(&meta, logits.len())?;
    if t == 0 {
        return Ok(Vec::new());
    }
    let lb = ctx.upload_f32("router.logits", logits).op(KERNEL)?;
    let ob = ctx.upload_f32("router.out", &vec![0.0; 2 * t * k]).op(KERNEL)?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
    encode(ctx, &mut enc, &meta, lb.binding(logits.len() as u64 * 4), ob.binding((2 * t * k) as u64 * 4))?;
    ctx.queue.submit([enc.finish()]);
    let out = ctx.read_f32("router.out readback", &ob, 0, 2 * t * k).await.op(KERNEL)?;
    Ok(unpack(&out, t, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_splits_weights_and_indices() {
        let c = unpack(&[0.7, 0.3, 0.6, 0.4, 2.0, 0.0, 1.0, 3.0], 2, 2);
        assert_eq!(c[0], vec![ExpertChoice { expert: 2, weight: 0.7 }, ExpertChoice { expert: 0, weight: 0.3 }]);
        assert_eq!(c[1][1], ExpertChoice { expert: 3, weight: 0.4 });
    }

    #[test]
    fn bad_k_is_named() {
        let m = Meta { t: 1, e: 2, k: 3, renorm: 1 };
        assert!(check(&m, 2).unwrap_err().to_string().contains("1 ≤ k ≤ E"));
    }
}
