#!/usr/bin/env python3
"""Rewrite a GGUF model with its weight matrices dequantized to F16 (or F32), for the F16 figure
of the report (memory and tokens/s of an F16 model vs the same model in f32):

    /opt/mkvenv/bin/python scripts/make_f16_gguf.py IN.gguf OUT.gguf f16|f32

Every metadata key (tokenizer included) is copied; quantized tensors are dequantized by gguf-py
(`gguf.quants.dequantize`, llama.cpp's `dequantize_row_*`), then matrices are stored as F16 (f16)
or F32 (f32); 1-D tensors (norms) stay F32. The output is a scratch file (put it under .cache/,
never commit it). Reference: llama.cpp gguf-py (`GGUFReader`, `GGUFWriter`,
`scripts/gguf_new_metadata.py` for copying fields).
"""
import sys

import numpy as np
import gguf
from gguf import GGUFValueType as V


def main():
    src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    assert kind in ("f16", "f32"), "third argument: f16 or f32"
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue
        if key == "general.file_type":
            w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if kind == "f16" else gguf.LlamaFileType.ALL_F32)
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == V.ARRAY and len(f.types) > 1 else None
        w.add_key_value(key, f.contents(), vtype, sub)
    for t in r.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # row-major (ne reversed)
        a = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if a.ndim >= 2 and kind == "f16":
            a = a.astype(np.float16)
        w.add_tensor(t.name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", dst, file=sys.stderr)


if __name__ == "__main__":
    main()
