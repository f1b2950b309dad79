//! Sharded safetensors output, as mergekit 0.1.5 writes it
//! (reference: `mergekit/io/tensor_writer.py`, `TensorWriter`; `mergekit/common.py`, `parse_kmb`).
//!
//! - **Shard plan**: tensors in the order the merge saves them; a new shard starts when the
//!   current one is non-empty and adding the next tensor would make it exceed the maximum size
//!   (`current + size > max`); a maximum of 0 means one file. Sizes are **bytes** of tensor data
//!   (`numel × element size`), whatever mergekit's help says ("number of parameters"): its writer
//!   compares `numel() * element_size()` against the limit.
//! - **Names**: one shard is `model.safetensors` with no index; `n > 1` shards are
//!   `model-00001-of-0000n.safetensors` … and `model.safetensors.index.json` =
//!   `{"metadata": {"total_size": BYTES, "mergekit_version": "0.1.5"}, "weight_map": {tensor: file}}`,
//!   written by Python's `json.dump(indent=2)` (ASCII-escaped, no trailing newline), the
//!   weight_map in save order. With no tensors at all mergekit writes no file; so do we.
//! - **Inside a shard** mergekit calls `safetensors.torch.save_file(shard, metadata={"format": "pt"})`,
//!   which orders the tensors by dtype then name ([`python_order`]): [`ShardedLayout`] lists each
//!   shard's tensors in that order, and the merge must produce them in [`ShardedLayout::write_order`]
//!   for our bytes to equal mergekit's.
//! - **Size strings** (`--out-shard-size`): a whole number with an optional `K`/`M`/`B` suffix
//!   (any case) meaning ×10³, ×10⁶, ×10⁹ — "5B" is 5 000 000 000 bytes, mergekit's default.

use std::collections::{BTreeMap, HashSet};

use crate::formats::checkpoint::{INDEX_FILE, OutputDir, SINGLE_FILE};
use crate::formats::io::ByteSink;
use crate::formats::safetensors::{FormatError, Writer, python_order};
use crate::tensor::DType;

/// mergekit's default `--out-shard-size` ("5B").
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// The version mergekit writes into the index metadata; we mirror it so the index is byte-identical.
pub const MERGEKIT_VERSION: &str = "0.1.5";

/// Parse a size like mergekit's `parse_kmb`: digits with an optional K/M/B suffix
/// (thousand/million/billion, decimal). "5B" = 5 000 000 000. "0" disables sharding.
pub fn parse_size(s: &str) -> Result<u64, FormatError> {
    let bad = || FormatError::BadSize(s.to_string());
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000u64),
        Some((i, 'm' | 'M')) => (&t[..i], 1_000_000),
        Some((i, 'b' | 'B')) => (&t[..i], 1_000_000_000),
        Some(_) => (t, 1),
        None => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(bad)
}

/// Split tensors (name, byte size), in save order, into shards the way mergekit's `TensorWriter`
/// does. Returns each shard's indices into `sizes`, in order. `max_shard_bytes == 0`: one shard.
pub fn shard_plan(sizes: &[(String, u64)], max_shard_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_size = 0u64;
    for (i, (_, size)) in sizes.iter().enumerate() {
        if !current.is_empty() && max_shard_bytes > 0 && current_size.saturating_add(*size) > max_shard_bytes {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size = current_size.saturating_add(*size);
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// mergekit's file name for shard `index` (0-based) of `count`.
pub fn shard_file_name(index: usize, count: usize) -> String {
    if count == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{:05}.safetensors", index + 1, count) }
}

/// One output file and its tensors in write order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFile {
    pub file: String,
    /// (name, dtype, shape) in the order they are written (the Python library's order).
    pub tensors: Vec<(String, DType, Vec<usize>)>,
}

/// The output files of a merge, decided before any tensor is computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardedLayout {
    pub shards: Vec<ShardFile>,
    /// (tensor, file) in save order: the index's weight_map.
    pub weight_map: Vec<(String, String)>,
    /// Bytes of tensor data in all shards (the index's `total_size`).
    pub total_size: u64,
}

impl ShardedLayout {
    /// Plan the output for `tensors` (name, output dtype, shape) in the order mergekit saves them.
    /// `max_shard_bytes`: `--out-shard-size` ([`DEFAULT_SHARD_SIZE`] when not given; 0 = one file).
    pub fn new(tensors: &[(String, DType, Vec<usize>)], max_shard_bytes: u64) -> Result<ShardedLayout, FormatError> {
        let mut seen = HashSet::new();
        let mut sizes = Vec::with_capacity(tensors.len());
        for (name, dtype, shape) in tensors {
            if !seen.insert(name.as_str()) {
                return Err(FormatError::Tensor { file: "(output)".into(), tensor: name.clone(), message: "planned twice for the output".into() });
            }
            let bytes = shape
                .iter()
                .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d as u64))
                .ok_or_else(|| FormatError::Tensor { file: "(output)".into(), tensor: name.clone(), message: format!("shape {shape:?} is too large") })?;
            sizes.push((name.clone(), bytes));
        }
        let plan = shard_plan(&sizes, max_shard_bytes);
        let count = plan.len();
        let mut file_of = vec![0usize; tensors.len()];
        let mut shards = Vec::with_capacity(count);
        for (s, members) in plan.iter().enumerate() {
            let mut list: Vec<_> = members.iter().map(|&i| tensors[i].clone()).collect();
            python_order(&mut list);
            for &i in members {
                file_of[i] = s;
            }
            shards.push(ShardFile { file: shard_file_name(s, count), tensors: list });
        }
        let weight_map = tensors.iter().enumerate().map(|(i, t)| (t.0.clone(), shards[file_of[i]].file.clone())).collect();
        let total_size = sizes.iter().map(|s| s.1).sum();
        Ok(ShardedLayout { shards, weight_map, total_size })
    }

    /// Every tensor in the order the writer needs them: shard by shard, each in file order.
    pub fn write_order(&self) -> impl Iterator<Item = &(String, DType, Vec<usize>)> {
        self.shards.iter().flat_map(|s| s.tensors.iter())
    }

    /// `model.safetensors.index.json`'s text when there is more than one shard.
    pub fn index_json(&self) -> Option<String> {
        (self.shards.len() > 1).then(|| index_json(&self.weight_map, self.total_size))
    }
}

/// The index exactly as mergekit writes it (`json.dump(content, f, indent=2)`).
pub fn index_json(weight_map: &[(String, String)], total_size: u64) -> String {
    let mut s = String::new();
    s.push_str("{\n  \"metadata\": {\n    \"total_size\": ");
    s.push_str(&total_size.to_string());
    s.push_str(",\n    \"mergekit_version\": ");
    s.push_str(&py_json_str(MERGEKIT_VERSION));
    s.push_str("\n  },\n  \"weight_map\": {");
    for (i, (t, f)) in weight_map.iter().enumerate() {
        s.push_str(if i == 0 { "\n    " } else { ",\n    " });
        s.push_str(&py_json_str(t));
        s.push_str(": ");
        s.push_str(&py_json_str(f));
    }
    s.push_str(if weight_map.is_empty() { "}\n}" } else { "\n  }\n}" });
    s
}

/// A JSON string as Python's `json` writes it with `ensure_ascii=True`: everything outside
/// printable ASCII (`' '..='~'`) as `\uXXXX` (lower-case hex, surrogate pairs above U+FFFF).
fn py_json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '\u{8}' => o.push_str("\\b"),
            '\u{c}' => o.push_str("\\f"),
            ' '..='~' => o.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    o.push_str(&format!("\\u{:04x}", u));
                }
            }
        }
    }
    o.push('"');
    o
}

/// Writes a [`ShardedLayout`] to an [`OutputDir`], one tensor (or one element chunk of a tensor)
/// at a time in [`ShardedLayout::write_order`]. Every shard stays unfinished (a native `.partial`
/// file) until [`ShardedWriter::finish`], which finishes them all and then writes the index: an
/// error or a cancel at any point (dropping the writer) leaves no complete-looking file behind.
///
/// The writer owns its output (`O` may be a `&mut` borrow of one), so a merge driven step by
/// step (the page's worker) can keep it between steps.
pub struct ShardedWriter<O: OutputDir> {
    out: O,
    layout: ShardedLayout,
    metadata: BTreeMap<String, String>,
    /// Shards fully written, waiting for `finish`.
    done: Vec<Writer<Box<dyn ByteSink>>>,
    current: Option<Writer<Box<dyn ByteSink>>>,
    /// Index of the next shard to open.
    next_shard: usize,
}

impl<O: OutputDir> ShardedWriter<O> {
    /// `metadata` goes into every shard's header (`{"format": "pt"}` to match mergekit).
    pub fn new(out: O, layout: ShardedLayout, metadata: &BTreeMap<String, String>) -> ShardedWriter<O> {
        ShardedWriter { out, layout, metadata: metadata.clone(), done: Vec::new(), current: None, next_shard: 0 }
    }

    pub fn layout(&self) -> &ShardedLayout {
        &self.layout
    }

    /// The output directory (to create side files next to the shards).
    pub fn out_mut(&mut self) -> &mut O {
        &mut self.out
    }

    /// The tensor expected next, or None when all are written.
    pub fn next_tensor(&self) -> Option<&str> {
        match &self.current {
            Some(w) => w.next_tensor(),
            None => self.layout.shards.get(self.next_shard).and_then(|s| s.tensors.first()).map(|t| t.0.as_str()),
        }
    }

    fn writer(&mut self, name: &str) -> Result<&mut Writer<Box<dyn ByteSink>>, FormatError> {
        if self.current.is_none() {
            let Some(shard) = self.layout.shards.get(self.next_shard) else {
                return Err(FormatError::Tensor { file: "(output)".into(), tensor: name.into(), message: "all planned tensors are already written".into() });
            };
            let sink = self.out.create(&shard.file)?;
            self.current = Some(Writer::new(sink, &shard.tensors, &self.metadata)?);
            self.next_shard += 1;
        }
        Ok(self.current.as_mut().expect("opened above"))
    }

    fn after_write(&mut self) {
        if self.current.as_ref().is_some_and(|w| w.next_tensor().is_none()) {
            self.done.push(self.current.take().expect("checked"));
        }
    }

    /// Write the next tensor's values (encoded to its planned dtype).
    pub fn write_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), FormatError> {
        self.writer(name)?.write_tensor(name, values)?;
        self.after_write();
        Ok(())
    }

    /// Append the next `values.len()` values of the current tensor (see
    /// [`Writer::write_tensor_part`]); same bytes as one `write_tensor` with all of them.
    pub fn write_tensor_part(&mut self, name: &str, values: &[f32]) -> Result<(), FormatError> {
        self.writer(name)?.write_tensor_part(name, values)?;
        self.after_write();
        Ok(())
    }

    /// Write the next tensor's raw bytes (already in its planned dtype).
    pub fn write_tensor_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), FormatError> {
        self.writer(name)?.write_tensor_bytes(name, bytes)?;
        self.after_write();
        Ok(())
    }

    /// Finish every shard (checking each is complete), then write the index if there are several.
    /// Returns the files written, index last, and the output directory back.
    pub fn finish(mut self) -> Result<(Vec<String>, O), FormatError> {
        if let Some(w) = self.current.take() {
            // Incomplete: its finish() names the first missing tensor.
            w.finish()?;
        }
        if let Some(s) = self.layout.shards.get(self.next_shard) {
            return Err(FormatError::Tensor { file: s.file.clone(), tensor: s.tensors[0].0.clone(), message: "not written: the output was finished early".into() });
        }
        let mut files = Vec::new();
        for w in self.done.drain(..) {
            let s = w.finish()?;
            files.push(s.name().to_string());
        }
        if let Some(index) = self.layout.index_json() {
            let mut sink = self.out.create(INDEX_FILE)?;
            sink.write_all(index.as_bytes())?;
            sink.finish()?;
            files.push(INDEX_FILE.to_string());
        }
        Ok((files, self.out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_like_parse_kmb() {
        assert_eq!(parse_size("5B").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("5b").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("500M").unwrap(), 500_000_000);
        assert_eq!(parse_size("2k").unwrap(), 2_000);
        assert_eq!(parse_size("12345").unwrap(), 12_345);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in ["", "B", "1.5B", "-1", "5G", "5 B", "99999999999999999999B"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    fn sizes(v: &[u64]) -> Vec<(String, u64)> {
        v.iter().enumerate().map(|(i, s)| (format!("t{i}"), *s)).collect()
    }

    /// Reference: mergekit 0.1.5 `TensorWriter(max_shard_size=100)` fed uint8 tensors of these sizes
    /// (run once; its index put t0, t1 in shard 1 and each of t2..t5 alone):
    /// max 100, sizes 60, 40, 1, 100, 150, 10 → [60, 40] (100 is not > 100), [1], [100]
    /// (1 + 100 > 100), [150] (oversize tensor alone), [10].
    #[test]
    fn shard_plan_splits_as_mergekit() {
        assert_eq!(shard_plan(&sizes(&[60, 40, 1, 100, 150, 10]), 100), vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5]]);
        assert_eq!(shard_plan(&sizes(&[150, 10, 20]), 100), vec![vec![0], vec![1, 2]]);
        assert_eq!(shard_plan(&sizes(&[60, 40, 1]), 0), vec![vec![0, 1, 2]]);
        assert_eq!(shard_plan(&sizes(&[]), 100), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn layout_names_orders_and_indexes_like_mergekit() {
        let t = vec![
            ("z.norm".to_string(), DType::F32, vec![4]),  // 16 bytes
            ("a.weight".to_string(), DType::BF16, vec![4]), // 8
            ("m.weight".to_string(), DType::F32, vec![2]), // 8 → shard 1 = 32 bytes
            ("b.weight".to_string(), DType::F16, vec![4]), // 8 → shard 2
        ];
        let l = ShardedLayout::new(&t, 32).unwrap();
        assert_eq!(l.shards.len(), 2);
        assert_eq!(l.shards[0].file, "model-00001-of-00002.safetensors");
        let order: Vec<&str> = l.shards[0].tensors.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(order, ["m.weight", "z.norm", "a.weight"]);
        assert_eq!(l.total_size, 40);
        // Python: json.dumps({"metadata": {"total_size": 40, "mergekit_version": "0.1.5"},
        //   "weight_map": {...}}, indent=2), weight_map in save order.
        let want = "{\n  \"metadata\": {\n    \"total_size\": 40,\n    \"mergekit_version\": \"0.1.5\"\n  },\n  \"weight_map\": {\n    \"z.norm\": \"model-00001-of-00002.safetensors\",\n    \"a.weight\": \"model-00001-of-00002.safetensors\",\n    \"m.weight\": \"model-00001-of-00002.safetensors\",\n    \"b.weight\": \"model-00002-of-00002.safetensors\"\n  }\n}";
        assert_eq!(l.index_json().unwrap(), want);
        let one = ShardedLayout::new(&t, 0).unwrap();
        assert_eq!(one.shards.len(), 1);
        assert_eq!(one.shards[0].file, "model.safetensors");
        assert_eq!(one.index_json(), None);
        assert!(ShardedLayout::new(&[t[0].clone(), t[0].clone()], 0).is_err());
    }

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
    }

    fn tmp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("crucible-sharded-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Files written by mergekit 0.1.5's own `TensorWriter("/tmp/mkw", max_shard_size=32)` after
    /// `save_tensor` of z.norm f32 [1, 2, -3.5, 0.1], a.weight bf16 [0.1, 0.2, 0.3, -1],
    /// m.weight f32 [5, 6], b.weight f16 [0.5, -0.25, 1e-3, 7] and `finalize()`; ours must be
    /// byte-identical (shard split, file names, tensor order inside a shard, header, index).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn sharded_output_is_byte_identical_to_mergekit() {
        use crate::formats::checkpoint::DirOutput;
        let shard1 = unhex("d8000000000000007b225f5f6d657461646174615f5f223a7b22666f726d6174223a227074227d2c226d2e776569676874223a7b226474797065223a22463332222c227368617065223a5b325d2c22646174615f6f666673657473223a5b302c385d7d2c227a2e6e6f726d223a7b226474797065223a22463332222c227368617065223a5b345d2c22646174615f6f666673657473223a5b382c32345d7d2c22612e776569676874223a7b226474797065223a2242463136222c227368617065223a5b345d2c22646174615f6f666673657473223a5b32342c33325d7d7d20200000a0400000c0400000803f00000040000060c0cdcccc3dcd3d4d3e9a3e80bf");
        let shard2 = unhex("60000000000000007b225f5f6d657461646174615f5f223a7b22666f726d6174223a227074227d2c22622e776569676874223a7b226474797065223a22463136222c227368617065223a5b345d2c22646174615f6f666673657473223a5b302c385d7d7d20202020003800b419140047");
        let index = "{\n  \"metadata\": {\n    \"total_size\": 40,\n    \"mergekit_version\": \"0.1.5\"\n  },\n  \"weight_map\": {\n    \"z.norm\": \"model-00001-of-00002.safetensors\",\n    \"a.weight\": \"model-00001-of-00002.safetensors\",\n    \"m.weight\": \"model-00001-of-00002.safetensors\",\n    \"b.weight\": \"model-00002-of-00002.safetensors\"\n  }\n}";
        let values = |n: &str| -> Vec<f32> {
            match n {
                "z.norm" => vec![1.0, 2.0, -3.5, 0.1],
                "a.weight" => vec![0.1, 0.2, 0.3, -1.0],
                "m.weight" => vec![5.0, 6.0],
                _ => vec![0.5, -0.25, 1e-3, 7.0],
            }
        };
        let saved = vec![
            ("z.norm".to_string(), DType::F32, vec![4]),
            ("a.weight".to_string(), DType::BF16, vec![4]),
            ("m.weight".to_string(), DType::F32, vec![2]),
            ("b.weight".to_string(), DType::F16, vec![4]),
        ];
        let layout = ShardedLayout::new(&saved, 32).unwrap();
        let order: Vec<String> = layout.write_order().map(|t| t.0.clone()).collect();
        let dir = tmp_dir("golden");
        let mut out = DirOutput::new(&dir);
        let md = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut w = ShardedWriter::new(&mut out, layout, &md);
        for name in &order {
            assert_eq!(w.next_tensor(), Some(name.as_str()));
            w.write_tensor(name, &values(name)).unwrap();
        }
        assert_eq!(w.next_tensor(), None);
        let (files, _) = w.finish().unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(std::fs::read(dir.join("model-00001-of-00002.safetensors")).unwrap(), shard1);
        assert_eq!(std::fs::read(dir.join("model-00002-of-00002.safetensors")).unwrap(), shard2);
        assert_eq!(std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap(), index);
        let mut listed: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        listed.sort();
        assert_eq!(listed, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", INDEX_FILE]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An error in the second shard (or an early finish) leaves no file at all: the complete
    /// first shard stays `.partial` until everything is written, and is removed on drop.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn failure_in_a_later_shard_leaves_nothing() {
        use crate::formats::checkpoint::DirOutput;
        let saved = vec![("a".to_string(), DType::F32, vec![8]), ("b".to_string(), DType::F32, vec![8])];
        for early_finish in [false, true] {
            let dir = tmp_dir(if early_finish { "early" } else { "fail" });
            let mut out = DirOutput::new(&dir);
            let mut w = ShardedWriter::new(&mut out, ShardedLayout::new(&saved, 32).unwrap(), &BTreeMap::new());
            w.write_tensor("a", &[1.0; 8]).unwrap();
            if early_finish {
                let e = w.finish().err().unwrap().to_string();
                assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("tensor b") && e.contains("not written"), "{e}");
            } else {
                let e = w.write_tensor("b", &[1.0; 7]).unwrap_err().to_string();
                assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("tensor b"), "{e}");
                drop(w);
            }
            let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(left.is_empty(), "left behind: {left:?}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// Python `json.dumps("é\u{1F600}\x7f\"\\\n", ensure_ascii=True)`.
    #[test]
    fn python_json_escaping() {
        assert_eq!(py_json_str("é\u{1F600}\u{7f}\"\\\n\u{1}"), r#""\u00e9\ud83d\ude00\u007f\"\\\n\u0001""#);
    }
}
