//! Checkpoint formats: byte sources/sinks, safetensors (streaming read + write, sharded), HF config.
pub mod checkpoint;
pub mod gguf;
pub mod io;
pub mod safetensors;
pub mod sharded;
pub mod tokenizer;
pub use checkpoint::{Checkpoint, INDEX_FILE, MemFiles, ModelFiles, OutputDir, SINGLE_FILE};
#[cfg(not(target_arch = "wasm32"))]
pub use checkpoint::{DirFiles, DirOutput};
pub use io::{ByteSink, ByteSource, IoError, MemSink, MemSource};
pub use safetensors::{FormatError, Header, TensorInfo, Writer, python_order, read_header, read_tensor, read_tensor_bytes, read_tensor_range};
pub use sharded::{DEFAULT_SHARD_SIZE, ShardFile, ShardedLayout, ShardedWriter, index_json, parse_size, shard_file_name, shard_plan};
