//! Positional encodings: rotary position embeddings and their context-extension scalings
//! (see `rope.rs` for the papers and the reference implementation).

pub mod rope;

pub use rope::{RopeConfig, RopeFreqs, RopeLayout, RopeScaling, apply_rope};
