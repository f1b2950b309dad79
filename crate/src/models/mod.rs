//! Model architectures on the CPU: readable f32 references that the GPU kernels and quantized
//! weights are tested against.
//!
//! - `config.rs`: Hugging Face `config.json` → typed [`LlamaConfig`].
//! - `llama.rs`: the Llama-family decoder (Llama, SmolLM2, Mistral, Qwen2) with a KV cache.
//! - `moe.rs`: sparse mixture-of-experts MLP blocks (Mixtral, Qwen2-MoE) and their routers.
//! - `gguf_llama.rs`: a llama-architecture GGUF file → config and (quantized) weights.

pub mod config;
mod cpu_matvec;
pub mod cpu_simd128;
pub mod gguf_llama;
pub mod llama;
pub mod llama_gpu;
pub mod moe;

pub use config::{ConfigError, Family, LlamaConfig, MoeConfig, MoeStyle};
pub use llama::{KvCache, LlamaLayer, LlamaModel, LlamaWeights, Linear, ModelError, Perplexity, WeightStorage};
pub use moe::{ExpertChoice, ExpertTrace, Mlp, MoeBlock, SharedExpert};
