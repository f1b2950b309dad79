//! Bad safetensors input gives a clear error naming the file (and the tensor, where there is one),
//! and a failed write leaves no output file behind.
//! Rules checked: `crate/src/formats/safetensors.rs` module docs (the reference parser's rules,
//! `safetensors/src/tensor.rs` 0.8).
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crucible::formats::checkpoint::{DirFiles, DirOutput};
use crucible::formats::io::FileSink;
use crucible::formats::{Checkpoint, FormatError, MemSink, MemSource, OutputDir, Writer, read_header, read_tensor};
use crucible::tensor::DType;

const FILE: &str = "bad/model.safetensors";

/// A file with the given header text (unpadded) and `data_len` bytes of data.
fn raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend((0..data_len).map(|i| i as u8));
    v
}

fn header_error(bytes: Vec<u8>) -> String {
    let mut src = MemSource { name: FILE.into(), bytes };
    let e = read_header(&mut src).expect_err("must be rejected");
    let msg = e.to_string();
    assert!(msg.contains(FILE), "message does not name the file: {msg}");
    msg
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in: {msg}");
    }
}

fn good() -> Vec<u8> {
    let t = vec![("a.weight".to_string(), DType::F32, vec![2, 3]), ("b.bias".to_string(), DType::BF16, vec![4])];
    let mut w = Writer::new(MemSink::default(), &t, &BTreeMap::new()).unwrap();
    w.write_tensor("a.weight", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    w.write_tensor("b.bias", &[0.5, 0.25, -1.0, 8.0]).unwrap();
    w.finish().unwrap().bytes
}

#[test]
fn valid_file_reads() {
    let mut src = MemSource { name: FILE.into(), bytes: good() };
    let h = read_header(&mut src).unwrap();
    let mut out = Vec::new();
    read_tensor(&mut src, h.get("b.bias").unwrap(), &mut out).unwrap();
    assert_eq!(out, [0.5, 0.25, -1.0, 8.0]);
}

#[test]
fn truncated_file_names_tensor_and_missing_bytes() {
    let mut b = good();
    b.truncate(b.len() - 5);
    let m = header_error(b);
    assert_has(&m, &["truncated", "tensor b.bias", "5 bytes missing"]);
}

#[test]
fn header_length_lies() {
    // Too big: over the 100 MB limit.
    let mut b = good();
    b[..8].copy_from_slice(&200_000_000u64.to_le_bytes());
    assert_has(&header_error(b), &["header length 200000000", "limit"]);
    // Past the end of the file.
    let mut b = good();
    let len = b.len() as u64;
    b[..8].copy_from_slice(&(len - 4).to_le_bytes());
    assert_has(&header_error(b), &["runs past the end of the file"]);
    // Too small.
    let mut b = good();
    b[..8].copy_from_slice(&1u64.to_le_bytes());
    assert_has(&header_error(b), &["header length 1 is too small"]);
    // Shorter than the length field itself.
    assert_has(&header_error(vec![1, 2, 3]), &["3 bytes"]);
}

#[test]
fn non_json_header() {
    assert_has(&header_error(raw("{\"a\": {\"dtype\": \"F32\",", 0)), &["not valid JSON"]);
    assert_has(&header_error(raw("[1, 2]", 0)), &["not an object"]);
    let mut b = raw("{\"x\":1}", 0);
    b[9] = 0xff;
    assert_has(&header_error(b), &["not UTF-8"]);
    assert_has(&header_error(raw(r#"{"__metadata__":{"format":3}}"#, 0)), &["__metadata__", "format"]);
}

#[test]
fn overlapping_offsets_name_both_tensors() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert_has(&header_error(raw(h, 12)), &["tensor b", "overlap tensor a", "[4, 12]", "[0, 8]"]);
}

#[test]
fn offsets_out_of_bounds() {
    // Claims 1 MB of data where the file has 8 bytes.
    let h = r#"{"w":{"dtype":"F32","shape":[262144],"data_offsets":[0,1048576]}}"#;
    assert_has(&header_error(raw(h, 8)), &["tensor w", "1048568 bytes missing"]);
    // end < begin
    let h = r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#;
    assert_has(&header_error(raw(h, 8)), &["tensor w", "[8, 0]", "end before"]);
    // A hole before the tensor.
    let h = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert_has(&header_error(raw(h, 8)), &["tensor w", "4-byte hole"]);
    // Bytes after the last tensor.
    let h = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    assert_has(&header_error(raw(h, 9)), &["w", "5 unexplained bytes"]);
    // Malformed offsets.
    let h = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#;
    assert_has(&header_error(raw(h, 4)), &["tensor w", "data_offsets"]);
}

#[test]
fn shape_times_dtype_must_equal_span() {
    let h = r#"{"w":{"dtype":"BF16","shape":[3,2],"data_offsets":[0,16]}}"#;
    assert_has(&header_error(raw(h, 16)), &["tensor w", "[3, 2]", "BF16", "needs 12 bytes", "span 16 bytes"]);
    let h = r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#;
    assert_has(&header_error(raw(h, 4)), &["tensor w", "shape"]);
}

#[test]
fn unknown_dtype_names_file_tensor_and_dtype() {
    for dt in ["I64", "F8_E4M3", "U8", "F64", "BOOL"] {
        let h = format!(r#"{{"ok":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},"model.embed_tokens.weight":{{"dtype":"{dt}","shape":[1],"data_offsets":[4,12]}}}}"#);
        let m = header_error(raw(&h, 12));
        assert_has(&m, &["tensor model.embed_tokens.weight", &format!("unsupported dtype {dt}"), "F32, F16, BF16"]);
    }
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("crucible-formats-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn file_sink_leaves_nothing_on_error() {
    let dir = tmp("sink");
    let decl = vec![("a".to_string(), DType::F16, vec![4]), ("b".to_string(), DType::F32, vec![2])];
    let path = dir.join("model.safetensors");

    // Error mid-write (wrong length), then the writer is dropped.
    {
        let mut w = Writer::new(FileSink::create(&path).unwrap(), &decl, &BTreeMap::new()).unwrap();
        w.write_tensor("a", &[1.0; 4]).unwrap();
        assert_eq!(listing(&dir), ["model.safetensors.partial"], "the output is only a .partial while it is written");
        let e = w.write_tensor("b", &[1.0; 3]).unwrap_err().to_string();
        assert_has(&e, &["model.safetensors", "tensor b", "got 3 values"]);
    }
    assert!(listing(&dir).is_empty(), "left behind: {:?}", listing(&dir));

    // finish() before every tensor is written.
    let mut w = Writer::new(FileSink::create(&path).unwrap(), &decl, &BTreeMap::new()).unwrap();
    w.write_tensor("a", &[1.0; 4]).unwrap();
    let e = w.finish().err().unwrap().to_string();
    assert_has(&e, &["model.safetensors", "tensor b", "not written"]);
    assert!(listing(&dir).is_empty(), "left behind: {:?}", listing(&dir));

    // Through an OutputDir, as the merge uses it: only a finished writer leaves a file.
    let mut out = DirOutput::new(dir.join("out"));
    let sink = out.create("model.safetensors").unwrap();
    let mut w = Writer::new(sink, &decl, &BTreeMap::new()).unwrap();
    w.write_tensor("a", &[1.0, 2.0, 3.0, 4.0]).unwrap();
    w.write_tensor("b", &[5.0, 6.0]).unwrap();
    w.finish().unwrap();
    assert_eq!(listing(&dir.join("out")), ["model.safetensors"]);

    // And it reads back through a Checkpoint over the directory.
    let mut ck = Checkpoint::open(Box::new(DirFiles::new(dir.join("out")))).unwrap();
    let mut v = Vec::new();
    ck.read("b", &mut v).unwrap();
    assert_eq!(v, [5.0, 6.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_file_on_disk_names_model_path_and_tensor() {
    let dir = tmp("trunc");
    let mut b = good();
    b.truncate(b.len() - 2);
    std::fs::write(dir.join("model.safetensors"), b).unwrap();
    let e = Checkpoint::open(Box::new(DirFiles::new(&dir))).err().expect("truncated");
    assert!(matches!(e, FormatError::InModel { .. }));
    let m = e.to_string();
    assert_has(&m, &[&format!("model {}", dir.display()), &dir.join("model.safetensors").display().to_string(), "tensor b.bias", "2 bytes missing"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
