#![cfg(not(target_arch = "wasm32"))]
//! "What the merge did" (`crucible::merge::stats`) against an independent reference, and its
//! properties.
//!
//! Reference: `tests/fixtures/merge/stats_reference.json`, made by
//! `scripts/fixtures/make_stats_fixture.py` (NumPy in f64 for the task-vector statistics;
//! mergekit 0.1.5's own sparsifiers, sign election and SLERP/NuSLERP cosines in torch f32; the
//! merged tensors are mergekit's outputs in `expected/NAME/`) for seven golden fixture recipes.
//! Here each recipe runs through `run_merge` with a `StatsCollector` as observer; every row must
//! match within 1e-6 relative (counts-based fractions exactly up to f64 rounding).
//! Papers: TIES-Merging (arXiv:2306.01708), Task Arithmetic (arXiv:2212.04089).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crucible::formats::{DirFiles, DirOutput, IoError, ModelFiles};
use crucible::merge::methods::{Method, merge_tensor_report};
use crucible::merge::plan::{PlannedInput, PlannedTensor};
use crucible::merge::recipe::Recipe;
use crucible::merge::rng::SeededRandomness;
use crucible::merge::run::{MergeObserver, MergeOptions, run_merge};
use crucible::merge::stats::{StatsCollector, StatsRow, TensorKind};
use crucible::merge::{MergeInputs, ModelTensor, Params, Scalar};
use crucible::tensor::DType;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/merge")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("crucible-merge-stats-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Run a fixture recipe with a StatsCollector; returns its rows.
fn merge_with_stats(recipe_rel: &str, name: &str) -> Vec<StatsRow> {
    let fix = fixture_dir();
    let yaml = std::fs::read_to_string(fix.join(recipe_rel)).unwrap();
    let recipe = Recipe::from_yaml(&yaml).unwrap();
    let out_dir = scratch(name);
    let mut out = DirOutput::new(&out_dir);
    let mut open_model = |path: &str| -> Result<Box<dyn ModelFiles>, IoError> { Ok(Box::new(DirFiles::new(fix.join(path)))) };
    let mut stats = StatsCollector::new();
    {
        let mut opts = MergeOptions { seed: 42, out_shard_size: None, progress: None, cancelled: None, observer: Some(&mut stats) };
        run_merge(&recipe, &mut open_model, &mut out, &mut opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    stats.into_rows()
}

fn close(got: Option<f64>, want: Option<f64>, what: &str, fails: &mut Vec<String>) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            if (g - w).abs() > 1e-6 * w.abs() + 1e-12 {
                fails.push(format!("{what}: ours {g}, reference {w} (rel {:.2e})", (g - w).abs() / w.abs().max(1e-300)));
            }
        }
        (g, w) => fails.push(format!("{what}: ours {g:?}, reference {w:?}")),
    }
}

#[test]
fn stats_match_the_numpy_mergekit_reference() {
    let fix = fixture_dir();
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fix.join("stats_reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 7, "the reference covers {} cases", cases.len());
    let mut fails = Vec::new();
    let mut checked = 0usize;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let rows = merge_with_stats(case["recipe"].as_str().unwrap(), name);
        let ours: BTreeMap<&str, &StatsRow> = rows.iter().map(|r| (r.tensor.as_str(), r)).collect();
        let want_rows = case["rows"].as_array().unwrap();
        assert_eq!(ours.len(), want_rows.len(), "{name}: tensor count");
        for w in want_rows {
            let t = w["tensor"].as_str().unwrap();
            let Some(r) = ours.get(t) else {
                fails.push(format!("{name}: no row for {t}"));
                continue;
            };
            let models: Vec<&str> = w["models"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
            assert_eq!(r.models, models, "{name} {t}: non-base models");
            for (i, n) in w["delta_norms"].as_array().unwrap().iter().enumerate() {
                close(Some(r.delta_norms[i]), n.as_f64(), &format!("{name} {t} delta_norm[{i}]"), &mut fails);
            }
            let f = |k: &str| w[k].as_f64();
            close(r.cos_first_two, f("cos_first_two"), &format!("{name} {t} cos_first_two"), &mut fails);
            close(r.cos_mean_pairwise, f("cos_mean_pairwise"), &format!("{name} {t} cos_mean_pairwise"), &mut fails);
            close(r.sign_conflict_frac, f("sign_conflict_frac"), &format!("{name} {t} sign_conflict_frac"), &mut fails);
            close(r.trimmed_frac, f("trimmed_frac"), &format!("{name} {t} trimmed_frac"), &mut fails);
            close(r.elected_away_frac, f("elected_away_frac"), &format!("{name} {t} elected_away_frac"), &mut fails);
            // The angle is the method's f32 acos of an f32 cosine, which is ill-conditioned for
            // small angles (dθ = d(cos θ)/sin θ): compare in cosine space, within 4 f32 ulps of 1
            // (the two dots are summed in different orders), and θ itself within 1e-6 relative
            // where sin θ makes that meaningful.
            match (r.slerp_angle_rad, f("slerp_angle_rad")) {
                (Some(g), Some(w)) => {
                    let dcos = (g.cos() - w.cos()).abs();
                    let well_conditioned = w.sin() > 0.25;
                    if dcos > 4.0 * f32::EPSILON as f64 / 2.0 || (well_conditioned && (g - w).abs() > 2e-6 * w) {
                        fails.push(format!("{name} {t} slerp_angle_rad: ours {g}, reference {w} (|Δcos| {dcos:.2e})"));
                    }
                }
                (g, w) => close(g, w, &format!("{name} {t} slerp_angle_rad"), &mut fails),
            }
            // merged − base uses the merged values, which may differ from mergekit's within the
            // golden tolerance (1e-7 + 1e-6·|x| per element): allow its norm over the tensor.
            match (r.merged_delta_norm, f("merged_delta_norm")) {
                (Some(g), Some(w)) => {
                    if (g - w).abs() > 1e-6 * w + 1e-7 * (r.numel as f64).sqrt() {
                        fails.push(format!("{name} {t} merged_delta_norm: ours {g}, reference {w}"));
                    }
                }
                (g, w) => close(g, w, &format!("{name} {t} merged_delta_norm"), &mut fails),
            }
            checked += 1;
        }
    }
    assert!(fails.is_empty(), "{} mismatches of {checked} rows:\n{}", fails.len(), fails.join("\n"));
    assert!(checked >= 7 * 39, "checked {checked} rows");
}

#[test]
fn rows_carry_layer_kind_and_method() {
    let rows = merge_with_stats("recipes/ties.yml", "kinds");
    let find = |n: &str| rows.iter().find(|r| r.tensor == n).unwrap_or_else(|| panic!("no row {n}"));
    let r = find("model.layers.2.self_attn.q_proj.weight");
    assert_eq!((r.layer, r.kind, r.method), (Some(2), TensorKind::Attention, "ties"));
    assert_eq!(r.numel, 16 * 16);
    let r = find("model.layers.3.mlp.down_proj.weight");
    assert_eq!((r.layer, r.kind), (Some(3), TensorKind::Mlp));
    assert_eq!(find("model.embed_tokens.weight").kind, TensorKind::Embedding);
    assert_eq!(find("lm_head.weight").kind, TensorKind::Head);
    assert_eq!((find("model.norm.weight").layer, find("model.norm.weight").kind), (None, TensorKind::Norm));
    // CSV: a header and one line per tensor, one delta_norm column per non-base model
    let csv = crucible::merge::stats::rows_to_csv(&rows);
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert_eq!(
        header,
        "tensor,layer,kind,method,numel,delta_norm[models/ft_a],delta_norm[models/ft_b],delta_norm[models/ft_c],cos_first_two,cos_mean_pairwise,sign_conflict_frac,trimmed_frac,elected_away_frac,slerp_angle_rad,merged_delta_norm"
    );
    assert_eq!(lines.count(), rows.len());
}

// ---------------------------------------------------------------------------------------------
// Properties on hand-built tensors (one tensor through merge_tensor_report + the collector).

struct Case {
    shape: Vec<usize>,
    models: Vec<(String, Vec<f32>, Params)>,
    base: Option<usize>,
    global: Params,
}

fn p(kv: &[(&str, f64)]) -> Params {
    kv.iter().map(|(k, v)| (k.to_string(), Scalar::Float(*v))).collect()
}

/// Deterministic pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

impl Case {
    fn planned(&self, method: Method) -> PlannedTensor {
        PlannedTensor {
            name: "model.layers.5.mlp.up_proj.weight".into(),
            method,
            inputs: self.models.iter().map(|(m, _, pr)| PlannedInput { model: m.clone(), tensor: "model.layers.5.mlp.up_proj.weight".into(), file_dtype: DType::F32, params: pr.clone() }).collect(),
            base: self.base,
            t: 0.5,
            global: self.global.clone(),
            load_dtype: DType::F32,
            out_dtype: DType::F32,
            shape: self.shape.clone(),
        }
    }

    /// Merge with `method` and observe it in `chunks` element chunks (1 = whole).
    fn row(&self, method: Method, chunks: usize) -> StatsRow {
        let t = self.planned(method);
        let name = t.name.clone();
        let inputs = MergeInputs {
            tensor: &name,
            shape: &self.shape,
            dtype: DType::F32,
            models: self.models.iter().map(|(m, d, pr)| ModelTensor { model: m, data: d, params: pr }).collect(),
            base: self.base,
            global: &self.global,
        };
        let (merged, report) = merge_tensor_report(method, &inputs, &mut SeededRandomness::new(7)).unwrap();
        let mut c = StatsCollector::new();
        let n = merged.len();
        let step = n.div_ceil(chunks);
        for start in (0..n).step_by(step) {
            let end = (start + step).min(n);
            let len = [end - start];
            let part = MergeInputs {
                tensor: &name,
                shape: &len,
                dtype: DType::F32,
                models: self.models.iter().map(|(m, d, pr)| ModelTensor { model: m, data: &d[start..end], params: pr }).collect(),
                base: self.base,
                global: &self.global,
            };
            c.observe(&t, &part, &merged[start..end], start);
        }
        c.method_report(&t, &report);
        c.tensor_done(&t);
        c.into_rows().pop().unwrap()
    }
}

fn two_finetunes(a: Vec<f32>, b: Vec<f32>, base: Vec<f32>, params: Params) -> Case {
    let n = base.len();
    Case {
        shape: vec![n / 16, 16],
        models: vec![("a".into(), a, params.clone()), ("b".into(), b, params), ("base".into(), base, Params::new())],
        base: Some(2),
        global: Params::new(),
    }
}

#[test]
fn identical_finetunes_have_cosine_one_and_no_conflicts() {
    for seed in 1..6u64 {
        let base = noise(512, seed);
        let ft: Vec<f32> = base.iter().zip(noise(512, seed + 100)).map(|(b, d)| b + 0.1 * d).collect();
        let c = two_finetunes(ft.clone(), ft.clone(), base.clone(), p(&[("weight", 1.0), ("density", 0.5)]));
        let r = c.row(Method::Ties, 1);
        assert!((r.cos_first_two.unwrap() - 1.0).abs() < 1e-12, "{:?}", r.cos_first_two);
        assert!((r.cos_mean_pairwise.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(r.sign_conflict_frac, Some(0.0));
        assert_eq!(r.elected_away_frac, Some(0.0), "identical task vectors never disagree in sign");
        assert!((r.delta_norms[0] - r.delta_norms[1]).abs() == 0.0);
        // opposite task vectors: cosine −1 and every non-zero element conflicts
        let opposite: Vec<f32> = base.iter().zip(&ft).map(|(b, f)| b - (f - b)).collect();
        let c = two_finetunes(ft.clone(), opposite, base.clone(), p(&[("weight", 1.0)]));
        let r = c.row(Method::TaskArithmetic, 1);
        assert!((r.cos_first_two.unwrap() + 1.0).abs() < 1e-6, "{:?}", r.cos_first_two);
        let nonzero = ft.iter().zip(&base).filter(|(f, b)| f != b).count() as f64 / 512.0;
        assert!((r.sign_conflict_frac.unwrap() - nonzero).abs() < 1e-2, "{:?} vs {nonzero}", r.sign_conflict_frac);
        assert!(r.trimmed_frac.is_none() && r.slerp_angle_rad.is_none());
    }
}

#[test]
fn ties_density_half_trims_half() {
    for seed in 1..6u64 {
        let base = noise(1024, seed);
        let a: Vec<f32> = base.iter().zip(noise(1024, seed + 7)).map(|(b, d)| b + d).collect();
        let b: Vec<f32> = base.iter().zip(noise(1024, seed + 9)).map(|(b, d)| b + d).collect();
        let r = two_finetunes(a, b, base, p(&[("weight", 1.0), ("density", 0.5)])).row(Method::Ties, 1);
        let t = r.trimmed_frac.unwrap();
        assert!((t - 0.5).abs() < 0.01, "trimmed {t}");
        // independent random task vectors disagree in sign on about half the elements
        let s = r.sign_conflict_frac.unwrap();
        assert!((s - 0.5).abs() < 0.1, "conflicts {s}");
        let e = r.elected_away_frac.unwrap();
        assert!(e > 0.0 && e < 0.5, "elected away {e}");
    }
}

#[test]
fn slerp_angle_of_orthogonal_tensors_is_a_right_angle() {
    // base = e_0-ish, other = e_1-ish (orthogonal flattened vectors): θ = π/2
    let mut base = vec![0.0f32; 64];
    let mut other = vec![0.0f32; 64];
    base[..32].iter_mut().for_each(|v| *v = 1.0);
    other[32..].iter_mut().for_each(|v| *v = 2.0);
    let c = Case { shape: vec![4, 16], models: vec![("base".into(), base, Params::new()), ("b".into(), other, Params::new())], base: Some(0), global: p(&[("t", 0.5)]) };
    let r = c.row(Method::Slerp, 1);
    assert!((r.slerp_angle_rad.unwrap() - std::f64::consts::FRAC_PI_2).abs() < 1e-6, "{:?}", r.slerp_angle_rad);
}

#[test]
fn chunked_observation_gives_the_same_row() {
    let base = noise(4096, 3);
    let a: Vec<f32> = base.iter().zip(noise(4096, 4)).map(|(b, d)| b + 0.5 * d).collect();
    let b: Vec<f32> = base.iter().zip(noise(4096, 5)).map(|(b, d)| b - 0.25 * d).collect();
    let c = two_finetunes(a, b, base, p(&[("weight", 0.5)]));
    let whole = c.row(Method::TaskArithmetic, 1);
    for chunks in [2, 3, 7] {
        let part = c.row(Method::TaskArithmetic, chunks);
        assert_eq!(part.numel, whole.numel);
        assert_eq!(part.sign_conflict_frac, whole.sign_conflict_frac);
        for (x, y) in part.delta_norms.iter().zip(&whole.delta_norms) {
            assert!((x - y).abs() <= 1e-12 * y, "{x} vs {y}");
        }
        let (x, y) = (part.cos_first_two.unwrap(), whole.cos_first_two.unwrap());
        assert!((x - y).abs() <= 1e-12, "{x} vs {y}");
        let (x, y) = (part.merged_delta_norm.unwrap(), whole.merged_delta_norm.unwrap());
        assert!((x - y).abs() <= 1e-12 * y, "{x} vs {y}");
    }
}
