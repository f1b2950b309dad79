// hmatmul.wgsl: matrix–matrix product for F16 weights (batched prefill), widening f16 → f32 in the
// kernel.
//
//   Y[i, c0 + j] = Σ_{k<K} X[i, k] · W[j, k]    X: (M, K) f32 (M tokens), W: (rows, K) binary16,
//                                               Y: (M, ldc) f32 row-major; this dispatch writes
//                                               columns c0 .. c0 + rows
//
// i.e. y = x Wᵀ of torch.nn.functional.linear for M tokens at once. All arithmetic is f32 on
// exactly widened weights; the k order is 0..K-1 as in the CPU reference (crate/src/ops/hmatmul.rs).
// Kernel shape: shaders/matmul.wgsl (64 × 64 output tiles, 16 × 16 threads, 4 × 4 register tile,
// 64 × 16 slices of X and W staged in workgroup memory), after llama.cpp's `mul_mm` shaders
// (Vulkan `mul_mm.comp` with f16 B: the weights are widened once into shared memory).
//
// The host prepends the same preludes as shaders/hmatvec.wgsl (binding 1 `w`, `w4(i)`: weights
// 4i .. 4i+3 widened to f32; `enable f16;` with `shader-f16`, packed u32 + `unpack2x16float`
// without). K is a multiple of 4.
//
// Bindings (group 0)
//   0  params uniform             Meta (32 bytes)
//   1  w      storage, read       (prelude)    (rows · K) binary16
//   2  x      storage, read       array<f32>   (M · K)
//   3  y      storage, read_write array<f32>   (M · ldc)
//
// Workgroup layout: grid (⌈rows / 64⌉, ⌈M / 64⌉); thread (tx, ty) owns the outputs at tokens
// ty + 16·r and weight rows tx + 16·s of the tile. Per k-step each of the 256 threads stages one
// vec4 of W (tile row li / 4, k 4·(li % 4) .. +3: one 8-byte load, widened once) and 4 values of X.
// Out-of-range rows / tokens / k stage 0 and store nothing; barriers are in uniform control flow.

const TILE: u32 = 64u;
const BK: u32 = 16u;
const T: u32 = 16u;

struct Meta {
    m: u32,       // tokens M
    rows: u32,    // weight rows in this dispatch (a chunk of N)
    k: u32,       // row length K, a multiple of 4
    ldc: u32,     // row stride of y (N)
    c0: u32,      // first column of y this dispatch writes
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Meta;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> a_tile: array<f32, 1024>;  // [kk * 64 + token]
var<workgroup> b_tile: array<f32, 1024>;  // [kk * 64 + weight row]

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
    let k4 = params.k / 4u;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < params.k; k0 = k0 + BK) {
        // X[m0 .. m0+64, k0 .. k0+16]: 4 values per thread, consecutive threads along k.
        for (var q = 0u; q < 4u; q = q + 1u) {
            let l = li + 256u * q;
            let row = l / BK;
            let kk = l % BK;
            let kg = k0 + kk;
            var av = 0.0;
            if (m0 + row < params.m && kg < params.k) {
                av = x[(m0 + row) * params.k + kg];
            }
            a_tile[kk * TILE + row] = av;
        }
        // W[n0 .. n0+64, k0 .. k0+16]: one vec4 per thread (K % 4 == 0, so kg < K ⇒ kg + 3 < K).
        let wr = li / 4u;
        let kq = 4u * (li % 4u);
        var wv = vec4<f32>(0.0);
        if (n0 + wr < params.rows && k0 + kq < params.k) {
            wv = w4((n0 + wr) * k4 + (k0 + kq) / 4u);
        }
        b_tile[kq * TILE + wr] = wv.x;
        b_tile[(kq + 1u) * TILE + wr] = wv.y;
        b_tile[(kq + 2u) * TILE + wr] = wv.z;
        b_tile[(kq + 3u) * TILE + wr] = wv.w;
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

// Y[i, c0 + j + 16·s] = v[s] for the in-range weight rows j + 16·s of token i.
fn store_row(i: u32, j: u32, v: vec4<f32>) {
    if (i >= params.m) {
        return;
    }
    for (var s = 0u; s < 4u; s = s + 1u) {
        let col = j + T * s;
        if (col < params.rows) {
            y[i * params.ldc + params.c0 + col] = v[s];
        }
    }
}
