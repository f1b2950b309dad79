//! wgpu context: adapter, device, limits, features (device injected by the caller).
