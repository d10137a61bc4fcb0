//! The two halves of a transcode: a bounded decoder that classifies its failures, and an
//! encode pipeline that hashes the uncompressed stream (diff_id) and the compressed output
//! (digest) in the same pass that compresses it.
//!
//! [`copy_threaded`] runs the decoder on a thread of its own and hands whole buffers to the
//! encoding thread through a bounded queue ([`DECODE_AHEAD`] buffers), the way a shell pipe
//! `pigz -dc | zstd -T0` gives the decompressor its own core. Single-member gzip inflate is
//! inherently sequential (~150 MB/s here), so without this the thread that inflates also had
//! to feed zstd's workers and hash both streams, and gzip → zstd ran at 0.59× the pipe
//! (docs/benchmarks.md).

use std::io::{self, BufReader, Read, Write};
use std::sync::mpsc::sync_channel;

use berth_oci::{Algorithm, Digest, Hasher};

use crate::codec::ParGzEncoder;
use crate::zstd_encoder::ZstdEncoder;
use crate::{Compression, TranscodeError, TranscoderConfig, COPY_BUFFER_SIZE};

/// A layer's new identity, computed while it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcoded {
    /// sha256 of the bytes written to the output.
    pub digest: Digest,
    /// Bytes written to the output.
    pub size: u64,
    /// sha256 of the uncompressed tar (unchanged by recompression).
    pub diff_id: Digest,
    /// Length of the uncompressed tar.
    pub uncompressed_size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Corrupt,
    Limit,
}

/// A decompressing reader that stops at a byte limit and remembers why it failed.
pub struct Decoder<'a> {
    inner: Box<dyn Read + Send + 'a>,
    format: &'static str,
    remaining: u64,
    limit: u64,
    failure: Option<Failure>,
}

/// Wraps `input` (compressed with `from`) in a decoder allowing at most `limit` bytes out.
pub fn decoder<'a, R: Read + Send + 'a>(
    from: Compression,
    input: R,
    limit: u64,
) -> Result<Decoder<'a>, TranscodeError> {
    let inner: Box<dyn Read + Send + 'a> = match from {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            256 << 10,
            input,
        ))),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(input).map_err(|source| {
                TranscodeError::Corrupt {
                    format: "zstd",
                    source,
                }
            })?)
        }
    };
    Ok(Decoder {
        inner,
        format: match from {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        },
        remaining: limit,
        limit,
        failure: None,
    })
}

impl Decoder<'_> {
    /// Turns an error this reader returned into the transcoder's error.
    pub fn classify(&self, source: io::Error) -> TranscodeError {
        match self.failure {
            Some(Failure::Limit) => TranscodeError::ExpansionLimit { limit: self.limit },
            _ => TranscodeError::Corrupt {
                format: self.format,
                source,
            },
        }
    }
}

impl Read for Decoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = self.failure {
            return Err(io::Error::other(format!("decoder already failed: {f:?}")));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failure = Some(Failure::Corrupt);
                return Err(e);
            }
        };
        if n as u64 > self.remaining {
            self.failure = Some(Failure::Limit);
            return Err(io::Error::other("expansion limit exceeded"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Decoded buffers queued between the decode thread and the encoding thread. Memory:
/// `(DECODE_AHEAD + 2) × COPY_BUFFER_SIZE` (queued, one being filled, one being encoded).
pub const DECODE_AHEAD: usize = 4;

/// Copies all of `input` into `pipe`, decoding on a scoped thread `berth-decode` while the
/// calling thread hashes and encodes. Buffers are recycled, so a layer of any size uses
/// `DECODE_AHEAD + 2` buffers. A decode failure wins over the write failure it causes.
pub fn copy_threaded<W: Write>(
    input: &mut Decoder<'_>,
    pipe: &mut EncodePipeline<W>,
) -> Result<u64, TranscodeError> {
    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(DECODE_AHEAD);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(DECODE_AHEAD + 2);
    std::thread::scope(|scope| {
        let decode = std::thread::Builder::new()
            .name("berth-decode".into())
            .spawn_scoped(scope, move || -> Result<(), TranscodeError> {
                loop {
                    let mut buf = empty_rx
                        .try_recv()
                        .unwrap_or_else(|_| vec![0u8; COPY_BUFFER_SIZE]);
                    buf.resize(COPY_BUFFER_SIZE, 0);
                    let n = fill(input, &mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.truncate(n);
                    if full_tx.send(buf).is_err() {
                        // The encoder stopped; its error is reported by the caller.
                        return Ok(());
                    }
                }
            })
            .map_err(TranscodeError::Encode)?;
        let mut total = 0u64;
        let mut written: Result<(), TranscodeError> = Ok(());
        for buf in full_rx.iter() {
            if let Err(e) = pipe.write_all(&buf) {
                written = Err(TranscodeError::Output(e));
                break;
            }
            total += buf.len() as u64;
            let _ = empty_tx.try_send(buf);
        }
        drop(full_rx);
        let decoded = decode.join().unwrap_or_else(|_| {
            Err(TranscodeError::Encode(io::Error::other(
                "decode thread panicked",
            )))
        });
        decoded?;
        written?;
        Ok(total)
    })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut Decoder<'_>, buf: &mut [u8]) -> Result<usize, TranscodeError> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(input.classify(e)),
        }
    }
    Ok(n)
}

/// Who knows the output's digest at the end.
enum OutputHash<W> {
    /// This pipeline, which hashes every byte it writes.
    Here(Box<Hasher>),
    /// The output itself, which hashes what it is given (a blob store upload does): read
    /// with this function at the end instead of hashing every byte a second time.
    Output(fn(&W) -> Digest),
}

struct HashWriter<W> {
    inner: W,
    hash: OutputHash<W>,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let OutputHash::Here(hasher) = &mut self.hash {
            hasher.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The uncompressed stream's digest: hashed as it passes, or known in advance.
enum DiffHash {
    Hashing(Box<Hasher>),
    Known(Digest),
}

enum Encoder<W: Write> {
    Plain(W),
    Gzip(ParGzEncoder<W>),
    Zstd(ZstdEncoder<W>),
}

/// Takes an uncompressed tar stream (`Write`), compresses it to the output and hashes both
/// sides (the output's hash read from the output itself when it keeps one:
/// [`EncodePipeline::into_self_digesting`]). [`EncodePipeline::finish`] reports the [`Transcoded`] identity and hands the
/// output writer back (so a storage writer can be committed under the new digest).
pub struct EncodePipeline<W: Write> {
    diff: DiffHash,
    diff_len: u64,
    enc: Encoder<HashWriter<W>>,
}

impl<W: Write> EncodePipeline<W> {
    /// A pipeline compressing to `to` with the settings of `config`.
    pub fn new(config: &TranscoderConfig, to: Compression, out: W) -> Result<Self, TranscodeError> {
        Self::build(
            config,
            to,
            out,
            OutputHash::Here(Box::new(Algorithm::Sha256.hasher())),
        )
    }

    /// A pipeline into an output that computes the sha256 of what it is given itself (a blob
    /// store's upload writer does): `digest` reads it when the stream ends, and the output
    /// is not hashed a second time here (that pass was ~8% of a tar → zstd conversion).
    pub fn into_self_digesting(
        config: &TranscoderConfig,
        to: Compression,
        out: W,
        digest: fn(&W) -> Digest,
    ) -> Result<Self, TranscodeError> {
        Self::build(config, to, out, OutputHash::Output(digest))
    }

    fn build(
        config: &TranscoderConfig,
        to: Compression,
        out: W,
        hash: OutputHash<W>,
    ) -> Result<Self, TranscodeError> {
        let out = HashWriter {
            inner: out,
            hash,
            len: 0,
        };
        let threads = config.effective_threads();
        let enc = match to {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(
                ParGzEncoder::new(out, config.gzip_level, threads, config.gzip_block_size)
                    .map_err(TranscodeError::Encode)?,
            ),
            Compression::Zstd => Encoder::Zstd(
                ZstdEncoder::new(out, config.zstd_level, threads)
                    .map_err(TranscodeError::Encode)?,
            ),
        };
        Ok(EncodePipeline {
            diff: DiffHash::Hashing(Box::new(Algorithm::Sha256.hasher())),
            diff_len: 0,
            enc,
        })
    }

    /// This pipeline, reporting `diff_id` as the uncompressed stream's digest instead of
    /// computing it ([`crate::DiffId::KnownInput`]).
    pub fn knowing_diff_id(mut self, diff_id: Digest) -> Self {
        self.diff = DiffHash::Known(diff_id);
        self
    }

    /// Copies all of a decoder into the pipeline with one [`COPY_BUFFER_SIZE`] buffer.
    pub fn copy_from(&mut self, input: &mut Decoder<'_>) -> Result<u64, TranscodeError> {
        let mut buf = vec![0u8; COPY_BUFFER_SIZE];
        let mut total = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(input.classify(e)),
            };
            self.write_all(&buf[..n]).map_err(TranscodeError::Output)?;
            total += n as u64;
        }
    }

    /// Ends the compressed stream; returns its identity and the output writer.
    pub fn finish(self) -> Result<(Transcoded, W), TranscodeError> {
        let out = match self.enc {
            Encoder::Plain(w) => w,
            Encoder::Gzip(g) => g.finish().map_err(TranscodeError::Output)?,
            Encoder::Zstd(z) => z.finish().map_err(TranscodeError::Output)?,
        };
        let mut out = out;
        out.flush().map_err(TranscodeError::Output)?;
        let digest = match out.hash {
            OutputHash::Here(hasher) => hasher.finish(),
            OutputHash::Output(digest_of) => digest_of(&out.inner),
        };
        let done = Transcoded {
            digest,
            size: out.len,
            diff_id: match self.diff {
                DiffHash::Hashing(h) => h.finish(),
                DiffHash::Known(d) => d,
            },
            uncompressed_size: self.diff_len,
        };
        Ok((done, out.inner))
    }
}

impl<W: Write> Write for EncodePipeline<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.enc {
            Encoder::Plain(w) => w.write(buf)?,
            Encoder::Gzip(g) => g.write(buf)?,
            Encoder::Zstd(z) => z.write(buf)?,
        };
        if let DiffHash::Hashing(h) = &mut self.diff {
            h.update(&buf[..n]);
        }
        self.diff_len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
