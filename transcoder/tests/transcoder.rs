//! Data-driven tests of the codecs, the bounds and squashing.

use std::collections::BTreeMap;
use std::io::Read;

use berth_oci::Digest;
use berth_transcoder::squash::squash;
use berth_transcoder::{
    decoder, transcode, transcode_self_digesting, Compression, DiffId, TranscodeError,
    TranscoderConfig,
};

type Res = Result<(), Box<dyn std::error::Error>>;

fn sample_tar(seed: u8, len: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data: Vec<u8> = (0..len).map(|i| ((i * 7) as u8) ^ seed).collect();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o640);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "data.bin", &data[..])
        .expect("append");
    b.into_inner().expect("tar")
}

fn encode(c: Compression, raw: &[u8]) -> Vec<u8> {
    let cfg = TranscoderConfig::default();
    let (_, out) = transcode(
        &cfg,
        Compression::None,
        c,
        raw,
        raw.len() as u64,
        None,
        Vec::new(),
    )
    .expect("encode");
    out
}

#[test]
fn every_pair_round_trips_and_keeps_the_diff_id() -> Res {
    let raw = sample_tar(1, 5 << 20);
    let diff_id = Digest::sha256_of(&raw);
    let all = [Compression::None, Compression::Gzip, Compression::Zstd];
    let cfg = TranscoderConfig {
        threads: 2,
        ..Default::default()
    };
    for from in all {
        let input = encode(from, &raw);
        for to in all {
            let (done, out) = transcode(
                &cfg,
                from,
                to,
                &input[..],
                input.len() as u64,
                Some(&diff_id),
                Vec::new(),
            )?;
            assert_eq!(done.diff_id, diff_id, "{from:?}->{to:?}");
            assert_eq!(done.digest, Digest::sha256_of(&out));
            assert_eq!(done.size, out.len() as u64);
            assert_eq!(Compression::sniff(&out), to);
            let mut back = Vec::new();
            decoder(to, &out[..], u64::MAX)?.read_to_end(&mut back)?;
            assert!(back == raw, "{from:?}->{to:?} changed the tar");
        }
    }
    Ok(())
}

/// An output that hashes what it is given (as a blob store upload does).
struct SelfDigesting {
    bytes: Vec<u8>,
    hasher: berth_oci::Hasher,
}

impl std::io::Write for SelfDigesting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Into a self-digesting output, the pipeline reports the output's own digest (and does not
/// need to compute it); everything else is what a plain output gets, including the diff_id
/// check.
#[test]
fn a_self_digesting_output_reports_its_own_digest() -> Res {
    let raw = sample_tar(3, 3 << 20);
    let diff_id = Digest::sha256_of(&raw);
    let cfg = TranscoderConfig::default();
    for (from, to) in [
        (Compression::None, Compression::Zstd),
        (Compression::Gzip, Compression::Zstd),
        (Compression::Zstd, Compression::Gzip),
    ] {
        let input = encode(from, &raw);
        let known = match from {
            Compression::None => DiffId::KnownInput(&diff_id),
            _ => DiffId::Expect(&diff_id),
        };
        let sink = SelfDigesting {
            bytes: Vec::new(),
            hasher: berth_oci::Algorithm::Sha256.hasher(),
        };
        let digest_of = |s: &SelfDigesting| s.hasher.clone().finish();
        let (done, out) = transcode_self_digesting(
            &cfg,
            from,
            to,
            &input[..],
            input.len() as u64,
            known,
            sink,
            digest_of,
        )?;
        let (plain, plain_out) = transcode(
            &cfg,
            from,
            to,
            &input[..],
            input.len() as u64,
            known,
            Vec::new(),
        )?;
        assert_eq!(
            done.digest,
            Digest::sha256_of(&out.bytes),
            "{from:?}->{to:?}"
        );
        assert_eq!(out.bytes, plain_out);
        assert_eq!(done, plain);
    }
    // The diff_id is still checked.
    let gz = encode(Compression::Gzip, &raw);
    let wrong = Digest::sha256_of(b"not this layer");
    let sink = SelfDigesting {
        bytes: Vec::new(),
        hasher: berth_oci::Algorithm::Sha256.hasher(),
    };
    let r = transcode_self_digesting(
        &cfg,
        Compression::Gzip,
        Compression::Zstd,
        &gz[..],
        gz.len() as u64,
        Some(&wrong),
        sink,
        |s: &SelfDigesting| s.hasher.clone().finish(),
    );
    assert!(matches!(r, Err(TranscodeError::DiffIdMismatch { .. })));
    Ok(())
}

#[test]
fn parallel_gzip_is_multi_member_and_readable_by_single_stream_tools() -> Res {
    let raw = sample_tar(2, 3 << 20);
    let gz = encode(Compression::Gzip, &raw);
    // Three 1 MiB blocks and a tail: several members; MultiGzDecoder reads them all.
    let mut back = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..]).read_to_end(&mut back)?;
    assert!(back == raw);
    let empty = encode(Compression::Gzip, b"");
    assert_eq!(Compression::sniff(&empty), Compression::Gzip);
    Ok(())
}

#[test]
fn corrupt_truncated_and_mismatching_input_is_refused() {
    let raw = sample_tar(3, 1 << 20);
    let cfg = TranscoderConfig::default();
    for from in [Compression::Gzip, Compression::Zstd] {
        let enc = encode(from, &raw);
        let truncated = &enc[..enc.len() / 2];
        let r = transcode(
            &cfg,
            from,
            Compression::Zstd,
            truncated,
            10,
            None,
            Vec::new(),
        );
        assert!(
            matches!(r, Err(TranscodeError::Corrupt { .. })),
            "{from:?} truncated: {r:?}"
        );
        let mut garbage = enc.clone();
        garbage[enc.len() / 2] ^= 0xff;
        garbage[enc.len() / 2 + 1] ^= 0xff;
        let r = transcode(
            &cfg,
            from,
            Compression::Zstd,
            &garbage[..],
            10,
            None,
            Vec::new(),
        );
        assert!(r.is_err(), "{from:?} corrupted accepted");
    }
    let wrong = Digest::sha256_of(b"other");
    let r = transcode(
        &cfg,
        Compression::None,
        Compression::Gzip,
        &raw[..],
        1,
        Some(&wrong),
        Vec::new(),
    );
    assert!(matches!(r, Err(TranscodeError::DiffIdMismatch { .. })));
}

#[test]
fn zip_bombs_stop_at_the_expansion_limit() {
    let zeros = vec![0u8; 64 << 20];
    let bomb = encode(Compression::Zstd, &zeros);
    let cfg = TranscoderConfig {
        expansion_floor_bytes: 1 << 20,
        expansion_ratio_max: 10,
        ..Default::default()
    };
    let r = transcode(
        &cfg,
        Compression::Zstd,
        Compression::Gzip,
        &bomb[..],
        bomb.len() as u64,
        None,
        std::io::sink(),
    );
    assert!(
        matches!(r, Err(TranscodeError::ExpansionLimit { .. })),
        "{r:?}"
    );
}

#[test]
fn config_validation_names_the_field() {
    assert!(TranscoderConfig::default().validate().is_ok());
    let bad = TranscoderConfig {
        gzip_level: 0,
        ..Default::default()
    };
    assert!(bad
        .validate()
        .err()
        .is_some_and(|e| e.contains("gzip_level")));
}

enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Link(&'a str, &'a str),
    Sym(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(1000);
        h.set_gid(1000);
        match e {
            E::File(p, d, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, p, *d).expect("file");
            }
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).expect("dir");
            }
            E::Link(p, t) | E::Sym(p, t) => {
                let kind = if matches!(e, E::Link(..)) {
                    tar::EntryType::Link
                } else {
                    tar::EntryType::Symlink
                };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).expect("link");
            }
        }
    }
    b.into_inner().expect("tar")
}

/// path -> (kind, mode, content or link target)
fn listing(tar_bytes: &[u8]) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_end_matches('/')
            .to_owned();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Link => 'h',
            tar::EntryType::Symlink => 'l',
            _ => 'f',
        };
        let mut body = Vec::new();
        if kind == 'h' || kind == 'l' {
            body = e.link_name_bytes().map(|t| t.to_vec()).unwrap_or_default();
        } else {
            e.read_to_end(&mut body).expect("read");
        }
        out.insert(path, (kind, h.mode().expect("mode"), body));
    }
    out
}

#[test]
fn squash_applies_whiteouts_opaque_dirs_and_keeps_links() -> Res {
    let l0 = layer(&[
        E::Dir("etc"),
        E::File("etc/a", b"a0", 0o644),
        E::File("etc/gone", b"x", 0o644),
        E::Dir("opq"),
        E::File("opq/old", b"old", 0o600),
        E::File("base", b"base", 0o755),
        E::Link("base-link", "base"),
        E::File("doomed", b"keep me", 0o640),
        E::Link("survivor", "doomed"),
        E::Link("survivor2", "doomed"),
        E::Dir("replaced"),
        E::File("replaced/child", b"c", 0o644),
    ]);
    let l1 = layer(&[
        E::File("etc/a", b"a1", 0o600),
        E::File("etc/.wh.gone", b"", 0o644),
        E::Dir("opq"),
        E::File("opq/.wh..wh..opq", b"", 0o644),
        E::File("opq/new", b"new", 0o644),
        E::Link("base-link2", "base"),
        E::Sym("sym", "/etc/a"),
        E::File(".wh.doomed", b"", 0o644),
        E::File("replaced", b"now a file", 0o644),
    ]);
    let layers = [l0, l1];
    let cfg = TranscoderConfig::default();
    let (_, out) = squash(
        &cfg,
        layers.len(),
        &mut |i| {
            decoder(
                Compression::None,
                std::io::Cursor::new(layers[i].clone()),
                u64::MAX,
            )
        },
        Vec::new(),
    )?;
    let got = listing(&out);
    let names: Vec<&str> = got.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "base",
            "base-link",
            "base-link2",
            "etc",
            "etc/a",
            "opq",
            "opq/new",
            "replaced",
            "survivor",
            "survivor2",
            "sym"
        ]
    );
    assert_eq!(got["etc/a"], ('f', 0o600, b"a1".to_vec()));
    assert_eq!(got["base-link2"].2, b"base");
    assert_eq!(got["sym"], ('l', 0o777, b"/etc/a".to_vec()));
    // The deleted hard-link target's content moved to the first surviving link.
    assert_eq!(got["survivor"], ('f', 0o777, b"keep me".to_vec()));
    assert_eq!(got["survivor2"], ('h', 0o777, b"survivor".to_vec()));
    assert_eq!(got["replaced"].2, b"now a file");
    Ok(())
}

/// A writer that fails after `left` bytes, like a full disk.
struct FailingWriter {
    left: usize,
}

impl std::io::Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn threaded_decode_reports_the_failure_of_the_side_that_failed() {
    // Decoding runs on its own thread: a corrupt input must still be `Corrupt` (not the
    // "encoder stopped" it causes), and a failing output `Output` (the decode thread stops).
    let raw = sample_tar(3, 12 << 20);
    let gz = encode(Compression::Gzip, &raw);
    let mut cut = gz[..gz.len() * 2 / 3].to_vec();
    let mid = cut.len() / 2;
    cut[mid..mid + 64].fill(0x55);
    let cfg = TranscoderConfig::default();
    let bad_input = transcode(
        &cfg,
        Compression::Gzip,
        Compression::Zstd,
        &cut[..],
        cut.len() as u64,
        None,
        Vec::new(),
    );
    assert!(
        matches!(
            bad_input,
            Err(TranscodeError::Corrupt { format: "gzip", .. })
        ),
        "{bad_input:?}"
    );
    for to in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let full_disk = transcode(
            &cfg,
            Compression::Gzip,
            to,
            &gz[..],
            gz.len() as u64,
            None,
            FailingWriter { left: 1_000 },
        );
        assert!(
            matches!(full_disk, Err(TranscodeError::Output(_))),
            "{to:?}: {:?}",
            full_disk.err()
        );
    }
}

#[test]
fn an_index_keeps_platforms_and_annotations_and_replaces_only_derived_children() -> Res {
    use berth_transcoder::image::{rewrite_index, OCI_INDEX, OCI_MANIFEST};
    let docker_child = "application/vnd.docker.distribution.manifest.v2+json";
    let a = Digest::sha256_of(b"amd64");
    let b = Digest::sha256_of(b"arm64");
    let att = Digest::sha256_of(b"attestation");
    let source = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": docker_child, "digest": a.to_string(), "size": 10,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": docker_child, "digest": b.to_string(), "size": 11,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
             "annotations": {"x": "y"}},
            {"mediaType": OCI_MANIFEST, "digest": att.to_string(), "size": 12,
             "platform": {"architecture": "unknown", "os": "unknown"}},
        ],
        "annotations": {"org.example": "kept"},
    });
    let bytes = serde_json::to_vec(&source)?;
    let src_digest = Digest::sha256_of(&bytes);
    let (na, nb) = (Digest::sha256_of(b"new a"), Digest::sha256_of(b"new b"));
    let out = rewrite_index(
        &bytes,
        &src_digest,
        "zstd",
        &[Some((na.clone(), 100)), Some((nb.clone(), 200)), None],
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out)?;
    assert_eq!(v["mediaType"], OCI_INDEX);
    let m = &v["manifests"];
    assert_eq!(m[0]["digest"], na.to_string());
    assert_eq!(m[0]["size"], 100);
    assert_eq!(m[0]["mediaType"], OCI_MANIFEST);
    assert_eq!(m[0]["platform"], source["manifests"][0]["platform"]);
    assert_eq!(m[1]["digest"], nb.to_string());
    assert_eq!(m[1]["platform"], source["manifests"][1]["platform"]);
    assert_eq!(m[1]["annotations"], source["manifests"][1]["annotations"]);
    assert_eq!(m[2], source["manifests"][2], "a kept child is unchanged");
    assert_eq!(v["annotations"]["org.example"], "kept");
    assert_eq!(
        v["annotations"]["io.berth.derived.from"],
        src_digest.to_string()
    );
    assert_eq!(v["annotations"]["io.berth.derived.transform"], "zstd");
    // A child count that does not match is refused, not silently misaligned.
    assert!(rewrite_index(&bytes, &src_digest, "zstd", &[None]).is_err());
    Ok(())
}
