//! F16 weights (`WeightStorage::F16`) on the CPU: the fast row dot (F16C on x86-64, scalar
//! elsewhere; `models/cpu_matvec.rs`) against the readable reference, the reference against the
//! f32 layer of the widened weights (bit for bit: f16 ⊂ f32), and resident bytes halved.
//!
//! Run: `cargo test -p crucible --test f16_weights -- --nocapture`
#![cfg(not(target_arch = "wasm32"))]

use crucible::models::{Linear, WeightStorage};

/// Seeded f16 bits in about [-2, 2) with ±0, subnormals and ±65504 mixed in.
fn bits(seed: u64, n: usize) -> Vec<u16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let specials = [0x0000u16, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFBFF];
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if i % 17 == 3 {
                specials[(i / 17) % specials.len()]
            } else {
                half::f16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0).to_bits()
            }
        })
        .collect()
}

fn xs(seed: u64, n: usize) -> Vec<f32> {
    bits(seed, n).iter().map(|&h| half::f16::from_bits(h).to_f32().clamp(-2.0, 2.0) * 0.75).collect()
}

/// Fast (threaded, F16C where the CPU has it) vs reference within 2·K·ε·Σ|w·x| per output
/// (two summation orders of the same exactly widened products); the reference equals the f32
/// layer of the widened weights bit for bit; bias included.
#[test]
fn f16_linear_fast_matches_reference() {
    #[cfg(target_arch = "x86_64")]
    println!("f16c: {}", std::arch::is_x86_feature_detected!("f16c"));
    for (case, &(out, inp)) in [(3usize, 5usize), (7, 16), (64, 576), (300, 600), (33, 1537)].iter().enumerate() {
        let w = bits(case as u64 + 1, out * inp);
        let bias: Vec<f32> = xs(case as u64 + 50, out);
        let lin = Linear::f16(out, inp, w.clone(), Some(bias.clone())).unwrap();
        let wide = Linear::f32(out, inp, lin.to_f32(), Some(bias));
        for t in [1usize, 5] {
            let x = xs(case as u64 + 100 + t as u64, t * inp);
            let fast = lin.forward(&x);
            let reference = lin.forward_reference(&x);
            let f32_ref = wide.forward_reference(&x);
            assert_eq!(reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), f32_ref.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "({out}, {inp}) T={t}");
            for ti in 0..t {
                for o in 0..out {
                    let xr = &x[ti * inp..(ti + 1) * inp];
                    let abs: f64 = w[o * inp..(o + 1) * inp].iter().zip(xr).map(|(&h, &v)| (half::f16::from_bits(h).to_f64() * v as f64).abs()).sum();
                    let bound = 2.0 * inp as f64 * f32::EPSILON as f64 * (abs + wide.bias.as_ref().unwrap()[o].abs() as f64) + 1e-30;
                    let (a, b) = (fast[ti * out + o] as f64, reference[ti * out + o] as f64);
                    assert!((a - b).abs() <= bound, "({out}, {inp}) T={t} [{ti}, {o}]: fast {a} ref {b} bound {bound:e}");
                }
            }
        }
        // the embedding row gather widens exactly
        let mut row = vec![0.0f32; inp];
        lin.row(out - 1, &mut row);
        assert_eq!(row, wide.to_f32()[(out - 1) * inp..].to_vec());
    }
}

/// Resident bytes: an F16 layer holds 2 bytes per weight, half of its f32 widening (+ the f32 bias).
#[test]
fn f16_weight_bytes_are_half_of_f32() {
    let (out, inp) = (48, 96);
    let lin = Linear::f16(out, inp, bits(9, out * inp), None).unwrap();
    assert!(matches!(lin.weight, WeightStorage::F16(_)));
    let wide = Linear::f32(out, inp, lin.to_f32(), None);
    assert_eq!(lin.weight_bytes(), out * inp * 2);
    assert_eq!(wide.weight_bytes(), 2 * lin.weight_bytes());
    let e = Linear::f16(out, inp, vec![0; 5], None).unwrap_err();
    assert!(e.contains("F16: 5 values, expected (48, 96)"), "{e}");
}
