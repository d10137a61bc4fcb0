//! Early write-back of upload data.
//!
//! A blob is acknowledged only after `fsync`. Left alone, the kernel starts writing a staging
//! file's dirty pages late, so the final `fsync` of a 256 MiB upload waited ~0.6 s for the
//! whole file on this machine's disk. Asking the kernel to start write-back of every few MiB
//! as soon as it is written (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait)
//! overlaps the disk with the network, and the final `fsync` has little left to do.
//!
//! Once written back, a window of an upload is also dropped from the page cache
//! ([`retire`]): an upload then cycles through a few windows' worth of page-cache pages
//! instead of filling memory with layers nobody has asked for yet (a later read comes from
//! the disk). On this VM it is also what makes the write path fast: a page the guest has not
//! touched lately is slow to fill (the host backs it lazily; see "Push write pass" in
//! docs/benchmarks.md), and recycled pages are not.
//!
//! This is the crate's only `unsafe`: FFI calls on a descriptor we own.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// Dirty bytes after which write-back of a staging file is started.
pub(crate) const WRITEBACK_STEP: u64 = 8 << 20;
/// Bytes written after a window before it is retired (waited for and dropped from the page
/// cache): by then its write-back has usually finished, so retiring rarely waits.
pub(crate) const RETIRE_LAG: u64 = 4 * WRITEBACK_STEP;

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

/// Waits until `len` bytes at `offset` of `file` are written back, then drops them from the
/// page cache. Failure is harmless (the pages stay cached; the final `fsync` still makes the
/// data durable), so it is only logged.
pub(crate) fn retire(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: as in `start`; posix_fadvise likewise only acts on the descriptor's file.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, wait) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range failed");
            return;
        }
        // SAFETY: see above. Dropping clean pages of our own file loses nothing.
        let rc = unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::from_raw_os_error(rc), "posix_fadvise failed");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// How many of the pages of `file` in `offset..offset + len` are in the page cache
/// (`mincore` over a read-only mapping), or `None` where that cannot be told: not Linux, or a
/// file system whose pages cannot be dropped (tmpfs keeps them: they are the file).
#[cfg(test)]
pub(crate) fn resident_pages(file: &File, offset: u64, len: u64) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `statfs` fills the struct we pass; `mmap` maps `len` bytes of a file we
        // hold open read-only and shared, `mincore` writes one byte per page into `vec`
        // (sized for that), and the mapping is unmapped before returning.
        unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            if libc::fstatfs(file.as_raw_fd(), &mut fs) != 0 || fs.f_type == libc::TMPFS_MAGIC {
                return None;
            }
            let page = libc::sysconf(libc::_SC_PAGESIZE) as u64;
            let (offset, len) = (offset / page * page, len.div_ceil(page) * page);
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            );
            if addr == libc::MAP_FAILED {
                return None;
            }
            let mut vec = vec![0u8; (len / page) as usize];
            let rc = libc::mincore(addr, len as usize, vec.as_mut_ptr());
            libc::munmap(addr, len as usize);
            (rc == 0).then(|| vec.iter().filter(|b| **b & 1 == 1).count())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        None
    }
}
