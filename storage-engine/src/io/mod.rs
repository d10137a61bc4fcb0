//! The I/O engine: how blob bytes move between memory and disk.
//!
//! The principal type is [`IoEngine`] (`IoUring` or `Std`), chosen once at start-up from an
//! [`IoEngineChoice`] (`auto`, `io_uring`, `std`; the node's `[storage] io_engine`,
//! `BERTH_IO_ENGINE`, `--io-engine`) by [`IoEngine::select`], which probes io_uring by creating
//! a ring and running a NOP through it. `auto` falls back to std with a WARN naming the reason
//! (old kernel, a container's seccomp profile answering `EPERM`/`ENOSYS`); a forced
//! `io_uring` that is unavailable is an error. Every [`crate::BlobStore`] carries its engine;
//! [`BlobStore::open`](crate::BlobStore::open) uses the process default ([`set_default`],
//! else `auto`).
//!
//! The engine does chunk reads (`VerifiedBlob::read_chunk`), scrub reads (batched: several
//! chunks per submission), upload writes and the commit's fsyncs (a write linked to its
//! fsync). Both engines give the same results; the storage tests run every body with both.
//! `unsafe` lives in `uring.rs` and `writeback.rs` only.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

mod uring;
pub(crate) mod writeback;

/// Most reads [`IoEngine::read_many_exact_at`] submits at once.
pub const READ_BATCH_MAX: usize = uring::BATCH_MAX;

/// What the configuration asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngineChoice {
    /// io_uring if the probe succeeds, else std (with a warning).
    #[default]
    Auto,
    /// io_uring or a start-up error.
    IoUring,
    /// Plain `pread`/`pwrite`/`fsync`.
    Std,
}

impl FromStr for IoEngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IoEngineChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(IoEngineChoice::IoUring),
            "std" => Ok(IoEngineChoice::Std),
            other => Err(format!(
                "unknown I/O engine {other:?}: expected auto, io_uring or std"
            )),
        }
    }
}

/// The engine in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoEngine {
    /// Thread-local io_uring rings (`uring.rs`).
    IoUring,
    /// std's positional I/O.
    Std,
}

/// Why [`IoEngine::select`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `io_uring` was forced but the probe failed.
    #[error("io_engine = \"io_uring\" was requested, but io_uring is unavailable here (use io_engine = \"auto\" or \"std\")")]
    Unavailable(#[source] io::Error),
}

/// The process default: 0 unset, 1 io_uring, 2 std.
static DEFAULT: AtomicU8 = AtomicU8::new(0);

/// Sets the engine [`BlobStore::open`](crate::BlobStore::open) uses (the node calls this once
/// at start-up with the configured engine).
pub fn set_default(engine: IoEngine) {
    DEFAULT.store(engine.code(), Ordering::Relaxed);
}

/// The process default engine: the one given to [`set_default`], else `auto`'s choice
/// (probed once).
pub fn default_engine() -> IoEngine {
    match DEFAULT.load(Ordering::Relaxed) {
        1 => IoEngine::IoUring,
        2 => IoEngine::Std,
        _ => {
            // Without configuration `auto` cannot fail.
            let engine = IoEngine::select(IoEngineChoice::Auto).unwrap_or(IoEngine::Std);
            set_default(engine);
            engine
        }
    }
}

impl IoEngine {
    /// Both engines, for tests that run a body with each.
    pub const ALL: [IoEngine; 2] = [IoEngine::IoUring, IoEngine::Std];

    fn code(self) -> u8 {
        match self {
            IoEngine::IoUring => 1,
            IoEngine::Std => 2,
        }
    }

    /// `"io_uring"` or `"std"` (as in the configuration and the logs).
    pub fn as_str(self) -> &'static str {
        match self {
            IoEngine::IoUring => "io_uring",
            IoEngine::Std => "std",
        }
    }

    /// Resolves a configured choice, probing io_uring unless `std` is asked for. With `auto`,
    /// an unavailable io_uring is logged at WARN with the reason and std is used.
    pub fn select(choice: IoEngineChoice) -> Result<IoEngine, EngineError> {
        match choice {
            IoEngineChoice::Std => Ok(IoEngine::Std),
            IoEngineChoice::IoUring => uring::probe()
                .map(|()| IoEngine::IoUring)
                .map_err(EngineError::Unavailable),
            IoEngineChoice::Auto => match uring::probe() {
                Ok(()) => Ok(IoEngine::IoUring),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring is unavailable; falling back to std file I/O");
                    Ok(IoEngine::Std)
                }
            },
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset` (`UnexpectedEof` if the file is shorter).
    pub fn read_exact_at(self, file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = match self.read_at(file, buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            };
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn read_at(self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self == IoEngine::IoUring {
            if let Some(result) = uring::read_at(file, buf, offset) {
                return result;
            }
        }
        file.read_at(buf, offset)
    }

    /// Fills every `bufs[i]` from `offsets[i]`, at most [`READ_BATCH_MAX`] at a time; with
    /// io_uring, each batch is one submission (read-ahead without a thread per read).
    pub fn read_many_exact_at(
        self,
        file: &File,
        bufs: &mut [&mut [u8]],
        offsets: &[u64],
    ) -> io::Result<()> {
        if bufs.len() != offsets.len() {
            return Err(io::Error::other(
                "read_many_exact_at: one offset per buffer",
            ));
        }
        for (bufs, offsets) in bufs
            .chunks_mut(READ_BATCH_MAX)
            .zip(offsets.chunks(READ_BATCH_MAX))
        {
            let batch = match self {
                IoEngine::IoUring => uring::read_many_at(file, bufs, offsets).transpose()?,
                IoEngine::Std => None,
            };
            let mut results = batch.unwrap_or_default().into_iter();
            for (buf, &offset) in bufs.iter_mut().zip(offsets) {
                let done = match results.next() {
                    Some(Ok(n)) => n,
                    Some(Err(e)) if !retry(&e) => return Err(e),
                    _ => 0,
                };
                // Short (end of file reached or a partial read) or not submitted: finish the
                // rest one read at a time.
                let rest = buf.get_mut(done..).unwrap_or_default();
                self.read_exact_at(file, rest, offset + done as u64)?;
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(self, file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = match self.write_at(file, buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            };
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn write_at(self, file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
        if self == IoEngine::IoUring {
            if let Some(result) = uring::write_at(file, buf, offset) {
                return result;
            }
        }
        file.write_at(buf, offset)
    }

    /// Flushes the file's data and metadata to stable storage (`fsync`); also for
    /// directories (opened read-only).
    pub fn fsync(self, file: &File) -> io::Result<()> {
        if self == IoEngine::IoUring {
            if let Some(result) = uring::fsync(file, false) {
                return result;
            }
        }
        file.sync_all()
    }

    /// Fsyncs every file in `files`; with io_uring in one submission, so they run
    /// concurrently. Returns the first failure.
    pub fn fsync_all(self, files: &[&File]) -> io::Result<()> {
        for files in files.chunks(READ_BATCH_MAX) {
            if self == IoEngine::IoUring {
                if let Some(results) = uring::fsync_many(files) {
                    for result in results? {
                        result?;
                    }
                    continue;
                }
            }
            for file in files {
                file.sync_all()?;
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`, then fsyncs the file. With io_uring the write and the
    /// fsync are linked in one submission.
    pub fn write_all_at_then_fsync(self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        if self == IoEngine::IoUring && !buf.is_empty() {
            if let Some(result) = uring::write_at_then_fsync(file, buf, offset) {
                let (written, synced) = result?;
                let written = match written {
                    Ok(n) => n,
                    Err(e) if retry(&e) => 0,
                    Err(e) => return Err(e),
                };
                if written == buf.len() {
                    if let Ok(()) = synced {
                        return Ok(());
                    }
                    // A failed fsync is reported by retrying it below: the second attempt
                    // answers for the same dirty pages.
                }
                self.write_all_at(file, &buf[written..], offset + written as u64)?;
                return self.fsync(file);
            }
        }
        self.write_all_at(file, buf, offset)?;
        self.fsync(file)
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_io_uring_is_probed() {
        assert_eq!("auto".parse(), Ok(IoEngineChoice::Auto));
        assert_eq!("io_uring".parse(), Ok(IoEngineChoice::IoUring));
        assert_eq!("std".parse(), Ok(IoEngineChoice::Std));
        let err = "fast".parse::<IoEngineChoice>().expect_err("refused");
        assert!(err.contains("auto, io_uring or std"), "{err}");
        assert_eq!(
            IoEngine::select(IoEngineChoice::Std).expect("std"),
            IoEngine::Std
        );
        // auto never fails; forced io_uring agrees with auto's probe.
        let auto = IoEngine::select(IoEngineChoice::Auto).expect("auto");
        let forced = IoEngine::select(IoEngineChoice::IoUring);
        assert_eq!(forced.is_ok(), auto == IoEngine::IoUring, "{forced:?}");
        if std::env::var("BERTH_EXPECT_IO_URING").as_deref() == Ok("1") {
            assert_eq!(auto, IoEngine::IoUring, "this machine should have io_uring");
        }
    }

    #[test]
    fn reads_writes_and_fsyncs_agree_across_engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..(3 << 20) + 123)
            .map(|i: u32| (i * 7 + i / 4093) as u8)
            .collect();
        for engine in IoEngine::ALL {
            let path = dir.path().join(engine.as_str());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .expect("create");
            let (head, tail) = data.split_at(1 << 20);
            engine.write_all_at(&file, head, 0).expect("write");
            engine
                .write_all_at_then_fsync(&file, tail, head.len() as u64)
                .expect("write+fsync");
            engine.fsync(&file).expect("fsync");
            assert_eq!(std::fs::read(&path).expect("read back"), data, "{engine:?}");

            let mut buf = vec![0u8; 4096];
            engine.read_exact_at(&file, &mut buf, 5000).expect("read");
            assert_eq!(buf, data[5000..9096]);
            // Reading past the end is an error, not a short success.
            let mut past = vec![0u8; 200];
            let err = engine
                .read_exact_at(&file, &mut past, data.len() as u64 - 100)
                .expect_err("past end");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

            // Batched: 20 ranges (two submissions with io_uring), the last one short.
            let offsets: Vec<u64> = (0..20u64).map(|i| i * 150_001).collect();
            let mut storage = vec![vec![0u8; 70_000]; 20];
            let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
            engine
                .read_many_exact_at(&file, &mut bufs, &offsets)
                .expect("batch");
            for (buf, &off) in storage.iter().zip(&offsets) {
                assert_eq!(&buf[..], &data[off as usize..off as usize + 70_000]);
            }
            let mut big = vec![0u8; 1 << 20];
            let mut bufs: Vec<&mut [u8]> = vec![&mut big[..]];
            let err = engine
                .read_many_exact_at(&file, &mut bufs, &[(3 << 20) - 5])
                .expect_err("past end");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

            // A read-only descriptor refuses writes with the OS error, on both engines.
            let ro = File::open(&path).expect("open ro");
            let err = engine.write_all_at(&ro, b"x", 0).expect_err("read-only");
            assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{engine:?}: {err}");
            // Directories can be fsynced, several files at once too.
            let d = File::open(dir.path()).expect("open dir");
            engine.fsync(&d).expect("dir fsync");
            engine.fsync_all(&[&file, &d, &ro]).expect("fsync_all");
        }
    }
}
