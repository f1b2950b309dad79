// router.wgsl: a mixture-of-experts router's softmax + top-k, one token per thread.
//
//   p      = softmax(logits[t])                     logits: (T, E) f32
//   idx[t] = top-k of p (ties: the lower expert index first)
//   w[t]   = p[idx] / Σ p[idx]    (renorm = 1: Mixtral, Qwen2-MoE with norm_topk_prob)
//          = p[idx]               (renorm = 0: Qwen2-MoE default)
//   out    = [w (T, k) | idx (T, k) as f32]          (2·T·k) f32, one buffer so one readback
//
// Mixtral's "softmax over the top-k logits" equals softmax-then-renormalise (the form
// transformers computes). Papers: Shazeer et al. arXiv 1701.06538; Mixtral arXiv 2401.04088.
// Reference implementations: HF transformers `MixtralTopKRouter` / `Qwen2MoeTopKRouter`; the
// readable CPU version is crate/src/models/moe.rs `route` (host side: crate/src/ops/router.rs).
//
// Top-k without a per-thread array: the j-th pick is the best expert in the order
// (p descending, index ascending) strictly after the (j-1)-th pick in that order.
//
// Bindings (group 0)
//   0  params  uniform  Meta (16 bytes)
//   1  logits  storage, read        array<f32>  (T·E)
//   2  out     storage, read_write  array<f32>  (2·T·k)

const WG: u32 = 64u;

struct Meta {
    t: u32,
    e: u32,
    k: u32,
    renorm: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = (wid.y * groups.x + wid.x) * WG + lid;
    if (t >= params.t) {
        return;
    }
    let e_n = params.e;
    let base = t * e_n;
    var m = logits[base];
    for (var e = 1u; e < e_n; e = e + 1u) {
        m = max(m, logits[base + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < e_n; e = e + 1u) {
        sum = sum + exp(logits[base + e] - m);
    }
    let tk = params.t * params.k;
    var prev_p = 0.0;
    var prev_i = 0u;
    var denom = 0.0;
    for (var j = 0u; j < params.k; j = j + 1u) {
        var best_p = -1.0;
        var best_i = 0u;
        for (var e = 0u; e < e_n; e = e + 1u) {
            let p = exp(logits[base + e] - m) / sum;
            let after = j == 0u || p < prev_p || (p == prev_p && e > prev_i);
            if (after && p > best_p) {
                best_p = p;
                best_i = e;
            }
        }
        out[t * params.k + j] = best_p;
        out[tk + t * params.k + j] = f32(best_i);
        denom = denom + best_p;
        prev_p = best_p;
        prev_i = best_i;
    }
    if (params.renorm != 0u) {
        for (var j = 0u; j < params.k; j = j + 1u) {
            out[t * params.k + j] = out[t * params.k + j] / denom;
        }
    }
}
