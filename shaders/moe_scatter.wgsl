// moe_scatter.wgsl: weighted scatter-add of one expert's outputs back to their tokens.
//
//   c         = w[offset + i]                 (mode 0: the router's combine weight)
//             = sigmoid(w[offset + i])        (mode 1: Qwen2-MoE's shared-expert gate)
//   y[idx[offset + i], :] += c · src[i, :]    y: (T, H), src: (n, H), i < n
//
// One dispatch per expert (a token appears at most once in an expert's list, so there are no
// write races); experts are added in index order, then the shared expert, as the CPU reference
// crate/src/models/moe.rs `MoeBlock::forward` does. Host side: crate/src/ops/moe.rs.
//
// Bindings (group 0)
//   0  params  uniform  Meta (16 bytes)
//   1  y       storage, read_write  array<f32>  (T·H)
//   2  idx     storage, read        array<u32>  (≥ offset + n)
//   3  w       storage, read        array<f32>  (≥ offset + n)
//   4  src     storage, read        array<f32>  (n·H)
//
// Workgroup layout: 256 threads, one element each, 2-D grid. No barriers.

const WG: u32 = 256u;

struct Meta {
    n: u32,
    h: u32,
    offset: u32,
    mode: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> src: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = (wid.y * groups.x + wid.x) * WG + lid;
    if (g >= params.n * params.h) {
        return;
    }
    let i = g / params.h;
    let j = g % params.h;
    var c = w[params.offset + i];
    if (params.mode == 1u) {
        c = 1.0 / (1.0 + exp(-c));
    }
    let dst = idx[params.offset + i] * params.h + j;
    y[dst] = y[dst] + c * src[g];
}
