//! Zero-copy blob bodies: file → socket with `sendfile(2)`, underneath hyper.
//!
//! The principal types are [`SendfileIo`], the I/O wrapper around each accepted TCP
//! connection, and [`ZeroCopy`], the request extension that tells a handler its response
//! may carry file regions. [`file_region`] makes the frames.
//!
//! hyper owns the connection and writes a body from `Bytes` frames, so a file region cannot
//! be handed to it as such. Instead a blob body yields *region frames*: `Bytes` whose memory
//! is a 1 MiB slot of a reserved zero area that nobody ever reads, owned by a [`Region`]
//! (an open file and an offset). When hyper writes, [`SendfileIo`] recognises a slice inside
//! the area by its address — slot = (address − base) / 1 MiB, bytes already written =
//! (address − base) mod 1 MiB — and instead of copying the slice it calls `sendfile(2)` for
//! the same number of bytes from the region's file. hyper sees an ordinary write of that
//! many bytes, so its `Content-Length` accounting is untouched. The zero area is allocated
//! with `calloc` and never touched, so it costs address space, not memory.
//!
//! Invariants:
//! - Region frames are produced only for requests carrying [`ZeroCopy`], which only the
//!   node's server loop inserts, and that loop forces hyper's vectored-write ("queue")
//!   strategy, under which hyper hands our frames to the socket by reference and never
//!   copies them into its own buffer (a copied region frame would put zeros on the wire).
//! - A frame's slot is released when the frame is dropped, written or not; when all slots
//!   are in use [`file_region`] returns `None` and the caller sends the bytes it read.
//! - Callers check the bytes (crc32 of the chunk) before they make the frame.
//! - A file shorter than its region is an error, never a short body.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};

use crate::lock;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Largest region frame (one blob chunk).
pub const SLOT_SIZE: usize = 1 << 20;
/// Region frames alive at once, process-wide (each in-flight download holds a few: its
/// read-ahead queue plus what hyper has buffered). 256 MiB of address space, no memory.
const SLOTS: usize = 256;

/// Request extension: the response may carry region frames (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct ZeroCopy;

struct Area {
    zeros: &'static [u8],
    regions: Vec<Mutex<Option<Region>>>,
    free: Mutex<Vec<usize>>,
}

/// Where a region frame's bytes come from.
#[derive(Clone)]
struct Region {
    file: Arc<File>,
    offset: u64,
}

fn area() -> &'static Area {
    static AREA: OnceLock<Area> = OnceLock::new();
    AREA.get_or_init(|| Area {
        // calloc: fresh zero pages from mmap, never written or read, so never resident.
        zeros: vec![0u8; SLOTS * SLOT_SIZE].leak(),
        regions: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        free: Mutex::new((0..SLOTS).rev().collect()),
    })
}

/// Owner of a region frame's slot; releases it when the frame is dropped.
struct SlotGuard {
    slot: usize,
    len: usize,
}

impl AsRef<[u8]> for SlotGuard {
    fn as_ref(&self) -> &[u8] {
        let start = self.slot * SLOT_SIZE;
        &area().zeros[start..start + self.len]
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let a = area();
        *lock(&a.regions[self.slot]) = None;
        lock(&a.free).push(self.slot);
    }
}

/// A frame standing for `len` bytes of `file` at `offset`, to be sent by `sendfile(2)`.
/// `None` when `len` is 0 or over [`SLOT_SIZE`], or when every slot is in use.
pub fn file_region(file: &Arc<File>, offset: u64, len: usize) -> Option<Bytes> {
    if len == 0 || len > SLOT_SIZE {
        return None;
    }
    let a = area();
    let slot = lock(&a.free).pop()?;
    *lock(&a.regions[slot]) = Some(Region {
        file: file.clone(),
        offset,
    });
    Some(Bytes::from_owner(SlotGuard { slot, len }))
}

/// If `buf` lies in the zero area: its region, and how far into the region it starts.
fn region_of(buf: &[u8]) -> Option<io::Result<(Region, u64)>> {
    let a = area();
    let base = a.zeros.as_ptr() as usize;
    let addr = buf.as_ptr() as usize;
    if addr < base || addr >= base + a.zeros.len() {
        return None;
    }
    let (slot, skip) = ((addr - base) / SLOT_SIZE, (addr - base) % SLOT_SIZE);
    Some(match lock(&a.regions[slot]).clone() {
        Some(region) => Ok((region, skip as u64)),
        None => Err(io::Error::other(
            "zero-copy frame written after its slot was freed",
        )),
    })
}

/// A TCP connection whose writes turn region frames into `sendfile(2)` calls.
pub struct SendfileIo {
    inner: TcpStream,
}

impl SendfileIo {
    /// Wraps an accepted connection.
    pub fn new(inner: TcpStream) -> SendfileIo {
        SendfileIo { inner }
    }

    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        region: &Region,
        skip: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let mut offset = region.offset + skip;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.inner, &*region.file, Some(&mut offset), len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file shorter than the response it is sent in",
                    )))
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for SendfileIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match region_of(buf) {
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
            Some(Err(e)) => Poll::Ready(Err(e)),
            Some(Ok((region, skip))) => self.poll_sendfile(cx, &region, skip, buf.len()),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Plain bytes up to the next region frame go out in one writev; a region frame at
        // the front goes out by sendfile. (hyper passes at most 64 slices.)
        let mut plain = [io::IoSlice::new(&[]); 64];
        let mut n = 0;
        for buf in bufs.iter().filter(|b| !b.is_empty()) {
            match region_of(buf) {
                None if n < plain.len() => {
                    plain[n] = *buf;
                    n += 1;
                }
                None => break,
                Some(_) if n > 0 => break,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                Some(Ok((region, skip))) => {
                    return self.poll_sendfile(cx, &region, skip, buf.len())
                }
            }
        }
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, &plain[..n])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The slot pool is process-wide: tests that take slots do not overlap.
    static SLOT_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Region frames mixed with plain frames arrive as the file's bytes, in order.
    #[tokio::test]
    async fn region_frames_are_sent_from_the_file() {
        let _serial = SLOT_TESTS.lock().await;
        let mut tmp = tempfile::tempfile().expect("temp file");
        let content: Vec<u8> = (0..3 * SLOT_SIZE as u32).map(|i| (i % 251) as u8).collect();
        tmp.write_all(&content).expect("write");
        let file = Arc::new(tmp);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        let (sock, _) = listener.accept().await.expect("accept");
        let mut io = SendfileIo::new(sock);
        let frames = [
            Bytes::from_static(b"head:"),
            file_region(&file, 10, SLOT_SIZE).expect("slot"),
            Bytes::from_static(b":mid:"),
            file_region(&file, 2 * SLOT_SIZE as u64 + 7, 1000).expect("slot"),
        ];
        for f in &frames {
            let mut rest: &[u8] = f;
            while !rest.is_empty() {
                let n = io
                    .write_vectored(&[io::IoSlice::new(rest)])
                    .await
                    .expect("write");
                rest = &rest[n..];
            }
        }
        io.shutdown().await.expect("shutdown");
        drop(io);
        let got = reader.await.expect("reader");
        let mut want = b"head:".to_vec();
        want.extend_from_slice(&content[10..10 + SLOT_SIZE]);
        want.extend_from_slice(b":mid:");
        want.extend_from_slice(&content[2 * SLOT_SIZE + 7..2 * SLOT_SIZE + 1007]);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
    }

    /// A region past the end of its file fails the write instead of sending a short body.
    #[tokio::test]
    async fn a_short_file_is_an_error() {
        let _serial = SLOT_TESTS.lock().await;
        let file = Arc::new(tempfile::tempfile().expect("temp file"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (sock, _) = listener.accept().await.expect("accept");
        let mut io = SendfileIo::new(sock);
        let frame = file_region(&file, 0, 4096).expect("slot");
        let err = io.write(&frame).await.expect_err("short file");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Slots come back when frames are dropped; exhaustion answers `None`, not a panic.
    #[test]
    fn slots_are_released_on_drop() {
        let _serial = SLOT_TESTS.blocking_lock();
        let file = Arc::new(tempfile::tempfile().expect("temp file"));
        let held: Vec<Bytes> = std::iter::from_fn(|| file_region(&file, 0, 1)).collect();
        assert!(held.len() <= SLOTS && !held.is_empty());
        assert!(file_region(&file, 0, 1).is_none());
        drop(held);
        assert!(file_region(&file, 0, 1).is_some());
    }
}
