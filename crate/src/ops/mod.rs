//! GPU ops: one file per op, each holding its params, the `#[repr(C)]` Meta struct mirroring
//! the WGSL `Meta` in `shaders/NAME.wgsl`, shape checks, the dispatch (taking a
//! [`GpuContext`](crate::gpu::GpuContext)) and `reference(...)`: the readable CPU version on
//! plain slices that the GPU result is tested against (crate/tests/gpu_native.rs natively on
//! lavapipe, crate/tests/gpu_web.rs in Chromium).

/// WGSL shared by the kernels that read GGUF quant blocks, prepended by the host (WGSL has no
/// includes): `i8x4` / `u4x4` word unpacking (qmatvec, qmatmul, qmatvec_id).
pub const QUANT_DECODE: &str = include_str!("../../../shaders/quant_decode.wgsl");
/// `quant_row_dot`, a thread's share of a quantized row · x (qmatvec, qmatvec_id), after
/// [`QUANT_DECODE`].
pub const QUANT_ROW_DOT: &str = include_str!("../../../shaders/quant_row_dot.wgsl");

pub mod add;
pub mod attention;
pub mod embed;
pub mod hmatmul;
pub mod hmatvec;
pub mod matmul;
pub mod matvec;
pub mod moe;
pub mod qmatmul;
pub mod qmatvec;
pub mod qmatvec_id;
pub mod rmsnorm;
pub mod rope;
pub mod router;
pub mod swiglu;
pub mod weighted_sum;

use crate::gpu::GpuError;

/// Errors of the GPU ops: bad shapes (named by op and operand) or a GPU failure.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },
    #[error("{op}: {source}")]
    Gpu {
        op: &'static str,
        #[source]
        source: GpuError,
    },
}

impl OpError {
    pub(crate) fn shape(op: &'static str, message: impl Into<String>) -> OpError {
        OpError::Shape {
            op,
            message: message.into(),
        }
    }
}

/// Attaches the op name to a [`GpuError`].
pub(crate) trait GpuResultExt<T> {
    fn op(self, op: &'static str) -> Result<T, OpError>;
}

impl<T> GpuResultExt<T> for Result<T, GpuError> {
    fn op(self, op: &'static str) -> Result<T, OpError> {
        self.map_err(|source| OpError::Gpu { op, source })
    }
}

/// Records one dispatch of `kernel` into `encoder` (nothing is submitted): the cached pipeline,
/// `meta` as a uniform at binding 0, then `buffers` at bindings 1.., over an (x, y) grid.
/// Every op's `encode` ends here, so labels follow one scheme: `KERNEL.meta`, `KERNEL.bind`.
/// Bind groups are reused across calls where the context enables it (`enable_bind_cache`).
pub(crate) fn record<M: bytemuck::Pod>(
    ctx: &crate::gpu::GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    kernel: &'static str,
    wgsl: &str,
    meta: &M,
    buffers: &[wgpu::BufferBinding<'_>],
    grid: (u32, u32),
) -> Result<(), OpError> {
    let pipeline = ctx.pipeline(kernel, wgsl).op(kernel)?;
    // A new Meta uniform + bind group, or a cached one when the context caches them
    // (GpuContext::enable_bind_cache: same kernel, Meta bytes and bindings).
    let bind = ctx.meta_bind_group(kernel, &pipeline, bytemuck::bytes_of(meta), buffers);
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(kernel),
        timestamp_writes: None,
    });
    pass.set_pipeline(&pipeline);
    pass.set_bind_group(0, &bind, &[]);
    pass.dispatch_workgroups(grid.0, grid.1, 1);
    Ok(())
}
