//! The io_uring backend: one small ring per calling thread, driven synchronously.
//!
//! Design (measured in `benches/benches/io_engine.rs`, docs/benchmarks.md): the callers are
//! tokio blocking-pool threads (and sometimes async workers for small blobs). A dedicated
//! ring thread fed by a channel costs a cross-thread wake-up per operation (two futex hops),
//! which dominates a 4 KiB page-cache read; a thread-local ring submits and waits on the
//! caller's own thread with one `io_uring_enter`, and a page-cache read completes inline.
//! Batches (several chunk reads, or a write linked to its fsync) go in one submission, which
//! is where io_uring saves system calls over `pread`/`pwrite`/`fsync`.
//!
//! Safety policy: this module and `writeback.rs` hold the crate's only `unsafe`. The kernel
//! writes into (or reads from) the buffers named by a submitted entry until its completion is
//! reaped, so [`execute`] never returns while an entry it pushed is still in the kernel's
//! hands, on success and on every error path. If the kernel refuses to let us wait for
//! entries it already owns (no such case is known), the process aborts rather than return
//! and free a buffer the kernel may still write.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};

/// Submission queue entries per ring. Small: a ring serves one synchronous caller, whose
/// largest batch is [`BATCH_MAX`]. Each ring costs a few KiB of kernel memory.
const RING_ENTRIES: u32 = 32;
/// Most entries one [`execute`] call submits together.
pub(crate) const BATCH_MAX: usize = 16;
/// Largest single read or write handed to the kernel (it may do less; callers loop).
const OP_LEN_MAX: usize = 1 << 30;
/// Attempts at `io_uring_enter` after a non-transient error before giving up.
const ENTER_RETRIES_MAX: u32 = 100;

/// Whether a failed ring creation was logged already.
static RING_SETUP_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    /// This thread's ring, created on first use. `None` after a failed creation too (the
    /// caller then falls back to std for this call; creation is retried next time).
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Creates a ring and runs a NOP through it, and checks that the kernel knows every opcode
/// this module submits (READ/WRITE need Linux 5.6). The error names the reason: `EPERM` or
/// `ENOSYS` from a seccomp profile or an old kernel, `ENOMEM` from a locked-memory limit.
pub(crate) fn probe() -> io::Result<()> {
    let mut ring = IoUring::new(4)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (name, code) in [
        ("NOP", opcode::Nop::CODE),
        ("READ", opcode::Read::CODE),
        ("WRITE", opcode::Write::CODE),
        ("FSYNC", opcode::Fsync::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks IORING_OP_{name}"),
            ));
        }
    }
    let mut result = [0i32];
    // SAFETY: a NOP names no buffer and no descriptor.
    unsafe { execute(&mut ring, &[opcode::Nop::new().build()], &mut result) }
        .map_err(|e| e.into_io())?;
    if result[0] != 0 {
        return Err(io::Error::from_raw_os_error(-result[0]));
    }
    Ok(())
}

/// Why [`execute`] failed.
enum ExecError {
    /// The ring can no longer be trusted (entries left in its submission queue that the
    /// kernel never saw): drop it.
    Poisoned(io::Error),
}

impl ExecError {
    fn into_io(self) -> io::Error {
        match self {
            ExecError::Poisoned(e) => e,
        }
    }
}

/// Submits `entries` (user data is overwritten with their index) and waits for all their
/// completions, storing each result (bytes, or `-errno`) in `results`.
///
/// # Safety
/// Every buffer and descriptor that `entries` refer to must stay valid, and a read's buffer
/// must not be accessed, until this function returns. It returns only once the kernel has
/// completed every entry it accepted.
unsafe fn execute(
    ring: &mut IoUring,
    entries: &[squeue::Entry],
    results: &mut [i32],
) -> Result<(), ExecError> {
    assert!(entries.len() <= BATCH_MAX && results.len() == entries.len());
    {
        let mut sq = ring.submission();
        // The ring is idle between calls (every call drains its completions), so an empty
        // queue with room for the whole batch is an invariant; check it before pushing any
        // entry, so a failure never leaves half a batch queued.
        if sq.capacity() - sq.len() < entries.len() {
            return Err(ExecError::Poisoned(io::Error::other(
                "io_uring submission queue unexpectedly full",
            )));
        }
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.clone().user_data(index as u64);
            // SAFETY: the caller guarantees the entry's buffers outlive this call, and we
            // wait below for its completion before returning.
            if unsafe { sq.push(&entry) }.is_err() {
                // Room was checked above; a broken invariant of ours, with entries possibly
                // queued that name caller buffers: do not return.
                std::process::abort();
            }
        }
    }
    let mut pending = entries.len();
    let mut failures = 0u32;
    while pending > 0 {
        if let Err(e) = ring.submit_and_wait(pending) {
            let transient = matches!(
                e.raw_os_error(),
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
            );
            if !transient {
                failures += 1;
                let unseen = ring.submission().len();
                if unseen == pending {
                    // The kernel accepted none of the outstanding entries: no buffer is in
                    // its hands. The queued ones must never be submitted later: poison.
                    return Err(ExecError::Poisoned(e));
                }
                if failures >= ENTER_RETRIES_MAX {
                    tracing::error!(error = %e, "io_uring_enter keeps failing with I/O in flight; aborting");
                    std::process::abort();
                }
            }
        }
        for cqe in ring.completion() {
            let index = cqe.user_data() as usize;
            if let Some(slot) = results.get_mut(index) {
                *slot = cqe.result();
                pending -= 1;
            }
        }
    }
    Ok(())
}

/// Runs `f` with this thread's ring; `None` if no ring can be created on this thread.
fn with_ring<T>(f: impl FnOnce(&mut IoUring) -> Result<T, ExecError>) -> Option<io::Result<T>> {
    // `try_with`: during thread teardown the ring may be gone already; use std then.
    RING.try_with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return None; // re-entered (cannot happen: no callbacks run inside); use std
        };
        let ring = match &mut *slot {
            Some(ring) => ring,
            None => match IoUring::new(RING_ENTRIES) {
                Ok(ring) => slot.insert(ring),
                Err(e) => {
                    // Once per process: a locked-memory limit would otherwise log per call.
                    if !RING_SETUP_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(error = %e, "cannot create an io_uring on a thread; that thread uses std I/O until one can be created");
                    }
                    return None;
                }
            },
        };
        match f(ring) {
            Ok(value) => Some(Ok(value)),
            Err(ExecError::Poisoned(e)) => {
                *slot = None;
                Some(Err(e))
            }
        }
    })
    .ok()
    .flatten()
}

fn to_io(result: i32) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::from_raw_os_error(-result))
    } else {
        Ok(result as usize)
    }
}

/// One `IORING_OP_READ` at `offset`; returns bytes read (short at end of file).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> Option<io::Result<usize>> {
    let len = buf.len().min(OP_LEN_MAX) as u32;
    let entry = opcode::Read::new(types::Fd(file.as_raw_fd()), buf.as_mut_ptr(), len)
        .offset(offset)
        .build();
    with_ring(|ring| {
        let mut result = [0i32];
        // SAFETY: `buf` is borrowed mutably for this whole call and `file` is open; execute
        // returns only after the read completed.
        unsafe { execute(ring, &[entry], &mut result) }?;
        Ok(result[0])
    })
    .map(|r| r.and_then(to_io))
}

/// Reads several ranges of `file` in one submission: `bufs[i]` from `offsets[i]`. Each
/// result is bytes read (short at end of file) or the error of that read.
pub(crate) fn read_many_at(
    file: &File,
    bufs: &mut [&mut [u8]],
    offsets: &[u64],
) -> Option<io::Result<Vec<io::Result<usize>>>> {
    assert!(bufs.len() <= BATCH_MAX && bufs.len() == offsets.len());
    let fd = types::Fd(file.as_raw_fd());
    let entries: Vec<squeue::Entry> = bufs
        .iter_mut()
        .zip(offsets)
        .map(|(buf, &offset)| {
            let len = buf.len().min(OP_LEN_MAX) as u32;
            opcode::Read::new(fd, buf.as_mut_ptr(), len)
                .offset(offset)
                .build()
        })
        .collect();
    with_ring(|ring| {
        let mut results = vec![0i32; entries.len()];
        // SAFETY: every buffer in `bufs` is borrowed mutably for this whole call and `file`
        // is open; execute returns only after every read completed.
        unsafe { execute(ring, &entries, &mut results) }?;
        Ok(results.into_iter().map(to_io).collect())
    })
}

/// One `IORING_OP_WRITE` at `offset`; returns bytes written (possibly short).
pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64) -> Option<io::Result<usize>> {
    let len = buf.len().min(OP_LEN_MAX) as u32;
    let entry = opcode::Write::new(types::Fd(file.as_raw_fd()), buf.as_ptr(), len)
        .offset(offset)
        .build();
    with_ring(|ring| {
        let mut result = [0i32];
        // SAFETY: `buf` is borrowed for this whole call and `file` is open; execute returns
        // only after the write completed.
        unsafe { execute(ring, &[entry], &mut result) }?;
        Ok(result[0])
    })
    .map(|r| r.and_then(to_io))
}

/// `IORING_OP_FSYNC` (`fdatasync` semantics with `data_only`).
pub(crate) fn fsync(file: &File, data_only: bool) -> Option<io::Result<()>> {
    let entry = fsync_entry(file, data_only);
    with_ring(|ring| {
        let mut result = [0i32];
        // SAFETY: an fsync names no buffer; `file` is open for this whole call.
        unsafe { execute(ring, &[entry], &mut result) }?;
        Ok(result[0])
    })
    .map(|r| r.and_then(to_io).map(drop))
}

/// Fsyncs several files in one submission; the kernel runs them concurrently (on ext4 they
/// can share one journal commit). One result per file.
pub(crate) fn fsync_many(files: &[&File]) -> Option<io::Result<Vec<io::Result<()>>>> {
    assert!(files.len() <= BATCH_MAX);
    let entries: Vec<squeue::Entry> = files.iter().map(|f| fsync_entry(f, false)).collect();
    with_ring(|ring| {
        let mut results = vec![0i32; entries.len()];
        // SAFETY: fsyncs name no buffer; every file in `files` is open for this whole call.
        unsafe { execute(ring, &entries, &mut results) }?;
        Ok(results.into_iter().map(|r| to_io(r).map(drop)).collect())
    })
}

fn fsync_entry(file: &File, data_only: bool) -> squeue::Entry {
    let flags = if data_only {
        types::FsyncFlags::DATASYNC
    } else {
        types::FsyncFlags::empty()
    };
    opcode::Fsync::new(types::Fd(file.as_raw_fd()))
        .flags(flags)
        .build()
}

/// A write at `offset` linked to an fsync of the file (`IOSQE_IO_LINK`): one system call for
/// both. Returns the write's result and the fsync's; a short write cancels the fsync
/// (`ECANCELED`), and the caller finishes the job with separate calls.
pub(crate) fn write_at_then_fsync(
    file: &File,
    buf: &[u8],
    offset: u64,
) -> Option<io::Result<(io::Result<usize>, io::Result<()>)>> {
    let len = buf.len().min(OP_LEN_MAX) as u32;
    let write = opcode::Write::new(types::Fd(file.as_raw_fd()), buf.as_ptr(), len)
        .offset(offset)
        .build()
        .flags(squeue::Flags::IO_LINK);
    let sync = fsync_entry(file, false);
    with_ring(|ring| {
        let mut results = [0i32; 2];
        // SAFETY: `buf` is borrowed for this whole call and `file` is open; execute returns
        // only after both linked entries completed (or were cancelled).
        unsafe { execute(ring, &[write, sync], &mut results) }?;
        Ok((to_io(results[0]), to_io(results[1]).map(drop)))
    })
}
