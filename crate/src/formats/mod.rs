//! Checkpoint formats: byte sources/sinks, safetensors (streaming read + write, sharded), HF config.
pub mod checkpoint;
pub mod io;
pub mod safetensors;
pub mod sharded;
pub use checkpoint::{Checkpoint, ModelFiles, OutputDir};
#[cfg(not(target_arch = "wasm32"))]
pub use checkpoint::{DirFiles, DirOutput};
pub use io::{ByteSink, ByteSource, IoError, MemSink, MemSource};
pub use safetensors::{FormatError, Header, TensorInfo, Writer, python_order, read_header, read_tensor, read_tensor_bytes};
pub use sharded::{ShardedLayout, ShardedWriter, parse_size, shard_plan};
