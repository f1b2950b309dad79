#!/usr/bin/env python3
"""Merge benchmark: Crucible's native CLI against mergekit-yaml (mergekit 0.1.5), and optionally
the wasm build in Chromium.

    python3 scripts/bench_merge.py [--sizes tiny,smol] [--methods linear,slerp,ties,dare_ties]
                                   [--repeat N] [--wasm-cmd 'CMD {recipe} {out} {size} {method}']
                                   [--json results.json]
    npm run bench:merge

Two sizes:
  * tiny: the golden fixtures (tests/fixtures/merge/recipes/{linear,slerp,ties,dare_ties}.yml,
    4-layer hidden-16 Llama);
  * smol: synthetic checkpoints with SmolLM2-135M's shapes (30 layers, hidden 576, intermediate
    1536, 9 heads / 3 kv heads, head_dim 64, vocab 49152, tied embeddings, BF16 like the
    published weights), generated once (deterministically, pure Python) into .cache/bench/smol.

Each run is a fresh subprocess; wall time is measured around it and peak RSS comes from GNU
/usr/bin/time -f %M (else os.wait4's ru_maxrss of that child). Output dirs go to .cache/bench/out and are removed.
Prints a side-by-side table with the ratios, and the size of the largest tensor (the unit of
Crucible's memory budget: peak ≈ a small multiple of it, never the model size).

mergekit-yaml is looked up as $MERGEKIT_YAML, then /opt/mkvenv/bin/mergekit-yaml, then on PATH;
when it is missing only Crucible is timed. mergekit runs on the CPU with its defaults plus
--random-seed 42 --no-write-model-card (the card generator queries the Hugging Face Hub).

Wasm hook: --wasm-cmd (or $CRUCIBLE_BENCH_WASM_CMD) is a shell command template run once per
(size, method) with {recipe} (absolute path), {out}, {size}, {method}, {models} (the directory
model paths in the recipe are relative to) substituted; its last stdout line must be JSON like
{"wall_s": 1.23, "peak_bytes": 456} (the page's own timing of the merge in Chromium). Without it
the wasm column says "-".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource  # noqa: F401  (documents where ru_maxrss comes from)
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "merge"
CACHE = ROOT / ".cache" / "bench"
METHODS = ["linear", "slerp", "ties", "dare_ties"]

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json)
SMOL = dict(hidden=576, inter=1536, layers=30, heads=9, kv_heads=3, head_dim=64, vocab=49152)


# ------------------------------------------------------------------------------------------
# Synthetic SmolLM2-135M-shaped checkpoints (pure Python, deterministic)
# ------------------------------------------------------------------------------------------


def smol_tensors() -> list[tuple[str, tuple[int, ...]]]:
    h, i, q, kv = SMOL["hidden"], SMOL["inter"], SMOL["heads"] * SMOL["head_dim"], SMOL["kv_heads"] * SMOL["head_dim"]
    out = [("model.embed_tokens.weight", (SMOL["vocab"], h))]
    for n in range(SMOL["layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    out.append(("model.norm.weight", (h,)))
    return out


# BF16 high byte = sign | exponent[7:1]. Map random bytes to exponents 2^-7 .. 2^-4 (|x| ≈ 0.008–0.06,
# the scale of trained projection weights) with a random sign.
_HIGH = bytes((b & 0x80) | (60 + (b & 0x7F) % 2) for b in range(256))
# Norm weights: positive, exponent 2^0 (values in [1, 2)).
_HIGH_NORM = bytes(0x3F for _ in range(256))
_LOW_NORM = bytes(0x80 | (b & 0x7F) for b in range(256))


def bf16_random(rng: random.Random, n: int, norm: bool) -> bytearray:
    raw = rng.randbytes(2 * n)
    out = bytearray(2 * n)
    if norm:
        out[0::2] = raw[0::2].translate(_LOW_NORM)
        out[1::2] = raw[1::2].translate(_HIGH_NORM)
    else:
        out[0::2] = raw[0::2]
        out[1::2] = raw[1::2].translate(_HIGH)
    return out


def finetune(base: bytearray, rng: random.Random) -> bytearray:
    """Same sign and binade as base, new random mantissa: a per-element delta of up to ~±50%."""
    n = len(base) // 2
    low = int.from_bytes(base[0::2], "little")
    noise = int.from_bytes(rng.randbytes(n), "little")
    keep = int.from_bytes(b"\x80" * n, "little")
    new_low = (low & keep) | (noise & ~keep & ((1 << (8 * n)) - 1))
    out = bytearray(base)
    out[0::2] = new_low.to_bytes(n, "little")
    return out


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], produce):
    header, off = {}, 0
    for name, shape in tensors:
        nbytes = 2
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape in tensors:
            f.write(produce(name, shape))
    tmp.rename(path)


def smol_config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": SMOL["hidden"], "intermediate_size": SMOL["inter"],
        "num_hidden_layers": SMOL["layers"], "num_attention_heads": SMOL["heads"],
        "num_key_value_heads": SMOL["kv_heads"], "head_dim": SMOL["head_dim"],
        "vocab_size": SMOL["vocab"], "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0, "hidden_act": "silu", "tie_word_embeddings": True,
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.041666666666666664,
        "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "bfloat16",
    }


def ensure_smol_models() -> Path:
    d = CACHE / "smol"
    names = ["base", "ft_a", "ft_b"]
    if all((d / n / "model.safetensors").is_file() for n in names):
        return d
    print(f"generating SmolLM2-135M-shaped BF16 checkpoints into {d} (once) ...", flush=True)
    tensors = smol_tensors()
    for k, n in enumerate(names):
        md = d / n
        md.mkdir(parents=True, exist_ok=True)
        (md / "config.json").write_text(json.dumps(smol_config(), indent=2) + "\n")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(FIX / "models" / "base" / f, md / f)

        def produce(name, shape, k=k):
            numel = 1
            for s in shape:
                numel *= s
            seed = hash_name(name)
            base = bf16_random(random.Random(seed), numel, norm=len(shape) == 1)
            if k == 0:
                return base
            return finetune(base, random.Random(seed * 31 + k))

        write_safetensors(md / "model.safetensors", tensors, produce)
    return d


def hash_name(name: str) -> int:
    h = 1469598103934665603
    for b in name.encode():
        h = ((h ^ b) * 1099511628211) % (1 << 64)
    return h


SMOL_RECIPES = {
    "linear": """merge_method: linear
models:
  - model: {d}/ft_a
    parameters: {{weight: 0.5}}
  - model: {d}/ft_b
    parameters: {{weight: 0.5}}
dtype: bfloat16
""",
    "slerp": """merge_method: slerp
base_model: {d}/base
models:
  - model: {d}/base
  - model: {d}/ft_a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
""",
    "ties": """merge_method: ties
base_model: {d}/base
models:
  - model: {d}/ft_a
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {d}/ft_b
    parameters: {{weight: 0.5, density: 0.5}}
dtype: bfloat16
""",
    "dare_ties": """merge_method: dare_ties
base_model: {d}/base
models:
  - model: {d}/ft_a
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {d}/ft_b
    parameters: {{weight: 0.5, density: 0.5}}
dtype: bfloat16
""",
}


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------


def timed(cmd: list[str] | str, cwd: Path, env=None, shell=False) -> dict:
    """Runs one command in a fresh subprocess: wall seconds, peak RSS (bytes) of that command.

    Peak RSS comes from GNU /usr/bin/time -f %M when present: it forks the command from its own
    tiny process, so the figure is the command's alone. Without it, os.wait4's ru_maxrss is used,
    which also counts the forked Python before exec (a floor of ~15 MB)."""
    gnu_time = shutil.which("time", path="/usr/bin")
    rss_file = None
    if gnu_time and not shell:
        rss_file = CACHE / f"rss.{os.getpid()}.txt"
        cmd = [gnu_time, "-o", str(rss_file), "-f", "%M", *cmd]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    text = out.decode(errors="replace")
    peak = ru.ru_maxrss * 1024
    if rss_file is not None:
        try:
            peak = int(rss_file.read_text().strip().splitlines()[-1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        rss_file.unlink(missing_ok=True)
    if p.returncode != 0:
        return {"ok": False, "error": f"exit {p.returncode}: {text[-2000:]}", "wall_s": wall}
    return {"ok": True, "wall_s": wall, "peak_rss": peak, "stdout": text}


COMPARE = r"""
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
def load(d):
    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
if set(a) != set(b):
    print(f"tensor names differ: only crucible {sorted(set(a) - set(b))[:3]}, only mergekit {sorted(set(b) - set(a))[:3]}")
    sys.exit(0)
diff = n = 0
worst = 0.0
for k in a:
    x, y = a[k], b[k]
    if x.dtype != y.dtype or x.shape != y.shape:
        print(f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        sys.exit(0)
    n += x.numel()
    if x.dtype in (torch.bfloat16, torch.float16):
        ne = (x.view(torch.int16) != y.view(torch.int16))
    else:
        ne = (x.view(torch.int32) != y.view(torch.int32))
    diff += int(ne.sum())
    worst = max(worst, float((x.float() - y.float()).abs().max()))
print(f"{len(a)} tensors, {n:,} elements, {diff:,} differ in bits ({100.0 * diff / max(n, 1):.4f}%), max abs diff {worst:.3g}")
"""


def compare_outputs(ours: Path, theirs: Path, method: str) -> str:
    py = os.environ.get("BENCH_COMPARE_PYTHON") or ("/opt/mkvenv/bin/python" if os.path.exists("/opt/mkvenv/bin/python") else sys.executable)
    r = subprocess.run([py, "-c", COMPARE, str(ours), str(theirs)], capture_output=True, text=True)
    text = (r.stdout.strip() or r.stderr.strip()[-300:])
    if method.startswith("dare") or method.startswith("della"):
        text += " (random masks: torch's RNG vs Crucible's, values are expected to differ)"
    return text


def find_mergekit() -> str | None:
    for c in (os.environ.get("MERGEKIT_YAML"), "/opt/mkvenv/bin/mergekit-yaml", shutil.which("mergekit-yaml")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def fmt_s(x):
    return "-" if x is None else f"{x:8.2f}s"


def fmt_mb(x):
    if x is None:
        return "-"
    return f"{x / 2**20:8.1f}M" if x >= 2**20 else f"{x / 1024:8.1f}K"


def best(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["ok"]]
    if not ok:
        return runs[-1]
    return {"ok": True, "wall_s": min(r["wall_s"] for r in ok), "peak_rss": max(r["peak_rss"] for r in ok)}


def largest_tensor(size: str) -> tuple[str, int, int]:
    """(name, elements, bytes as f32) of the largest tensor at this size."""
    if size == "smol":
        name, shape = max(smol_tensors(), key=lambda t: t[1][0] * (t[1][1] if len(t[1]) > 1 else 1))
    else:
        name, shape = "model.embed_tokens.weight", (64, 16)
    n = 1
    for s in shape:
        n *= s
    return name, n, 4 * n


def main():
    ap = argparse.ArgumentParser(description="Crucible CLI vs mergekit-yaml merge benchmark")
    ap.add_argument("--sizes", default="tiny,smol")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per tool and case, best wall time kept (default: 3 for tiny, 1 for smol)")
    ap.add_argument("--crucible", default=str(ROOT / "target" / "release" / "crucible"))
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    ap.add_argument("--no-mergekit", action="store_true")
    # Default: the built page in headless Chromium (scripts/bench_wasm_merge.mjs), when dist/ exists.
    default_wasm = os.environ.get("CRUCIBLE_BENCH_WASM_CMD")
    if default_wasm is None and (ROOT / "dist" / "index.html").exists() and Path("/usr/bin/chromium").exists():
        default_wasm = "node scripts/bench_wasm_merge.mjs {recipe} {models}"
    ap.add_argument("--wasm-cmd", default=default_wasm,
                    help="the wasm side (default: node scripts/bench_wasm_merge.mjs when dist/ is built); '' to skip")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--check", action="store_true",
                    help="compare Crucible's output with mergekit's tensor by tensor (needs torch + safetensors, "
                         "e.g. /opt/mkvenv/bin/python; dare_* draw different random masks, so only their shape/dtype match)")
    args = ap.parse_args()

    sizes = [s for s in args.sizes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    if not args.no_build:
        print("cargo build --release -p crucible --bin crucible ...", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "crucible", "--bin", "crucible"], cwd=ROOT, check=True)
    crucible = args.crucible
    if not os.access(crucible, os.X_OK):
        sys.exit(f"{crucible} not found: build it with cargo build --release")
    mk = None if args.no_mergekit else find_mergekit()
    if mk is None:
        print("mergekit-yaml not found: timing Crucible only (set MERGEKIT_YAML or pip install mergekit==0.1.5)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    outroot = CACHE / "out"
    results = []
    for size in sizes:
        if size == "tiny":
            models_dir = FIX
            recipes = {m: FIX / "recipes" / f"{m}.yml" for m in methods}
        elif size == "smol":
            models_dir = ensure_smol_models()
            rdir = CACHE / "recipes"
            rdir.mkdir(parents=True, exist_ok=True)
            recipes = {}
            for m in methods:
                recipes[m] = rdir / f"smol_{m}.yml"
                recipes[m].write_text(SMOL_RECIPES[m].format(d=models_dir))
        else:
            sys.exit(f"unknown size {size!r} (tiny, smol)")
        lname, lnumel, lbytes = largest_tensor(size)
        for m in methods:
            row = {"size": size, "method": m, "largest_tensor": lname, "largest_tensor_elements": lnumel,
                   "largest_tensor_f32_bytes": lbytes}
            for tool in ("crucible", "mergekit", "wasm"):
                runs = []
                for _ in range(args.repeat or (3 if size == "tiny" else 1)):
                    out = outroot / f"{size}_{m}_{tool}"
                    shutil.rmtree(out, ignore_errors=True)
                    if tool == "crucible":
                        r = timed([crucible, "merge", str(recipes[m]), str(out), "--seed", "42"], cwd=models_dir)
                    elif tool == "mergekit" and mk:
                        r = timed([mk, str(recipes[m]), str(out), "--random-seed", "42", "--no-write-model-card", "--quiet"], cwd=models_dir, env=env)
                    elif tool == "wasm" and args.wasm_cmd:
                        cmd = args.wasm_cmd.format(recipe=recipes[m], out=out, size=size, method=m, models=models_dir)
                        r = timed(cmd, cwd=ROOT, shell=True)
                        if r["ok"]:
                            try:
                                j = json.loads(r["stdout"].strip().splitlines()[-1])
                                r = {"ok": True, "wall_s": float(j["wall_s"]), "peak_rss": j.get("peak_bytes")}
                            except Exception as e:  # noqa: BLE001
                                r = {"ok": False, "error": f"wasm-cmd output not JSON: {e}", "wall_s": None}
                    else:
                        break
                    runs.append(r)
                    if not r["ok"]:
                        print(f"  {size}/{m}/{tool} FAILED: {r['error']}", flush=True)
                        break
                if runs:
                    b = best(runs)
                    row[tool] = {k: b.get(k) for k in ("ok", "wall_s", "peak_rss", "error") if k in b}
            if args.check and row.get("crucible", {}).get("ok") and row.get("mergekit", {}).get("ok"):
                row["parity"] = compare_outputs(outroot / f"{size}_{m}_crucible", outroot / f"{size}_{m}_mergekit", m)
                print(f"  {size:5} {m:10} parity: {row['parity']}", flush=True)
            for tool in ("crucible", "mergekit", "wasm"):
                shutil.rmtree(outroot / f"{size}_{m}_{tool}", ignore_errors=True)
            results.append(row)
            c, k = row.get("crucible", {}), row.get("mergekit", {})
            print(f"  {size:5} {m:10} crucible {fmt_s(c.get('wall_s'))} {fmt_mb(c.get('peak_rss'))}   "
                  f"mergekit {fmt_s(k.get('wall_s'))} {fmt_mb(k.get('peak_rss'))}", flush=True)

    print()
    print(f"{'size':5} {'method':10} | {'crucible':>9} {'mergekit':>9} {'speedup':>8} | {'crucible':>9} {'mergekit':>9} {'ratio':>6} | {'wasm':>9} | largest tensor (f32)")
    print(f"{'':5} {'':10} | {'wall':>9} {'wall':>9} {'':>8} | {'peak RSS':>9} {'peak RSS':>9} {'':>6} | {'wall':>9} |")
    for row in results:
        c, k, w = row.get("crucible", {}), row.get("mergekit", {}), row.get("wasm", {})
        cw, kw = c.get("wall_s") if c.get("ok") else None, k.get("wall_s") if k.get("ok") else None
        cr, kr = c.get("peak_rss") if c.get("ok") else None, k.get("peak_rss") if k.get("ok") else None
        speed = f"{kw / cw:7.1f}x" if cw and kw else "       -"
        mem = f"{kr / cr:5.1f}x" if cr and kr else "     -"
        ww = w.get("wall_s") if w.get("ok") else None
        print(f"{row['size']:5} {row['method']:10} | {fmt_s(cw):>9} {fmt_s(kw):>9} {speed:>8} | {fmt_mb(cr):>9} {fmt_mb(kr):>9} {mem:>6} | {fmt_s(ww):>9} | "
              f"{row['largest_tensor']} {row['largest_tensor_elements']:,} el = {fmt_mb(row['largest_tensor_f32_bytes']).strip()}"
              + (f" (crucible peak = {cr / row['largest_tensor_f32_bytes']:.1f}x)" if cr else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(outroot, ignore_errors=True)
    failed = [r for r in results for t in ("crucible", "mergekit", "wasm") if t in r and not r[t].get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
