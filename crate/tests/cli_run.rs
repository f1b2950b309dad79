#![cfg(not(target_arch = "wasm32"))]
//! `crucible run` end to end: the built binary, the real SmolLM2-135M-Instruct Q4_1 GGUF (fetched by
//! `scripts/fetch_models.sh`; never committed), greedy decoding. Reference (/work/shared/toolchain.md):
//! `The capital of France is` continues with ` Paris.\n\nThe answer is:` (ids 7042 30 198 198 504
//! 2988 314 42) in f32.

use std::path::Path;
use std::process::Command;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");

fn crucible(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_crucible")).args(args).output().expect("run the crucible binary")
}

#[test]
fn run_greedy_streams_the_reference_text() {
    assert!(
        Path::new(MODEL).is_file(),
        "{MODEL} is missing: run scripts/fetch_models.sh (npm test runs it in its set-up via scripts/setup.sh --test)"
    );
    let out = crucible(&["run", "--model", MODEL, "--prompt", "The capital of France is", "--max-tokens", "8", "--greedy"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(stdout, " Paris.\n\nThe answer is:\n", "stderr: {stderr}");
    assert!(stderr.contains("prompt tokens: 5, generated tokens: 8"), "{stderr}");
    assert!(stderr.contains("prefill:") && stderr.contains("decode:") && stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn run_refuses_what_it_cannot_do_yet() {
    // (`--backend gpu` runs now: crate/tests/cli_run_gpu.rs)
    let dir = env!("CARGO_MANIFEST_DIR");
    // a folder that is not a Hugging Face model (no weights, no config.json): the error names it
    let out = crucible(&["run", "--model", dir, "--prompt", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(dir), "{err}");

    let out = crucible(&["run", "--model", "/nonexistent/model.gguf", "--prompt", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.gguf"));

    let out = crucible(&["run", "--model", MODEL, "--prompt", "x", "--top-p", "0"]);
    assert!(!out.status.success(), "top_p 0 must be refused");
}
