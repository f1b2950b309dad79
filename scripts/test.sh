#!/usr/bin/env bash
# `npm test`: set up (Debian packages included), then run every test in order:
#   1. native Rust tests            cargo test --workspace
#   2. wasm tests in headless Chromium (wasm-bindgen-test-runner + ChromeDriver)
#   3. unit tests of the page's pure modules in node (tests/unit/*.test.mjs)
#   4. the built page's end-to-end tests (Playwright driving /usr/bin/chromium)
# Every stage runs even if an earlier one failed; the exit status is non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

failed=()
stage() {
  local name=$1; shift
  printf '\n\033[1m=== %s ===\033[0m\n' "$name"
  if "$@"; then
    printf '\033[32m--- %s: ok\033[0m\n' "$name"
  else
    printf '\033[31m--- %s: FAILED\033[0m\n' "$name"
    failed+=("$name")
  fi
}

stage "native tests (cargo test --workspace)" cargo test --workspace
# The browser test files are the crate/tests/*.rs that are wasm32-only (`#![cfg(target_arch = "wasm32")]`);
# the other tests (property tests, CLI tests) are native by design.
wasm_tests=()
for f in crate/tests/*.rs; do
  if grep -q '^#!\[cfg(target_arch = "wasm32")\]' "$f"; then wasm_tests+=(--test "$(basename "$f" .rs)"); fi
done
if (( ${#wasm_tests[@]} )); then
  stage "wasm tests in headless Chromium (${wasm_tests[*]})" \
    env CHROMEDRIVER=/usr/bin/chromedriver cargo test -p crucible --target wasm32-unknown-unknown "${wasm_tests[@]}"
else
  echo "no wasm test files found in crate/tests/" >&2
  failed+=("wasm tests (none found)")
fi

build_page() {
  bash scripts/build-wasm.sh && node_modules/.bin/vite build --logLevel warn
}
stage "build: wasm + page (dist/)" build_page
stage "typecheck: the page's TypeScript (tsc --noEmit)" node_modules/.bin/tsc --noEmit -p tsconfig.json
# Unit tests of the page's pure modules (web/src/share.ts, ...), in node without a browser.
stage "unit tests: the page's pure modules (node --test tests/unit)" node --test tests/unit/*.test.mjs
stage "build: native CLI (${CARGO_TARGET_DIR:-target}/debug/crucible)" cargo build -p crucible --bin crucible
stage "end-to-end tests (Playwright + Chromium)" node tests/e2e/run.mjs

echo
if (( ${#failed[@]} )); then
  printf '\033[31mFAILED stages:\033[0m\n' >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "All test stages passed."
