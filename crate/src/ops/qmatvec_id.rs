//! `qmatvec_id`: expert-indexed matrix–vector products, y[t, s, :] = W[ids[t, s]] · x[t, :], with
//! the expert ids read on the GPU from the router's output buffer, and `moe_combine`: the weighted
//! sum of each token's k expert outputs with the router's weights. Together with ops::router and
//! ops::swiglu they run a sparse MoE layer without the CPU knowing which experts were chosen, so
//! without a GPU→CPU sync per layer (models::llama_gpu's readback-free MoE path).
//!
//! Papers: Shazeer et al., "Outrageously Large Neural Networks" (arXiv 1701.06538); Jiang et al.,
//! "Mixtral of Experts" (arXiv 2401.04088). Reference implementation: llama.cpp's `mul_mat_id`
//! (`ggml_mul_mat_id`, `GGML_OP_MUL_MAT_ID`; Vulkan `mul_mat_vec.comp` with `MUL_MAT_ID`, and
//! `build_moe_ffn` in `llama-graph.cpp` for the graph: ids → gate/up by id → SwiGLU → down by id
//! → weights · outputs summed over the k slots). Formats: llama.cpp `ggml-common.h` / gguf-py,
//! in the aligned split layout of [`SplitBlocks`] (scales, mins f32; quants u32 words).
//!
//! ```text
//! W (E·N, K)  the E experts of one projection stacked by rows (expert e: rows e·N .. (e+1)·N),
//!             F32, F16 (packed pairs, widened in the kernel) or Q8_0 / Q4_0 / Q4_1 (split blocks)
//! ids         (T·k) expert of pair p = t·k + s, read as f32 at ids[ids_offset + p] (router.wgsl
//!             writes [w (T, k) | idx (T, k)], so ids_offset = T·k there)
//! x           (T·k / x_div, K): x_div = k → one row per token (gate/up), 1 → one per pair (down)
//! y           (T·k, N): y[p, r] = Σ_j W[ids[p]·N + r, j] · x[p / x_div, j]
//! combine:    out (T, H) = Σ_s w[t·k + s] · src[t·k + s, :]      src (T·k, H), w (T·k)
//! ```
//!
//! Numbers: the CPU [`reference`] dequantizes the chosen row exactly as
//! [`SplitBlocks::dequantize`] (bit-identical to llama.cpp) and sums in column order in f32; the
//! GPU sums per thread, in vec4 dots and a tree, so the two agree within the f32 summation bound
//! (as ops::qmatvec). Kernel shape: qmatvec's (8 rows × 8 threads per 64-thread workgroup), one
//! group of 8 rows of one pair per workgroup. Limit: the stacked W must fit one storage binding
//! (the caller falls back to the per-expert plan otherwise, models::llama_gpu).

use crate::gpu::GpuContext;
use crate::tensor::quant::{QK, SplitBlocks};

use super::{GpuResultExt, OpError, QUANT_DECODE, QUANT_ROW_DOT, qmatvec, record};

pub const KERNEL: &str = "qmatvec_id";
/// The kernel's source: the shared quant WGSL (`ops::QUANT_DECODE`, `ops::QUANT_ROW_DOT`) then
/// shaders/qmatvec_id.wgsl.
pub static WGSL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{QUANT_DECODE}{QUANT_ROW_DOT}{}", include_str!("../../../shaders/qmatvec_id.wgsl")));
pub const COMBINE_KERNEL: &str = "moe_combine";
pub const COMBINE_WGSL: &str = include_str!("../../../shaders/moe_combine.wgsl");
/// Threads per workgroup of qmatvec_id (`WG` in the shader).
pub const WORKGROUP_SIZE: u32 = 64;
/// Output rows per workgroup (`ROWS` in the shader).
pub const ROWS_PER_GROUP: u32 = 8;
/// Threads per workgroup of moe_combine.
pub const COMBINE_WORKGROUP_SIZE: u32 = 256;
/// `Meta.format` of F32 weights (0..=2 are [`qmatvec::format_code`]'s).
pub const FORMAT_F32: u32 = 3;
/// `Meta.format` of F16 weights (binary16 pairs packed in u32 words, low half first).
pub const FORMAT_F16: u32 = 4;

/// Mirrors `struct Meta` in shaders/qmatvec_id.wgsl (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Output rows per expert N.
    pub n: u32,
    /// Row length K.
    pub k: u32,
    /// 0 Q8_0, 1 Q4_0, 2 Q4_1, [`FORMAT_F32`], [`FORMAT_F16`].
    pub format: u32,
    /// (token, slot) pairs T·k.
    pub pairs: u32,
    /// x row of pair p is p / x_div.
    pub x_div: u32,
    /// ids[ids_offset + p] is pair p's expert (as f32).
    pub ids_offset: u32,
    /// Experts in this binding (all E, or one group of them).
    pub n_experts: u32,
    /// The first expert of this binding: pairs of experts outside e_first .. e_first + n_experts
    /// are left untouched (another group's dispatch writes them).
    pub e_first: u32,
}

/// Mirrors `struct Meta` in shaders/moe_combine.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CombineMeta {
    /// Tokens T.
    pub t: u32,
    /// Slots per token k.
    pub k: u32,
    /// Row length H.
    pub h: u32,
    pub _pad: u32,
}

/// The stacked weights of one projection of E experts: (E·N, K).
#[derive(Debug, Clone, Copy)]
pub enum IdWeights<'a> {
    F32(&'a [f32]),
    /// IEEE binary16 bits, row-major.
    F16(&'a [u16]),
    Quant(&'a SplitBlocks),
}

/// Shape of a qmatvec_id product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdParams {
    /// Experts E.
    pub n_experts: usize,
    /// Output rows per expert N.
    pub n: usize,
    /// Row length K.
    pub k: usize,
    /// x row of pair p is p / x_div (top-k for inputs shared by a token's slots, 1 for one row
    /// per pair).
    pub x_div: usize,
}

/// The Meta format code of `w`.
pub fn format_of(w: IdWeights<'_>) -> u32 {
    match w {
        IdWeights::F32(_) => FORMAT_F32,
        IdWeights::F16(_) => FORMAT_F16,
        IdWeights::Quant(s) => qmatvec::format_code(s.format),
    }
}

/// Packs binary16 values two per u32 word, the lower index in the low half (the layout
/// `unpack2x16float` reads); an odd count is padded with a zero half.
pub fn pack_f16(bits: &[u16]) -> Vec<u32> {
    bits.chunks(2).map(|p| p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16).collect()
}

/// Checks the weights, x and ids against `p`; returns the number of pairs.
fn check(w: IdWeights<'_>, p: &IdParams, x: &[f32], ids: &[u32]) -> Result<usize, OpError> {
    let (e, n, k) = (p.n_experts, p.n, p.k);
    let quant = matches!(w, IdWeights::Quant(_));
    if quant && (k == 0 || !k.is_multiple_of(QK)) {
        return Err(OpError::shape(KERNEL, format!("K = {k} must be a positive multiple of the block size {QK}")));
    }
    if !quant && (k == 0 || !k.is_multiple_of(4)) {
        return Err(OpError::shape(KERNEL, format!("K = {k} must be a positive multiple of 4 for F32 / F16 weights (vec4 loads)")));
    }
    if e == 0 || n == 0 || p.x_div == 0 {
        return Err(OpError::shape(KERNEL, format!("E = {e}, N = {n}, x_div = {}: each must be ≥ 1", p.x_div)));
    }
    let rows = e.checked_mul(n).and_then(|r| r.checked_mul(k)).filter(|&v| v <= u32::MAX as usize).ok_or_else(|| OpError::shape(KERNEL, format!("E = {e} × N = {n} × K = {k} does not fit u32")))? / k;
    match w {
        IdWeights::F32(v) if v.len() != rows * k => return Err(OpError::shape(KERNEL, format!("F32 weights have {} elements, expected E·N·K = {e}·{n}·{k}", v.len()))),
        IdWeights::F16(v) if v.len() != rows * k => return Err(OpError::shape(KERNEL, format!("F16 weights have {} elements, expected E·N·K = {e}·{n}·{k}", v.len()))),
        IdWeights::Quant(s) => {
            let blocks = rows * (k / QK);
            if s.blocks() != blocks || s.qs.len() != blocks * s.format.quant_words() {
                return Err(OpError::shape(KERNEL, format!("{} weights have {} blocks / {} quant words, expected E·N·K/32 = {blocks} blocks", s.format, s.blocks(), s.qs.len())));
            }
            if s.format.has_min() != s.mins.as_ref().is_some_and(|m| m.len() == blocks) {
                return Err(OpError::shape(KERNEL, format!("{} weights: mins missing, misplaced or not {blocks}", s.format)));
            }
        }
        _ => {}
    }
    let pairs = ids.len();
    if !pairs.is_multiple_of(p.x_div) || x.len() != pairs / p.x_div * k {
        return Err(OpError::shape(KERNEL, format!("x has {} elements, expected (pairs {pairs} / x_div {}) · K {k}", x.len(), p.x_div)));
    }
    if let Some((i, &bad)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= e) {
        return Err(OpError::shape(KERNEL, format!("pair {i} names expert {bad} of {e}")));
    }
    Ok(pairs)
}

/// CPU reference: y (pairs, N), y[p, r] = Σ_j W[ids[p]·N + r, j] · x[p / x_div, j], each row of W
/// dequantized as [`SplitBlocks::dequantize`] and the products summed in j order in f32.
pub fn reference(w: IdWeights<'_>, p: &IdParams, x: &[f32], ids: &[u32]) -> Result<Vec<f32>, OpError> {
    let pairs = check(w, p, x, ids)?;
    let dense: std::borrow::Cow<'_, [f32]> = match w {
        IdWeights::F32(v) => std::borrow::Cow::Borrowed(v),
        IdWeights::F16(v) => std::borrow::Cow::Owned(v.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect()),
        IdWeights::Quant(s) => {
            let mut out = Vec::new();
            s.dequantize(&mut out).map_err(|e| OpError::shape(KERNEL, e.to_string()))?;
            std::borrow::Cow::Owned(out)
        }
    };
    let (n, k) = (p.n, p.k);
    let mut y = Vec::with_capacity(pairs * n);
    for (pair, &e) in ids.iter().enumerate() {
        let xr = &x[pair / p.x_div * k..(pair / p.x_div + 1) * k];
        for r in 0..n {
            let row = &dense[(e as usize * n + r) * k..(e as usize * n + r + 1) * k];
            y.push(row.iter().zip(xr).fold(0.0f32, |s, (a, b)| s + a * b));
        }
    }
    Ok(y)
}

/// CPU reference of moe_combine: out (T, H) = Σ_s w[t·k + s] · src[t·k + s, :], slots in order.
pub fn combine_reference(w: &[f32], src: &[f32], t: usize, k: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; t * h];
    for ti in 0..t {
        for s in 0..k {
            let pr = ti * k + s;
            for (o, v) in out[ti * h..(ti + 1) * h].iter_mut().zip(&src[pr * h..(pr + 1) * h]) {
                *o += w[pr] * v;
            }
        }
    }
    out
}

/// Records one qmatvec_id dispatch on GPU-resident buffers (nothing is submitted).
/// scales, mins: (E·N·K/32) f32 (any f32 binding for F32 / formats without mins); qs: quants
/// (E·N·K/32·W u32) or the F32 weights (E·N·K); ids: f32-coded ids (≥ ids_offset + pairs);
/// x: (pairs / x_div · K) f32; y: (pairs · N) f32.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    meta: &Meta,
    scales: wgpu::BufferBinding<'_>,
    mins: wgpu::BufferBinding<'_>,
    qs: wgpu::BufferBinding<'_>,
    ids: wgpu::BufferBinding<'_>,
    x: wgpu::BufferBinding<'_>,
    y: wgpu::BufferBinding<'_>,
) -> Result<(), OpError> {
    if meta.format == FORMAT_F32 || meta.format == FORMAT_F16 {
        if meta.k == 0 || !meta.k.is_multiple_of(4) {
            return Err(OpError::shape(KERNEL, format!("K = {} must be a positive multiple of 4 for F32 / F16 weights", meta.k)));
        }
    } else {
        qmatvec::check_meta(KERNEL, meta.k, meta.format)?;
    }
    if meta.x_div == 0 || meta.n == 0 || meta.n_experts == 0 {
        return Err(OpError::shape(KERNEL, format!("N = {}, E = {}, x_div = {}: each must be ≥ 1", meta.n, meta.n_experts, meta.x_div)));
    }
    let groups = meta.pairs as u64 * (meta.n as u64).div_ceil(ROWS_PER_GROUP as u64);
    let grid = ctx.grid(KERNEL, groups).op(KERNEL)?;
    record(ctx, enc, KERNEL, &WGSL, meta, &[scales, mins, qs, ids, x, y], grid)
}

/// Records one moe_combine dispatch: w (≥ T·k), src (T·k·H) → y (T·H), overwritten.
pub fn encode_combine(ctx: &GpuContext, enc: &mut wgpu::CommandEncoder, meta: &CombineMeta, w: wgpu::BufferBinding<'_>, src: wgpu::BufferBinding<'_>, y: wgpu::BufferBinding<'_>) -> Result<(), OpError> {
    if (meta.t as u64) * (meta.k as u64).max(1) * (meta.h as u64) > u32::MAX as u64 {
        return Err(OpError::shape(COMBINE_KERNEL, format!("T·k·H = {}·{}·{} does not fit u32", meta.t, meta.k, meta.h)));
    }
    let grid = ctx.grid(COMBINE_KERNEL, (meta.t as u64 * meta.h as u64).div_ceil(COMBINE_WORKGROUP_SIZE as u64)).op(COMBINE_KERNEL)?;
    record(ctx, enc, COMBINE_KERNEL, COMBINE_WGSL, meta, &[w, src, y], grid)
}

/// Bytes of the widest array of the stacked weights (what must fit one storage binding).
pub fn widest_bytes(w: IdWeights<'_>) -> u64 {
    match w {
        IdWeights::F32(v) => v.len() as u64 * 4,
        IdWeights::F16(v) => v.len().div_ceil(2) as u64 * 4,
        IdWeights::Quant(s) => s.qs.len() as u64 * 4,
    }
}

/// Experts `e0..e1` of the stacked weights (rows e0·N .. e1·N).
fn experts_slice(w: IdWeights<'_>, n: usize, k: usize, e0: usize, e1: usize) -> (Option<SplitBlocks>, std::ops::Range<usize>) {
    match w {
        IdWeights::F32(_) | IdWeights::F16(_) => (None, e0 * n * k..e1 * n * k),
        IdWeights::Quant(s) => {
            let (b0, b1) = (e0 * n * (k / QK), e1 * n * (k / QK));
            let qw = s.format.quant_words();
            let part = SplitBlocks { format: s.format, scales: s.scales[b0..b1].to_vec(), mins: s.mins.as_ref().map(|m| m[b0..b1].to_vec()), qs: s.qs[b0 * qw..b1 * qw].to_vec() };
            (Some(part), 0..0)
        }
    }
}

/// y = W[ids] · x on the GPU: uploads the stacked weights whole (they must fit one binding), the
/// ids as f32 after `ids_offset` zeros (as in the router's output), one dispatch, readback.
/// Returns pairs·N values, equal to [`reference`] within the f32 summation bound.
pub async fn qmatvec_id(ctx: &GpuContext, w: IdWeights<'_>, p: &IdParams, x: &[f32], ids: &[u32], ids_offset: usize) -> Result<Vec<f32>, OpError> {
    qmatvec_id_grouped(ctx, w, p, x, ids, ids_offset, p.n_experts).await
}

/// As [`qmatvec_id`] with the experts split into groups of `per_group` (the last may be smaller),
/// one binding and one dispatch each into the same y (what a model does when all E experts do
/// not fit one binding).
pub async fn qmatvec_id_grouped(ctx: &GpuContext, w: IdWeights<'_>, p: &IdParams, x: &[f32], ids: &[u32], ids_offset: usize, per_group: usize) -> Result<Vec<f32>, OpError> {
    let pairs = check(w, p, x, ids)?;
    if pairs == 0 {
        return Ok(Vec::new());
    }
    let (n, k) = (p.n, p.k);
    let per_group = per_group.clamp(1, p.n_experts);
    let mut id_f: Vec<f32> = vec![0.0; ids_offset];
    id_f.extend(ids.iter().map(|&i| i as f32));
    let ib = ctx.upload_f32("qmatvec_id.ids", &id_f).op(KERNEL)?;
    let xb = ctx.upload_f32("qmatvec_id.x", x).op(KERNEL)?;
    let yb = ctx.upload_f32("qmatvec_id.y", &vec![f32::NAN; pairs * n]).op(KERNEL)?;
    let mut e0 = 0;
    while e0 < p.n_experts {
        let e1 = (e0 + per_group).min(p.n_experts);
        let (part, range) = experts_slice(w, n, k, e0, e1);
        let gw = match (w, &part) {
            (_, Some(s)) => IdWeights::Quant(s),
            (IdWeights::F32(v), None) => IdWeights::F32(&v[range]),
            (IdWeights::F16(v), None) => IdWeights::F16(&v[range]),
            (IdWeights::Quant(_), None) => unreachable!("experts_slice splits quantized weights"),
        };
        dispatch_group(ctx, gw, p, pairs, ids_offset, e0, e1, &ib, id_f.len(), &xb, x.len(), &yb)?;
        e0 = e1;
    }
    ctx.read_f32("qmatvec_id.y readback", &yb, 0, pairs * n).await.op(KERNEL)
}

/// Uploads experts e0..e1 (`w` holds just them) and runs their dispatch into `yb`.
#[allow(clippy::too_many_arguments)]
fn dispatch_group(ctx: &GpuContext, w: IdWeights<'_>, p: &IdParams, pairs: usize, ids_offset: usize, e0: usize, e1: usize, ib: &crate::gpu::PooledBuffer, ids_len: usize, xb: &crate::gpu::PooledBuffer, x_len: usize, yb: &crate::gpu::PooledBuffer) -> Result<(), OpError> {
    let limit = ctx.max_binding_bytes();
    if widest_bytes(w) > limit {
        return Err(OpError::shape(KERNEL, format!("stacked weights of {} bytes exceed one storage binding ({limit} bytes)", widest_bytes(w))));
    }
    let (scales, mins, qs) = match w {
        IdWeights::F32(v) => {
            let b = ctx.upload_f32("qmatvec_id.w", v).op(KERNEL)?;
            (None, None, b)
        }
        IdWeights::F16(v) => {
            let words: Vec<f32> = pack_f16(v).into_iter().map(f32::from_bits).collect();
            (None, None, ctx.upload_f32("qmatvec_id.w", &words).op(KERNEL)?)
        }
        IdWeights::Quant(s) => {
            let sc = ctx.upload_f32("qmatvec_id.scales", &s.scales).op(KERNEL)?;
            let mn = match &s.mins {
                Some(m) => Some(ctx.upload_f32("qmatvec_id.mins", m).op(KERNEL)?),
                None => None,
            };
            let words: Vec<f32> = s.qs.iter().map(|&u| f32::from_bits(u)).collect();
            (Some(sc), mn, ctx.upload_f32("qmatvec_id.qs", &words).op(KERNEL)?)
        }
    };
    let meta = Meta {
        n: p.n as u32,
        k: p.k as u32,
        format: format_of(w),
        pairs: pairs as u32,
        x_div: p.x_div as u32,
        ids_offset: ids_offset as u32,
        n_experts: (e1 - e0) as u32,
        e_first: e0 as u32,
    };
    let sbytes = match w {
        IdWeights::F32(_) | IdWeights::F16(_) => 4,
        IdWeights::Quant(s) => s.scales.len() as u64 * 4,
    };
    let qbytes = widest_bytes(w);
    let sbuf = scales.as_ref().unwrap_or(&qs);
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(KERNEL) });
    encode(
        ctx,
        &mut enc,
        &meta,
        sbuf.binding(sbytes),
        mins.as_ref().unwrap_or(sbuf).binding(sbytes),
        qs.binding(qbytes),
        ib.binding(ids_len as u64 * 4),
        xb.binding(x_len as u64 * 4),
        yb.binding((pairs * p.n) as u64 * 4),
    )?;
    ctx.queue.submit([enc.finish()]);
    Ok(())
}

/// moe_combine on the GPU: upload, one dispatch, readback of out (T, H).
pub async fn combine(ctx: &GpuContext, w: &[f32], src: &[f32], t: usize, k: usize, h: usize) -> Result<Vec<f32>, OpError> {
    if w.len() < t * k || src.len() != t * k * h {
        return Err(OpError::shape(COMBINE_KERNEL, format!("w has {} (≥ T·k = {}), src {} (T·k·H = {}) elements", w.len(), t * k, src.len(), t * k * h)));
    }
    if t * h == 0 {
        return Ok(Vec::new());
    }
    let wb = ctx.upload_f32("moe_combine.w", w).op(COMBINE_KERNEL)?;
    let sb = ctx.upload_f32("moe_combine.src", src).op(COMBINE_KERNEL)?;
    let yb = ctx.upload_f32("moe_combine.y", &vec![f32::NAN; t * h]).op(COMBINE_KERNEL)?;
    let meta = CombineMeta { t: t as u32, k: k as u32, h: h as u32, _pad: 0 };
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(COMBINE_KERNEL) });
    encode_combine(ctx, &mut enc, &meta, wb.binding(w.len() as u64 * 4), sb.binding(src.len() as u64 * 4), yb.binding((t * h) as u64 * 4))?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("moe_combine readback", &yb, 0, t * h).await.op(COMBINE_KERNEL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::quant::{BlockFormat, quantize};

    #[test]
    fn reference_picks_the_expert_rows() {
        // E = 3 experts of N = 2 rows, K = 4, F32: expert e's row r is all (10e + r).
        let w: Vec<f32> = (0..3 * 2).flat_map(|row| std::iter::repeat_n((10 * (row / 2) + row % 2) as f32, 4)).collect();
        let p = IdParams { n_experts: 3, n: 2, k: 4, x_div: 2 };
        let x = [1.0f32, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]; // two tokens, k = 2 slots each
        let y = reference(IdWeights::F32(&w), &p, &x, &[2, 0, 1, 1]).unwrap();
        assert_eq!(y, vec![80.0, 84.0, 0.0, 4.0, 20.0, 22.0, 20.0, 22.0]);
    }

    #[test]
    fn reference_equals_qmatvec_reference_per_expert() {
        let (e, n, k) = (3usize, 5usize, 64usize);
        let w: Vec<f32> = (0..e * n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let x: Vec<f32> = (0..k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
        for f in BlockFormat::ALL {
            let mut bytes = Vec::new();
            quantize(f, &w, &mut bytes).unwrap();
            let s = SplitBlocks::from_blocks(f, &bytes).unwrap();
            let p = IdParams { n_experts: e, n, k, x_div: 1 };
            let got = reference(IdWeights::Quant(&s), &p, &x, &[1]).unwrap();
            let one = SplitBlocks::from_blocks(f, &bytes[n * (k / 32) * f.block_bytes()..2 * n * (k / 32) * f.block_bytes()]).unwrap();
            let want = qmatvec::reference(&one, n, k, &x).unwrap();
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{f}");
        }
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let p = IdParams { n_experts: 2, n: 1, k: 4, x_div: 1 };
        let w = [0.0f32; 8];
        let e = reference(IdWeights::F32(&w), &p, &[0.0; 4], &[2]).unwrap_err().to_string();
        assert!(e.contains("pair 0 names expert 2 of 2"), "{e}");
        let e = reference(IdWeights::F32(&w[..4]), &p, &[0.0; 4], &[0]).unwrap_err().to_string();
        assert!(e.contains("expected E·N·K"), "{e}");
        let e = reference(IdWeights::F32(&w), &p, &[0.0; 3], &[0]).unwrap_err().to_string();
        assert!(e.contains("x has 3 elements"), "{e}");
    }

    #[test]
    fn combine_reference_weights_each_slot() {
        let out = combine_reference(&[0.25, 0.75, 1.0, 0.0], &[4.0, 8.0, 0.0, 4.0, 1.0, 2.0, 9.0, 9.0], 2, 2, 2);
        assert_eq!(out, vec![1.0, 5.0, 1.0, 2.0]);
    }
}
