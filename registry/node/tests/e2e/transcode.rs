//! Derived images (issue 6): an image with whiteouts, an opaque directory, symlinks and hard
//! links within and across layers is pushed over HTTP; its `--berth-zstd` and
//! `--berth-squash` references and the `docker load` squash archive are pulled by skopeo and
//! podman, and every unpacked tree must equal the original's (names, types, modes, sizes,
//! content hashes, link targets, hard-link groups).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::layout::{read_blob, str_field, tagged_descriptor, Layout};
use crate::skopeo::skopeo_copy;
use crate::support::{
    berth_bin, fail, gzip, require_client, run, sha256_digest, sha256_hex, Node, Res, Rng,
};

enum E<'a> {
    File(&'a str, Vec<u8>, u32),
    Dir(&'a str),
    Link(&'a str, &'a str),
    Sym(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Res<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_400_000_000);
        match e {
            E::File(p, d, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, p, &d[..])?;
            }
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o750);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty())?;
            }
            E::Link(p, t) | E::Sym(p, t) => {
                let kind = match e {
                    E::Link(..) => tar::EntryType::Link,
                    _ => tar::EntryType::Symlink,
                };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// Pushes the test image as `<repo>:v1`; returns its diff_ids.
fn push_image(node: &Node, repo: &str) -> Res<Vec<String>> {
    push_image_with(node, repo, true)
}

/// Like [`push_image`]; without `cross_layer_link`, layer 1 has no hard link to a file of
/// layer 0. docker 20.10 and containerd 1.6 refuse such links even in the original image
/// ("link /base /base-link2: no such file or directory": they extract each layer on its
/// own); podman accepts them.
fn push_image_with(node: &Node, repo: &str, cross_layer_link: bool) -> Res<Vec<String>> {
    let mut rng = Rng::from_clock();
    let l0 = layer(&[
        E::Dir("etc"),
        E::File("etc/a", b"a0".to_vec(), 0o644),
        E::File("etc/gone", b"x".to_vec(), 0o644),
        E::Dir("opq"),
        E::File("opq/old", b"old".to_vec(), 0o600),
        E::Dir("bin"),
        E::File("bin/tool", rng.bytes(700 << 10), 0o755),
        E::File("base", b"base".to_vec(), 0o755),
        E::Link("base-link", "base"),
        E::File("doomed", b"keep me".to_vec(), 0o640),
        E::Link("survivor", "doomed"),
        E::Dir("replaced"),
        E::File("replaced/child", b"c".to_vec(), 0o644),
    ])?;
    let mut l1_entries = vec![
        E::Dir("etc"),
        E::File("etc/a", b"a1".to_vec(), 0o600),
        E::File("etc/.wh.gone", Vec::new(), 0o644),
        E::Dir("opq"),
        E::File("opq/.wh..wh..opq", Vec::new(), 0o644),
        E::File("opq/new", b"new".to_vec(), 0o644),
        E::Sym("sym", "/etc/a"),
        E::File(".wh.doomed", Vec::new(), 0o644),
        E::File("replaced", b"now a file".to_vec(), 0o644),
    ];
    if cross_layer_link {
        l1_entries.push(E::Link("base-link2", "base"));
    }
    let l1 = layer(&l1_entries)?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for raw in [l0, l1] {
        diff_ids.push(sha256_digest(&raw));
        let gz = gzip(&raw)?;
        let digest = node.push_blob(repo, &gz)?;
        layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": gz.len()}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/tool"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "layer 0"}, {"created_by": "layer 1"}],
    }))?;
    let config_digest = node.push_blob(repo, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))?;
    node.request(
        "PUT",
        &format!("/v2/{repo}/manifests/v1"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    )?
    .expect_status(201, "PUT manifest")?;
    Ok(diff_ids)
}

/// path -> "kind mode size sha256|target [hard-link group]"
fn tree(root: &Path) -> Res<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            visited += 1;
            if visited > 100_000 {
                return Err(fail("tree too large"));
            }
            let path = entry?.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&path)?;
            let ft = md.file_type();
            let desc = if ft.is_symlink() {
                format!("l {}", std::fs::read_link(&path)?.display())
            } else if ft.is_dir() {
                stack.push(path.clone());
                format!("d {:o}", md.mode() & 0o7777)
            } else {
                if md.nlink() > 1 {
                    inodes.entry(md.ino()).or_default().push(rel.clone());
                }
                format!(
                    "f {:o} {} {}",
                    md.mode() & 0o7777,
                    md.len(),
                    sha256_hex(&std::fs::read(&path)?)
                )
            };
            out.insert(rel, desc);
        }
    }
    for group in inodes.values_mut() {
        group.sort();
        let label = group.join(",");
        for name in group.iter() {
            if let Some(d) = out.get_mut(name) {
                d.push_str(&format!(" links[{label}]"));
            }
        }
    }
    Ok(out)
}

fn podman(dir: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("r"))
        .arg("--runroot")
        .arg(dir.join("rr"));
    cmd.args([
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]);
    cmd.env("TMPDIR", dir);
    cmd
}

fn podman_tree(state: &Path, image: &str) -> Res<BTreeMap<String, String>> {
    let out = run(podman(state).args(["image", "mount", image]))?;
    let mount = String::from_utf8(out.stdout)?.trim().to_owned();
    let t = tree(Path::new(&mount));
    let _ = run(podman(state).args(["image", "unmount", image]));
    t
}

fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, what: &str) -> Res {
    if a == b {
        return Ok(());
    }
    let mut lines = Vec::new();
    for k in a.keys().chain(b.keys()) {
        if a.get(k) != b.get(k) {
            lines.push(format!("{k}: {:?} vs {:?}", a.get(k), b.get(k)));
        }
    }
    lines.dedup();
    Err(fail(format!(
        "{what} differs from the original:\n{}",
        lines.join("\n")
    )))
}

#[test]
fn zstd_and_squashed_images_pull_with_skopeo_and_podman_and_unpack_identically() -> Res {
    if !require_client("podman") || !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let repo = "e2e/tc";
    push_image(&node, repo)?;
    let state = tmp.path().join("podman");
    let base = format!("{}/{repo}", node.host());

    // skopeo: the zstd reference is an OCI image whose layers are zstd.
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{base}:v1--berth-zstd"),
    ]))?;
    let m: Value = serde_json::from_slice(&raw.stdout)?;
    let types: Vec<&str> = m["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["mediaType"].as_str())
        .collect();
    if types != ["application/vnd.oci.image.layer.v1.tar+zstd"; 2] {
        return Err(fail(format!("zstd manifest layers: {types:?}")));
    }
    for r in ["v1--berth-zstd", "v1--berth-squash", "v1--berth-gzip"] {
        skopeo_copy(
            &format!("docker://{base}:{r}"),
            &format!("dir:{}", tmp.path().join(r).display()),
            false,
        )?;
    }

    let pull = |r: &str| {
        run(podman(&state).args([
            "pull",
            "--quiet",
            "--tls-verify=false",
            &format!("{base}:{r}"),
        ]))
    };
    pull("v1")?;
    let original = podman_tree(&state, &format!("{base}:v1"))?;
    for key in ["etc/a", "sym", "base-link2", "survivor", "opq/new"] {
        if !original.contains_key(key) {
            return Err(fail(format!("original tree lacks {key}: {original:?}")));
        }
    }
    for gone in ["etc/gone", "opq/old", "doomed", "replaced/child"] {
        if original.contains_key(gone) {
            return Err(fail(format!("original tree still has {gone}")));
        }
    }
    for r in ["v1--berth-zstd", "v1--berth-squash"] {
        pull(r)?;
        diff(&original, &podman_tree(&state, &format!("{base}:{r}"))?, r)?;
    }

    // The docker-load archive of the squashed image.
    let resp = node
        .request("GET", &format!("/berth/v1/squash/{repo}/v1"), &[], b"")?
        .expect_status(200, "squash archive")?;
    let archive = tmp.path().join("squash.tar");
    std::fs::write(&archive, &resp.body)?;
    let loaded = run(podman(&state).args(["load", "-i"]).arg(&archive))?;
    let text = String::from_utf8_lossy(&loaded.stdout).into_owned();
    let name = text
        .lines()
        .find_map(|l| l.split_once(": ").map(|(_, n)| n.trim().to_owned()))
        .ok_or_else(|| fail(format!("podman load said {text:?}")))?;
    diff(
        &original,
        &podman_tree(&state, &name)?,
        "docker-load archive",
    )?;
    Ok(())
}

#[test]
fn reserved_tags_are_refused_and_corrupt_layers_give_oci_errors() -> Res {
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let repo = "e2e/bad";
    let resp = node.request(
        "PUT",
        &format!("/v2/{repo}/manifests/v1--berth-zstd"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        b"{}",
    )?;
    if resp.status != 400 || !String::from_utf8_lossy(&resp.body).contains("DENIED") {
        return Err(fail(format!("reserved tag push: {}", resp.describe())));
    }
    // A layer whose gzip stream is cut in half.
    let raw = layer(&[E::File("f", vec![7u8; 200_000], 0o644)])?;
    let gz = gzip(&raw)?;
    let cut = &gz[..gz.len() / 2];
    let digest = node.push_blob(repo, cut)?;
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&raw)]}}),
    )?;
    let cd = node.push_blob(repo, &config)?;
    let manifest = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": cut.len()}]}),
    )?;
    node.request(
        "PUT",
        &format!("/v2/{repo}/manifests/v1"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    )?
    .expect_status(201, "PUT manifest")?;
    let resp = node.get_manifest(repo, "v1--berth-zstd")?;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    // 422 MANIFEST_INVALID (the rationale is in registry/src/error.rs), naming the layer.
    let err: Value = serde_json::from_str(&body)?;
    let e0 = &err["errors"][0];
    if resp.status != 422
        || e0["code"] != "MANIFEST_INVALID"
        || e0["detail"]["reason"] != "LAYER_CORRUPT"
        || e0["detail"]["layer"] != json!(digest)
        || !e0["message"]
            .as_str()
            .unwrap_or_default()
            .contains("corrupt")
    {
        return Err(fail(format!("corrupt layer: {}", resp.describe())));
    }
    // Nothing half-written is left in the staging area.
    let uploads = tmp.path().join("data").join("uploads");
    let left = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    if left != 0 {
        return Err(fail(format!(
            "{left} staging entries left after a failed conversion"
        )));
    }
    Ok(())
}

/// sha256 of a zstd blob's decompressed content (the layer's diff_id).
fn zstd_diff_id(blob: &[u8]) -> Res<String> {
    use std::io::Read;
    let mut dec = berth_transcoder::decoder(berth_transcoder::Compression::Zstd, blob, 1 << 30)?;
    let mut plain = Vec::new();
    dec.read_to_end(&mut plain)?;
    Ok(sha256_digest(&plain))
}

/// `podman pull --quiet REF` into a private store; returns the image id.
fn podman_pull_id(state: &Path, reference: &str) -> Res<String> {
    let out = run(podman(state).args(["pull", "--quiet", "--tls-verify=false", reference]))?;
    let id = String::from_utf8(out.stdout)?.trim().to_owned();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(fail(format!("podman pull {reference} printed {id:?}")));
    }
    Ok(id)
}

#[test]
fn offline_transcode_writes_a_zstd_layout_with_the_same_diff_ids_and_tree() -> Res {
    // podman names an `oci:` image after its path, and image names must be lowercase.
    let tmp = tempfile::Builder::new()
        .prefix(&format!("berth-tc-{}", crate::support::unique_token()))
        .rand_bytes(0)
        .tempdir()?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.path().join("src"))?;
    let image = src.build_image(&mut rng, "amd64", 3, 300 << 10)?;
    src.tag(&image.descriptor(None), "v1")?;
    let out = tmp.path().join("out");
    run(Command::new(berth_bin())
        .args(["transcode", "--to", "zstd"])
        .arg(&src.dir)
        .arg(&out)
        .env_remove("BERTH_CONFIG"))?;

    let desc = tagged_descriptor(&out, "v1")?;
    let digest = str_field(&desc, "digest")?;
    let manifest_bytes = read_blob(&out, digest)?;
    if sha256_digest(&manifest_bytes) != digest {
        return Err(fail("index.json names a manifest blob with another digest"));
    }
    let m: Value = serde_json::from_slice(&manifest_bytes)?;
    // The config, and with it rootfs.diff_ids, is carried over byte for byte.
    if str_field(&m["config"], "digest")? != image.config_digest {
        return Err(fail(format!("config changed: {}", m["config"])));
    }
    let config: Value = serde_json::from_slice(&read_blob(&out, &image.config_digest)?)?;
    let want: Vec<&str> = image.layers.iter().map(|l| l.diff_id.as_str()).collect();
    if config["rootfs"]["diff_ids"] != json!(want) {
        return Err(fail(format!("diff_ids changed: {}", config["rootfs"])));
    }
    let layers = m["layers"].as_array().cloned().unwrap_or_default();
    if layers.len() != image.layers.len() {
        return Err(fail(format!(
            "{} layers, want {}",
            layers.len(),
            want.len()
        )));
    }
    for (l, diff_id) in layers.iter().zip(&want) {
        let d = str_field(l, "digest")?;
        let blob = read_blob(&out, d)?;
        if str_field(l, "mediaType")? != "application/vnd.oci.image.layer.v1.tar+zstd"
            || sha256_digest(&blob) != d
            || l["size"] != json!(blob.len())
            || zstd_diff_id(&blob)? != *diff_id
        {
            return Err(fail(format!("layer {l} is not the zstd form of {diff_id}")));
        }
    }

    // Real clients accept the layout: skopeo verifies every digest while copying, podman
    // unpacks both layouts to the same tree.
    if require_client("skopeo") {
        skopeo_copy(
            &format!("oci:{}:v1", out.display()),
            &format!("dir:{}", tmp.path().join("copied").display()),
            false,
        )?;
    }
    if require_client("podman") {
        let state = tmp.path().join("podman");
        let a = podman_pull_id(&state, &format!("oci:{}:v1", src.dir.display()))?;
        let b = podman_pull_id(&state, &format!("oci:{}:v1", out.display()))?;
        let original = podman_tree(&state, &a)?;
        if original.len() < 3 {
            return Err(fail(format!("unpacked tree too small: {original:?}")));
        }
        diff(&original, &podman_tree(&state, &b)?, "offline zstd layout")?;
    }
    Ok(())
}

/// Waits (bounded) for a log line containing `needle`; returns the line.
fn wait_for_log(node: &Node, needle: &str, limit: Duration) -> Res<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(line) = node.log_text().lines().find(|l| l.contains(needle)) {
            return Ok(line.to_owned());
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "no log line with {needle:?} after {limit:?}:\n{}",
                node.log_text()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first `sha256:<64 hex>` in `text`.
fn first_digest(text: &str) -> Option<String> {
    text.match_indices("sha256:").find_map(|(i, _)| {
        let hex = text.get(i + 7..i + 71)?;
        hex.bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| format!("sha256:{hex}"))
    })
}

#[test]
fn eager_conversion_stores_the_zstd_image_at_push_time() -> Res {
    let tmp = TempDir::new()?;
    let config = tmp.path().join("berth.toml");
    std::fs::write(
        &config,
        "[registry.transcoder]\neager_repositories = [\"eager/*\"]\neager_variants = [\"zstd\"]\n",
    )?;
    let node = Node::start_with(
        &tmp.path().join("data"),
        &["--config".into(), config.display().to_string()],
    )?;
    push_image(&node, "lazy/app")?;
    push_image(&node, "eager/app")?;

    // Nobody asks for a `--berth-` reference: the derived manifest must appear on its own.
    let line = wait_for_log(&node, "eager conversion done", Duration::from_secs(60))?;
    if !line.contains("eager/app") {
        return Err(fail(format!(
            "eager conversion of the wrong repository: {line}"
        )));
    }
    let digest = first_digest(&line).ok_or_else(|| fail(format!("no digest in {line:?}")))?;
    let stored = node.get_manifest("eager/app", &digest)?;
    let stored = stored.expect_status(200, "derived manifest by digest, before any request")?;
    let m: Value = serde_json::from_slice(&stored.body)?;
    for l in m["layers"].as_array().into_iter().flatten() {
        if l["mediaType"] != "application/vnd.oci.image.layer.v1.tar+zstd" {
            return Err(fail(format!("eager layer {l}")));
        }
        let d = str_field(l, "digest")?;
        node.request("HEAD", &format!("/v2/eager/app/blobs/{d}"), &[], b"")?
            .expect_status(200, "eager zstd layer")?;
    }
    // Asking now is answered by that same manifest, not by a second build.
    let resp = node.get_manifest("eager/app", "v1--berth-zstd")?;
    let resp = resp.expect_status(200, "derived reference")?;
    if resp.header("docker-content-digest") != Some(digest.as_str()) {
        return Err(fail(format!("{digest} vs {}", resp.describe())));
    }
    if node.log_text().matches("layer converted").count() != 2 {
        return Err(fail(format!(
            "expected 2 conversions:\n{}",
            node.log_text()
        )));
    }
    // A repository outside the pattern is not converted.
    let log = node.log_text();
    if log
        .lines()
        .any(|l| l.contains("eager conversion") && l.contains("lazy/app"))
    {
        return Err(fail("lazy/app was converted eagerly"));
    }
    Ok(())
}

/// containerd's socket: docker's embedded containerd, or a standalone one.
fn containerd_socket() -> Option<&'static str> {
    [
        "/run/containerd/containerd.sock",
        "/var/run/docker/containerd/containerd.sock",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

/// Removes what a test pulled into containerd (a private namespace) or the docker daemon,
/// also when the test fails.
struct PulledCleanup {
    ctr: Option<(&'static str, String, Vec<String>)>,
    docker: Vec<String>,
}

impl Drop for PulledCleanup {
    fn drop(&mut self) {
        use std::process::Stdio;
        if let Some((socket, ns, images)) = &self.ctr {
            let ctr = |args: &[&str]| {
                let _ = Command::new("ctr")
                    .args(["--address", socket, "--namespace", ns])
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            };
            for image in images {
                ctr(&["images", "rm", "--sync", image]);
            }
            ctr(&["content", "prune", "references"]);
            let _ = Command::new("ctr")
                .args(["--address", socket, "namespaces", "rm", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for image in &self.docker {
            let _ = Command::new("docker")
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn containerd_pulls_and_unpacks_the_zstd_image_like_the_original() -> Res {
    let socket = match containerd_socket() {
        Some(s) if require_client("ctr") => s,
        Some(_) => return Ok(()),
        None => {
            if std::env::var("BERTH_E2E_REQUIRED").as_deref() == Ok("1") {
                return Err(fail("no containerd socket, and BERTH_E2E_REQUIRED=1"));
            }
            println!("SKIP: no containerd socket");
            return Ok(());
        }
    };
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    push_image_with(&node, "e2e/ctr", false)?;
    let ns = format!("berth-e2e-{}", crate::support::unique_token());
    let base = format!("{}/e2e/ctr", node.host());
    let refs = [format!("{base}:v1"), format!("{base}:v1--berth-zstd")];
    let _cleanup = PulledCleanup {
        ctr: Some((socket, ns.clone(), refs.to_vec())),
        docker: Vec::new(),
    };
    let ctr = || {
        let mut c = Command::new("ctr");
        c.args(["--address", socket, "--namespace", &ns]);
        c
    };
    let mut trees = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        run(ctr().args(["images", "pull", "--plain-http", r]))?;
        let mount = tmp.path().join(format!("mnt{i}"));
        std::fs::create_dir_all(&mount)?;
        run(ctr().args(["images", "mount", r]).arg(&mount))?;
        let t = tree(&mount);
        let _ = run(ctr().args(["images", "unmount", "--rm"]).arg(&mount));
        trees.push(t?);
    }
    if !trees[0].contains_key("etc/a") || trees[0].contains_key("etc/gone") {
        return Err(fail(format!("containerd unpacked {:?}", trees[0])));
    }
    diff(&trees[0], &trees[1], "containerd's zstd image")
}

/// The file tree docker unpacks for `image`: `docker create` + `docker export`, extracted.
fn docker_tree(image: &str, dir: &Path) -> Res<BTreeMap<String, String>> {
    let out = run(Command::new("docker").args(["create", image]))?;
    let id = String::from_utf8(out.stdout)?.trim().to_owned();
    let archive = dir.with_extension("tar");
    let exported = run(Command::new("docker")
        .args(["export", "-o"])
        .arg(&archive)
        .arg(&id));
    let _ = run(Command::new("docker").args(["rm", "-f", &id]));
    exported?;
    std::fs::create_dir_all(dir)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(dir))?;
    tree(dir)
}

/// The docker daemon pulls both recompressed variants, recomputes the same diff_ids
/// (measured: Debian's docker 20.10.24 reads zstd layers too) and unpacks the same tree as
/// from the original (compared through `docker export`, which adds the same /etc/hosts,
/// /dev, ... to both).
#[test]
fn docker_pulls_the_gzip_and_zstd_variants_with_unchanged_diff_ids() -> Res {
    if !require_client("docker") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let diff_ids = push_image_with(&node, "e2e/dk", false)?;
    let base = format!("{}/e2e/dk:v1", node.host());
    let refs = [format!("{base}--berth-gzip"), format!("{base}--berth-zstd")];
    let _cleanup = PulledCleanup {
        ctr: None,
        docker: [base.clone()].into_iter().chain(refs.clone()).collect(),
    };
    run(Command::new("docker").args(["pull", "--quiet", &base]))?;
    let original = docker_tree(&base, &tmp.path().join("original"))?;
    if !original.contains_key("etc/a") || original.contains_key("etc/gone") {
        return Err(fail(format!("docker unpacked {original:?}")));
    }
    for (i, r) in refs.iter().enumerate() {
        run(Command::new("docker").args(["pull", "--quiet", r]))?;
        let out = run(Command::new("docker").args([
            "image",
            "inspect",
            "--format",
            "{{json .RootFS.Layers}}",
            r,
        ]))?;
        let layers: Vec<String> = serde_json::from_slice(&out.stdout)?;
        if layers != diff_ids {
            return Err(fail(format!(
                "docker's diff_ids of {r}: {layers:?}, want {diff_ids:?}"
            )));
        }
        let derived = docker_tree(r, &tmp.path().join(format!("derived{i}")))?;
        diff(&original, &derived, &format!("docker's {r}"))?;
    }
    Ok(())
}

/// `berth_<name> <value>` from `/metrics`.
fn metric(node: &Node, name: &str) -> Res<u64> {
    let resp = node
        .request("GET", "/metrics", &[], b"")?
        .expect_status(200, "/metrics")?;
    let text = String::from_utf8(resp.body)?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| fail(format!("no {name} in /metrics:\n{text}")))
}

#[test]
fn derived_images_are_built_once_and_survive_a_restart_without_converting_again() -> Res {
    let tmp = TempDir::new()?;
    let data = tmp.path().join("data");
    let mut node = Node::start(&data)?;
    let repo = "e2e/restart";
    push_image(&node, repo)?;
    // Single flight: concurrent first requests share one build (2 layers converted once).
    let digests = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| -> Res<String> {
                    let resp = node.get_manifest(repo, "v1--berth-zstd")?;
                    let resp = resp.expect_status(200, "concurrent derived request")?;
                    Ok(resp.require_header("docker-content-digest")?.to_owned())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| fail("request thread panicked"))?)
            .collect::<Res<Vec<String>>>()
    })?;
    if digests.iter().any(|d| *d != digests[0]) {
        return Err(fail(format!("concurrent requests got {digests:?}")));
    }
    if metric(&node, "berth_transcode_layers_total")? != 2 {
        return Err(fail(format!(
            "4 concurrent requests converted {} layers, want 2",
            metric(&node, "berth_transcode_layers_total")?
        )));
    }
    let mut served = Vec::new();
    for r in ["v1--berth-zstd", "v1--berth-squash"] {
        let resp = node.get_manifest(repo, r)?.expect_status(200, r)?;
        served.push((
            r,
            resp.require_header("docker-content-digest")?.to_owned(),
            resp.body,
        ));
    }
    // Two layers converted to zstd, one squashed layer.
    if metric(&node, "berth_transcode_layers_total")? != 3 {
        return Err(fail(format!("before the restart:\n{}", node.log_text())));
    }
    node.terminate(Duration::from_secs(30))?;

    let node = Node::start(&data)?;
    for (r, digest, body) in &served {
        let resp = node.get_manifest(repo, r)?.expect_status(200, r)?;
        if resp.header("docker-content-digest") != Some(digest.as_str()) || resp.body != *body {
            return Err(fail(format!("{r} after the restart: {}", resp.describe())));
        }
    }
    let converted = metric(&node, "berth_transcode_layers_total")?;
    let built = metric(&node, "berth_derived_manifests_built_total")?;
    if converted != 0 || built != 0 {
        return Err(fail(format!(
            "after the restart {converted} layers were converted and {built} manifests built again"
        )));
    }
    // The docker-load archive is served from the same cached squash.
    node.request("GET", &format!("/berth/v1/squash/{repo}/v1"), &[], b"")?
        .expect_status(200, "squash archive after the restart")?;
    if metric(&node, "berth_transcode_layers_total")? != 0 {
        return Err(fail("the squash archive squashed again after the restart"));
    }
    Ok(())
}

/// Pushes a one-layer image for `arch` (by digest); returns its descriptor and diff_id.
fn push_platform_image(node: &Node, repo: &str, arch: &str) -> Res<(Value, String)> {
    let raw = layer(&[
        E::Dir("etc"),
        E::File("etc/arch", arch.as_bytes().to_vec(), 0o644),
        E::File("bin/tool", Rng::from_clock().bytes(300 << 10), 0o755),
        E::Link("bin/tool-link", "bin/tool"),
    ])?;
    let diff_id = sha256_digest(&raw);
    let gz = gzip(&raw)?;
    let ld = node.push_blob(repo, &gz)?;
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))?;
    let cd = node.push_blob(repo, &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": gz.len()}],
    }))?;
    let md = sha256_digest(&manifest);
    node.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{md}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    )?
    .expect_status(201, "PUT platform manifest")?;
    let desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
        "size": manifest.len(), "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"org.example.arch": arch}});
    Ok((desc, diff_id))
}

#[test]
fn a_multi_platform_index_derives_every_platform_and_keeps_the_rest() -> Res {
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let repo = "e2e/multi";
    let (amd, amd_diff) = push_platform_image(&node, repo, "amd64")?;
    let (arm, arm_diff) = push_platform_image(&node, repo, "arm64")?;
    // An attestation-like child (not a tar layer): kept as it is.
    let statement = br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#;
    let sd = node.push_blob(repo, statement)?;
    let att_config =
        br#"{"architecture":"unknown","os":"unknown","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let acd = node.push_blob(repo, att_config)?;
    let att = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": acd, "size": att_config.len()},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": sd, "size": statement.len()}],
    }))?;
    let att_digest = sha256_digest(&att);
    node.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{att_digest}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &att,
    )?
    .expect_status(201, "PUT attestation")?;
    let att_desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": att_digest, "size": att.len(),
        "platform": {"architecture": "unknown", "os": "unknown"}});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd, arm, att_desc], "annotations": {"org.example.kept": "yes"},
    }))?;
    node.request(
        "PUT",
        &format!("/v2/{repo}/manifests/v1"),
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        &index,
    )?
    .expect_status(201, "PUT index")?;

    let resp = node
        .get_manifest(repo, "v1--berth-zstd")?
        .expect_status(200, "derived index")?;
    if resp.header("content-type") != Some("application/vnd.oci.image.index.v1+json") {
        return Err(fail(format!("derived index: {}", resp.describe())));
    }
    let derived: Value = serde_json::from_slice(&resp.body)?;
    let children = derived["manifests"].as_array().cloned().unwrap_or_default();
    let source_children = [&amd, &arm, &att_desc];
    if children.len() != 3 || derived["annotations"]["org.example.kept"] != "yes" {
        return Err(fail(format!("derived index {derived}")));
    }
    for (i, (child, want_diff)) in children.iter().zip([&amd_diff, &arm_diff]).enumerate() {
        let src = source_children[i];
        if child["platform"] != src["platform"]
            || child["annotations"] != src["annotations"]
            || child["digest"] == src["digest"]
        {
            return Err(fail(format!("child {i}: {child} from {src}")));
        }
        let m = node
            .get_manifest(repo, str_field(child, "digest")?)?
            .expect_status(200, "derived child")?;
        let m: Value = serde_json::from_slice(&m.body)?;
        let l = &m["layers"][0];
        if l["mediaType"] != "application/vnd.oci.image.layer.v1.tar+zstd" {
            return Err(fail(format!("child {i} layer {l}")));
        }
        let blob = node
            .request(
                "GET",
                &format!("/v2/{repo}/blobs/{}", str_field(l, "digest")?),
                &[],
                b"",
            )?
            .expect_status(200, "derived layer")?;
        if zstd_diff_id(&blob.body)? != *want_diff {
            return Err(fail(format!(
                "child {i}: the zstd layer is not the original tar"
            )));
        }
    }
    if children[2] != att_desc {
        return Err(fail(format!(
            "the attestation child changed: {}",
            children[2]
        )));
    }

    // Real clients: skopeo copies every platform (verifying each digest), podman unpacks the
    // arm64 platform of both indexes to the same tree.
    if require_client("skopeo") {
        skopeo_copy(
            &format!("docker://{}/{repo}:v1--berth-zstd", node.host()),
            &format!("oci:{}:v1", tmp.path().join("all").display()),
            true,
        )?;
    }
    if require_client("podman") {
        let state = tmp.path().join("podman");
        let mut trees = Vec::new();
        for r in ["v1", "v1--berth-zstd"] {
            let image = format!("{}/{repo}:{r}", node.host());
            run(podman(&state).args([
                "pull",
                "--quiet",
                "--tls-verify=false",
                "--arch",
                "arm64",
                &image,
            ]))?;
            trees.push(podman_tree(&state, &image)?);
        }
        if !trees[0]
            .get("etc/arch")
            .is_some_and(|d| d.contains(&sha256_hex(b"arm64")))
        {
            return Err(fail(format!("podman unpacked {:?}", trees[0])));
        }
        diff(&trees[0], &trees[1], "arm64 of the zstd index")?;
    }
    Ok(())
}

#[test]
fn offline_transcode_converts_every_platform_of_an_index() -> Res {
    let tmp = TempDir::new()?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.path().join("src"))?;
    let images = [
        src.build_image(&mut rng, "amd64", 2, 200 << 10)?,
        src.build_image(&mut rng, "arm64", 1, 200 << 10)?,
    ];
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [images[0].descriptor(Some("amd64")), images[1].descriptor(Some("arm64"))],
        "annotations": {"org.example.kept": "yes"},
    }))?;
    let index_digest = src.put(&index)?;
    src.tag(
        &json!({"mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": index.len()}),
        "v1",
    )?;
    let out = tmp.path().join("out");
    run(Command::new(berth_bin())
        .args(["transcode", "--to", "zstd"])
        .arg(&src.dir)
        .arg(&out)
        .env_remove("BERTH_CONFIG"))?;

    let desc = tagged_descriptor(&out, "v1")?;
    let new_index: Value = serde_json::from_slice(&read_blob(&out, str_field(&desc, "digest")?)?)?;
    if desc["mediaType"] != "application/vnd.oci.image.index.v1+json"
        || new_index["annotations"]["org.example.kept"] != "yes"
        || new_index["annotations"]["io.berth.derived.from"] != json!(index_digest)
    {
        return Err(fail(format!("converted index {desc} {new_index}")));
    }
    let children = new_index["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if children.len() != 2 {
        return Err(fail(format!("converted index {new_index}")));
    }
    for ((child, image), arch) in children.iter().zip(&images).zip(["amd64", "arm64"]) {
        if child["platform"]["architecture"] != arch {
            return Err(fail(format!("child {child}, want {arch}")));
        }
        let m: Value = serde_json::from_slice(&read_blob(&out, str_field(child, "digest")?)?)?;
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        if layers.len() != image.layers.len() {
            return Err(fail(format!("{arch}: {m}")));
        }
        for (l, original) in layers.iter().zip(&image.layers) {
            let blob = read_blob(&out, str_field(l, "digest")?)?;
            if l["mediaType"] != "application/vnd.oci.image.layer.v1.tar+zstd"
                || zstd_diff_id(&blob)? != original.diff_id
            {
                return Err(fail(format!(
                    "{arch}: layer {l} is not the zstd form of {}",
                    original.diff_id
                )));
            }
        }
    }
    // skopeo verifies every digest of every platform while copying.
    if require_client("skopeo") {
        skopeo_copy(
            &format!("oci:{}:v1", out.display()),
            &format!("oci:{}:v1", tmp.path().join("copied").display()),
            true,
        )?;
    }
    Ok(())
}
