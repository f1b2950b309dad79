//! `matmul`: C = A · Bᵀ in f32, A: (M, K), B: (N, K), C: (M, N): activations times the weight of
//! a Linear layer stored as (out_features, in_features), as `torch.nn.functional.linear` and HF
//! transformers' `nn.Linear` compute `y = x Wᵀ`. The f32 baseline the quantized products of
//! issue 4 are measured against.
//!
//! Kernel: shaders/matmul.wgsl, 64 × 64 output tiles per 256-thread workgroup, 4 × 4 outputs per
//! thread from 64 × 16 slices of A and B staged in workgroup memory. The k order is 0..K-1 in
//! both the kernel and the reference, so they differ only where the GPU fuses a multiply-add.
//!
//! Limits: A, B and C must each fit one storage binding (`max_storage_buffer_binding_size`,
//! 128 MiB on lavapipe and many GPUs): larger operands are an error naming the operand; and
//! ⌈M / 64⌉, ⌈N / 64⌉ must not exceed `max_compute_workgroups_per_dimension`.

use crate::gpu::{GpuContext, GpuError};

use super::{GpuResultExt, OpError, record};

pub const KERNEL: &str = "matmul";
pub const WGSL: &str = include_str!("../../../shaders/matmul.wgsl");
/// Output tile edge per workgroup (`TILE` in the shader).
pub const TILE: u32 = 64;

/// Mirrors `struct Meta` in shaders/matmul.wgsl (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Meta {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub _pad: u32,
}

/// Shapes of C = A · Bᵀ: A (m, k), B (n, k), C (m, n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulParams {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

fn check(a: &[f32], b: &[f32], p: &MatmulParams) -> Result<(), OpError> {
    let MatmulParams { m, n, k } = *p;
    if a.len() != m * k {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "A has {} elements, expected (M={m}) × (K={k}) = {}",
                a.len(),
                m * k
            ),
        ));
    }
    if b.len() != n * k {
        return Err(OpError::shape(
            KERNEL,
            format!(
                "B has {} elements, expected (N={n}) × (K={k}) = {}",
                b.len(),
                n * k
            ),
        ));
    }
    for (name, v) in [("M", m), ("N", n), ("K", k)] {
        if v > u32::MAX as usize {
            return Err(OpError::shape(
                KERNEL,
                format!("{name} = {v} does not fit u32"),
            ));
        }
    }
    Ok(())
}

/// CPU reference: C[i, j] = Σ_{k=0}^{K-1} A[i, k] · B[j, k], summed in f32 in k order.
pub fn reference(a: &[f32], b: &[f32], p: &MatmulParams) -> Result<Vec<f32>, OpError> {
    check(a, b, p)?;
    let MatmulParams { m, n, k } = *p;
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        let a_row = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let b_row = &b[j * k..(j + 1) * k];
            let mut s = 0.0f32;
            for (x, y) in a_row.iter().zip(b_row) {
                s += x * y;
            }
            c[i * n + j] = s;
        }
    }
    Ok(c)
}

/// Records one C = A · Bᵀ dispatch on GPU-resident buffers into `enc` (nothing is submitted).
/// a: (meta.m, meta.k), b: (meta.n, meta.k), c: (meta.m, meta.n), all f32 row-major.
pub fn encode(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    meta: &Meta,
    a: wgpu::BufferBinding<'_>,
    b: wgpu::BufferBinding<'_>,
    c: wgpu::BufferBinding<'_>,
) -> Result<(), OpError> {
    let max = ctx.limits.max_compute_workgroups_per_dimension;
    let (gx, gy) = (
        (meta.n as u64).div_ceil(TILE as u64),
        (meta.m as u64).div_ceil(TILE as u64),
    );
    if gx > max as u64 || gy > max as u64 {
        return Err(OpError::Gpu {
            op: KERNEL,
            source: GpuError::DispatchTooLarge {
                kernel: KERNEL.into(),
                groups: gx.max(gy),
                max,
            },
        });
    }
    record(ctx, enc, KERNEL, WGSL, meta, &[a, b, c], (gx as u32, gy as u32))
}

/// C = A · Bᵀ on the GPU (upload, one dispatch, readback).
pub async fn matmul(
    ctx: &GpuContext,
    a: &[f32],
    b: &[f32],
    p: &MatmulParams,
) -> Result<Vec<f32>, OpError> {
    check(a, b, p)?;
    let MatmulParams { m, n, k } = *p;
    if m == 0 || n == 0 {
        return Ok(Vec::new());
    }
    if k == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let a_buf = ctx.upload_f32("matmul.a", a).op(KERNEL)?;
    let b_buf = ctx.upload_f32("matmul.b", b).op(KERNEL)?;
    let c_bytes = (m * n * 4) as u64;
    let c_buf = ctx
        .buffer(
            "matmul.c",
            c_bytes,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        )
        .op(KERNEL)?;
    let meta = Meta {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        _pad: 0,
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
        a_buf.binding((m * k * 4) as u64),
        b_buf.binding((n * k * 4) as u64),
        c_buf.binding(c_bytes),
    )?;
    ctx.queue.submit([enc.finish()]);
    ctx.read_f32("matmul.c readback", &c_buf, 0, m * n)
        .await
        .op(KERNEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_a_times_b_transposed() {
        // A (2, 3), B (2, 3): C = A Bᵀ (2, 2).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let c = reference(&a, &b, &MatmulParams { m: 2, n: 2, k: 3 }).unwrap();
        assert_eq!(c, vec![-2.0, 3.0, -2.0, 7.5]);
    }

    #[test]
    fn shape_errors_name_the_operand() {
        let e = reference(&[0.0; 5], &[0.0; 6], &MatmulParams { m: 2, n: 2, k: 3 })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("A has 5 elements, expected (M=2) × (K=3) = 6"),
            "{e}"
        );
    }
}
