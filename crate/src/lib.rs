//! Crucible: merge and run small language models in the browser.
//!
//! Data flows one way: source bytes → format reader → tensors → merge or model → result → JS.
//! The same code runs natively (CLI, tests on lavapipe) and as WebAssembly in a Web Worker.
//! `wasm.rs` is the only module that knows about JavaScript.

pub mod formats;
pub mod gpu;
pub mod merge;
pub mod models;
pub mod ops;
pub mod posenc;
pub mod sample;
pub mod tensor;

#[cfg(target_arch = "wasm32")]
pub mod wasm;
