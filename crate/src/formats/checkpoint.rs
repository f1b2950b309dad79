//! One model's checkpoint: its tensors across one or several safetensors files, read one tensor
//! at a time, plus its small side files (config.json, tokenizer files).
//!
//! Which files hold the weights — the same precedence as mergekit 0.1.5
//! (`mergekit/io/lazy_tensor_loader.py`, `ShardedTensorIndex.from_disk`), extended to a lone file:
//! 1. `model.safetensors.index.json`: the shards named by its `weight_map`, in the map's order;
//! 2. `model.safetensors`;
//! 3. otherwise exactly one `*.safetensors` file in the listing (several without an index is an
//!    error naming them; `pytorch_model.bin` is an error: pickles are not read).
//!
//! A model is reached through [`ModelFiles`] (a native directory here, a browser `File` list in
//! `wasm.rs`), output goes to an [`OutputDir`].

use std::collections::HashMap;

use crate::formats::io::{ByteSink, ByteSource, IoError};
use crate::formats::safetensors::{FormatError, TensorInfo, read_header, read_tensor, read_tensor_bytes, read_tensor_range};

/// The index of a sharded safetensors checkpoint (Hugging Face and mergekit naming).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";

/// The files of one model (a directory, a set of browser `File`s, later a Hub repository).
/// File names are relative to the model, `/`-separated.
pub trait ModelFiles {
    /// The model's name for messages (its path or reference).
    fn name(&self) -> &str;
    fn open(&mut self, file: &str) -> Result<Box<dyn ByteSource>, IoError>;
    fn exists(&self, file: &str) -> bool;
    /// All file names, when the implementation can list them (used to find a lone
    /// `*.safetensors` file that is not called `model.safetensors`). Default: none.
    fn list(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A model held in memory: file name → bytes (an upload the page already read, tests).
#[derive(Clone, Debug, Default)]
pub struct MemFiles {
    pub name: String,
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

impl MemFiles {
    pub fn new(name: impl Into<String>, files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        MemFiles { name: name.into(), files: files.into_iter().collect() }
    }
}

impl ModelFiles for MemFiles {
    fn name(&self) -> &str {
        &self.name
    }
    fn open(&mut self, file: &str) -> Result<Box<dyn ByteSource>, IoError> {
        let bytes = self.files.get(file).ok_or_else(|| IoError::new(file, format!("no such file in model {}", self.name)))?.clone();
        Ok(Box::new(crate::formats::io::MemSource { name: file.to_string(), bytes }))
    }
    fn exists(&self, file: &str) -> bool {
        self.files.contains_key(file)
    }
    fn list(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }
}

/// Where the output files of a merge go (a native directory; in the browser, downloads).
pub trait OutputDir {
    /// Start writing `file`. The sink leaves nothing that looks complete until `finish`.
    fn create(&mut self, file: &str) -> Result<Box<dyn ByteSink>, IoError>;
}

/// A borrowed output directory is one (the CLI lends its `DirOutput` to a merge that owns its
/// writer).
impl<T: OutputDir + ?Sized> OutputDir for &mut T {
    fn create(&mut self, file: &str) -> Result<Box<dyn ByteSink>, IoError> {
        (**self).create(file)
    }
}

impl<T: OutputDir + ?Sized> OutputDir for Box<T> {
    fn create(&mut self, file: &str) -> Result<Box<dyn ByteSink>, IoError> {
        (**self).create(file)
    }
}

/// One safetensors file of a checkpoint, kept open.
struct Shard {
    file: String,
    src: Box<dyn ByteSource>,
}

/// One model's tensors, read one at a time.
pub struct Checkpoint {
    files: Box<dyn ModelFiles>,
    shards: Vec<Shard>,
    /// Tensor names in index order (sharded) or file order (single file).
    names: Vec<String>,
    /// name → (shard index, tensor)
    tensors: HashMap<String, (usize, TensorInfo)>,
}

fn in_model(model: &str, e: impl Into<FormatError>) -> FormatError {
    FormatError::InModel { model: model.to_string(), source: Box::new(e.into()) }
}

fn model_err(model: &str, message: impl Into<String>) -> FormatError {
    FormatError::Model { model: model.to_string(), message: message.into() }
}

impl Checkpoint {
    /// Find the weights (see the module docs), read and validate every shard's header.
    pub fn open(mut files: Box<dyn ModelFiles>) -> Result<Checkpoint, FormatError> {
        let model = files.name().to_string();
        let mut shards: Vec<Shard> = Vec::new();
        let mut names = Vec::new();
        let mut tensors = HashMap::new();

        let open_shard = |files: &mut Box<dyn ModelFiles>, file: &str, shards: &mut Vec<Shard>| -> Result<(usize, Vec<TensorInfo>), FormatError> {
            let mut src = files.open(file).map_err(|e| in_model(&model, e))?;
            let header = read_header(src.as_mut()).map_err(|e| in_model(&model, e))?;
            shards.push(Shard { file: file.to_string(), src });
            Ok((shards.len() - 1, header.tensors))
        };

        if files.exists(INDEX_FILE) {
            let bytes = read_all(files.as_mut(), INDEX_FILE).map_err(|e| in_model(&model, e))?;
            let weight_map = parse_index(&bytes).map_err(|message| in_model(&model, FormatError::Json { file: INDEX_FILE.to_string(), message }))?;
            if weight_map.is_empty() {
                return Err(in_model(&model, FormatError::Json { file: INDEX_FILE.to_string(), message: "weight_map is empty".into() }));
            }
            let mut by_file: HashMap<String, (usize, HashMap<String, TensorInfo>)> = HashMap::new();
            for (tensor, file) in weight_map {
                if !by_file.contains_key(&file) {
                    if !files.exists(&file) {
                        return Err(model_err(&model, format!("{INDEX_FILE} maps tensor {tensor} to {file}, which is missing")));
                    }
                    let (idx, infos) = open_shard(&mut files, &file, &mut shards)?;
                    by_file.insert(file.clone(), (idx, infos.into_iter().map(|t| (t.name.clone(), t)).collect()));
                }
                let (idx, infos) = by_file.get_mut(&file).expect("inserted above");
                let info = infos.remove(&tensor).ok_or_else(|| model_err(&model, format!("{INDEX_FILE} maps tensor {tensor} to {file}, which has no such tensor")))?;
                names.push(tensor.clone());
                tensors.insert(tensor, (*idx, info));
            }
        } else {
            let file = if files.exists(SINGLE_FILE) {
                SINGLE_FILE.to_string()
            } else {
                let listed = files.list();
                let mut st: Vec<String> = listed.iter().filter(|f| f.ends_with(".safetensors")).cloned().collect();
                st.sort();
                match st.len() {
                    1 => st.pop().expect("one element"),
                    0 if listed.iter().any(|f| f.ends_with(".bin") || f.ends_with(".pt") || f.ends_with(".pth")) => {
                        return Err(model_err(&model, "has only PyTorch pickle weights (.bin/.pt); convert them to safetensors first"));
                    }
                    0 => return Err(model_err(&model, format!("no weights found: expected {SINGLE_FILE}, {INDEX_FILE} or one *.safetensors file"))),
                    _ => return Err(model_err(&model, format!("several .safetensors files ({}) and no {INDEX_FILE} to say how they fit together", st.join(", ")))),
                }
            };
            let (idx, infos) = open_shard(&mut files, &file, &mut shards)?;
            for info in infos {
                names.push(info.name.clone());
                tensors.insert(info.name.clone(), (idx, info));
            }
        }
        Ok(Checkpoint { files, shards, names, tensors })
    }

    /// The model's name (as its `ModelFiles` gives it).
    pub fn name(&self) -> &str {
        self.files.name()
    }

    /// The safetensors files holding the weights, in the order they were opened.
    pub fn weight_files(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| s.file.as_str())
    }

    /// Tensor names, in index order (sharded) or file order (one file).
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|s| s.as_str())
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|(_, t)| t)
    }

    /// The file holding tensor `name`.
    pub fn file_of(&self, name: &str) -> Option<&str> {
        self.tensors.get(name).map(|(i, _)| self.shards[*i].file.as_str())
    }

    fn locate(&mut self, name: &str) -> Result<(&mut Shard, &TensorInfo), FormatError> {
        let model = self.files.name();
        let (idx, info) = self.tensors.get(name).ok_or_else(|| model_err(model, format!("has no tensor {name} ({} tensors in {})", self.names.len(), self.shards.iter().map(|s| s.file.as_str()).collect::<Vec<_>>().join(", "))))?;
        Ok((&mut self.shards[*idx], info))
    }

    /// Read tensor `name` widened to f32 into `out` (cleared first).
    pub fn read(&mut self, name: &str, out: &mut Vec<f32>) -> Result<(), FormatError> {
        let model = self.files.name().to_string();
        let (shard, info) = self.locate(name)?;
        read_tensor(shard.src.as_mut(), info, out).map_err(|e| in_model(&model, e))
    }

    /// Read elements `start .. start + count` of tensor `name` (flattened) widened to f32 into
    /// `out` (cleared first): one element chunk of a large tensor.
    pub fn read_range(&mut self, name: &str, start: usize, count: usize, out: &mut Vec<f32>) -> Result<(), FormatError> {
        let model = self.files.name().to_string();
        let (shard, info) = self.locate(name)?;
        read_tensor_range(shard.src.as_mut(), info, start, count, out).map_err(|e| in_model(&model, e))
    }

    /// Read tensor `name`'s raw bytes (in its file dtype) into `out` (cleared first).
    pub fn read_bytes(&mut self, name: &str, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let model = self.files.name().to_string();
        let (shard, info) = self.locate(name)?;
        read_tensor_bytes(shard.src.as_mut(), info, out).map_err(|e| in_model(&model, e))
    }

    /// `config.json` parsed, if the model has one.
    pub fn config(&mut self) -> Result<Option<serde_json::Value>, FormatError> {
        let model = self.files.name().to_string();
        let Some(bytes) = self.read_file("config.json")? else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| in_model(&model, FormatError::Json { file: "config.json".into(), message: format!("not valid JSON ({e})") }))
    }

    /// A small side file's bytes (tokenizer.json, tokenizer_config.json, ...), if present.
    pub fn read_file(&mut self, file: &str) -> Result<Option<Vec<u8>>, FormatError> {
        if !self.files.exists(file) {
            return Ok(None);
        }
        let model = self.files.name().to_string();
        read_all(self.files.as_mut(), file).map(Some).map_err(|e| in_model(&model, e))
    }
}

fn read_all(files: &mut dyn ModelFiles, file: &str) -> Result<Vec<u8>, IoError> {
    let mut src = files.open(file)?;
    let mut buf = vec![0u8; src.len() as usize];
    src.read_at(0, &mut buf)?;
    Ok(buf)
}

/// `{"metadata": {...}, "weight_map": {tensor: file}}` → (tensor, file) in the map's order.
fn parse_index(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON ({e})"))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or("no \"weight_map\" object")?;
    map.iter()
        .map(|(t, f)| {
            let f = f.as_str().ok_or_else(|| format!("weight_map entry for tensor {t} is not a file name: {f}"))?;
            check_relative(f).map_err(|m| format!("weight_map entry for tensor {t}: {m}"))?;
            Ok((t.clone(), f.to_string()))
        })
        .collect()
}

/// A file name must stay inside the model: no absolute paths, no `..`.
pub fn check_relative(file: &str) -> Result<(), String> {
    if file.is_empty() || file.starts_with('/') || file.starts_with('\\') || file.contains(':') || file.split(['/', '\\']).any(|c| c == "..") {
        return Err(format!("file name {file:?} is not a plain relative path"));
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{DirFiles, DirOutput};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use crate::formats::io::{FileSink, FileSource};
    use std::path::{Path, PathBuf};

    /// A model stored as a native directory.
    pub struct DirFiles {
        root: PathBuf,
        name: String,
    }

    impl DirFiles {
        pub fn new(path: impl AsRef<Path>) -> Self {
            let root = path.as_ref().to_path_buf();
            DirFiles { name: root.display().to_string(), root }
        }
    }

    impl ModelFiles for DirFiles {
        fn name(&self) -> &str {
            &self.name
        }
        fn open(&mut self, file: &str) -> Result<Box<dyn ByteSource>, IoError> {
            check_relative(file).map_err(|m| IoError::new(&self.name, m))?;
            Ok(Box::new(FileSource::open(&self.root.join(file))?))
        }
        fn exists(&self, file: &str) -> bool {
            check_relative(file).is_ok() && self.root.join(file).is_file()
        }
        /// Top-level files (checkpoints are flat).
        fn list(&self) -> Vec<String> {
            let Ok(rd) = std::fs::read_dir(&self.root) else { return Vec::new() };
            let mut v: Vec<String> = rd.filter_map(|e| e.ok()).filter(|e| e.path().is_file()).filter_map(|e| e.file_name().into_string().ok()).collect();
            v.sort();
            v
        }
    }

    /// A native output directory, created (with its parents) on the first file.
    pub struct DirOutput {
        root: PathBuf,
    }

    impl DirOutput {
        pub fn new(path: impl AsRef<Path>) -> Self {
            DirOutput { root: path.as_ref().to_path_buf() }
        }
    }

    impl OutputDir for DirOutput {
        fn create(&mut self, file: &str) -> Result<Box<dyn ByteSink>, IoError> {
            check_relative(file).map_err(|m| IoError::new(self.root.display().to_string(), m))?;
            let path = self.root.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| IoError::new(parent.display().to_string(), e))?;
            }
            Ok(Box::new(FileSink::create(&path)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::io::MemSink;
    use crate::formats::safetensors::Writer;
    use crate::tensor::DType;
    use std::collections::BTreeMap;

    fn st(tensors: &[(&str, DType, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let decl: Vec<_> = tensors.iter().map(|(n, d, s, _)| (n.to_string(), *d, s.clone())).collect();
        let mut w = Writer::new(MemSink::default(), &decl, &BTreeMap::new()).unwrap();
        for (n, _, _, v) in tensors {
            w.write_tensor(n, v).unwrap();
        }
        w.finish().unwrap().bytes
    }

    fn model(files: &[(&str, Vec<u8>)]) -> Box<dyn ModelFiles> {
        Box::new(MemFiles { name: "m1".into(), files: files.iter().map(|(n, b)| (n.to_string(), b.clone())).collect() })
    }

    #[test]
    fn sharded_read_via_index() {
        let s1 = st(&[("a", DType::F32, vec![2], vec![1.0, 2.0]), ("b", DType::BF16, vec![1], vec![3.0])]);
        let s2 = st(&[("c", DType::F16, vec![2, 1], vec![4.0, 5.0])]);
        let index = br#"{"metadata": {"total_size": 14}, "weight_map": {"c": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}"#;
        let mut ck = Checkpoint::open(model(&[
            ("model-00001-of-00002.safetensors", s1),
            ("model-00002-of-00002.safetensors", s2),
            (INDEX_FILE, index.to_vec()),
            ("config.json", br#"{"num_hidden_layers": 2}"#.to_vec()),
        ]))
        .unwrap();
        assert_eq!(ck.tensor_names().collect::<Vec<_>>(), ["c", "a", "b"]);
        assert_eq!(ck.file_of("a"), Some("model-00001-of-00002.safetensors"));
        assert_eq!(ck.info("c").unwrap().shape, [2, 1]);
        let mut out = Vec::new();
        ck.read("c", &mut out).unwrap();
        assert_eq!(out, [4.0, 5.0]);
        ck.read("a", &mut out).unwrap();
        assert_eq!(out, [1.0, 2.0]);
        ck.read("b", &mut out).unwrap();
        assert_eq!(out, [3.0]);
        ck.read_range("c", 1, 1, &mut out).unwrap();
        assert_eq!(out, [5.0]);
        let e = ck.read_range("c", 1, 2, &mut out).unwrap_err().to_string();
        assert!(e.contains("model m1") && e.contains("tensor c") && e.contains("the tensor has 2"), "{e}");
        let e = ck.read("zz", &mut out).unwrap_err().to_string();
        assert!(e.contains("model m1") && e.contains("no tensor zz"), "{e}");
        assert_eq!(ck.config().unwrap().unwrap()["num_hidden_layers"], 2);
        assert_eq!(ck.read_file("tokenizer.json").unwrap(), None);
    }

    #[test]
    fn index_errors_name_model_file_and_tensor() {
        let s1 = st(&[("a", DType::F32, vec![1], vec![1.0])]);
        let idx = |m: &str| format!(r#"{{"weight_map": {m}}}"#).into_bytes();
        let e = Checkpoint::open(model(&[("s1.safetensors", s1.clone()), (INDEX_FILE, idx(r#"{"a": "s1.safetensors", "x": "s1.safetensors"}"#))])).err().unwrap().to_string();
        assert!(e.contains("model m1") && e.contains("tensor x") && e.contains("s1.safetensors"), "{e}");
        let e = Checkpoint::open(model(&[(INDEX_FILE, idx(r#"{"a": "s2.safetensors"}"#))])).err().unwrap().to_string();
        assert!(e.contains("model m1") && e.contains("tensor a") && e.contains("s2.safetensors") && e.contains("missing"), "{e}");
        let e = Checkpoint::open(model(&[(INDEX_FILE, idx(r#"{"a": "../etc/passwd"}"#))])).err().unwrap().to_string();
        assert!(e.contains(INDEX_FILE) && e.contains("not a plain relative path"), "{e}");
        let e = Checkpoint::open(model(&[(INDEX_FILE, b"{not json".to_vec())])).err().unwrap().to_string();
        assert!(e.contains("model m1") && e.contains(INDEX_FILE) && e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn finds_single_and_lone_files() {
        let s = st(&[("w", DType::F32, vec![1], vec![9.0])]);
        let mut ck = Checkpoint::open(model(&[("model.safetensors", s.clone()), ("other.safetensors", s.clone())])).unwrap();
        assert_eq!(ck.weight_files().collect::<Vec<_>>(), ["model.safetensors"]);
        let mut ck2 = Checkpoint::open(model(&[("smol.safetensors", s.clone()), ("config.json", b"{bad".to_vec())])).unwrap();
        assert_eq!(ck2.weight_files().collect::<Vec<_>>(), ["smol.safetensors"]);
        let mut out = Vec::new();
        ck.read("w", &mut out).unwrap();
        ck2.read("w", &mut out).unwrap();
        assert_eq!(out, [9.0]);
        let e = ck2.config().unwrap_err().to_string();
        assert!(e.contains("model m1") && e.contains("config.json"), "{e}");
        let e = Checkpoint::open(model(&[("a.safetensors", s.clone()), ("b.safetensors", s)])).err().unwrap().to_string();
        assert!(e.contains("a.safetensors, b.safetensors") && e.contains(INDEX_FILE), "{e}");
        let e = Checkpoint::open(model(&[("pytorch_model.bin", vec![0])])).err().unwrap().to_string();
        assert!(e.contains("pickle"), "{e}");
        let e = Checkpoint::open(model(&[("config.json", vec![])])).err().unwrap().to_string();
        assert!(e.contains("model m1") && e.contains("no weights found"), "{e}");
    }

    #[test]
    fn bad_shard_error_names_model_and_file() {
        let mut s = st(&[("w", DType::F32, vec![4], vec![1.0; 4])]);
        s.truncate(s.len() - 3);
        let e = Checkpoint::open(model(&[("model.safetensors", s)])).err().unwrap().to_string();
        assert!(e.contains("model m1") && e.contains("model.safetensors") && e.contains("tensor w") && e.contains("3 bytes missing"), "{e}");
    }
}
