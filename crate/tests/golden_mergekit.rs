#![cfg(not(target_arch = "wasm32"))]
//! Golden tests: Crucible's merge engine against the real mergekit 0.1.5.
//!
//! For every case in `tests/fixtures/merge/manifest.json` (made by
//! `scripts/fixtures/make_merge_fixtures.py`, see `tests/fixtures/merge/README.md`) this runs
//! `Recipe::from_yaml` + `run_merge` on the committed tiny checkpoints, writes into a temp dir and
//! compares every output tensor with mergekit's: the same names, shapes and dtypes, and values
//! within the case's tolerance (fp32: |ours − mergekit| ≤ 1e-7 + 1e-6·|mergekit|; karcher 4e-4,
//! shared/merge-methods.md §3.5; bf16/f16 outputs: ≤ 1 ulp; `linear_bf16`: identical bits).
//! It also checks `num_hidden_layers` in config.json, the copied tokenizer files and, for sharded
//! output, the shards and their index.
//!
//! Random methods (dare_*, della*): the Bernoulli masks mergekit drew are injected through a
//! [`Randomness`] that replays `masks.safetensors` (key `"{tensor}|{model index}"`) through
//! `run_merge_with`.
//!
//! The expected files are read by a small safetensors reader written here, independent of the
//! engine's reader. Set `GOLDEN_CASE=name[,name]` to run some cases only.
//! Reference: mergekit 0.1.5 (`mergekit/merge.py`, `mergekit/io/tensor_writer.py`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crucible::formats::{DirFiles, DirOutput, IoError, ModelFiles};
use crucible::merge::recipe::Recipe;
use crucible::merge::rng::Randomness;
use crucible::merge::run::{MergeOptions, run_merge, run_merge_with};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/merge")
}

// ------------------------------------------------------------------------------------------
// Minimal independent safetensors reader
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dt {
    F32,
    F16,
    Bf16,
    U8,
}

impl Dt {
    fn parse(s: &str) -> Result<Dt, String> {
        match s {
            "F32" => Ok(Dt::F32),
            "F16" => Ok(Dt::F16),
            "BF16" => Ok(Dt::Bf16),
            "U8" => Ok(Dt::U8),
            other => Err(format!("unsupported dtype {other}")),
        }
    }
    fn size(self) -> usize {
        match self {
            Dt::F32 => 4,
            Dt::F16 | Dt::Bf16 => 2,
            Dt::U8 => 1,
        }
    }
}

/// One tensor: dtype, shape, raw little-endian bytes.
struct RawTensor {
    dtype: Dt,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl RawTensor {
    fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            Dt::F32 => self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dt::F16 => self.bits16().map(|b| half::f16::from_bits(b).to_f32()).collect(),
            Dt::Bf16 => self.bits16().map(|b| half::bf16::from_bits(b).to_f32()).collect(),
            Dt::U8 => self.bytes.iter().map(|&b| b as f32).collect(),
        }
    }
    fn bits16(&self) -> impl Iterator<Item = u16> + '_ {
        self.bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]))
    }
}

fn read_safetensors(path: &Path) -> Result<BTreeMap<String, RawTensor>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() < 8 {
        return Err(format!("{}: shorter than the 8-byte header length", path.display()));
    }
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    if 8 + n > data.len() {
        return Err(format!("{}: header length {n} past end of file", path.display()));
    }
    let header: BTreeMap<String, Value> =
        serde_json::from_slice(&data[8..8 + n]).map_err(|e| format!("{}: bad header: {e}", path.display()))?;
    let body = &data[8 + n..];
    let mut out = BTreeMap::new();
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = Dt::parse(v["dtype"].as_str().unwrap_or("?")).map_err(|e| format!("{}: {name}: {e}", path.display()))?;
        let shape: Vec<usize> =
            v["shape"].as_array().ok_or_else(|| format!("{}: {name}: no shape", path.display()))?.iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let offs = v["data_offsets"].as_array().ok_or_else(|| format!("{}: {name}: no data_offsets", path.display()))?;
        let (a, b) = (offs[0].as_u64().unwrap() as usize, offs[1].as_u64().unwrap() as usize);
        let numel: usize = shape.iter().product();
        if b < a || b > body.len() || b - a != numel * dtype.size() {
            return Err(format!("{}: {name}: bad data_offsets [{a}, {b}] for shape {shape:?}", path.display()));
        }
        out.insert(name, RawTensor { dtype, shape, bytes: body[a..b].to_vec() });
    }
    Ok(out)
}

/// All tensors of an output directory: `model.safetensors` or the shards named by the index.
/// Also returns the shard files (empty for a single file).
fn read_output(dir: &Path) -> Result<(BTreeMap<String, RawTensor>, Vec<String>), String> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| format!("{}: {e}", index.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
        let map = v["weight_map"].as_object().ok_or_else(|| format!("{}: no weight_map", index.display()))?;
        let files: BTreeSet<String> = map.values().map(|f| f.as_str().unwrap_or("").to_string()).collect();
        let mut all = BTreeMap::new();
        for f in &files {
            let tensors = read_safetensors(&dir.join(f))?;
            for (name, t) in tensors {
                match map.get(&name).and_then(|x| x.as_str()) {
                    Some(owner) if owner == f => {}
                    other => return Err(format!("{}: tensor {name} is in {f} but the index says {other:?}", dir.display())),
                }
                all.insert(name, t);
            }
        }
        for name in map.keys() {
            if !all.contains_key(name) {
                return Err(format!("{}: index names {name} but no shard holds it", dir.display()));
            }
        }
        Ok((all, files.into_iter().collect()))
    } else {
        Ok((read_safetensors(&dir.join("model.safetensors"))?, Vec::new()))
    }
}

// ------------------------------------------------------------------------------------------
// Recorded masks as a Randomness
// ------------------------------------------------------------------------------------------

/// Replays the keep-masks mergekit drew (`masks.safetensors`); notes every problem.
struct RecordedMasks {
    masks: HashMap<String, Vec<bool>>,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl RecordedMasks {
    fn load(path: &Path) -> Result<RecordedMasks, String> {
        let masks = read_safetensors(path)?
            .into_iter()
            .map(|(k, t)| (k, t.bytes.iter().map(|&b| b != 0).collect::<Vec<bool>>()))
            .collect();
        Ok(RecordedMasks { masks, used: BTreeSet::new(), problems: Vec::new() })
    }
}

impl Randomness for RecordedMasks {
    fn keep_mask(&mut self, tensor: &str, model_index: usize, n: usize, _p: &dyn Fn(usize) -> f32) -> Vec<bool> {
        let key = format!("{tensor}|{model_index}");
        match self.masks.get(&key) {
            Some(m) if m.len() == n => {
                if !self.used.insert(key.clone()) {
                    self.problems.push(format!("mask {key} requested twice"));
                }
                m.clone()
            }
            Some(m) => {
                self.problems.push(format!("mask {key}: engine asked for {n} elements, mergekit drew {}", m.len()));
                vec![true; n]
            }
            None => {
                self.problems.push(format!("mask {key}: engine asked for a mask mergekit never drew"));
                vec![true; n]
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Comparison
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Tolerance {
    F32 { rel: f64, abs: f64 },
    Ulp(u32),
    Exact,
}

impl Tolerance {
    fn parse(v: &Value) -> Tolerance {
        match v["kind"].as_str() {
            Some("f32") => Tolerance::F32 { rel: v["rel"].as_f64().unwrap(), abs: v["abs"].as_f64().unwrap() },
            Some("ulp") => Tolerance::Ulp(v["ulps"].as_u64().unwrap() as u32),
            Some("exact") => Tolerance::Exact,
            other => panic!("manifest: unknown tolerance kind {other:?}"),
        }
    }
}

/// Distance in units in the last place between two 16-bit floats of the same format.
fn ulp_distance16(a: u16, b: u16) -> u32 {
    let key = |x: u16| -> i32 { if x & 0x8000 != 0 { -((x & 0x7fff) as i32) } else { x as i32 } };
    (key(a) - key(b)).unsigned_abs()
}

#[derive(Default)]
struct CaseStats {
    max_abs: f64,
    max_rel: f64,
    max_ulp: u32,
    tensors: usize,
    elements: usize,
}

/// Compares one tensor; returns the first few failing elements as messages.
fn compare_tensor(case: &str, name: &str, ours: &RawTensor, theirs: &RawTensor, tol: &Tolerance, st: &mut CaseStats) -> Vec<String> {
    let mut fails = Vec::new();
    if ours.dtype != theirs.dtype {
        fails.push(format!("{case}: tensor {name}: dtype {:?}, mergekit {:?}", ours.dtype, theirs.dtype));
        return fails;
    }
    if ours.shape != theirs.shape {
        fails.push(format!("{case}: tensor {name}: shape {:?}, mergekit {:?}", ours.shape, theirs.shape));
        return fails;
    }
    let (a, b) = (ours.to_f32(), theirs.to_f32());
    let bits: Option<(Vec<u16>, Vec<u16>)> = match ours.dtype {
        Dt::F16 | Dt::Bf16 => Some((ours.bits16().collect(), theirs.bits16().collect())),
        _ => None,
    };
    st.tensors += 1;
    st.elements += a.len();
    let mut bad = 0usize;
    for i in 0..a.len() {
        let (x, y) = (a[i] as f64, b[i] as f64);
        if x.is_nan() || y.is_nan() {
            if !(x.is_nan() && y.is_nan()) {
                bad += 1;
                if fails.len() < 5 {
                    fails.push(format!("{case}: tensor {name}[{i}]: ours {x}, mergekit {y}"));
                }
            }
            continue;
        }
        let abs = (x - y).abs();
        let rel = if y != 0.0 { abs / y.abs() } else if abs == 0.0 { 0.0 } else { f64::INFINITY };
        st.max_abs = st.max_abs.max(abs);
        if abs > 0.0 {
            st.max_rel = st.max_rel.max(rel);
        }
        let ok = match tol {
            Tolerance::F32 { rel: r, abs: a0 } => abs <= a0 + r * y.abs(),
            Tolerance::Exact => ours.bytes[i * ours.dtype.size()..(i + 1) * ours.dtype.size()] == theirs.bytes[i * ours.dtype.size()..(i + 1) * ours.dtype.size()],
            Tolerance::Ulp(n) => match &bits {
                Some((p, q)) => {
                    let d = ulp_distance16(p[i], q[i]);
                    st.max_ulp = st.max_ulp.max(d);
                    d <= *n
                }
                // A 32-bit output under a 16-bit tolerance: hold it to the fp32 rule.
                None => abs <= 1e-7 + 1e-6 * y.abs(),
            },
        };
        if !ok {
            bad += 1;
            if fails.len() < 5 {
                fails.push(format!("{case}: tensor {name}[{i}] (shape {:?}): ours {x:e}, mergekit {y:e}, abs err {abs:e}, rel err {rel:e}, tolerance {tol:?}", ours.shape));
            }
        }
    }
    if bad > fails.len() {
        fails.push(format!("{case}: tensor {name}: {bad} of {} elements out of tolerance in all", a.len()));
    }
    fails
}

fn layers_of(config: &Path) -> Result<Option<u64>, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    Ok(v["num_hidden_layers"].as_u64())
}

/// Runs one manifest case; returns (stats, failure messages).
fn run_case(case: &Value, out_root: &Path) -> (CaseStats, Vec<String>) {
    let fix = fixture_dir();
    let name = case["name"].as_str().unwrap().to_string();
    let mut fails = Vec::new();
    let mut st = CaseStats::default();
    let recipe_path = fix.join(case["recipe"].as_str().unwrap());
    let expected_dir = fix.join(case["expected"].as_str().unwrap());
    let tol = Tolerance::parse(&case["tolerance"]);
    let yaml = std::fs::read_to_string(&recipe_path).unwrap_or_else(|e| panic!("{}: {e}", recipe_path.display()));

    let recipe = match Recipe::from_yaml(&yaml) {
        Ok(r) => r,
        Err(e) => return (st, vec![format!("{name}: recipe {} does not parse: {e}", recipe_path.display())]),
    };

    let mut masks = match case["masks"].as_str() {
        Some(m) => match RecordedMasks::load(&fix.join(m)) {
            Ok(m) => Some(m),
            Err(e) => return (st, vec![format!("{name}: {e}")]),
        },
        None => None,
    };

    let out_dir = out_root.join(&name);
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut out = DirOutput::new(&out_dir);
    let fix_for_open = fix.clone();
    let mut open_model = move |path: &str| -> Result<Box<dyn ModelFiles>, IoError> {
        let dir = fix_for_open.join(path);
        if !dir.is_dir() {
            return Err(IoError::new(dir.display().to_string(), "model directory not found"));
        }
        Ok(Box::new(DirFiles::new(dir)))
    };
    let result = {
        let mut opts = MergeOptions { seed: 42, out_shard_size: case["out_shard_size"].as_u64(), progress: None, cancelled: None, observer: None };
        match masks.as_mut() {
            Some(m) => run_merge_with(&recipe, &mut open_model, &mut out, &mut opts, m),
            None => run_merge(&recipe, &mut open_model, &mut out, &mut opts),
        }
    };
    if let Err(e) = result {
        return (st, vec![format!("{name}: run_merge failed: {e}")]);
    }
    if let Some(m) = &masks {
        fails.extend(m.problems.iter().map(|p| format!("{name}: {p}")));
        let unused: Vec<&String> = m.masks.keys().filter(|k| !m.used.contains(*k)).collect();
        if !unused.is_empty() {
            fails.push(format!("{name}: {} recorded masks never requested by the engine, e.g. {:?}", unused.len(), &unused[..unused.len().min(3)]));
        }
    }

    let (theirs, _) = match read_output(&expected_dir) {
        Ok(x) => x,
        Err(e) => return (st, vec![format!("{name}: expected output unreadable: {e}")]),
    };
    let (ours, our_shards) = match read_output(&out_dir) {
        Ok(x) => x,
        Err(e) => return (st, vec![format!("{name}: our output unreadable: {e}")]),
    };

    let missing: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    if !missing.is_empty() {
        fails.push(format!("{name}: tensors mergekit wrote but we did not: {missing:?}"));
    }
    if !extra.is_empty() {
        fails.push(format!("{name}: tensors we wrote but mergekit did not: {extra:?}"));
    }
    for (tname, t) in &theirs {
        if let Some(o) = ours.get(tname) {
            fails.extend(compare_tensor(&name, tname, o, t, &tol, &mut st));
        }
    }

    // config.json: num_hidden_layers (slices change it).
    match (layers_of(&out_dir.join("config.json")), layers_of(&expected_dir.join("config.json"))) {
        (Ok(a), Ok(b)) if a == b => {}
        (Ok(a), Ok(b)) => fails.push(format!("{name}: config.json num_hidden_layers {a:?}, mergekit {b:?}")),
        (Err(e), _) | (_, Err(e)) => fails.push(format!("{name}: {e}")),
    }

    // Tokenizer files: mergekit copies them verbatim from the base (or donor) model, except with
    // `tokenizer_source`, where it re-serializes the tokenizer (then only their presence counts).
    let reserialized = yaml.contains("tokenizer_source");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let (o, t) = (out_dir.join(f), expected_dir.join(f));
        if !t.is_file() {
            continue;
        }
        match std::fs::read(&o) {
            Err(_) => fails.push(format!("{name}: {f} not written")),
            Ok(bytes) if !reserialized && bytes != std::fs::read(&t).unwrap() => {
                fails.push(format!("{name}: {f} differs from the donor model's copy mergekit made"))
            }
            Ok(_) => {}
        }
    }

    // Sharded output: several shards, an index covering every tensor (checked by read_output),
    // and no shard over the limit unless it holds a single tensor (mergekit's rule).
    if let Some(limit) = case["out_shard_size"].as_u64() {
        if our_shards.len() < 2 {
            fails.push(format!("{name}: --out-shard-size {limit}: expected several shards, got {our_shards:?}"));
        }
        for f in &our_shards {
            match read_safetensors(&out_dir.join(f)) {
                Ok(ts) => {
                    let bytes: usize = ts.values().map(|t| t.bytes.len()).sum();
                    if ts.len() > 1 && bytes as u64 > limit {
                        fails.push(format!("{name}: shard {f} holds {bytes} tensor bytes > limit {limit}"));
                    }
                }
                Err(e) => fails.push(format!("{name}: {e}")),
            }
        }
    }
    (st, fails)
}

fn manifest() -> Value {
    let path = fixture_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn golden_mergekit_every_case() {
    let m = manifest();
    assert_eq!(m["version"].as_u64(), Some(1), "fixture format version");
    assert_eq!(m["mergekit_version"].as_str(), Some("0.1.5"));
    let only: Option<Vec<String>> = std::env::var("GOLDEN_CASE").ok().map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let out_root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("golden_mergekit_{}", std::process::id()));
    let mut all_fails = Vec::new();
    let mut ran = 0;
    for case in m["cases"].as_array().expect("manifest: cases") {
        let name = case["name"].as_str().unwrap();
        if let Some(only) = &only {
            if !only.iter().any(|o| o == name) {
                continue;
            }
        }
        ran += 1;
        let (st, fails) = run_case(case, &out_root);
        println!(
            "{:<28} {:<4} tensors {:>3} elements {:>6} max abs {:.3e} max rel {:.3e}{}",
            name,
            if fails.is_empty() { "ok" } else { "FAIL" },
            st.tensors,
            st.elements,
            st.max_abs,
            st.max_rel,
            if st.max_ulp > 0 { format!(" max ulp {}", st.max_ulp) } else { String::new() }
        );
        for f in &fails {
            println!("    {f}");
        }
        all_fails.extend(fails);
    }
    let _ = std::fs::remove_dir_all(&out_root);
    assert!(ran > 0, "GOLDEN_CASE matched no case");
    assert!(all_fails.is_empty(), "{} golden mismatches against mergekit 0.1.5:\n{}", all_fails.len(), all_fails.join("\n"));
}

/// Every registered method has at least one golden case, and every case's recipe names a method.
#[test]
fn golden_cases_cover_every_method() {
    let m = manifest();
    let fix = fixture_dir();
    let mut used = BTreeSet::new();
    for case in m["cases"].as_array().unwrap() {
        let text = std::fs::read_to_string(fix.join(case["recipe"].as_str().unwrap())).unwrap();
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        used.insert(v["merge_method"].as_str().unwrap().to_string());
        assert!(fix.join(case["expected"].as_str().unwrap()).is_dir(), "{case}: expected dir missing");
    }
    let missing: Vec<&str> = crucible::merge::methods::Method::names().into_iter().filter(|n| !used.contains(*n)).collect();
    assert!(missing.is_empty(), "methods without a golden case: {missing:?}");
}

/// The replayed masks are what the fixture says: a DARE keep rate near the density.
#[test]
fn recorded_masks_match_their_densities() {
    let fix = fixture_dir();
    let m = RecordedMasks::load(&fix.join("expected/dare_ties/masks.safetensors")).unwrap();
    // dare_ties: ft_a density 0.6 (index 0), ft_b density 0.4 (index 1).
    for (idx, density) in [(0usize, 0.6f64), (1, 0.4)] {
        let (mut kept, mut total) = (0usize, 0usize);
        for (k, v) in &m.masks {
            if k.ends_with(&format!("|{idx}")) {
                kept += v.iter().filter(|&&b| b).count();
                total += v.len();
            }
        }
        let rate = kept as f64 / total as f64;
        assert!((rate - density).abs() < 0.02, "model {idx}: keep rate {rate} vs density {density}");
    }
}
