#!/usr/bin/env bash
# Build the crate for the browser: release wasm → wasm-bindgen (ES module glue, web/pkg/) →
# npm binaryen's wasm-opt -O (Debian's wasm-opt 108 corrupts wasm-bindgen 0.2.13x output).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

profile=${CRUCIBLE_WASM_PROFILE:-release}
echo "[build-wasm] cargo build ($profile, wasm32-unknown-unknown)"
if [[ $profile == release ]]; then
  cargo build -p crucible --lib --release --target wasm32-unknown-unknown
else
  cargo build -p crucible --lib --target wasm32-unknown-unknown
fi
dir=$profile; [[ $profile == dev ]] && dir=debug
wasm=${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/$dir/crucible.wasm

echo "[build-wasm] wasm-bindgen --target web → web/pkg"
rm -rf web/pkg
wasm-bindgen --target web --out-dir web/pkg "$wasm"

if [[ $profile == release ]]; then
  echo "[build-wasm] wasm-opt -O (npm binaryen)"
  # --enable-simd: the crate is built with +simd128 (.cargo/config.toml); wasm-opt must accept and keep it
  node_modules/.bin/wasm-opt -O --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    web/pkg/crucible_bg.wasm -o web/pkg/crucible_bg.opt.wasm
  mv web/pkg/crucible_bg.opt.wasm web/pkg/crucible_bg.wasm
fi
raw=$(stat -c %s web/pkg/crucible_bg.wasm)
gz=$(gzip -9 -c web/pkg/crucible_bg.wasm | wc -c)
echo "[build-wasm] web/pkg/crucible_bg.wasm: $raw bytes, $gz gzipped"
