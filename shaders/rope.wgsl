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
// The trick: WGSL's sin/cos are only specified to absolute error 2⁻¹¹ on [−π, π], and angles
// reach thousands of radians. We reduce the f32 angle exactly as the CPU sees it: k = round(a/2π),
// r = (a − k·C1) − k·C2 with 2π = C1 + C2 and C1 = 6.28125 (8 significant bits, so k·C1 is exact
// for k < 2¹⁶, i.e. angles below ~4·10⁵ rad), then take sin/cos of r ∈ [−π, π].

const WG: u32 = 256u;
const INV_TWO_PI: f32 = 0.15915494309189535;
const C1: f32 = 6.28125;
const C2: f32 = 0.0019353071795864769;   // 2π − 6.28125

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
    let k = round(angle * INV_TWO_PI);
    let r = (angle - k * C1) - k * C2;
    let c = cos(r) * params.attn;
    let s = sin(r) * params.attn;
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
