// swiglu.wgsl: the gated activation of the Llama MLP, in place over the gate projection.
//
//   g[i] = silu(g[i]) · u[i],  silu(x) = x · σ(x) = x / (1 + e^(−x))      g, u: (n) f32 ((T, I) row-major)
//
// Math: Shazeer 2020 "GLU Variants Improve Transformer" (arXiv:2002.05202), SwiGLU; Ramachandran
// et al. 2017 (arXiv:1710.05941) for SiLU/swish. We match HF transformers
// models/llama/modeling_llama.py `LlamaMLP.forward`: `down_proj(act_fn(gate_proj(x)) * up_proj(x))`
// with `act_fn = nn.SiLU`. Host side and CPU reference: crate/src/ops/swiglu.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (16 bytes)
//   1  g      storage, read_write array<f32>  (n)   gate projection in, activation out
//   2  u      storage, read       array<f32>  (n)   up projection
//
// Workgroup layout: 256 threads, one element each, 2-D grid (i = (wid.y · gx + wid.x) · 256 + lid).
// For x → −∞, e^(−x) overflows to +inf and x / inf = −0, the limit; no special case needed.

const WG: u32 = 256u;

struct Meta {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lid;
    if (i < params.n) {
        let x = g[i];
        g[i] = (x / (1.0 + exp(-x))) * u[i];
    }
}
