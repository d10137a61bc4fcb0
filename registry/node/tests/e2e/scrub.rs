//! `berth scrub` finds a flipped byte in a stored blob and names the blob.

use tempfile::TempDir;

use crate::support::{scrub, scrub_with, Node, Res, Rng};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn scrub_names_a_blob_with_a_flipped_byte() -> Res {
    let tmp = TempDir::new()?;
    let data_dir = tmp.path().join("data");
    let mut node = Node::start(&data_dir)?;
    let mut rng = Rng::from_clock();
    let damaged = node.push_blob("e2e/scrub", &rng.bytes((3 << 20) + 11))?;
    let intact = node.push_blob("e2e/scrub", &rng.bytes(4096))?;
    node.kill()?;

    for full in [false, true] {
        let out = scrub(&data_dir, full)?;
        assert!(out.status.success(), "clean store: {}", text(&out));
    }

    let hex = damaged.trim_start_matches("sha256:");
    let path = data_dir.join("blobs/sha256").join(&hex[..2]).join(hex);
    let mut bytes = std::fs::read(&path)?;
    let at = bytes.len() / 2 + 5;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes)?;

    // Report only, quick then full; then a default run, which also quarantines.
    for (full, quarantine) in [(false, false), (true, false), (false, true)] {
        let out = scrub_with(&data_dir, full, quarantine)?;
        let report = text(&out);
        assert!(
            !out.status.success(),
            "scrub (full={full}) missed the flip: {report}"
        );
        assert!(
            report.contains(&damaged),
            "scrub (full={full}) does not name {damaged}: {report}"
        );
        assert!(
            !report.contains(&intact),
            "scrub (full={full}) blames the intact blob: {report}"
        );
    }
    // Quarantined: the store is clean again, the damaged bytes are kept aside, and a node
    // no longer serves the blob (a new push would store a good copy).
    let out = scrub(&data_dir, true)?;
    assert!(out.status.success(), "after quarantine: {}", text(&out));
    let quarantined = std::fs::read_dir(data_dir.join("quarantine"))?.count();
    assert_eq!(
        quarantined, 2,
        "blob and its chunk index are in quarantine/"
    );
    let node = Node::start(&data_dir)?;
    let r = node.request("GET", &format!("/v2/e2e/scrub/blobs/{damaged}"), &[], b"")?;
    assert_eq!(
        r.status,
        404,
        "quarantined blob must not be served: {}",
        r.describe()
    );
    Ok(())
}
