#![cfg(not(target_arch = "wasm32"))]
//! The fast CPU products (`models/cpu_matvec.rs`: scales factored out of block dots, rows split
//! across threads) against the readable reference `Linear::forward_reference`, for f32 weights and
//! Q8_0 / Q4_0 / Q4_1 in both the GGUF block and the split layout; one token (decode) and several
//! (prefill); layers big enough to take the threaded path and small ones that do not.
//! Tolerance: |fast − reference| ≤ 1e-5 · Σ_j |w_j·x_j| per output (f32 summation order only).

use crucible::models::Linear;
use crucible::tensor::quant::{BlockFormat, quantize};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
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
        assert!((a - b).abs() <= 1e-5 * scale.max(1e-6), "{label}: output {i}: fast {a} vs reference {b}");
    }
}

#[test]
fn fast_products_agree_with_the_reference() {
    for &(out, inp) in &[(7usize, 96usize), (300, 256), (1031, 64)] {
        let w = data(out * inp, 1);
        let bias = data(out, 2);
        for t in [1usize, 5] {
            let x = data(t * inp, 3 + t as u64);
            check(&Linear::f32(out, inp, w.clone(), Some(bias.clone())), &x, &format!("f32 ({out}, {inp}) T={t}"));
            for format in BlockFormat::ALL {
                let mut bytes = Vec::new();
                quantize(format, &w, &mut bytes).unwrap();
                let q = Linear::quantized(out, inp, format, bytes, Some(bias.clone())).unwrap();
                check(&q, &x, &format!("{format} blocks ({out}, {inp}) T={t}"));
                let s = q.clone().into_split();
                check(&s, &x, &format!("{format} split ({out}, {inp}) T={t}"));
                // the two layouts unpack the same numbers in the same order
                assert_eq!(s.forward(&x), q.forward(&x), "{format} ({out}, {inp}) T={t}");
            }
        }
    }
}
