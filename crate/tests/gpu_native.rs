//! GPU kernels against their CPU references, natively through wgpu (Vulkan: Mesa lavapipe on
//! machines without a GPU). A machine with no adapter FAILS these tests: install
//! `mesa-vulkan-drivers` (scripts/setup.sh does).
//!
//! Run: `XDG_RUNTIME_DIR=/tmp cargo test -p crucible --test gpu_native -- --nocapture`
//! (the env var only silences harmless loader warnings).
#![cfg(not(target_arch = "wasm32"))]

mod gpu_common;

use crucible::gpu::{GpuContext, GpuError};
use gpu_common::*;


/// A context on the default adapter whose device gets a *small* storage binding limit, to drive
/// the split paths with small tensors (the injected-device pattern: the test opens the device).
fn ctx_with_binding_limit(bytes: u64) -> GpuContext {
    pollster::block_on(async {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: bytes,
            max_buffer_size: bytes,
            ..adapter.limits()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("small-binding test device"),
                required_limits: limits,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("could not open a device with small limits: {e}"));
        let ctx = GpuContext::from_device(device, queue);
        assert_eq!(
            ctx.max_binding_bytes(),
            bytes,
            "the injected device keeps its limits"
        );
        ctx
    })
}

#[test]
fn adapter_is_found_and_reports_limits() {
    let ctx = ctx();
    assert!(ctx.limits.max_storage_buffer_binding_size >= 1 << 20);
    assert!(
        ctx.limits.max_compute_invocations_per_workgroup >= 256,
        "kernels use 256 threads"
    );
    assert!(
        !ctx.adapter_info.name.is_empty(),
        "adapter without a name: {:?}",
        ctx.adapter_info
    );
}

#[test]
fn weighted_sum_matches_reference() {
    let ctx = ctx();
    pollster::block_on(weighted_sum_cases(&ctx));
}

#[test]
fn rmsnorm_matches_reference() {
    let ctx = ctx();
    pollster::block_on(rmsnorm_cases(&ctx));
    pollster::block_on(rmsnorm_2d_grid(&ctx));
}

#[test]
fn matmul_matches_reference() {
    let ctx = ctx();
    pollster::block_on(matmul_cases(&ctx));
}

#[test]
fn matvec_matches_reference() {
    let ctx = ctx();
    pollster::block_on(matvec_cases(&ctx));
}

#[test]
fn ops_chain_on_gpu_resident_buffers() {
    let ctx = ctx();
    pollster::block_on(chained_rmsnorm_matmul(&ctx));
}

/// Prints the f32 matmul's throughput, end to end (upload + dispatch + readback) and kernel only,
/// next to the naive CPU reference: figures for the report, not assertions.
#[test]
fn matmul_throughput_report() {
    let ctx = ctx();
    let (m, n, k) = (256, 1536, 576);
    let a = data(1, m * k, 1.0);
    let b = data(2, n * k, 1.0);
    let p = crucible::ops::matmul::MatmulParams { m, n, k };
    for run in 0..2 {
        let t = std::time::Instant::now();
        let c = pollster::block_on(crucible::ops::matmul::matmul(&ctx, &a, &b, &p)).unwrap();
        let s = t.elapsed().as_secs_f64();
        assert_eq!(c.len(), m * n);
        println!(
            "matmul ({m}×{k})·({n}×{k})ᵀ run {run}: {:.1} ms, {:.2} GFLOP/s end to end on {}",
            s * 1e3,
            2.0 * (m * n * k) as f64 / s / 1e9,
            ctx.adapter_info.name
        );
    }
    // Kernel only: operands resident, 4 dispatches in one submit, one small readback.
    let a_buf = ctx.upload_f32("bench.a", &a).unwrap();
    let b_buf = ctx.upload_f32("bench.b", &b).unwrap();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let c_buf = ctx.buffer("bench.c", (m * n * 4) as u64, usage).unwrap();
    let meta = crucible::ops::matmul::Meta {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        _pad: 0,
    };
    let reps = 4;
    let t = std::time::Instant::now();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    for _ in 0..reps {
        crucible::ops::matmul::encode(
            &ctx,
            &mut enc,
            &meta,
            a_buf.binding((m * k * 4) as u64),
            b_buf.binding((n * k * 4) as u64),
            c_buf.binding((m * n * 4) as u64),
        )
        .unwrap();
    }
    ctx.queue.submit([enc.finish()]);
    pollster::block_on(ctx.read_f32("bench.c", &c_buf, 0, 1)).unwrap();
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "matmul kernel only: {:.1} ms per dispatch, {:.2} GFLOP/s",
        s * 1e3,
        2.0 * (m * n * k) as f64 / s / 1e9
    );
    let t = std::time::Instant::now();
    let c = crucible::ops::matmul::reference(&a, &b, &p).unwrap();
    let s = t.elapsed().as_secs_f64();
    assert_eq!(c.len(), m * n);
    println!(
        "matmul CPU reference (naive, 1 thread): {:.1} ms, {:.2} GFLOP/s",
        s * 1e3,
        2.0 * (m * n * k) as f64 / s / 1e9
    );
}

#[test]
fn split_paths_follow_the_device_binding_limit() {
    // 64 KiB bindings: 3 models × 100 003 floats need 19 chunks of 5461 elements per model;
    // 40 rows of 1000 floats need 3 chunks of 16 rows.
    let ctx = ctx_with_binding_limit(64 << 10);
    pollster::block_on(async {
        check_weighted_sum(&ctx, 100_003, &[0.5, 0.25, 0.25], true, None).await;
        check_rmsnorm(&ctx, 40, 1000, None).await;
    });
    let e = pollster::block_on(crucible::ops::rmsnorm::rmsnorm(
        &ctx,
        &vec![1.0; 20_000],
        &vec![1.0; 20_000],
        &crucible::ops::rmsnorm::RmsNormParams {
            d: 20_000,
            eps: 1e-5,
            max_chunk_rows: None,
        },
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("exceeds the storage binding limit"), "{e}");
}

#[test]
fn weighted_sum_beyond_one_binding_and_one_grid_dimension() {
    let ctx = ctx();
    let n = 65_535 * 256 + 340;
    // One model: 67 MB fits one binding, but ⌈n / 256⌉ = 65 537 workgroups need the 2-D grid.
    assert_eq!(
        crucible::ops::weighted_sum::chunk_capacity(&ctx, 1, n, None),
        n.min((ctx.max_binding_bytes() / 4) as usize)
    );
    pollster::block_on(weighted_sum_2d_grid(&ctx));
    // Three models: 201 MB > lavapipe's 128 MiB binding, so at least 2 chunks.
    let c = crucible::ops::weighted_sum::chunk_capacity(&ctx, 3, n, None);
    println!(
        "3 models: chunk capacity {c} elements per model → {} chunks",
        n.div_ceil(c)
    );
    pollster::block_on(check_weighted_sum(&ctx, n, &[0.3, 0.3, 0.4], false, None));
}

#[test]
fn shader_errors_are_values_not_panics() {
    let ctx = ctx();
    match ctx.pipeline("broken_kernel", "this is not WGSL") {
        Err(GpuError::Shader { kernel, message }) => {
            assert_eq!(kernel, "broken_kernel");
            assert!(!message.is_empty());
        }
        Err(e) => panic!("expected a Shader error, got {e}"),
        Ok(_) => panic!("invalid WGSL compiled"),
    }
    // The context stays usable afterwards.
    pollster::block_on(check_weighted_sum(&ctx, 5, &[1.0, 2.0], false, None));
}

#[test]
fn buffer_pool_reuses_buffers_across_calls() {
    let ctx = ctx();
    pollster::block_on(check_weighted_sum(&ctx, 3000, &[1.0, 1.0], true, None));
    let after_first = ctx.pool_stats();
    pollster::block_on(check_weighted_sum(&ctx, 2900, &[1.0, 1.0], true, None));
    let after_second = ctx.pool_stats();
    // Same labels and size classes: the second call creates nothing new.
    assert_eq!(
        after_second.created, after_first.created,
        "{after_first:?} → {after_second:?}"
    );
    assert!(after_second.reused > after_first.reused);
}

#[test]
fn qmatvec_matches_reference() {
    let ctx = ctx();
    pollster::block_on(qmatvec_cases(&ctx));
    pollster::block_on(qmatvec_vs_dequantized_matmul(&ctx));
}

/// More workgroups than one grid dimension holds: 65 535 · 8 + 5 rows need ⌈N / 8⌉ = 65 536
/// workgroups of 8 rows (the 2-D grid).
#[test]
fn qmatvec_on_a_2d_grid() {
    let ctx = ctx();
    pollster::block_on(check_qmatvec(
        &ctx,
        crucible::tensor::quant::BlockFormat::Q4_0,
        65_535 * 8 + 5,
        32,
        None,
    ));
}

/// Prints qmatvec's Q4_1 throughput on the adapter (kernel only: weights resident, GB/s of the
/// split-layout weight bytes read: 24 bytes per 32 weights) next to the CPU reference: figures
/// for the report, not assertions.
#[test]
fn qmatvec_throughput_report() {
    use crucible::ops::qmatvec;
    use crucible::tensor::quant::BlockFormat;
    let ctx = ctx();
    for (n, k) in [(1536usize, 576usize), (49_152, 576)] {
        let (w, _) = quantized_weight(BlockFormat::Q4_1, n, k, 9);
        let x = data(10, k, 1.0);
        let nb = n * k / 32;
        let weight_bytes = (nb * (4 + 4 + 16)) as f64;
        let x_buf = ctx.upload_f32("bench.qx", &x).unwrap();
        let s_buf = ctx.upload_f32("bench.qscales", &w.scales).unwrap();
        let m_buf = ctx
            .upload_f32("bench.qmins", w.mins.as_ref().unwrap())
            .unwrap();
        let q_buf = ctx
            .upload_f32("bench.qqs", bytemuck::cast_slice(&w.qs))
            .unwrap();
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let y_buf = ctx.buffer("bench.qy", (n * 4) as u64, usage).unwrap();
        let meta = qmatvec::Meta {
            rows: n as u32,
            k: k as u32,
            format: qmatvec::format_code(BlockFormat::Q4_1),
            _pad: 0,
        };
        let run = |reps: usize| {
            let t = std::time::Instant::now();
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            for _ in 0..reps {
                qmatvec::encode(
                    &ctx,
                    &mut enc,
                    &meta,
                    s_buf.binding((nb * 4) as u64),
                    m_buf.binding((nb * 4) as u64),
                    q_buf.binding((nb * 16) as u64),
                    x_buf.binding((k * 4) as u64),
                    y_buf.binding((n * 4) as u64),
                )
                .unwrap();
            }
            ctx.queue.submit([enc.finish()]);
            pollster::block_on(ctx.read_f32("bench.qy", &y_buf, 0, 1)).unwrap();
            t.elapsed().as_secs_f64() / reps as f64
        };
        run(1); // warm-up: pipeline and first use
        let reps = 8;
        let s = run(reps);
        let t = std::time::Instant::now();
        let y = qmatvec::reference(&w, n, k, &x).unwrap();
        let cpu = t.elapsed().as_secs_f64();
        assert_eq!(y.len(), n);
        println!(
            "qmatvec Q4_1 ({n}×{k}) on {}: {:.3} ms per dispatch, {:.2} GB/s of weights \
             ({:.1} MB); CPU reference (1 thread, this build): {:.3} ms, {:.2} GB/s",
            ctx.adapter_info.name,
            s * 1e3,
            weight_bytes / s / 1e9,
            weight_bytes / 1e6,
            cpu * 1e3,
            weight_bytes / cpu / 1e9
        );
    }
}

/// 16 KiB bindings: a Q8_0 row of K = 576 has 144 quant words (576 bytes), so 28 rows per chunk
/// and 1536 rows take 55 chunks; an x of 8192 floats (32 KiB) cannot be bound at all.
#[test]
fn qmatvec_splits_rows_by_the_device_binding_limit() {
    use crucible::ops::qmatvec;
    use crucible::tensor::quant::BlockFormat;
    let ctx = ctx_with_binding_limit(16 << 10);
    assert_eq!(
        qmatvec::chunk_rows(&ctx, BlockFormat::Q8_0, 1536, 576, None),
        28
    );
    pollster::block_on(check_qmatvec(&ctx, BlockFormat::Q8_0, 1536, 576, None));
    pollster::block_on(check_qmatvec(&ctx, BlockFormat::Q4_1, 301, 576, None));
    let (w, _) = quantized_weight(BlockFormat::Q4_0, 2, 8192, 5);
    let p = qmatvec::QMatvecParams {
        n: 2,
        k: 8192,
        max_chunk_rows: None,
    };
    let e = pollster::block_on(qmatvec::qmatvec(&ctx, &w, &vec![1.0; 8192], &p))
        .unwrap_err()
        .to_string();
    assert!(e.contains("qmatvec.x") && e.contains("16384"), "{e}");
}
