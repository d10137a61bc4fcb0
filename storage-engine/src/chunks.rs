//! The chunk index stored beside every blob: for each 1 MiB chunk, a CRC32 (so a scrub or a
//! read detects a flipped bit at memory speed, without re-hashing the blob with sha256 at
//! ~1.7 GiB/s) and a SHA-1 (the BitTorrent v1 piece hash, so a blob's `.torrent` needs no
//! second pass over its bytes). Both are computed in the write path's single pass.

use std::io;

use sha1::Digest as _;

/// Bytes covered by one index entry; also the BitTorrent piece length of every blob.
/// 1 MiB keeps the index at 24 bytes per MiB of blob and a 10 GiB layer's `.torrent` at
/// 200 KiB of piece hashes.
pub const CHUNK_SIZE: u64 = 1 << 20;

const MAGIC: &[u8; 8] = b"BERTHIDX";
const ENTRY_LEN: usize = 4 + 20;

/// Per-chunk checksums of a blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkIndex {
    /// CRC32 of each chunk, the last one possibly short.
    pub crcs: Vec<u32>,
    /// SHA-1 of each chunk (BitTorrent piece hashes).
    pub sha1s: Vec<[u8; 20]>,
}

/// Computes a [`ChunkIndex`] over a byte stream fed in pieces of any size.
#[derive(Clone, Default)]
pub struct ChunkHasher {
    index: ChunkIndex,
    crc: crc32fast::Hasher,
    sha1: sha1::Sha1,
    current_len: u64,
    /// SHA-1s known in advance (see [`ChunkHasher::with_known_sha1s`]); `None`: computed.
    known_sha1s: Option<Vec<[u8; 20]>>,
}

impl ChunkHasher {
    /// A hasher that computes only the CRC32s and takes chunk `k`'s SHA-1 from `sha1s[k]`:
    /// for bytes that arrive as BitTorrent pieces of [`CHUNK_SIZE`], each already checked
    /// against these very hashes (the node's piece fetch). The blob's digest, checked at
    /// commit, still covers every byte; a stream with another number of chunks gets an
    /// index the store refuses ([`ChunkHasher::fits`]).
    pub fn with_known_sha1s(sha1s: Vec<[u8; 20]>) -> ChunkHasher {
        ChunkHasher {
            known_sha1s: Some(sha1s),
            ..ChunkHasher::default()
        }
    }

    /// Whether the known SHA-1s, if any, are exactly one per chunk of the `len` bytes fed.
    pub fn fits(&self, len: u64) -> bool {
        self.known_sha1s
            .as_ref()
            .is_none_or(|k| k.len() as u64 == len.div_ceil(CHUNK_SIZE))
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (CHUNK_SIZE - self.current_len) as usize;
            let take = room.min(bytes.len());
            self.crc.update(&bytes[..take]);
            if self.known_sha1s.is_none() {
                self.sha1.update(&bytes[..take]);
            }
            self.current_len += take as u64;
            bytes = &bytes[take..];
            if self.current_len == CHUNK_SIZE {
                self.close_chunk();
            }
        }
    }

    fn close_chunk(&mut self) {
        let crc = std::mem::take(&mut self.crc);
        let sha1 = std::mem::take(&mut self.sha1);
        let k = self.index.crcs.len();
        self.index.crcs.push(crc.finalize());
        let sha1 = match &self.known_sha1s {
            // Past the known list: a placeholder in an index `fits` refuses.
            Some(known) => known.get(k).copied().unwrap_or([0; 20]),
            None => sha1.finalize().into(),
        };
        self.index.sha1s.push(sha1);
        self.current_len = 0;
    }

    /// The index of everything fed so far.
    pub fn finish(mut self) -> ChunkIndex {
        if self.current_len > 0 {
            self.close_chunk();
        }
        self.index
    }
}

impl ChunkIndex {
    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.crcs.len()
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.crcs.is_empty()
    }

    /// Encodes the index for its sidecar file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.len() * ENTRY_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&CHUNK_SIZE.to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        for (crc, sha1) in self.crcs.iter().zip(&self.sha1s) {
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(sha1);
        }
        out
    }

    /// Decodes a sidecar written by [`ChunkIndex::encode`], refusing anything malformed.
    pub fn decode(bytes: &[u8]) -> io::Result<ChunkIndex> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("chunk index: {what}"));
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| bad("bad magic"))?;
        let (chunk, rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
        let (count, rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
        let le = |b: &[u8]| {
            b.try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| bad("truncated"))
        };
        if le(chunk)? != CHUNK_SIZE {
            return Err(bad("unexpected chunk size"));
        }
        let count = le(count)?;
        if rest.len() as u64 != count.saturating_mul(ENTRY_LEN as u64) {
            return Err(bad("length does not match its entry count"));
        }
        let mut index = ChunkIndex::default();
        for entry in rest.chunks_exact(ENTRY_LEN) {
            let (crc, sha1) = entry.split_at(4);
            index
                .crcs
                .push(u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]));
            let mut h = [0u8; 20];
            h.copy_from_slice(sha1);
            index.sha1s.push(h);
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_is_independent_of_write_sizes() {
        let data: Vec<u8> = (0..(3 * CHUNK_SIZE + 17)).map(|i| (i * 31) as u8).collect();
        let mut whole = ChunkHasher::default();
        whole.update(&data);
        let mut pieces = ChunkHasher::default();
        for piece in data.chunks(77_777) {
            pieces.update(piece);
        }
        let (a, b) = (whole.finish(), pieces.finish());
        assert_eq!(a.len(), 4);
        assert_eq!(a, b);
        let first = &data[..CHUNK_SIZE as usize];
        assert_eq!(a.crcs[0], crc32fast::hash(first));
        assert_eq!(a.sha1s[0], <[u8; 20]>::from(sha1::Sha1::digest(first)));
        assert_eq!(ChunkIndex::decode(&a.encode()).expect("decodes"), a);
    }

    #[test]
    fn malformed_sidecars_are_refused() {
        let mut h = ChunkHasher::default();
        h.update(b"abc");
        let good = h.finish().encode();
        for bad in [&b"garbage"[..], &good[..good.len() - 1], &good[..20]] {
            assert!(ChunkIndex::decode(bad).is_err());
        }
    }
}
