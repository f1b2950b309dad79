//! Kernel-vs-reference checks shared by crate/tests/gpu_native.rs (lavapipe) and
//! crate/tests/gpu_web.rs (Chromium + SwiftShader through `navigator.gpu`).
//!
//! Each check runs a GPU op on seeded pseudo-random data, runs its CPU `reference` on the same
//! slices, and asserts every element within a tolerance derived from the arithmetic (written
//! next to the assertion). A mismatch panics with the op, shape, index and both values.

#![allow(dead_code)]

use crucible::gpu::GpuContext;
use crucible::ops::{matmul, matvec, rmsnorm, weighted_sum};

/// The default GPU context for a native test (lavapipe where there is no GPU), or a failing test
/// that says why: GPU tests never skip.
#[cfg(not(target_arch = "wasm32"))]
pub fn ctx() -> GpuContext {
    let ctx = pollster::block_on(GpuContext::new_default()).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    println!("adapter: {}", ctx.adapter_summary());
    ctx
}

/// The default GPU context for a browser test (`navigator.gpu`, SwiftShader where there is no
/// GPU), or a failing test that says why.
#[cfg(target_arch = "wasm32")]
pub async fn ctx() -> GpuContext {
    let ctx = GpuContext::new_default().await.unwrap_or_else(|e| panic!("GPU tests need a WebGPU adapter: {e}"));
    wasm_bindgen_test::console_log!("adapter: {}", ctx.adapter_summary());
    ctx
}

/// f32 machine epsilon (2⁻²³).
pub const EPS: f64 = f32::EPSILON as f64;

/// Deterministic data: splitmix64 → uniform in [-scale, scale).
pub fn data(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            (2.0 * u - 1.0) * scale
        })
        .collect()
}

/// weighted_sum on (M, N) inputs with the given weights, against the reference.
pub async fn check_weighted_sum(
    ctx: &GpuContext,
    n: usize,
    w: &[f32],
    normalize: bool,
    max_chunk_elems: Option<usize>,
) {
    let m = w.len();
    let xs: Vec<Vec<f32>> = (0..m)
        .map(|k| data(1000 + k as u64 + n as u64, n, 2.0))
        .collect();
    let refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
    let params = weighted_sum::WeightedSumParams {
        normalize,
        max_chunk_elems,
    };
    let gpu = weighted_sum::weighted_sum(ctx, &refs, w, &params)
        .await
        .unwrap_or_else(|e| panic!("weighted_sum (M={m}, N={n}) failed on the GPU: {e}"));
    let cpu = weighted_sum::reference(&refs, w, normalize).unwrap();
    assert_eq!(gpu.len(), n, "weighted_sum (M={m}, N={n}): output length");
    let wsum: f64 = w.iter().map(|&v| v as f64).sum();
    let denom = if normalize { wsum.abs() } else { 1.0 };
    for i in 0..n {
        let s: f64 = (0..m).map(|k| (w[k] as f64 * xs[k][i] as f64).abs()).sum();
        // Tolerance: each of the M steps of acc += w·x rounds (or is fused into an FMA) on
        // either side: ≤ 2(M+1)·ε·Σ|w·x|; WGSL division is accurate to 2.5 ulp: + 3ε·|out|.
        let tol =
            2.0 * (m as f64 + 1.0) * EPS * s / denom + 3.0 * EPS * (cpu[i] as f64).abs() + 1e-30;
        let diff = (gpu[i] as f64 - cpu[i] as f64).abs();
        assert!(
            diff <= tol,
            "weighted_sum (M={m}, N={n}, normalize={normalize}) at {i}: gpu {} cpu {} |diff| {diff:e} > tol {tol:e}",
            gpu[i],
            cpu[i]
        );
    }
}

/// rmsnorm on x: (T, d), against the reference.
pub async fn check_rmsnorm(ctx: &GpuContext, t: usize, d: usize, max_chunk_rows: Option<usize>) {
    let x = data(7 + (t * 31 + d) as u64, t * d, 3.0);
    let w = data(99 + d as u64, d, 1.5);
    let p = rmsnorm::RmsNormParams {
        d,
        eps: 1e-5,
        max_chunk_rows,
    };
    let gpu = rmsnorm::rmsnorm(ctx, &x, &w, &p)
        .await
        .unwrap_or_else(|e| panic!("rmsnorm (T={t}, d={d}) failed on the GPU: {e}"));
    let cpu = rmsnorm::reference(&x, &w, &p).unwrap();
    assert_eq!(gpu.len(), t * d, "rmsnorm (T={t}, d={d}): output length");
    for i in 0..t * d {
        // Tolerance 1e-5 relative: the f32 tree sum of x² is off by ≤ (d/256 + 8)·ε relative
        // (≈ 3e-6 at d = 4101; halved by the square root), inverseSqrt ≤ 2 ulp, two products
        // 1 ulp each. A wrong row, column or reduction gives O(1) errors.
        let tol = 1e-5 * (cpu[i] as f64).abs() + 1e-7;
        let diff = (gpu[i] as f64 - cpu[i] as f64).abs();
        assert!(
            diff <= tol,
            "rmsnorm (T={t}, d={d}) at row {} col {}: gpu {} cpu {} |diff| {diff:e} > tol {tol:e}",
            i / d,
            i % d,
            gpu[i],
            cpu[i]
        );
    }
}

/// The shapes every backend runs: odd sizes, one element, several chunks, > 65535 workgroups.
pub async fn weighted_sum_cases(ctx: &GpuContext) {
    check_weighted_sum(ctx, 1, &[0.7], false, None).await;
    check_weighted_sum(ctx, 7, &[0.25, 0.75], true, None).await;
    check_weighted_sum(ctx, 1000, &[1.0, -1.0, 0.5], false, None).await; // task arithmetic style
    check_weighted_sum(ctx, 65_536 + 3, &[0.1, 0.2, 0.3, 0.4, 0.5], true, None).await;
    // Split path: chunks of 4097 elements per model (13 chunks, the last one short).
    check_weighted_sum(ctx, 50_001, &[2.0, -0.5, 0.25], true, Some(4097)).await;
}

pub async fn rmsnorm_cases(ctx: &GpuContext) {
    check_rmsnorm(ctx, 1, 1, None).await;
    check_rmsnorm(ctx, 3, 7, None).await;
    check_rmsnorm(ctx, 5, 576, None).await; // SmolLM2 hidden size
    check_rmsnorm(ctx, 2, 4096 + 5, None).await;
    check_rmsnorm(ctx, 17, 300, Some(4)).await; // split path: 5 chunks of ≤ 4 rows
}

/// More than 65535 workgroups: the 2-D grid. One model of 65535·256 + 340 floats (67 MB, one
/// binding everywhere) needs ⌈n / 256⌉ = 65 537 workgroups.
pub async fn weighted_sum_2d_grid(ctx: &GpuContext) {
    check_weighted_sum(ctx, 65_535 * 256 + 340, &[0.3], false, None).await;
}

/// More rows than one grid dimension holds. Slow on SwiftShader (≈ 50 s: workgroup barriers are
/// costly there), so only the native tests run it; the browser covers the 2-D grid with
/// [`weighted_sum_2d_grid`].
pub async fn rmsnorm_2d_grid(ctx: &GpuContext) {
    check_rmsnorm(ctx, 70_000, 3, None).await;
}

/// matmul C = A · Bᵀ with A: (M, K), B: (N, K), against the reference.
pub async fn check_matmul(ctx: &GpuContext, m: usize, n: usize, k: usize) {
    let a = data(5 + (m * 7 + k) as u64, m * k, 1.0);
    let b = data(11 + (n * 13 + k) as u64, n * k, 1.0);
    let p = matmul::MatmulParams { m, n, k };
    let gpu = matmul::matmul(ctx, &a, &b, &p)
        .await
        .unwrap_or_else(|e| panic!("matmul (M={m}, N={n}, K={k}) failed on the GPU: {e}"));
    let cpu = matmul::reference(&a, &b, &p).unwrap();
    assert_eq!(
        gpu.len(),
        m * n,
        "matmul (M={m}, N={n}, K={k}): output length"
    );
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|t| (a[i * k + t] as f64 * b[j * k + t] as f64).abs())
                .sum();
            // Tolerance: both sum in k order; each step may round (or fuse) differently on
            // either side: |diff| ≤ 2·K·ε·Σ_k |A[i,k]·B[j,k]| (the classic γ_K bound, doubled).
            let tol = 2.0 * k as f64 * EPS * s + 1e-30;
            let (g, c) = (gpu[i * n + j], cpu[i * n + j]);
            let diff = (g as f64 - c as f64).abs();
            assert!(
                diff <= tol,
                "matmul (M={m}, N={n}, K={k}) at C[{i}, {j}]: gpu {g} cpu {c} |diff| {diff:e} > tol {tol:e}"
            );
        }
    }
}

/// Odd shapes (partial tiles in every direction, K not a multiple of 16) and a Linear-layer
/// shape of SmolLM2 (a few tokens through the 576 → 1536 up-projection).
pub async fn matmul_cases(ctx: &GpuContext) {
    check_matmul(ctx, 1, 1, 1).await;
    check_matmul(ctx, 3, 5, 7).await;
    check_matmul(ctx, 64, 64, 16).await;
    check_matmul(ctx, 65, 130, 33).await;
    check_matmul(ctx, 7, 1536, 576).await;
}

/// matvec (f32 weights, decode) against its reference over odd row counts, a K of 4, SmolLM2's
/// shapes, and chunked weights (a row cap that is not a multiple of the 8 rows per workgroup).
pub async fn matvec_cases(ctx: &GpuContext) {
    for (case, &(n, k, cap)) in [(1usize, 4usize, None), (37, 576, None), (1536, 576, None), (130, 1536, Some(60usize)), (9, 12, Some(4))].iter().enumerate() {
        let w = data(40 + case as u64, n * k, 1.0);
        let x = data(90 + case as u64, k, 1.5);
        let p = matvec::MatvecParams { n, k, max_chunk_rows: cap };
        let want = matvec::reference(&w, n, k, &x).unwrap();
        let got = matvec::matvec(ctx, &w, &x, &p).await.unwrap_or_else(|e| panic!("matvec (N={n}, K={k}) failed on the GPU: {e}"));
        assert_eq!(got.len(), n, "matvec (N={n}, K={k}): output length");
        for r in 0..n {
            let s: f64 = (0..k).map(|j| (w[r * k + j] as f64 * x[j] as f64).abs()).sum();
            // Tolerance: both sum K products in f32 in different orders (column order; vec4
            // partials then a tree), either may fuse: |diff| ≤ 2·K·ε·Σ_j |W[r,j]·x[j]|.
            let tol = 2.0 * k as f64 * EPS * s + 1e-30;
            let diff = (got[r] as f64 - want[r] as f64).abs();
            assert!(diff <= tol, "matvec (N={n}, K={k}, cap {cap:?}) row {r}: gpu {} cpu {} |diff| {diff:e} > tol {tol:e}", got[r], want[r]);
        }
    }
    let e = matvec::matvec(ctx, &[0.0; 12], &[0.0; 6], &matvec::MatvecParams { n: 2, k: 6, max_chunk_rows: None }).await.unwrap_err().to_string();
    assert!(e.contains("K = 6 must be a positive multiple of 4"), "{e}");
}

/// GPU-resident chaining, as a forward pass does it: RMSNorm then a Linear projection recorded
/// into ONE encoder through the ops' `encode` functions, one submit, one readback.
/// x: (T, d) → h = rmsnorm(x) · w_norm: (T, d) → y = h · Wᵀ: (T, N).
pub async fn chained_rmsnorm_matmul(ctx: &GpuContext) {
    let (t, d, n) = (5usize, 576usize, 100usize);
    let x = data(21, t * d, 2.0);
    let w_norm = data(22, d, 1.0);
    let w = data(23, n * d, 0.5);
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let x_buf = ctx.upload_f32("chain.x", &x).unwrap();
    let wn_buf = ctx.upload_f32("chain.w_norm", &w_norm).unwrap();
    let w_buf = ctx.upload_f32("chain.w", &w).unwrap();
    let h_buf = ctx.buffer("chain.h", (t * d * 4) as u64, usage).unwrap();
    let y_buf = ctx.buffer("chain.y", (t * n * 4) as u64, usage).unwrap();
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("chain"),
        });
    let norm_meta = rmsnorm::Meta {
        rows: t as u32,
        d: d as u32,
        eps: 1e-5,
        _pad: 0,
    };
    rmsnorm::encode(
        ctx,
        &mut enc,
        &norm_meta,
        x_buf.binding((t * d * 4) as u64),
        wn_buf.binding((d * 4) as u64),
        h_buf.binding((t * d * 4) as u64),
    )
    .unwrap();
    let mm_meta = matmul::Meta {
        m: t as u32,
        n: n as u32,
        k: d as u32,
        _pad: 0,
    };
    matmul::encode(
        ctx,
        &mut enc,
        &mm_meta,
        h_buf.binding((t * d * 4) as u64),
        w_buf.binding((n * d * 4) as u64),
        y_buf.binding((t * n * 4) as u64),
    )
    .unwrap();
    ctx.queue.submit([enc.finish()]);
    let y = ctx
        .read_f32("chain.y readback", &y_buf, 0, t * n)
        .await
        .unwrap();

    let p = rmsnorm::RmsNormParams {
        d,
        eps: 1e-5,
        max_chunk_rows: None,
    };
    let h = rmsnorm::reference(&x, &w_norm, &p).unwrap();
    let y_ref = matmul::reference(&h, &w, &matmul::MatmulParams { m: t, n, k: d }).unwrap();
    for i in 0..t {
        for j in 0..n {
            let s: f64 = (0..d)
                .map(|k| (h[i * d + k] as f64 * w[j * d + k] as f64).abs())
                .sum();
            // Tolerance: h carries the RMSNorm error (≤ 1e-5 relative, see check_rmsnorm), which
            // moves y by ≤ 1e-5·Σ|h·W|; the product adds ≤ 2·d·ε·Σ|h·W| (see check_matmul).
            let tol = (1e-5 + 2.0 * d as f64 * EPS) * s;
            let diff = (y[i * n + j] as f64 - y_ref[i * n + j] as f64).abs();
            assert!(
                diff <= tol,
                "rmsnorm→matmul chain at y[{i}, {j}]: gpu {} cpu {} |diff| {diff:e} > tol {tol:e}",
                y[i * n + j],
                y_ref[i * n + j]
            );
        }
    }
}

/// Random (n, k) weights quantized to `format` with llama.cpp's reference quantizer, in the split
/// layout, and their dequantized f32 values (n · k).
pub fn quantized_weight(
    format: crucible::tensor::quant::BlockFormat,
    n: usize,
    k: usize,
    seed: u64,
) -> (crucible::tensor::quant::SplitBlocks, Vec<f32>) {
    use crucible::tensor::quant::{SplitBlocks, quantize};
    let w = data(seed, n * k, 1.0);
    let mut bytes = Vec::new();
    quantize(format, &w, &mut bytes).unwrap();
    let split = SplitBlocks::from_blocks(format, &bytes).unwrap();
    let mut deq = Vec::with_capacity(n * k);
    split.dequantize(&mut deq).unwrap();
    (split, deq)
}

/// qmatvec y = W · x for W: (N, K) quantized to `format`, against the CPU reference.
pub async fn check_qmatvec(
    ctx: &GpuContext,
    format: crucible::tensor::quant::BlockFormat,
    n: usize,
    k: usize,
    max_chunk_rows: Option<usize>,
) {
    use crucible::ops::qmatvec;
    let (w, deq) = quantized_weight(format, n, k, 31 + (n * 3 + k) as u64);
    let x = data(77 + k as u64, k, 2.0);
    let p = qmatvec::QMatvecParams {
        n,
        k,
        max_chunk_rows,
    };
    let gpu = qmatvec::qmatvec(ctx, &w, &x, &p)
        .await
        .unwrap_or_else(|e| panic!("qmatvec {format} (N={n}, K={k}) failed on the GPU: {e}"));
    let cpu = qmatvec::reference(&w, n, k, &x).unwrap();
    assert_eq!(
        gpu.len(),
        n,
        "qmatvec {format} (N={n}, K={k}): output length"
    );
    for r in 0..n {
        let s: f64 = (0..k)
            .map(|j| (deq[r * k + j] as f64 * x[j] as f64).abs())
            .sum();
        // Tolerance: both sides sum the K products in f32, in different orders (sequential vs
        // per-thread vec4 dots and a tree): each |error| ≤ (K − 1)·ε·Σ|w·x| after the products'
        // own rounding (ε each); the GPU may also fuse d·q + m (one rounding of w, ε·|w·x|).
        // So |diff| ≤ (2K + 4)·ε·Σ|w·x|. A wrong block, nibble, scale or row gives O(1) errors.
        let tol = (2.0 * k as f64 + 4.0) * EPS * s + 1e-30;
        let diff = (gpu[r] as f64 - cpu[r] as f64).abs();
        assert!(
            diff <= tol,
            "qmatvec {format} (N={n}, K={k}) at y[{r}]: gpu {} cpu {} |diff| {diff:e} > tol {tol:e}",
            gpu[r],
            cpu[r]
        );
    }
}

/// Every format on SmolLM2's projection shapes (576 → 576, 576 → 1536, 1536 → 576), an odd N and
/// the smallest matrix.
pub async fn qmatvec_cases(ctx: &GpuContext) {
    for f in crucible::tensor::quant::BlockFormat::ALL {
        check_qmatvec(ctx, f, 1, 32, None).await;
        check_qmatvec(ctx, f, 257, 96, None).await;
        check_qmatvec(ctx, f, 576, 576, None).await;
        check_qmatvec(ctx, f, 1536, 576, None).await;
        check_qmatvec(ctx, f, 576, 1536, None).await;
    }
    // Split path: 257 rows in chunks of 100 (3 chunks, the last one short).
    check_qmatvec(
        ctx,
        crucible::tensor::quant::BlockFormat::Q4_1,
        257,
        64,
        Some(100),
    )
    .await;
}

/// qmatvec against the f32 path: dequantize W on the CPU, then the existing GPU matmul with
/// A = x: (1, K), B = W: (N, K). Both sum the same f32 products in different orders.
pub async fn qmatvec_vs_dequantized_matmul(ctx: &GpuContext) {
    use crucible::ops::qmatvec;
    let (n, k) = (1536usize, 576usize);
    for f in crucible::tensor::quant::BlockFormat::ALL {
        let (w, deq) = quantized_weight(f, n, k, 4242);
        let x = data(4343, k, 1.0);
        let q = qmatvec::qmatvec(
            ctx,
            &w,
            &x,
            &qmatvec::QMatvecParams {
                n,
                k,
                max_chunk_rows: None,
            },
        )
        .await
        .unwrap();
        let mm = matmul::matmul(ctx, &x, &deq, &matmul::MatmulParams { m: 1, n, k })
            .await
            .unwrap();
        for r in 0..n {
            let s: f64 = (0..k)
                .map(|j| (deq[r * k + j] as f64 * x[j] as f64).abs())
                .sum();
            // Same bound as check_qmatvec: two f32 sums of the same K products, any order.
            let tol = (2.0 * k as f64 + 4.0) * EPS * s + 1e-30;
            let diff = (q[r] as f64 - mm[r] as f64).abs();
            assert!(
                diff <= tol,
                "qmatvec {f} vs dequantize+matmul (N={n}, K={k}) at y[{r}]: {} vs {} |diff| {diff:e} > tol {tol:e}",
                q[r],
                mm[r]
            );
        }
    }
}
