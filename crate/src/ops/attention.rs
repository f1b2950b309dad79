//! `attention`: causal grouped-query attention over a GPU-resident KV cache with the online
//! softmax (FlashAttention) formulation, and a split-K decode path (flash-decoding): the key range
//! split across workgroups that write partial (m, ℓ, Õ), merged by a reduce kernel.
//!
//! Papers: Milakov & Gimelshein (arXiv 1805.02867) online softmax; Dao et al. FlashAttention
//! (arXiv 2205.14135) and FlashAttention-2 (arXiv 2307.08691); GQA (Ainslie et al., arXiv
//! 2305.13245); sliding windows as Mistral (arXiv 2310.06825). Reference implementations: HF
//! transformers `eager_attention_forward` (models/llama/modeling_llama.py) for the numbers;
//! llama.cpp's WebGPU `flash_attn_vec_split.wgsl` / `flash_attn_vec_reduce.wgsl` for the split.
//!
//! Shapes: q (T, n_heads, hd) for the T new tokens at positions pos0 .. pos0 + T; the cache k, v
//! (capacity, n_kv_heads, hd) holding positions 0 .. pos0 + T (the new tokens' keys appended
//! first, [`GpuKvCache::append`]); out (T, n_heads, hd). Query head h reads KV head
//! h / (n_heads / n_kv_heads); query t sees keys j ≤ pos0 + t and, with a window w,
//! j > pos0 + t − w (models/llama.rs).
//!
//! Kernels: shaders/attention.wgsl (64 threads per (t, head, split), 64-key tiles),
//! shaders/attention_reduce.wgsl. Numbers: the [`reference`] is models/llama.rs's softmax in f32
//! (max subtracted, then normalised); the GPU rescales running sums per tile and divides once at
//! the end, and its `exp` is within a few ulp, so outputs agree to ~1e-6 relative to max|v| for
//! the lengths tested (tests state the bound).
//! Limits: head_dim ≤ 256; the cache of one layer (k or v) must fit one storage binding.

use crate::gpu::GpuContext;

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "attention";
pub const WGSL: &str = include_str!("../../../shaders/attention.wgsl");
pub const REDUCE_KERNEL: &str = "attention_reduce";
pub const REDUCE_WGSL: &str = include_str!("../../../shaders/attention_reduce.wgsl");
/// Largest head_dim the kernel holds (`MAX_HD` in the shader).
pub const MAX_HEAD_DIM: usize = 256;

/// Mirrors `struct Meta` in shaders/attention.wgsl and attention_reduce.wgsl (48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    pub t: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub pos0: u32,
    /// Sliding window in keys; 0 = none.
    pub window: u32,
    pub splits: u32,
    pub split_len: u32,
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// One attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// New query rows.
    pub t: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Position of query row 0 (keys already cached before these tokens).
    pub pos0: usize,
    pub window: Option<usize>,
    /// Key splits per (t, head): 1 = one pass writing the output; > 1 = split-K + reduce.
    /// [`default_splits`] picks one.
    pub splits: usize,
}

impl AttentionParams {
    /// Keys in the cache once these tokens are appended.
    pub fn kv_len(&self) -> usize {
        self.pos0 + self.t
    }

    /// Keys the last query row sees (the longest range).
    pub fn max_range(&self) -> usize {
        self.window.map_or(self.kv_len(), |w| w.min(self.kv_len()))
    }

    fn meta(&self) -> Meta {
        let splits = self.splits.max(1);
        Meta {
            t: self.t as u32,
            n_heads: self.n_heads as u32,
            n_kv_heads: self.n_kv_heads as u32,
            head_dim: self.head_dim as u32,
            pos0: self.pos0 as u32,
            window: self.window.unwrap_or(0) as u32,
            splits: splits as u32,
            split_len: self.max_range().div_ceil(splits).max(1) as u32,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            _pad: [0; 3],
        }
    }
}

/// Splits for a call: 1 for prefill (T > 1: T · heads workgroups are parallel enough); for a
/// decode step one split per 128 visible keys, at most 16.
pub fn default_splits(t: usize, range: usize) -> usize {
    if t > 1 { 1 } else { range.div_ceil(128).clamp(1, 16) }
}

fn check(p: &AttentionParams) -> Result<(), OpError> {
    if p.n_heads == 0 || p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
        return Err(OpError::shape(KERNEL, format!("{} query heads are not a multiple of {} KV heads", p.n_heads, p.n_kv_heads)));
    }
    if p.head_dim == 0 || p.head_dim > MAX_HEAD_DIM {
        return Err(OpError::shape(KERNEL, format!("head_dim {} is outside 1..={MAX_HEAD_DIM}", p.head_dim)));
    }
    if p.window == Some(0) {
        return Err(OpError::shape(KERNEL, "a sliding window of 0 keys"));
    }
    if p.kv_len() > u32::MAX as usize || p.splits > u16::MAX as usize {
        return Err(OpError::shape(KERNEL, "positions or splits do not fit u32"));
    }
    Ok(())
}

/// CPU reference (models/llama.rs's attention): q (T, nh, hd); k, v (≥ pos0 + T, nkv, hd).
/// Returns (T, nh, hd).
pub fn reference(q: &[f32], k: &[f32], v: &[f32], p: &AttentionParams) -> Result<Vec<f32>, OpError> {
    check(p)?;
    let (nh, nkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    if q.len() != p.t * nh * hd || k.len() < p.kv_len() * nkv * hd || v.len() < p.kv_len() * nkv * hd {
        return Err(OpError::shape(KERNEL, format!("q has {}, k {}, v {} elements for T = {}, kv_len = {}", q.len(), k.len(), v.len(), p.t, p.kv_len())));
    }
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; p.t * nh * hd];
    let mut scores = vec![0.0f32; p.kv_len()];
    for t in 0..p.t {
        let visible = p.pos0 + t + 1;
        let lo = p.window.map_or(0, |w| visible.saturating_sub(w));
        for head in 0..nh {
            let kvh = head / group;
            let qv = &q[(t * nh + head) * hd..(t * nh + head + 1) * hd];
            let s = &mut scores[lo..visible];
            for (j, sj) in (lo..visible).zip(s.iter_mut()) {
                let kj = &k[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
                *sj = qv.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for sj in s.iter_mut() {
                *sj = (*sj - m).exp();
                sum += *sj;
            }
            let o = &mut out[(t * nh + head) * hd..(t * nh + head + 1) * hd];
            for (j, sj) in (lo..visible).zip(s.iter()) {
                let pj = sj / sum;
                let vj = &v[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
                for (a, b) in o.iter_mut().zip(vj) {
                    *a += pj * b;
                }
            }
        }
    }
    Ok(out)
}

/// f32 elements of the partials buffer a split call needs: (T, nh, splits, hd + 2).
pub fn partial_len(p: &AttentionParams) -> usize {
    p.t * p.n_heads * p.splits.max(1) * (p.head_dim + 2)
}

/// Records attention for `p` into `enc`: q (T, nh, hd), the cache k, v, out (T, nh, hd). With
/// `p.splits > 1` the split pass writes `partial` (at least [`partial_len`] f32) and the reduce
/// writes `out`; with 1 split `partial` is unused (pass None).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    p: &AttentionParams,
    q: wgpu::BufferBinding<'_>,
    k: wgpu::BufferBinding<'_>,
    v: wgpu::BufferBinding<'_>,
    out: wgpu::BufferBinding<'_>,
    partial: Option<wgpu::BufferBinding<'_>>,
) -> Result<(), OpError> {
    check(p)?;
    if p.t == 0 {
        return Ok(());
    }
    let meta = p.meta();
    let rows = (p.t * p.n_heads) as u64;
    if meta.splits == 1 {
        let grid = ctx.grid(KERNEL, rows).op(KERNEL)?;
        return record(ctx, enc, KERNEL, WGSL, &meta, &[q, k, v, out], grid);
    }
    let part = partial.ok_or_else(|| OpError::shape(KERNEL, format!("{} splits need a partials buffer", meta.splits)))?;
    let grid = ctx.grid(KERNEL, rows * meta.splits as u64).op(KERNEL)?;
    record(ctx, enc, KERNEL, WGSL, &meta, &[q, k, v, part.clone()], grid)?;
    let grid = ctx.grid(REDUCE_KERNEL, rows).op(REDUCE_KERNEL)?;
    record(ctx, enc, REDUCE_KERNEL, REDUCE_WGSL, &meta, &[part, out], grid)
}

/// The KV cache of every layer, resident on the GPU: per layer k and v buffers of
/// (capacity, n_kv_heads, head_dim) f32. New keys/values are appended by a buffer copy recorded
/// into the token's encoder; [`GpuKvCache::advance`] moves the length once all layers have them.
#[derive(Debug)]
pub struct GpuKvCache {
    pub layers: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    len: usize,
}

impl GpuKvCache {
    /// Allocates `layers` × (k, v) of `capacity` positions. Errors if one layer's k exceeds a
    /// storage binding (lower the capacity).
    pub fn new(ctx: &GpuContext, layers: usize, n_kv_heads: usize, head_dim: usize, capacity: usize) -> Result<GpuKvCache, OpError> {
        let bytes = (capacity.max(1) * n_kv_heads * head_dim * 4) as u64;
        if bytes > ctx.max_binding_bytes() {
            return Err(OpError::shape(
                KERNEL,
                format!("a KV cache of {capacity} positions × {n_kv_heads} heads × {head_dim} needs {bytes} bytes per layer, over the storage binding limit {} bytes: use a shorter context", ctx.max_binding_bytes()),
            ));
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let mk = |label: String| ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(&label), size: bytes, usage, mapped_at_creation: false });
        let layers = (0..layers).map(|l| (mk(format!("kv_cache.k[{l}]")), mk(format!("kv_cache.v[{l}]")))).collect();
        Ok(GpuKvCache { layers, n_kv_heads, head_dim, capacity, len: 0 })
    }

    /// Positions cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget every position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Errors unless `t` more positions fit.
    pub fn check_room(&self, t: usize) -> Result<(), OpError> {
        if self.len + t > self.capacity {
            return Err(OpError::shape(KERNEL, format!("the KV cache holds {} positions; {} + {t} do not fit (start a new sequence or allow a longer context)", self.capacity, self.len)));
        }
        Ok(())
    }

    /// Records the copy of `t` tokens' keys and values (each (t, n_kv_heads, head_dim) at the start
    /// of `k_src` / `v_src`) into layer `layer` at positions len .. len + t.
    pub fn append(&self, enc: &mut wgpu::CommandEncoder, layer: usize, k_src: &wgpu::Buffer, v_src: &wgpu::Buffer, t: usize) -> Result<(), OpError> {
        self.check_room(t)?;
        let row = (self.n_kv_heads * self.head_dim * 4) as u64;
        let (k, v) = &self.layers[layer];
        enc.copy_buffer_to_buffer(k_src, 0, k, self.len as u64 * row, t as u64 * row);
        enc.copy_buffer_to_buffer(v_src, 0, v, self.len as u64 * row, t as u64 * row);
        Ok(())
    }

    /// Marks `t` appended positions as cached (after every layer's [`GpuKvCache::append`]).
    pub fn advance(&mut self, t: usize) -> Result<(), OpError> {
        self.check_room(t)?;
        self.len += t;
        Ok(())
    }
}

/// Attention on the GPU from CPU slices: uploads q and the cache (k, v: (pos0 + T, nkv, hd)),
/// dispatches (split-K + reduce when `p.splits > 1`), reads (T, nh, hd) back.
pub async fn attention(ctx: &GpuContext, q: &[f32], k: &[f32], v: &[f32], p: &AttentionParams) -> Result<Vec<f32>, OpError> {
    check(p)?;
    let (nh, nkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    if q.len() != p.t * nh * hd || k.len() != p.kv_len() * nkv * hd || v.len() != k.len() {
        return Err(OpError::shape(KERNEL, format!("q has {}, k {}, v {} elements for T = {}, kv_len = {}", q.len(), k.len(), v.len(), p.t, p.kv_len())));
    }
    if p.t == 0 {
        return Ok(Vec::new());
    }
    let qb = ctx.upload_f32("attention.q", q).op(KERNEL)?;
    let kb = ctx.upload_f32("attention.k", k).op(KERNEL)?;
    let vb = ctx.upload_f32("attention.v", v).op(KERNEL)?;
    let out_len = p.t * nh * hd;
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let ob = ctx.buffer("attention.out", out_len as u64 * 4, storage).op(KERNEL)?;
    let pb = if p.splits > 1 { Some(ctx.buffer("attention.partial", partial_len(p) as u64 * 4, storage).op(KERNEL)?) } else { None };
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
    encode(
        ctx,
        &mut enc,
        p,
        qb.binding(q.len() as u64 * 4),
        kb.binding(k.len() as u64 * 4),
        vb.binding(v.len() as u64 * 4),
        ob.binding(out_len as u64 * 4),
        pb.as_ref().map(|b| b.binding(partial_len(p) as u64 * 4)),
    )?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("attention.out readback", &ob, 0, out_len).await.op(KERNEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_single_key_returns_its_value() {
        // T = 1 at position 0: the only visible key gets weight 1.
        let p = AttentionParams { t: 1, n_heads: 2, n_kv_heads: 1, head_dim: 2, pos0: 0, window: None, splits: 1 };
        let out = reference(&[1.0, 2.0, 3.0, 4.0], &[0.5, 0.5], &[7.0, -1.0], &p).unwrap();
        assert_eq!(out, vec![7.0, -1.0, 7.0, -1.0]);
    }

    #[test]
    fn reference_window_and_uniform_scores() {
        // Zero queries: uniform weights over the visible keys; window 2 at position 3 sees keys 2, 3.
        let p = AttentionParams { t: 1, n_heads: 1, n_kv_heads: 1, head_dim: 1, pos0: 3, window: Some(2), splits: 1 };
        let out = reference(&[0.0], &[0.0; 4], &[1.0, 2.0, 3.0, 5.0], &p).unwrap();
        assert_eq!(out, vec![4.0]);
        assert_eq!(default_splits(1, 1000), 8);
        assert_eq!(default_splits(4, 1000), 1);
    }
}
