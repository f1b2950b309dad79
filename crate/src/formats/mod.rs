//! Checkpoint formats: byte sources/sinks, safetensors (streaming read + write, sharded), HF config.
pub mod io;
pub mod safetensors;
pub use io::{ByteSink, ByteSource, IoError, MemSink, MemSource};
