//! Share while downloading: the verified pieces of blobs this node is still fetching.
//!
//! The principal type is [`Partials`], the node's table of fetches in progress. Each
//! [`Partial`] owns a sparse file under `<data_dir>/p2p-partial/` into which a fetch writes
//! every piece *after* its SHA-1 matched the torrent's; its have-bitfield says which pieces
//! are there. While the fetch runs, other nodes may
//! - ask `GET /berth/v1/pieces/<repo>/blobs/<digest>` (with `x-berth-peer`) for the
//!   have-bitfield (and the pieces this node is taking from the upstream, so that they take
//!   *other* pieces from it), and
//! - `GET /v2/<repo>/blobs/<digest>` with `Range` of exactly one piece: answered from the
//!   partial file if the piece is verified (re-checked against the CRC32 taken when it was
//!   stored), else `416` with `x-berth-piece: missing` ("not yet", not an error of the peer).
//!
//! Why a file of our own and not an ordinary staging file: pieces arrive out of order
//! (rarest first, so that N cold nodes fetch *different* pieces), while the registry's
//! upload writer hashes in order. So pieces land here at their offsets, the registry is fed
//! them in order by reading them back (CRC-checked), hashes them, and then *adopts this very
//! file* as its staging file (`FetchedBlob::stored_in`, `UploadWriter::create_over`, a hard
//! link): every byte is written to disk once, and no piece waits in RAM for its turn. A
//! piece is written at most once, so the adopted file does not change under the commit.
//!
//! Invariants:
//! - A bit is set only after the piece's bytes were written at its offset and matched its
//!   SHA-1: [`Partial::store`] takes a [`VerifiedPiece`], which only [`VerifiedPiece::check`]
//!   makes. SHA-1 runs once per received piece; a piece read back (for the registry's
//!   stream or for a peer) is checked against the CRC32 of the verified bytes, which catches
//!   a change on disk at memory speed (the same policy as the blob store's chunk reads).
//! - Only partials of repositories anonymous users may read are announced or served
//!   ([`Partial::public`]); private fetches are neither, and requests for them fall through
//!   to the registry (which enforces authorization and has no such blob yet: 404).
//! - The table holds at most [`PARTIALS_MAX`] fetches; the partial file is removed when the
//!   fetch ends (after the blob was committed, or on failure).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use berth_oci::Digest;
use berth_registry::lock;
use berth_registry::source::Origin;
use bytes::Bytes;
use sha1::Digest as _;

/// Fetches in progress held at once (each is a file descriptor and a bitfield).
pub const PARTIALS_MAX: usize = 256;
/// Header of a `416` answer for a piece this node does not have yet.
pub const PIECE_HEADER: &str = "x-berth-piece";

/// Piece layout and hashes of one blob, from a `.torrent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceInfo {
    /// Blob length in bytes.
    pub len: u64,
    /// Piece length in bytes (the last piece may be shorter).
    pub piece_len: u64,
    /// SHA-1 of every piece.
    pub hashes: Vec<[u8; 20]>,
}

impl PieceInfo {
    /// Byte range `[start, end]` (inclusive) of piece `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.piece_len;
        (start, (start + self.piece_len).min(self.len) - 1)
    }

    /// The piece a `[start, end]` range covers exactly, if it covers exactly one.
    pub fn piece_of(&self, start: u64, end: u64) -> Option<usize> {
        if !start.is_multiple_of(self.piece_len) {
            return None;
        }
        let i = usize::try_from(start / self.piece_len).ok()?;
        (i < self.hashes.len() && self.range(i) == (start, end)).then_some(i)
    }
}

/// A piece whose bytes matched their SHA-1 in the torrent; only [`VerifiedPiece::check`]
/// makes one.
pub struct VerifiedPiece {
    index: usize,
    bytes: Bytes,
}

impl VerifiedPiece {
    /// `bytes` as piece `index` of `info`, if their SHA-1 is the torrent's.
    pub fn check(info: &PieceInfo, index: usize, bytes: Bytes) -> Option<VerifiedPiece> {
        let hash: [u8; 20] = sha1::Sha1::digest(&bytes).into();
        (info.hashes.get(index) == Some(&hash)).then_some(VerifiedPiece { index, bytes })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// One blob being fetched: its piece file and what is in it.
pub struct Partial {
    /// The blob.
    pub digest: Digest,
    /// Its pieces.
    pub info: PieceInfo,
    /// Whether anonymous users may read the repository it is fetched for.
    pub public: bool,
    file: std::fs::File,
    /// The same file opened with `O_DIRECT` (when the file system allows it): aligned pieces
    /// are written and read through it, bypassing the page cache (see [`DirectIo`]).
    direct: Option<std::fs::File>,
    path: PathBuf,
    /// Verified pieces.
    have: Mutex<Vec<bool>>,
    /// CRC32 of each verified piece as written (checked when it is read back).
    crcs: Mutex<Vec<u32>>,
    /// Pieces being fetched from the upstream right now (told to peers).
    upstream: Mutex<Vec<bool>>,
    /// Where each verified piece came from (for `berth_blob_bytes_total{source}`).
    origins: Mutex<Vec<Origin>>,
    have_count: AtomicUsize,
    /// The next piece the registry reads (pieces in order from here are urgent).
    next_emit: AtomicUsize,
    /// Woken when a piece lands (or the fetch fails).
    pub landed: tokio::sync::Notify,
    /// Set when the fetch failed: nothing more will land.
    pub failed: AtomicBool,
}

impl Partial {
    /// Whether piece `i` is verified and written.
    pub fn has(&self, i: usize) -> bool {
        lock(&self.have).get(i).copied().unwrap_or(false)
    }

    /// The piece file (the registry adopts it as the blob's staging file once the pieces
    /// are streamed: see `FetchedBlob::stored_in`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Verified pieces so far.
    pub fn have_count(&self) -> usize {
        self.have_count.load(Ordering::Acquire)
    }

    /// The next piece the registry will read.
    pub fn next_emit(&self) -> usize {
        self.next_emit.load(Ordering::Acquire)
    }

    /// Records the registry's read position.
    pub fn set_next_emit(&self, i: usize) {
        self.next_emit.store(i, Ordering::Release);
    }

    /// Whether every piece is here.
    pub fn complete(&self) -> bool {
        self.have_count() == self.info.hashes.len()
    }

    /// Marks piece `i` as being fetched from the upstream (or not).
    pub fn set_upstream(&self, i: usize, on: bool) {
        if let Some(b) = lock(&self.upstream).get_mut(i) {
            *b = on;
        }
    }

    /// Writes a verified piece and sets its bit; a piece already here is not written again
    /// (the file becomes the blob once all are streamed). Blocking.
    pub fn store(&self, piece: VerifiedPiece, origin: Origin) -> std::io::Result<()> {
        let i = piece.index;
        if self.has(i) {
            return Ok(());
        }
        let (start, end) = self.info.range(i);
        if end - start + 1 != piece.bytes.len() as u64 {
            return Err(std::io::Error::other(format!(
                "piece {i} was verified against another torrent"
            )));
        }
        match self
            .direct
            .as_ref()
            .filter(|_| aligned(start, piece.bytes.len()))
        {
            // A file system may open with O_DIRECT and still refuse the I/O (EINVAL, e.g. a
            // larger block size): then the page cache it is.
            Some(direct) => DirectIo::write_at(direct, &piece.bytes, start).or_else(|e| {
                DirectIo::refused(e, || self.file.write_all_at(&piece.bytes, start))
            })?,
            None => self.file.write_all_at(&piece.bytes, start)?,
        }
        if let Some(c) = lock(&self.crcs).get_mut(i) {
            *c = crc32fast::hash(&piece.bytes);
        }
        if let Some(o) = lock(&self.origins).get_mut(i) {
            *o = origin;
        }
        let newly = {
            let mut have = lock(&self.have);
            match have.get_mut(i) {
                Some(b) if !*b => {
                    *b = true;
                    true
                }
                _ => false,
            }
        };
        if newly {
            self.have_count.fetch_add(1, Ordering::AcqRel);
        }
        self.set_upstream(i, false);
        self.landed.notify_waiters();
        Ok(())
    }

    /// Where the piece starting at byte `offset` came from.
    pub fn origin_at(&self, offset: u64) -> Origin {
        let i = usize::try_from(offset / self.info.piece_len).unwrap_or(usize::MAX);
        lock(&self.origins).get(i).copied().unwrap_or(Origin::Peer)
    }

    /// Reads verified piece `i` back, checking the CRC32 it was stored with. Blocking.
    pub fn read(&self, i: usize) -> std::io::Result<Option<Bytes>> {
        if !self.has(i) {
            return Ok(None);
        }
        let (start, end) = self.info.range(i);
        let mut buf = vec![0u8; (end - start + 1) as usize];
        match self.direct.as_ref().filter(|_| aligned(start, buf.len())) {
            Some(direct) => DirectIo::read_at(direct, &mut buf, start)
                .or_else(|e| DirectIo::refused(e, || self.file.read_exact_at(&mut buf, start)))?,
            None => self.file.read_exact_at(&mut buf, start)?,
        }
        let stored = lock(&self.crcs).get(i).copied();
        if stored != Some(crc32fast::hash(&buf)) {
            return Err(std::io::Error::other(format!(
                "piece {i} of {} changed on disk",
                self.digest
            )));
        }
        Ok(Some(Bytes::from(buf)))
    }

    /// The JSON answer of the pieces endpoint: counts and hex bitfields (MSB first, as in
    /// BitTorrent's `bitfield` message).
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "complete": self.complete(),
            "pieces": self.info.hashes.len(),
            "piece_length": self.info.piece_len,
            "length": self.info.len,
            "have": encode_bits(&lock(&self.have)),
            "upstream": encode_bits(&lock(&self.upstream)),
        })
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove partial file");
            }
        }
    }
}

/// Alignment of `O_DIRECT` offsets, lengths and buffers (the logical block size of the file
/// systems berth runs on; a larger one makes `O_DIRECT` I/O fail, and the file is then
/// used buffered).
const DIRECT_ALIGN: usize = 4096;

fn aligned(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(DIRECT_ALIGN as u64) && len.is_multiple_of(DIRECT_ALIGN) && len > 0
}

/// Piece I/O that bypasses the page cache. Why: every byte of a fetched blob is written here
/// once and read back once or twice (the registry's stream, peers), and on this project's VMs
/// writing into fresh page-cache pages ran at ~0.7 GB/s (the hypervisor backs guest memory
/// lazily and takes freed pages back): in a 16-node fleet pull, that copy was 35% of all
/// CPU samples (docs/benchmarks.md). With `O_DIRECT` the bytes go by DMA between the disk
/// and one reused, aligned buffer per thread. The last piece (unaligned length) and file
/// systems without `O_DIRECT` use the ordinary file.
struct DirectIo;

thread_local! {
    static DIRECT_BUF: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
}

/// A heap buffer with an aligned window of at least `len` bytes (over-allocated by
/// [`DIRECT_ALIGN`], so no `unsafe` allocation is needed).
struct AlignedBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        AlignedBuf {
            bytes: vec![0u8; len + DIRECT_ALIGN],
            len,
        }
    }

    fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        let skip = self.bytes.as_ptr().align_offset(DIRECT_ALIGN);
        &mut self.bytes[skip..skip + len.min(self.len)]
    }
}

impl DirectIo {
    /// Opens `path` again with `O_DIRECT`; `None` where the file system refuses it.
    fn open(path: &std::path::Path) -> Option<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .ok()
    }

    fn with_buf<T>(
        len: usize,
        f: impl FnOnce(&mut [u8]) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        DIRECT_BUF.with(|cell| {
            let mut slot = cell.borrow_mut();
            let buf = match slot.as_mut() {
                Some(b) if b.len >= len => b,
                _ => slot.insert(AlignedBuf::new(len)),
            };
            f(buf.as_mut_slice(len))
        })
    }

    /// `buffered()` instead, if `e` is the file system refusing direct I/O; else `e`.
    fn refused(
        e: std::io::Error,
        buffered: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            tracing::debug!(error = %e, "O_DIRECT refused; using the page cache");
            buffered()
        } else {
            Err(e)
        }
    }

    fn write_at(file: &std::fs::File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        DirectIo::with_buf(bytes.len(), |buf| {
            buf.copy_from_slice(bytes);
            file.write_all_at(buf, offset)
        })
    }

    fn read_at(file: &std::fs::File, out: &mut [u8], offset: u64) -> std::io::Result<()> {
        DirectIo::with_buf(out.len(), |buf| {
            file.read_exact_at(buf, offset)?;
            out.copy_from_slice(buf);
            Ok(())
        })
    }
}

/// Bits as lower-case hex, 8 per byte, most significant bit first.
pub fn encode_bits(bits: &[bool]) -> String {
    let mut out = String::with_capacity(bits.len().div_ceil(4));
    for chunk in bits.chunks(8) {
        let mut byte = 0u8;
        for (k, &b) in chunk.iter().enumerate() {
            if b {
                byte |= 0x80 >> k;
            }
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The inverse of [`encode_bits`] for `n` bits; `None` when the text is malformed.
pub fn decode_bits(hex: &str, n: usize) -> Option<Vec<bool>> {
    if hex.len() != n.div_ceil(8) * 2 {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n.div_ceil(8) {
        let byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        for k in 0..8 {
            if out.len() < n {
                out.push(byte & (0x80 >> k) != 0);
            }
        }
    }
    Some(out)
}

/// The node's fetches in progress (see the module documentation).
pub struct Partials {
    dir: PathBuf,
    table: Mutex<HashMap<Digest, Arc<Partial>>>,
}

impl Partials {
    /// A table whose files live in `dir` (emptied: leftovers of a previous run are junk).
    pub fn open(dir: PathBuf) -> std::io::Result<Partials> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Partials {
            dir,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Registers a new fetch of `digest`; `None` when one is registered already or the
    /// table is full. Blocking (creates the file).
    pub fn begin(
        &self,
        digest: &Digest,
        info: PieceInfo,
        public: bool,
    ) -> std::io::Result<Option<Arc<Partial>>> {
        let mut table = lock(&self.table);
        if table.contains_key(digest) || table.len() >= PARTIALS_MAX {
            return Ok(None);
        }
        let path = self
            .dir
            .join(format!("{}-{}", digest.algorithm().as_str(), digest.hex()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.set_len(info.len)?;
        let direct = DirectIo::open(&path);
        let n = info.hashes.len();
        let partial = Arc::new(Partial {
            digest: digest.clone(),
            info,
            public,
            file,
            direct,
            path,
            have: Mutex::new(vec![false; n]),
            crcs: Mutex::new(vec![0; n]),
            upstream: Mutex::new(vec![false; n]),
            origins: Mutex::new(vec![Origin::Peer; n]),
            have_count: AtomicUsize::new(0),
            next_emit: AtomicUsize::new(0),
            landed: tokio::sync::Notify::new(),
            failed: AtomicBool::new(false),
        });
        table.insert(digest.clone(), partial.clone());
        Ok(Some(partial))
    }

    /// The fetch of `digest` in progress, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Partial>> {
        lock(&self.table).get(digest).cloned()
    }

    /// Forgets the fetch of `digest` (its file goes when the last reader drops it).
    pub fn end(&self, digest: &Digest) {
        lock(&self.table).remove(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfields_round_trip() {
        for n in [0usize, 1, 7, 8, 9, 17, 512] {
            let bits: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
            let hex = encode_bits(&bits);
            assert_eq!(hex.len(), n.div_ceil(8) * 2);
            assert_eq!(decode_bits(&hex, n), Some(bits));
        }
        assert_eq!(
            encode_bits(&[true, false, false, false, false, false, false, true, true]),
            "8180"
        );
        assert_eq!(decode_bits("zz", 8), None);
        assert_eq!(decode_bits("ff", 9), None);
    }

    /// Aligned pieces go through `O_DIRECT` (where the file system allows it), the short
    /// last piece through the page cache; both read back intact, and a change on disk is
    /// caught either way.
    #[test]
    fn aligned_pieces_round_trip_through_direct_io() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partials = Partials::open(dir.path().join("p")).expect("open");
        let piece_len = 16 * DIRECT_ALIGN;
        let data: Vec<u8> = (0..3 * piece_len + 123).map(|i| (i % 249) as u8).collect();
        let hashes = data
            .chunks(piece_len)
            .map(|c| sha1::Sha1::digest(c).into())
            .collect();
        let info = PieceInfo {
            len: data.len() as u64,
            piece_len: piece_len as u64,
            hashes,
        };
        let d = Digest::of(berth_oci::Algorithm::Sha256, &data);
        let p = partials.begin(&d, info, true).expect("begin").expect("new");
        eprintln!("O_DIRECT available here: {}", p.direct.is_some());
        for (i, c) in data.chunks(piece_len).enumerate().rev() {
            let piece = VerifiedPiece::check(&p.info, i, Bytes::copy_from_slice(c));
            p.store(piece.expect("verified"), Origin::Peer)
                .expect("store");
        }
        for (i, c) in data.chunks(piece_len).enumerate() {
            assert_eq!(p.read(i).expect("read").as_deref(), Some(c), "piece {i}");
        }
        assert_eq!(std::fs::read(p.path()).expect("file"), data);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(p.path())
            .expect("open partial");
        for at in [piece_len + 5, 3 * piece_len + 7] {
            file.write_all_at(&[data[at] ^ 1], at as u64).expect("flip");
            assert!(p.read(at / piece_len).is_err(), "flip at {at} caught");
            file.write_all_at(&[data[at]], at as u64).expect("restore");
        }
    }

    #[test]
    fn only_exact_pieces_are_served() {
        let info = PieceInfo {
            len: 2500,
            piece_len: 1000,
            hashes: vec![[0; 20]; 3],
        };
        assert_eq!(info.piece_of(0, 999), Some(0));
        assert_eq!(info.piece_of(2000, 2499), Some(2));
        assert_eq!(info.piece_of(2000, 2999), None);
        assert_eq!(info.piece_of(1, 999), None);
        assert_eq!(info.piece_of(0, 1999), None);
        assert_eq!(info.piece_of(3000, 3999), None);
    }

    #[test]
    fn a_piece_is_visible_only_once_verified_and_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let partials = Partials::open(dir.path().join("p")).expect("open");
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let hashes = data
            .chunks(1000)
            .map(|c| sha1::Sha1::digest(c).into())
            .collect();
        let info = PieceInfo {
            len: 2500,
            piece_len: 1000,
            hashes,
        };
        let d = Digest::of(berth_oci::Algorithm::Sha256, &data);
        let p = partials
            .begin(&d, info.clone(), true)
            .expect("begin")
            .expect("new");
        assert!(partials.begin(&d, info, true).expect("again").is_none());
        assert_eq!(p.read(1).expect("read"), None);
        let piece = |i: usize, range: std::ops::Range<usize>| {
            VerifiedPiece::check(&p.info, i, Bytes::copy_from_slice(&data[range]))
        };
        assert!(piece(1, 0..1000).is_none(), "wrong bytes refused");
        assert!(!p.has(1));
        p.store(piece(1, 1000..2000).expect("verified"), Origin::Upstream)
            .expect("store");
        assert!(p.has(1) && !p.complete());
        assert_eq!(p.read(1).expect("read").as_deref(), Some(&data[1000..2000]));
        // A byte that changes on disk after the piece was verified is caught on read-back.
        let path = dir.path().join("p").join(format!("sha256-{}", d.hex()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open partial");
        file.write_all_at(&[data[1500] ^ 1], 1500).expect("flip");
        assert!(p.read(1).is_err(), "a changed piece is not served");
        file.write_all_at(&[data[1500]], 1500).expect("restore");
        assert!(p.read(1).is_ok());
        p.store(piece(0, 0..1000).expect("verified"), Origin::Peer)
            .expect("store");
        p.store(piece(2, 2000..2500).expect("verified"), Origin::Peer)
            .expect("store");
        assert!(p.complete());
        assert_eq!(p.origin_at(1000), Origin::Upstream);
        assert_eq!(p.origin_at(2000), Origin::Peer);
        assert_eq!(p.describe()["have"], "e0");
        assert!(path.exists());
        partials.end(&d);
        drop(p);
        assert!(!path.exists(), "the file goes with the fetch");
    }
}
