//! Layer codecs (issue 6): the four conversions `berth-transcoder` performs, on a 64 MiB
//! layer-like tar (see `support/layer_data.rs`), with the production settings (zstd level 3,
//! gzip level 6 in 1 MiB members, threads = all cores). Throughput is in *uncompressed* bytes,
//! the way `zstd` and `pigz` report speed. Each run includes what the registry does in the
//! same pass: sha256 of the uncompressed stream (diff_id) and of the output (digest).
//!
//! The side-by-side comparison with `zstd -T0` and `pigz` is `benches/compare-codecs.sh`.

use std::hint::black_box;
use std::io::Write;

use berth_transcoder::{transcode, Compression, TranscoderConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "support/layer_data.rs"]
mod layer_data;

/// Size of the generated layer.
const LAYER_SIZE: usize = 64 << 20;

fn single_member_gzip(tar: &[u8]) -> Vec<u8> {
    // What `docker build` / Go's compress/gzip push: one gzip member, level 6.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(tar).expect("gzip into a Vec");
    enc.finish().expect("gzip into a Vec")
}

fn codecs(c: &mut Criterion) {
    let tar = layer_data::layer_tar(LAYER_SIZE, 0x5eed);
    let gz = single_member_gzip(&tar);
    let zst = zstd::encode_all(tar.as_slice(), 3).expect("zstd into a Vec");
    let config = TranscoderConfig::default();
    let cases: [(&str, Compression, &[u8], Compression); 4] = [
        ("gzip_to_zstd", Compression::Gzip, &gz, Compression::Zstd),
        ("zstd_to_gzip", Compression::Zstd, &zst, Compression::Gzip),
        ("tar_to_gzip", Compression::None, &tar, Compression::Gzip),
        ("tar_to_zstd", Compression::None, &tar, Compression::Zstd),
    ];
    let mut g = c.benchmark_group("codecs");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(tar.len() as u64));
    for (name, from, input, to) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                let (done, _) = transcode(
                    &config,
                    from,
                    to,
                    black_box(input),
                    input.len() as u64,
                    None,
                    std::io::sink(),
                )
                .expect("transcoding generated data");
                done.size
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
