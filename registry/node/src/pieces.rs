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
//!   partial file if the piece is verified (re-checked against its SHA-1 after the read),
//!   else `416` with `x-berth-piece: missing` ("not yet", not an error of the peer).
//!
//! Why a file of our own and not the registry's staging file: pieces arrive out of order
//! (rarest first, so that N cold nodes fetch *different* pieces), while the registry's
//! upload writer hashes its staging file in order. The partial file costs one more write per
//! blob (usually page cache only: the file is deleted once the blob is committed) and keeps
//! memory bounded: no piece waits in RAM for its turn.
//!
//! Invariants:
//! - A bit is set only after the piece's bytes were written at its offset and matched its
//!   SHA-1; a served piece is hashed again after it is read back.
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

/// One blob being fetched: its piece file and what is in it.
pub struct Partial {
    /// The blob.
    pub digest: Digest,
    /// Its pieces.
    pub info: PieceInfo,
    /// Whether anonymous users may read the repository it is fetched for.
    pub public: bool,
    file: std::fs::File,
    path: PathBuf,
    /// Verified pieces.
    have: Mutex<Vec<bool>>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Partial {
    /// Whether piece `i` is verified and written.
    pub fn has(&self, i: usize) -> bool {
        lock(&self.have).get(i).copied().unwrap_or(false)
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

    /// Writes piece `i` (already checked against its SHA-1 by the caller, checked again
    /// here) and sets its bit. Blocking.
    pub fn store(&self, i: usize, bytes: &[u8], origin: Origin) -> std::io::Result<()> {
        let hash: [u8; 20] = sha1::Sha1::digest(bytes).into();
        if self.info.hashes.get(i) != Some(&hash) {
            return Err(std::io::Error::other(format!(
                "piece {i} does not match its SHA-1"
            )));
        }
        let (start, _) = self.info.range(i);
        self.file.write_all_at(bytes, start)?;
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

    /// Reads verified piece `i` back, re-checking its SHA-1. Blocking.
    pub fn read(&self, i: usize) -> std::io::Result<Option<Bytes>> {
        if !self.has(i) {
            return Ok(None);
        }
        let (start, end) = self.info.range(i);
        let mut buf = vec![0u8; (end - start + 1) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        let hash: [u8; 20] = sha1::Sha1::digest(&buf).into();
        if self.info.hashes.get(i) != Some(&hash) {
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
        let n = info.hashes.len();
        let partial = Arc::new(Partial {
            digest: digest.clone(),
            info,
            public,
            file,
            path,
            have: Mutex::new(vec![false; n]),
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
        assert!(
            p.store(1, &data[..1000], Origin::Peer).is_err(),
            "wrong bytes refused"
        );
        assert!(!p.has(1));
        p.store(1, &data[1000..2000], Origin::Upstream)
            .expect("store");
        assert!(p.has(1) && !p.complete());
        assert_eq!(p.read(1).expect("read").as_deref(), Some(&data[1000..2000]));
        p.store(0, &data[..1000], Origin::Peer).expect("store");
        p.store(2, &data[2000..], Origin::Peer).expect("store");
        assert!(p.complete());
        assert_eq!(p.origin_at(1000), Origin::Upstream);
        assert_eq!(p.origin_at(2000), Origin::Peer);
        assert_eq!(p.describe()["have"], "e0");
        let path = dir.path().join("p").join(format!("sha256-{}", d.hex()));
        assert!(path.exists());
        partials.end(&d);
        drop(p);
        assert!(!path.exists(), "the file goes with the fetch");
    }
}
