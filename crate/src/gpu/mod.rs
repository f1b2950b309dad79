//! wgpu context: adapter, device, limits, features (device injected by the caller),
//! a pipeline cache keyed by kernel name, a buffer pool, upload and readback helpers.
//!
//! Ops (`crate::ops`) take a `&GpuContext`; every kernel has a CPU reference it is tested
//! against natively (lavapipe) and in Chromium (SwiftShader).

pub mod context;
pub mod pool;

pub use context::{GpuContext, GpuError, wanted_features};
pub use pool::{PoolStats, PooledBuffer, size_class};
