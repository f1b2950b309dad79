//! `weighted_sum`: out[i] = (Σ_m w_m · x_m[i]) / (normalize ? Σ_m w_m : 1) over M tensors of N
//! f32 elements: the linear merge and the task-arithmetic sum on the GPU.
//!
//! Math: mergekit 0.1.5 `merge_methods/linear.py` (`linear_merge`: `result.addcmul_(x_m, w_m)`
//! in input order, fp32 accumulation, then `result.div_(weight.sum())`); Wortsman et al. 2022,
//! "Model soups" (arXiv:2203.05482); Ilharco et al. 2023, "Editing Models with Task Arithmetic"
//! (arXiv:2212.04089). The CPU reference below does exactly mergekit's order of operations;
//! the GPU may contract `acc + w·x` into an FMA, so results agree to a few ulps, not bit for bit
//! (the bit-exact merge path is the CPU one in `merge::methods`).
//!
//! Kernel: shaders/weighted_sum.wgsl. Splitting: the M inputs are packed into one storage
//! binding, `x: (M, C)`, where the chunk capacity C is chosen so that M·C·4 bytes fit
//! `max_storage_buffer_binding_size` (and `max_buffer_size`); a tensor with N > C elements is
//! processed in ⌈N / C⌉ chunks through the same pooled buffers. Within a chunk the 2-D grid
//! covers more than 65535 workgroups.

use crate::gpu::GpuContext;

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "weighted_sum";
pub const WGSL: &str = include_str!("../../../shaders/weighted_sum.wgsl");
/// Threads per workgroup (`@workgroup_size` in the shader).
pub const WORKGROUP_SIZE: u32 = 256;

/// Mirrors `struct Meta` in shaders/weighted_sum.wgsl (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    /// Elements in this chunk.
    pub n: u32,
    /// Number of input tensors M.
    pub m: u32,
    /// Elements between consecutive models in the packed `x` binding (the chunk capacity C).
    pub stride: u32,
    /// 1: divide by `wsum`.
    pub normalize: u32,
    /// Σ_m w_m, summed in input order.
    pub wsum: f32,
    pub _pad: [u32; 3],
}

/// Options of [`weighted_sum`].
#[derive(Debug, Clone, Default)]
pub struct WeightedSumParams {
    /// Divide by Σ_m w_m (mergekit `linear`'s `normalize`, default true there).
    pub normalize: bool,
    /// Upper bound on the chunk capacity C in elements (None: as large as the device allows).
    /// Bounds GPU memory; tests use it to exercise the split path on small tensors.
    pub max_chunk_elems: Option<usize>,
}

/// Checks shapes; returns (M, N, Σw).
fn check(xs: &[&[f32]], w: &[f32], normalize: bool) -> Result<(usize, usize, f32), OpError> {
    if xs.is_empty() {
        return Err(OpError::shape(
            KERNEL,
            "needs at least one input tensor, got 0",
        ));
    }
    if xs.len() != w.len() {
        return Err(OpError::shape(
            KERNEL,
            format!("{} input tensors but {} weights", xs.len(), w.len()),
        ));
    }
    let n = xs[0].len();
    for (m, x) in xs.iter().enumerate() {
        if x.len() != n {
            return Err(OpError::shape(
                KERNEL,
                format!("input 0 has {n} elements but input {m} has {}", x.len()),
            ));
        }
    }
    // Σw in input order, in f32 like torch's `weight.sum()` on a short fp32 vector.
    let wsum = w.iter().fold(0.0f32, |a, &b| a + b);
    if normalize && wsum == 0.0 {
        return Err(OpError::shape(
            KERNEL,
            format!("normalize = true but the weights {w:?} sum to 0"),
        ));
    }
    Ok((xs.len(), n, wsum))
}

/// CPU reference on plain slices, mergekit's order: acc = 0; acc += x_m · w_m for m in order;
/// then acc / Σw if `normalize`.
pub fn reference(xs: &[&[f32]], w: &[f32], normalize: bool) -> Result<Vec<f32>, OpError> {
    let (_, n, wsum) = check(xs, w, normalize)?;
    let mut out = vec![0.0f32; n];
    for (x, &wm) in xs.iter().zip(w) {
        for (o, &v) in out.iter_mut().zip(x.iter()) {
            *o += v * wm;
        }
    }
    if normalize {
        for o in &mut out {
            *o /= wsum;
        }
    }
    Ok(out)
}

/// The chunk capacity C (elements per model per chunk) for M inputs of N elements.
pub fn chunk_capacity(
    ctx: &GpuContext,
    m: usize,
    n: usize,
    max_chunk_elems: Option<usize>,
) -> usize {
    let per_binding = (ctx.max_binding_bytes() / 4 / m.max(1) as u64) as usize;
    let mut c = per_binding.min(n).min(u32::MAX as usize);
    if let Some(cap) = max_chunk_elems {
        c = c.min(cap.max(1));
    }
    c.max(1)
}

/// Records one weighted-sum dispatch on GPU-resident buffers into `enc` (nothing is submitted).
/// w: (M) f32, x: (M, meta.stride) f32 with model m's `meta.n` elements at m·stride,
/// out: (meta.n) f32. Bindings may be ranges of larger (pooled) buffers.
pub fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    meta: &Meta,
    w: wgpu::BufferBinding<'_>,
    x: wgpu::BufferBinding<'_>,
    out: wgpu::BufferBinding<'_>,
) -> Result<(), OpError> {
    if meta.n > meta.stride && meta.m > 1 {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "chunk of n = {} elements exceeds the stride {}",
                meta.n, meta.stride
            ),
        ));
    }
    let grid = ctx
        .grid(KERNEL, (meta.n as u64).div_ceil(WORKGROUP_SIZE as u64))
        .op(KERNEL)?;
    record(ctx, enc, KERNEL, WGSL, meta, &[w, x, out], grid)
}

/// Runs the weighted sum on the GPU: uploads each chunk of the M inputs, dispatches, reads back.
/// Returns N values; the same as [`reference`] to a few ulps (see the module docs).
pub async fn weighted_sum(
    ctx: &GpuContext,
    xs: &[&[f32]],
    w: &[f32],
    params: &WeightedSumParams,
) -> Result<Vec<f32>, OpError> {
    let (m, n, wsum) = check(xs, w, params.normalize)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let c = chunk_capacity(ctx, m, n, params.max_chunk_elems);
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let w_buf = ctx.upload_f32("weighted_sum.w", w).op(KERNEL)?;
    let x_buf = ctx
        .buffer("weighted_sum.x", (m * c * 4) as u64, storage)
        .op(KERNEL)?;
    let out_buf = ctx
        .buffer(
            "weighted_sum.out",
            (c * 4) as u64,
            storage | wgpu::BufferUsages::COPY_SRC,
        )
        .op(KERNEL)?;

    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = c.min(n - start);
        for (k, x) in xs.iter().enumerate() {
            let bytes: &[u8] = bytemuck::cast_slice(&x[start..start + len]);
            ctx.queue.write_buffer(&x_buf, (k * c * 4) as u64, bytes);
        }
        let meta = Meta {
            n: len as u32,
            m: m as u32,
            stride: c as u32,
            normalize: params.normalize as u32,
            wsum,
            _pad: [0; 3],
        };
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(KERNEL),
            });
        encode(
            ctx,
            &mut enc,
            &meta,
            w_buf.binding((m * 4) as u64),
            x_buf.binding((m * c * 4) as u64),
            out_buf.binding((len * 4) as u64),
        )?;
        ctx.queue.submit([enc.finish()]);
        let part = ctx
            .read_f32("weighted_sum.out readback", &out_buf, 0, len)
            .await
            .op(KERNEL)?;
        out.extend_from_slice(&part);
        start += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_matches_hand_computed_values() {
        let a = [1.0f32, 2.0, -3.0];
        let b = [0.5f32, -1.0, 4.0];
        let out = reference(&[&a, &b], &[0.25, 0.75], false).unwrap();
        assert_eq!(out, vec![0.625, -0.25, 2.25]);
        // Normalising by Σw = 2 halves the plain sum.
        let out = reference(&[&a, &b], &[1.0, 1.0], true).unwrap();
        assert_eq!(out, vec![0.75, 0.5, 0.5]);
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let a = [1.0f32, 2.0];
        let b = [1.0f32];
        let e = reference(&[&a, &b], &[1.0, 1.0], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("input 0 has 2 elements but input 1 has 1"),
            "{e}"
        );
        let e = reference(&[&a], &[1.0, 2.0], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 input tensors but 2 weights"), "{e}");
        let e = reference(&[&a, &a], &[1.0, -1.0], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sum to 0"), "{e}");
    }
}
