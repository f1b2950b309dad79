// matmul.wgsl: C = A · Bᵀ in f32, the product of activations with a Linear layer's weight.
//
//   C[i, j] = Σ_k A[i, k] · B[j, k]        A: (M, K), B: (N, K) (nn.Linear's weight layout), C: (M, N)
//
// Math: y = x Wᵀ as in torch.nn.functional.linear (HF transformers' nn.Linear layers).
// Host side and CPU reference: crate/src/ops/matmul.rs.
//
// Bindings (group 0)
//   0  params uniform             Meta (16 bytes)
//   1  a      storage, read       array<f32>  (M · K)  row-major
//   2  b      storage, read       array<f32>  (N · K)  row-major
//   3  c      storage, read_write array<f32>  (M · N)  row-major
//
// Workgroup layout: 16 × 16 threads compute one 64 × 64 tile of C; the grid is
// (⌈N / 64⌉, ⌈M / 64⌉). Thread (tx, ty) owns the 4 × 4 outputs at rows ty + 16·r and columns
// tx + 16·s of the tile (strided, so neighbouring threads touch neighbouring addresses).
//
// The trick: register tiling. Each step stages a 64 × 16 slice of A and of B in workgroup
// memory (k-major, 8 KiB in all; each thread loads 4 + 4 values, consecutive threads reading
// consecutive k: coalesced); then every value read from workgroup memory is used 4 times from
// registers: 8 loads feed 16 multiply-adds. Out-of-range rows/columns load 0 and store nothing,
// so any M, N, K works. The k order is the plain 0..K-1, as in the CPU reference.

const TILE: u32 = 64u;   // tile edge (rows of A and of B per workgroup)
const BK: u32 = 16u;     // k-slice staged per step
const T: u32 = 16u;      // threads per tile edge

struct Meta {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

var<workgroup> a_tile: array<f32, 1024>;  // [kk * 64 + row]
var<workgroup> b_tile: array<f32, 1024>;  // [kk * 64 + col]

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let tx = lid.x;
    let ty = lid.y;

    // acc_r holds the outputs (row ty + 16·r, columns tx + 16·s for s = 0..3) as a vec4:
    // named registers, no dynamically indexed private array (which some compilers spill).
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < params.k; k0 = k0 + BK) {
        // Stage A[m0 .. m0+64, k0 .. k0+16] and B[n0 .. n0+64, k0 .. k0+16].
        for (var q = 0u; q < 4u; q = q + 1u) {
            let l = li + 256u * q;
            let row = l / BK;
            let kk = l % BK;
            let kg = k0 + kk;
            var av = 0.0;
            if (m0 + row < params.m && kg < params.k) {
                av = a[(m0 + row) * params.k + kg];
            }
            a_tile[kk * TILE + row] = av;
            var bv = 0.0;
            if (n0 + row < params.n && kg < params.k) {
                bv = b[(n0 + row) * params.k + kg];
            }
            b_tile[kk * TILE + row] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let ao = kk * TILE + ty;
            let bo = kk * TILE + tx;
            let bv = vec4<f32>(b_tile[bo], b_tile[bo + T], b_tile[bo + 2u * T], b_tile[bo + 3u * T]);
            acc0 = acc0 + a_tile[ao] * bv;
            acc1 = acc1 + a_tile[ao + T] * bv;
            acc2 = acc2 + a_tile[ao + 2u * T] * bv;
            acc3 = acc3 + a_tile[ao + 3u * T] * bv;
        }
        workgroupBarrier();
    }

    store_row(m0 + ty, n0 + tx, acc0);
    store_row(m0 + ty + T, n0 + tx, acc1);
    store_row(m0 + ty + 2u * T, n0 + tx, acc2);
    store_row(m0 + ty + 3u * T, n0 + tx, acc3);
}

// Writes C[i, j + 16·s] = v[s] for the in-range columns of row i.
fn store_row(i: u32, j: u32, v: vec4<f32>) {
    if (i >= params.m) {
        return;
    }
    for (var s = 0u; s < 4u; s = s + 1u) {
        let col = j + T * s;
        if (col < params.n) {
            c[i * params.n + col] = v[s];
        }
    }
}
