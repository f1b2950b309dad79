//! safetensors: streaming reader and writer.
//!
//! Format (reference: the `safetensors` crate/Python package 0.8, `safetensors/src/tensor.rs`;
//! spec in its README):
//!
//! ```text
//! [u64 little-endian N][N bytes of JSON header, padded with spaces][data section]
//! header = {"__metadata__": {str: str}?, NAME: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
//! ```
//!
//! `data_offsets` are relative to the data section (byte `8 + N` of the file).
//!
//! **Reader** (`read_header`, `read_tensor`): reads the header only, validates it, then reads one
//! tensor's bytes at a time (in chunks) from any [`ByteSource`]; the file is never held whole.
//! What `read_header` enforces — the same rules as the reference parser, so a file we accept is one
//! the Python library loads:
//! - the file has at least 8 bytes; the header length N is ≥ 2, ≤ 100 MB ([`MAX_HEADER_LEN`]) and
//!   fits in the file (N ≤ file length − 8);
//! - the header is UTF-8 JSON, an object; `__metadata__`, if present, maps strings to strings;
//! - every tensor has a dtype we handle (F32, F16, BF16 — anything else, e.g. I64, U8, F8_E4M3, is
//!   an error naming the file, the tensor and the dtype), a shape of non-negative integers, and
//!   `data_offsets` `[begin, end]` with begin ≤ end and `numel(shape) × dtype size == end − begin`;
//! - the tensors, sorted by offset, tile the data section exactly: the first starts at 0, each
//!   starts where the previous ends (an overlap or a hole is an error naming both tensors), and the
//!   last ends at the end of the file. A tensor ending past the end of the file is reported as a
//!   truncated file with the number of missing bytes; bytes after the last tensor are an error.
//!
//! **Writer** ([`Writer`]): writes the whole header up front from the declared `(name, dtype,
//! shape)` list, in the given order, then each tensor's bytes as it is produced. The header is
//! byte-identical to the Python library's for the same tensors in the same order: compact JSON,
//! `__metadata__` first (keys sorted; the Python library orders several keys by hash, so only
//! zero or one key — mergekit writes `{"format": "pt"}` — is reproducible), then the tensors as
//! `{"dtype":..,"shape":[..],"data_offsets":[b,e]}`, padded with spaces to a multiple of 8 bytes.
//! The Python library itself sorts tensors by dtype (F32, then BF16, then F16) and then by name
//! before writing; [`python_order`] puts a list in that order, so that streaming in that order
//! reproduces `safetensors.torch.save_file` (and so mergekit's output) byte for byte.

use std::collections::BTreeMap;

use crate::formats::io::{ByteSink, ByteSource, IoError};
use crate::tensor::DType;

/// Largest header accepted, as in the reference parser (`MAX_HEADER_SIZE`).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Bytes read (or encoded) per step when streaming one tensor: bounds the scratch buffer.
const CHUNK_BYTES: usize = 1 << 22;

/// Errors of the checkpoint formats. Every message names the file, and the tensor when there is one.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A read or write failed (the message names the file).
    #[error("{0}")]
    Io(#[from] IoError),
    /// The file as a whole is not a valid safetensors file (header length, JSON, metadata, layout).
    #[error("{file}: invalid safetensors file: {message}")]
    Header { file: String, message: String },
    /// One tensor's header entry is invalid, or its data cannot be read or written.
    #[error("{file}: tensor {tensor}: {message}")]
    Tensor { file: String, tensor: String, message: String },
    /// A tensor's dtype is not one we handle.
    #[error("{file}: tensor {tensor}: unsupported dtype {dtype} (supported: F32, F16, BF16)")]
    UnsupportedDType { file: String, tensor: String, dtype: String },
    /// The file ends before the data of a tensor does.
    #[error("{file}: truncated: tensor {tensor} (data_offsets [{begin}, {end}]) ends at byte {needed} of the file but the file has {len} bytes ({missing} bytes missing)")]
    Truncated { file: String, tensor: String, begin: u64, end: u64, needed: u64, len: u64, missing: u64 },
    /// A JSON side file (index, config.json) is invalid.
    #[error("{file}: {message}")]
    Json { file: String, message: String },
    /// A checkpoint-level problem (no weights found, a tensor missing from a model).
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    /// An error inside one model of a merge: the inner message names the file and the tensor.
    #[error("model {model}: {source}")]
    InModel {
        model: String,
        #[source]
        source: Box<FormatError>,
    },
    /// A size string (`--out-shard-size`) that does not parse.
    #[error("invalid size {0:?}: expected a whole number with an optional K, M or B suffix (thousand, million, billion bytes), e.g. 5B, 500M, 1000000")]
    BadSize(String),
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// e.g. `[out, in]` for a projection weight, `[hidden]` for a norm, `[]` for a scalar.
    pub shape: Vec<usize>,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
    /// Byte length of the tensor's data (`numel(shape) × dtype.size()`).
    pub len: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed and validated safetensors header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Tensors in file order (sorted by offset).
    pub tensors: Vec<TensorInfo>,
    /// `__metadata__` (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Absolute offset of the data section (`8 + header length`).
    pub data_start: u64,
}

impl Header {
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn header_err(file: &str, message: impl Into<String>) -> FormatError {
    FormatError::Header { file: file.to_string(), message: message.into() }
}

fn tensor_err(file: &str, tensor: &str, message: impl Into<String>) -> FormatError {
    FormatError::Tensor { file: file.to_string(), tensor: tensor.to_string(), message: message.into() }
}

/// Read and validate the header of a safetensors file (see the module docs for every rule).
/// Reads `8 + N` bytes, never the data.
pub fn read_header(src: &mut dyn ByteSource) -> Result<Header, FormatError> {
    let file = src.name().to_string();
    let file_len = src.len();
    if file_len < 8 {
        return Err(header_err(&file, format!("the file has {file_len} bytes, fewer than the 8-byte header length field")));
    }
    let mut n8 = [0u8; 8];
    src.read_at(0, &mut n8)?;
    let n = u64::from_le_bytes(n8);
    if n < 2 {
        return Err(header_err(&file, format!("header length {n} is too small (the shortest header, `{{}}`, has 2 bytes)")));
    }
    if n > MAX_HEADER_LEN {
        return Err(header_err(&file, format!("header length {n} bytes exceeds the {MAX_HEADER_LEN}-byte limit: not a safetensors file, or corrupted")));
    }
    if n > file_len - 8 {
        return Err(header_err(
            &file,
            format!("header length {n} bytes runs past the end of the file ({file_len} bytes, so at most {} header bytes): truncated, or not a safetensors file", file_len - 8),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    src.read_at(8, &mut buf)?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;

    let text = std::str::from_utf8(&buf).map_err(|e| header_err(&file, format!("header is not UTF-8 ({e})")))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| header_err(&file, format!("header is not valid JSON ({e})")))?;
    let obj = value.as_object().ok_or_else(|| header_err(&file, "header JSON is not an object"))?;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            let m = entry.as_object().ok_or_else(|| header_err(&file, "__metadata__ is not an object of strings"))?;
            for (k, v) in m {
                let v = v.as_str().ok_or_else(|| header_err(&file, format!("__metadata__ key {k:?} has a non-string value {v}")))?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        tensors.push(parse_entry(&file, name, entry, data_start)?);
    }

    // Tile check: sorted by offset, the tensors must cover the data section exactly.
    tensors.sort_by_key(|t| (t.offset, t.len));
    if let Some(last) = tensors.iter().max_by_key(|t| t.offset + t.len) {
        let end = last.offset + last.len;
        if end > file_len {
            return Err(FormatError::Truncated {
                file,
                tensor: last.name.clone(),
                begin: last.offset - data_start,
                end: end - data_start,
                needed: end,
                len: file_len,
                missing: end - file_len,
            });
        }
    }
    let mut expected = data_start;
    let mut prev: Option<&TensorInfo> = None;
    for t in &tensors {
        let rel = |x: u64| x - data_start;
        if t.offset < expected {
            let p = prev.expect("offset below data_start is impossible: offsets are relative to it");
            return Err(tensor_err(
                &file,
                &t.name,
                format!(
                    "data_offsets [{}, {}] overlap tensor {} at [{}, {}]",
                    rel(t.offset),
                    rel(t.offset + t.len),
                    p.name,
                    rel(p.offset),
                    rel(p.offset + p.len)
                ),
            ));
        }
        if t.offset > expected {
            let after = prev.map(|p| format!("the previous tensor {} ends at {}", p.name, rel(p.offset + p.len))).unwrap_or_else(|| "the data section starts at 0".to_string());
            return Err(tensor_err(
                &file,
                &t.name,
                format!("data_offsets [{}, {}] leave a {}-byte hole: {after} (safetensors requires the tensors to be contiguous)", rel(t.offset), rel(t.offset + t.len), t.offset - expected),
            ));
        }
        expected = t.offset + t.len;
        prev = Some(t);
    }
    if expected < file_len {
        let after = prev.map(|p| format!("after the last tensor {}", p.name)).unwrap_or_else(|| "and there are no tensors".to_string());
        return Err(header_err(
            &file,
            format!("the data section has {data_len} bytes but the tensors cover {}: {} unexplained bytes {after}", expected - data_start, file_len - expected),
        ));
    }
    Ok(Header { tensors, metadata, data_start })
}

/// Parse and check one tensor entry of the header (everything but its place among the others).
fn parse_entry(file: &str, name: &str, entry: &serde_json::Value, data_start: u64) -> Result<TensorInfo, FormatError> {
    let e = entry.as_object().ok_or_else(|| tensor_err(file, name, format!("header entry is not an object: {entry}")))?;
    let dtype_s = e.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| tensor_err(file, name, "header entry has no string \"dtype\""))?;
    let dtype = DType::from_safetensors(dtype_s).map_err(|_| FormatError::UnsupportedDType { file: file.to_string(), tensor: name.to_string(), dtype: dtype_s.to_string() })?;
    let shape_v = e.get("shape").and_then(|s| s.as_array()).ok_or_else(|| tensor_err(file, name, "header entry has no \"shape\" array"))?;
    let mut shape = Vec::with_capacity(shape_v.len());
    for d in shape_v {
        let d = d.as_u64().and_then(|d| usize::try_from(d).ok()).ok_or_else(|| tensor_err(file, name, format!("shape {} has an entry that is not a non-negative integer: {d}", serde_json::Value::Array(shape_v.clone()))))?;
        shape.push(d);
    }
    let offs = e.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(|| tensor_err(file, name, "header entry has no \"data_offsets\" array"))?;
    let (begin, end) = match offs.as_slice() {
        [b, e] => match (b.as_u64(), e.as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(tensor_err(file, name, format!("data_offsets {} are not non-negative integers", serde_json::Value::Array(offs.clone())))),
        },
        _ => return Err(tensor_err(file, name, format!("data_offsets {} must be [begin, end]", serde_json::Value::Array(offs.clone())))),
    };
    if end < begin {
        return Err(tensor_err(file, name, format!("data_offsets [{begin}, {end}] end before they begin")));
    }
    let nbytes = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| tensor_err(file, name, format!("shape {shape:?} is too large to address")))?;
    if nbytes != end - begin {
        return Err(tensor_err(
            file,
            name,
            format!("shape {shape:?} × {dtype} ({} bytes each) needs {nbytes} bytes but data_offsets [{begin}, {end}] span {} bytes", dtype.size(), end - begin),
        ));
    }
    let offset = data_start.checked_add(begin).filter(|o| o.checked_add(nbytes).is_some()).ok_or_else(|| tensor_err(file, name, format!("data_offsets [{begin}, {end}] overflow")))?;
    Ok(TensorInfo { name: name.to_string(), dtype, shape, offset, len: nbytes })
}

fn io_in_tensor(e: IoError, tensor: &str) -> FormatError {
    FormatError::Tensor { file: e.file, tensor: tensor.to_string(), message: e.message }
}

/// Read one tensor and widen it to f32: `out` is cleared and then holds `numel(info.shape)` values.
/// Streams in chunks of a few MB, so the only full-size buffer is `out`.
pub fn read_tensor(src: &mut dyn ByteSource, info: &TensorInfo, out: &mut Vec<f32>) -> Result<(), FormatError> {
    out.clear();
    check_readable(src, info)?;
    out.reserve_exact(info.numel());
    let mut buf = vec![0u8; (info.len as usize).min(CHUNK_BYTES)];
    let mut pos = 0u64;
    while pos < info.len {
        let n = ((info.len - pos) as usize).min(CHUNK_BYTES);
        src.read_at(info.offset + pos, &mut buf[..n]).map_err(|e| io_in_tensor(e, &info.name))?;
        info.dtype.decode_into(&buf[..n], out);
        pos += n as u64;
    }
    Ok(())
}

/// Read elements `start .. start + count` of one tensor (flattened, row-major) widened to f32:
/// `out` is cleared and then holds `count` values. The streamed merge reads a large tensor this
/// way, one element chunk at a time, so no full-size buffer exists.
pub fn read_tensor_range(src: &mut dyn ByteSource, info: &TensorInfo, start: usize, count: usize, out: &mut Vec<f32>) -> Result<(), FormatError> {
    out.clear();
    check_readable(src, info)?;
    let numel = info.numel();
    if start.checked_add(count).is_none_or(|e| e > numel) {
        return Err(tensor_err(src.name(), &info.name, format!("elements {start}..{} requested but the tensor has {numel}", start.saturating_add(count))));
    }
    out.reserve_exact(count);
    let size = info.dtype.size() as u64;
    let begin = info.offset + start as u64 * size;
    let len = count as u64 * size;
    let mut buf = vec![0u8; (len as usize).min(CHUNK_BYTES)];
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(CHUNK_BYTES);
        src.read_at(begin + pos, &mut buf[..n]).map_err(|e| io_in_tensor(e, &info.name))?;
        info.dtype.decode_into(&buf[..n], out);
        pos += n as u64;
    }
    Ok(())
}

/// Read one tensor's raw little-endian bytes (for copying a tensor through unchanged).
pub fn read_tensor_bytes(src: &mut dyn ByteSource, info: &TensorInfo, out: &mut Vec<u8>) -> Result<(), FormatError> {
    out.clear();
    check_readable(src, info)?;
    out.resize(info.len as usize, 0);
    src.read_at(info.offset, out).map_err(|e| io_in_tensor(e, &info.name))
}

fn check_readable(src: &dyn ByteSource, info: &TensorInfo) -> Result<(), FormatError> {
    let size = info.dtype.size() as u64;
    if info.len != info.numel() as u64 * size {
        return Err(tensor_err(src.name(), &info.name, format!("byte length {} does not match shape {:?} × {}", info.len, info.shape, info.dtype)));
    }
    let end = info.offset.saturating_add(info.len);
    if end > src.len() {
        return Err(tensor_err(src.name(), &info.name, format!("data ends at byte {end} but the file has {} bytes ({} bytes missing: truncated?)", src.len(), end - src.len())));
    }
    Ok(())
}

/// Sort a tensor list the way the Python `safetensors` library orders a file (by dtype, F32
/// before BF16 before F16, then by name, bytewise), so that a [`Writer`] fed in this order writes
/// the same bytes as `safetensors.torch.save_file` — and so as mergekit, which saves every shard
/// with it.
pub fn python_order(tensors: &mut [(String, DType, Vec<usize>)]) {
    // The reference sorts by its `Dtype` enum descending; in it F16 < BF16 < F32.
    fn rank(d: DType) -> u8 {
        match d {
            DType::F32 => 0,
            DType::BF16 => 1,
            DType::F16 => 2,
        }
    }
    tensors.sort_by(|a, b| rank(a.1).cmp(&rank(b.1)).then_with(|| a.0.cmp(&b.0)));
}

/// The header bytes (`[u64 LE length][JSON padded with spaces to a multiple of 8]`) for tensors
/// laid out contiguously in the given order.
fn header_bytes(file: &str, tensors: &[(String, DType, Vec<usize>)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>, FormatError> {
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":");
        json.push_str(&serde_json::to_string(metadata).expect("a map of strings always serializes"));
    }
    let mut offset = 0u64;
    let mut seen = std::collections::HashSet::new();
    for (i, (name, dtype, shape)) in tensors.iter().enumerate() {
        if name == "__metadata__" {
            return Err(tensor_err(file, name, "a tensor cannot be named __metadata__"));
        }
        if !seen.insert(name.as_str()) {
            return Err(tensor_err(file, name, "declared twice"));
        }
        let nbytes = shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| tensor_err(file, name, format!("shape {shape:?} is too large")))?;
        if i > 0 || !metadata.is_empty() {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(name).expect("a string always serializes"));
        json.push_str(":{\"dtype\":\"");
        json.push_str(dtype.safetensors_name());
        json.push_str("\",\"shape\":");
        json.push_str(&serde_json::to_string(shape).expect("integers always serialize"));
        json.push_str(&format!(",\"data_offsets\":[{},{}]}}", offset, offset + nbytes));
        offset += nbytes;
    }
    json.push('}');
    // Pad with spaces to a multiple of 8, as the reference writer does (keeps the data aligned).
    let pad = (8 - json.len() % 8) % 8;
    json.extend(std::iter::repeat_n(' ', pad));
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    Ok(out)
}

/// Streaming safetensors writer: the header goes out in `new`, then each tensor's bytes as
/// `write_tensor` is called, in the declared order. Memory: one chunk of encoded bytes.
///
/// Dropping a writer before `finish` drops its sink unfinished (a native `FileSink` then
/// deletes its partial file). After a failed write, every later call fails.
pub struct Writer<S: ByteSink> {
    sink: S,
    /// (name, dtype, number of elements) in write order.
    tensors: Vec<(String, DType, usize)>,
    next: usize,
    buf: Vec<u8>,
    failed: bool,
    /// Elements of tensor `next` already written by `write_tensor_part` (0: none).
    part: usize,
}

impl<S: ByteSink> Writer<S> {
    /// Write the header for `tensors` (name, dtype, shape), in this order, with `metadata` as
    /// `__metadata__` (omitted when empty).
    pub fn new(mut sink: S, tensors: &[(String, DType, Vec<usize>)], metadata: &BTreeMap<String, String>) -> Result<Self, FormatError> {
        let header = header_bytes(sink.name(), tensors, metadata)?;
        sink.write_all(&header)?;
        Ok(Writer {
            sink,
            tensors: tensors.iter().map(|(n, d, s)| (n.clone(), *d, s.iter().product())).collect(),
            next: 0,
            buf: Vec::new(),
            failed: false,
            part: 0,
        })
    }

    /// The name of the tensor `write_tensor` expects next, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors.get(self.next).map(|t| t.0.as_str())
    }

    fn check_next(&mut self, name: &str, len: usize, unit: &str) -> Result<DType, FormatError> {
        let file = self.sink.name().to_string();
        if self.failed {
            return Err(tensor_err(&file, name, "an earlier write to this file failed"));
        }
        if self.part > 0 {
            let (t, _, numel) = &self.tensors[self.next];
            return Err(tensor_err(&file, name, format!("tensor {t} is partly written ({} of {numel} values): write the rest with write_tensor_part first", self.part)));
        }
        let Some((expected, dtype, numel)) = self.tensors.get(self.next) else {
            return Err(tensor_err(&file, name, format!("all {} declared tensors are already written", self.tensors.len())));
        };
        if expected != name {
            let declared = self.tensors.iter().any(|t| t.0 == name);
            let why = if declared { "written out of order" } else { "not declared in the header" };
            return Err(tensor_err(&file, name, format!("{why}: the next tensor in the header is {expected}")));
        }
        let want = if unit == "bytes" { numel * dtype.size() } else { *numel };
        if len != want {
            return Err(tensor_err(&file, name, format!("got {len} {unit}, the header declares {want}")));
        }
        Ok(*dtype)
    }

    /// Write the next tensor's values, encoded (round to nearest even) to its declared dtype.
    pub fn write_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), FormatError> {
        let dtype = self.check_next(name, values.len(), "values")?;
        let per = CHUNK_BYTES / dtype.size();
        for chunk in values.chunks(per.max(1)) {
            self.buf.clear();
            dtype.encode_into(chunk, &mut self.buf);
            if let Err(e) = self.sink.write_all(&self.buf) {
                self.failed = true;
                return Err(io_in_tensor(e, name));
            }
        }
        self.next += 1;
        Ok(())
    }

    /// Write the next `values.len()` values of the current tensor (a streamed merge produces a
    /// large tensor in element chunks). The tensor is complete once all its values are written;
    /// the bytes are the same as one `write_tensor` call with all the values.
    pub fn write_tensor_part(&mut self, name: &str, values: &[f32]) -> Result<(), FormatError> {
        let file = self.sink.name().to_string();
        if self.failed {
            return Err(tensor_err(&file, name, "an earlier write to this file failed"));
        }
        let Some((expected, dtype, numel)) = self.tensors.get(self.next).cloned() else {
            return Err(tensor_err(&file, name, format!("all {} declared tensors are already written", self.tensors.len())));
        };
        if expected != name {
            let declared = self.tensors.iter().any(|t| t.0 == name);
            let why = if declared { "written out of order" } else { "not declared in the header" };
            return Err(tensor_err(&file, name, format!("{why}: the next tensor in the header is {expected}")));
        }
        if self.part + values.len() > numel {
            return Err(tensor_err(&file, name, format!("got {} more values after {}, the header declares {numel}", values.len(), self.part)));
        }
        let per = CHUNK_BYTES / dtype.size();
        for chunk in values.chunks(per.max(1)) {
            self.buf.clear();
            dtype.encode_into(chunk, &mut self.buf);
            if let Err(e) = self.sink.write_all(&self.buf) {
                self.failed = true;
                return Err(io_in_tensor(e, name));
            }
        }
        self.part += values.len();
        if self.part == numel {
            self.part = 0;
            self.next += 1;
        }
        Ok(())
    }

    /// Write the next tensor's bytes as they are (already little-endian in its declared dtype).
    pub fn write_tensor_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), FormatError> {
        self.check_next(name, bytes.len(), "bytes")?;
        if let Err(e) = self.sink.write_all(bytes) {
            self.failed = true;
            return Err(io_in_tensor(e, name));
        }
        self.next += 1;
        Ok(())
    }

    /// Check that every declared tensor was written, finish the sink and hand it back.
    pub fn finish(mut self) -> Result<S, FormatError> {
        let file = self.sink.name().to_string();
        if self.failed {
            return Err(header_err(&file, "not finished: an earlier write failed"));
        }
        if let Some((missing, _, numel)) = self.tensors.get(self.next) {
            if self.part > 0 {
                return Err(tensor_err(&file, missing, format!("not fully written: {} of {numel} values", self.part)));
            }
            return Err(tensor_err(&file, missing, format!("not written: finish() called after {} of {} tensors", self.next, self.tensors.len())));
        }
        self.sink.finish()?;
        Ok(self.sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::io::{MemSink, MemSource};

    fn decl(v: &[(&str, DType, &[usize])]) -> Vec<(String, DType, Vec<usize>)> {
        v.iter().map(|(n, d, s)| (n.to_string(), *d, s.to_vec())).collect()
    }

    fn write(tensors: &[(String, DType, Vec<usize>)], values: &[Vec<f32>], md: &BTreeMap<String, String>) -> Vec<u8> {
        let sink = MemSink { name: "t.safetensors".into(), ..Default::default() };
        let mut w = Writer::new(sink, tensors, md).unwrap();
        for ((n, _, _), v) in tensors.iter().zip(values) {
            w.write_tensor(n, v).unwrap();
        }
        let s = w.finish().unwrap();
        assert!(s.finished);
        s.bytes
    }

    /// The whole file produced by the Python library 0.8.0:
    /// `safetensors.torch.save({"zeta": tensor([0.1, -2.0, 3.0], f16), "alpha": tensor([[1.0, -0.5], [0.25, 1e-3]]),
    /// "mid": tensor([7.0]), "b": tensor([0.1, 0.2], bf16)}, metadata={"format": "pt"})` — 262 bytes of
    /// JSON padded with 2 spaces, tensors reordered by dtype then name. Ours must be identical.
    #[test]
    fn file_matches_python_library_byte_for_byte() {
        let python = "08010000000000007b225f5f6d657461646174615f5f223a7b22666f726d6174223a227074227d2c22616c706861223a7b226474797065223a22463332222c227368617065223a5b322c325d2c22646174615f6f666673657473223a5b302c31365d7d2c226d6964223a7b226474797065223a22463332222c227368617065223a5b315d2c22646174615f6f666673657473223a5b31362c32305d7d2c2262223a7b226474797065223a2242463136222c227368617065223a5b325d2c22646174615f6f666673657473223a5b32302c32345d7d2c227a657461223a7b226474797065223a22463136222c227368617065223a5b335d2c22646174615f6f666673657473223a5b32342c33305d7d7d200000803f000000bf0000803e6f12833a0000e040cd3d4d3e662e00c00042";
        let python: Vec<u8> = (0..python.len()).step_by(2).map(|i| u8::from_str_radix(&python[i..i + 2], 16).unwrap()).collect();
        let mut t = decl(&[("zeta", DType::F16, &[3]), ("alpha", DType::F32, &[2, 2]), ("mid", DType::F32, &[1]), ("b", DType::BF16, &[2])]);
        python_order(&mut t);
        assert_eq!(t.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["alpha", "mid", "b", "zeta"]);
        let values = |n: &str| -> Vec<f32> {
            match n {
                "zeta" => vec![0.1, -2.0, 3.0],
                "alpha" => vec![1.0, -0.5, 0.25, 1e-3],
                "mid" => vec![7.0],
                _ => vec![0.1, 0.2],
            }
        };
        let vals: Vec<Vec<f32>> = t.iter().map(|x| values(&x.0)).collect();
        let md = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let ours = write(&t, &vals, &md);
        assert_eq!(u64::from_le_bytes(ours[..8].try_into().unwrap()), 264);
        assert_eq!(ours, python);
    }

    /// `safetensors.torch.save({"h": tensor([0.5], f16), "b": tensor([1.5], bf16), "f": tensor([1.0]),
    /// "s": tensor(2.0), "e": zeros(0, 3)}, metadata={"format": "pt"})` from the Python library 0.8.0:
    /// a scalar and an empty tensor sharing offset 0 with the next one. We read it and rewrite it
    /// byte for byte.
    #[test]
    fn reads_and_rewrites_python_file_with_scalar_and_empty_tensor() {
        let python = "30010000000000007b225f5f6d657461646174615f5f223a7b22666f726d6174223a227074227d2c2265223a7b226474797065223a22463332222c227368617065223a5b302c335d2c22646174615f6f666673657473223a5b302c305d7d2c2266223a7b226474797065223a22463332222c227368617065223a5b315d2c22646174615f6f666673657473223a5b302c345d7d2c2273223a7b226474797065223a22463332222c227368617065223a5b5d2c22646174615f6f666673657473223a5b342c385d7d2c2262223a7b226474797065223a2242463136222c227368617065223a5b315d2c22646174615f6f666673657473223a5b382c31305d7d2c2268223a7b226474797065223a22463136222c227368617065223a5b315d2c22646174615f6f666673657473223a5b31302c31325d7d7d20200000803f00000040c03f0038";
        let python: Vec<u8> = (0..python.len()).step_by(2).map(|i| u8::from_str_radix(&python[i..i + 2], 16).unwrap()).collect();
        let mut src = MemSource { name: "py.safetensors".into(), bytes: python.clone() };
        let h = read_header(&mut src).unwrap();
        assert_eq!(h.data_start, 8 + 304);
        assert_eq!(h.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["e", "f", "s", "b", "h"]);
        let mut decl = Vec::new();
        let mut vals = Vec::new();
        for t in &h.tensors {
            let mut v = Vec::new();
            read_tensor(&mut src, t, &mut v).unwrap();
            decl.push((t.name.clone(), t.dtype, t.shape.clone()));
            vals.push(v);
        }
        assert_eq!(vals, [vec![], vec![1.0], vec![2.0], vec![1.5], vec![0.5]]);
        assert_eq!(h.get("s").unwrap().shape, Vec::<usize>::new());
        assert_eq!(write(&decl, &vals, &h.metadata), python);
    }

    /// `safetensors.numpy.save({"x": zeros(2, f32)})` (no metadata): 54 bytes of JSON + 2 spaces;
    /// `save({})`: `{}` + 6 spaces. Also python_order puts BF16 between F32 and F16.
    #[test]
    fn header_without_metadata_and_empty() {
        let h = header_bytes("x", &decl(&[("x", DType::F32, &[2])]), &BTreeMap::new()).unwrap();
        assert_eq!(&h[..], &[&56u64.to_le_bytes()[..], br#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  "#].concat()[..]);
        let h = header_bytes("x", &[], &BTreeMap::new()).unwrap();
        assert_eq!(&h[..], &[&8u64.to_le_bytes()[..], b"{}      "].concat()[..]);
        let mut t = decl(&[("h", DType::F16, &[1]), ("b", DType::BF16, &[1]), ("s", DType::F32, &[]), ("f", DType::F32, &[1])]);
        python_order(&mut t);
        assert_eq!(t.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["f", "s", "b", "h"]);
    }

    #[test]
    fn round_trip_every_dtype() {
        for dt in DType::ALL {
            let t = decl(&[("a.weight", dt, &[3, 2]), ("scalar", dt, &[]), ("empty", dt, &[0, 4]), ("b", dt, &[5])]);
            let vals = vec![vec![1.0, -2.5, 0.333, 65504.0, -0.0, 1e-3], vec![7.25], vec![], vec![0.1, 0.2, 0.3, 0.4, 0.5]];
            let md = BTreeMap::from([("format".to_string(), "pt".to_string())]);
            let bytes = write(&t, &vals, &md);
            let mut src = MemSource { name: "t.safetensors".into(), bytes };
            let h = read_header(&mut src).unwrap();
            assert_eq!(h.metadata, md);
            assert_eq!(h.tensors.len(), 4);
            let mut out = vec![99.0];
            for ((name, _, shape), v) in t.iter().zip(&vals) {
                let info = h.get(name).unwrap().clone();
                assert_eq!(&info.shape, shape);
                assert_eq!(info.dtype, dt);
                read_tensor(&mut src, &info, &mut out).unwrap();
                let want: Vec<f32> = v.iter().map(|x| dt.round(*x)).collect();
                assert_eq!(out, want, "{dt} {name}");
                let mut raw = Vec::new();
                read_tensor_bytes(&mut src, &info, &mut raw).unwrap();
                let mut enc = Vec::new();
                dt.encode_into(v, &mut enc);
                assert_eq!(raw, enc);
            }
            // file order is declared order
            assert_eq!(h.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a.weight", "scalar", "empty", "b"]);
        }
    }

    #[test]
    fn writer_rejects_misuse() {
        let t = decl(&[("a", DType::F32, &[2]), ("b", DType::BF16, &[1])]);
        let new = || Writer::new(MemSink { name: "o.safetensors".into(), ..Default::default() }, &t, &BTreeMap::new()).unwrap();
        let mut w = new();
        let e = w.write_tensor("b", &[1.0]).unwrap_err().to_string();
        assert!(e.contains("o.safetensors") && e.contains("tensor b") && e.contains("out of order") && e.contains("next tensor in the header is a"), "{e}");
        let e = w.write_tensor("zz", &[1.0]).unwrap_err().to_string();
        assert!(e.contains("tensor zz") && e.contains("not declared"), "{e}");
        let e = w.write_tensor("a", &[1.0]).unwrap_err().to_string();
        assert!(e.contains("tensor a") && e.contains("got 1 values, the header declares 2"), "{e}");
        w.write_tensor("a", &[1.0, 2.0]).unwrap();
        let e = w.finish().err().unwrap().to_string();
        assert!(e.contains("o.safetensors") && e.contains("tensor b") && e.contains("not written"), "{e}");
        let mut w = new();
        w.write_tensor("a", &[1.0, 2.0]).unwrap();
        w.write_tensor_bytes("b", &[0x80, 0x3f]).unwrap();
        let e = w.write_tensor("a", &[1.0, 2.0]).unwrap_err().to_string();
        assert!(e.contains("already written"), "{e}");
        let s = w.finish().unwrap();
        let mut src = MemSource { name: "o".into(), bytes: s.bytes };
        let h = read_header(&mut src).unwrap();
        let mut out = Vec::new();
        read_tensor(&mut src, h.get("b").unwrap(), &mut out).unwrap();
        assert_eq!(out, [1.0]);
        let e = Writer::new(MemSink::default(), &decl(&[("a", DType::F32, &[1]), ("a", DType::F32, &[1])]), &BTreeMap::new()).err().unwrap().to_string();
        assert!(e.contains("tensor a") && e.contains("declared twice"), "{e}");
    }

    /// A tensor written in parts (and read back in ranges) gives the same bytes and values as
    /// one whole write / read, including parts that straddle the encoder's internal chunks.
    #[test]
    fn partial_writes_and_range_reads_equal_whole() {
        for dt in DType::ALL {
            let n = CHUNK_BYTES / dt.size() + 1000;
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let t = decl(&[("a", DType::F32, &[3]), ("big", dt, &[n]), ("z", dt, &[2])]);
            let whole = write(&t, &[vec![1.0, 2.0, 3.0], v.clone(), vec![4.0, 5.0]], &BTreeMap::new());
            let mut w = Writer::new(MemSink { name: "p.safetensors".into(), ..Default::default() }, &t, &BTreeMap::new()).unwrap();
            w.write_tensor("a", &[1.0, 2.0, 3.0]).unwrap();
            let cuts = [0, 7, 7, 100_003, n - 1, n];
            for c in cuts.windows(2) {
                w.write_tensor_part("big", &v[c[0]..c[1]]).unwrap();
                if c[1] < n {
                    let e = w.write_tensor("big", &v).unwrap_err().to_string();
                    assert!(e.contains("partly written"), "{e}");
                }
            }
            let e = w.write_tensor_part("big", &[1.0]).unwrap_err().to_string();
            assert!(e.contains("out of order") || e.contains("next tensor in the header is z"), "{e}");
            w.write_tensor_part("z", &[4.0]).unwrap();
            let e = w.write_tensor_part("z", &[4.0, 5.0]).unwrap_err().to_string();
            assert!(e.contains("2 more values after 1"), "{e}");
            w.write_tensor_part("z", &[5.0]).unwrap();
            let parts = w.finish().unwrap().bytes;
            assert_eq!(parts, whole, "{dt}");
            let mut src = MemSource { name: "p".into(), bytes: whole };
            let h = read_header(&mut src).unwrap();
            let info = h.get("big").unwrap().clone();
            let mut all = Vec::new();
            read_tensor(&mut src, &info, &mut all).unwrap();
            let mut out = Vec::new();
            for c in cuts.windows(2) {
                read_tensor_range(&mut src, &info, c[0], c[1] - c[0], &mut out).unwrap();
                assert_eq!(out, all[c[0]..c[1]], "{dt} {c:?}");
            }
            let e = read_tensor_range(&mut src, &info, n - 1, 2, &mut out).unwrap_err().to_string();
            assert!(e.contains("tensor big") && e.contains(&format!("the tensor has {n}")), "{e}");
        }
        // Finishing with a tensor half written names it.
        let t = decl(&[("x", DType::F32, &[4])]);
        let mut w = Writer::new(MemSink { name: "h.safetensors".into(), ..Default::default() }, &t, &BTreeMap::new()).unwrap();
        w.write_tensor_part("x", &[1.0, 2.0]).unwrap();
        let e = w.finish().err().unwrap().to_string();
        assert!(e.contains("tensor x") && e.contains("2 of 4 values"), "{e}");
    }

    #[test]
    fn large_tensor_streams_in_chunks() {
        // 3 chunks and a bit: exercises the chunked read and write paths.
        let n = CHUNK_BYTES / 4 * 3 + 17;
        let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let t = decl(&[("big", DType::F32, &[n])]);
        let bytes = write(&t, std::slice::from_ref(&v), &BTreeMap::new());
        let mut src = MemSource { name: "big".into(), bytes };
        let h = read_header(&mut src).unwrap();
        let mut out = Vec::new();
        read_tensor(&mut src, &h.tensors[0], &mut out).unwrap();
        assert_eq!(out, v);
    }
}
