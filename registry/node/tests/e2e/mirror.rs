//! Pull-through mirror (issue 5, part 1): an origin node and a mirror node
//! (`--upstream`) on loopback, driven by skopeo, the Docker daemon (`registry-mirrors`) and
//! containerd (`ctr --hosts-dir`, which adds `?ns=<registry>`).
//!
//! The Docker test edits `/etc/docker/daemon.json` and reloads dockerd with SIGHUP; a
//! [`DaemonJsonGuard`] restores the exact original bytes and reloads again, also when the
//! test fails. Docker tests in this binary are serialised by [`DOCKER_DAEMON_LOCK`].

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::layout::{read_blob, str_field, tagged_descriptor, Image, Layout};
use crate::skopeo::skopeo_copy;
use crate::support::{
    fail, metric, request, require_client, run, sha256_digest, unique_token, Node, Res, Rng,
};

/// The bigger layer of the mirror tests' image.
const MIRROR_LAYER: usize = 1536 << 10;

/// Serialises tests that reconfigure the shared Docker daemon.
pub(crate) static DOCKER_DAEMON_LOCK: Mutex<()> = Mutex::new(());
const DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// How long dockerd may take to apply a reloaded configuration.
const DAEMON_RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// An origin node under `tmp` holding a random 2-layer image (the bigger layer
/// `big_layer_bytes`) as `repo:v1`, pushed by skopeo from an OCI layout.
pub(crate) fn origin_with_image(
    tmp: &Path,
    repo: &str,
    big_layer_bytes: usize,
) -> Res<(Node, Layout, Image)> {
    let origin = Node::start(&tmp.join("origin"))?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.join("src"))?;
    let image = src.build_image(&mut rng, "amd64", 2, big_layer_bytes)?;
    src.tag(&image.descriptor(None), "v1")?;
    skopeo_copy(
        &format!("oci:{}:v1", src.dir.display()),
        &format!("docker://{}/{repo}:v1", origin.host()),
        false,
    )?;
    Ok((origin, src, image))
}

/// Checks that the OCI layout `out` holds `image` as `v1`, byte for byte.
pub(crate) fn check_copy(out: &Path, image: &Image) -> Res {
    let back = tagged_descriptor(out, "v1")?;
    assert_eq!(str_field(&back, "digest")?, image.manifest_digest);
    for layer in &image.layers {
        assert!(
            read_blob(out, &layer.digest)? == layer.blob,
            "layer {} differs",
            layer.digest
        );
    }
    Ok(())
}

#[test]
fn mirror_pulls_through_then_serves_from_cache_when_the_origin_is_gone() -> Res {
    if !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let (mut origin, _src, image) = origin_with_image(tmp.path(), "e2e/mirrored", MIRROR_LAYER)?;
    let mirror = Node::start_with(
        &tmp.path().join("mirror"),
        &["--upstream".into(), format!("http://{}", origin.host())],
    )?;
    let remote = format!("docker://{}/e2e/mirrored:v1", mirror.host());

    skopeo_copy(
        &remote,
        &format!("oci:{}:v1", tmp.path().join("out1").display()),
        false,
    )?;
    check_copy(&tmp.path().join("out1"), &image)?;
    let upstream_bytes = metric(&mirror, "berth_blob_bytes_total{source=\"upstream\"}")?;
    let layer_bytes: u64 = image.layers.iter().map(|l| l.blob.len() as u64).sum();
    assert!(
        upstream_bytes >= layer_bytes,
        "upstream bytes {upstream_bytes} < {layer_bytes}"
    );

    // Second pull, origin up: the tag is revalidated with HEAD, no blob is fetched again.
    let origin_blob_gets = metric(
        &origin,
        "berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"}",
    )?;
    let origin_heads = metric(
        &origin,
        "berth_http_requests_total{route=\"manifest\",method=\"HEAD\",status=\"200\"}",
    )?;
    skopeo_copy(
        &remote,
        &format!("oci:{}:v1", tmp.path().join("out2").display()),
        false,
    )?;
    check_copy(&tmp.path().join("out2"), &image)?;
    assert_eq!(
        metric(
            &origin,
            "berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"}"
        )?,
        origin_blob_gets,
        "cached blobs were fetched again"
    );
    assert!(
        metric(
            &origin,
            "berth_http_requests_total{route=\"manifest\",method=\"HEAD\",status=\"200\"}"
        )? > origin_heads,
        "the tag was not revalidated with HEAD"
    );
    assert!(metric(&mirror, "berth_blob_bytes_total{source=\"local\"}")? >= layer_bytes);

    // Origin gone: everything comes from the cache.
    origin.kill()?;
    skopeo_copy(
        &remote,
        &format!("oci:{}:v1", tmp.path().join("out3").display()),
        false,
    )?;
    check_copy(&tmp.path().join("out3"), &image)?;
    Ok(())
}

/// A fake upstream answering every request with `body` (and a 200), counting requests.
fn fake_upstream(
    body: Vec<u8>,
    delay: Duration,
) -> Res<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count2 = count.clone();
    std::thread::spawn(move || {
        // Bounded: at most 64 connections, then the thread ends.
        for stream in listener.incoming().take(64) {
            let Ok(mut s) = stream else { continue };
            count2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut head = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut head);
            std::thread::sleep(delay);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    Ok((format!("http://{addr}"), count))
}

#[test]
fn mirror_fetches_once_for_concurrent_requests_and_never_stores_bad_bytes() -> Res {
    let tmp = TempDir::new()?;
    let mut rng = Rng::from_clock();
    let good = rng.bytes(3 << 20);
    let digest = sha256_digest(&good);

    // Single flight: 6 concurrent GETs, one upstream request (the upstream is slow on purpose).
    let (url, count) = fake_upstream(good.clone(), Duration::from_millis(500))?;
    let mirror = Node::start_with(&tmp.path().join("m1"), &["--upstream".into(), url])?;
    let addr = mirror.addr;
    let path = format!("/v2/e2e/once/blobs/{digest}");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || request(addr, "GET", &path, &[], b""))
        })
        .collect();
    for h in handles {
        let resp = h.join().map_err(|_| fail("client thread panicked"))??;
        assert_eq!(resp.status, 200, "{}", resp.describe());
        assert!(resp.body == good, "a client got other bytes");
    }
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "upstream asked more than once"
    );

    // Bad bytes: the client's response is aborted and nothing is stored.
    let mut bad = good.clone();
    bad[12345] ^= 0xff;
    let (url, _) = fake_upstream(bad, Duration::ZERO)?;
    let mirror2 = Node::start_with(&tmp.path().join("m2"), &["--upstream".into(), url])?;
    // An `Err` here is the client seeing its response aborted mid-body: what we want.
    if let Ok(resp) = request(mirror2.addr, "GET", &path, &[], b"") {
        assert!(
            resp.status != 200 || resp.body.len() < good.len(),
            "a client received a complete body of corrupt bytes"
        );
    }
    let hex = digest.trim_start_matches("sha256:");
    let stored = tmp.path().join("m2/blobs/sha256").join(&hex[..2]).join(hex);
    assert!(!stored.exists(), "corrupt bytes were stored");
    let resp = mirror2.request("HEAD", &path, &[], b"")?;
    assert_ne!(resp.status, 200, "corrupt blob is served");
    Ok(())
}

/// Restores `/etc/docker/daemon.json` byte for byte (or removes it if it did not exist) and
/// reloads dockerd, when dropped.
struct DaemonJsonGuard {
    original: Option<Vec<u8>>,
    /// The mirrors dockerd had before (`docker info`), to put back.
    original_mirrors: serde_json::Value,
}

fn current_mirrors() -> Res<serde_json::Value> {
    let out =
        run(Command::new("docker").args(["info", "--format", "{{json .RegistryConfig.Mirrors}}"]))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(if v.is_null() {
        serde_json::json!([])
    } else {
        v
    })
}

impl DaemonJsonGuard {
    fn install(mirror_url: &str) -> Res<DaemonJsonGuard> {
        let original = match std::fs::read(DAEMON_JSON) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let mut config = parse_config(original.as_deref())?;
        let guard = DaemonJsonGuard {
            original,
            original_mirrors: current_mirrors()?,
        };
        config["registry-mirrors"] = serde_json::json!([mirror_url]);
        std::fs::write(DAEMON_JSON, serde_json::to_vec_pretty(&config)?)?;
        reload_dockerd()?;
        wait_for_mirrors(|mirrors| mirrors.to_string().contains(mirror_url))?;
        Ok(guard)
    }

    /// dockerd keeps its current mirrors when a reload finds no `registry-mirrors` key, so
    /// the old list is applied explicitly first, then the exact original file is put back.
    fn restore(&self) -> Res {
        let mut config = parse_config(self.original.as_deref())?;
        config["registry-mirrors"] = self.original_mirrors.clone();
        std::fs::write(DAEMON_JSON, serde_json::to_vec_pretty(&config)?)?;
        reload_dockerd()?;
        let want = self.original_mirrors.clone();
        let applied = wait_for_mirrors(|m| *m == want);
        match &self.original {
            Some(bytes) => std::fs::write(DAEMON_JSON, bytes)?,
            None => std::fs::remove_file(DAEMON_JSON)?,
        }
        applied
    }
}

fn parse_config(bytes: Option<&[u8]>) -> Res<serde_json::Value> {
    Ok(match bytes {
        Some(b) => serde_json::from_slice(b)?,
        None => serde_json::json!({}),
    })
}

impl Drop for DaemonJsonGuard {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("FAILED to restore {DAEMON_JSON} / dockerd mirrors: {e}");
        }
    }
}

fn dockerd_pid() -> Res<String> {
    let out = run(Command::new("pidof").arg("dockerd"))?;
    let pid = String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .map(str::to_owned);
    pid.ok_or_else(|| fail("dockerd is not running"))
}

/// dockerd reloads `registry-mirrors` (among other keys) on SIGHUP, without a restart.
fn reload_dockerd() -> Res {
    run(Command::new("kill").args(["-HUP", &dockerd_pid()?]))?;
    Ok(())
}

fn wait_for_mirrors(ok: impl Fn(&serde_json::Value) -> bool) -> Res {
    let deadline = Instant::now() + DAEMON_RELOAD_TIMEOUT;
    while Instant::now() < deadline {
        if ok(&current_mirrors()?) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(fail("dockerd did not apply the registry-mirrors change"))
}

struct RmiOnDrop(String);

impl Drop for RmiOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn docker_daemon_pulls_a_hub_image_through_the_mirror() -> Res {
    if !require_client("docker") || !require_client("skopeo") {
        return Ok(());
    }
    if !Path::new(DAEMON_JSON).exists() && !Path::new("/etc/docker").exists() {
        return Err(fail("no /etc/docker: cannot configure the daemon"));
    }
    let _serial = DOCKER_DAEMON_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = TempDir::new()?;
    let name = format!("berthmirror{}", unique_token());
    let (origin, _src, image) =
        origin_with_image(tmp.path(), &format!("library/{name}"), MIRROR_LAYER)?;
    let mirror = Node::start_with(
        &tmp.path().join("mirror"),
        &["--upstream".into(), format!("http://{}", origin.host())],
    )?;
    let file_before = std::fs::read(DAEMON_JSON).ok();
    let mirrors_before = current_mirrors()?;
    let cleanup = RmiOnDrop(format!("{name}:v1"));
    let daemon = DaemonJsonGuard::install(&format!("http://{}", mirror.host()))?;
    // `NAME:v1` means docker.io/library/NAME:v1: only the mirror can answer that here.
    run(Command::new("docker").args(["pull", &format!("{name}:v1")]))?;
    let out = run(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &format!("{name}:v1"),
    ]))?;
    let digests = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(digests.contains(&image.manifest_digest), "{digests}");
    drop(cleanup);
    drop(daemon);
    assert!(
        std::fs::read(DAEMON_JSON).ok() == file_before,
        "{DAEMON_JSON} not restored"
    );
    assert_eq!(
        current_mirrors()?,
        mirrors_before,
        "dockerd mirrors not restored"
    );
    assert!(metric(&mirror, "berth_blob_bytes_total{source=\"upstream\"}")? > 0);
    Ok(())
}

/// containerd's socket: docker's own containerd on this kind of machine, else the default.
fn containerd_address() -> Option<PathBuf> {
    [
        "/run/containerd/containerd.sock",
        "/run/docker/containerd/containerd.sock",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| {
        p.exists()
            && Command::new("ctr")
                .arg("--address")
                .arg(p)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
}

#[test]
fn containerd_fetches_through_the_mirror_selecting_the_upstream_by_ns() -> Res {
    if !require_client("skopeo") {
        return Ok(());
    }
    let Some(address) = containerd_address() else {
        if std::env::var("BERTH_E2E_REQUIRED").as_deref() == Ok("1") {
            return Err(fail("no containerd answers ctr, and BERTH_E2E_REQUIRED=1"));
        }
        println!("SKIP: no running containerd");
        return Ok(());
    };
    let tmp = TempDir::new()?;
    let name = format!("berthctr{}", unique_token());
    let (origin, _src, image) =
        origin_with_image(tmp.path(), &format!("library/{name}"), MIRROR_LAYER)?;
    // Only docker.io is mapped, and there is no default: success proves `?ns=docker.io`.
    let mirror = Node::start_with(
        &tmp.path().join("mirror"),
        &[
            "--upstream".into(),
            format!("docker.io=http://{}", origin.host()),
        ],
    )?;
    let hosts = tmp.path().join("hosts/docker.io");
    std::fs::create_dir_all(&hosts)?;
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    )?;
    let namespace = format!("berth-e2e-{}", unique_token());
    let reference = format!("docker.io/library/{name}:v1");
    let ctr = |args: &[&str]| {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&address)
            .args(["-n", &namespace])
            .args(args);
        cmd
    };
    // `content fetch` downloads without unpacking (no snapshotter needed).
    let fetched = run(ctr(&["content", "fetch", "--hosts-dir"])
        .arg(tmp.path().join("hosts"))
        .arg(&reference));
    let listed = run(&mut ctr(&["content", "ls", "-q"]));
    // Clean the namespace whatever happened.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            // `content fetch` also records an image; the namespace can only go once it is empty.
            "ctr --address {a} -n {namespace} images ls -q | xargs -r ctr --address {a} -n {namespace} images rm >/dev/null 2>&1; ctr --address {a} -n {namespace} content ls -q | xargs -r ctr --address {a} -n {namespace} content rm >/dev/null 2>&1; ctr --address {a} namespaces rm {namespace} >/dev/null 2>&1",
            a = address.display(),
        ))
        .status();
    fetched?;
    let listed = String::from_utf8_lossy(&listed?.stdout).into_owned();
    assert!(listed.contains(&image.manifest_digest), "{listed}");
    for layer in &image.layers {
        assert!(listed.contains(&layer.digest), "{listed}");
    }
    let layer_bytes: u64 = image.layers.iter().map(|l| l.blob.len() as u64).sum();
    assert!(metric(&mirror, "berth_blob_bytes_total{source=\"upstream\"}")? >= layer_bytes);
    Ok(())
}

/// How long nginx may take to listen.
const NGINX_START_TIMEOUT: Duration = Duration::from_secs(10);

/// nginx terminating TLS on a loopback port and proxying to a plain-HTTP node; killed by PID
/// on drop. It runs as one process (`master_process off`): killing a master with SIGKILL
/// would leave its workers behind.
struct TlsProxy {
    child: Option<std::process::Child>,
    port: u16,
    error_log: PathBuf,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl TlsProxy {
    fn start(dir: &Path, cert: &Path, key: &Path, backend: &str) -> Res<TlsProxy> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.display();
        let error_log = dir.join("error.log");
        let conf = format!(
            "daemon off;\nmaster_process off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    \
             listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    \
             ssl_certificate_key {key};\n    client_max_body_size 0;\n    \
             proxy_buffering off;\n    location / {{\n      proxy_pass http://{backend};\n      \
             proxy_set_header Host $http_host;\n      proxy_http_version 1.1;\n    }}\n  }}\n}}\n",
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut proxy = TlsProxy {
            child: Some(child),
            port,
            error_log,
        };
        let deadline = Instant::now() + NGINX_START_TIMEOUT;
        loop {
            if let Some(child) = proxy.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    proxy.child = None;
                    return Err(fail(format!(
                        "nginx exited with {status}: {}",
                        proxy.log_text()
                    )));
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "nginx not listening after {NGINX_START_TIMEOUT:?}: {}",
                    proxy.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

/// nginx and the openssl CLI (neither answers `--version`); same SKIP / required rules as
/// [`require_client`].
fn require_nginx_and_openssl() -> bool {
    let usable = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if usable("nginx", "-v") && usable("openssl", "version") {
        return true;
    }
    if std::env::var("BERTH_E2E_REQUIRED").as_deref() == Ok("1") {
        panic!("nginx / openssl are not installed, and BERTH_E2E_REQUIRED=1");
    }
    println!("SKIP: nginx / openssl not installed");
    false
}

#[test]
fn mirror_pulls_from_an_https_upstream_trusting_the_configured_ca_only() -> Res {
    if !require_client("skopeo") || !require_nginx_and_openssl() {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let (origin, _src, image) = origin_with_image(tmp.path(), "e2e/tls", MIRROR_LAYER)?;
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki)?;
    let (ca, cert, key) = crate::identity::make_test_pki(&pki)?;
    let proxy = TlsProxy::start(&tmp.path().join("nginx"), &cert, &key, &origin.host())?;
    let upstream = format!("https://127.0.0.1:{}", proxy.port);

    // With the CA (per-upstream `ca_file` in the TOML): skopeo pulls the exact image.
    let config = tmp.path().join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nurl = \"{upstream}\"\nca_file = \"{}\"\n",
            ca.display()
        ),
    )?;
    let mirror = Node::start_with(
        &tmp.path().join("mirror"),
        &["--config".into(), config.display().to_string()],
    )?;
    skopeo_copy(
        &format!("docker://{}/e2e/tls:v1", mirror.host()),
        &format!("oci:{}:v1", tmp.path().join("out").display()),
        false,
    )?;
    check_copy(&tmp.path().join("out"), &image)?;
    // And by plain GETs, each blob checked against its digest.
    let manifest = mirror
        .get_manifest("e2e/tls", &image.manifest_digest)?
        .expect_status(200, "manifest through the https upstream")?;
    assert_eq!(sha256_digest(&manifest.body), image.manifest_digest);
    for digest in image
        .layers
        .iter()
        .map(|l| l.digest.as_str())
        .chain([image.config_digest.as_str()])
    {
        let blob = mirror
            .request("GET", &format!("/v2/e2e/tls/blobs/{digest}"), &[], b"")?
            .expect_status(200, "blob through the https upstream")?;
        assert_eq!(sha256_digest(&blob.body), digest);
    }
    let layer_bytes: u64 = image.layers.iter().map(|l| l.blob.len() as u64).sum();
    assert!(metric(&mirror, "berth_blob_bytes_total{source=\"upstream\"}")? >= layer_bytes);

    // The global `--upstream-ca-file` works too.
    let global = Node::start_with(
        &tmp.path().join("mirror-global"),
        &[
            "--upstream".into(),
            upstream.clone(),
            "--upstream-ca-file".into(),
            ca.display().to_string(),
        ],
    )?;
    let resp = global
        .get_manifest("e2e/tls", "v1")?
        .expect_status(200, "manifest with the global CA")?;
    assert_eq!(sha256_digest(&resp.body), image.manifest_digest);

    // Without the CA: a prompt, clear certificate error, not a hang.
    let untrusting = Node::start_with(
        &tmp.path().join("mirror-no-ca"),
        &["--upstream".into(), upstream],
    )?;
    let started = Instant::now();
    let resp = untrusting.get_manifest("e2e/tls", "v1")?;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert!(
        matches!(resp.status, 502 | 503),
        "want 502/503, got {}",
        resp.describe()
    );
    assert!(
        body.to_ascii_lowercase().contains("certificate"),
        "error does not name the certificate: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    // A CA file that is not a certificate stops the node at start.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n")?;
    let err = Node::start_with(
        &tmp.path().join("mirror-junk"),
        &[
            "--upstream".into(),
            format!("https://127.0.0.1:{}", proxy.port),
            "--upstream-ca-file".into(),
            junk.display().to_string(),
        ],
    )
    .err()
    .ok_or_else(|| fail("a node with a junk CA file started"))?;
    assert!(err.to_string().contains("upstream_ca_file"), "{err}");
    drop(proxy);
    Ok(())
}
