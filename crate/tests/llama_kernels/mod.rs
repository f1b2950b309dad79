//! Checks of the Llama-forward kernels (add, swiglu, embed, rope, attention + split-K reduce, the
//! GPU KV cache) against their CPU references, shared by crate/tests/llama_kernels_native.rs
//! (lavapipe) and crate/tests/llama_kernels_web.rs (Chromium + SwiftShader).
//!
//! Data: seeded pseudo-random (`gpu_common::data`). Every assertion states its tolerance and why.

#![allow(dead_code)]

use crucible::gpu::GpuContext;
use crucible::ops::attention::{self, AttentionParams, GpuKvCache};
use crucible::ops::embed::{self, EmbedTable};
use crucible::ops::{add, rope, swiglu};
use crucible::posenc::rope::{RopeConfig, RopeLayout, RopeScaling};
use crucible::tensor::quant::{BlockFormat, SplitBlocks, quantize};

use crate::gpu_common::{EPS, data};

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// add: residual (ny = n) and bias broadcast (ny = row length): one f32 addition each side, so
/// bit-identical.
pub async fn add_cases(ctx: &GpuContext) {
    for (n, ny) in [(1usize, 1usize), (7 * 576, 7 * 576), (5 * 192, 192), (70_000, 100)] {
        let x = data(n as u64, n, 3.0);
        let y = data(ny as u64 + 1, ny, 2.0);
        let gpu = add::add(ctx, &x, &y).await.unwrap_or_else(|e| panic!("add ({n}, {ny}): {e}"));
        assert_eq!(gpu, add::reference(&x, &y).unwrap(), "add ({n}, {ny})");
    }
}

/// swiglu: the GPU exp is within a few ulp (WGSL: 3 + 2|x| ulp), the division 2.5 ulp; for
/// |g| ≤ 10 that bounds the relative error of silu(g)·u by ~30 ε: tol = 32 ε |cpu| + 1e-30.
pub async fn swiglu_cases(ctx: &GpuContext) {
    for n in [1usize, 1536, 3 * 1536 + 5] {
        let g = data(11 + n as u64, n, 10.0);
        let u = data(12 + n as u64, n, 2.0);
        let gpu = swiglu::swiglu(ctx, &g, &u).await.unwrap_or_else(|e| panic!("swiglu ({n}): {e}"));
        let cpu = swiglu::reference(&g, &u).unwrap();
        for i in 0..n {
            let tol = 32.0 * EPS * (cpu[i] as f64).abs() + 1e-30;
            let d = (gpu[i] as f64 - cpu[i] as f64).abs();
            assert!(d <= tol, "swiglu n={n} at {i}: g {} u {} gpu {} cpu {} |diff| {d:e} > {tol:e}", g[i], u[i], gpu[i], cpu[i]);
        }
    }
}

/// embed: f32 rows are copies (exact); Q8_0 and Q4_0 one rounding each side (exact); Q4_1's
/// d·q + m may be one FMA on the GPU: ≤ 1 ulp of the larger term, tol = 2 ε (15|d| + |m|) ≤
/// 2 ε · 2 max|row| + tiny. Also the chunked table (64-row chunks) and a token out of range.
pub async fn embed_cases(ctx: &GpuContext) {
    let (vocab, h) = (200usize, 96usize);
    let w = data(21, vocab * h, 1.5);
    let tokens = [0u32, 199, 5, 5, 64, 63, 128, 127];
    for max_rows in [None, Some(64)] {
        let gpu = embed::embed(ctx, EmbedTable::F32(&w), vocab, h, &tokens, max_rows).await.unwrap_or_else(|e| panic!("embed f32: {e}"));
        assert_eq!(gpu, embed::reference(EmbedTable::F32(&w), vocab, h, &tokens).unwrap(), "embed f32 (chunks of {max_rows:?})");
        for f in BlockFormat::ALL {
            let mut bytes = Vec::new();
            quantize(f, &w, &mut bytes).unwrap();
            let s = SplitBlocks::from_blocks(f, &bytes).unwrap();
            let gpu = embed::embed(ctx, EmbedTable::Quant(&s), vocab, h, &tokens, max_rows).await.unwrap_or_else(|e| panic!("embed {f}: {e}"));
            let cpu = embed::reference(EmbedTable::Quant(&s), vocab, h, &tokens).unwrap();
            let tol = if f == BlockFormat::Q4_1 { 4.0 * EPS as f32 * max_abs(&cpu) } else { 0.0 };
            for (i, (a, b)) in gpu.iter().zip(&cpu).enumerate() {
                assert!((a - b).abs() <= tol, "embed {f} (chunks of {max_rows:?}) at {i}: gpu {a} cpu {b} tol {tol:e}");
            }
        }
    }
    let e = embed::embed(ctx, EmbedTable::F32(&w), vocab, h, &[3, 200], None).await.unwrap_err().to_string();
    assert!(e.contains("token 200 at index 1 is out of range"), "{e}");
}

fn rope_configs() -> Vec<(&'static str, RopeConfig)> {
    let c = |dim, scaling| RopeConfig { theta: 10000.0, dim, max_position_embeddings: 256, scaling };
    vec![
        ("default", c(64, RopeScaling::Default)),
        ("linear", c(64, RopeScaling::Linear { factor: 4.0 })),
        ("dynamic", c(64, RopeScaling::Dynamic { factor: 2.0 })),
        (
            "yarn",
            c(64, RopeScaling::Yarn { factor: Some(4.0), original_max_position_embeddings: 64, attention_factor: None, beta_fast: 32.0, beta_slow: 1.0, mscale: None, mscale_all_dim: None, truncate: true }),
        ),
        ("llama3", c(64, RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 })),
        ("partial (d = 32 of 64)", RopeConfig { theta: 100000.0, dim: 32, max_position_embeddings: 256, scaling: RopeScaling::Default }),
    ]
}

/// rope: every scaling, both layouts, positions up to ~4100 (angles up to ~4100 rad). The GPU's
/// f32 sin/cos after the range reduction vs f64 sin/cos rounded: tol per output =
/// (|x0| + |x1|) · a · (4e-6 + |angle| · 2⁻²³) (the reduction's k·C2 rounding grows with the angle).
pub async fn rope_cases(ctx: &GpuContext) {
    let (nh, hd) = (3usize, 64usize);
    for (name, cfg) in rope_configs() {
        // dynamic: frequencies at a length past max_position_embeddings, as the model uses them.
        let freqs = cfg.freqs(Some(4200));
        let a = freqs.attention_factor as f64;
        for layout in [RopeLayout::Halves, RopeLayout::Adjacent] {
            for (t, pos0) in [(1usize, 0usize), (7, 3), (2, 4095)] {
                let x = data(31 + (t * 7 + pos0) as u64, t * nh * hd, 2.0);
                let p = rope::RopeParams { t, n_heads: nh, head_dim: hd, pos0, layout };
                let gpu = rope::rope(ctx, &x, &freqs, &p).await.unwrap_or_else(|e| panic!("rope {name}: {e}"));
                let cpu = rope::reference(&x, &freqs, &p).unwrap();
                let half = freqs.inv_freq.len();
                for ti in 0..t {
                    for hh in 0..nh {
                        let base = (ti * nh + hh) * hd;
                        for i in 0..hd {
                            // the pair i belongs to (or none: the untouched tail)
                            let (pair, partner) = match layout {
                                RopeLayout::Halves => (i % half.max(1), if i < half { i + half } else if i < 2 * half { i - half } else { i }),
                                RopeLayout::Adjacent => (i / 2, i ^ 1),
                            };
                            let idx = base + i;
                            if i >= 2 * half {
                                assert_eq!(gpu[idx], x[idx], "rope {name} {layout:?}: dimension {i} past the rotary dim changed");
                                continue;
                            }
                            let angle = ((pos0 + ti) as f32 * freqs.inv_freq[pair]) as f64;
                            let mag = (x[idx].abs() + x[base + partner].abs()) as f64;
                            let tol = mag * a * (4e-6 + angle.abs() * EPS);
                            let d = (gpu[idx] as f64 - cpu[idx] as f64).abs();
                            assert!(d <= tol, "rope {name} {layout:?} t={ti} pos0={pos0} head {hh} dim {i}: gpu {} cpu {} |diff| {d:e} > {tol:e}", gpu[idx], cpu[idx]);
                        }
                    }
                }
            }
        }
    }
}

/// q, k, v for an attention case: kv_len = pos0 + t keys.
fn attn_data(p: &AttentionParams, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let q = data(seed, p.t * p.n_heads * p.head_dim, 1.0);
    let k = data(seed + 1, p.kv_len() * p.n_kv_heads * p.head_dim, 1.0);
    let v = data(seed + 2, p.kv_len() * p.n_kv_heads * p.head_dim, 1.0);
    (q, k, v)
}

/// Both compute Σ_j softmax_j · v_j with |v| ≤ 1 in f32 over ≤ 400 keys; the GPU rescales its running
/// sums per 64-key tile and its exp is within a few ulp. Scores are O(√hd · 1/√hd) = O(1), so the
/// softmax weights carry ~10 ε relative error each and the weighted sum ~ (keys · ε) absolute in
/// the worst case: tol = 2e-6 + kv_len · 2 ε (≤ 1e-4 at 400 keys), stated per case.
fn check_attention(name: &str, gpu: &[f32], cpu: &[f32], kv_len: usize) {
    assert_eq!(gpu.len(), cpu.len(), "{name}: output length");
    let tol = 2e-6 + kv_len as f64 * 2.0 * EPS;
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        let d = (*a as f64 - *b as f64).abs();
        assert!(d <= tol, "{name} at {i}: gpu {a} cpu {b} |diff| {d:e} > {tol:e}");
    }
}

/// attention: prefill (T query rows, causal, with and without earlier cached positions), GQA
/// groups 1, 2, 3, head_dim 64 / 80 / 256, sliding windows, > 64 keys (several tiles); and decode
/// (T = 1) with split-K over 1..7 splits (some empty), against the CPU attention of models/llama.rs.
pub async fn attention_cases(ctx: &GpuContext) {
    let cases = [
        // (t, nh, nkv, hd, pos0, window)
        (7usize, 4usize, 4usize, 64usize, 0usize, None),
        (5, 9, 3, 64, 3, None),
        (70, 4, 2, 80, 10, None),
        (16, 2, 1, 256, 60, Some(20usize)),
        (33, 6, 2, 32, 100, Some(50)),
    ];
    for (i, &(t, nh, nkv, hd, pos0, window)) in cases.iter().enumerate() {
        let p = AttentionParams { t, n_heads: nh, n_kv_heads: nkv, head_dim: hd, pos0, window, splits: 1 };
        let (q, k, v) = attn_data(&p, 40 + i as u64);
        let gpu = attention::attention(ctx, &q, &k, &v, &p).await.unwrap_or_else(|e| panic!("attention {p:?}: {e}"));
        let cpu = attention::reference(&q, &k, &v, &p).unwrap();
        check_attention(&format!("prefill {p:?}"), &gpu, &cpu, p.kv_len());
    }
    for (nh, nkv, hd, kv_len, window) in [(9usize, 3usize, 64usize, 300usize, None), (4, 1, 128, 130, Some(100usize)), (2, 2, 64, 5, None)] {
        for splits in [1usize, 2, 3, 7] {
            let p = AttentionParams { t: 1, n_heads: nh, n_kv_heads: nkv, head_dim: hd, pos0: kv_len - 1, window, splits };
            let (q, k, v) = attn_data(&p, 60 + kv_len as u64);
            let gpu = attention::attention(ctx, &q, &k, &v, &p).await.unwrap_or_else(|e| panic!("attention {p:?}: {e}"));
            let cpu = attention::reference(&q, &k, &v, &p).unwrap();
            check_attention(&format!("decode {p:?}"), &gpu, &cpu, kv_len);
        }
    }
}

/// The GPU KV cache: a 6-token prefill then 4 decode steps, each step's k/v appended by a buffer
/// copy and attention read from the cache (split-K with 2 splits on decode), against the reference
/// over the whole sequence's keys.
pub async fn kv_cache_cases(ctx: &GpuContext) {
    let (nh, nkv, hd, total) = (4usize, 2usize, 64usize, 10usize);
    let kv_row = nkv * hd;
    let q_all = data(81, total * nh * hd, 1.0);
    let k_all = data(82, total * kv_row, 1.0);
    let v_all = data(83, total * kv_row, 1.0);
    let mut cache = GpuKvCache::new(ctx, 1, nkv, hd, 16).unwrap();
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let mut pos = 0;
    for t in [6usize, 1, 1, 1, 1] {
        let kb = ctx.upload_f32("kv test k", &k_all[pos * kv_row..(pos + t) * kv_row]).unwrap();
        let vb = ctx.upload_f32("kv test v", &v_all[pos * kv_row..(pos + t) * kv_row]).unwrap();
        let qb = ctx.upload_f32("kv test q", &q_all[pos * nh * hd..(pos + t) * nh * hd]).unwrap();
        let p = AttentionParams { t, n_heads: nh, n_kv_heads: nkv, head_dim: hd, pos0: pos, window: None, splits: if t == 1 { 2 } else { 1 } };
        let out = ctx.buffer("kv test out", (t * nh * hd * 4) as u64, storage).unwrap();
        let part = ctx.buffer("kv test partial", (attention::partial_len(&p) * 4) as u64, storage).unwrap();
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kv test") });
        cache.append(&mut enc, 0, &kb, &vb, t).unwrap();
        let (kc, vc) = &cache.layers[0];
        let kvb = (p.kv_len() * kv_row * 4) as u64;
        attention::encode(
            ctx,
            &mut enc,
            &p,
            qb.binding((t * nh * hd * 4) as u64),
            wgpu::BufferBinding { buffer: kc, offset: 0, size: wgpu::BufferSize::new(kvb) },
            wgpu::BufferBinding { buffer: vc, offset: 0, size: wgpu::BufferSize::new(kvb) },
            out.binding((t * nh * hd * 4) as u64),
            (p.splits > 1).then(|| part.binding((attention::partial_len(&p) * 4) as u64)),
        )
        .unwrap();
        ctx.queue.submit([enc.finish()]);
        cache.advance(t).unwrap();
        let gpu = ctx.read_f32("kv test readback", &out, 0, t * nh * hd).await.unwrap();
        let cpu = attention::reference(&q_all[pos * nh * hd..(pos + t) * nh * hd], &k_all[..(pos + t) * kv_row], &v_all[..(pos + t) * kv_row], &p).unwrap();
        check_attention(&format!("kv cache step at pos {pos} (T = {t})"), &gpu, &cpu, pos + t);
        pos += t;
    }
    assert_eq!(cache.len(), total);
    let e = cache.check_room(7).unwrap_err().to_string();
    assert!(e.contains("holds 16 positions"), "{e}");
}
