//! Early write-back of upload data.
//!
//! A blob is acknowledged only after `fsync`. Left alone, the kernel starts writing a staging
//! file's dirty pages late, so the final `fsync` of a 256 MiB upload waited ~0.6 s for the
//! whole file on this machine's disk. Asking the kernel to start write-back of every few MiB
//! as soon as it is written (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait)
//! overlaps the disk with the network, and the final `fsync` has little left to do.
//!
//! This is the crate's only `unsafe`: one FFI call on a descriptor we own.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// Dirty bytes after which write-back of a staging file is started.
pub(crate) const WRITEBACK_STEP: u64 = 8 << 20;

/// Starts (without waiting for) write-back of `len` bytes at `offset` of `file`. Failure is
/// harmless (the final `fsync` still makes the data durable), so it is only logged.
pub(crate) fn start(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: `file` is an open descriptor owned by the caller for the duration of the
        // call; sync_file_range reads no memory of ours and only schedules I/O on that file.
        let rc = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range failed");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}
