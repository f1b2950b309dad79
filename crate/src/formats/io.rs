//! Byte sources and sinks: the only I/O the formats and the merge engine see.
//!
//! A source is random-access (`read_at`), so a reader can take one tensor's bytes at a time from a
//! native file, a browser `File`/`Blob` slice (read synchronously in a Web Worker with
//! `FileReaderSync`) or, later, an HTTP Range request. A sink is append-only, so a writer can emit
//! the header first and then each tensor as it is produced.

use std::fmt;

/// An I/O failure, naming the file it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct IoError {
    pub file: String,
    pub message: String,
}

impl IoError {
    pub fn new(file: impl Into<String>, message: impl fmt::Display) -> Self {
        IoError { file: file.into(), message: message.to_string() }
    }
}

/// Random-access bytes of one file.
pub trait ByteSource {
    /// Name shown in error messages (file name or URL).
    fn name(&self) -> &str;
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Fill `buf` with the bytes at `offset..offset + buf.len()`; reading past the end is an error.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;
}

/// Append-only output of one file.
pub trait ByteSink {
    fn name(&self) -> &str;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), IoError>;
    /// Called once after the last write. A sink that was not finished must leave nothing behind
    /// that looks complete (native files write to `NAME.partial` and rename here).
    fn finish(&mut self) -> Result<(), IoError>;
}

/// A boxed sink is a sink (`Writer<Box<dyn ByteSink>>` over `OutputDir::create`'s result).
impl<T: ByteSink + ?Sized> ByteSink for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        (**self).write_all(bytes)
    }
    fn finish(&mut self) -> Result<(), IoError> {
        (**self).finish()
    }
}

/// An in-memory source (tests, small bundled examples).
pub struct MemSource {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl ByteSource for MemSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len()).ok_or_else(|| {
            IoError::new(&self.name, format!("read of {} bytes at offset {offset} is past the end ({} bytes): file truncated?", buf.len(), self.len()))
        })?;
        buf.copy_from_slice(&self.bytes[offset as usize..end as usize]);
        Ok(())
    }
}

/// An in-memory sink (tests).
#[derive(Default)]
pub struct MemSink {
    pub name: String,
    pub bytes: Vec<u8>,
    pub finished: bool,
}

impl ByteSink for MemSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), IoError> {
        self.finished = true;
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{FileSink, FileSource};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};

    /// A native file opened for random reads.
    pub struct FileSource {
        name: String,
        file: File,
        len: u64,
    }

    impl FileSource {
        pub fn open(path: &Path) -> Result<Self, IoError> {
            let name = path.display().to_string();
            let file = File::open(path).map_err(|e| IoError::new(&name, e))?;
            let len = file.metadata().map_err(|e| IoError::new(&name, e))?.len();
            Ok(FileSource { name, file, len })
        }
    }

    impl ByteSource for FileSource {
        fn name(&self) -> &str {
            &self.name
        }
        fn len(&self) -> u64 {
            self.len
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
            if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.len) {
                return Err(IoError::new(&self.name, format!("read of {} bytes at offset {offset} is past the end ({} bytes): file truncated?", buf.len(), self.len)));
            }
            self.file.seek(SeekFrom::Start(offset)).map_err(|e| IoError::new(&self.name, e))?;
            self.file.read_exact(buf).map_err(|e| IoError::new(&self.name, e))
        }
    }

    /// A native output file written to `PATH.partial` and renamed to `PATH` by `finish`.
    /// Dropped unfinished (an error or a cancel), it removes the partial file.
    pub struct FileSink {
        name: String,
        path: PathBuf,
        partial: PathBuf,
        out: Option<std::io::BufWriter<File>>,
    }

    impl FileSink {
        pub fn create(path: &Path) -> Result<Self, IoError> {
            let name = path.display().to_string();
            let mut partial = path.as_os_str().to_owned();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            let file = File::create(&partial).map_err(|e| IoError::new(&name, e))?;
            Ok(FileSink { name, path: path.to_path_buf(), partial, out: Some(std::io::BufWriter::with_capacity(1 << 20, file)) })
        }
    }

    impl ByteSink for FileSink {
        fn name(&self) -> &str {
            &self.name
        }
        fn write_all(&mut self, bytes: &[u8]) -> Result<(), IoError> {
            let out = self.out.as_mut().ok_or_else(|| IoError::new(&self.name, "write after finish"))?;
            out.write_all(bytes).map_err(|e| IoError::new(&self.name, e))
        }
        fn finish(&mut self) -> Result<(), IoError> {
            let out = self.out.take().ok_or_else(|| IoError::new(&self.name, "finished twice"))?;
            out.into_inner().map_err(|e| IoError::new(&self.name, e.error()))?.sync_all().map_err(|e| IoError::new(&self.name, e))?;
            std::fs::rename(&self.partial, &self.path).map_err(|e| IoError::new(&self.name, e))
        }
    }

    impl Drop for FileSink {
        fn drop(&mut self) {
            if self.out.take().is_some() {
                let _ = std::fs::remove_file(&self.partial);
            }
        }
    }
}
