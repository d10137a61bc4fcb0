//! Command-line driver for `benches/compare-codecs.sh`: the transcoder on files, so it can be
//! timed next to `zstd -T0` and `pigz` on the same bytes.
//!
//! `codec gen OUT SIZE_MIB` writes the layer-like tar of `benches/codecs.rs`;
//! `codec transcode FROM TO IN OUT [LEVEL [THREADS]]` (FROM/TO: none, gzip, zstd) converts IN to OUT
//! with the production settings (or the given gzip / zstd LEVEL, for equal-ratio
//! comparisons, and THREADS, 0 = all cores) and prints the new digest, size and diff_id.
//!
//! `codec store DIR IN` puts IN into a blob store at DIR (prints its digest), and
//! `codec stored DIR DIGEST FROM TO` converts that stored layer the way the node does: read
//! through the store's crc-checked reader (a stored tar is not re-hashed: its digest is its
//! diff_id), converted, written and committed through an `UploadWriter` (digest, piece
//! hashes, fsync), so that the timing includes everything a conversion costs the node.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::process::ExitCode;

use berth_oci::{Algorithm, Digest};
use berth_storage::{BlobStore, UploadWriter};
use berth_transcoder::{
    transcode, transcode_self_digesting, Compression, DiffId, TranscoderConfig,
};

#[path = "../benches/support/layer_data.rs"]
mod layer_data;

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, out, mib] if cmd == "gen" => {
            let mib: usize = mib.parse().map_err(|e| format!("SIZE_MIB: {e}"))?;
            let tar = layer_data::layer_tar(mib << 20, 0x5eed);
            std::fs::write(out, tar).map_err(|e| format!("writing {out}: {e}"))
        }
        [cmd, from, to, input, output, opt @ ..] if cmd == "transcode" && opt.len() < 3 => {
            let parse = |s: &str| Compression::parse(s).ok_or(format!("unknown compression {s}"));
            let (from, to) = (parse(from)?, parse(to)?);
            let mut config = TranscoderConfig::default();
            if let Some(level) = opt.first() {
                let level: u32 = level.parse().map_err(|e| format!("LEVEL: {e}"))?;
                config.gzip_level = level;
                config.zstd_level = level as i32;
            }
            if let Some(threads) = opt.get(1) {
                config.threads = threads.parse().map_err(|e| format!("THREADS: {e}"))?;
            }
            config.validate()?;
            let file = File::open(input).map_err(|e| format!("opening {input}: {e}"))?;
            let len = file.metadata().map_err(|e| e.to_string())?.len();
            let out = File::create(output).map_err(|e| format!("creating {output}: {e}"))?;
            let (done, out) = transcode(
                &config,
                from,
                to,
                BufReader::with_capacity(1 << 20, file),
                len,
                None,
                BufWriter::with_capacity(1 << 20, out),
            )
            .map_err(|e| e.to_string())?;
            out.into_inner()
                .map_err(|e| e.to_string())?
                .flush()
                .map_err(|e| e.to_string())?;
            println!("{} {} diff_id={}", done.digest, done.size, done.diff_id);
            Ok(())
        }
        [cmd, dir, input] if cmd == "store" => {
            let store = BlobStore::open(dir.as_ref()).map_err(|e| e.to_string())?;
            let mut w =
                UploadWriter::create(&store, Algorithm::Sha256).map_err(|e| e.to_string())?;
            let mut file = File::open(input).map_err(|e| format!("opening {input}: {e}"))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut hasher = Algorithm::Sha256.hasher();
            loop {
                let n = std::io::Read::read(&mut file, &mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                w.write(&buf[..n]).map_err(|e| e.to_string())?;
            }
            let digest = hasher.finish();
            store.commit(w, &digest).map_err(|e| e.to_string())?;
            println!("{digest}");
            Ok(())
        }
        [cmd, dir, digest, from, to] if cmd == "stored" => {
            let parse = |s: &str| Compression::parse(s).ok_or(format!("unknown compression {s}"));
            let (from, to) = (parse(from)?, parse(to)?);
            let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
            let store = BlobStore::open(dir.as_ref()).map_err(|e| e.to_string())?;
            let blob = store
                .open_verified(&digest)
                .map_err(|e| e.to_string())?
                .ok_or(format!("{digest} is not stored in {dir}"))?;
            let len = blob.len;
            let known = match from {
                Compression::None => DiffId::KnownInput(&digest),
                _ => DiffId::Unchecked,
            };
            let sink =
                UploadWriter::create(&store, Algorithm::Sha256).map_err(|e| e.to_string())?;
            let config = TranscoderConfig::default();
            let (done, sink) = transcode_self_digesting(
                &config,
                from,
                to,
                blob.into_reader(),
                len,
                known,
                sink,
                UploadWriter::digest_of_written,
            )
            .map_err(|e| e.to_string())?;
            store
                .commit(sink, &done.digest)
                .map_err(|e| e.to_string())?;
            println!("{} {} diff_id={}", done.digest, done.size, done.diff_id);
            Ok(())
        }
        _ => Err(
            "usage: codec gen OUT SIZE_MIB | codec transcode FROM TO IN OUT [LEVEL [THREADS]] \
             | codec store DIR IN | codec stored DIR DIGEST FROM TO"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codec: {e}");
            ExitCode::FAILURE
        }
    }
}
