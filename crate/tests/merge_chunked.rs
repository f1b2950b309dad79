#![cfg(not(target_arch = "wasm32"))]
//! Element-chunked merging gives the same bytes as whole-tensor merging.
//!
//! `MergeJob` merges a tensor of an elementwise method (`merge::run::elementwise`: linear,
//! task_arithmetic, nearswap, passthrough, and the task-vector family when nothing is sparsified)
//! in element chunks when it is larger than the chunk size, and so does it for the multi-pass
//! methods (`merge::run::multipass`: slerp; ties, breadcrumbs, breadcrumbs_ties when sparsified:
//! whole-tensor norms, dots and magnitude ranks in passes over the chunks first); everything else
//! stays whole. Here every
//! recipe of the mergekit golden fixtures (`tests/fixtures/merge`, made by
//! `scripts/fixtures/make_merge_fixtures.py`) plus a dense TIES recipe runs twice: through
//! `run_merge` (default chunk of 4 Mi elements: these tiny tensors are never chunked) and through
//! `MergeJob` driven step by step with chunks of 1, 7 and 100 elements. Every output file must be
//! byte-identical, the elementwise recipes must really have been chunked, and the observer must
//! see each tensor's chunks in order, covering it exactly once.
//! Reference for the element-wise claim: `shared/merge-methods.md` §3.1, §4, §6.2, §6.4.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crucible::formats::{DirFiles, DirOutput, IoError, ModelFiles};
use crucible::merge::MergeInputs;
use crucible::merge::plan::PlannedTensor;
use crucible::merge::recipe::Recipe;
use crucible::merge::rng::SeededRandomness;
use crucible::merge::run::{MergeJob, MergeObserver, MergeOptions, Step, elementwise, multipass, run_merge, streams};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/merge")
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())).collect()
}

fn opener(fix: &Path) -> impl FnMut(&str) -> Result<Box<dyn ModelFiles>, IoError> + '_ {
    move |p: &str| Ok(Box::new(DirFiles::new(fix.join(p))) as Box<dyn ModelFiles>)
}

/// Checks the chunk contract: offsets of a tensor's `observe` calls are consecutive from 0 and
/// cover its elements; `tensor_done` follows the last.
#[derive(Default)]
struct Coverage {
    current: Option<(String, usize)>,
    chunked_calls: usize,
    problems: Vec<String>,
}

impl MergeObserver for Coverage {
    fn observe(&mut self, t: &PlannedTensor, inputs: &MergeInputs, merged: &[f32], offset: usize) {
        let covered = match &self.current {
            Some((name, n)) if name == &t.name => *n,
            Some((name, _)) => {
                self.problems.push(format!("{}: observed before {name} was done", t.name));
                0
            }
            None => 0,
        };
        if offset != covered {
            self.problems.push(format!("{}: chunk at {offset}, expected {covered}", t.name));
        }
        if inputs.models.iter().any(|m| m.data.len() != merged.len()) || inputs.shape.iter().product::<usize>() != merged.len() {
            self.problems.push(format!("{}: chunk inputs and merged lengths differ", t.name));
        }
        if merged.len() != t.numel() {
            self.chunked_calls += 1;
        }
        self.current = Some((t.name.clone(), covered + merged.len()));
    }
    fn tensor_done(&mut self, t: &PlannedTensor) {
        match self.current.take() {
            Some((name, n)) if name == t.name && n == t.numel() => {}
            other => self.problems.push(format!("{}: done after {other:?} of {} elements", t.name, t.numel())),
        }
    }
}

fn recipes() -> Vec<(String, String)> {
    let fix = fixture_dir();
    let mut v: Vec<(String, String)> = std::fs::read_dir(fix.join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    // TIES with nothing trimmed (density 1): sign election and the disjoint mean are per element.
    // Multi-pass streaming: rescale (a third pass), bf16 task vectors (many equal magnitudes: the
    // rank ties are broken by index across chunks), a model trimmed to nothing, breadcrumbs with
    // rescale, slerp in bf16.
    let gta = |method: &str, dtype: &str, sfx: &str, a: &str, b: &str, global: &str| {
        format!(
            "merge_method: {method}\nbase_model: models/base{sfx}\nmodels:\n  - model: models/ft_a{sfx}\n    parameters: {{{a}}}\n  - model: models/ft_b{sfx}\n    parameters: {{{b}}}\nparameters: {{{global}}}\ndtype: {dtype}\n"
        )
    };
    v.push(("ties_rescale_bf16".into(), gta("ties", "bfloat16", "_bf16", "weight: 1.0, density: 0.4", "weight: 0.6, density: 0.6", "rescale: true")));
    v.push(("ties_density_0_lambda".into(), gta("ties", "float32", "", "weight: 1.0, density: 0.0", "weight: 0.6, density: 0.25", "lambda: 0.8, normalize: false")));
    v.push(("breadcrumbs_ties_rescale_bf16".into(), gta("breadcrumbs_ties", "bfloat16", "_bf16", "weight: 1.0, density: 0.5, gamma: 0.1", "weight: 0.5, density: 0.9, gamma: 0.0", "rescale: true")));
    v.push(("slerp_bf16".into(), "merge_method: slerp\nbase_model: models/base_bf16\nmodels:\n  - model: models/ft_a_bf16\nparameters: {t: 0.6}\ndtype: bfloat16\n".into()));
    v.push((
        "ties_density_1".into(),
        "merge_method: ties\nbase_model: models/base\nmodels:\n  - model: models/ft_a\n    parameters: {weight: 1.0, density: 1.0}\n  - model: models/ft_b\n    parameters: {weight: -0.7}\ndtype: bfloat16\n".into(),
    ));
    v
}

#[test]
fn chunked_merges_write_the_same_bytes_as_whole_ones() {
    let fix = fixture_dir();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("merge_chunked_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut fails = Vec::new();
    let mut chunked_recipes = 0;
    let mut multipass_recipes = Vec::new();
    for (name, yaml) in recipes() {
        let recipe = Recipe::from_yaml(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shard = if name == "linear_sharded_out" { Some(20000) } else { None };
        let whole_dir = root.join(format!("{name}-whole"));
        let mut opts = MergeOptions { seed: 42, out_shard_size: shard, progress: None, cancelled: None, observer: None };
        run_merge(&recipe, &mut opener(&fix), &mut DirOutput::new(&whole_dir), &mut opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let whole = files(&whole_dir);
        for chunk in [1usize, 7, 100] {
            let dir = root.join(format!("{name}-chunk{chunk}"));
            let mut job = MergeJob::new(&recipe, &mut opener(&fix), Box::new(DirOutput::new(&dir)), shard).unwrap();
            job.set_chunk_elements(chunk);
            let expect_chunks = job.plan().tensors.iter().any(|t| streams(t) && t.numel() > chunk);
            let expect_passes = job.plan().tensors.iter().any(|t| multipass(t) && t.numel() > chunk);
            let mut rng = SeededRandomness::new(42);
            let mut cov = Coverage::default();
            let (mut chunk_steps, mut tensor_steps) = (0, 0);
            loop {
                match job.step(&mut rng, Some(&mut cov)).unwrap_or_else(|e| panic!("{name} chunk {chunk}: {e}")) {
                    Step::Chunk(p) => {
                        chunk_steps += 1;
                        assert!(p.done_bytes < p.total_bytes, "{name}: {p:?}");
                    }
                    Step::Tensor(_) => tensor_steps += 1,
                    Step::Done(r) => {
                        assert_eq!(r.tensors, tensor_steps, "{name}");
                        break;
                    }
                }
            }
            fails.extend(cov.problems.iter().map(|p| format!("{name} chunk {chunk}: {p}")));
            if expect_chunks != (chunk_steps > 0) || expect_chunks != (cov.chunked_calls > 0) {
                fails.push(format!("{name} chunk {chunk}: elementwise tensors {expect_chunks}, chunk steps {chunk_steps}, chunked observes {}", cov.chunked_calls));
            }
            if chunk == 7 && expect_chunks {
                chunked_recipes += 1;
            }
            if chunk == 7 && expect_passes {
                multipass_recipes.push(name.clone());
            }
            let got = files(&dir);
            if got.keys().collect::<Vec<_>>() != whole.keys().collect::<Vec<_>>() {
                fails.push(format!("{name} chunk {chunk}: files {:?} vs {:?}", got.keys().collect::<Vec<_>>(), whole.keys().collect::<Vec<_>>()));
            }
            for (f, bytes) in &whole {
                if got.get(f) != Some(bytes) {
                    fails.push(format!("{name} chunk {chunk}: {f} differs from the whole-tensor merge"));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    // linear ×9, task_arithmetic ×4, nearswap, passthrough, ties_density_1 at least.
    assert!(chunked_recipes >= 15, "only {chunked_recipes} recipes were chunked");
    // slerp ×5 (+ bf16), ties ×3 (+ 2), breadcrumbs, breadcrumbs_ties (+ 1) stream in passes.
    for want in ["slerp", "slerp_gradient", "slerp_out_f16", "slerp_slices", "slerp_tied", "slerp_bf16", "ties", "ties_gradient", "ties_sharded_in", "ties_rescale_bf16", "ties_density_0_lambda", "breadcrumbs", "breadcrumbs_ties", "breadcrumbs_ties_rescale_bf16"] {
        assert!(multipass_recipes.iter().any(|r| r == want), "{want} did not stream in passes: {multipass_recipes:?}");
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Which methods stream in chunks: decided per tensor from the method and its densities.
#[test]
fn elementwise_follows_the_method_and_its_densities() {
    let fix = fixture_dir();
    let plan_of = |yaml: &str| {
        let recipe = Recipe::from_yaml(yaml).unwrap();
        let job = MergeJob::new(&recipe, &mut opener(&fix), Box::new(DirOutput::new(std::env::temp_dir().join("crucible-never-written"))), None).unwrap();
        job.plan().tensors.iter().map(elementwise).collect::<Vec<bool>>()
    };
    let two = |method: &str, params: &str| {
        format!("merge_method: {method}\nbase_model: models/base\nmodels:\n  - model: models/ft_a\n    parameters: {{weight: 1.0{params}}}\n  - model: models/ft_b\n    parameters: {{weight: 0.5}}\n")
    };
    for (yaml, want) in [
        (two("task_arithmetic", ""), true),
        (two("ties", ""), true),
        (two("ties", ", density: 1.0"), true),
        (two("ties", ", density: 0.5"), false),
        (two("dare_linear", ", density: 0.9"), false),
        (two("dare_ties", ", density: 1"), true),
        (two("breadcrumbs", ", density: 0.9"), false),
        (two("della_linear", ", density: 0.5, epsilon: 0.1"), false),
        (two("model_stock", ""), false),
        (two("sce", ""), false),
        ("merge_method: slerp\nbase_model: models/base\nmodels:\n  - model: models/ft_a\nparameters: {t: 0.5}\n".into(), false),
        ("merge_method: nearswap\nbase_model: models/base\nmodels:\n  - model: models/ft_a\nparameters: {t: 0.5}\n".into(), true),
    ] {
        let got = plan_of(&yaml);
        assert!(!got.is_empty());
        assert!(got.iter().all(|&g| g == want), "{yaml}: {got:?}");
    }
    assert!(!std::env::temp_dir().join("crucible-never-written").join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join("crucible-never-written"));
}
