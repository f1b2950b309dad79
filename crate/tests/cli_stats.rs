#![cfg(not(target_arch = "wasm32"))]
//! `crucible merge RECIPE OUT --stats FILE.csv`: the binary writes the "what the merge did" CSV
//! (`crucible::merge::stats`), checked against the NumPy/mergekit reference
//! (`tests/fixtures/merge/stats_reference.json`, from `scripts/fixtures/make_stats_fixture.py`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/merge")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("crucible-cli-stats-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Split one CSV line (fields quoted with `"` when they hold commas or quotes).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[test]
fn merge_stats_flag_writes_the_reference_statistics() {
    let work = scratch("ties");
    let csv_path = work.join("stats.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_crucible"))
        .current_dir(fixture_dir())
        .args(["merge", "recipes/ties.yml"])
        .arg(work.join("out"))
        .arg("--stats")
        .arg(&csv_path)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(out.status.success(), "crucible merge failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(work.join("out/model.safetensors").is_file());
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    let header = split_csv(lines.next().unwrap());
    assert_eq!(header[..5], ["tensor", "layer", "kind", "method", "numel"]);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"));

    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("stats_reference.json")).unwrap()).unwrap();
    let case = reference["cases"].as_array().unwrap().iter().find(|c| c["name"] == "ties").unwrap();
    let rows: Vec<Vec<String>> = lines.map(split_csv).collect();
    assert_eq!(rows.len(), case["rows"].as_array().unwrap().len());
    for want in case["rows"].as_array().unwrap() {
        let t = want["tensor"].as_str().unwrap();
        let row = rows.iter().find(|r| r[0] == t).unwrap_or_else(|| panic!("no CSV row for {t}"));
        assert_eq!(row[3], "ties");
        let num = |c: usize| row[c].parse::<f64>().unwrap_or_else(|e| panic!("{t}: column {} = {:?}: {e}", header[c], row[c]));
        let check = |c: usize, w: f64| {
            let g = num(c);
            assert!((g - w).abs() <= 1e-6 * w.abs() + 1e-12, "{t} {}: CSV {g}, reference {w}", header[c]);
        };
        for (i, m) in want["models"].as_array().unwrap().iter().enumerate() {
            check(col(&format!("delta_norm[{}]", m.as_str().unwrap())), want["delta_norms"][i].as_f64().unwrap());
        }
        for k in ["cos_first_two", "cos_mean_pairwise", "sign_conflict_frac", "trimmed_frac", "elected_away_frac"] {
            check(col(k), want[k].as_f64().unwrap());
        }
        assert_eq!(row[col("slerp_angle_rad")], "", "{t}: ties has no SLERP angle");
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn unwritable_stats_path_is_a_clear_error() {
    let work = scratch("bad");
    let out = Command::new(env!("CARGO_BIN_EXE_crucible"))
        .current_dir(fixture_dir())
        .args(["merge", "recipes/linear.yml"])
        .arg(work.join("out"))
        .arg("--stats")
        .arg(work.join("no/such/dir/stats.csv"))
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writing the statistics") && err.contains("stats.csv"), "{err}");
    let _ = std::fs::remove_dir_all(&work);
}
