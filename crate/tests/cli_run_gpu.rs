#![cfg(not(target_arch = "wasm32"))]
//! `crucible run --backend gpu` end to end: the built binary on the real SmolLM2-135M-Instruct
//! Q4_1 GGUF (fetched by scripts/fetch_models.sh), greedy, on the default adapter (lavapipe where
//! there is no GPU; no adapter fails). The GPU continuation must equal the CPU backend's, and the
//! adapter name and tokens/s are reported. Kept short (2-token prompt, 3 new tokens): lavapipe runs
//! this model at a fraction of a token per second (crate/tests/llama_gpu.rs checks the full
//! 8-token reference continuation).

use std::path::Path;
use std::process::Command;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");

fn run(backend: &str) -> (String, String) {
    assert!(Path::new(MODEL).is_file(), "{MODEL} is missing: run scripts/fetch_models.sh");
    let out = Command::new(env!("CARGO_BIN_EXE_crucible"))
        .args(["run", "--model", MODEL, "--prompt", "The capital", "--max-tokens", "3", "--greedy", "--backend", backend])
        .env("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()))
        .output()
        .expect("run the crucible binary");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "--backend {backend}: {stderr}");
    (stdout, stderr)
}

#[test]
fn run_backend_gpu_equals_cpu_and_reports_the_adapter() {
    let (gpu_out, gpu_err) = run("gpu");
    let (cpu_out, _) = run("cpu");
    println!("{gpu_err}");
    assert_eq!(gpu_out, cpu_out, "greedy continuation of \"The capital\": GPU vs CPU backend");
    assert!(gpu_err.contains("GPU adapter: ") && gpu_err.contains("backend gpu: "), "{gpu_err}");
    assert!(gpu_err.contains("prefill:") && gpu_err.contains("decode:") && gpu_err.contains("tokens/s"), "{gpu_err}");
}
