//! safetensors: streaming reader and writer.
