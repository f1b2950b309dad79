//! Mixture-of-experts dispatch on the GPU: the per-expert token lists ([`MoePlan`], built on the
//! CPU from the router's read-back top-k), `gather` (shaders/moe_gather.wgsl: an expert's tokens
//! into one contiguous block) and `scatter` (shaders/moe_scatter.wgsl: the weighted scatter-add
//! of the expert's outputs back to their tokens; mode 1 gates by sigmoid for Qwen2-MoE's shared
//! expert). Between them the expert's SwiGLU runs on the gathered block with the model's
//! existing linear ops (ops::matmul / ops::qmatvec) and ops::swiglu.
//!
//! Papers: Shazeer et al. arXiv 1701.06538; Mixtral arXiv 2401.04088; DeepSeekMoE arXiv
//! 2401.06066 (shared expert). Reference implementations: HF transformers `MixtralExperts`
//! (gather per expert, `index_add_` back) and `Qwen2MoeSparseMoeBlock`; CPU version:
//! `models::moe::MoeBlock::forward`.
//!
//! Why the plan is on the CPU: the router's output is 2·T·k floats (tiny), and the expert
//! products need per-expert row counts to size their dispatches; reading the top-k back once per
//! sparse layer keeps every dispatch exactly sized (no empty experts run) at the cost of one
//! GPU→CPU sync per sparse layer and token chunk.
//!
//! ```text
//! plan:    choices (T × k)           → tokens (T·k) u32, weights (T·k) f32, offsets/counts (E)
//! gather:  x (T, H), tokens[o..o+n]  → out (n, H)
//! scatter: y (T, H) += c_i · src (n, H) at rows tokens[o+i], c_i = w[o+i] or sigmoid(w[o+i])
//! ```

use crate::gpu::GpuContext;
use crate::models::moe::ExpertChoice;

use super::{GpuResultExt, OpError, record};

pub const GATHER_KERNEL: &str = "moe_gather";
pub const GATHER_WGSL: &str = include_str!("../../../shaders/moe_gather.wgsl");
pub const SCATTER_KERNEL: &str = "moe_scatter";
pub const SCATTER_WGSL: &str = include_str!("../../../shaders/moe_scatter.wgsl");
/// Threads per workgroup (`WG` in both shaders).
pub const WORKGROUP_SIZE: u32 = 256;

/// Mirrors `struct Meta` in shaders/moe_gather.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GatherMeta {
    /// Rows gathered.
    pub n: u32,
    /// Row length.
    pub h: u32,
    /// First entry of the index list used.
    pub offset: u32,
    pub _pad: u32,
}

/// Scatter modes.
pub const MODE_WEIGHT: u32 = 0;
pub const MODE_SIGMOID: u32 = 1;

/// Mirrors `struct Meta` in shaders/moe_scatter.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScatterMeta {
    pub n: u32,
    pub h: u32,
    pub offset: u32,
    /// [`MODE_WEIGHT`] or [`MODE_SIGMOID`].
    pub mode: u32,
}

/// Per expert, the tokens routed to it (ascending) and their combine weights, concatenated in
/// expert order: expert e's entries are `tokens[offsets[e]..offsets[e] + counts[e]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MoePlan {
    pub counts: Vec<usize>,
    pub offsets: Vec<usize>,
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
}

impl MoePlan {
    /// From each token's choices; an expert index ≥ `n_experts` is an error naming the token.
    pub fn new(choices: &[Vec<ExpertChoice>], n_experts: usize) -> Result<MoePlan, OpError> {
        let mut per: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_experts];
        for (t, cs) in choices.iter().enumerate() {
            for c in cs {
                let list = per.get_mut(c.expert).ok_or_else(|| OpError::shape("moe plan", format!("token {t} routed to expert {} of {n_experts}", c.expert)))?;
                list.push((t as u32, c.weight));
            }
        }
        let mut plan = MoePlan { counts: Vec::with_capacity(n_experts), offsets: Vec::with_capacity(n_experts), tokens: Vec::new(), weights: Vec::new() };
        for list in per {
            plan.offsets.push(plan.tokens.len());
            plan.counts.push(list.len());
            for (t, w) in list {
                plan.tokens.push(t);
                plan.weights.push(w);
            }
        }
        Ok(plan)
    }
}

fn check_rows(op: &'static str, n: u32, h: u32, offset: u32, idx_len: usize) -> Result<(), OpError> {
    if (offset as usize + n as usize) > idx_len {
        return Err(OpError::shape(op, format!("index list of {idx_len} entries, rows {offset}..{}", offset + n)));
    }
    if (n as u64) * (h as u64) > u32::MAX as u64 {
        return Err(OpError::shape(op, format!("{n}×{h} elements do not fit u32")));
    }
    Ok(())
}

/// CPU reference of gather: out (n, H) = x rows `idx[offset..offset + n]`.
pub fn gather_reference(x: &[f32], h: usize, idx: &[u32], offset: usize, n: usize) -> Vec<f32> {
    idx[offset..offset + n].iter().flat_map(|&t| x[t as usize * h..(t as usize + 1) * h].iter().copied()).collect()
}

/// CPU reference of scatter: y (T, H) += c_i · src row i at row `idx[offset + i]`.
pub fn scatter_reference(y: &mut [f32], h: usize, idx: &[u32], w: &[f32], offset: usize, src: &[f32], mode: u32) {
    for (i, row) in src.chunks_exact(h).enumerate() {
        let mut c = w[offset + i];
        if mode == MODE_SIGMOID {
            c = 1.0 / (1.0 + (-c).exp());
        }
        let t = idx[offset + i] as usize;
        for (yv, sv) in y[t * h..(t + 1) * h].iter_mut().zip(row) {
            *yv += c * sv;
        }
    }
}

/// Records a gather. `idx` holds u32 entries (≥ offset + n, checked by the caller's plan).
pub fn encode_gather(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, meta: &GatherMeta, x: wgpu::BufferBinding<'_>, idx: wgpu::BufferBinding<'_>, out: wgpu::BufferBinding<'_>) -> Result<(), OpError> {
    let grid = ctx.grid(GATHER_KERNEL, (meta.n as u64 * meta.h as u64).div_ceil(WORKGROUP_SIZE as u64)).op(GATHER_KERNEL)?;
    record(ctx, enc, GATHER_KERNEL, GATHER_WGSL, meta, &[x, idx, out], grid)
}

/// Records a weighted (or sigmoid-gated) scatter-add.
pub fn encode_scatter(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    meta: &ScatterMeta,
    y: wgpu::BufferBinding<'_>,
    idx: wgpu::BufferBinding<'_>,
    w: wgpu::BufferBinding<'_>,
    src: wgpu::BufferBinding<'_>,
) -> Result<(), OpError> {
    if meta.mode > MODE_SIGMOID {
        return Err(OpError::shape(SCATTER_KERNEL, format!("mode {} (0: weight, 1: sigmoid)", meta.mode)));
    }
    let grid = ctx.grid(SCATTER_KERNEL, (meta.n as u64 * meta.h as u64).div_ceil(WORKGROUP_SIZE as u64)).op(SCATTER_KERNEL)?;
    record(ctx, enc, SCATTER_KERNEL, SCATTER_WGSL, meta, &[y, idx, w, src], grid)
}

fn u32_as_f32(v: &[u32]) -> Vec<f32> {
    v.iter().map(|&u| f32::from_bits(u)).collect()
}

/// Gather on the GPU: upload, one dispatch, readback.
pub async fn gather(ctx: &GpuContext, x: &[f32], h: usize, idx: &[u32], offset: usize, n: usize) -> Result<Vec<f32>, OpError> {
    check_rows(GATHER_KERNEL, n as u32, h as u32, offset as u32, idx.len())?;
    if let Some(&bad) = idx[offset..offset + n].iter().find(|&&t| (t as usize + 1) * h > x.len()) {
        return Err(OpError::shape(GATHER_KERNEL, format!("token {bad} outside x ({} rows)", x.len() / h.max(1))));
    }
    if n * h == 0 {
        return Ok(Vec::new());
    }
    let xb = ctx.upload_f32("moe_gather.x", x).op(GATHER_KERNEL)?;
    let ib = ctx.upload_f32("moe_gather.idx", &u32_as_f32(idx)).op(GATHER_KERNEL)?;
    let ob = ctx.upload_f32("moe_gather.out", &vec![0.0; n * h]).op(GATHER_KERNEL)?;
    let meta = GatherMeta { n: n as u32, h: h as u32, offset: offset as u32, _pad: 0 };
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(GATHER_KERNEL) });
    encode_gather(ctx, &mut enc, &meta, xb.binding(x.len() as u64 * 4), ib.binding(idx.len() as u64 * 4), ob.binding((n * h) as u64 * 4))?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("moe_gather readback", &ob, 0, n * h).await.op(GATHER_KERNEL)
}

/// Scatter-add on the GPU: upload, one dispatch, readback of y.
#[allow(clippy::too_many_arguments)]
pub async fn scatter(ctx: &GpuContext, y: &[f32], h: usize, idx: &[u32], w: &[f32], offset: usize, src: &[f32], mode: u32) -> Result<Vec<f32>, OpError> {
    let n = src.len() / h.max(1);
    check_rows(SCATTER_KERNEL, n as u32, h as u32, offset as u32, idx.len().min(w.len()))?;
    if let Some(&bad) = idx[offset..offset + n].iter().find(|&&t| (t as usize + 1) * h > y.len()) {
        return Err(OpError::shape(SCATTER_KERNEL, format!("token {bad} outside y ({} rows)", y.len() / h.max(1))));
    }
    if n * h == 0 {
        return Ok(y.to_vec());
    }
    let yb = ctx.upload_f32("moe_scatter.y", y).op(SCATTER_KERNEL)?;
    let ib = ctx.upload_f32("moe_scatter.idx", &u32_as_f32(idx)).op(SCATTER_KERNEL)?;
    let wb = ctx.upload_f32("moe_scatter.w", w).op(SCATTER_KERNEL)?;
    let sb = ctx.upload_f32("moe_scatter.src", src).op(SCATTER_KERNEL)?;
    let meta = ScatterMeta { n: n as u32, h: h as u32, offset: offset as u32, mode };
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(SCATTER_KERNEL) });
    encode_scatter(ctx, &mut enc, &meta, yb.binding(y.len() as u64 * 4), ib.binding(idx.len() as u64 * 4), wb.binding(w.len() as u64 * 4), sb.binding(src.len() as u64 * 4))?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("moe_scatter readback", &yb, 0, y.len()).await.op(SCATTER_KERNEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_groups_tokens_per_expert_in_order() {
        let c = |e, w| ExpertChoice { expert: e, weight: w };
        let plan = MoePlan::new(&[vec![c(2, 0.6), c(0, 0.4)], vec![c(0, 0.9), c(1, 0.1)]], 4).unwrap();
        assert_eq!(plan.counts, vec![2, 1, 1, 0]);
        assert_eq!(plan.offsets, vec![0, 2, 3, 4]);
        assert_eq!(plan.tokens, vec![0, 1, 1, 0]);
        assert_eq!(plan.weights, vec![0.4, 0.9, 0.1, 0.6]);
        assert!(MoePlan::new(&[vec![c(5, 1.0)]], 4).unwrap_err().to_string().contains("expert 5 of 4"));
    }
}
