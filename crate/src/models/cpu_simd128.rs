//! WebAssembly SIMD128 versions of the CPU matvec hot loops (`cpu_matvec.rs`), for the browser's
//! CPU fallback: y (T, out) = x (T, in) · Wᵀ for f32 and F16 weights and Q8_0 / Q4_0 / Q4_1 blocks
//! (GGUF bytes or the split layout). Natively the same loops run compiled for AVX2; in wasm there is no
//! run-time detection, so this module exists only in builds with `-C target-feature=+simd128`
//! (`.cargo/config.toml`), and `cpu_matvec::rows` calls it there.
//!
//! References: the WebAssembly 128-bit packed SIMD proposal (W3C Wasm 2.0 core spec, §4.3.3
//! "Vector instructions"; github.com/WebAssembly/simd); llama.cpp `ggml-cpu/arch/wasm/quants.c`
//! (`ggml_vec_dot_q4_0_q8_0`, `__wasm_simd128__` branch: nibbles split with `v128_and` /
//! `u8x16_shr`, widened with `i16x8_extend_*_i8x16`). Unlike llama.cpp, the activations stay f32
//! (not quantized to Q8), so the results agree with the scalar path up to f32 summation order.
//!
//! What each block costs (32 weights): one or two 16-byte loads, the nibble split (Q4), 2 + 4
//! integer widenings and 4 i32→f32 conversions per 16 quants, then per token 8 f32x4 multiplies of
//! the quants with the 32 inputs summed as a tree, scaled by the block scale d into one f32x4
//! accumulator per token (one horizontal sum per output, not per block); the Q4_1 min term m·Σx
//! uses Σx per (token, block) computed once per call by `cpu_matvec::forward`.
//!
//! A browser without SIMD128 cannot compile a module built this way (`WebAssembly.CompileError`);
//! every browser with WebGPU has it (Chrome 91+, Firefox 89+, Safari 16.4+), and the page says
//! which feature is missing when instantiation fails (web/src/wasm_error.ts).
#![cfg(all(target_arch = "wasm32", target_feature = "simd128"))]

use core::arch::wasm32::*;

use crate::models::llama::f16_bits_to_f32;
use crate::tensor::quant::{BlockFormat, QK, SplitBlocks};

/// v0 + v1 + v2 + v3 as (v0 + v2) + (v1 + v3).
#[inline(always)]
fn hsum(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 2, 3>(v, v));
    f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s)
}

/// Σ a[j]·b[j] over the first min(a.len(), b.len()) elements: four f32x4 accumulators (16 per
/// step), then 4 at a time, then a scalar tail.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let z = f32x4_splat(0.0);
    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
    let mut j = 0;
    // SAFETY: every load reads 4 f32 at j.. with j + 4 ≤ n ≤ both lengths (v128_load is unaligned).
    unsafe {
        let ld = |p: *const f32, k: usize| v128_load(p.add(k) as *const v128);
        while j + 16 <= n {
            a0 = f32x4_add(a0, f32x4_mul(ld(pa, j), ld(pb, j)));
            a1 = f32x4_add(a1, f32x4_mul(ld(pa, j + 4), ld(pb, j + 4)));
            a2 = f32x4_add(a2, f32x4_mul(ld(pa, j + 8), ld(pb, j + 8)));
            a3 = f32x4_add(a3, f32x4_mul(ld(pa, j + 12), ld(pb, j + 12)));
            j += 16;
        }
        while j + 4 <= n {
            a0 = f32x4_add(a0, f32x4_mul(ld(pa, j), ld(pb, j)));
            j += 4;
        }
    }
    let mut s = hsum(f32x4_add(f32x4_add(a0, a2), f32x4_add(a1, a3)));
    while j < n {
        s += a[j] * b[j];
        j += 1;
    }
    s
}

/// 16 signed bytes → 4 f32x4 (lanes 0–3, 4–7, 8–11, 12–15).
#[inline(always)]
fn widen_i8(v: v128) -> [v128; 4] {
    let lo = i16x8_extend_low_i8x16(v);
    let hi = i16x8_extend_high_i8x16(v);
    [
        f32x4_convert_i32x4(i32x4_extend_low_i16x8(lo)),
        f32x4_convert_i32x4(i32x4_extend_high_i16x8(lo)),
        f32x4_convert_i32x4(i32x4_extend_low_i16x8(hi)),
        f32x4_convert_i32x4(i32x4_extend_high_i16x8(hi)),
    ]
}

/// A block's 32 quants as 8 f32x4 (quant j in vector j / 4, lane j % 4).
type Quants = [v128; 8];

#[inline(always)]
fn join(a: [v128; 4], b: [v128; 4]) -> Quants {
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// Q8_0 quants: 32 signed bytes at `p`.
///
/// # Safety
/// `p..p + 32` must be readable.
#[inline(always)]
unsafe fn quants_q8_0(p: *const u8) -> Quants {
    // SAFETY: the caller guarantees 32 readable bytes.
    unsafe { join(widen_i8(v128_load(p as *const v128)), widen_i8(v128_load(p.add(16) as *const v128))) }
}

/// Q4_0 / Q4_1 quants: 16 bytes at `p`, low nibbles are quants 0–15, high nibbles 16–31; Q4_0
/// subtracts 8 (`offset`), Q4_1 keeps 0–15.
///
/// # Safety
/// `p..p + 16` must be readable.
#[inline(always)]
unsafe fn quants_q4(p: *const u8, offset: bool) -> Quants {
    // SAFETY: the caller guarantees 16 readable bytes.
    let v = unsafe { v128_load(p as *const v128) };
    let mut lo = v128_and(v, u8x16_splat(0x0F));
    let mut hi = u8x16_shr(v, 4);
    if offset {
        lo = i8x16_sub(lo, i8x16_splat(8));
        hi = i8x16_sub(hi, i8x16_splat(8));
    }
    join(widen_i8(lo), widen_i8(hi))
}

/// Σ_j q_j·x_j over one block as 4 lanes (the caller scales and accumulates them).
///
/// # Safety
/// `xp..xp + 32` f32 must be readable.
#[inline(always)]
unsafe fn block_dot(q: &Quants, xp: *const f32) -> v128 {
    // SAFETY: the caller guarantees 32 readable f32.
    unsafe {
        let ld = |k: usize| v128_load(xp.add(4 * k) as *const v128);
        let a = f32x4_add(f32x4_mul(q[0], ld(0)), f32x4_mul(q[1], ld(1)));
        let b = f32x4_add(f32x4_mul(q[2], ld(2)), f32x4_mul(q[3], ld(3)));
        let c = f32x4_add(f32x4_mul(q[4], ld(4)), f32x4_mul(q[5], ld(5)));
        let d = f32x4_add(f32x4_mul(q[6], ld(6)), f32x4_mul(q[7], ld(7)));
        f32x4_add(f32x4_add(a, b), f32x4_add(c, d))
    }
}

/// Rows o0.. of yt (out, T) for block weights: `unpack(b)` gives block b's quants and its
/// (scale d, min m), w_j = d·q_j + m; y_o[t] = Σ_b d·(q·x_tb) + m·Σx_tb.
///
/// # Safety
/// `unpack(b)` must be sound for every block b of rows o0 .. o0 + yt.len() / t.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_blocks<U: Fn(usize) -> (Quants, f32, f32)>(x: &[f32], xsum: &[f32], inp: usize, t: usize, yt: &mut [f32], o0: usize, has_min: bool, unpack: U) {
    assert!(inp.is_multiple_of(QK) && x.len() >= t * inp, "x ({}) holds fewer than T = {t} rows of {inp}", x.len());
    let nb = inp / QK;
    assert!(!has_min || xsum.len() >= t * nb, "Σx has {} sums, expected {}", xsum.len(), t * nb);
    let rows = yt.len() / t;
    let xp = x.as_ptr();
    let z = f32x4_splat(0.0);
    if t == 1 {
        for (i, y) in yt.iter_mut().enumerate() {
            let first = (o0 + i) * nb;
            let (mut acc, mut ms) = (z, 0.0f32);
            for b in 0..nb {
                let (q, d, m) = unpack(first + b);
                // SAFETY: block b's inputs x[b·32 .. b·32 + 32] lie within x (checked above).
                acc = f32x4_add(acc, f32x4_mul(f32x4_splat(d), unsafe { block_dot(&q, xp.add(b * QK)) }));
                if has_min {
                    ms += m * xsum[b];
                }
            }
            *y = hsum(acc) + ms;
        }
        return;
    }
    let mut acc = vec![z; t];
    let mut ms = vec![0.0f32; t];
    for i in 0..rows {
        let first = (o0 + i) * nb;
        acc.fill(z);
        ms.fill(0.0);
        for b in 0..nb {
            let (q, d, m) = unpack(first + b);
            let dv = f32x4_splat(d);
            for (ti, a) in acc.iter_mut().enumerate() {
                // SAFETY: token ti's block b inputs lie within x (x.len() ≥ t·inp, checked above).
                *a = f32x4_add(*a, f32x4_mul(dv, unsafe { block_dot(&q, xp.add(ti * inp + b * QK)) }));
            }
            if has_min {
                for (ti, s) in ms.iter_mut().enumerate() {
                    *s += m * xsum[ti * nb + b];
                }
            }
        }
        for ti in 0..t {
            yt[i * t + ti] = hsum(acc[ti]) + ms[ti];
        }
    }
}

/// The f16 at `p` (little-endian) as f32.
///
/// # Safety
/// `p..p + 2` must be readable.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes.
    f16_bits_to_f32(u16::from_le_bytes(unsafe { [*p, *p.add(1)] }))
}

/// Rows o0.. of yt (out, T) for f32 weights w (out, in) with the bias.
pub(crate) fn rows_f32(w: &[f32], bias: Option<&[f32]>, x: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32]) {
    for (i, y) in yt.chunks_exact_mut(t).enumerate() {
        let o = o0 + i;
        let wr = &w[o * inp..(o + 1) * inp];
        let b = bias.map_or(0.0, |b| b[o]);
        for (ti, yv) in y.iter_mut().enumerate() {
            *yv = dot(wr, &x[ti * inp..(ti + 1) * inp]) + b;
        }
    }
}

/// Rows o0.. of yt (out, T) for GGUF block bytes (row-major blocks, in/32 per row).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_gguf(format: BlockFormat, bytes: &[u8], x: &[f32], xsum: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32]) {
    if t == 0 {
        return;
    }
    let bb = format.block_bytes();
    let end = (o0 + yt.len() / t) * (inp / QK);
    assert!(bytes.len() >= end * bb, "{format}: {} bytes hold fewer than the {end} blocks of rows ..{}", bytes.len(), o0 + yt.len() / t);
    let base = bytes.as_ptr();
    // SAFETY (each closure): block b < end starts at b·bb and has bb bytes (checked above); the
    // quants are bytes 2..34 (Q8_0), 2..18 (Q4_0) or 4..20 (Q4_1) of it.
    unsafe {
        match format {
            BlockFormat::Q8_0 => rows_blocks(x, xsum, inp, t, yt, o0, false, |b| {
                let p = base.add(b * bb);
                (quants_q8_0(p.add(2)), f16_at(p), 0.0)
            }),
            BlockFormat::Q4_0 => rows_blocks(x, xsum, inp, t, yt, o0, false, |b| {
                let p = base.add(b * bb);
                (quants_q4(p.add(2), true), f16_at(p), 0.0)
            }),
            BlockFormat::Q4_1 => rows_blocks(x, xsum, inp, t, yt, o0, true, |b| {
                let p = base.add(b * bb);
                (quants_q4(p.add(4), false), f16_at(p), f16_at(p.add(2)))
            }),
        }
    }
}

/// Rows o0.. of yt (out, T) for the split layout (f32 scales and mins, u32 quant words; byte k
/// of a block's quants is byte k % 4 of word k / 4, i.e. the words in memory are the GGUF quant
/// bytes in order on little-endian wasm).
pub(crate) fn rows_split(s: &SplitBlocks, x: &[f32], xsum: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32]) {
    if t == 0 {
        return;
    }
    let words = s.format.quant_words();
    let end = (o0 + yt.len() / t) * (inp / QK);
    assert!(
        s.qs.len() >= end * words && s.scales.len() >= end,
        "{}: split layout with {} scales and {} quant words holds fewer than {end} blocks",
        s.format,
        s.scales.len(),
        s.qs.len()
    );
    let qs = s.qs.as_ptr() as *const u8;
    let scales = &s.scales;
    let mins = s.mins.as_deref().unwrap_or(&[]);
    // SAFETY (each closure): block b < end has `words` u32 at qs[b·words..] (checked above).
    unsafe {
        match s.format {
            BlockFormat::Q8_0 => rows_blocks(x, xsum, inp, t, yt, o0, false, |b| (quants_q8_0(qs.add(b * words * 4)), scales[b], 0.0)),
            BlockFormat::Q4_0 => rows_blocks(x, xsum, inp, t, yt, o0, false, |b| (quants_q4(qs.add(b * words * 4), true), scales[b], 0.0)),
            BlockFormat::Q4_1 => rows_blocks(x, xsum, inp, t, yt, o0, true, |b| (quants_q4(qs.add(b * words * 4), false), scales[b], mins.get(b).copied().unwrap_or(0.0))),
        }
    }
}

/// 4 IEEE binary16 values (the low 16 bits of each u32 lane) widened exactly to f32x4, as
/// `llama::f16_bits_to_f32`: |h| << 13 read as f32 and multiplied by 2¹¹² gives every finite value
/// exactly (normal: the exponent re-biased from 15 to 127; subnormal: an f32 subnormal scaled into
/// range; wasm keeps subnormals); Inf / NaN (exponent 31) keep their payload with an all-ones
/// exponent; the sign is OR-ed back.
#[inline(always)]
fn widen_f16x4(h: v128) -> v128 {
    let em = v128_and(h, u32x4_splat(0x7FFF));
    let sign = i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
    let shifted = i32x4_shl(em, 13);
    let finite = f32x4_mul(shifted, f32x4_splat(f32::from_bits((127 + 112) << 23))); // × 2¹¹²
    let special = v128_or(shifted, u32x4_splat(0x7F80_0000));
    v128_or(v128_bitselect(special, finite, u32x4_ge(em, u32x4_splat(0x7C00))), sign)
}

/// Σ f16(w[j])·x[j] over the first min(w.len(), x.len()) elements: 8 halves per load widened
/// exactly ([`widen_f16x4`]), two f32x4 accumulators, scalar tail.
#[inline]
pub fn dot_f16(w: &[u16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let z = f32x4_splat(0.0);
    let (mut a0, mut a1) = (z, z);
    let mut j = 0;
    // SAFETY: each step reads 8 u16 and 8 f32 at j.. with j + 8 ≤ n ≤ both lengths.
    unsafe {
        while j + 8 <= n {
            let h = v128_load(pw.add(j) as *const v128);
            let lo = widen_f16x4(u32x4_extend_low_u16x8(h));
            let hi = widen_f16x4(u32x4_extend_high_u16x8(h));
            a0 = f32x4_add(a0, f32x4_mul(lo, v128_load(px.add(j) as *const v128)));
            a1 = f32x4_add(a1, f32x4_mul(hi, v128_load(px.add(j + 4) as *const v128)));
            j += 8;
        }
    }
    let mut s = hsum(f32x4_add(a0, a1));
    while j < n {
        s += f16_bits_to_f32(w[j]) * x[j];
        j += 1;
    }
    s
}

/// Rows o0.. of yt (out, T) for F16 weights (out, in) as IEEE binary16 bits, with the bias.
pub(crate) fn rows_f16(w: &[u16], bias: Option<&[f32]>, x: &[f32], inp: usize, t: usize, o0: usize, yt: &mut [f32]) {
    for (i, y) in yt.chunks_exact_mut(t).enumerate() {
        let o = o0 + i;
        let wr = &w[o * inp..(o + 1) * inp];
        let b = bias.map_or(0.0, |b| b[o]);
        for (ti, yv) in y.iter_mut().enumerate() {
            *yv = dot_f16(wr, &x[ti * inp..(ti + 1) * inp]) + b;
        }
    }
}
