//! Blob reads through the node's real HTTP server, where bodies past the first chunk leave
//! by `sendfile(2)` (registry/src/zerocopy.rs): whole bodies, ranges across chunk
//! boundaries, several responses on one keep-alive connection, concurrent readers, and a
//! corrupt chunk in the middle of a blob, which must break the transfer before any bad byte
//! is sent.

use std::io::{Read, Write};

use tempfile::TempDir;

use crate::support::{connect, fail, sha256_hex, Node, Res, Rng};

const MIB: usize = 1 << 20;

#[test]
fn reads_through_the_server_are_byte_exact() -> Res {
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let blob = Rng::from_clock().bytes(5 * MIB + 123);
    let digest = node.push_blob("e2e/reads", &blob)?;
    let path = format!("/v2/e2e/reads/blobs/{digest}");

    let whole = node
        .request("GET", &path, &[], b"")?
        .expect_status(200, "GET")?;
    if whole.body != blob {
        return Err(fail(format!(
            "whole body differs: sha256 {} vs {}",
            sha256_hex(&whole.body),
            sha256_hex(&blob)
        )));
    }
    let len = blob.len();
    for (first, last) in [
        (0, 0),
        (MIB - 1, MIB),
        (MIB + MIB / 2, 4 * MIB + 200 * 1024),
        (3 * MIB, len - 1),
        (len - 1000, len - 1),
    ] {
        let range = format!("bytes={first}-{last}");
        let r = node
            .request("GET", &path, &[("Range", &range)], b"")?
            .expect_status(206, &range)?;
        if r.body[..] != blob[first..=last] {
            return Err(fail(format!("{range}: body differs")));
        }
    }

    // Three responses on one keep-alive connection, requests pipelined in one write: each
    // body must be its own blob's bytes (frames of one response never leak into the next).
    let small = Rng::from_clock().bytes(3 * MIB + 7);
    let small_digest = node.push_blob("e2e/reads", &small)?;
    let mut stream = connect(node.addr)?;
    let mut requests = String::new();
    for (p, last) in [
        (&path, false),
        (&format!("/v2/e2e/reads/blobs/{small_digest}"), false),
        (&path, true),
    ] {
        let close = if last { "Connection: close\r\n" } else { "" };
        requests.push_str(&format!(
            "GET {p} HTTP/1.1\r\nHost: {}\r\n{close}\r\n",
            node.addr
        ));
    }
    stream.write_all(requests.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let mut rest = &raw[..];
    for (i, want) in [&blob, &small, &blob].into_iter().enumerate() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| fail(format!("pipelined response {i}: no head")))?;
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(fail(format!("pipelined response {i}: {head}")));
        }
        let body_start = end + 4;
        let body = rest
            .get(body_start..body_start + want.len())
            .ok_or_else(|| fail(format!("pipelined response {i}: body cut short")))?;
        if body != &want[..] {
            return Err(fail(format!("pipelined response {i}: body differs")));
        }
        rest = &rest[body_start + want.len()..];
    }
    if !rest.is_empty() {
        return Err(fail(format!(
            "{} stray bytes after the last response",
            rest.len()
        )));
    }

    // Concurrent readers of the same blob.
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (addr, path) = (node.addr, path.clone());
            std::thread::spawn(move || crate::support::request(addr, "GET", &path, &[], b""))
        })
        .collect();
    for reader in readers {
        let r = reader
            .join()
            .map_err(|_| fail("reader panicked"))??
            .expect_status(200, "concurrent GET")?;
        if r.body != blob {
            return Err(fail("a concurrent reader got different bytes"));
        }
    }
    Ok(())
}

#[test]
fn a_corrupt_chunk_mid_blob_breaks_the_transfer_before_any_bad_byte() -> Res {
    let tmp = TempDir::new()?;
    let data_dir = tmp.path().join("data");
    let node = Node::start(&data_dir)?;
    let blob = Rng::from_clock().bytes(4 * MIB + 5);
    let digest = node.push_blob("e2e/reads", &blob)?;
    let hex = digest.trim_start_matches("sha256:");
    let file = data_dir.join("blobs/sha256").join(&hex[..2]).join(hex);
    let mut bytes = std::fs::read(&file)?;
    let flipped_at = 2 * MIB + MIB / 2;
    bytes[flipped_at] ^= 0x40;
    std::fs::write(&file, bytes)?;

    let path = format!("/v2/e2e/reads/blobs/{digest}");
    let mut stream = connect(node.addr)?;
    stream.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            node.addr
        )
        .as_bytes(),
    )?;
    let mut raw = Vec::new();
    // The server aborts the connection: a reset is as good as an early EOF here.
    let _ = stream.read_to_end(&mut raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fail("no response head"))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let body = &raw[end + 4..];
    assert!(
        body.len() <= flipped_at - flipped_at % MIB,
        "{} body bytes arrived: the corrupt chunk (from byte {}) must not be sent",
        body.len(),
        flipped_at - flipped_at % MIB
    );
    assert!(
        body[..] == blob[..body.len()],
        "the bytes that were sent differ from the blob"
    );

    // The blob is quarantined: later reads say it is unknown instead of serving it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = node.request("GET", &path, &[], b"")?;
        if r.status == 404 {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(fail(format!(
                "corrupt blob still answered {} after 10 s",
                r.status
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}
