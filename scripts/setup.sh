#!/usr/bin/env bash
# Set-up for `npm start` and `npm test` on a fresh Debian machine. Idempotent: each step checks
# first and is skipped when its tool is already there, so a second run takes a second or two.
#
#   scripts/setup.sh          wasm target, the pinned wasm-bindgen-cli, npm packages
#   scripts/setup.sh --test   the above plus the Debian packages the tests need
#                             (Chromium + ChromeDriver for the browser tests, Mesa's lavapipe
#                             Vulkan driver for the native GPU tests) and the real model weights
#                             of the fidelity tests (scripts/fetch_models.sh → .cache/models/)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# cargo installs land here; make sure later steps (and the caller) see them.
export PATH="$HOME/.cargo/bin:$PATH"

if [[ $want_test == 1 ]]; then
  missing=()
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
  dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
  if (( ${#missing[@]} )); then
    say "installing Debian packages: ${missing[*]}"
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers chromium chromium-driver
  fi
  [[ -s .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf ]] || { say "fetching the SmolLM2 GGUF for the fidelity tests"; scripts/fetch_models.sh; }
fi

command -v node >/dev/null || { echo "Node.js not found: install Node.js 20.19+ or 22.12+ (with npm) first" >&2; exit 1; }
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 22 || (a === 22 && b >= 12) || (a === 20 && b >= 19) ? 0 : 1)' ||
  { echo "Node.js $(node --version) is too old for Vite: install 20.19+ or 22.12+" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "adding Rust target wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly.
wb_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [[ -z "$wb_version" ]]; then
  echo "could not find the wasm-bindgen version in Cargo.lock" >&2
  exit 1
fi
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [[ "$have" != "$wb_version" ]]; then
  say "installing wasm-bindgen-cli $wb_version (found: ${have:-none}); this takes a few minutes"
  # No --locked: the CLI's own lock file pins a yanked dependency.
  cargo install wasm-bindgen-cli --version "$wb_version"
fi

if [[ ! -d node_modules ]] || [[ ! -x node_modules/.bin/vite ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "installing npm packages"
  if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi
