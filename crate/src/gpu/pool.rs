//! A simple buffer pool: buffers are reused by (label, usage, size class).
//!
//! Inference dispatches the same kernels with the same buffer roles every token, and a merge
//! streams tensors of a few recurring sizes; creating and destroying a buffer each time costs
//! allocator work (and, in the browser, a round trip through the GPU process). A buffer goes back
//! to the pool when its [`PooledBuffer`] handle is dropped and is handed out again to the next
//! request with the same label, usage and size class.
//!
//! Keying by label keeps every buffer's label truthful (labels appear in validation errors).
//! Size classes: 8 per power of two (at most 12.5 % slack), minimum 256 bytes.
//! The pool keeps at most `max_free_bytes` of idle buffers; beyond that a dropped buffer is freed.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, Weak};

type Key = (&'static str, u32, u64);

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created because no free buffer of the class existed.
    pub created: u64,
    /// Requests served from the pool.
    pub reused: u64,
    /// Bytes held by idle buffers right now.
    pub free_bytes: u64,
}

pub(crate) struct BufferPool {
    free: HashMap<Key, Vec<wgpu::Buffer>>,
    free_bytes: u64,
    max_free_bytes: u64,
    created: u64,
    reused: u64,
}

/// Size class of a request of `bytes` bytes: rounded up to a multiple of 256 and to one of
/// 8 steps per power of two. Never above `limit` (a request at the limit gets the limit).
pub fn size_class(bytes: u64, limit: u64) -> u64 {
    let b = bytes.max(4).div_ceil(256) * 256;
    let p = b.next_power_of_two();
    // b lies in (p/2, p]: 8 classes across that octave, each p/16 wide, so slack ≤ b/8.
    let step = (p / 16).max(256);
    let c = b.div_ceil(step) * step;
    if c > limit {
        (bytes.div_ceil(4) * 4).min(limit).max(bytes)
    } else {
        c
    }
}

impl BufferPool {
    pub(crate) fn new(max_free_bytes: u64) -> BufferPool {
        BufferPool {
            free: HashMap::new(),
            free_bytes: 0,
            max_free_bytes,
            created: 0,
            reused: 0,
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            created: self.created,
            reused: self.reused,
            free_bytes: self.free_bytes,
        }
    }

    pub(crate) fn trim(&mut self) {
        self.free.clear();
        self.free_bytes = 0;
    }

    /// A buffer of class `size_class(bytes)` for `label`/`usage`, reused or created.
    pub(crate) fn take(
        pool: &Arc<Mutex<BufferPool>>,
        device: &wgpu::Device,
        label: &'static str,
        bytes: u64,
        usage: wgpu::BufferUsages,
        limit: u64,
    ) -> PooledBuffer {
        let class = size_class(bytes, limit);
        let key = (label, usage.bits(), class);
        let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = match p.free.get_mut(&key).and_then(|v| v.pop()) {
            Some(b) => {
                p.reused += 1;
                p.free_bytes -= class;
                b
            }
            None => {
                p.created += 1;
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: class,
                    usage,
                    mapped_at_creation: false,
                })
            }
        };
        PooledBuffer {
            buffer,
            key,
            pool: Arc::downgrade(pool),
        }
    }

    fn give_back(&mut self, key: Key, buffer: wgpu::Buffer) {
        if self.free_bytes + key.2 > self.max_free_bytes {
            buffer.destroy();
            return;
        }
        self.free_bytes += key.2;
        self.free.entry(key).or_default().push(buffer);
    }
}

/// A buffer on loan from the pool; derefs to [`wgpu::Buffer`]. Its size is the size class, which
/// may exceed the requested size: bind ranges of the length you need ([`PooledBuffer::binding`]).
///
/// Drop it only after the commands that use it have been *submitted*: the next borrower may
/// `queue.write_buffer` into it, and such a write lands before any later submit, so a buffer
/// returned while still referenced by an unsubmitted encoder could be overwritten under it.
pub struct PooledBuffer {
    buffer: wgpu::Buffer,
    key: Key,
    pool: Weak<Mutex<BufferPool>>,
}

impl std::fmt::Debug for PooledBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PooledBuffer({}, {} bytes)", self.key.0, self.key.2)
    }
}

impl PooledBuffer {
    /// The whole buffer as a binding range of `bytes` bytes from the start.
    pub fn binding(&self, bytes: u64) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: 0,
            size: wgpu::BufferSize::new(bytes.max(4)),
        }
    }
}

impl Deref for PooledBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
            p.give_back(self.key, self.buffer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_slack() {
        assert_eq!(size_class(1, u64::MAX), 256);
        assert_eq!(size_class(256, u64::MAX), 256);
        assert_eq!(size_class(257, u64::MAX), 512);
        assert_eq!(size_class(4096, u64::MAX), 4096);
        // 4097 → 4352 (256-aligned), next power 8192, step 512 → 4608
        assert_eq!(size_class(4097, u64::MAX), 4608);
        for bytes in [1000u64, 12_345, 1 << 20, (1 << 20) + 1, 100_000_000] {
            let c = size_class(bytes, u64::MAX);
            assert!(
                c >= bytes && (c - bytes) as f64 <= 0.125 * bytes as f64 + 256.0,
                "{bytes} → {c}"
            );
        }
        // At the device limit a request gets exactly what it asked for (4-aligned).
        assert_eq!(size_class(1000, 1000), 1000);
        assert_eq!(size_class(1001, 1002), 1002);
    }
}
