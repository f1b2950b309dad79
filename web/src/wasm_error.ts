// Why the engine's WebAssembly did not start, in words a user can act on.
//
// The crate is built with WebAssembly SIMD128 (.cargo/config.toml `+simd128`: the CPU fallback's
// matvec, crate/src/models/cpu_simd128.rs). A browser without SIMD128 rejects the whole module
// with a `WebAssembly.CompileError` whose text names a byte offset and an opcode; every browser
// with WebGPU has SIMD128 (Chrome/Edge 91+, Firefox 89+, Safari 16.4+), so this names the feature
// and what to do instead.
//
// The probe is the smallest module using a SIMD128 instruction (WebAssembly SIMD spec,
// github.com/WebAssembly/simd; the same bytes as the `simd` check of GoogleChromeLabs'
// wasm-feature-detect): (func (result v128) i32.const 0 i8x16.splat i8x16.popcnt).
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

/** Whether this browser validates SIMD128 instructions. */
export function hasWasmSimd128(): boolean {
  try {
    return WebAssembly.validate(SIMD_PROBE);
  } catch {
    return false;
  }
}

/** The error to report when `init()` of the wasm-bindgen module failed with `err`. */
export function wasmInitError(err: unknown): Error {
  const detail = err instanceof Error ? err.message : String(err);
  if (typeof WebAssembly === 'undefined') {
    return new Error('this browser has no WebAssembly: Crucible needs a browser with WebAssembly and SIMD128 (Chrome/Edge 91+, Firefox 89+, Safari 16.4+)');
  }
  if (!(err instanceof WebAssembly.CompileError)) return err instanceof Error ? err : new Error(detail);
  if (!hasWasmSimd128()) {
    return new Error(
      `this browser does not support WebAssembly SIMD128 (128-bit vector instructions), which Crucible's engine is built with, so the module cannot compile. ` +
        `Every browser with WebGPU has it: use Chrome or Edge 91+, Firefox 89+ or Safari 16.4+ (and check that WebAssembly SIMD is not turned off). (${detail})`,
    );
  }
  return new Error(`this browser could not compile Crucible's WebAssembly module (it needs SIMD128, bulk memory and reference types; this browser has SIMD128): ${detail}`);
}
