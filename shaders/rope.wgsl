// rope.wgsl: rotary position embedding of the Q or K rows of T tokens, in place, for every rope
// scaling (the per-pair inverse frequencies θ_i come from the CPU, crate/src/posenc/rope.rs) and
// both pair layouts.
//
//   angle = f32(pos0 + t) · θ_i          (f32 product, as transformers' `position_ids.float() @ inv_freq`)
//   c = cos(angle) · a,  s = sin(angle) · a     a = attention factor (YaRN's mscale; 1 otherwise)
//   (x0, x1) ← (x0·c − x1·s, x1·c + x0·s)
//   pair i = (x[i], x[i + d/2])  Hugging Face `rotate_half` layout  (layout 0)
//          = (x[2i], x[2i + 1])  GGUF / Meta adjacent layout         (layout 1)
// Dimensions d ≤ j < head_dim are left alone (partial rotary).
//
// Math: RoFormer (Su et al., arXiv:2104.09864); scalings: Position Interpolation (arXiv:2306.15595),
// YaRN (arXiv:2309.00071), Llama 3 (arXiv:2407.21783), dynamic NTK. Reference implementation:
// HF transformers `modeling_rope_utils.py` + models/llama/modeling_llama.py `apply_rotary_pos_emb`.
// Host side and CPU reference: crate/src/ops/rope.rs (which calls posenc::rope::apply_rope).
//
// Bindings (group 0)
//   0  params   uniform             Meta (32 bytes)
//   1  x        storage, read_write array<f32>  (T · n_heads · head_dim)  row-major
//   2  inv_freq storage, read       array<f32>  (d/2)
//
// Workgroup layout: 256 threads, one rotary pair each, 2-D grid over T · n_heads · d/2 pairs.
//
// The trick: WGSL's sin/cos are only specified to absolute error 2⁻¹¹ on [−π, π] (SwiftShader's
// are off by ~3·10⁻⁴ relative, measured), and angles reach thousands of radians. So this kernel
// computes them itself, as Cephes `sinf`/`cosf` do: k = round(a · 2/π), y = a − k·(π/2) with π/2
// split in three parts (P1 = 201/128 has 8 significant bits, so k·P1 is exact for k < 2¹⁶, i.e.
// angles below ~10⁵ rad, and a − k·P1 is then exact by Sterbenz; k·P2 and k·P3 round by < 10⁻⁶
// absolute there), y ∈ [−π/4, π/4]; then the Cephes minimax polynomials (≤ ~1 ulp there) and the
// quadrant k mod 4.

const WG: u32 = 256u;
const TWO_OVER_PI: f32 = 0.636619772367581343;
const P1: f32 = 1.5703125;                       // π/2 = P1 + P2 + P3 (Cephes DP1..DP3 × 2)
const P2: f32 = 4.837512969970703125e-4;
const P3: f32 = 7.54978995489188216e-8;

// (sin a, cos a) for an f32 angle a ≥ 0: absolute error ~10⁻⁶ at worst for a < ~10⁵ (header).
fn sin_cos(a: f32) -> vec2<f32> {
    let k = round(a * TWO_OVER_PI);
    let y = ((a - k * P1) - k * P2) - k * P3;
    let z = y * y;
    let s = y + y * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    let q = i32(k) & 3;
    if (q == 0) {
        return vec2<f32>(s, c);
    } else if (q == 1) {
        return vec2<f32>(c, -s);
    } else if (q == 2) {
        return vec2<f32>(-s, -c);
    }
    return vec2<f32>(-c, s);
}

struct Meta {
    t: u32,         // tokens
    n_heads: u32,
    head_dim: u32,
    half: u32,      // d/2 rotary pairs per head
    pos0: u32,      // position of token 0
    pair_layout: u32,  // 0 halves, 1 adjacent
    attn: f32,      // attention factor multiplying cos and sin
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = (wid.y * groups.x + wid.x) * WG + lid;
    if (g >= params.t * params.n_heads * params.half) {
        return;
    }
    let i = g % params.half;
    let row = g / params.half;                  // t · n_heads + head
    let t = row / params.n_heads;
    let angle = f32(params.pos0 + t) * inv_freq[i];
    let sc = sin_cos(angle);
    let s = sc.x * params.attn;
    let c = sc.y * params.attn;
    let base = row * params.head_dim;
    var a = base + i;
    var b = base + i + params.half;
    if (params.pair_layout == 1u) {
        a = base + 2u * i;
        b = a + 1u;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x1 * c + x0 * s;
}
