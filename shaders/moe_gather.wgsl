// moe_gather.wgsl: gather the tokens routed to one expert into a contiguous block.
//
//   out[i, :] = x[idx[offset + i], :]        x: (T, H), idx: u32 list, out: (n, H), i < n
//
// The per-expert token lists (counts + offsets + indices) are built on the CPU from the
// read-back top-k (crate/src/ops/moe.rs `MoePlan`), as transformers' `MixtralExperts` gathers
// per expert. Host side and CPU reference: crate/src/ops/moe.rs.
//
// Bindings (group 0)
//   0  params  uniform  Meta (16 bytes)
//   1  x       storage, read        array<f32>  (T·H)
//   2  idx     storage, read        array<u32>  (≥ offset + n)
//   3  out     storage, read_write  array<f32>  (n·H)
//
// Workgroup layout: 256 threads, one element each, 2-D grid. No barriers.

const WG: u32 = 256u;

struct Meta {
    n: u32,
    h: u32,
    offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

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
    out[g] = x[idx[params.offset + i] * params.h + j];
}
