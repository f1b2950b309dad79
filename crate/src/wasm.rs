//! The JavaScript boundary (wasm32 only).
