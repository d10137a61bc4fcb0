//! Tag lifecycle with a real client: skopeo pushes images whose config carries Quay's
//! `quay.expires-after` and `quay.immutable` labels, and the node honours them.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::layout::Layout;
use crate::skopeo::skopeo_copy;
use crate::support::{require_client, Node, Res, Rng};

fn skopeo_inspect_ok(reference: &str) -> Res<bool> {
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
            reference,
        ])
        .output()?;
    Ok(out.status.success())
}

#[test]
fn expires_after_label_makes_the_tag_disappear_for_real_clients() -> Res {
    if !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.path().join("src"))?;
    let labels = json!({"quay.expires-after": "3s"});
    let image = src.build_labeled_image(&mut rng, "amd64", 1, 4096, labels)?;
    src.tag(&image.descriptor(None), "short")?;
    let remote = format!("docker://{}/e2e/expiring:short", node.host());
    skopeo_copy(&format!("oci:{}:short", src.dir.display()), &remote, false)?;
    let pushed = Instant::now();
    assert!(
        skopeo_inspect_ok(&remote)?,
        "the tag is pullable right after the push"
    );

    let info = node.request(
        "GET",
        "/api/v1/repositories/e2e/expiring/tags/short",
        &[],
        b"",
    )?;
    assert_eq!(info.status, 200, "{}", info.describe());
    let info: serde_json::Value = serde_json::from_slice(&info.body)?;
    assert!(
        info["expires_ms"].is_number(),
        "expiry recorded from the label: {info}"
    );

    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(pushed.elapsed()) + Duration::from_millis(500),
    );
    assert!(
        !skopeo_inspect_ok(&remote)?,
        "an expired tag is no longer pullable"
    );
    let tags = node.request("GET", "/v2/e2e/expiring/tags/list", &[], b"")?;
    let tags: serde_json::Value = serde_json::from_slice(&tags.body)?;
    assert_eq!(tags["tags"], json!([]), "an expired tag is not listed");
    // The manifest itself stays reachable by digest inside the time-machine window.
    let by_digest = node.request(
        "GET",
        &format!("/v2/e2e/expiring/manifests/{}", image.manifest_digest),
        &[],
        b"",
    )?;
    assert_eq!(by_digest.status, 200, "{}", by_digest.describe());
    Ok(())
}

#[test]
fn immutable_label_refuses_moving_the_tag() -> Res {
    if !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.path().join("src"))?;
    let first = src.build_labeled_image(
        &mut rng,
        "amd64",
        1,
        4096,
        json!({"quay.immutable": "true"}),
    )?;
    src.tag(&first.descriptor(None), "v1")?;
    let remote = format!("docker://{}/e2e/frozen:v1", node.host());
    skopeo_copy(&format!("oci:{}:v1", src.dir.display()), &remote, false)?;

    let second = src.build_image(&mut rng, "amd64", 1, 4096)?;
    src.tag(&second.descriptor(None), "v1")?;
    let moved = skopeo_copy(&format!("oci:{}:v1", src.dir.display()), &remote, false);
    let err = moved.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!err.is_empty(), "moving an immutable tag must fail");
    assert!(
        err.to_lowercase().contains("immutable") || err.contains("denied"),
        "error says why: {err}"
    );
    let now = node.get_manifest("e2e/frozen", "v1")?;
    assert_eq!(
        now.header("docker-content-digest"),
        Some(first.manifest_digest.as_str())
    );
    Ok(())
}
