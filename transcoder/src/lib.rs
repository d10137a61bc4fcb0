//! berth's transcoder: layer compression conversion and image squashing.
//!
//! The principal entry points are [`transcode`] (one layer from one [`Compression`] to
//! another) and [`squash::squash`] (many layers merged into one tar), configured by
//! [`TranscoderConfig`], reporting a [`Transcoded`] (new digest and size, verified diff_id)
//! or a [`TranscodeError`]. [`image`] rewrites manifests and configs for derived images.
//!
//! Invariants:
//! - Pure `Read -> Write`: no network, no storage, no HTTP, no async. Callers decide where
//!   bytes come from and go to (the registry writes into a storage `UploadWriter`).
//! - One decode and one encode pass per layer: the compressed output's digest and the
//!   uncompressed stream's digest (the diff_id) are computed in that same pass.
//! - Decoding runs on its own thread ([`copy_threaded`]), handing [`COPY_BUFFER_SIZE`]
//!   buffers to the encoding thread through a queue of [`DECODE_AHEAD`].
//! - Memory is bounded by configuration, not by layer size: `DECODE_AHEAD + 2` buffers of
//!   [`COPY_BUFFER_SIZE`], `threads` gzip blocks of `gzip_block_size` in flight twice over,
//!   and zstd's own per-worker windows.
//! - Decompression is bounded ([`TranscoderConfig::expansion_limit`]): a zip bomb fails with
//!   [`TranscodeError::ExpansionLimit`] instead of filling a disk.
//! - Untrusted input never panics: corrupt or truncated input is [`TranscodeError::Corrupt`].
#![deny(missing_docs)]

mod codec;
pub mod image;
mod pipeline;
pub mod squash;
mod zstd_encoder;

use std::io::{self, Read, Write};

use berth_oci::Digest;

pub use codec::ParGzEncoder;
pub use pipeline::{copy_threaded, decoder, Decoder, EncodePipeline, Transcoded, DECODE_AHEAD};

/// Size of the buffer bytes are copied through between decoder and encoder.
pub const COPY_BUFFER_SIZE: usize = 1 << 20;

/// A layer's compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several concatenated members).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, `None` if the type is not a tar layer.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let m = media_type.trim();
        if m.ends_with("+gzip") || m.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if m.ends_with("+zstd") || m.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if m.ends_with(".tar") || m.ends_with(".diff.tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// The compression the first bytes of a stream show (gzip and zstd magic numbers).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI layer media type for a tar with this compression.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// A short name (`none`, `gzip`, `zstd`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses a short name.
    pub fn parse(name: &str) -> Option<Compression> {
        match name {
            "none" | "uncompressed" | "tar" => Some(Compression::None),
            "gzip" | "gz" => Some(Compression::Gzip),
            "zstd" | "zst" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// What can go wrong while transcoding.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The input is not valid data of its declared compression (or not a valid tar).
    #[error("corrupt or truncated {format} input: {source}")]
    Corrupt {
        /// The format being decoded.
        format: &'static str,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// The uncompressed stream grew beyond the configured limit.
    #[error("decompressed size exceeds the limit of {limit} bytes (expansion limit)")]
    ExpansionLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// The uncompressed content does not hash to the diff_id the image config declares.
    #[error("uncompressed content has digest {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        /// From the image config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// Too many tar entries to squash.
    #[error("more than {0} tar entries; raise tar_entries_max to squash this image")]
    TooManyEntries(usize),
    /// A manifest or config could not be read or rewritten.
    #[error("invalid image metadata: {0}")]
    Image(String),
    /// Opening or reading an input layer failed (not a format problem).
    #[error("reading input: {0}")]
    Input(#[source] io::Error),
    /// Writing the output failed (disk full, storage error).
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
    /// An encoder or worker thread failed.
    #[error("encoder failed: {0}")]
    Encode(#[source] io::Error),
}

/// Settings of the transcoder. Every field has a working default.
#[derive(Clone, Debug)]
pub struct TranscoderConfig {
    /// zstd compression level (default 3, zstd's own default; 1..=19).
    pub zstd_level: i32,
    /// gzip compression level (default 6, gzip's and pigz's default; 1..=9).
    pub gzip_level: u32,
    /// Compression threads (default 0 = all available cores, like `zstd -T0` and `pigz`).
    pub threads: usize,
    /// Uncompressed bytes per independently compressed gzip member (default 1 MiB).
    pub gzip_block_size: usize,
    /// Largest accepted ratio of uncompressed to compressed size (default 1,000; gzip itself
    /// cannot exceed ~1,032:1, so only zstd and nested tricks hit it).
    pub expansion_ratio_max: u64,
    /// Uncompressed bytes always allowed, whatever the ratio (default 256 MiB), so tiny
    /// layers of zeros still convert.
    pub expansion_floor_bytes: u64,
    /// Absolute cap on a layer's uncompressed size (default 64 GiB).
    pub uncompressed_size_max: u64,
    /// Most tar entries of all layers together that a squash tracks (default 2,000,000;
    /// about 150 bytes of memory each).
    pub tar_entries_max: usize,
}

impl Default for TranscoderConfig {
    fn default() -> Self {
        TranscoderConfig {
            zstd_level: 3,
            gzip_level: 6,
            threads: 0,
            gzip_block_size: 1 << 20,
            expansion_ratio_max: 1000,
            expansion_floor_bytes: 256 << 20,
            uncompressed_size_max: 64 << 30,
            tar_entries_max: 2_000_000,
        }
    }
}

impl TranscoderConfig {
    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=19).contains(&self.zstd_level) {
            return Err("transcoder.zstd_level must be within 1..=19".into());
        }
        if !(1..=9).contains(&self.gzip_level) {
            return Err("transcoder.gzip_level must be within 1..=9".into());
        }
        if self.threads > 256 {
            return Err("transcoder.threads must be at most 256 (0 = all cores)".into());
        }
        if !(64 << 10..=64 << 20).contains(&self.gzip_block_size) {
            return Err("transcoder.gzip_block_size must be within 64 KiB..=64 MiB".into());
        }
        if self.expansion_ratio_max == 0 {
            return Err("transcoder.expansion_ratio_max must be positive".into());
        }
        if self.uncompressed_size_max == 0 {
            return Err("transcoder.uncompressed_size_max must be positive".into());
        }
        if self.tar_entries_max == 0 {
            return Err("transcoder.tar_entries_max must be positive".into());
        }
        Ok(())
    }

    /// Compression threads to use (resolving 0 to the number of cores).
    pub fn effective_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Largest uncompressed size accepted for an input of `compressed_len` bytes.
    pub fn expansion_limit(&self, compressed_len: u64) -> u64 {
        self.expansion_ratio_max
            .saturating_mul(compressed_len)
            .max(self.expansion_floor_bytes)
            .min(self.uncompressed_size_max)
    }
}

/// What is known of a layer's diff_id (the sha256 of its uncompressed tar) before a
/// conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffId<'a> {
    /// Nothing: it is computed and reported.
    Unchecked,
    /// The image config declares it: the uncompressed stream must hash to it.
    Expect(&'a Digest),
    /// The input *is* the uncompressed tar and already known to hash to it: a stored blob
    /// of this digest, read through the store's CRC-checked reads. Not hashed again (a
    /// sha256 pass over the input is ~10% of a tar → zstd conversion's CPU). For a
    /// compressed input this is the same as [`DiffId::Expect`].
    KnownInput(&'a Digest),
}

impl<'a> From<Option<&'a Digest>> for DiffId<'a> {
    fn from(d: Option<&'a Digest>) -> DiffId<'a> {
        d.map_or(DiffId::Unchecked, DiffId::Expect)
    }
}

/// Converts one layer from `from` to `to` in a single decode + encode pass, writing the new
/// bytes to `output` (handed back on success). `input_len` (the stored blob's size) sets the
/// expansion limit; `diff_id` says what the uncompressed stream must hash to (an
/// `Option<&Digest>` converts: `Some` is [`DiffId::Expect`]).
pub fn transcode<'d, R: Read + Send, W: Write>(
    config: &TranscoderConfig,
    from: Compression,
    to: Compression,
    input: R,
    input_len: u64,
    diff_id: impl Into<DiffId<'d>>,
    output: W,
) -> Result<(Transcoded, W), TranscodeError> {
    let encode = |out| EncodePipeline::new(config, to, out);
    run(
        config,
        from,
        input,
        input_len,
        diff_id.into(),
        output,
        encode,
    )
}

/// [`transcode`] into an output that computes the sha256 of what it is given itself (a blob
/// store's upload writer): `digest` reads it at the end, and the output is not hashed twice
/// (see [`EncodePipeline::into_self_digesting`]).
#[allow(clippy::too_many_arguments)]
pub fn transcode_self_digesting<'d, R: Read + Send, W: Write>(
    config: &TranscoderConfig,
    from: Compression,
    to: Compression,
    input: R,
    input_len: u64,
    diff_id: impl Into<DiffId<'d>>,
    output: W,
    digest: fn(&W) -> Digest,
) -> Result<(Transcoded, W), TranscodeError> {
    let encode = |out| EncodePipeline::into_self_digesting(config, to, out, digest);
    run(
        config,
        from,
        input,
        input_len,
        diff_id.into(),
        output,
        encode,
    )
}

fn run<R: Read + Send, W: Write>(
    config: &TranscoderConfig,
    from: Compression,
    input: R,
    input_len: u64,
    diff_id: DiffId<'_>,
    output: W,
    encode: impl FnOnce(W) -> Result<EncodePipeline<W>, TranscodeError>,
) -> Result<(Transcoded, W), TranscodeError> {
    let limit = config.expansion_limit(input_len);
    let mut decoded = pipeline::decoder(from, input, limit)?;
    let diff_id = match diff_id {
        DiffId::KnownInput(d) if from != Compression::None => DiffId::Expect(d),
        other => other,
    };
    let mut pipe = encode(output)?;
    if let DiffId::KnownInput(known) = diff_id {
        pipe = pipe.knowing_diff_id(known.clone());
    }
    pipeline::copy_threaded(&mut decoded, &mut pipe)?;
    let (done, out) = pipe.finish()?;
    if let DiffId::Expect(expected) = diff_id {
        if &done.diff_id != expected {
            return Err(TranscodeError::DiffIdMismatch {
                expected: expected.clone(),
                actual: done.diff_id,
            });
        }
    }
    Ok((done, out))
}
