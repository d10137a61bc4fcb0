//! Deterministic test content: blobs, configs and manifests derived from a seed.
//!
//! Blob bytes come from a counter-based SplitMix64 stream: word `i` of a blob is
//! `mix(key + (i + 1) * GAMMA)`, so any byte range can be produced without generating what
//! precedes it. That is what lets a chunked upload send chunk 7 of a 1 GiB layer, or a retried
//! request regenerate its body, without a 1 GiB buffer. SplitMix64 generates several GB/s on
//! one core, faster than sha256 (~1.8 GB/s here), so the generator never bounds a run.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Size of one generated body frame. 256 KiB keeps per-frame overhead negligible while
/// bounding the memory of an upload in flight.
pub const GEN_CHUNK_BYTES: usize = 256 << 10;

/// Most layer bytes a push run prepares in memory before its timer starts, all targets
/// together (see [`Image::build_in_memory`]); a bigger run generates its layers while it
/// sends them.
pub const PREPARED_BYTES_MAX: u64 = 2 << 30;

/// Largest blob the harness will generate (64 GiB): a typo'd `--size` must not run for hours.
pub const BLOB_SIZE_MAX: u64 = 64 << 30;

/// Media type of the image manifests the harness pushes.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the generated image configs.
pub const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the generated layers (uncompressed, so diff_id == digest).
pub const OCI_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a stream key from a seed and a path of ids (scenario, image, layer, ...).
pub fn derive_key(seed: u64, path: &[u64]) -> u64 {
    path.iter().fold(mix(seed ^ GAMMA), |acc, id| {
        mix(acc.wrapping_add(GAMMA).wrapping_add(mix(*id)))
    })
}

/// A `sha256:<hex>` content digest. Only [`Digest::parse`] and [`Digest::of_sha256`] make one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:` followed by 64 lowercase hex digits; anything else is `None`.
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Digest(s.to_owned()))
    }

    /// Finishes a hasher into a digest.
    pub fn of_sha256(h: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// Digest of an in-memory byte string.
    pub fn of_bytes(b: &[u8]) -> Digest {
        Digest::of_sha256(Sha256::new_with_prefix(b))
    }

    /// The `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A generated blob: `size` bytes of the stream named by `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobSpec {
    /// Stream key (see [`derive_key`]).
    pub key: u64,
    /// Length in bytes.
    pub size: u64,
}

impl BlobSpec {
    /// Fills `buf` with the bytes at `offset..offset + buf.len()` of this blob's stream.
    /// The caller keeps the range inside `0..size`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut word_idx = offset / 8;
        let mut skip = (offset % 8) as usize;
        let mut out = 0;
        while out < buf.len() {
            let word = mix(self.key.wrapping_add(GAMMA.wrapping_mul(word_idx + 1))).to_le_bytes();
            let take = (8 - skip).min(buf.len() - out);
            buf[out..out + take].copy_from_slice(&word[skip..skip + take]);
            out += take;
            skip = 0;
            word_idx += 1;
        }
    }

    /// Generates the bytes at `offset..offset + len` as a fresh buffer.
    pub fn chunk(&self, offset: u64, len: usize) -> Bytes {
        let mut b = BytesMut::zeroed(len);
        self.fill(offset, &mut b);
        b.freeze()
    }

    /// Computes the digest by generating the whole stream in `GEN_CHUNK_BYTES` pieces
    /// (constant memory).
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; GEN_CHUNK_BYTES];
        let mut off = 0;
        while off < self.size {
            let n = (self.size - off).min(GEN_CHUNK_BYTES as u64) as usize;
            self.fill(off, &mut buf[..n]);
            h.update(&buf[..n]);
            off += n as u64;
        }
        Digest::of_sha256(h)
    }

    /// The whole stream in memory and its digest, from one generating pass: what a client
    /// pushing a layer it already has on disk holds before it sends the first byte.
    pub fn materialize(&self) -> (Bytes, Digest) {
        let mut bytes = BytesMut::zeroed(self.size as usize);
        let mut h = Sha256::new();
        for (i, piece) in bytes.chunks_mut(GEN_CHUNK_BYTES).enumerate() {
            self.fill((i * GEN_CHUNK_BYTES) as u64, piece);
            h.update(&*piece);
        }
        (bytes.freeze(), Digest::of_sha256(h))
    }
}

/// Where a blob's bytes come from when pushing.
#[derive(Clone, Debug)]
pub enum Content {
    /// Generated on the fly from a [`BlobSpec`].
    Gen(BlobSpec),
    /// In-memory content (configs; layers prepared by [`Image::build_in_memory`]).
    Bytes(Bytes),
}

impl Content {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Gen(s) => s.size,
            Content::Bytes(b) => b.len() as u64,
        }
    }

    /// True when the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A described blob: content plus its digest.
#[derive(Clone, Debug)]
pub struct Blob {
    /// The bytes.
    pub content: Content,
    /// Their sha256.
    pub digest: Digest,
}

/// The shape of a generated image.
#[derive(Clone, Copy, Debug)]
pub struct ImageShape {
    /// Layers per image.
    pub layers: u32,
    /// Bytes per layer.
    pub layer_size: u64,
}

/// A generated image: layers (described but not materialised), config and manifest bytes.
#[derive(Clone, Debug)]
pub struct Image {
    /// Layer specs; digests are filled in by [`Image::build`].
    pub layers: Vec<Blob>,
    /// The config blob (small JSON).
    pub config: Blob,
    /// Manifest bytes as pushed.
    pub manifest: Bytes,
    /// Digest of `manifest`.
    pub manifest_digest: Digest,
}

impl Image {
    /// Layer specs of image `key` without computing digests.
    pub fn layer_specs(key: u64, shape: ImageShape) -> Vec<BlobSpec> {
        (0..u64::from(shape.layers))
            .map(|l| BlobSpec {
                key: derive_key(key, &[l]),
                size: shape.layer_size,
            })
            .collect()
    }

    /// Builds image `key` of `shape`. Hashes every layer (streaming), so for big layers this
    /// is the expensive part of a setup phase.
    pub fn build(key: u64, shape: ImageShape) -> Image {
        let digests = Self::layer_specs(key, shape)
            .into_iter()
            .map(|s| (s, s.digest()))
            .collect();
        Self::from_layer_digests(key, digests)
    }

    /// Builds image `key` of `shape` with its layers generated into memory (one pass that
    /// also hashes them), so sending them costs the client no generation: a push of such an
    /// image measures the registry, as a push of layers read from a client's disk would.
    /// The caller bounds the memory (see [`PREPARED_BYTES_MAX`]).
    pub fn build_in_memory(key: u64, shape: ImageShape) -> Image {
        let specs = Self::layer_specs(key, shape);
        let made: Vec<_> = specs.iter().map(BlobSpec::materialize).collect();
        let digests = specs.into_iter().zip(made.iter().map(|(_, d)| d.clone()));
        let mut image = Self::from_layer_digests(key, digests.collect());
        for (layer, (bytes, _)) in image.layers.iter_mut().zip(made) {
            layer.content = Content::Bytes(bytes);
        }
        image
    }

    /// Assembles config and manifest around layers whose digests are already known.
    pub fn from_layer_digests(key: u64, layers: Vec<(BlobSpec, Digest)>) -> Image {
        let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": { "berth.loadtest.key": format!("{key:016x}") } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config = Bytes::from(config.to_string());
        let config = Blob {
            digest: Digest::of_bytes(&config),
            content: Content::Bytes(config),
        };
        let descs: Vec<_> = layers
            .iter()
            .map(|(s, d)| descriptor(OCI_LAYER_MEDIA_TYPE, d, s.size))
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": descriptor(OCI_CONFIG_MEDIA_TYPE, &config.digest, config.content.len()),
            "layers": descs,
        });
        let manifest = Bytes::from(manifest.to_string());
        Image {
            layers: layers
                .into_iter()
                .map(|(s, d)| Blob {
                    content: Content::Gen(s),
                    digest: d,
                })
                .collect(),
            config,
            manifest_digest: Digest::of_bytes(&manifest),
            manifest,
        }
    }

    /// Bytes of layers + config + manifest: what a full push transfers as content.
    pub fn total_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.content.len()).sum::<u64>()
            + self.config.content.len()
            + self.manifest.len() as u64
    }
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest.as_str(), "size": size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_access_matches_sequential() {
        let spec = BlobSpec {
            key: 42,
            size: 1000,
        };
        let whole = spec.chunk(0, 1000);
        for (off, len) in [(0, 1), (3, 17), (8, 8), (999, 1), (13, 500)] {
            assert_eq!(
                spec.chunk(off, len),
                whole.slice(off as usize..off as usize + len)
            );
        }
    }

    #[test]
    fn digest_is_streaming_equivalent() {
        let spec = BlobSpec {
            key: 7,
            size: GEN_CHUNK_BYTES as u64 * 2 + 5,
        };
        let all = spec.chunk(0, spec.size as usize);
        assert_eq!(spec.digest(), Digest::of_bytes(&all));
    }

    #[test]
    fn digest_parse_rejects_junk() {
        assert!(Digest::parse("sha256:abc").is_none());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(64))).is_none());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_some());
    }

    #[test]
    fn keys_differ_by_path() {
        assert_ne!(derive_key(1, &[0, 1]), derive_key(1, &[1, 0]));
        assert_ne!(derive_key(1, &[0]), derive_key(2, &[0]));
    }
}
