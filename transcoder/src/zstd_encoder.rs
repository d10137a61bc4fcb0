//! A streaming, multithreaded zstd encoder over libzstd's C API (`zstd-sys`, 1.5.7 bundled).
//!
//! Why not the `zstd` crate's `write::Encoder`: libzstd 1.5.7 added a block *pre-splitter*
//! (`ZSTD_c_blockSplitterLevel`, an experimental parameter the safe bindings do not expose)
//! that, at our default level 3, spends ~10% more CPU for ~0.6% smaller output. On two cores
//! the CPU is the throughput: with it, a tar → zstd conversion is slower than `zstd -T0`
//! (1.5.4, no pre-splitter) on the same file. This encoder turns the pre-splitter off and is
//! otherwise the same stream the crate writes (one frame, content checksum on, `threads`
//! workers); its output is still no larger than `zstd -3 -T0`'s (docs/benchmarks.md).
//!
//! Invariant: every `unsafe` block is an FFI call whose pointers name buffers borrowed for the
//! duration of that call only; the context is owned by [`ZstdEncoder`] and freed once.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io::{self, Write};
use std::ptr::NonNull;

use zstd_sys::{ZSTD_EndDirective, ZSTD_cParameter, ZSTD_inBuffer, ZSTD_outBuffer};

/// `ZSTD_c_blockSplitterLevel` value meaning "no pre-splitting" (zstd.h).
const BLOCK_SPLITTER_OFF: i32 = 1;

/// Output staged between libzstd and the inner writer (libzstd's recommended size is ~128 KiB).
const OUT_BUFFER_SIZE: usize = 128 << 10;

/// An owned compression context.
struct Context(NonNull<zstd_sys::ZSTD_CCtx>);

// SAFETY: a ZSTD_CCtx has no thread affinity; it is used by one thread at a time (it is
// owned, and every use goes through `&mut self`). Its worker threads are libzstd's own.
unsafe impl Send for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ZSTD_createCCtx and is freed exactly once, here.
        unsafe {
            zstd_sys::ZSTD_freeCCtx(self.0.as_ptr());
        }
    }
}

/// Turns a libzstd return code into a `Result`.
fn check(code: usize, what: &str) -> io::Result<usize> {
    // SAFETY: pure functions of an integer; ZSTD_getErrorName returns a static C string.
    let (is_error, name) = unsafe {
        (
            zstd_sys::ZSTD_isError(code) != 0,
            CStr::from_ptr(zstd_sys::ZSTD_getErrorName(code)),
        )
    };
    if is_error {
        Err(io::Error::other(format!(
            "zstd {what}: {}",
            name.to_string_lossy()
        )))
    } else {
        Ok(code)
    }
}

/// A `Write` that compresses into `out` as one zstd frame (see the module doc).
pub struct ZstdEncoder<W: Write> {
    ctx: Context,
    out: W,
    staged: Vec<u8>,
}

impl<W: Write> ZstdEncoder<W> {
    /// An encoder at `level` with `threads` compression workers (≤ 1: compress on the
    /// calling thread) and a content checksum in the frame.
    pub fn new(out: W, level: i32, threads: usize) -> io::Result<Self> {
        // SAFETY: no arguments; a null return means allocation failure, handled below.
        let raw = unsafe { zstd_sys::ZSTD_createCCtx() };
        let ctx = Context(
            NonNull::new(raw).ok_or_else(|| io::Error::other("zstd: cannot allocate a context"))?,
        );
        let workers = if threads > 1 {
            i32::try_from(threads).unwrap_or(i32::MAX)
        } else {
            0
        };
        let params = [
            (ZSTD_cParameter::ZSTD_c_compressionLevel, level),
            (ZSTD_cParameter::ZSTD_c_checksumFlag, 1),
            (ZSTD_cParameter::ZSTD_c_nbWorkers, workers),
            // ZSTD_c_blockSplitterLevel (zstd.h): 1 = no pre-splitting.
            (
                ZSTD_cParameter::ZSTD_c_experimentalParam20,
                BLOCK_SPLITTER_OFF,
            ),
        ];
        for (param, value) in params {
            // SAFETY: `ctx` is a live context; parameters are plain integers.
            let code = unsafe { zstd_sys::ZSTD_CCtx_setParameter(ctx.0.as_ptr(), param, value) };
            check(code, &format!("parameter {param:?} = {value}"))?;
        }
        Ok(ZstdEncoder {
            ctx,
            out,
            staged: vec![0u8; OUT_BUFFER_SIZE],
        })
    }

    /// Runs one `ZSTD_compressStream2` call over `input[*pos..]`, writes what it produced to
    /// the inner writer and returns libzstd's hint (0 at `ZSTD_e_end`: the frame is complete).
    fn step(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        directive: ZSTD_EndDirective,
    ) -> io::Result<usize> {
        let mut inb = ZSTD_inBuffer {
            src: input.as_ptr().cast(),
            size: input.len(),
            pos: *pos,
        };
        let mut outb = ZSTD_outBuffer {
            dst: self.staged.as_mut_ptr().cast(),
            size: self.staged.len(),
            pos: 0,
        };
        // SAFETY: `inb` names `input` and `outb` names `self.staged`, both borrowed for this
        // call; libzstd reads at most `size` bytes of one and writes at most `size` of the
        // other, and keeps neither pointer after it returns (it copies input it holds on to).
        let code = unsafe {
            zstd_sys::ZSTD_compressStream2(self.ctx.0.as_ptr(), &mut outb, &mut inb, directive)
        };
        let hint = check(code, "compression")?;
        *pos = inb.pos;
        let produced = outb.pos.min(self.staged.len());
        self.out.write_all(&self.staged[..produced])?;
        Ok(hint)
    }

    /// Ends the frame (flushing every worker) and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let mut pos = 0;
        while self.step(&[], &mut pos, ZSTD_EndDirective::ZSTD_e_end)? != 0 {}
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ZstdEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut pos = 0;
        while pos < data.len() {
            self.step(data, &mut pos, ZSTD_EndDirective::ZSTD_e_continue)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a repeating text with a counter in it.
        let mut v = Vec::with_capacity(len);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(format!("line {i} of a layer-like file\n").as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn roundtrip(data: &[u8], threads: usize, piece: usize) -> Vec<u8> {
        let mut enc = ZstdEncoder::new(Vec::new(), 3, threads).expect("encoder");
        for part in data.chunks(piece.max(1)) {
            enc.write_all(part).expect("write");
        }
        let frame = enc.finish().expect("finish");
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&frame[..])
            .expect("decoder")
            .read_to_end(&mut back)
            .expect("decode");
        back
    }

    #[test]
    fn frames_decode_to_the_input_single_and_multithreaded() {
        for threads in [1, 2, 3] {
            for len in [0, 1, 4095, (9 << 20) + 7] {
                let data = sample(len);
                assert_eq!(
                    roundtrip(&data, threads, 300_000),
                    data,
                    "{threads} threads, {len} bytes"
                );
            }
        }
    }

    #[test]
    fn the_frame_carries_a_content_checksum_that_catches_corruption() {
        let data = sample(1 << 20);
        let mut enc = ZstdEncoder::new(Vec::new(), 3, 1).expect("encoder");
        enc.write_all(&data).expect("write");
        let mut frame = enc.finish().expect("finish");
        // The frame header descriptor's bit 2 is Content_Checksum_flag (RFC 8878 §3.1.1.1.1).
        assert_ne!(frame[4] & 0b100, 0, "checksum flag not set");
        let last = frame.len() - 1; // inside the 4-byte checksum
        frame[last] ^= 0xff;
        let mut back = Vec::new();
        let decoded = zstd::stream::read::Decoder::new(&frame[..])
            .expect("decoder")
            .read_to_end(&mut back);
        assert!(decoded.is_err(), "a flipped checksum byte was accepted");
    }

    #[test]
    fn the_pre_splitter_is_off() {
        // Same level, same checksum, one thread: only the pre-splitter differs from the
        // `zstd` crate's default stream, and on mixed text it changes where blocks end.
        // Segments of unlike content (text, noise, runs) that a block boundary should
        // separate: what the pre-splitter looks for.
        let mut data = Vec::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut seg = 0usize;
        while data.len() < 4 << 20 {
            let len = 20_000 + (seg * 7_919) % 70_000;
            match seg % 3 {
                0 => data.extend_from_slice(&sample(len)),
                1 => data.extend((0..len).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 56) as u8
                })),
                _ => data.extend((0..len).map(|i| (i / 97) as u8)),
            }
            seg += 1;
        }
        let mut ours = ZstdEncoder::new(Vec::new(), 3, 2).expect("encoder");
        ours.write_all(&data).expect("write");
        let ours = ours.finish().expect("finish");
        let mut crate_default = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        crate_default.include_checksum(true).expect("checksum");
        crate_default.multithread(2).expect("threads");
        crate_default.write_all(&data).expect("write");
        let crate_default = crate_default.finish().expect("finish");
        assert_ne!(
            ours, crate_default,
            "the pre-splitter setting changed nothing"
        );
    }
}
