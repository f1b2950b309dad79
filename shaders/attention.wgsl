// attention.wgsl: causal grouped-query attention over the GPU-resident KV cache with the online
// softmax (FlashAttention) formulation; optionally split over the keys (flash-decoding), each
// split writing a partial (m, ℓ, Õ) that shaders/attention_reduce.wgsl merges.
//
// For query row t (absolute position p = pos0 + t) of head h, KV head h / (n_heads / n_kv_heads)
// (GQA), visible keys j ∈ [lo, p] with lo = max(0, p + 1 − window) (window 0 = none):
//   S_j = (q·k_j) · scale
// visited in tiles of 64 keys with a running max m, denominator ℓ and unnormalised output Õ:
//   m' = max(m, max_j S_j);  P_j = e^(S_j − m');  ℓ' = e^(m − m')·ℓ + Σ P_j;  Õ' = e^(m − m')·Õ + Σ P_j·v_j
// and finally O = Õ / ℓ (splits = 1), or (m, ℓ, Õ) of this split's key range (splits > 1).
//
// Math: Milakov & Gimelshein, "Online normalizer calculation for softmax" (arXiv:1805.02867);
// Dao et al., FlashAttention (arXiv:2205.14135, Alg. 1) and FlashAttention-2 (arXiv:2307.08691,
// 1/ℓ deferred to the end); split-K merge as flash-decoding / llama.cpp's WebGPU
// `flash_attn_vec_split.wgsl` + `flash_attn_vec_reduce.wgsl`. GQA: Ainslie et al. (arXiv:2305.13245).
// The softmax itself matches HF transformers `eager_attention_forward` (models/llama/modeling_llama.py).
// Host side, KV cache and CPU reference: crate/src/ops/attention.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (48 bytes)
//   1  q      storage, read       array<f32>  (T, n_heads, head_dim)
//   2  k      storage, read       array<f32>  (capacity, n_kv_heads, head_dim)   the cache
//   3  v      storage, read       array<f32>  (capacity, n_kv_heads, head_dim)
//   4  out    storage, read_write array<f32>  splits = 1: (T, n_heads, head_dim)
//                                             splits > 1: (T, n_heads, splits, head_dim + 2) as
//                                             [m, ℓ, Õ_0 .. Õ_{hd−1}] per split
//
// Workgroup layout: 64 threads per (t, head, split), one workgroup each on a 2-D grid. In a tile,
// thread l scores key j0 + l (a head_dim-long dot product against q staged in workgroup memory);
// every thread then reads the 64 scores for the tile max (cheaper than a tree of barriers on CPU
// implementations such as lavapipe and SwiftShader), writes its P_j, and after one barrier every
// thread accumulates Σ P_j and Σ P_j·v_j for the output dimensions it owns (l, l + 64, l + 128,
// l + 192: head_dim ≤ 256). Three barriers per 64 keys. Running values are kept as finite numbers
// (m starts at −3·10³⁸, masked keys get P = 0 explicitly) so no inf − inf NaN can arise; a split
// with no visible key writes m = −3·10³⁸, ℓ = 0, Õ = 0, which the reduce weighs by e^(−huge) = 0.

const WG: u32 = 64u;
const TK: u32 = 64u;
const MAX_HD: u32 = 256u;
const NEG: f32 = -3.0e38;

struct Meta {
    t: u32,           // query rows
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    pos0: u32,        // absolute position of query row 0
    window: u32,      // sliding window (keys), 0 = none
    splits: u32,      // key splits per (t, head)
    split_len: u32,   // keys per split
    scale: f32,       // softmax scale, 1/√head_dim
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> q_s: array<f32, MAX_HD>;
var<workgroup> s_s: array<f32, TK>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wid.y * groups.x + wid.x;
    // g and params are uniform, so this early exit keeps the barriers below in uniform control flow.
    if (g >= params.t * params.n_heads * params.splits) {
        return;
    }
    let hd = params.head_dim;
    let split = g % params.splits;
    let row = g / params.splits;               // t · n_heads + head
    let head = row % params.n_heads;
    let t = row / params.n_heads;
    let kvh = head / (params.n_heads / params.n_kv_heads);
    let kv_stride = params.n_kv_heads * hd;

    let visible = params.pos0 + t + 1u;        // keys 0 .. visible − 1 (causal)
    var lo = 0u;
    if (params.window > 0u && visible > params.window) {
        lo = visible - params.window;
    }
    let start = lo + split * params.split_len;
    let end = min(visible, start + params.split_len);

    for (var d = lid; d < hd; d = d + WG) {
        q_s[d] = q[row * hd + d];
    }
    workgroupBarrier();

    var m = NEG;
    var l = 0.0;
    var o = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var j0 = start; j0 < end; j0 = j0 + TK) {
        let n = min(TK, end - j0);
        // Scores of this tile: thread lid takes key j0 + lid.
        var sc = NEG;
        if (lid < n) {
            let kb = (j0 + lid) * kv_stride + kvh * hd;
            var dot = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                dot = dot + q_s[d] * k[kb + d];
            }
            sc = dot * params.scale;
        }
        s_s[lid] = sc;
        workgroupBarrier();
        var tile_max = NEG;
        for (var jj = 0u; jj < n; jj = jj + 1u) {
            tile_max = max(tile_max, s_s[jj]);
        }
        let m_new = max(m, tile_max);
        workgroupBarrier();
        var p = 0.0;
        if (lid < n) {
            p = exp(sc - m_new);
        }
        s_s[lid] = p;
        workgroupBarrier();
        let alpha = exp(m - m_new);
        var psum = 0.0;
        for (var r = 0u; r < 4u; r = r + 1u) {
            o[r] = o[r] * alpha;
        }
        for (var jj = 0u; jj < n; jj = jj + 1u) {
            let pj = s_s[jj];
            psum = psum + pj;
            let vb = (j0 + jj) * kv_stride + kvh * hd;
            for (var r = 0u; r < 4u; r = r + 1u) {
                let d = lid + WG * r;
                if (d < hd) {
                    o[r] = o[r] + pj * v[vb + d];
                }
            }
        }
        l = l * alpha + psum;
        m = m_new;
        workgroupBarrier();
    }

    if (params.splits == 1u) {
        // At least key p itself is visible, so ℓ ≥ 1.
        for (var r = 0u; r < 4u; r = r + 1u) {
            let d = lid + WG * r;
            if (d < hd) {
                out[row * hd + d] = o[r] / l;
            }
        }
    } else {
        let base = (row * params.splits + split) * (hd + 2u);
        if (lid == 0u) {
            out[base] = m;
            out[base + 1u] = l;
        }
        for (var r = 0u; r < 4u; r = r + 1u) {
            let d = lid + WG * r;
            if (d < hd) {
                out[base + 2u + d] = o[r];
            }
        }
    }
}
