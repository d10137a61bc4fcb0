//! podman (its own storage under a temp dir, vfs driver) pulls an image skopeo pushed, then
//! pushes it under a new name; the registry API must then serve a complete image.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

use crate::layout::{str_field, Layout};
use crate::skopeo::skopeo_copy;
use crate::support::{fail, gunzip, require_client, run, sha256_digest, Node, Res, Rng};

/// podman with every piece of state inside `dir`: no host storage, no systemd.
fn podman(dir: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .env("TMPDIR", dir);
    cmd
}

#[test]
fn podman_pull_then_push_to_a_new_repository() -> Res {
    if !require_client("podman") || !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.path().join("src"))?;
    let image = src.build_image(&mut rng, "amd64", 2, 128 << 10)?;
    src.tag(&image.descriptor(None), "v1")?;
    let source = format!("{}/e2e/podman-src:v1", node.host());
    skopeo_copy(
        &format!("oci:{}:v1", src.dir.display()),
        &format!("docker://{source}"),
        false,
    )?;

    let state = tmp.path().join("podman");
    let target = format!("{}/e2e/podman-copy:v2", node.host());
    run(podman(&state).args(["pull", "--quiet", "--tls-verify=false", &source]))?;
    run(podman(&state).args(["push", "--tls-verify=false", &source, &target]))?;

    // The new tag resolves, to a manifest whose digest the node reports correctly.
    let resp = node
        .get_manifest("e2e/podman-copy", "v2")?
        .expect_status(200, "GET pushed manifest")?;
    let digest = resp.require_header("docker-content-digest")?;
    assert_eq!(digest, sha256_digest(&resp.body));
    let manifest: Value = serde_json::from_slice(&resp.body)?;

    // Its config still describes our layers: same uncompressed contents, in order.
    let config_digest = str_field(&manifest["config"], "digest")?;
    let config = node
        .request(
            "GET",
            &format!("/v2/e2e/podman-copy/blobs/{config_digest}"),
            &[],
            b"",
        )?
        .expect_status(200, "GET config")?;
    assert_eq!(sha256_digest(&config.body), config_digest);
    let config: Value = serde_json::from_slice(&config.body)?;
    let want_diff_ids: Vec<&str> = image.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(want_diff_ids)
    );

    // Every layer is present (HEAD) and its bytes decompress to the original tar.
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| fail(format!("manifest without layers: {manifest}")))?;
    assert_eq!(layers.len(), image.layers.len());
    for (descriptor, original) in layers.iter().zip(&image.layers) {
        let layer_digest = str_field(descriptor, "digest")?;
        let path = format!("/v2/e2e/podman-copy/blobs/{layer_digest}");
        let head = node
            .request("HEAD", &path, &[], b"")?
            .expect_status(200, "HEAD layer")?;
        assert_eq!(
            head.header("content-length"),
            Some(descriptor["size"].to_string().as_str())
        );
        let blob = node
            .request("GET", &path, &[], b"")?
            .expect_status(200, "GET layer")?;
        assert_eq!(sha256_digest(&blob.body), layer_digest);
        assert_eq!(sha256_digest(&gunzip(&blob.body)?), original.diff_id);
    }
    Ok(())
}
