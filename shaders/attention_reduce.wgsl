// attention_reduce.wgsl: merges the per-split partials of shaders/attention.wgsl (split-K /
// flash-decoding) into the attention output.
//
//   M = max_s m_s,   ℓ = Σ_s e^(m_s − M)·ℓ_s,   O = (Σ_s e^(m_s − M)·Õ_s) / ℓ
//
// Math: Milakov & Gimelshein (arXiv:1805.02867) for combining partial softmax normalisers;
// flash-decoding; llama.cpp's WebGPU `flash_attn_vec_reduce.wgsl`. Host side: crate/src/ops/attention.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (48 bytes, the same struct as attention.wgsl)
//   1  part   storage, read       array<f32>  (T, n_heads, splits, head_dim + 2)
//   2  out    storage, read_write array<f32>  (T, n_heads, head_dim)
//
// Workgroup layout: 64 threads per (t, head) row, one workgroup each on a 2-D grid; every thread
// recomputes M and ℓ from the splits' (m, ℓ) (a few reads, no barrier) and writes its dimensions.

const WG: u32 = 64u;

struct Meta {
    t: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    pos0: u32,
    window: u32,
    splits: u32,
    split_len: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * groups.x + wid.x;
    if (row >= params.t * params.n_heads) {
        return;
    }
    let hd = params.head_dim;
    let stride = hd + 2u;
    let base = row * params.splits * stride;
    var mx = -3.0e38;
    for (var s = 0u; s < params.splits; s = s + 1u) {
        mx = max(mx, part[base + s * stride]);
    }
    var l = 0.0;
    for (var s = 0u; s < params.splits; s = s + 1u) {
        l = l + exp(part[base + s * stride] - mx) * part[base + s * stride + 1u];
    }
    for (var d = lid; d < hd; d = d + WG) {
        var acc = 0.0;
        for (var s = 0u; s < params.splits; s = s + 1u) {
            acc = acc + exp(part[base + s * stride] - mx) * part[base + s * stride + 2u + d];
        }
        out[row * hd + d] = acc / l;
    }
}
