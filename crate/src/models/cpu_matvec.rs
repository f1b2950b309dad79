//! The fast CPU products behind [`Linear::forward`](crate::models::Linear::forward): y (T, out) =
//! x (T, in) · Wᵀ for f32 weights, F16 weights (widened in the dot: F16C `_mm256_cvtph_ps` on
//! x86-64 CPUs that have it, exact scalar conversion elsewhere) and Q8_0 / Q4_0 / Q4_1 blocks
//! (GGUF bytes or the split layout).
//! The readable reference stays in `llama.rs` (`Linear::forward_reference`: dequantize each block
//! exactly as llama.cpp, then dot); tests check that this path agrees with it.
//!
//! What makes it faster (reference: llama.cpp `ggml_vec_dot_q4_1_q8_1` / `ggml_vec_dot_q8_0_q8_0`
//! factor the block scale out of the dot product the same way; activations stay f32 here):
//! - the scale is factored out of each block: Σ (d·q_j + m)·x_j = d·Σ q_j·x_j + m·Σ x_j, with
//!   Σ x_j per (token, block) computed once per call and shared by all rows;
//! - each block is unpacked once to 32 small integers in f32 and dotted with every token's 32
//!   inputs using 8 independent partial sums (the compiler vectorises them);
//! - on x86-64 CPUs with AVX2 the same loops run compiled for 8-wide vectors (chosen at run time);
//! - natively, output rows are split across threads (`std::thread::scope`, one chunk of rows per
//!   thread, at most `available_parallelism()` or `CRUCIBLE_THREADS`); layers under 2¹⁶ weights
//!   and wasm run on one thread.
//!
//! The sums run in another order than the reference, so results differ from it by f32 rounding
//! (relative ~1e-6), not bit for bit.

use crate::tensor::quant::{BlockFormat, QK, SplitBlocks};

/// Layers with fewer weights than this run on one thread (spawning costs more than it saves).
const PAR_MIN_WEIGHTS: usize = 1 << 16;

#[cfg(not(target_arch = "wasm32"))]
fn max_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("CRUCIBLE_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .min(64)
    })
}

/// Runs `rows(o0, yt_chunk)` over chunks of output rows (yt_chunk: rows o0.. of yt (out, T)),
/// on several threads natively when the layer is big, and returns y (T, out).
fn par_rows(out: usize, t: usize, weights: usize, rows: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut yt = vec![0.0f32; out * t]; // (out, T)
    if t == 0 || out == 0 {
        return yt;
    }
    #[cfg(not(target_arch = "wasm32"))]
    let threads = if weights >= PAR_MIN_WEIGHTS { max_threads().min(out) } else { 1 };
    #[cfg(target_arch = "wasm32")]
    let threads = {
        let _ = (weights, PAR_MIN_WEIGHTS);
        1
    };
    if threads <= 1 {
        rows(0, &mut yt);
    } else {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let per = out.div_ceil(threads);
            let rows = &rows;
            std::thread::scope(|s| {
                for (c, chunk) in yt.chunks_mut(per * t).enumerate() {
                    s.spawn(move || rows(c * per, chunk));
                }
            });
        }
    }
    if t == 1 {
        return yt;
    }
    let mut y = vec![0.0f32; t * out];
    for o in 0..out {
        for ti in 0..t {
            y[ti * out + o] = yt[o * t + ti];
        }
    }
    y
}

/// Σ q[j]·x[off + j] over one block with 8 partial sums (indexing and `while` so that the
/// opt-level-1 test build does not call iterator adapters per element; release vectorises it).
#[inline(always)]
fn dot32(q: &[f32; QK], x: &[f32], off: usize) -> f32 {
    let x: &[f32; QK] = match x.get(off..off + QK) {
        Some(s) => s.try_into().expect("QK inputs"),
        None => panic!("block {off} out of range"),
    };
    let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let mut j = 0;
    while j < QK {
        a0 += q[j] * x[j];
        a1 += q[j + 1] * x[j + 1];
        a2 += q[j + 2] * x[j + 2];
        a3 += q[j + 3] * x[j + 3];
        a4 += q[j + 4] * x[j + 4];
        a5 += q[j + 5] * x[j + 5];
        a6 += q[j + 6] * x[j + 6];
        a7 += q[j + 7] * x[j + 7];
        j += 8;
    }
    ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))
}

/// Σ a[j]·b[j] with 8 partial sums (any length; `while` and indexing as in [`dot32`]).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let mut j = 0;
    while j + 8 <= n {
        a0 += a[j] * b[j];
        a1 += a[j + 1] * b[j + 1];
        a2 += a[j + 2] * b[j + 2];
        a3 += a[j + 3] * b[j + 3];
        a4 += a[j + 4] * b[j + 4];
        a5 += a[j + 5] * b[j + 5];
        a6 += a[j + 6] * b[j + 6];
        a7 += a[j + 7] * b[j + 7];
        j += 8;
    }
    let mut tail = 0.0f32;
    while j < n {
        tail += a[j] * b[j];
        j += 1;
    }
    ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) + tail
}

/// Σ f16(w[j])·x[j] with 8 partial sums: each weight widened exactly (the portable path of
/// F16 weights; `dot_f16c` is the x86-64 one).
#[inline(always)]
fn dot_f16(w: &[u16], x: &[f32]) -> f32 {
    use crate::models::llama::f16_bits_to_f32 as h;
    let n = w.len().min(x.len());
    let (w, x) = (&w[..n], &x[..n]);
    let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let mut j = 0;
    while j + 8 <= n {
        a0 += h(w[j]) * x[j];
        a1 += h(w[j + 1]) * x[j + 1];
        a2 += h(w[j + 2]) * x[j + 2];
        a3 += h(w[j + 3]) * x[j + 3];
        a4 += h(w[j + 4]) * x[j + 4];
        a5 += h(w[j + 5]) * x[j + 5];
        a6 += h(w[j + 6]) * x[j + 6];
        a7 += h(w[j + 7]) * x[j + 7];
        j += 8;
    }
    let mut tail = 0.0f32;
    while j < n {
        tail += h(w[j]) * x[j];
        j += 1;
    }
    ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) + tail
}

/// [`dot_f16`] with F16C: `_mm256_cvtph_ps` widens 8 halves at once (exact, as the scalar
/// conversion), two 8-wide accumulators, scalar tail. (Intel intrinsics guide `_mm256_cvtph_ps`;
/// llama.cpp `ggml_vec_dot_f16` widens the same way on F16C CPUs.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn dot_f16c(w: &[u16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let mut j = 0;
    // SAFETY: every load reads 8 (or 16) elements at j < n - 7 (n - 15) of slices of length ≥ n.
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    unsafe {
        while j + 16 <= n {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(j) as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(j + 8) as *const __m128i));
            acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(w0, _mm256_loadu_ps(x.as_ptr().add(j))));
            acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(w1, _mm256_loadu_ps(x.as_ptr().add(j + 8))));
            j += 16;
        }
        while j + 8 <= n {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(j) as *const __m128i));
            acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(w0, _mm256_loadu_ps(x.as_ptr().add(j))));
            j += 8;
        }
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    while j < n {
        s += crate::models::llama::f16_bits_to_f32(w[j]) * x[j];
        j += 1;
    }
    s
}

/// Rows o0.. of yt (out, T) for F16 weights (out, in) with `dot` as the row dot.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_f16(w: &[u16], bias: Option<&[f32]>, x: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32], dot: impl Fn(&[u16], &[f32]) -> f32) {
    for (i, y) in yt.chunks_exact_mut(t).enumerate() {
        let o = o0 + i;
        let wr = &w[o * inp..(o + 1) * inp];
        let b = bias.map_or(0.0, |b| b[o]);
        for (ti, yv) in y.iter_mut().enumerate() {
            *yv = dot(wr, &x[ti * inp..(ti + 1) * inp]) + b;
        }
    }
}

/// Where the weights are.
#[derive(Clone, Copy)]
enum Src<'a> {
    F32(&'a [f32], Option<&'a [f32]>),
    /// IEEE binary16 bits (out, in) row-major, with the bias.
    F16(&'a [u16], Option<&'a [f32]>),
    Blocks(BlockFormat, &'a [u8]),
    Split(&'a SplitBlocks),
}

/// The rows o0.. of yt (out, T) for `src`: the format is chosen once, outside the loops.
#[inline(always)]
fn rows_impl(src: Src<'_>, x: &[f32], xsum: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32]) {
    match src {
        Src::F32(w, bias) => {
            for (i, y) in yt.chunks_exact_mut(t).enumerate() {
                let o = o0 + i;
                let wr = &w[o * inp..(o + 1) * inp];
                let b = bias.map_or(0.0, |b| b[o]);
                for (ti, yv) in y.iter_mut().enumerate() {
                    *yv = dot(wr, &x[ti * inp..(ti + 1) * inp]) + b;
                }
            }
        }
        Src::F16(w, bias) => rows_f16(w, bias, x, inp, t, o0, yt, dot_f16),
        Src::Blocks(format, bytes) => {
            let bb = format.block_bytes();
            match format {
                BlockFormat::Q8_0 => rows_blocks(x, xsum, inp, t, o0, yt, false, |b, q| {
                    let blk: &[u8; 34] = bytes[b * bb..(b + 1) * bb].try_into().expect("34-byte block");
                    let mut j = 0;
                    while j < QK {
                        q[j] = (blk[2 + j] as i8) as f32;
                        j += 1;
                    }
                    (f16(blk, 0), 0.0)
                }),
                BlockFormat::Q4_0 => rows_blocks(x, xsum, inp, t, o0, yt, false, |b, q| {
                    let blk: &[u8; 18] = bytes[b * bb..(b + 1) * bb].try_into().expect("18-byte block");
                    let mut j = 0;
                    while j < QK / 2 {
                        let v = blk[2 + j];
                        q[j] = ((v & 0x0F) as i32 - 8) as f32;
                        q[j + QK / 2] = ((v >> 4) as i32 - 8) as f32;
                        j += 1;
                    }
                    (f16(blk, 0), 0.0)
                }),
                BlockFormat::Q4_1 => rows_blocks(x, xsum, inp, t, o0, yt, true, |b, q| {
                    let blk: &[u8; 20] = bytes[b * bb..(b + 1) * bb].try_into().expect("20-byte block");
                    let mut j = 0;
                    while j < QK / 2 {
                        let v = blk[4 + j];
                        q[j] = (v & 0x0F) as f32;
                        q[j + QK / 2] = (v >> 4) as f32;
                        j += 1;
                    }
                    (f16(blk, 0), f16(blk, 2))
                }),
            }
        }
        Src::Split(s) => {
            // byte k of a block's quants is byte k % 4 of its word k / 4
            let words = s.format.quant_words();
            let byte = |b: usize, k: usize| (s.qs[b * words + k / 4] >> (8 * (k % 4))) as u8;
            match s.format {
                BlockFormat::Q8_0 => rows_blocks(x, xsum, inp, t, o0, yt, false, |b, q| {
                    let mut k = 0;
                    while k < QK {
                        q[k] = (byte(b, k) as i8) as f32;
                        k += 1;
                    }
                    (s.scales[b], 0.0)
                }),
                BlockFormat::Q4_0 => rows_blocks(x, xsum, inp, t, o0, yt, false, |b, q| {
                    let mut j = 0;
                    while j < QK / 2 {
                        let v = byte(b, j);
                        q[j] = ((v & 0x0F) as i32 - 8) as f32;
                        q[j + QK / 2] = ((v >> 4) as i32 - 8) as f32;
                        j += 1;
                    }
                    (s.scales[b], 0.0)
                }),
                BlockFormat::Q4_1 => {
                    let mins = s.mins.as_deref().unwrap_or(&[]);
                    rows_blocks(x, xsum, inp, t, o0, yt, true, |b, q| {
                        let mut j = 0;
                        while j < QK / 2 {
                            let v = byte(b, j);
                            q[j] = (v & 0x0F) as f32;
                            q[j + QK / 2] = (v >> 4) as f32;
                            j += 1;
                        }
                        (s.scales[b], mins.get(b).copied().unwrap_or(0.0))
                    })
                }
            }
        }
    }
}

/// Block rows: `unpack(b, q)` writes block b's 32 quants (as f32) into q and returns its
/// (scale d, min m), w_j = d·q_j + m; y_o[t] = Σ_b d·(q·x_tb) + m·Σx_tb.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_blocks<U: Fn(usize, &mut [f32; QK]) -> (f32, f32)>(x: &[f32], xsum: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32], has_min: bool, unpack: U) {
    let nb = inp / QK;
    let rows = yt.len() / t;
    let mut q = [0.0f32; QK];
    let mut i = 0;
    while i < rows {
        let o = o0 + i;
        let y = &mut yt[i * t..(i + 1) * t];
        y.fill(0.0);
        let mut b = 0;
        while b < nb {
            let (d, m) = unpack(o * nb + b, &mut q);
            let mut ti = 0;
            while ti < t {
                let mut s = d * dot32(&q, x, ti * inp + b * QK);
                if has_min {
                    s += m * xsum[ti * nb + b];
                }
                y[ti] += s;
                ti += 1;
            }
            b += 1;
        }
        i += 1;
    }
}

/// The same loops compiled for AVX2 (8-wide f32 vectors), chosen at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(src: Src<'_>, x: &[f32], xsum: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32]) {
    rows_impl(src, x, xsum, inp, t, o0, yt)
}

fn rows(src: Src<'_>, x: &[f32], xsum: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32]) {
    // wasm built with +simd128 (.cargo/config.toml): the f32 and block loops in cpu_simd128.rs
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use crate::models::cpu_simd128 as simd;
        if let Src::F32(w, bias) = src {
            return simd::rows_f32(w, bias, x, inp, t, o0, yt);
        }
        if let Src::F16(w, bias) = src {
            return simd::rows_f16(w, bias, x, inp, t, o0, yt);
        }
        if let Src::Blocks(format, bytes) = src {
            return simd::rows_gguf(format, bytes, x, xsum, inp, t, o0, yt);
        }
        if let Src::Split(s) = src {
            return simd::rows_split(s, x, xsum, inp, t, o0, yt);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if let Src::F16(w, bias) = src
        && std::arch::is_x86_feature_detected!("f16c")
        && std::arch::is_x86_feature_detected!("avx")
    {
        // SAFETY: the CPU has F16C and AVX (checked just above).
        return rows_f16(w, bias, x, inp, t, o0, yt, |a, b| unsafe { dot_f16c(a, b) });
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { rows_avx2(src, x, xsum, inp, t, o0, yt) };
        }
    }
    rows_impl(src, x, xsum, inp, t, o0, yt)
}

fn forward(src: Src<'_>, x: &[f32], inp: usize, out: usize) -> Vec<f32> {
    let t = x.len() / inp;
    // Σ x over each (token, block): the m term of Q4_1
    let xsum: Vec<f32> = match src {
        Src::Blocks(BlockFormat::Q4_1, _) => x.chunks_exact(QK).map(|c| c.iter().sum()).collect(),
        Src::Split(s) if s.format == BlockFormat::Q4_1 => x.chunks_exact(QK).map(|c| c.iter().sum()).collect(),
        _ => Vec::new(),
    };
    par_rows(out, t, out * inp, |o0, yt| rows(src, x, &xsum, inp, t, o0, yt))
}

/// f32 weights (out, in) row-major, with the bias.
pub(crate) fn forward_f32(w: &[f32], bias: Option<&[f32]>, x: &[f32], inp: usize, out: usize) -> Vec<f32> {
    forward(Src::F32(w, bias), x, inp, out)
}

/// F16 weights (out, in) row-major as IEEE binary16 bits, with the bias.
pub(crate) fn forward_f16(w: &[u16], bias: Option<&[f32]>, x: &[f32], inp: usize, out: usize) -> Vec<f32> {
    forward(Src::F16(w, bias), x, inp, out)
}

/// GGUF block bytes (row-major blocks, in/32 per row); no bias.
pub(crate) fn forward_blocks(format: BlockFormat, bytes: &[u8], x: &[f32], inp: usize, out: usize) -> Vec<f32> {
    forward(Src::Blocks(format, bytes), x, inp, out)
}

/// The split layout (f32 scales and mins, u32 quant words); no bias.
pub(crate) fn forward_split(s: &SplitBlocks, x: &[f32], inp: usize, out: usize) -> Vec<f32> {
    forward(Src::Split(s), x, inp, out)
}

#[inline(always)]
fn f16(b: &[u8], i: usize) -> f32 {
    crate::models::llama::f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}
