#!/usr/bin/env bash
# `npm start`: set up, build the wasm (release) and the page, serve dist/ on localhost.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/build-wasm.sh
node_modules/.bin/vite build
echo
echo "Serving Crucible from dist/: open the Local URL printed below (Ctrl-C to stop)."
exec node_modules/.bin/vite preview --port "${PORT:-5173}" --host 127.0.0.1
