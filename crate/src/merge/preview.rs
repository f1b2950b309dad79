//! Plan a merge from safetensors headers alone, before any weights are downloaded.
//!
//! The page reads only the first `8 + N` bytes of every weight file of a Hub model (the header
//! length, then the JSON header, through two HTTP Range requests) plus the small JSON side files,
//! and hands them here with each file's full size. The same code as a real merge then runs on
//! them: [`Checkpoint::open`] validates every header against the file's full length (a header that
//! lies about its offsets or the file size is refused, naming the file), [`build_plan`] resolves
//! the recipe. What comes out says what the merge will do and what it must fetch: the tensor and
//! parameter counts, the weight files each model must supply in full, the tokenizer files of the
//! tokenizer donor, and the output files.
//!
//! References: the safetensors format (huggingface/safetensors, `docs/source/index.mdx`: 8-byte
//! little-endian header length, JSON header, data); `huggingface_hub`'s `get_safetensors_metadata`
//! (the same two Range reads); mergekit 0.1.5 `mergekit/plan.py` (the plan, via `build_plan`) and
//! `merge.py` `_copy_tokenizer` (which tokenizer files travel).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::formats::checkpoint::{Checkpoint, ModelFiles, INDEX_FILE};
use crate::formats::io::{ByteSource, IoError};
use crate::formats::safetensors::FormatError;
use crate::formats::sharded::{ShardedLayout, DEFAULT_SHARD_SIZE};
use crate::merge::plan::{build_plan, ModelSummary, PlanError, TensorMeta};
use crate::merge::recipe::{Recipe, TokenizerSource};
use crate::merge::run::{save_order, CARD_FILE, RECIPE_FILE, TOKENIZER_FILES};

/// One file of a model as far as it is known: its first bytes (the whole file for small JSON
/// files, the header for a safetensors file, nothing for a file only known to exist) and its full
/// size in bytes.
#[derive(Clone, Debug, Default)]
pub struct KnownFile {
    pub prefix: Vec<u8>,
    pub size: u64,
}

/// One model of the recipe: its name as the recipe writes it, its files by relative path.
#[derive(Clone, Debug, Default)]
pub struct KnownModel {
    pub name: String,
    pub files: BTreeMap<String, KnownFile>,
}

/// Why a preview failed. The messages are the engine's: they name the model, the file, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("model {model}: {source}")]
    Checkpoint { model: String, source: FormatError },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("model {0}: no source was added for it (add it from the Hub, a folder or files)")]
    NoSource(String),
    #[error("{0}")]
    Invalid(String),
}

/// A file of a model that the merge reads in full.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NeededFile {
    pub file: String,
    pub size: u64,
    /// `"weights"` or `"tokenizer"`.
    pub role: &'static str,
}

/// What one model contributes.
#[derive(Clone, Debug, Serialize)]
pub struct ModelNeeds {
    pub name: String,
    /// Tensors of this model in its weight files (all of them, used or not).
    pub tensors: usize,
    /// Input tensors the plan reads from this model.
    pub tensors_read: usize,
    /// The weight files (all of them when the plan reads any tensor of this model: the engine
    /// validates every shard), then the tokenizer files when this model is the tokenizer donor.
    pub files: Vec<NeededFile>,
    /// Sum of `files[].size`: the bytes to download for a remote model.
    pub fetch_bytes: u64,
}

/// The plan in numbers.
#[derive(Clone, Debug, Serialize)]
pub struct PlanPreview {
    pub method: String,
    pub architecture: String,
    /// Output tensors.
    pub tensors: usize,
    /// Output parameters (elements).
    pub parameters: u64,
    /// Tensor bytes of the output.
    pub output_bytes: u64,
    /// Elements of the largest output tensor (a streamed merge's memory scales with it).
    pub largest_tensor: usize,
    pub num_hidden_layers: usize,
    pub config_donor: String,
    pub tokenizer_donor: String,
    pub models: Vec<ModelNeeds>,
    /// Every output file: weights (shards and index), config.json, tokenizer files, the model card, the recipe.
    pub output_files: Vec<String>,
}

/// The known first bytes of a file; reading past them is an error naming the file.
struct PrefixSource {
    name: String,
    prefix: Vec<u8>,
    len: u64,
}

impl ByteSource for PrefixSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| IoError::new(&self.name, format!("read of {} bytes at offset {offset} is past the end ({} bytes): file truncated?", buf.len(), self.len)))?;
        if end > self.prefix.len() as u64 {
            return Err(IoError::new(
                &self.name,
                format!(
                    "bytes {offset}..{end} are needed but only the first {} of {} bytes were fetched (the header): the plan reads headers only",
                    self.prefix.len(),
                    self.len
                ),
            ));
        }
        buf.copy_from_slice(&self.prefix[offset as usize..end as usize]);
        Ok(())
    }
}

/// A [`KnownModel`] as the engine's [`ModelFiles`].
struct PrefixFiles(KnownModel);

impl ModelFiles for PrefixFiles {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn open(&mut self, file: &str) -> Result<Box<dyn ByteSource>, IoError> {
        let display = format!("{}/{}", self.0.name, file);
        let f = self.0.files.get(file).ok_or_else(|| IoError::new(&display, "file not found among the model's files"))?;
        Ok(Box::new(PrefixSource { name: display, prefix: f.prefix.clone(), len: f.size }))
    }
    fn exists(&self, file: &str) -> bool {
        self.0.files.contains_key(file)
    }
    fn list(&self) -> Vec<String> {
        self.0.files.keys().cloned().collect()
    }
}

/// Plan the merge of `recipe` over `models` (every model the recipe references, and the
/// `tokenizer_source` model if it is not an input) from their headers.
/// `out_shard_size`: as the CLI's `--out-shard-size` (`None`: mergekit's default).
pub fn preview_merge(recipe: &Recipe, models: Vec<KnownModel>, out_shard_size: Option<u64>) -> Result<PlanPreview, PreviewError> {
    let mut by_name: HashMap<String, KnownModel> = models.into_iter().map(|m| (m.name.clone(), m)).collect();
    let names = recipe.referenced_models();
    let mut checkpoints = Vec::with_capacity(names.len());
    let mut summaries = Vec::with_capacity(names.len());
    for name in &names {
        let model = by_name.get(name).cloned().ok_or_else(|| PreviewError::NoSource(name.clone()))?;
        let mut ck = Checkpoint::open(Box::new(PrefixFiles(model))).map_err(|source| PreviewError::Checkpoint { model: name.clone(), source })?;
        let config = ck.config().map_err(|source| PreviewError::Checkpoint { model: name.clone(), source })?;
        let tensors: Vec<(String, TensorMeta)> =
            ck.tensor_names().filter_map(|t| ck.info(t).map(|i| (t.to_string(), TensorMeta { dtype: i.dtype, shape: i.shape.clone() }))).collect();
        summaries.push(ModelSummary::new(name.clone(), config, tensors));
        checkpoints.push(ck);
    }
    let plan = build_plan(recipe, &summaries)?;
    if plan.tensors.is_empty() {
        return Err(PreviewError::Invalid("the recipe selects no tensors: nothing to merge".into()));
    }

    // Weight files each model must supply: every weight file of a model the plan reads from (the
    // engine opens and validates every shard an index names, even one whose tensors a slice skips).
    let index_of: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut read: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); names.len()];
    for t in &plan.tensors {
        for input in &t.inputs {
            if let Some(&i) = index_of.get(input.model.as_str()) {
                read[i].insert(input.tensor.as_str());
            }
        }
    }
    let mut needs: Vec<ModelNeeds> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let ck = &checkpoints[i];
        let model = &by_name[name];
        let files: Vec<NeededFile> = if read[i].is_empty() {
            Vec::new()
        } else {
            ck.weight_files().map(|f| NeededFile { file: f.to_string(), size: model.files.get(f).map_or(0, |k| k.size), role: "weights" }).collect()
        };
        needs.push(ModelNeeds { name: name.clone(), tensors: ck.len(), tensors_read: read[i].len(), files, fetch_bytes: 0 });
    }

    // Tokenizer files: run_merge's donor rule (tokenizer_source, else the config donor).
    let tok_donor = match &recipe.tokenizer_source {
        Some(TokenizerSource::Base) => recipe.base_model.clone().ok_or_else(|| PreviewError::Invalid("`tokenizer_source: base` needs a `base_model`".into()))?,
        Some(TokenizerSource::Model(m)) => m.clone(),
        None => plan.config_donor.clone(),
    };
    let donor = by_name.remove(&tok_donor).ok_or_else(|| PreviewError::NoSource(tok_donor.clone()))?;
    let mut tok: Vec<NeededFile> = Vec::new();
    for f in TOKENIZER_FILES.iter().copied().chain((!donor.files.contains_key("tokenizer.json")).then_some("vocab.json")) {
        if let Some(k) = donor.files.get(f) {
            tok.push(NeededFile { file: f.to_string(), size: k.size, role: "tokenizer" });
        }
    }
    let tok_names: Vec<String> = tok.iter().map(|f| f.file.clone()).collect();
    match needs.iter_mut().find(|m| m.name == tok_donor) {
        Some(m) => m.files.extend(tok),
        None => needs.push(ModelNeeds { name: tok_donor.clone(), tensors: 0, tensors_read: 0, files: tok, fetch_bytes: 0 }),
    }
    for m in &mut needs {
        m.fetch_bytes = m.files.iter().map(|f| f.size).sum();
    }

    // Output files, as run_merge lays them out.
    let declared: Vec<_> = save_order(&plan).into_iter().map(|i| &plan.tensors[i]).map(|t| (t.name.clone(), t.out_dtype, t.shape.clone())).collect();
    let layout = ShardedLayout::new(&declared, out_shard_size.unwrap_or(DEFAULT_SHARD_SIZE)).map_err(|e| PreviewError::Invalid(format!("output layout: {e}")))?;
    let mut output_files: Vec<String> = layout.shards.iter().map(|s| s.file.clone()).collect();
    if layout.shards.len() > 1 {
        output_files.push(INDEX_FILE.to_string());
    }
    if summaries[index_of[plan.config_donor.as_str()]].config.is_some() {
        output_files.push("config.json".into());
    }
    output_files.extend(tok_names);
    output_files.push(CARD_FILE.into());
    output_files.push(RECIPE_FILE.into());

    Ok(PlanPreview {
        method: plan.method.info().name.to_string(),
        architecture: plan.architecture.name().to_string(),
        tensors: plan.tensors.len(),
        parameters: plan.total_params(),
        output_bytes: plan.total_bytes(),
        largest_tensor: plan.largest_tensor(),
        num_hidden_layers: plan.num_hidden_layers,
        config_donor: plan.config_donor.clone(),
        tokenizer_donor: tok_donor,
        models: needs,
        output_files,
    })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use std::path::Path;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/merge");

    /// A fixture model as the page sees a Hub repo: JSON files whole, safetensors headers only.
    fn known(dir: &str, name: &str) -> KnownModel {
        let root = Path::new(FIX).join(dir);
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(&root).unwrap() {
            let e = e.unwrap();
            let file = e.file_name().into_string().unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            let size = bytes.len() as u64;
            let prefix = if file.ends_with(".safetensors") {
                let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                bytes[..8 + n].to_vec()
            } else {
                bytes
            };
            files.insert(file, KnownFile { prefix, size });
        }
        KnownModel { name: name.to_string(), files }
    }

    fn size(dir: &str, file: &str) -> u64 {
        std::fs::metadata(Path::new(FIX).join(dir).join(file)).unwrap().len()
    }

    fn recipe(yaml: &str) -> Recipe {
        Recipe::from_yaml(yaml).unwrap()
    }

    #[test]
    fn plans_from_headers_and_matches_the_real_merge() {
        let r = recipe("merge_method: ties\nbase_model: models/base\nmodels:\n  - model: models/ft_a\n    parameters: {weight: 1.0, density: 0.5}\n  - model: models/ft_b_sharded\n    parameters: {weight: 0.7, density: 0.3}\ndtype: float32\n");
        let p = preview_merge(&r, vec![known("models/base", "models/base"), known("models/ft_a", "models/ft_a"), known("models/ft_b_sharded", "models/ft_b_sharded")], None).unwrap();
        // The real merge over the full files.
        let out = std::env::temp_dir().join(format!("crucible-preview-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut open = |n: &str| -> Result<Box<dyn ModelFiles>, IoError> { Ok(Box::new(crate::formats::checkpoint::DirFiles::new(Path::new(FIX).join(n)))) };
        let mut opts = crate::merge::run::MergeOptions { seed: 0, out_shard_size: None, progress: None, cancelled: None, observer: None };
        let report = crate::merge::run::run_merge(&r, &mut open, &mut crate::formats::checkpoint::DirOutput::new(&out), &mut opts).unwrap();
        assert_eq!(p.tensors, report.tensors);
        assert_eq!(p.parameters, report.parameters);
        let mut written: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        written.sort();
        let mut planned = p.output_files.clone();
        planned.sort();
        assert_eq!(planned, written);
        std::fs::remove_dir_all(&out).unwrap();

        // 4 layers × 9 tensors + embed, norm, lm_head.
        assert_eq!(p.tensors, 39);
        assert_eq!(p.method, "ties");
        assert_eq!(p.tokenizer_donor, "models/base");
        let base = &p.models.iter().find(|m| m.name == "models/base").unwrap();
        assert_eq!(base.files, vec![
            NeededFile { file: "model.safetensors".into(), size: size("models/base", "model.safetensors"), role: "weights" },
            NeededFile { file: "tokenizer_config.json".into(), size: size("models/base", "tokenizer_config.json"), role: "tokenizer" },
            NeededFile { file: "tokenizer.json".into(), size: size("models/base", "tokenizer.json"), role: "tokenizer" },
        ]);
        let sharded = &p.models.iter().find(|m| m.name == "models/ft_b_sharded").unwrap();
        let shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
        assert_eq!(sharded.files.iter().map(|f| f.file.as_str()).collect::<Vec<_>>(), shards);
        assert_eq!(sharded.fetch_bytes, shards.iter().map(|f| size("models/ft_b_sharded", f)).sum::<u64>());
        assert_eq!(sharded.tensors_read, 39);
    }

    #[test]
    fn a_slice_plans_fewer_layers_and_counts_every_shard() {
        let r = recipe("merge_method: passthrough\nslices:\n  - sources:\n      - model: models/ft_b_sharded\n        layer_range: [0, 1]\ndtype: float32\n");
        let p = preview_merge(&r, vec![known("models/ft_b_sharded", "models/ft_b_sharded")], None).unwrap();
        assert_eq!(p.num_hidden_layers, 1);
        assert_eq!(p.tensors, 12); // embed + 9 for one layer + norm + lm_head
        let m = &p.models[0];
        assert_eq!(m.tensors, 39);
        assert_eq!(m.tensors_read, 12);
        let shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
        let want: u64 = shards.iter().map(|f| size("models/ft_b_sharded", f)).sum::<u64>() + size("models/ft_b_sharded", "tokenizer.json") + size("models/ft_b_sharded", "tokenizer_config.json");
        assert_eq!(m.fetch_bytes, want);
    }

    #[test]
    fn a_lying_header_is_refused_naming_the_file() {
        // The header says the data is 4 bytes longer than the file the server reports.
        let mut m = known("models/base", "hub/base");
        let f = m.files.get_mut("model.safetensors").unwrap();
        f.size -= 4;
        let r = recipe("merge_method: linear\nmodels:\n  - model: hub/base\n    parameters: {weight: 1.0}\n");
        let e = preview_merge(&r, vec![m], None).unwrap_err().to_string();
        assert!(e.contains("hub/base/model.safetensors"), "{e}");
        // A header prefix shorter than the header length says what is missing.
        let mut m = known("models/base", "hub/base");
        m.files.get_mut("model.safetensors").unwrap().prefix.truncate(100);
        let e = preview_merge(&r, vec![m], None).unwrap_err().to_string();
        assert!(e.contains("hub/base/model.safetensors") && e.contains("only the first 100"), "{e}");
    }

    #[test]
    fn missing_sources_and_tensors_are_named() {
        let r = recipe("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1.0}\n  - model: b\n    parameters: {weight: 1.0}\n");
        let e = preview_merge(&r, vec![known("models/base", "a")], None).unwrap_err().to_string();
        assert!(e.contains("model b") && e.contains("no source"), "{e}");
        let mut b = known("models/ft_b_sharded", "b");
        b.files.remove("model-00002-of-00002.safetensors");
        let e = preview_merge(&r, vec![known("models/base", "a"), b], None).unwrap_err().to_string();
        assert!(e.contains("model b") && e.contains("model-00002-of-00002.safetensors") && e.contains("missing"), "{e}");
    }
}
