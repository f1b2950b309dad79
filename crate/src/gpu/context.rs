//! The GPU context: one wgpu device + queue, what the adapter can do, a pipeline cache keyed by
//! kernel name, a buffer pool, and the upload / readback helpers every op uses.
//!
//! Pattern: the wgpu examples' "inject the device". [`GpuContext::from_device`] wraps a device
//! and queue the caller already opened (tests bring their own, the page may open one with its
//! own limits); [`GpuContext::new_default`] opens one for the common case: Vulkan (lavapipe in
//! CI) natively, `navigator.gpu` in the browser, with the limits and optional features the
//! adapter reports (never assumed).
//!
//! Errors: wgpu reports validation errors out of band (natively straight away, in the browser as
//! `uncapturederror` events). The context installs a handler that *records* them instead of
//! panicking; [`GpuContext::check`] turns the recorded ones into a [`GpuError`], and every
//! readback calls it, so a bad dispatch is an error value at the next `await`, never a panic.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::pool::{BufferPool, PooledBuffer};

/// Everything that can go wrong on the GPU side. Messages name the adapter, kernel or buffer.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no WebGPU/Vulkan adapter found: {0}")]
    NoAdapter(String),
    #[error("GPU adapter {adapter}: could not open a device: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("GPU kernel {kernel}: shader or pipeline rejected: {message}")]
    Shader { kernel: String, message: String },
    #[error("GPU validation error (reported after {during}): {message}")]
    Validation { during: String, message: String },
    #[error("GPU device lost ({reason}): {message}")]
    DeviceLost { reason: String, message: String },
    #[error("GPU buffer {label}: could not map it for reading: {message}")]
    Map { label: String, message: String },
    #[error("GPU poll failed while waiting for {during}: {message}")]
    Poll { during: String, message: String },
    #[error(
        "GPU buffer {label}: {bytes} bytes exceeds the device limit {limit_name} = {limit} bytes"
    )]
    TooLarge {
        label: String,
        bytes: u64,
        limit_name: &'static str,
        limit: u64,
    },
    #[error(
        "GPU dispatch {kernel}: {groups} workgroups exceed {max} × {max} (max_compute_workgroups_per_dimension)"
    )]
    DispatchTooLarge {
        kernel: String,
        groups: u64,
        max: u32,
    },
}

/// Errors recorded by the device's uncaptured-error and device-lost handlers.
#[derive(Default)]
struct ErrorSink {
    errors: Vec<String>,
    lost: Option<(String, String)>,
}

/// A wgpu device and queue plus what Crucible's ops need around them.
///
/// `adapter_info`, `limits` and `features` are the *device's* (what was granted), which is what
/// kernels must respect: ops read `limits.max_storage_buffer_binding_size` to split big tensors.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pipelines: Mutex<HashMap<&'static str, Arc<wgpu::ComputePipeline>>>,
    pool: Arc<Mutex<BufferPool>>,
    sink: Arc<Mutex<ErrorSink>>,
    /// Bind groups (with their Meta uniforms) reused across dispatches with the same kernel,
    /// Meta bytes and bindings; None (the default) = a fresh uniform + bind group per dispatch.
    /// Enabled by long-lived users ([`GpuContext::enable_bind_cache`]).
    bind_cache: Mutex<Option<BindCache>>,
}

/// Key of a cached bind group: kernel, Meta bytes, (buffer, offset, size) of each binding. The
/// key holds the buffers (cheap handles), so a buffer id cannot be reused while it is cached.
type BindKey = (&'static str, Vec<u8>, Vec<(wgpu::Buffer, u64, Option<wgpu::BufferSize>)>);

/// See [`GpuContext::enable_bind_cache`].
struct BindCache {
    map: HashMap<BindKey, wgpu::BindGroup>,
    cap: usize,
    hits: u64,
    misses: u64,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter_summary())
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// Optional features Crucible uses when the adapter has them (kernels check `ctx.features`).
pub fn wanted_features() -> wgpu::Features {
    let f = wgpu::Features::SHADER_F16;
    // wgpu's WebGPU backend reports SUBGROUP=false even where Chrome offers `subgroups`
    // (toolchain.md), and naga rejects `enable subgroups;` natively: ask for it natively only.
    #[cfg(not(target_arch = "wasm32"))]
    let f = f | wgpu::Features::SUBGROUP;
    f
}

impl GpuContext {
    /// Wraps a device the caller opened (tests open their own, possibly with smaller limits to
    /// exercise the split paths). Installs the error-recording handlers.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> GpuContext {
        let sink = Arc::new(Mutex::new(ErrorSink::default()));
        {
            let sink = Arc::clone(&sink);
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut s) = sink.lock() {
                    s.errors.push(e.to_string());
                }
            }));
        }
        {
            let sink = Arc::clone(&sink);
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut s) = sink.lock() {
                    s.lost = Some((format!("{reason:?}"), message));
                }
            });
        }
        let max_pool_bytes = (device.limits().max_buffer_size).min(512 << 20);
        let mut adapter_info = device.adapter_info();
        if adapter_info.name.is_empty() {
            adapter_info.name = browser_adapter_name(&device);
        }
        // On wasm32 wgpu handles are !Send (one thread): the Arc is only for the Weak in
        // PooledBuffer, never shared across threads there.
        #[allow(clippy::arc_with_non_send_sync)]
        let pool = Arc::new(Mutex::new(BufferPool::new(max_pool_bytes)));
        GpuContext {
            adapter_info,
            limits: device.limits(),
            features: device.features(),
            device,
            queue,
            pipelines: Mutex::new(HashMap::new()),
            pool,
            sink,
            bind_cache: Mutex::new(None),
        }
    }

    /// From now on, dispatches recorded through `ops::record` reuse the bind group and Meta
    /// uniform of an earlier dispatch with the same kernel, Meta bytes and bindings (same
    /// buffers, offsets, sizes) instead of creating a uniform buffer and a bind group each
    /// time: a model's per-token graph repeats almost every dispatch. At most `cap` entries are
    /// kept (all are dropped when full: per-position dispatches such as RoPE's do not repeat).
    /// Cached entries keep their buffers alive until [`GpuContext::clear_bind_cache`] or drop.
    pub fn enable_bind_cache(&self, cap: usize) {
        let mut c = self.bind_cache.lock().unwrap_or_else(|p| p.into_inner());
        *c = Some(BindCache { map: HashMap::new(), cap: cap.max(1), hits: 0, misses: 0 });
    }

    /// Drops every cached bind group (keeps the cache enabled if it was).
    pub fn clear_bind_cache(&self) {
        if let Some(c) = self.bind_cache.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            c.map.clear();
        }
    }

    /// (hits, misses, entries) of the bind-group cache; None when it is not enabled.
    pub fn bind_cache_stats(&self) -> Option<(u64, u64, usize)> {
        self.bind_cache.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|c| (c.hits, c.misses, c.map.len()))
    }

    /// The bind group of `kernel` for (`meta`, `buffers`): from the cache when enabled and
    /// present, else a new Meta uniform (binding 0) + bind group (bindings 1..), cached when
    /// enabled.
    pub(crate) fn meta_bind_group(
        &self,
        kernel: &'static str,
        pipeline: &wgpu::ComputePipeline,
        meta: &[u8],
        buffers: &[wgpu::BufferBinding<'_>],
    ) -> wgpu::BindGroup {
        let make = || {
            use wgpu::util::DeviceExt;
            let meta_buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&format!("{kernel}.meta")),
                contents: meta,
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let mut bindings = Vec::with_capacity(buffers.len() + 1);
            bindings.push(meta_buf.as_entire_buffer_binding());
            bindings.extend(buffers.iter().cloned());
            self.bind_group(&format!("{kernel}.bind"), pipeline, &bindings)
        };
        let mut guard = self.bind_cache.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cache) = guard.as_mut() else {
            return make();
        };
        let key: BindKey = (kernel, meta.to_vec(), buffers.iter().map(|b| (b.buffer.clone(), b.offset, b.size)).collect());
        if let Some(bg) = cache.map.get(&key) {
            cache.hits += 1;
            return bg.clone();
        }
        cache.misses += 1;
        if cache.map.len() >= cache.cap {
            cache.map.clear();
        }
        let bg = make();
        cache.map.insert(key, bg.clone());
        bg
    }

    /// Opens the default adapter: natively Vulkan/GL (honours `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
    /// `WGPU_POWER_PREF`), in the browser `navigator.gpu` (window or worker). Requests the
    /// adapter's own limits and the [`wanted_features`] it has.
    pub async fn new_default() -> Result<GpuContext, GpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env()
                    .unwrap_or(wgpu::PowerPreference::HighPerformance),
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| GpuError::NoAdapter(no_adapter_hint(&e.to_string())))?;
        Self::from_adapter(&adapter).await
    }

    /// Opens a device on `adapter` with the adapter's limits and the wanted features it has.
    pub async fn from_adapter(adapter: &wgpu::Adapter) -> Result<GpuContext, GpuError> {
        let info = adapter.get_info();
        let features = adapter.features() & wanted_features();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("crucible device"),
                required_features: features,
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice {
                adapter: format!("{} ({:?})", info.name, info.backend),
                message: e.to_string(),
            })?;
        Ok(Self::from_device(device, queue))
    }

    /// One line for logs and test output: name, backend, driver, the limits ops care about.
    pub fn adapter_summary(&self) -> String {
        let i = &self.adapter_info;
        format!(
            "{} [{:?}, {:?}, driver {} {}] storage binding {} MiB, buffer {} MiB, \
             workgroup storage {} KiB, {} invocations/workgroup, features {:?}",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            self.limits.max_storage_buffer_binding_size >> 20,
            self.limits.max_buffer_size >> 20,
            self.limits.max_compute_workgroup_storage_size >> 10,
            self.limits.max_compute_invocations_per_workgroup,
            self.features,
        )
    }

    /// Largest storage binding in bytes, also bounded by the largest buffer.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Returns the recorded validation errors (and device loss) as an error, clearing them.
    /// `during` says what the caller just did ("weighted_sum readback").
    pub fn check(&self, during: &str) -> Result<(), GpuError> {
        let mut s = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((reason, message)) = s.lost.clone() {
            return Err(GpuError::DeviceLost { reason, message });
        }
        if s.errors.is_empty() {
            return Ok(());
        }
        let message = s.errors.join("\n");
        s.errors.clear();
        Err(GpuError::Validation {
            during: during.to_string(),
            message,
        })
    }

    /// The compute pipeline of `kernel` (entry point `main`, layout derived from the shader),
    /// compiled once and cached by kernel name. Natively a WGSL error is returned here; in the
    /// browser it surfaces at the next [`GpuContext::check`] (readback).
    pub fn pipeline(
        &self,
        kernel: &'static str,
        wgsl: &str,
    ) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(kernel) {
            return Ok(Arc::clone(p));
        }
        // Fail this kernel alone: errors recorded before belong to someone else.
        self.check(&format!("work before compiling {kernel}"))?;
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel),
                source: wgpu::ShaderSource::Wgsl(wgsl.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Err(e) = self.check(kernel) {
            return Err(GpuError::Shader {
                kernel: kernel.to_string(),
                message: e.to_string(),
            });
        }
        let p = Arc::new(pipeline);
        cache.insert(kernel, Arc::clone(&p));
        Ok(p)
    }

    /// A bind group for `pipeline`'s group 0 with `buffers` bound at bindings 0, 1, 2, … in order
    /// (each a whole buffer or a `(buffer, offset, size)` range).
    pub fn bind_group(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[wgpu::BufferBinding<'_>],
    ) -> wgpu::BindGroup {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(b.clone()),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &layout,
            entries: &entries,
        })
    }

    /// Splits `groups` workgroups into an (x, y) grid within the per-dimension limit. Kernels
    /// recover the flat index as `wid.y * num_workgroups.x + wid.x` and bounds-check it.
    pub fn grid(&self, kernel: &str, groups: u64) -> Result<(u32, u32), GpuError> {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if groups <= max as u64 {
            return Ok((groups.max(1) as u32, 1));
        }
        let y = groups.div_ceil(max as u64);
        if y > max as u64 {
            return Err(GpuError::DispatchTooLarge {
                kernel: kernel.to_string(),
                groups,
                max,
            });
        }
        let x = groups.div_ceil(y);
        Ok((x as u32, y as u32))
    }

    /// A pooled buffer of at least `bytes` bytes (rounded up to a size class), labelled `label`.
    /// It goes back to the pool when dropped. Checks `max_buffer_size` (and the binding limit for
    /// storage buffers).
    pub fn buffer(
        &self,
        label: &'static str,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<PooledBuffer, GpuError> {
        let (limit_name, limit) = if usage.contains(wgpu::BufferUsages::STORAGE) {
            ("max_storage_buffer_binding_size", self.max_binding_bytes())
        } else if usage.contains(wgpu::BufferUsages::UNIFORM) {
            (
                "max_uniform_buffer_binding_size",
                self.limits.max_uniform_buffer_binding_size,
            )
        } else {
            ("max_buffer_size", self.limits.max_buffer_size)
        };
        if bytes > limit {
            return Err(GpuError::TooLarge {
                label: label.to_string(),
                bytes,
                limit_name,
                limit,
            });
        }
        Ok(BufferPool::take(
            &self.pool,
            &self.device,
            label,
            bytes,
            usage,
            limit,
        ))
    }

    /// A storage buffer holding `data` (uploaded with `queue.write_buffer`).
    pub fn upload_f32(&self, label: &'static str, data: &[f32]) -> Result<PooledBuffer, GpuError> {
        let bytes = (std::mem::size_of_val(data) as u64).max(4);
        let buf = self.buffer(
            label,
            bytes,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )?;
        if !data.is_empty() {
            self.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
        }
        Ok(buf)
    }

    /// A uniform buffer holding one `Meta` struct, filled at creation. Not pooled on purpose:
    /// each dispatch gets its own immutable parameters, kept alive by its bind group until the
    /// GPU is done, so several dispatches can be recorded into one encoder before a submit.
    pub fn meta_uniform<T: bytemuck::Pod>(&self, label: &str, meta: &T) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(meta),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Reads `len` f32 values starting at byte `offset` of `src` (which needs `COPY_SRC`):
    /// copy into a pooled staging buffer, submit, `map_async`, poll (natively; the browser
    /// resolves the map on its own), then check for recorded validation errors.
    pub async fn read_f32(
        &self,
        label: &str,
        src: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<f32>, GpuError> {
        if len == 0 {
            self.check(label)?;
            return Ok(Vec::new());
        }
        let bytes = len as u64 * 4;
        let staging = self.buffer(
            "readback staging",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback copy"),
            });
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);

        let (tx, rx) = oneshot::<Result<(), wgpu::BufferAsyncError>>();
        staging
            .slice(0..bytes)
            .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Poll {
                during: label.to_string(),
                message: e.to_string(),
            })?;
        let mapped = rx.await;
        // Report validation errors first: they explain a failed map.
        self.check(label)?;
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(GpuError::Map {
                    label: label.to_string(),
                    message: e.to_string(),
                });
            }
            None => {
                return Err(GpuError::Map {
                    label: label.to_string(),
                    message: "the map callback was dropped without running".to_string(),
                });
            }
        }
        let out = {
            let view = staging
                .get_mapped_range(0..bytes)
                .map_err(|e| GpuError::Map {
                    label: label.to_string(),
                    message: e.to_string(),
                })?;
            // The mapped bytes need not be 4-aligned in the browser: copy, don't cast in place.
            bytemuck::pod_collect_to_vec::<u8, f32>(&view)
        };
        staging.unmap();
        Ok(out)
    }

    /// Buffers created and reused by the pool so far (for tests and benchmarks).
    pub fn pool_stats(&self) -> super::pool::PoolStats {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }

    /// Drops every free buffer the pool holds.
    pub fn trim_pool(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).trim();
    }
}

/// Browsers leave GPUAdapterInfo.description empty (wgpu's `name`); vendor and architecture are
/// what Chrome exposes ("google swiftshader").
#[cfg(target_arch = "wasm32")]
fn browser_adapter_name(device: &wgpu::Device) -> String {
    match device.as_webgpu() {
        Some(d) => {
            let i = d.adapter_info();
            [i.vendor(), i.architecture(), i.device(), i.description()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        }
        None => String::new(),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn browser_adapter_name(_device: &wgpu::Device) -> String {
    String::new()
}

fn no_adapter_hint(err: &str) -> String {
    if cfg!(target_arch = "wasm32") {
        format!(
            "{err}. navigator.gpu gave no adapter: use a browser with WebGPU enabled \
             (Chromium: --enable-unsafe-webgpu where it is not on by default)"
        )
    } else {
        format!(
            "{err}. Install a Vulkan driver (Debian: apt-get install mesa-vulkan-drivers for \
             lavapipe) or try WGPU_BACKEND=gl; an empty WGPU_BACKEND= finds nothing"
        )
    }
}

// ---- a one-shot channel for map_async callbacks (works natively and in the browser) ----

struct Slot<T> {
    value: Option<T>,
    closed: bool,
    waker: Option<Waker>,
}

struct Sender<T>(Arc<Mutex<Slot<T>>>);
struct Receiver<T>(Arc<Mutex<Slot<T>>>);

fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        closed: false,
        waker: None,
    }));
    (Sender(Arc::clone(&slot)), Receiver(slot))
}

impl<T> Sender<T> {
    fn send(self, v: T) {
        if let Ok(mut s) = self.0.lock() {
            s.value = Some(v);
        }
        // Drop wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.closed = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

impl<T> Future for Receiver<T> {
    /// `None` when the sender was dropped without sending.
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn oneshot_delivers_and_reports_a_dropped_sender() {
        let (tx, rx) = oneshot::<u32>();
        tx.send(7);
        assert_eq!(pollster::block_on(rx), Some(7));
        let (tx, rx) = oneshot::<u32>();
        drop(tx);
        assert_eq!(pollster::block_on(rx), None);
    }
}
