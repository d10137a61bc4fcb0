//! skopeo round trips: an OCI layout made here is copied into the node and back out, and
//! every digest and byte must survive.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::layout::{read_blob, str_field, tagged_descriptor, Layout, OCI_INDEX};
use crate::support::{fail, require_client, run, sha256_digest, Node, Res, Rng};

/// `skopeo copy [--all] SRC DST` against our plain-HTTP node.
pub fn skopeo_copy(src: &str, dst: &str, all: bool) -> Res {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]);
    if all {
        cmd.arg("--all");
    }
    run(cmd.arg(src).arg(dst))?;
    Ok(())
}

/// `skopeo inspect --raw REF`: the manifest bytes exactly as the source serves them.
fn skopeo_raw(reference: &str) -> Res<Vec<u8>> {
    let out = run(Command::new("skopeo").args([
        "--insecure-policy",
        "inspect",
        "--raw",
        "--tls-verify=false",
        reference,
    ]))?;
    Ok(out.stdout)
}

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

#[test]
fn skopeo_round_trip_keeps_digests_and_layer_bytes() -> Res {
    if !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.path().join("src"))?;
    let image = src.build_image(&mut rng, "amd64", 2, 256 << 10)?;
    src.tag(&image.descriptor(None), "v1")?;

    let remote = format!("docker://{}/e2e/single:v1", node.host());
    skopeo_copy(&oci_ref(&src.dir, "v1"), &remote, false)?;
    let out_dir = tmp.path().join("out");
    skopeo_copy(&remote, &oci_ref(&out_dir, "v1"), false)?;

    // The registry serves exactly the pushed manifest, under its digest.
    let resp = node
        .get_manifest("e2e/single", "v1")?
        .expect_status(200, "GET manifest by tag")?;
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    assert_eq!(resp.body, image.manifest, "registry altered the manifest");
    assert_eq!(sha256_digest(&skopeo_raw(&remote)?), image.manifest_digest);

    // What came back out is the same image, byte for byte.
    let back = tagged_descriptor(&out_dir, "v1")?;
    assert_eq!(str_field(&back, "digest")?, image.manifest_digest);
    let manifest = skopeo_raw(&oci_ref(&out_dir, "v1"))?;
    assert_eq!(sha256_digest(&manifest), image.manifest_digest);
    assert_eq!(manifest, image.manifest);
    assert_eq!(
        read_blob(&out_dir, &image.config_digest)?,
        read_blob(&src.dir, &image.config_digest)?
    );
    for layer in &image.layers {
        let copied = read_blob(&out_dir, &layer.digest)?;
        assert!(
            copied == layer.blob,
            "layer {} differs after the round trip",
            layer.digest
        );
    }
    Ok(())
}

#[test]
fn skopeo_all_round_trip_keeps_a_multi_arch_index() -> Res {
    if !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.path().join("src"))?;
    let amd = src.build_image(&mut rng, "amd64", 2, 64 << 10)?;
    let arm = src.build_image(&mut rng, "arm64", 1, 96 << 10)?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [amd.descriptor(Some("amd64")), arm.descriptor(Some("arm64"))],
    }))?;
    let index_digest = src.put(&index)?;
    src.tag(
        &serde_json::json!({"mediaType": OCI_INDEX, "digest": index_digest, "size": index.len()}),
        "v1",
    )?;

    let remote = format!("docker://{}/e2e/multi:v1", node.host());
    skopeo_copy(&oci_ref(&src.dir, "v1"), &remote, true)?;
    let out_dir = tmp.path().join("out");
    skopeo_copy(&remote, &oci_ref(&out_dir, "v1"), true)?;

    // The registry returns the original index bytes by tag, and each child by digest.
    let resp = node
        .get_manifest("e2e/multi", "v1")?
        .expect_status(200, "GET index by tag")?;
    assert_eq!(resp.header("content-type"), Some(OCI_INDEX));
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(index_digest.as_str())
    );
    assert!(resp.body == index, "registry altered the index");
    for child in [&amd, &arm] {
        let resp = node
            .get_manifest("e2e/multi", &child.manifest_digest)?
            .expect_status(200, "GET child manifest by digest")?;
        assert_eq!(resp.body, child.manifest);
    }

    // The copy that came back out has the same index and children.
    let back = tagged_descriptor(&out_dir, "v1")?;
    assert_eq!(str_field(&back, "digest")?, index_digest);
    assert_eq!(str_field(&back, "mediaType")?, OCI_INDEX);
    let back_index = read_blob(&out_dir, &index_digest)?;
    assert_eq!(sha256_digest(&back_index), index_digest);
    let parsed: serde_json::Value = serde_json::from_slice(&back_index)?;
    let children: Vec<&str> = parsed["manifests"]
        .as_array()
        .ok_or_else(|| fail("index without manifests"))?
        .iter()
        .map(|d| str_field(d, "digest"))
        .collect::<Res<_>>()?;
    assert_eq!(
        children,
        [amd.manifest_digest.as_str(), arm.manifest_digest.as_str()]
    );
    for child in [&amd, &arm] {
        let manifest = read_blob(&out_dir, &child.manifest_digest)?;
        assert_eq!(sha256_digest(&manifest), child.manifest_digest);
        for layer in &child.layers {
            assert!(
                read_blob(&out_dir, &layer.digest)? == layer.blob,
                "layer {} differs after the round trip",
                layer.digest
            );
        }
    }
    Ok(())
}
