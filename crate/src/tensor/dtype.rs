//! Element types of checkpoint tensors, and exact conversion between their bytes and f32.
//!
//! Merges compute in f32 (f16 and bf16 widen to f32 exactly). Where mergekit computes in the
//! input dtype (task-vector methods on bf16 inputs), `DType::round` emulates the per-operation
//! rounding that torch performs: round-to-nearest-even to the narrower type.
//! Reference: torch `c10/util/BFloat16.h` (round_to_nearest_even), `half` crate for f16.

use half::{bf16, f16};

/// A floating-point element type we read, merge and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

/// An element type this build does not handle, with the place it came from for the message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown or unsupported dtype {found:?} (supported: F32, F16, BF16 in safetensors; float32, float16, bfloat16 in recipes)")]
pub struct UnknownDType {
    pub found: String,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The safetensors header spelling (`"F32"`, `"F16"`, `"BF16"`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    pub fn from_safetensors(s: &str) -> Result<DType, UnknownDType> {
        match s {
            "F32" => Ok(DType::F32),
            "F16" => Ok(DType::F16),
            "BF16" => Ok(DType::BF16),
            other => Err(UnknownDType { found: other.to_string() }),
        }
    }

    /// The mergekit / torch spelling used in recipes (`dtype: bfloat16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    pub fn from_torch(s: &str) -> Result<DType, UnknownDType> {
        match s {
            "float32" | "fp32" | "f32" => Ok(DType::F32),
            "float16" | "fp16" | "f16" | "half" => Ok(DType::F16),
            "bfloat16" | "bf16" => Ok(DType::BF16),
            other => Err(UnknownDType { found: other.to_string() }),
        }
    }

    /// `torch.promote_types` restricted to our three types.
    pub fn promote(a: DType, b: DType) -> DType {
        match (a, b) {
            (x, y) if x == y => x,
            (DType::F32, _) | (_, DType::F32) => DType::F32,
            // f16 with bf16 promotes to f32 in torch
            _ => DType::F32,
        }
    }

    /// Round an f32 to the nearest value representable in `self` (ties to even) and widen it back.
    /// Always inlined: merges call it once per element per operation, and inlined into a loop
    /// the dtype match is hoisted out of it.
    #[inline(always)]
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::BF16 => round_bf16(x),
        }
    }

    /// Decode little-endian bytes of this dtype into f32, appending to `out`.
    /// `bytes.len()` must be a multiple of `self.size()`.
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        debug_assert_eq!(bytes.len() % self.size(), 0);
        out.reserve(bytes.len() / self.size());
        match self {
            DType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            DType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
            DType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        }
    }

    /// Encode f32 values as little-endian bytes of this dtype (round to nearest even), appending to `out`.
    pub fn encode_into(self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.size());
        match self {
            DType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            DType::F16 => values.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            DType::BF16 => values.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        }
    }
}

/// f32 → bf16 → f32 with round-to-nearest-even, as torch's `round_to_nearest_even`: add
/// 0x7FFF plus the lowest kept bit, then drop the low 16 bits. NaN stays a (quiet) NaN.
#[inline(always)]
fn round_bf16(x: f32) -> f32 {
    // Branch-free (a select), so loops over it vectorise.
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    let quiet_nan = (bits | 0x0040_0000) & 0xffff_0000;
    f32::from_bits(if x.is_nan() { quiet_nan } else { rounded })
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_every_dtype() {
        let values = [0.0f32, -1.5, 3.140625, 65504.0, -0.000_061_035_156];
        for dt in DType::ALL {
            let mut bytes = Vec::new();
            dt.encode_into(&values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * dt.size());
            let mut back = Vec::new();
            dt.decode_into(&bytes, &mut back);
            for (v, b) in values.iter().zip(&back) {
                assert_eq!(dt.round(*v), *b, "{dt}: {v}");
            }
        }
    }

    #[test]
    fn fast_bf16_rounding_equals_half_crate() {
        let mut x = 0x9E37_79B9u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            let want = half::bf16::from_f32(v).to_f32();
            let got = DType::BF16.round(v);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{v:e}: {got:e} vs {want:e}");
        }
        for v in [f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -0.0, 0.0, f32::MIN_POSITIVE, 1.0e-45] {
            assert_eq!(DType::BF16.round(v).to_bits(), half::bf16::from_f32(v).to_f32().to_bits(), "{v:e}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1.0).
        assert_eq!(DType::BF16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(DType::BF16.round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    }

    #[test]
    fn names_parse_and_unknown_is_an_error() {
        for dt in DType::ALL {
            assert_eq!(DType::from_safetensors(dt.safetensors_name()), Ok(dt));
            assert_eq!(DType::from_torch(dt.torch_name()), Ok(dt));
        }
        let e = DType::from_safetensors("I64").unwrap_err();
        assert!(e.to_string().contains("I64"));
    }
}
