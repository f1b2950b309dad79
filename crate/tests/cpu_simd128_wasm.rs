//! The wasm SIMD128 CPU products (`models/cpu_simd128.rs`) in Chromium against the scalar
//! reference: the f32 dot against an f64 sum over every length 0–70 and some longer odd ones, and
//! `Linear::forward` (which runs the SIMD128 loops in this build) against the readable
//! `Linear::forward_reference` for f32 and F16 weights (odd row lengths) and Q8_0 / Q4_0 / Q4_1 in
//! both the GGUF block and the split layout, one token and several, odd numbers of blocks and rows;
//! the SIMD f16 → f32 widening against `half` for every bit pattern.
//! Tolerance: |simd − reference| ≤ 1e-5 · Σ_j |w_j·x_j| per output (f32 summation order only),
//! as natively in `cpu_matvec.rs`.
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown --test cpu_simd128_wasm`
#![cfg(target_arch = "wasm32")]

use crucible::models::Linear;
use crucible::tensor::quant::{BlockFormat, quantize};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// Uniform in [-1, 1) from a 64-bit LCG (Knuth's MMIX constants).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The flag in .cargo/config.toml reached this build, so `Linear::forward` below runs the SIMD128
/// loops (cpu_matvec.rs dispatches on this cfg) and not the scalar ones.
#[wasm_bindgen_test]
fn built_with_simd128() {
    assert!(cfg!(target_feature = "simd128"), "the wasm tests were built without +simd128 (.cargo/config.toml rustflags, or a RUSTFLAGS variable replacing them)");
}

#[cfg(target_feature = "simd128")]
#[wasm_bindgen_test]
fn dot_matches_an_f64_sum_for_every_length() {
    use crucible::models::cpu_simd128::dot;
    let lengths: Vec<usize> = (0..=70).chain([127, 257, 576, 1000, 1537]).collect();
    for &n in &lengths {
        let (a, b) = (data(n, 11 + n as u64), data(n, 97 + n as u64));
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let scale: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
        let got = dot(&a, &b);
        assert!((got as f64 - want).abs() <= 1e-6 * scale.max(1e-6), "n = {n}: simd {got} vs f64 {want}");
        // the shorter slice sets the length
        let longer: Vec<f32> = b.iter().copied().chain([1e30, -1e30, 3.0]).collect();
        assert_eq!(dot(&a, &longer).to_bits(), got.to_bits(), "n = {n}: extra elements of the longer slice were read");
    }
}

fn check(lin: &Linear, x: &[f32], label: &str) {
    let fast = lin.forward(x);
    let reference = lin.forward_reference(x);
    assert_eq!(fast.len(), reference.len(), "{label}");
    let w = lin.to_f32();
    let (inp, out) = (lin.in_features, lin.out_features);
    for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
        let (ti, o) = (i / out, i % out);
        let scale: f32 = (0..inp).map(|j| (w[o * inp + j] * x[ti * inp + j]).abs()).sum::<f32>() + lin.bias.as_ref().map_or(0.0, |b| b[o].abs());
        assert!((a - b).abs() <= 1e-5 * scale.max(1e-6), "{label}: output {i}: simd {a} vs reference {b}");
    }
}

#[wasm_bindgen_test]
fn f32_products_agree_with_the_reference_for_odd_lengths() {
    for &(out, inp) in &[(1usize, 1usize), (3, 5), (7, 37), (13, 64), (5, 129)] {
        let w = data(out * inp, 1 + inp as u64);
        let bias = data(out, 2);
        for t in [1usize, 2, 5] {
            let x = data(t * inp, 3 + t as u64);
            check(&Linear::f32(out, inp, w.clone(), Some(bias.clone())), &x, &format!("f32 ({out}, {inp}) T={t}"));
            check(&Linear::f32(out, inp, w.clone(), None), &x, &format!("f32 no bias ({out}, {inp}) T={t}"));
        }
    }
}

#[wasm_bindgen_test]
fn block_products_agree_with_the_reference_in_every_format() {
    // 1, 3, 8 and 33 blocks per row; odd row counts
    for &(out, inp) in &[(1usize, 32usize), (7, 96), (33, 256), (5, 1056)] {
        let w = data(out * inp, 5 + out as u64);
        let bias = data(out, 6);
        for t in [1usize, 2, 5] {
            let x = data(t * inp, 7 + t as u64);
            for format in BlockFormat::ALL {
                let mut bytes = Vec::new();
                quantize(format, &w, &mut bytes).unwrap();
                let q = Linear::quantized(out, inp, format, bytes, Some(bias.clone())).unwrap();
                check(&q, &x, &format!("{format} blocks ({out}, {inp}) T={t}"));
                let s = q.clone().into_split();
                check(&s, &x, &format!("{format} split ({out}, {inp}) T={t}"));
                // the two layouts feed the same quants and scales to the same loop
                assert_eq!(s.forward(&x), q.forward(&x), "{format} ({out}, {inp}) T={t}");
            }
        }
    }
}

/// Inputs far from [-1, 1] (large and tiny magnitudes, mixed signs) stay within the tolerance too:
/// the block scale is applied after the 32-term dot, as in the scalar path.
#[wasm_bindgen_test]
fn block_products_agree_for_wide_ranges() {
    let (out, inp, t) = (9usize, 160usize, 3usize);
    let w: Vec<f32> = data(out * inp, 41).iter().enumerate().map(|(i, v)| v * [1e-3, 1.0, 40.0][i % 3]).collect();
    let x: Vec<f32> = data(t * inp, 43).iter().enumerate().map(|(i, v)| v * [100.0, 1e-4, 1.0, 7.0][i % 4]).collect();
    for format in BlockFormat::ALL {
        let mut bytes = Vec::new();
        quantize(format, &w, &mut bytes).unwrap();
        let q = Linear::quantized(out, inp, format, bytes, None).unwrap();
        check(&q, &x, &format!("{format} wide ranges"));
        check(&q.into_split(), &x, &format!("{format} split wide ranges"));
    }
}

/// The SIMD128 f16 → f32 widening equals `half`'s for every one of the 65 536 bit patterns, in
/// every lane (NaNs: NaN; ±0: a zero, since the sums start from +0; the other lanes hold −0
/// weights so that the sum is the widened value).
#[cfg(target_feature = "simd128")]
#[wasm_bindgen_test]
fn f16_widening_is_exact_for_every_f16_in_every_lane() {
    use crucible::models::cpu_simd128::dot_f16;
    let ones = [1.0f32; 8];
    for h in 0..=u16::MAX {
        let want = half::f16::from_bits(h).to_f32();
        for lane in 0..8 {
            let mut w = [0x8000u16; 8];
            w[lane] = h;
            let got = dot_f16(&w, &ones);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()) || (got == 0.0 && want == 0.0), "{h:#06x} in lane {lane}: {got} vs {want}");
        }
    }
}

#[wasm_bindgen_test]
fn f16_products_agree_with_the_reference_for_odd_lengths() {
    for &(out, inp) in &[(1usize, 1usize), (3, 7), (7, 37), (13, 64), (5, 129)] {
        let w: Vec<u16> = data(out * inp, 21 + inp as u64).iter().map(|v| half::f16::from_f32(*v).to_bits()).collect();
        let bias = data(out, 22);
        for t in [1usize, 2, 5] {
            let x = data(t * inp, 23 + t as u64);
            check(&Linear::f16(out, inp, w.clone(), Some(bias.clone())).unwrap(), &x, &format!("f16 ({out}, {inp}) T={t}"));
        }
    }
}
