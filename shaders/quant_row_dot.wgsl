// quant_row_dot.wgsl: one thread's share of a quantized row · x (the matrix–vector kernels'
// inner loop). Not a kernel: the host prepends it, after quant_decode.wgsl, to ops::qmatvec and
// ops::qmatvec_id, whose modules declare what it reads: `scales`, `mins` (array<f32>), `qs`
// (array<u32>), `x` (array<vec4<f32>>) and `TPR` (threads per row).
//
// Row of `nb` blocks starting at block `b0`; x read from vec4 `x0`. Word i of the row is block
// i / W, word i % W of that block, at qs[b0·W + i] (W = 8 for Q8_0, 4 for Q4_*); thread `t` takes
// words t, t + TPR, … and returns Σ dot(dequantized word, x) in f32:
//   Q8_0 (format 0)  w = d·q        one word = weights 4w .. 4w+3            → x4[8b + w]
//   Q4_0 (format 1)  w = d·(q − 8)  low nibbles 4w .. 4w+3, high 4w+16 ..   → x4[8b + w], x4[8b + 4 + w]
//   Q4_1 (format 2)  w = d·q + m    same nibble order
// The format branch is uniform and outside the loops, so each loop has a constant W.
fn quant_row_dot(format: u32, b0: u32, nb: u32, t: u32, x0: u32) -> f32 {
    var acc = 0.0;
    if (format == 0u) {
        let q0 = b0 * 8u;
        for (var i = t; i < nb * 8u; i = i + TPR) {
            let d = scales[b0 + (i >> 3u)];
            acc = acc + dot(d * i8x4(qs[q0 + i]), x[x0 + i]);
        }
    } else if (format == 1u) {
        let q0 = b0 * 4u;
        for (var i = t; i < nb * 4u; i = i + TPR) {
            let b = i >> 2u;
            let d = scales[b0 + b];
            let word = qs[q0 + i];
            let xi = x0 + 8u * b + (i & 3u);
            acc = acc + dot(d * (u4x4(word, 0u) - vec4<f32>(8.0)), x[xi]);
            acc = acc + dot(d * (u4x4(word, 4u) - vec4<f32>(8.0)), x[xi + 4u]);
        }
    } else {
        let q0 = b0 * 4u;
        for (var i = t; i < nb * 4u; i = i + TPR) {
            let b = i >> 2u;
            let d = scales[b0 + b];
            let m = vec4<f32>(mins[b0 + b]);
            let word = qs[q0 + i];
            let xi = x0 + 8u * b + (i & 3u);
            acc = acc + dot(d * u4x4(word, 0u) + m, x[xi]);
            acc = acc + dot(d * u4x4(word, 4u) + m, x[xi + 4u]);
        }
    }
    return acc;
}
