//! Hot paths: hashing and checksumming, blob put/get through the storage engine, manifest
//! parsing, and `/v2/` route parsing.

use std::hint::black_box;
use std::io::Read;

use berth_oci::{manifest, Algorithm, Digest};
use berth_registry::route;
use berth_storage::{BlobStore, ChunkHasher, UploadWriter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hashing(c: &mut Criterion) {
    let data = payload(4 << 20);
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        g.bench_function(algorithm.as_str(), |b| {
            b.iter(|| Digest::of(algorithm, black_box(&data)))
        });
    }
    g.bench_function("chunk_index_crc32_sha1", |b| {
        b.iter(|| {
            let mut crcs = ChunkHasher::default();
            crcs.update(black_box(&data));
            crcs.finish()
        })
    });
    g.finish();
}

fn blob_put_get(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).expect("store");
    let mut g = c.benchmark_group("blob");
    g.sample_size(20);
    for size in [16 << 10, 1 << 20, 16 << 20] {
        let data = payload(size);
        let digest = Digest::sha256_of(&data);
        g.throughput(Throughput::Bytes(size as u64));
        // Each put writes, hashes, fsyncs and renames; the blob is removed between runs so
        // the dedup shortcut never applies.
        g.bench_with_input(BenchmarkId::new("put_durable", size), &data, |b, data| {
            b.iter(|| {
                let mut w = UploadWriter::create(&store, Algorithm::Sha256).expect("create");
                w.write(data).expect("write");
                store.commit(w, &digest).expect("commit");
                store.remove(&digest).expect("remove");
            })
        });
        let mut w = UploadWriter::create(&store, Algorithm::Sha256).expect("create");
        w.write(&data).expect("write");
        store.commit(w, &digest).expect("commit");
        let mut buf = vec![0u8; size];
        g.bench_with_input(BenchmarkId::new("open_read", size), &digest, |b, digest| {
            b.iter(|| {
                let mut blob = store.open_blob(digest).expect("open").expect("exists");
                blob.file.read_exact(&mut buf).expect("read");
            })
        });
        // The chunk-index cache (issue 4): `open_verified` takes crcs from memory after the
        // first open; `open_blob` + `read_index` is what every open cost before the cache.
        g.bench_with_input(
            BenchmarkId::new("open_verified_cached", size),
            &digest,
            |b, digest| b.iter(|| store.open_verified(digest).expect("open").expect("exists")),
        );
        g.bench_with_input(
            BenchmarkId::new("open_and_read_index_uncached", size),
            &digest,
            |b, digest| {
                b.iter(|| {
                    let blob = store.open_blob(digest).expect("open").expect("exists");
                    let index = store.read_index(digest).expect("index").expect("exists");
                    assert_eq!(
                        index.len() as u64,
                        blob.len.div_ceil(berth_storage::CHUNK_SIZE)
                    );
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("verify_crc", size),
            &digest,
            |b, digest| b.iter(|| store.verify(digest, false).expect("intact")),
        );
    }
    g.finish();
}

fn manifests(c: &mut Criterion) {
    let layers: Vec<String> = (0u8..8)
        .map(|i| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}"#,
                Digest::sha256_of(&[i]),
                1000 + i as u32
            )
        })
        .collect();
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1234}},"layers":[{}],"annotations":{{"org.opencontainers.image.created":"2026-11-23T00:00:00Z"}}}}"#,
        Digest::sha256_of(b"config"),
        layers.join(",")
    );
    let mut g = c.benchmark_group("manifest");
    g.throughput(Throughput::Bytes(m.len() as u64));
    g.bench_function("parse_8_layers", |b| {
        b.iter(|| {
            manifest::parse(
                black_box(m.as_bytes()),
                Some("application/vnd.oci.image.manifest.v1+json"),
            )
            .expect("valid")
        })
    });
    g.bench_function("digest_8_layers", |b| {
        b.iter(|| Digest::sha256_of(black_box(m.as_bytes())))
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let paths = [
        "/v2/library/alpine/manifests/3.20",
        "/v2/team/project/app/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "/v2/team/app/blobs/uploads/3f1b7a52-2b4c-4d7e-9a55-111111111111",
        "/v2/team/app/tags/list",
    ];
    c.bench_function("route_parse_4_paths", |b| {
        b.iter(|| {
            for p in &paths {
                black_box(route::parse(black_box(p)));
            }
        })
    });
    c.bench_function("repo_name_parse", |b| {
        b.iter(|| berth_oci::RepoName::parse(black_box("team/project/app-server_v2")))
    });
}

criterion_group!(benches, hashing, blob_put_get, manifests, routing);
criterion_main!(benches);
