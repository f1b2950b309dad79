//! GGUF (v2, v3): streaming reader of metadata, tensor infos and tensor data.
//!
//! References: the GGUF specification (ggml `docs/gguf.md`), llama.cpp's reader
//! `ggml/src/gguf.cpp` (`gguf_init_from_file_impl`, whose checks we follow) and gguf-py
//! (`gguf/gguf_reader.py`, `gguf/constants.py`: value types, `GGML_QUANT_SIZES`). Block formats:
//! [`crate::tensor::quant`].
//!
//! Layout (little-endian; big-endian files are recognised and refused):
//!
//! ```text
//! magic "GGUF" | version: u32 (2 or 3) | tensor_count: u64 | kv_count: u64
//! kv_count × { key: string | value_type: u32 | value }
//!     string = len: u64 | len bytes of UTF-8
//!     array  = elem_type: u32 | n: u64 | n values (arrays of arrays are refused, as llama.cpp does)
//! tensor_count × { name: string | n_dims: u32 | ne: [u64; n_dims] | ggml_type: u32 | offset: u64 }
//! padding to `general.alignment` (u32, default 32, a power of two)
//! data section: each tensor at data_start + offset (offset a multiple of the alignment)
//! ```
//!
//! `ne[0]` is the innermost (contiguous) dimension: a `[out, in]` projection weight has
//! `ne = [in, out]`. [`GgufTensor::shape`] is the row-major shape (`ne` reversed).
//!
//! **Reader** ([`Gguf::read`]): reads the header through a small buffer from any [`ByteSource`]
//! (the data section is never read), validating as it goes, so that bad input is an error naming
//! the file and the key or tensor, never a panic or a huge allocation:
//! - magic, version (1 is obsolete, > 3 unknown, a byte-swapped version means big-endian);
//! - counts: each KV needs at least 13 bytes and each tensor info 24, so a count the rest of the
//!   file cannot hold is refused before anything is allocated; likewise string lengths and array
//!   lengths (× element size) must fit in what is left of the file;
//! - keys unique, value types known, strings UTF-8, `general.alignment` a u32 power of two;
//! - tensor names unique and shorter than 64 bytes (ggml's `GGML_MAX_NAME`), at most 4 dimensions,
//!   element count without overflow, a known ggml type, `ne[0]` a multiple of the type's block
//!   size, offset a multiple of the alignment;
//! - tensor data: byte size = numel / block size × block bytes; sorted by offset, no two tensors
//!   overlap (the error names both); a tensor ending past the end of the file is reported as a
//!   truncated file with the tensor's name and the number of missing bytes. (llama.cpp further
//!   requires each tensor to start exactly where the previous one ends, padded; we accept gaps.)
//!
//! Tensor types: every ggml type is recognised by number and name (so sizes can be validated), and
//! F32, F16, BF16, Q8_0, Q4_0, Q4_1 can be read ([`read_tensor_f32`] dequantizes). Reading a
//! tensor of any other type (Q4_K, Q6_K, IQ…) is [`GgufError::UnsupportedType`] naming the tensor
//! and the type; [`Gguf::check_supported`] finds the first such tensor up front.

use half::{bf16, f16};

use crate::formats::io::{ByteSource, IoError};
use crate::tensor::quant::{self, BlockFormat};

/// The default alignment of the data section and of tensor offsets (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest tensor name + 1 (ggml `GGML_MAX_NAME`).
pub const MAX_NAME: usize = 64;
/// Most dimensions of a tensor (ggml `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";
/// Header read buffer and tensor streaming chunk.
const CHUNK: usize = 1 << 16;
const STREAM_CHUNK: usize = 1 << 22;

/// Errors of the GGUF reader. Every message names the file, and the key or tensor where there is one.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{0}")]
    Io(#[from] IoError),
    /// The file as a whole is not a GGUF file we can read (magic, version, counts, layout).
    #[error("{file}: invalid GGUF file: {message}")]
    Header { file: String, message: String },
    /// A metadata entry is malformed, missing or not of the requested type.
    #[error("{file}: metadata key {key:?}: {message}")]
    Key { file: String, key: String, message: String },
    /// A tensor info is invalid or its data cannot be read.
    #[error("{file}: tensor {tensor}: {message}")]
    Tensor { file: String, tensor: String, message: String },
    /// A tensor of a ggml type this build does not read.
    #[error("{file}: tensor {tensor} uses ggml type {type_name} ({type_id}), not supported: supported are {SUPPORTED}")]
    UnsupportedType { file: String, tensor: String, type_name: String, type_id: u32 },
    /// The file ends before the data of a tensor does.
    #[error("{file}: truncated: tensor {tensor} (bytes {begin}..{end} of the file) needs {end} bytes but the file has {len} ({missing} bytes missing)")]
    Truncated { file: String, tensor: String, begin: u64, end: u64, len: u64, missing: u64 },
}

/// A ggml tensor type, by its number in ggml's `enum ggml_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// (number, name, block size in elements, block size in bytes), as gguf-py's `GGML_QUANT_SIZES`.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const BF16: GgmlType = GgmlType(30);

    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        GGML_TYPES.iter().find(|e| e.0 == self.0)
    }

    /// ggml's name (`"Q6_K"`), or `"unknown"`.
    pub fn name(self) -> &'static str {
        self.entry().map_or("unknown", |e| e.1)
    }

    /// Whether ggml defines this type (so its byte size is known).
    pub fn is_known(self) -> bool {
        self.entry().is_some()
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> Option<u64> {
        self.entry().map(|e| e.2)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> Option<u64> {
        self.entry().map(|e| e.3)
    }

    /// Whether [`read_tensor_f32`] reads this type.
    pub fn is_supported(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)
    }

    /// The block format of a supported quantized type.
    pub fn block_format(self) -> Option<BlockFormat> {
        match self {
            GgmlType::Q8_0 => Some(BlockFormat::Q8_0),
            GgmlType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlType::Q4_1 => Some(BlockFormat::Q4_1),
            _ => None,
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// GGUF metadata value types (`enum gguf_type`).
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

fn value_type_name(t: u32) -> &'static str {
    match t {
        T_U8 => "u8",
        T_I8 => "i8",
        T_U16 => "u16",
        T_I16 => "i16",
        T_U32 => "u32",
        T_I32 => "i32",
        T_F32 => "f32",
        T_BOOL => "bool",
        T_STRING => "string",
        T_ARRAY => "array",
        T_U64 => "u64",
        T_I64 => "i64",
        T_F64 => "f64",
        _ => "unknown",
    }
}

/// Smallest encoded size of one value of a type (a string is at least its 8-byte length).
fn min_value_bytes(t: u32) -> u64 {
    match t {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 | T_STRING => 8,
        _ => 12,
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(MetaArray),
}

/// A metadata array (all elements of one type; arrays of arrays are refused).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's name (`"string"`).
    pub fn elem_type_name(&self) -> &'static str {
        value_type_name(match self {
            MetaArray::U8(_) => T_U8,
            MetaArray::I8(_) => T_I8,
            MetaArray::U16(_) => T_U16,
            MetaArray::I16(_) => T_I16,
            MetaArray::U32(_) => T_U32,
            MetaArray::I32(_) => T_I32,
            MetaArray::F32(_) => T_F32,
            MetaArray::Bool(_) => T_BOOL,
            MetaArray::String(_) => T_STRING,
            MetaArray::U64(_) => T_U64,
            MetaArray::I64(_) => T_I64,
            MetaArray::F64(_) => T_F64,
        })
    }

    /// Integer elements as i64 (`None` for float, bool and string arrays, or a u64 above i64::MAX).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            MetaArray::U8(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I8(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U16(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I16(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U32(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I32(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<Vec<_>>>()?,
            MetaArray::I64(v) => v.clone(),
            _ => return None,
        })
    }
}

impl MetaValue {
    /// The type's name (`"u32"`, `"array of string"`).
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array(a) => format!("array of {}", a.elem_type_name()),
            v => value_type_name(match v {
                MetaValue::U8(_) => T_U8,
                MetaValue::I8(_) => T_I8,
                MetaValue::U16(_) => T_U16,
                MetaValue::I16(_) => T_I16,
                MetaValue::U32(_) => T_U32,
                MetaValue::I32(_) => T_I32,
                MetaValue::F32(_) => T_F32,
                MetaValue::Bool(_) => T_BOOL,
                MetaValue::String(_) => T_STRING,
                MetaValue::U64(_) => T_U64,
                MetaValue::I64(_) => T_I64,
                MetaValue::F64(_) => T_F64,
                MetaValue::Array(_) => T_ARRAY,
            })
            .to_string(),
        }
    }

    /// An integer value of any width, as i128 (so every u64 and i64 fits).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(x) => x as i128,
            MetaValue::I8(x) => x as i128,
            MetaValue::U16(x) => x as i128,
            MetaValue::I16(x) => x as i128,
            MetaValue::U32(x) => x as i128,
            MetaValue::I32(x) => x as i128,
            MetaValue::U64(x) => x as i128,
            MetaValue::I64(x) => x as i128,
            _ => return None,
        })
    }
}

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    pub name: String,
    /// Dimensions as stored, innermost first (`ne[0]` is the row length).
    pub ne: Vec<u64>,
    /// Row-major shape (`ne` reversed): `[out, in]` for a projection weight.
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the tensor's data in the file (data start + stored offset).
    pub offset: u64,
    /// Byte length of the data (numel / block size × block bytes).
    pub len: u64,
}

impl GgufTensor {
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// A parsed and validated GGUF header.
#[derive(Clone, Debug, PartialEq)]
pub struct Gguf {
    /// File name, for messages.
    pub file: String,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensors in file order (the order of the tensor infos).
    pub tensors: Vec<GgufTensor>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: u64,
}

/// Buffered little-endian reads of the header (one `read_at` per 64 KiB, not per field).
struct Cursor<'a> {
    src: &'a mut dyn ByteSource,
    file: String,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// `n` bytes at the cursor; `what` names the field for a file that ends too early.
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&[u8], GgufError> {
        if (n as u64) > self.remaining() {
            return Err(GgufError::Header {
                file: self.file.clone(),
                message: format!("the file ends at byte {} inside {} ({} more bytes needed): truncated, or not a GGUF file", self.len, what(), n as u64 - self.remaining()),
            });
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + n as u64 > buf_end {
            let want = (n.max(CHUNK) as u64).min(self.remaining()) as usize;
            self.buf.resize(want, 0);
            self.src.read_at(self.pos, &mut self.buf)?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        self.pos += n as u64;
        Ok(&self.buf[at..at + n])
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, GgufError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A GGUF string; `what` names it. Its length must fit in the rest of the file.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(GgufError::Header {
                file: self.file.clone(),
                message: format!("{} has length {n} but only {} bytes of the file remain: corrupted or truncated", what(), self.remaining()),
            });
        }
        let b = self.take(n as usize, what)?;
        String::from_utf8(b.to_vec()).map_err(|e| GgufError::Header { file: self.file.clone(), message: format!("{} is not UTF-8 ({e})", what()) })
    }
}

fn key_err(file: &str, key: &str, message: impl Into<String>) -> GgufError {
    GgufError::Key { file: file.to_string(), key: key.to_string(), message: message.into() }
}

fn tensor_err(file: &str, tensor: &str, message: impl Into<String>) -> GgufError {
    GgufError::Tensor { file: file.to_string(), tensor: tensor.to_string(), message: message.into() }
}

fn read_scalar(c: &mut Cursor, t: u32, key: &str) -> Result<MetaValue, GgufError> {
    let what = || format!("the value of metadata key {key:?}");
    Ok(match t {
        T_U8 => MetaValue::U8(c.u8(&what)?),
        T_I8 => MetaValue::I8(c.u8(&what)? as i8),
        T_U16 => MetaValue::U16(c.u16(&what)?),
        T_I16 => MetaValue::I16(c.u16(&what)? as i16),
        T_U32 => MetaValue::U32(c.u32(&what)?),
        T_I32 => MetaValue::I32(c.u32(&what)? as i32),
        T_F32 => MetaValue::F32(f32::from_bits(c.u32(&what)?)),
        T_BOOL => MetaValue::Bool(c.u8(&what)? != 0),
        T_STRING => MetaValue::String(c.string(&what)?),
        T_U64 => MetaValue::U64(c.u64(&what)?),
        T_I64 => MetaValue::I64(c.u64(&what)? as i64),
        T_F64 => MetaValue::F64(f64::from_bits(c.u64(&what)?)),
        other => return Err(key_err(&c.file, key, format!("invalid value type {other} (valid: 0..=12)"))),
    })
}

fn read_array(c: &mut Cursor, key: &str) -> Result<MetaArray, GgufError> {
    let what = || format!("the array header of metadata key {key:?}");
    let t = c.u32(&what)?;
    let n = c.u64(&what)?;
    if t == T_ARRAY {
        return Err(key_err(&c.file, key, "arrays of arrays are not supported (llama.cpp refuses them too)"));
    }
    if t > T_F64 {
        return Err(key_err(&c.file, key, format!("array of invalid value type {t} (valid: 0..=12)")));
    }
    let need = n.checked_mul(min_value_bytes(t));
    if need.is_none_or(|need| need > c.remaining()) {
        return Err(key_err(
            &c.file,
            key,
            format!("array of {n} {} values needs at least {} bytes but only {} bytes of the file remain: corrupted or truncated", value_type_name(t), need.map_or("2^64".into(), |x| x.to_string()), c.remaining()),
        ));
    }
    let n = n as usize;
    macro_rules! fixed {
        ($variant:ident, $ty:ty, $size:expr, $conv:expr) => {{
            let b = c.take(n * $size, &|| format!("the array of metadata key {key:?}"))?;
            MetaArray::$variant(b.chunks_exact($size).map(|x| $conv(<[u8; $size]>::try_from(x).expect("chunk"))).collect::<Vec<$ty>>())
        }};
    }
    Ok(match t {
        T_U8 => fixed!(U8, u8, 1, |b: [u8; 1]| b[0]),
        T_I8 => fixed!(I8, i8, 1, |b: [u8; 1]| b[0] as i8),
        T_BOOL => fixed!(Bool, bool, 1, |b: [u8; 1]| b[0] != 0),
        T_U16 => fixed!(U16, u16, 2, u16::from_le_bytes),
        T_I16 => fixed!(I16, i16, 2, i16::from_le_bytes),
        T_U32 => fixed!(U32, u32, 4, u32::from_le_bytes),
        T_I32 => fixed!(I32, i32, 4, i32::from_le_bytes),
        T_F32 => fixed!(F32, f32, 4, f32::from_le_bytes),
        T_U64 => fixed!(U64, u64, 8, u64::from_le_bytes),
        T_I64 => fixed!(I64, i64, 8, i64::from_le_bytes),
        T_F64 => fixed!(F64, f64, 8, f64::from_le_bytes),
        _ => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&|| format!("element {i} of the string array of metadata key {key:?}"))?);
            }
            MetaArray::String(v)
        }
    })
}

impl Gguf {
    /// Read and validate the header (see the module docs for every rule). Reads the header only.
    pub fn read(src: &mut dyn ByteSource) -> Result<Gguf, GgufError> {
        let file = src.name().to_string();
        let len = src.len();
        let header = |message: String| GgufError::Header { file: file.clone(), message };
        if len < 4 {
            return Err(header(format!("the file has {len} bytes, too few for the 4-byte magic")));
        }
        let mut c = Cursor { src, file: file.clone(), len, pos: 0, buf: Vec::new(), buf_start: 0 };
        let magic: [u8; 4] = c.take(4, &|| "the magic".into())?.try_into().expect("4 bytes");
        if &magic != b"GGUF" {
            return Err(header(format!("bad magic {:?} (bytes {:02x?}), expected \"GGUF\": not a GGUF file", String::from_utf8_lossy(&magic), magic)));
        }
        let version = c.u32(&|| "the version".into())?;
        if version & 0xFFFF == 0 && version != 0 {
            return Err(header(format!("version field {version:#010x} looks byte-swapped: big-endian GGUF files are not supported")));
        }
        match version {
            2 | 3 => {}
            1 => return Err(header("GGUF version 1 is obsolete and not supported (supported: 2, 3)".into())),
            v => return Err(header(format!("unsupported GGUF version {v} (supported: 2, 3)"))),
        }
        let n_tensors = c.u64(&|| "the tensor count".into())?;
        let n_kv = c.u64(&|| "the metadata count".into())?;
        // Minimum encoded sizes: a KV is a key length (8) + a type (4) + ≥ 1 byte of value; a
        // tensor info is a name length (8) + n_dims (4) + type (4) + offset (8).
        let rest = c.remaining();
        if n_kv.checked_mul(13).is_none_or(|b| b > rest) {
            return Err(header(format!("metadata count {n_kv} cannot fit in the remaining {rest} bytes of the file: corrupted or truncated")));
        }
        if n_tensors.checked_mul(24).is_none_or(|b| b > rest) {
            return Err(header(format!("tensor count {n_tensors} cannot fit in the remaining {rest} bytes of the file: corrupted or truncated")));
        }

        let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&|| format!("the key of metadata entry {i}"))?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(key_err(&file, &key, "duplicate key"));
            }
            let t = c.u32(&|| format!("the value type of metadata key {key:?}"))?;
            let value = if t == T_ARRAY { MetaValue::Array(read_array(&mut c, &key)?) } else { read_scalar(&mut c, t, &key)? };
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((k, MetaValue::U32(a))) => {
                if *a == 0 || !a.is_power_of_two() {
                    return Err(key_err(&file, k, format!("alignment {a} is not a power of two")));
                }
                *a as u64
            }
            Some((k, v)) => return Err(key_err(&file, k, format!("expected a u32, found {}", v.type_name()))),
        };

        let mut tensors: Vec<GgufTensor> = Vec::with_capacity(n_tensors as usize);
        let mut rel_offsets = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("the name of tensor {i}"))?;
            if name.len() >= MAX_NAME {
                return Err(tensor_err(&file, &name, format!("name is {} bytes long, ggml allows at most {}", name.len(), MAX_NAME - 1)));
            }
            if tensors.iter().any(|t| t.name == name) {
                return Err(tensor_err(&file, &name, "duplicate tensor name"));
            }
            let what = || format!("the info of tensor {name}");
            let n_dims = c.u32(&what)? as usize;
            if n_dims > MAX_DIMS {
                return Err(tensor_err(&file, &name, format!("{n_dims} dimensions, ggml allows at most {MAX_DIMS}")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(c.u64(&what)?);
            }
            let numel = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d).filter(|&x| x <= i64::MAX as u64));
            let Some(numel) = numel else {
                return Err(tensor_err(&file, &name, format!("dimensions {ne:?} overflow the element count")));
            };
            let ty = GgmlType(c.u32(&what)?);
            let (Some(block), Some(block_bytes)) = (ty.block_size(), ty.block_bytes()) else {
                return Err(tensor_err(&file, &name, format!("invalid ggml type {} (not a type ggml defines)", ty.0)));
            };
            let ne0 = ne.first().copied().unwrap_or(1);
            if ne0 % block != 0 {
                return Err(tensor_err(&file, &name, format!("type {ty} has rows of {ne0} elements, not a multiple of its block size {block}")));
            }
            let rel = c.u64(&what)?;
            if rel % alignment != 0 {
                return Err(tensor_err(&file, &name, format!("data offset {rel} is not a multiple of the alignment {alignment}")));
            }
            let byte_len = (numel / block).checked_mul(block_bytes).ok_or_else(|| tensor_err(&file, &name, "byte size overflows"))?;
            let shape = ne.iter().rev().map(|&d| d as usize).collect();
            rel_offsets.push(rel);
            tensors.push(GgufTensor { name, ne, shape, ggml_type: ty, offset: rel, len: byte_len });
        }

        let data_start = c.pos.div_ceil(alignment) * alignment;
        if data_start > len && !tensors.is_empty() {
            return Err(header(format!("the data section would start at byte {data_start}, past the end of the file ({len} bytes): truncated")));
        }
        for t in &mut tensors {
            t.offset = data_start.checked_add(t.offset).ok_or_else(|| tensor_err(&file, &t.name, format!("data offset {} overflows", t.offset)))?;
        }

        // Bounds and overlaps, in offset order.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (tensors[i].offset, tensors[i].len));
        let mut prev: Option<&GgufTensor> = None;
        for &i in &order {
            let t = &tensors[i];
            let end = t.offset.checked_add(t.len).ok_or_else(|| tensor_err(&file, &t.name, "data end overflows"))?;
            if end > len {
                return Err(GgufError::Truncated { file, tensor: t.name.clone(), begin: t.offset, end, len, missing: end - len });
            }
            if let Some(p) = prev
                && p.offset + p.len > t.offset
            {
                return Err(tensor_err(
                    &file,
                    &t.name,
                    format!("data (bytes {}..{end}) overlaps tensor {} (bytes {}..{})", t.offset, p.name, p.offset, p.offset + p.len),
                ));
            }
            if t.len > 0 {
                prev = Some(t);
            }
        }
        Ok(Gguf { file, version, metadata, tensors, alignment, data_start })
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor by name, or an error naming the file and the tensor.
    pub fn require_tensor(&self, name: &str) -> Result<&GgufTensor, GgufError> {
        self.tensor(name).ok_or_else(|| tensor_err(&self.file, name, "not in the file"))
    }

    /// The first tensor of a type [`read_tensor_f32`] cannot read, as an error.
    pub fn check_supported(&self) -> Result<(), GgufError> {
        match self.tensors.iter().find(|t| !t.ggml_type.is_supported()) {
            Some(t) => Err(unsupported(&self.file, t)),
            None => Ok(()),
        }
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key).ok_or_else(|| key_err(&self.file, key, "missing"))
    }

    fn wrong(&self, key: &str, expected: &str, v: &MetaValue) -> GgufError {
        key_err(&self.file, key, format!("expected {expected}, found {} ({})", v.type_name(), short(v)))
    }

    fn int_in<T: TryFrom<i128>>(&self, key: &str, expected: &str) -> Result<T, GgufError> {
        let v = self.require(key)?;
        let i = v.as_int().ok_or_else(|| self.wrong(key, expected, v))?;
        T::try_from(i).map_err(|_| key_err(&self.file, key, format!("value {i} is out of range for {expected}")))
    }

    /// An integer of any GGUF integer type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.int_in(key, "u32")
    }
    /// An integer of any GGUF integer type that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.int_in(key, "u64")
    }
    /// An integer of any GGUF integer type that fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.int_in(key, "i64")
    }
    /// An integer of any GGUF integer type that fits in usize.
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.int_in(key, "usize")
    }
    /// An f32, or an f64 narrowed to f32.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        match self.require(key)? {
            MetaValue::F32(x) => Ok(*x),
            MetaValue::F64(x) => Ok(*x as f32),
            v => Err(self.wrong(key, "f32", v)),
        }
    }
    /// An f64, or an f32 widened.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        match self.require(key)? {
            MetaValue::F32(x) => Ok(*x as f64),
            MetaValue::F64(x) => Ok(*x),
            v => Err(self.wrong(key, "f64", v)),
        }
    }
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            MetaValue::Bool(x) => Ok(*x),
            v => Err(self.wrong(key, "bool", v)),
        }
    }
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            MetaValue::String(x) => Ok(x),
            v => Err(self.wrong(key, "string", v)),
        }
    }
    pub fn get_array(&self, key: &str) -> Result<&MetaArray, GgufError> {
        match self.require(key)? {
            MetaValue::Array(a) => Ok(a),
            v => Err(self.wrong(key, "array", v)),
        }
    }
    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        match self.require(key)? {
            MetaValue::Array(MetaArray::String(a)) => Ok(a),
            v => Err(self.wrong(key, "array of string", v)),
        }
    }
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32], GgufError> {
        match self.require(key)? {
            MetaValue::Array(MetaArray::F32(a)) => Ok(a),
            v => Err(self.wrong(key, "array of f32", v)),
        }
    }
    /// An array of any integer type, as i64 (e.g. `tokenizer.ggml.token_type`, an i32 array).
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let v = self.require(key)?;
        match v {
            MetaValue::Array(a) => a.to_i64_vec().ok_or_else(|| self.wrong(key, "array of integers", v)),
            _ => Err(self.wrong(key, "array of integers", v)),
        }
    }
}

/// A value, shortened for a message.
fn short(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) if s.chars().count() > 40 => format!("{:?}…", s.chars().take(40).collect::<String>()),
        MetaValue::Array(a) => format!("{} elements", a.len()),
        v => format!("{v:?}"),
    }
}

fn unsupported(file: &str, t: &GgufTensor) -> GgufError {
    GgufError::UnsupportedType { file: file.to_string(), tensor: t.name.clone(), type_name: t.ggml_type.name().to_string(), type_id: t.ggml_type.0 }
}

/// The raw bytes of one tensor (any type), replacing the contents of `out`.
pub fn read_tensor_raw(src: &mut dyn ByteSource, info: &GgufTensor, out: &mut Vec<u8>) -> Result<(), GgufError> {
    let file = src.name().to_string();
    let len = src.len();
    let end = info.offset.saturating_add(info.len);
    if end > len {
        return Err(GgufError::Truncated { file, tensor: info.name.clone(), begin: info.offset, end, len, missing: end - len });
    }
    let n = usize::try_from(info.len).map_err(|_| tensor_err(&file, &info.name, format!("{} bytes do not fit in memory", info.len)))?;
    out.clear();
    out.resize(n, 0);
    src.read_at(info.offset, out).map_err(|e| tensor_err(&file, &info.name, e.message))
}

/// One tensor as f32 values in row-major order (`numel` values), appended to `out` after clearing
/// it. F16 and BF16 widen exactly; Q8_0, Q4_0 and Q4_1 dequantize as llama.cpp does. Streams the
/// data in chunks of whole blocks (at most 4 MiB of raw bytes held at once).
pub fn read_tensor_f32(src: &mut dyn ByteSource, info: &GgufTensor, out: &mut Vec<f32>) -> Result<(), GgufError> {
    let file = src.name().to_string();
    if !info.ggml_type.is_supported() {
        return Err(unsupported(&file, info));
    }
    let len = src.len();
    let end = info.offset.saturating_add(info.len);
    if end > len {
        return Err(GgufError::Truncated { file, tensor: info.name.clone(), begin: info.offset, end, len, missing: end - len });
    }
    let block_bytes = info.ggml_type.block_bytes().unwrap_or(1) as usize;
    let chunk = (STREAM_CHUNK / block_bytes).max(1) * block_bytes;
    out.clear();
    out.reserve(usize::try_from(info.numel()).map_err(|_| tensor_err(&file, &info.name, "too many elements for memory"))?);
    let mut buf = Vec::new();
    let mut pos = 0u64;
    while pos < info.len {
        let n = (info.len - pos).min(chunk as u64) as usize;
        buf.resize(n, 0);
        src.read_at(info.offset + pos, &mut buf).map_err(|e| tensor_err(&file, &info.name, e.message))?;
        match info.ggml_type {
            GgmlType::F32 => out.extend(buf.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            GgmlType::F16 => out.extend(buf.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
            GgmlType::BF16 => out.extend(buf.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
            t => {
                let f = t.block_format().expect("supported quantized type");
                quant::dequantize(f, &buf, out).map_err(|e| tensor_err(&file, &info.name, e.to_string()))?;
            }
        }
        pos += n as u64;
    }
    Ok(())
}

/// One Q8_0 / Q4_0 / Q4_1 tensor in the aligned split layout for GPU upload
/// ([`quant::SplitBlocks`]: blocks in row-major order, `ne[0] / 32` blocks per row).
/// Any other type is an error naming the tensor.
pub fn read_tensor_split(src: &mut dyn ByteSource, info: &GgufTensor) -> Result<quant::SplitBlocks, GgufError> {
    let file = src.name().to_string();
    let Some(format) = info.ggml_type.block_format() else {
        return Err(if info.ggml_type.is_supported() {
            tensor_err(&file, &info.name, format!("type {} is not a block-quantized type (Q8_0, Q4_0, Q4_1)", info.ggml_type))
        } else {
            unsupported(&file, info)
        });
    };
    let mut raw = Vec::new();
    read_tensor_raw(src, info, &mut raw)?;
    quant::SplitBlocks::from_blocks(format, &raw).map_err(|e| tensor_err(&file, &info.name, e.to_string()))
}
