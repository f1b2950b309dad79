//! Kernel throughput of Crucible's matrix products against burn's wgpu matmul on the same adapter
//! (issue 4, "Benchmarks"). A benchmark, not a test: it prints figures and writes JSON.
//!
//! Peer: burn 0.22.1 (https://github.com/tracel-ai/burn, `burn-wgpu` over CubeCL 0.11's
//! `cubecl-matmul`, autotuned), `Tensor::matmul`. Ours: `crucible::ops::matmul` (shaders/matmul.wgsl,
//! 64 × 64 tiles), `crucible::ops::qmatmul` and `crucible::ops::qmatvec` (shaders/qmatmul.wgsl,
//! shaders/qmatvec.wgsl, after llama.cpp's `mul_mm` / `mul_mat_vec` shaders; block formats from
//! llama.cpp `ggml-common.h`).
//!
//! What is timed: C = A · Bᵀ in f32, A: (M, K), B: (N, K), C: (M, N), with every operand already
//! on the GPU (uploads excluded). One run = record + submit one product, then wait until the GPU
//! has finished it (ours: `device.poll(wait)`; burn: `Device::sync`). Each side gets `--warmup`
//! untimed runs (burn's autotuning and both sides' shader compilation happen there), then the
//! median of `--runs` timed runs is reported. Wall-clock per run, so a run's figure includes the
//! (small) submit overhead on both sides.
//!
//! Layouts. Ours reads B as stored by a Linear layer, (N, K). burn is given B two ways: pre-
//! transposed on the host to (K, N), the layout of burn's own `nn::Linear` weight (column
//! "burn"), and as (N, K) with `.transpose()` (a stride view, column "burn Bᵀ").
//!
//! Quantized rows: ours multiplies by W quantized to Q4_1 / Q8_0 (dequantized in the kernel);
//! burn has no GGUF Q4_1 / Q8_0 matmul on wgpu (its quantized schemes are its own symmetric
//! Q8S / Q4S blocks), so its reference point is its f32 matmul on the *dequantized* W: the same
//! products, so the numeric check compares equal work. T = 1 uses qmatvec (decode) and also
//! reports GB/s of weight bytes read (split layout: f32 scale [+ f32 min] + quants per 32).
//!
//! Numeric check, once per shape: max |ours − burn| / max |burn| over C.
//!
//! Shapes: SmolLM2-135M prefill with T = 128 tokens (hidden 576, FFN 1536, vocab 49152):
//! 128×576 · 1536×576ᵀ (gate/up), 128×1536 · 576×1536ᵀ (down), 128×576 · 49152×576ᵀ (lm_head);
//! squares 512, 1024, 2048. Decode T = 1 on the same weights.
//!
//! Usage: `npm run bench:matmul -- [--runs N] [--warmup N] [--json PATH] [--quick] [--no-quant]
//! [--no-f32] [--max-gflop G]` (quick: drop the 2048 square; max-gflop: skip larger products).

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use crucible::gpu::{GpuContext, PooledBuffer};
use crucible::ops::{OpError, matmul, qmatmul, qmatvec};
use crucible::tensor::quant::{BlockFormat, QK, SplitBlocks, quantize};

type Res<T> = Result<T, String>;

struct Args {
    runs: usize,
    warmup: usize,
    json: String,
    quick: bool,
    /// Skip shapes of more than this many GFLOP (2·M·N·K / 1e9) per product.
    max_gflop: f64,
    f32: bool,
    quant: bool,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        runs: 5,
        warmup: 2,
        json: concat!(env!("CARGO_MANIFEST_DIR"), "/target/matmul-burn.json").to_string(),
        quick: false,
        max_gflop: f64::INFINITY,
        f32: true,
        quant: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        let mut num = |name: &str| -> Res<usize> {
            let v = it.next().ok_or(format!("{name} needs a number"))?;
            v.parse::<usize>().map_err(|e| format!("{name} {v}: {e}"))
        };
        match s.as_str() {
            "--runs" => a.runs = num("--runs")?.max(1),
            "--warmup" => a.warmup = num("--warmup")?,
            "--json" => a.json = it.next().ok_or("--json needs a path")?,
            "--quick" => a.quick = true,
            "--max-gflop" => {
                let v = it.next().ok_or("--max-gflop needs a number")?;
                a.max_gflop = v.parse::<f64>().map_err(|e| format!("--max-gflop {v}: {e}"))?;
            }
            "--no-quant" => a.quant = false,
            "--no-f32" => a.f32 = false,
            "-h" | "--help" => {
                println!("bench:matmul [--runs N] [--warmup N] [--json PATH] [--quick] [--max-gflop G] [--no-quant] [--no-f32]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(a)
}

/// Deterministic data: splitmix64 → uniform in [-scale, scale) (as crate/tests/gpu_common).
fn data(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * scale
        })
        .collect()
}

/// (N, K) row-major → (K, N) row-major.
fn transpose(b: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; n * k];
    for j in 0..n {
        for kk in 0..k {
            t[kk * n + j] = b[j * k + kk];
        }
    }
    t
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) }
}

/// max |x − y| / max |y|.
fn rel_diff(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len(), "result lengths differ");
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
    let d = x.iter().zip(y).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    d / scale
}

/// `warmup` untimed then `runs` timed calls of `f` (each returns its own seconds).
fn timed(warmup: usize, runs: usize, mut f: impl FnMut() -> Res<f64>) -> Res<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    (0..runs).map(|_| f()).collect()
}

/// One of our products: record with `rec`, submit, wait for the GPU.
fn ours_once(ctx: &GpuContext, rec: &dyn Fn(&mut wgpu::CommandEncoder) -> Result<(), OpError>) -> Res<f64> {
    let t0 = Instant::now();
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bench") });
    rec(&mut enc).map_err(|e| e.to_string())?;
    ctx.queue.submit([enc.finish()]);
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| format!("poll: {e}"))?;
    Ok(t0.elapsed().as_secs_f64())
}

fn upload_u32(ctx: &GpuContext, label: &'static str, v: &[u32]) -> Res<PooledBuffer> {
    let buf = ctx
        .buffer(
            label,
            (v.len() as u64 * 4).max(4),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )
        .map_err(|e| e.to_string())?;
    ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(v));
    Ok(buf)
}

fn upload_f32(ctx: &GpuContext, label: &'static str, v: &[f32]) -> Res<PooledBuffer> {
    ctx.upload_f32(label, v).map_err(|e| e.to_string())
}

/// burn: C = A · B with A (m, k) and B given as `b` (k, n) or, with `view`, as (n, k) then
/// `.transpose()`. Returns the run times and C from the last run.
fn burn_matmul(
    dev: &Device,
    args: &Args,
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    view: bool,
) -> Res<(Vec<f64>, Vec<f32>)> {
    let ta = Tensor::<2>::from_data(TensorData::new(a.to_vec(), [m, k]), dev);
    let tb = if view {
        Tensor::<2>::from_data(TensorData::new(b.to_vec(), [n, k]), dev)
    } else {
        Tensor::<2>::from_data(TensorData::new(b.to_vec(), [k, n]), dev)
    };
    dev.sync().map_err(|e| format!("burn sync: {e:?}"))?; // uploads finished, not timed
    let mut last = None;
    let times = timed(args.warmup, args.runs, || {
        let t0 = Instant::now();
        let rhs = if view { tb.clone().transpose() } else { tb.clone() };
        let c = ta.clone().matmul(rhs);
        dev.sync().map_err(|e| format!("burn sync: {e:?}"))?;
        let t = t0.elapsed().as_secs_f64();
        last = Some(c);
        Ok(t)
    })?;
    let c = last
        .ok_or("no burn run")?
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("burn readback: {e:?}"))?;
    Ok((times, c))
}

/// Ours f32: C = A · Bᵀ, B (n, k). Returns run times and C.
fn ours_matmul(ctx: &GpuContext, args: &Args, a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Res<(Vec<f64>, Vec<f32>)> {
    let ab = upload_f32(ctx, "bench.a", a)?;
    let bb = upload_f32(ctx, "bench.b", b)?;
    let cb = ctx
        .buffer("bench.c", (m * n * 4) as u64, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC)
        .map_err(|e| e.to_string())?;
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| format!("poll: {e}"))?;
    let meta = matmul::Meta { m: m as u32, n: n as u32, k: k as u32, _pad: 0 };
    let rec = |enc: &mut wgpu::CommandEncoder| {
        matmul::encode(ctx, enc, &meta, ab.binding((m * k * 4) as u64), bb.binding((n * k * 4) as u64), cb.binding((m * n * 4) as u64))
    };
    let times = timed(args.warmup, args.runs, || ours_once(ctx, &rec))?;
    let c = pollster::block_on(ctx.read_f32("bench.c readback", &cb, 0, m * n)).map_err(|e| e.to_string())?;
    Ok((times, c))
}

/// W quantized to `f` on the GPU, split into row chunks that each fit one binding.
struct QWeight {
    chunks: Vec<(usize, usize, PooledBuffer, Option<PooledBuffer>, PooledBuffer)>,
    format: BlockFormat,
    /// Bytes the kernel reads for W in the split layout.
    split_bytes: u64,
    /// Bytes of W in GGUF blocks.
    gguf_bytes: u64,
}

fn upload_qweight(ctx: &GpuContext, w: &SplitBlocks, n: usize, k: usize, rows: usize) -> Res<QWeight> {
    let nb = k / QK;
    let qw = w.format.quant_words();
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < n {
        let r = rows.min(n - start);
        let (b0, b1) = (start * nb, (start + r) * nb);
        let s = upload_f32(ctx, "bench.w.scales", &w.scales[b0..b1])?;
        let mn = match &w.mins {
            Some(m) => Some(upload_f32(ctx, "bench.w.mins", &m[b0..b1])?),
            None => None,
        };
        let q = upload_u32(ctx, "bench.w.qs", &w.qs[b0 * qw..b1 * qw])?;
        chunks.push((start, r, s, mn, q));
        start += r;
    }
    let blocks = (n * nb) as u64;
    Ok(QWeight {
        chunks,
        format: w.format,
        split_bytes: blocks * (4 + if w.format.has_min() { 4 } else { 0 } + 4 * qw as u64),
        gguf_bytes: blocks * w.format.block_bytes() as u64,
    })
}

/// Ours quantized: Y = X · Wᵀ via qmatmul (t > 1) or qmatvec (t = 1). Returns run times and Y.
fn ours_quant(ctx: &GpuContext, args: &Args, qw: &QWeight, x: &[f32], (t, n, k): (usize, usize, usize)) -> Res<(Vec<f64>, Vec<f32>)> {
    let xb = upload_f32(ctx, "bench.x", x)?;
    let yb = ctx
        .buffer("bench.y", (t * n * 4) as u64, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC)
        .map_err(|e| e.to_string())?;
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| format!("poll: {e}"))?;
    let nb = k / QK;
    let align = ctx.limits.min_storage_buffer_offset_alignment as usize;
    if t == 1 && qw.chunks.iter().any(|c| (c.0 * 4) % align != 0) {
        return Err(format!("qmatvec chunk offsets are not multiples of {align} bytes: W (N={n}) is split into chunks of {} rows", qw.chunks[0].1));
    }
    let words = qw.format.quant_words() as u64;
    let code = qmatvec::format_code(qw.format);
    let rec = |enc: &mut wgpu::CommandEncoder| -> Result<(), OpError> {
        for (start, rows, s, mn, q) in &qw.chunks {
            let sb = (rows * nb * 4) as u64;
            let mins = mn.as_ref().unwrap_or(s).binding(sb);
            if t == 1 {
                // qmatvec writes y[0..rows]: one chunk at a time into its slice of Y.
                let meta = qmatvec::Meta { rows: *rows as u32, k: k as u32, format: code, _pad: 0 };
                let y = wgpu::BufferBinding { buffer: &yb, offset: (*start * 4) as u64, size: wgpu::BufferSize::new((*rows * 4) as u64) };
                qmatvec::encode(ctx, enc, &meta, s.binding(sb), mins, q.binding(sb * words), xb.binding((k * 4) as u64), y)?;
            } else {
                let meta = qmatmul::Meta { t: t as u32, rows: *rows as u32, k: k as u32, format: code, ldy: n as u32, y0: *start as u32, _pad: [0; 2] };
                qmatmul::encode(ctx, enc, &meta, s.binding(sb), mins, q.binding(sb * words), xb.binding((t * k * 4) as u64), yb.binding((t * n * 4) as u64))?;
            }
        }
        Ok(())
    };
    let times = timed(args.warmup, args.runs, || ours_once(ctx, &rec))?;
    let y = pollster::block_on(ctx.read_f32("bench.y readback", &yb, 0, t * n)).map_err(|e| e.to_string())?;
    Ok((times, y))
}

struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
}

fn shapes(quick: bool) -> Vec<Shape> {
    let mut v = vec![
        Shape { name: "SmolLM2 gate/up T=128", m: 128, n: 1536, k: 576 },
        Shape { name: "SmolLM2 down T=128", m: 128, n: 576, k: 1536 },
        Shape { name: "SmolLM2 lm_head T=128", m: 128, n: 49152, k: 576 },
        Shape { name: "square 512", m: 512, n: 512, k: 512 },
        Shape { name: "square 1024", m: 1024, n: 1024, k: 1024 },
    ];
    if !quick {
        v.push(Shape { name: "square 2048", m: 2048, n: 2048, k: 2048 });
    }
    v
}

fn gflops(m: usize, n: usize, k: usize, s: f64) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64 / s / 1e9
}

fn row(rows: &mut Vec<serde_json::Value>, kind: &str, s: &Shape, m: usize, ours: &[f64], burn: &[f64], burn_view: Option<&[f64]>, diff: f64, extra: serde_json::Value) {
    let (o, b) = (median(ours), median(burn));
    let (go, gb) = (gflops(m, s.n, s.k, o), gflops(m, s.n, s.k, b));
    let bv = burn_view.map(median);
    let shape = format!("{m}×{} · {}×{}ᵀ", s.k, s.n, s.k);
    println!(
        "{:<9} {:<24} {:<22} {:>9.2} {:>9.2} {:>9} {:>7.2} {:>10.2e}{}",
        kind,
        s.name,
        shape,
        go,
        gb,
        bv.map_or("-".into(), |v| format!("{:.2}", gflops(m, s.n, s.k, v))),
        go / gb,
        diff,
        extra.get("weights_gb_per_s").and_then(|v| v.as_f64()).map_or(String::new(), |g| format!("  {g:.2} GB/s of weights")),
    );
    rows.push(serde_json::json!({
        "kind": kind, "shape": s.name, "m": m, "n": s.n, "k": s.k,
        "ours_median_s": o, "burn_median_s": b, "burn_transposed_view_median_s": bv,
        "ours_gflops": go, "burn_gflops": gb,
        "burn_transposed_view_gflops": bv.map(|v| gflops(m, s.n, s.k, v)),
        "ratio_ours_over_burn": go / gb, "max_rel_diff": diff,
        "ours_runs_s": ours, "burn_runs_s": burn, "extra": extra,
    }));
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench:matmul: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = parse_args()?;
    let ctx = pollster::block_on(GpuContext::new_default()).map_err(|e| format!("crucible GPU context: {e}"))?;
    ctx.enable_bind_cache(256);
    let (dev, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| format!("burn wgpu device: {e:?}"))?;
    let bi = setup.adapter.get_info();
    let ours_adapter = format!("{} ({:?}, driver {} {})", ctx.adapter_info.name, ctx.adapter_info.backend, ctx.adapter_info.driver, ctx.adapter_info.driver_info);
    let burn_adapter = format!("{} ({:?}, driver {} {})", bi.name, bi.backend, bi.driver, bi.driver_info);
    println!("ours: {ours_adapter}");
    println!("burn: {burn_adapter}  [burn 0.22.1, wgpu backend, autotune on, fusion off]");
    println!(
        "{} warm-up + median of {} runs; GFLOP/s = 2·M·N·K / time; uploads excluded; wall clock per run incl. GPU wait\n",
        args.warmup, args.runs
    );
    println!(
        "{:<9} {:<24} {:<22} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "kernel", "shape", "M×K · N×Kᵀ", "ours", "burn", "burn Bᵀ", "ratio", "max rel Δ"
    );
    let mut rows = Vec::new();
    let t_start = Instant::now();
    let sh: Vec<Shape> = shapes(args.quick)
        .into_iter()
        .filter(|s| {
            let g = 2.0 * (s.m * s.n * s.k) as f64 / 1e9;
            let keep = g <= args.max_gflop;
            if !keep {
                println!("(skipped {}: {g:.1} GFLOP > --max-gflop {})", s.name, args.max_gflop);
            }
            keep
        })
        .collect();

    if args.f32 {
        for s in &sh {
            let a = data(1 + s.m as u64 * 7 + s.k as u64, s.m * s.k, 1.0);
            let b = data(2 + s.n as u64 * 13 + s.k as u64, s.n * s.k, 1.0);
            let (ot, oc) = ours_matmul(&ctx, &args, &a, &b, (s.m, s.n, s.k))?;
            let bt = transpose(&b, s.n, s.k);
            let (btimes, bc) = burn_matmul(&dev, &args, &a, &bt, (s.m, s.n, s.k), false)?;
            drop(bt);
            let (bvt, bvc) = burn_matmul(&dev, &args, &a, &b, (s.m, s.n, s.k), true)?;
            let diff = rel_diff(&oc, &bc).max(rel_diff(&bvc, &bc));
            row(&mut rows, "matmul", s, s.m, &ot, &btimes, Some(&bvt), diff, serde_json::json!({}));
        }
    }

    if args.quant {
        for f in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
            for s in &sh {
                let w = data(3 + s.n as u64 * 17 + s.k as u64, s.n * s.k, 1.0);
                let mut bytes = Vec::new();
                quantize(f, &w, &mut bytes).map_err(|e| e.to_string())?;
                drop(w);
                let split = SplitBlocks::from_blocks(f, &bytes).map_err(|e| e.to_string())?;
                let mut deq = Vec::with_capacity(s.n * s.k);
                split.dequantize(&mut deq).map_err(|e| e.to_string())?;
                let rows_per_chunk = qmatmul::chunk_rows(&ctx, f, s.n, s.k, None);
                let qwt = upload_qweight(&ctx, &split, s.n, s.k, rows_per_chunk)?;
                let deq_t = transpose(&deq, s.n, s.k);
                // Prefill (T = M) with qmatmul, then decode (T = 1) with qmatvec, on the same W.
                for t in [s.m, 1] {
                    let x = data(4 + t as u64 * 5 + s.k as u64, t * s.k, 1.0);
                    let (ot, oy) = ours_quant(&ctx, &args, &qwt, &x, (t, s.n, s.k))?;
                    let (btimes, by) = burn_matmul(&dev, &args, &x, &deq_t, (t, s.n, s.k), false)?;
                    let diff = rel_diff(&oy, &by);
                    let kind = if t == 1 { format!("qmatvec {f}") } else { format!("qmatmul {f}") };
                    let om = median(&ot);
                    let extra = serde_json::json!({
                        "format": f.name(), "chunks": qwt.chunks.len(),
                        "weight_bytes_split": qwt.split_bytes, "weight_bytes_gguf": qwt.gguf_bytes,
                        "weights_gb_per_s": if t == 1 { Some(qwt.split_bytes as f64 / om / 1e9) } else { None },
                        "burn_reference": "f32 matmul on the dequantized weight, B pre-transposed (K, N)",
                    });
                    row(&mut rows, &kind, s, t, &ot, &btimes, None, diff, extra);
                }
            }
        }
    }

    ctx.check("bench end").map_err(|e| e.to_string())?;
    let wall = t_start.elapsed().as_secs_f64();
    println!("\nratio = ours / burn (column \"burn\": B pre-transposed to (K, N), burn's nn::Linear layout; \"burn Bᵀ\": B (N, K) then .transpose()).");
    println!("quantized rows: burn has no Q4_1 / Q8_0 (GGUF) matmul on wgpu; its figure is its f32 matmul on the dequantized weight.");
    println!("max rel Δ = max |ours − burn| / max |burn|. Benchmark wall time {wall:.1} s.");
    let out = serde_json::json!({
        "bench": "matmul-burn",
        "ours_adapter": ours_adapter,
        "burn_adapter": burn_adapter,
        "burn_version": "0.22.1",
        "burn_features": ["std", "wgpu", "autotune"],
        "warmup": args.warmup,
        "runs": args.runs,
        "timing": "wall clock per run: record + submit + wait for GPU completion (ours device.poll, burn Device::sync); uploads excluded; median",
        "rows": rows,
        "wall_s": wall,
    });
    if let Some(dir) = std::path::Path::new(&args.json).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&out).unwrap()).map_err(|e| format!("write {}: {e}", args.json))?;
    println!("JSON: {}", args.json);
    Ok(())
}
