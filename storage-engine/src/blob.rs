//! Content-addressed blob files.
//!
//! Layout under the data directory:
//! - `blobs/<algorithm>/<hex[..2]>/<hex>`: the blob, immutable once renamed in;
//! - `blobs/<algorithm>/<hex[..2]>/<hex>.idx`: its chunk index (crc32 + SHA-1 per MiB);
//! - `uploads/<uuid>/data`: an upload being received (never served).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_oci::{Algorithm, Digest};
use bytes::Bytes;

use crate::caches::{IndexCache, SmallBlobCache, SMALL_BLOB_MAX};
use crate::chunks::{ChunkIndex, CHUNK_SIZE};
use crate::io::IoEngine;
use crate::upload::{UploadId, UploadWriter};

/// What can go wrong in the blob store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The uploaded bytes do not hash to the digest the client claimed.
    #[error("uploaded content has digest {actual}, not {expected}")]
    DigestMismatch {
        /// What the client said.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// No upload session with this id.
    #[error("upload {0} not found")]
    UploadUnknown(String),
    /// Piece hashes given for an upload (`UploadWriter::use_known_piece_sha1s`) do not fit
    /// its bytes, or came too late.
    #[error("piece hashes: {0}")]
    PieceHashes(String),
    /// A stored blob's bytes do not match its checksums.
    #[error("blob {digest} is corrupt: {detail}")]
    Corrupt {
        /// The damaged blob.
        digest: Digest,
        /// What failed.
        detail: String,
    },
}

pub(crate) fn io_err(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> StorageError {
    move |source| StorageError::Io {
        context: context(),
        source,
    }
}

/// An open, immutable blob: the file and its length. Handing out the `File` (rather than a
/// byte stream) lets the server pick how bytes reach the socket: read+write, sendfile or
/// io_uring splice.
#[derive(Debug)]
pub struct BlobFile {
    /// The blob file, opened read-only.
    pub file: File,
    /// Its length in bytes.
    pub len: u64,
}

/// An open blob with its chunk index: reads through it check every chunk's crc32, so a
/// corrupt blob is detected before its bytes are used.
#[derive(Debug)]
pub struct VerifiedBlob {
    /// The blob file, opened read-only.
    pub file: File,
    /// Its length in bytes.
    pub len: u64,
    digest: Digest,
    crcs: Arc<[u32]>,
    engine: IoEngine,
}

impl VerifiedBlob {
    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Length of chunk `chunk` (the last one may be short; past the end, 0).
    pub fn chunk_len(&self, chunk: u64) -> usize {
        CHUNK_SIZE.min(self.len.saturating_sub(chunk * CHUNK_SIZE)) as usize
    }

    /// Reads the whole chunk `chunk` into `buf` (at least [`VerifiedBlob::chunk_len`] long),
    /// checks its crc32 and returns its length.
    pub fn read_chunk(&self, chunk: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let start = chunk * CHUNK_SIZE;
        let len = self.chunk_len(chunk);
        let expected = self.crcs.get(chunk as usize).copied();
        let buf = buf.get_mut(..len).ok_or_else(|| StorageError::Corrupt {
            digest: self.digest.clone(),
            detail: "chunk buffer too small".into(),
        })?;
        self.engine
            .read_exact_at(&self.file, buf, start)
            .map_err(io_err(|| format!("reading blob {}", self.digest)))?;
        if expected != Some(crc32fast::hash(buf)) {
            return Err(StorageError::Corrupt {
                digest: self.digest.clone(),
                detail: format!("chunk {chunk} fails its crc32"),
            });
        }
        Ok(len)
    }

    /// A sequential reader over the whole blob that checks every chunk's crc32 before
    /// handing out its bytes (one chunk buffer of [`CHUNK_SIZE`]). A corrupt chunk is an
    /// `InvalidData` error carrying the [`StorageError::Corrupt`] message.
    pub fn into_reader(self) -> CheckedReader {
        CheckedReader {
            blob: self,
            buf: Vec::new(),
            pos: 0,
            next_chunk: 0,
        }
    }
}

/// See [`VerifiedBlob::into_reader`].
#[derive(Debug)]
pub struct CheckedReader {
    blob: VerifiedBlob,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    pos: usize,
    next_chunk: u64,
}

impl io::Read for CheckedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.next_chunk * CHUNK_SIZE >= self.blob.len {
                return Ok(0);
            }
            let len = self.blob.chunk_len(self.next_chunk);
            // With room for the whole chunk, it is read and checked where the caller wants it
            // (a copy per byte less for callers reading chunk-sized buffers, like the
            // transcoder); on error `out` holds unchecked bytes, as `Read` allows.
            let in_place = out.len() >= len;
            let dest = if in_place {
                &mut *out
            } else {
                self.buf.resize(len, 0);
                self.pos = 0;
                &mut self.buf[..]
            };
            if let Err(e) = self.blob.read_chunk(self.next_chunk, dest) {
                // Nothing of a failed chunk is handed out, whatever the caller does next.
                self.buf.clear();
                self.pos = 0;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            }
            self.next_chunk += 1;
            if in_place {
                return Ok(len);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The content-addressed blob store rooted at a data directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    engine: IoEngine,
    index_cache: IndexCache,
    small_blobs: SmallBlobCache,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `data_dir`, with the process's default I/O
    /// engine ([`crate::io::default_engine`]).
    pub fn open(data_dir: &Path) -> Result<BlobStore, StorageError> {
        BlobStore::open_with(data_dir, crate::io::default_engine())
    }

    /// Opens (creating if needed) the store under `data_dir`, doing blob I/O with `engine`.
    pub fn open_with(data_dir: &Path, engine: IoEngine) -> Result<BlobStore, StorageError> {
        for sub in ["blobs/sha256", "blobs/sha512", "uploads"] {
            let dir = data_dir.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(|| format!("creating {}", dir.display())))?;
        }
        Ok(BlobStore {
            root: data_dir.to_path_buf(),
            engine,
            index_cache: crate::caches::index_cache(),
            small_blobs: crate::caches::small_blob_cache(),
        })
    }

    /// The I/O engine this store uses.
    pub fn engine(&self) -> IoEngine {
        self.engine
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn shard_dir(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&digest.hex()[..2])
    }

    /// Where a blob's bytes live (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.shard_dir(digest).join(digest.hex())
    }

    fn index_path(&self, digest: &Digest) -> PathBuf {
        self.shard_dir(digest).join(format!("{}.idx", digest.hex()))
    }

    pub(crate) fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }

    /// The blob's size, if it is stored.
    pub fn stat(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(|| format!("stat {}", path.display()))(e)),
        }
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<BlobFile>, StorageError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(|| format!("opening {}", path.display()))(e)),
        };
        let len = file
            .metadata()
            .map_err(io_err(|| format!("stat {}", path.display())))?
            .len();
        Ok(Some(BlobFile { file, len }))
    }

    /// Opens a stored blob with its chunk index for checked reads. A blob whose index is
    /// missing or does not cover it exactly is reported corrupt (the index is renamed into
    /// place before the blob, so a stored blob always has one).
    pub fn open_verified(&self, digest: &Digest) -> Result<Option<VerifiedBlob>, StorageError> {
        let Some(BlobFile { file, len }) = self.open_blob(digest)? else {
            return Ok(None);
        };
        let corrupt = |detail: &str| StorageError::Corrupt {
            digest: digest.clone(),
            detail: detail.to_owned(),
        };
        let crcs = match self.index_cache.get(digest) {
            Some(crcs) => crcs,
            None => {
                let crcs: Arc<[u32]> = self
                    .read_index(digest)?
                    .ok_or_else(|| corrupt("chunk index missing"))?
                    .crcs
                    .into();
                self.index_cache.insert(digest, crcs.clone());
                crcs
            }
        };
        // Checked on every open, cached crcs or not: a blob whose length changed under its
        // index is corrupt.
        if crcs.len() as u64 != len.div_ceil(CHUNK_SIZE) {
            return Err(corrupt("chunk index does not match the blob's length"));
        }
        Ok(Some(VerifiedBlob {
            file,
            len,
            digest: digest.clone(),
            crcs,
            engine: self.engine,
        }))
    }

    /// The whole content of a small blob (at most [`SMALL_BLOB_MAX`] bytes), from memory when
    /// it was read lately, else read from disk (checked against its crc, like every read) and
    /// remembered. `None` when the blob is not stored. A blob larger than the limit is an
    /// error of the caller's: check its size first.
    pub fn read_small(&self, digest: &Digest) -> Result<Option<Bytes>, StorageError> {
        if let Some(bytes) = self.small_blobs.get(digest) {
            return Ok(Some(bytes));
        }
        let Some(blob) = self.open_verified(digest)? else {
            return Ok(None);
        };
        let len = usize::try_from(blob.len)
            .ok()
            .filter(|len| *len <= SMALL_BLOB_MAX)
            .ok_or_else(|| StorageError::Io {
                context: format!("blob {digest} is not small ({} bytes)", blob.len),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })?;
        let mut buf = vec![0u8; len];
        if len > 0 {
            blob.read_chunk(0, &mut buf)?;
        }
        let bytes = Bytes::from(buf);
        self.small_blobs.insert(digest, bytes.clone());
        Ok(Some(bytes))
    }

    /// Moves a corrupt blob and its index to `quarantine/` (kept for inspection, never
    /// served). The next push of the same digest stores a fresh copy.
    pub fn quarantine(&self, digest: &Digest) -> Result<PathBuf, StorageError> {
        self.index_cache.invalidate(digest);
        self.small_blobs.invalidate(digest);
        let dir = self.root.join("quarantine");
        fs::create_dir_all(&dir).map_err(io_err(|| format!("creating {}", dir.display())))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let target = dir.join(format!(
            "{}-{}-{stamp}",
            digest.algorithm().as_str(),
            digest.hex()
        ));
        for (from, suffix) in [
            (self.index_path(digest), ".idx"),
            (self.blob_path(digest), ""),
        ] {
            let to = PathBuf::from(format!("{}{suffix}", target.display()));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(|| format!("quarantining {}", from.display()))(e)),
            }
        }
        sync_dir(self.engine, &self.shard_dir(digest))?;
        tracing::warn!(%digest, to = %target.display(), "corrupt blob quarantined");
        Ok(target)
    }

    /// Verifies `writer`'s bytes against `expected` and, if they match, makes them the durable
    /// blob `expected`. Returns the blob's size. On a mismatch the upload is discarded and
    /// nothing is stored.
    pub fn commit(&self, writer: UploadWriter, expected: &Digest) -> Result<u64, StorageError> {
        let staged = writer.seal()?;
        let actual = if staged.hasher.algorithm() == expected.algorithm() {
            staged.hasher.finish()
        } else {
            hash_file(&staged.data_path, expected.algorithm())?
        };
        let discard = || {
            let _ = fs::remove_dir_all(&staged.dir);
        };
        if &actual != expected {
            discard();
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if self.stat(expected)? == Some(staged.len) {
            // Identical content already stored (a concurrent or earlier upload): keep that one.
            discard();
            return Ok(staged.len);
        }
        let shard = self.shard_dir(expected);
        let created_shard = !shard.exists();
        fs::create_dir_all(&shard).map_err(io_err(|| format!("creating {}", shard.display())))?;
        if created_shard {
            if let Some(parent) = shard.parent() {
                sync_dir(self.engine, parent)?;
            }
        }
        // The blob and its index are fsynced together (one submission with io_uring: the two
        // flushes overlap), both before either is renamed into `blobs/`.
        let index_staging = staged.dir.join("idx");
        let ctx = || format!("writing {}", index_staging.display());
        let index_file = File::create(&index_staging).map_err(io_err(ctx))?;
        self.engine
            .write_all_at(&index_file, &staged.chunks.encode(), 0)
            .map_err(io_err(ctx))?;
        self.engine
            .fsync_all(&[&staged.staging.file, &index_file])
            .map_err(io_err(|| {
                format!("syncing {} and its index", staged.data_path.display())
            }))?;
        rename(&index_staging, &self.index_path(expected))?;
        rename(&staged.data_path, &self.blob_path(expected))?;
        sync_dir(self.engine, &shard)?;
        discard();
        Ok(staged.len)
    }

    /// Reads a blob's chunk index (crc32s and BitTorrent piece hashes).
    pub fn read_index(&self, digest: &Digest) -> Result<Option<ChunkIndex>, StorageError> {
        let path = self.index_path(digest);
        match fs::read(&path) {
            Ok(bytes) => ChunkIndex::decode(&bytes)
                .map(Some)
                .map_err(io_err(|| format!("decoding {}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(|| format!("reading {}", path.display()))(e)),
        }
    }

    /// Checks a stored blob against its chunk checksums and, if `full`, its digest. The index
    /// is read from disk (not the cache), so a damaged sidecar is found too. Chunks are read
    /// [`VERIFY_BATCH`] at a time (one submission with io_uring).
    pub fn verify(&self, digest: &Digest, full: bool) -> Result<(), StorageError> {
        let corrupt = |detail: String| StorageError::Corrupt {
            digest: digest.clone(),
            detail,
        };
        let path = self.blob_path(digest);
        let crcs = self
            .read_index(digest)?
            .ok_or_else(|| corrupt("chunk index missing".into()))?
            .crcs;
        let file = File::open(&path).map_err(io_err(|| format!("opening {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(io_err(|| format!("stat {}", path.display())))?
            .len();
        let chunks = len.div_ceil(CHUNK_SIZE);
        if chunks > crcs.len() as u64 {
            return Err(corrupt("longer than its checksums cover".into()));
        }
        if chunks < crcs.len() as u64 {
            return Err(corrupt("shorter than its checksums cover".into()));
        }
        let mut hasher = digest.algorithm().hasher();
        // A small blob gets a small buffer: zeroing 4 MiB costs more than checking 16 KiB.
        let mut buf = vec![0u8; (VERIFY_BATCH as u64 * CHUNK_SIZE).min(len) as usize];
        for first in (0..chunks).step_by(VERIFY_BATCH) {
            let batch: Vec<u64> = (first..chunks.min(first + VERIFY_BATCH as u64)).collect();
            let lens: Vec<usize> = batch
                .iter()
                .map(|c| CHUNK_SIZE.min(len - c * CHUNK_SIZE) as usize)
                .collect();
            let offsets: Vec<u64> = batch.iter().map(|c| c * CHUNK_SIZE).collect();
            let mut bufs: Vec<&mut [u8]> = buf
                .chunks_mut(CHUNK_SIZE as usize)
                .zip(&lens)
                .map(|(b, &n)| &mut b[..n])
                .collect();
            self.engine
                .read_many_exact_at(&file, &mut bufs, &offsets)
                .map_err(io_err(|| format!("reading {}", path.display())))?;
            for ((chunk, bytes), expected) in batch.iter().zip(&bufs).zip(&crcs[first as usize..]) {
                if crc32fast::hash(bytes) != *expected {
                    return Err(corrupt(format!("chunk {chunk} fails its crc32")));
                }
                if full {
                    hasher.update(bytes);
                }
            }
        }
        if full && &hasher.finish() != digest {
            return Err(corrupt("content does not match its digest".into()));
        }
        Ok(())
    }

    /// Removes a blob (garbage collection). Readers holding it open keep their copy.
    pub fn remove(&self, digest: &Digest) -> Result<(), StorageError> {
        self.index_cache.invalidate(digest);
        self.small_blobs.invalidate(digest);
        for path in [self.blob_path(digest), self.index_path(digest)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(|| format!("removing {}", path.display()))(e)),
            }
        }
        Ok(())
    }

    /// Ids of upload sessions with staging data on disk.
    pub fn staged_upload_ids(&self) -> Result<Vec<String>, StorageError> {
        let dir = self.root.join("uploads");
        let entries =
            fs::read_dir(&dir).map_err(io_err(|| format!("listing {}", dir.display())))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// Verifies every stored blob (see [`BlobStore::verify`]); with `quarantine`, moves each
    /// corrupt one to `quarantine/`.
    pub fn scrub(&self, full: bool, quarantine: bool) -> Result<ScrubReport, StorageError> {
        let mut report = ScrubReport::default();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let top = self.root.join("blobs").join(algorithm.as_str());
            for shard in read_dir_names(&top)? {
                for name in read_dir_names(&top.join(&shard))? {
                    let Ok(digest) = Digest::parse(&format!("{}:{name}", algorithm.as_str()))
                    else {
                        continue; // sidecars and anything that is not a blob
                    };
                    report.checked += 1;
                    report.bytes += self.stat(&digest)?.unwrap_or(0);
                    let detail = match self.verify(&digest, full) {
                        Ok(()) => continue,
                        Err(StorageError::Corrupt { detail, .. }) => detail,
                        Err(e) => e.to_string(),
                    };
                    if quarantine {
                        self.quarantine(&digest)?;
                        report.quarantined += 1;
                    }
                    report.corrupt.push((digest, detail));
                }
            }
        }
        Ok(report)
    }

    /// Bytes an upload session has on disk, if it exists.
    pub fn staged_len(&self, id: &UploadId) -> Result<Option<u64>, StorageError> {
        let path = self.upload_dir(id).join("data");
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(|| format!("stat {}", path.display()))(e)),
        }
    }

    /// Deletes an upload's staging data.
    pub fn discard_upload(&self, id: &UploadId) -> Result<(), StorageError> {
        let dir = self.upload_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(|| format!("removing {}", dir.display()))(e)),
        }
    }
}

/// Chunks [`BlobStore::verify`] reads per submission (4 MiB of buffer per scrub).
const VERIFY_BATCH: usize = 4;

/// What a scrub found.
#[derive(Debug, Default)]
pub struct ScrubReport {
    /// Blobs checked.
    pub checked: u64,
    /// Their total size.
    pub bytes: u64,
    /// Blobs that failed, with why.
    pub corrupt: Vec<(Digest, String)>,
    /// How many of them were moved to `quarantine/`.
    pub quarantined: u64,
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, StorageError> {
    let entries = fs::read_dir(dir).map_err(io_err(|| format!("listing {}", dir.display())))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub(crate) fn hash_file(path: &Path, algorithm: Algorithm) -> Result<Digest, StorageError> {
    let mut hasher = algorithm.hasher();
    let mut file = File::open(path).map_err(io_err(|| format!("opening {}", path.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut file, &mut buf)
            .map_err(io_err(|| format!("reading {}", path.display())))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StorageError> {
    fs::rename(from, to).map_err(io_err(|| {
        format!("renaming {} to {}", from.display(), to.display())
    }))
}

pub(crate) fn sync_dir(engine: IoEngine, dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| engine.fsync(&d))
        .map_err(io_err(|| format!("syncing directory {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::IoEngine;

    fn store_with(engine: IoEngine) -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open_with(dir.path(), engine).expect("store");
        (dir, store)
    }

    /// Writes `data` in frames of assorted sizes (below, at and above the write buffer).
    fn put(store: &BlobStore, data: &[u8]) -> Digest {
        let mut w = UploadWriter::create(store, Algorithm::Sha256).expect("create");
        let sizes = [1usize, 4095, 3 << 20, 17, 1 << 20, 700_000];
        let (mut at, mut i) = (0, 0);
        while at < data.len() {
            let n = sizes[i % sizes.len()].min(data.len() - at);
            w.write(&data[at..at + n]).expect("write");
            at += n;
            i += 1;
        }
        let digest = Digest::sha256_of(data);
        assert_eq!(store.commit(w, &digest).expect("commit"), data.len() as u64);
        digest
    }

    /// Reads to the end with buffers of rotating sizes: whole chunks, less, and more.
    fn read_in_mixed_sizes(mut reader: CheckedReader) -> std::io::Result<Vec<u8>> {
        let sizes = [
            CHUNK_SIZE as usize,
            1000,
            2 * CHUNK_SIZE as usize,
            4096,
            700_000,
        ];
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2 * CHUNK_SIZE as usize];
        for i in 0.. {
            let n = std::io::Read::read(&mut reader, &mut buf[..sizes[i % sizes.len()]])?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    fn read_all(blob: &VerifiedBlob) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        for chunk in 0..blob.len.div_ceil(CHUNK_SIZE) {
            let n = blob.read_chunk(chunk, &mut buf)?;
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    #[test]
    fn checked_reads_round_trip_and_catch_corruption_with_cached_indexes() {
        IoEngine::ALL.into_iter().for_each(checked_reads_with);
    }

    #[test]
    fn small_blobs_are_served_checked_from_memory_until_removed_or_quarantined() {
        for engine in IoEngine::ALL {
            let (_dir, store) = store_with(engine);
            let data = b"a config blob, small enough to keep in memory".to_vec();
            let digest = put(&store, &data);
            // Damaged before its first read: the read from disk catches it.
            let path = store.blob_path(&digest);
            let mut bad = data.clone();
            bad[3] ^= 0x10;
            std::fs::write(&path, &bad).expect("damage");
            assert!(
                matches!(store.read_small(&digest), Err(StorageError::Corrupt { .. })),
                "{engine:?}: unchecked bytes served"
            );
            std::fs::write(&path, &data).expect("repair");
            assert_eq!(
                store.read_small(&digest).expect("read").as_deref(),
                Some(&data[..])
            );
            // Damaged after: memory still holds the checked copy (never the bad bytes), and
            // scrub, which reads the file, finds the damage; quarantine forgets the copy.
            std::fs::write(&path, &bad).expect("damage");
            assert_eq!(
                store.read_small(&digest).expect("cached").as_deref(),
                Some(&data[..])
            );
            assert!(
                store.verify(&digest, true).is_err(),
                "{engine:?}: scrub missed it"
            );
            store.quarantine(&digest).expect("quarantine");
            assert_eq!(store.read_small(&digest).expect("read"), None, "{engine:?}");
            // Removal forgets it too.
            let digest = put(&store, &data);
            assert!(store.read_small(&digest).expect("read").is_some());
            store.remove(&digest).expect("remove");
            assert_eq!(store.read_small(&digest).expect("read"), None, "{engine:?}");
            // Larger than the limit: refused, not read whole.
            let big = vec![1u8; SMALL_BLOB_MAX + 1];
            let digest = put(&store, &big);
            assert!(store.read_small(&digest).is_err());
        }
    }

    fn checked_reads_with(engine: IoEngine) {
        let (_dir, store) = store_with(engine);
        assert_eq!(store.engine(), engine);
        let data: Vec<u8> = (0..(5 << 20) + 333).map(|i: u32| (i % 251) as u8).collect();
        let digest = put(&store, &data);
        assert_eq!(std::fs::read(store.blob_path(&digest)).expect("read"), data);
        store.verify(&digest, true).expect("intact");
        // Twice: the second open takes its crcs from the cache.
        for _ in 0..2 {
            let blob = store.open_verified(&digest).expect("open").expect("exists");
            assert_eq!(read_all(&blob).expect("reads"), data, "{engine:?}");
        }
        let mut through_reader = Vec::new();
        let reader = store.open_verified(&digest).expect("open").expect("exists");
        std::io::copy(&mut reader.into_reader(), &mut through_reader).expect("reader");
        assert_eq!(through_reader, data, "{engine:?}");
        // Whole-chunk buffers are filled in place; mixed with smaller reads the bytes agree.
        let reader = store.open_verified(&digest).expect("open").expect("exists");
        assert_eq!(
            read_in_mixed_sizes(reader.into_reader()).expect("mixed"),
            data
        );
        // The index sidecar is no longer read on open (cached) ...
        let idx = store.index_path(&digest);
        let idx_bytes = std::fs::read(&idx).expect("idx");
        std::fs::remove_file(&idx).expect("rm idx");
        assert!(store.open_verified(&digest).expect("open").is_some());
        // ... but scrub reads it from disk.
        assert!(matches!(
            store.verify(&digest, false),
            Err(StorageError::Corrupt { .. })
        ));
        std::fs::write(&idx, &idx_bytes).expect("restore idx");

        // A flipped byte is caught by a read with cached crcs, in the chunk that holds it.
        let path = store.blob_path(&digest);
        let mut bytes = data.clone();
        bytes[(3 << 20) + 9] ^= 0x40;
        std::fs::write(&path, &bytes).expect("corrupt");
        let blob = store.open_verified(&digest).expect("open").expect("exists");
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        blob.read_chunk(2, &mut buf).expect("chunk 2 intact");
        let err = blob.read_chunk(3, &mut buf).expect_err("chunk 3 corrupt");
        assert!(err.to_string().contains("chunk 3 fails its crc32"), "{err}");
        // The sequential reader hands out chunks 0..=2 and then fails: no corrupt byte out.
        let mut reader = blob.into_reader();
        let mut good = Vec::new();
        let err = std::io::copy(&mut reader, &mut good).expect_err("reader stops");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("chunk 3 fails its crc32"), "{err}");
        assert_eq!(good, data[..3 << 20]);
        // The same through whole-chunk reads (checked in the caller's buffer).
        let blob = store.open_verified(&digest).expect("open").expect("exists");
        let mut reader = blob.into_reader();
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        for _ in 0..3 {
            std::io::Read::read_exact(&mut reader, &mut buf).expect("chunks 0..=2");
        }
        let err = std::io::Read::read(&mut reader, &mut buf).expect_err("chunk 3");
        assert!(err.to_string().contains("chunk 3 fails its crc32"), "{err}");
        // A caller that reads on after the error, in small buffers, gets the error again,
        // never the unchecked bytes the failed read left behind (first chunk: the buffer
        // grows from empty).
        let mut first_bad = data.clone();
        first_bad[5] ^= 0x40;
        std::fs::write(&path, &first_bad).expect("corrupt chunk 0");
        let blob = store.open_verified(&digest).expect("open").expect("exists");
        let mut reader = blob.into_reader();
        let mut small = [0u8; 4096];
        for attempt in 0..2 {
            let err = std::io::Read::read(&mut reader, &mut small).expect_err("chunk 0");
            assert!(
                err.to_string().contains("chunk 0 fails"),
                "{attempt}: {err}"
            );
        }
        std::fs::write(&path, &bytes).expect("chunk 3 corrupt again");
        let err = store.verify(&digest, false).expect_err("scrub");
        assert!(err.to_string().contains("chunk 3"), "{err}");

        // A length that no longer matches the (cached) index is an error at open.
        bytes.truncate(4 << 20);
        std::fs::write(&path, &bytes).expect("truncate");
        let err = store.open_verified(&digest).expect_err("short");
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = store.verify(&digest, false).expect_err("short");
        assert!(err.to_string().contains("shorter"), "{err}");

        // Quarantine invalidates the cache: a fresh push with a different index is used.
        store.quarantine(&digest).expect("quarantine");
        assert!(store.open_verified(&digest).expect("open").is_none());
        let digest = put(&store, &data);
        let blob = store.open_verified(&digest).expect("open").expect("exists");
        assert_eq!(read_all(&blob).expect("reads"), data);

        // Remove invalidates too: a different blob stored under the same name later (only
        // possible by hand) is checked against its own index, not the cached one.
        store.remove(&digest).expect("remove");
        assert!(store.open_verified(&digest).expect("open").is_none());
        let small = b"small blob".to_vec();
        let small_digest = put(&store, &small);
        std::fs::rename(store.blob_path(&small_digest), store.blob_path(&digest)).expect("mv");
        std::fs::rename(store.index_path(&small_digest), store.index_path(&digest)).expect("mv");
        let blob = store.open_verified(&digest).expect("open").expect("exists");
        assert_eq!(read_all(&blob).expect("reads"), small);
    }

    #[test]
    fn empty_and_exact_multiple_blobs() {
        for engine in IoEngine::ALL {
            let (_dir, store) = store_with(engine);
            for data in [Vec::new(), vec![9u8; 2 << 20]] {
                let digest = put(&store, &data);
                let blob = store.open_verified(&digest).expect("open").expect("exists");
                assert_eq!(read_all(&blob).expect("reads"), data);
                store.verify(&digest, true).expect("intact");
            }
        }
    }
}
