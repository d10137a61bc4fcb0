//! Issue 8: tag lifecycle and online GC, over real HTTP to a node on 127.0.0.1:0.
//!
//! The race test (`gc_racing_pushes_never_loses_a_tagged_image`) runs GC back to back while
//! clients push images sharing layers; every tagged image must then be complete.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_registry::api::{ApiConfig, GcConfig};
use berth_registry::{Registry, RegistryConfig};
use berth_storage::{BlobStore, SqliteMetadata};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "test-admin-token-0123456789";

struct Srv {
    addr: SocketAddr,
    reg: Arc<Registry>,
    dir: tempfile::TempDir,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn start(gc: GcConfig, token: Option<&str>) -> Srv {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = BlobStore::open(dir.path()).expect("blobs");
    let meta = Arc::new(SqliteMetadata::open(&dir.path().join("metadata.sqlite")).expect("db"));
    let reg = Registry::new(RegistryConfig::default(), blobs, meta)
        .expect("registry")
        .with_lifecycle(
            gc,
            ApiConfig {
                admin_token: token.map(str::to_owned),
            },
        );
    let reg = Arc::new(reg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = reg.clone().router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Srv { addr, reg, dir }
}

fn gc_config(grace_seconds: u64, time_machine_seconds: u64) -> GcConfig {
    GcConfig {
        enabled: false,
        grace_seconds,
        time_machine_seconds,
        ..GcConfig::default()
    }
}

impl Srv {
    /// One HTTP/1.1 request on its own connection (`Connection: close`).
    async fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut s = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        parse(&raw, method == "HEAD")
    }

    async fn admin(&self, method: &str, path: &str, body: &serde_json::Value) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        self.req(
            method,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Uploads a blob unless the repository has it (HEAD first, like docker).
    async fn put_blob(&self, repo: &str, data: &[u8]) -> Reply {
        let d = digest(data);
        let head = self
            .req("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], b"")
            .await;
        if head.status == 200 {
            return head;
        }
        self.req(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[],
            data,
        )
        .await
    }

    /// Pushes config + layers + manifest by tag. Returns the manifest PUT reply and digest.
    async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        config: &[u8],
        layers: &[&[u8]],
    ) -> (Reply, String) {
        for blob in std::iter::once(config).chain(layers.iter().copied()) {
            let r = self.put_blob(repo, blob).await;
            if !matches!(r.status, 200 | 201) {
                return (r, String::new());
            }
        }
        let manifest = image_manifest(config, layers);
        let r = self
            .req(
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                &manifest,
            )
            .await;
        (r, digest(&manifest))
    }

    async fn tags(&self, repo: &str) -> Vec<String> {
        let r = self
            .req("GET", &format!("/v2/{repo}/tags/list"), &[], b"")
            .await;
        r.json()["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        self.req("GET", "/metrics", &[], b"").await.text()
    }
}

fn parse(raw: &[u8], head_only: bool) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if head_only {
        body.clear();
    } else if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[eol + 2 + size + 2..];
    }
    out
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn config_with_labels(id: &str, labels: serde_json::Value) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": [] },
        "id": id,
    })
    .to_string()
    .into_bytes()
}

fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |media: &str, b: &[u8]| serde_json::json!({"mediaType": media, "digest": digest(b), "size": b.len()});
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

fn layer(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut h = sha2::Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < len {
        out.extend_from_slice(&h);
        h = sha2::Sha256::digest(&h).to_vec();
    }
    out.truncate(len);
    out
}

/// Every tag of `repo` resolves to a manifest whose blobs all download and match digests.
async fn assert_complete(srv: &Srv, repo: &str) -> usize {
    let tags = srv.tags(repo).await;
    for tag in &tags {
        let m = srv
            .req(
                "GET",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("accept", "application/vnd.oci.image.manifest.v1+json")],
                b"",
            )
            .await;
        assert_eq!(m.status, 200, "{repo}:{tag}: {}", m.text());
        let v = m.json();
        let mut blobs = vec![v["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned()];
        for l in v["layers"].as_array().into_iter().flatten() {
            blobs.push(l["digest"].as_str().unwrap_or_default().to_owned());
        }
        for d in blobs {
            let b = srv
                .req("GET", &format!("/v2/{repo}/blobs/{d}"), &[], b"")
                .await;
            assert_eq!(b.status, 200, "{repo}:{tag} lost blob {d}: {}", b.text());
            assert_eq!(digest(&b.body), d, "{repo}:{tag} blob {d} corrupt");
        }
    }
    tags.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_racing_pushes_never_loses_a_tagged_image() {
    const CLIENTS: usize = 6;
    const PUSHES: usize = 24;
    const RETRIES_MAX: usize = 20;
    // Grace 1 s, no time machine: GC deletes as eagerly as the protocol allows. (Grace 0
    // would refuse most pushes: a just-uploaded layer is unreferenced until its manifest.)
    let srv = Arc::new(start(gc_config(1, 0), None).await);
    let stop = Arc::new(AtomicBool::new(false));
    let gc = {
        let (srv, stop) = (srv.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0u64;
            while !stop.load(Ordering::Relaxed) && runs < 100_000 {
                berth_registry::api::run_gc(&srv.reg, false)
                    .await
                    .expect("gc run");
                runs += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            runs
        })
    };
    let shared: Vec<Vec<u8>> = (0..3)
        .map(|i| layer(&format!("shared-{i}"), 40_000))
        .collect();
    // A rotating pool: layers drop out of every image and come back, so GC deletes files
    // that other clients are re-uploading (the commit dedup path) or mounting.
    let rotating: Vec<Vec<u8>> = (0..4).map(|i| layer(&format!("rot-{i}"), 20_000)).collect();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (srv, shared, rotating) = (srv.clone(), shared.clone(), rotating.clone());
        clients.push(tokio::spawn(async move {
            let repo = format!("team/c{c}");
            let mut retries = 0;
            for p in 0..PUSHES {
                let config = config_with_labels(&format!("{c}-{p}"), serde_json::json!({}));
                let unique = layer(&format!("u-{c}-{p}"), 10_000);
                let layers: Vec<&[u8]> = vec![
                    &shared[p % shared.len()],
                    &rotating[(c + p) % rotating.len()],
                    &unique,
                ];
                let tag = format!("t{}", p % 2);
                // Pace the pushes so the run outlasts the grace period several times and GC
                // deletes moved-away content while pushes are still going on.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if c % 2 == 0 {
                    // Mount a shared layer from a sibling (exercises the mount path).
                    let d = digest(&shared[p % shared.len()]);
                    let from = format!("team/c{}", (c + 1) % CLIENTS);
                    srv.req(
                        "POST",
                        &format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}"),
                        &[],
                        b"",
                    )
                    .await;
                }
                loop {
                    let (r, _) = srv.push_image(&repo, &tag, &config, &layers).await;
                    if r.status == 201 {
                        break;
                    }
                    // Allowed only as a clean refusal (a link expired between HEAD and
                    // PUT on a loaded machine): the client re-pushes, as docker does.
                    assert_eq!(r.status, 400, "{}", r.text());
                    assert!(r.text().contains("MANIFEST_BLOB_UNKNOWN"), "{}", r.text());
                    retries += 1;
                    assert!(retries <= RETRIES_MAX, "too many refused pushes");
                }
            }
            retries
        }));
    }
    let mut retries = 0;
    for c in clients {
        retries += c.await.expect("client");
    }
    stop.store(true, Ordering::Relaxed);
    let runs = gc.await.expect("gc task");
    let during = srv.metrics().await;
    assert!(
        !during.contains("berth_gc_blobs_deleted_total 0\n"),
        "GC deleted blob files while the pushes ran\n{during}"
    );
    // One more GC with everything settled, then every tagged image must be whole.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let last = berth_registry::api::run_gc(&srv.reg, false)
        .await
        .expect("gc");
    let mut tagged = 0;
    for c in 0..CLIENTS {
        tagged += assert_complete(&srv, &format!("team/c{c}")).await;
    }
    assert_eq!(tagged, CLIENTS * 2, "every client keeps tags t0 and t1");
    let metrics = srv.metrics().await;
    let deleted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_gc_manifests_deleted_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        deleted > 0,
        "GC collected moved-away manifests during the test\n{metrics}"
    );
    eprintln!("gc runs {runs}, refused pushes retried {retries}, last run {last:?}");
}

#[tokio::test]
async fn gc_deletes_exactly_the_unreachable_and_reports_it() {
    let srv = start(gc_config(0, 0), None).await;
    let keep = layer("keep", 1000);
    let gone = layer("gone", 2000);
    let cfg1 = config_with_labels("1", serde_json::json!({}));
    let cfg2 = config_with_labels("2", serde_json::json!({}));
    assert_eq!(
        srv.push_image("ns/a", "v", &cfg1, &[&gone]).await.0.status,
        201
    );
    // The same blob, linked (unreferenced) in another repository.
    assert_eq!(srv.put_blob("other/b", &keep).await.status, 201);
    assert_eq!(
        srv.push_image("ns/a", "v", &cfg2, &[&keep]).await.0.status,
        201
    );
    // A crash leftover: a whole blob file linked by no repository.
    let orphan = layer("orphan", 3000);
    let od = digest(&orphan);
    let hex = &od["sha256:".len()..];
    let shard = srv.dir.path().join("blobs/sha256").join(&hex[..2]);
    std::fs::create_dir_all(&shard).expect("shard");
    std::fs::write(shard.join(hex), &orphan).expect("orphan");
    tokio::time::sleep(Duration::from_millis(20)).await;

    let dry = srv
        .req(
            "POST",
            "/api/v1/gc?dry_run=true",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            b"",
        )
        .await;
    assert_eq!(
        dry.status,
        403,
        "no token configured: writes are refused: {}",
        dry.text()
    );
    assert!(dry.text().contains("admin_token"), "{}", dry.text());

    let report = berth_registry::api::run_gc(&srv.reg, false)
        .await
        .expect("gc");
    assert_eq!(report.manifests_deleted, 1, "{report:?}");
    // gone + cfg1 unlinked and deleted; keep stays (referenced, and linked in other/b).
    assert_eq!(report.blobs_deleted, 2, "{report:?}");
    assert_eq!(report.orphan_files_deleted, 1, "{report:?}");
    assert_eq!(
        report.bytes_reclaimed,
        (gone.len() + cfg1.len() + orphan.len()) as u64,
        "{report:?}"
    );
    assert!(!shard.join(hex).exists());
    assert_complete(&srv, "ns/a").await;
    // other/b's link was unreferenced past the grace period: removed, but the file stays
    // because ns/a still links it (a file goes only when no repository links it).
    assert_eq!(report.blob_links_removed, 3, "{report:?}");
    let b = srv
        .req(
            "GET",
            &format!("/v2/other/b/blobs/{}", digest(&keep)),
            &[],
            b"",
        )
        .await;
    assert_eq!(b.status, 404);
    let again = berth_registry::api::run_gc(&srv.reg, false)
        .await
        .expect("gc");
    assert_eq!(
        again.manifests_deleted + again.blobs_deleted + again.orphan_files_deleted,
        0
    );
    let m = srv.metrics().await;
    assert!(m.contains("berth_gc_runs_total 2"), "{m}");
    assert!(m.contains("berth_gc_manifests_deleted_total 1"), "{m}");
    assert!(m.contains("berth_gc_blobs_deleted_total 3"), "{m}");
    assert!(
        m.contains(&format!(
            "berth_gc_bytes_reclaimed_total {}",
            gone.len() + cfg1.len() + orphan.len()
        )),
        "{m}"
    );
}

#[tokio::test]
async fn time_machine_keeps_and_restores_moved_tags() {
    let srv = start(gc_config(0, 3600), Some(TOKEN)).await;
    let l = layer("l", 500);
    let (c1, c2) = (
        config_with_labels("1", serde_json::json!({})),
        config_with_labels("2", serde_json::json!({})),
    );
    let (r, d1) = srv.push_image("team/app", "latest", &c1, &[&l]).await;
    assert_eq!(r.status, 201);
    let (_, d2) = srv.push_image("team/app", "latest", &c2, &[&l]).await;
    assert_eq!(
        srv.req("DELETE", "/v2/team/app/manifests/latest", &[], b"")
            .await
            .status,
        202
    );
    // GC inside the window keeps both manifests: they are restorable.
    let report = berth_registry::api::run_gc(&srv.reg, false)
        .await
        .expect("gc");
    assert_eq!(report.manifests_deleted, 0, "{report:?}");

    let h = srv
        .req(
            "GET",
            "/api/v1/repositories/team/app/tags/latest/history",
            &[],
            b"",
        )
        .await;
    assert_eq!(h.status, 200, "{}", h.text());
    let events = h.json()["history"].as_array().cloned().unwrap_or_default();
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["delete", "push", "push"]);

    let unauth = srv
        .req(
            "POST",
            "/api/v1/repositories/team/app/tags/latest/restore",
            &[],
            b"{}",
        )
        .await;
    assert_eq!(unauth.status, 401);
    let r = srv
        .admin(
            "POST",
            "/api/v1/repositories/team/app/tags/latest/restore",
            &serde_json::json!({"digest": d1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = srv
        .req("GET", "/v2/team/app/manifests/latest", &[], b"")
        .await;
    assert_eq!(m.header("docker-content-digest"), Some(d1.as_str()));
    let bogus = srv
        .admin(
            "POST",
            "/api/v1/repositories/team/app/tags/latest/restore",
            &serde_json::json!({"digest": digest(b"x")}),
        )
        .await;
    assert_eq!(bogus.status, 404, "{}", bogus.text());
    let h = srv
        .req(
            "GET",
            "/api/v1/repositories/team/app/tags/latest/history",
            &[],
            b"",
        )
        .await;
    assert_eq!(h.json()["history"][0]["action"], "restore");
    assert_eq!(h.json()["history"][0]["digest"], d1);
    let _ = d2;
}

#[tokio::test]
async fn expires_after_label_hides_the_tag_and_the_worker_records_it() {
    let srv = start(gc_config(3600, 3600), Some(TOKEN)).await;
    let l = layer("e", 300);
    let cfg = config_with_labels("e", serde_json::json!({"quay.expires-after": "1s"}));
    let (r, _) = srv.push_image("team/tmp", "pr-1", &cfg, &[&l]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let plain = config_with_labels("p", serde_json::json!({}));
    assert_eq!(
        srv.push_image("team/tmp", "stable", &plain, &[&l])
            .await
            .0
            .status,
        201
    );
    let info = srv
        .req("GET", "/api/v1/repositories/team/tmp/tags/pr-1", &[], b"")
        .await;
    assert!(info.json()["expires_ms"].is_i64(), "{}", info.text());
    assert_eq!(srv.tags("team/tmp").await, ["pr-1", "stable"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Gone at read time, before any worker ran.
    assert_eq!(srv.tags("team/tmp").await, ["stable"]);
    assert_eq!(
        srv.req("GET", "/v2/team/tmp/manifests/pr-1", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        berth_registry::api::run_expiry(&srv.reg)
            .await
            .expect("expiry"),
        1
    );
    let h = srv
        .req(
            "GET",
            "/api/v1/repositories/team/tmp/tags/pr-1/history",
            &[],
            b"",
        )
        .await;
    assert_eq!(h.json()["history"][0]["action"], "expire", "{}", h.text());
    // API: set and clear an expiry.
    let r = srv
        .admin(
            "PUT",
            "/api/v1/repositories/team/tmp/tags/stable/expiration",
            &serde_json::json!({"expires_in_seconds": 3600}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = srv
        .admin(
            "DELETE",
            "/api/v1/repositories/team/tmp/tags/stable/expiration",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let info = srv
        .req("GET", "/api/v1/repositories/team/tmp/tags/stable", &[], b"")
        .await;
    assert!(info.json()["expires_ms"].is_null(), "{}", info.text());
    assert!(srv.metrics().await.contains("berth_tags_expired_total 1"));
}

#[tokio::test]
async fn immutable_tags_refuse_moves_with_a_clear_error() {
    let srv = start(gc_config(3600, 3600), Some(TOKEN)).await;
    let r = srv
        .admin(
            "PUT",
            "/api/v1/repositories/team/app/policy",
            &serde_json::json!({"immutable_tags": ["v*"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let l = layer("i", 300);
    let (c1, c2) = (
        config_with_labels("1", serde_json::json!({})),
        config_with_labels("2", serde_json::json!({})),
    );
    assert_eq!(
        srv.push_image("team/app", "v1", &c1, &[&l]).await.0.status,
        201
    );
    // Re-pushing the same manifest is fine; moving the tag is not.
    assert_eq!(
        srv.push_image("team/app", "v1", &c1, &[&l]).await.0.status,
        201
    );
    let (r, _) = srv.push_image("team/app", "v1", &c2, &[&l]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["code"], "DENIED");
    assert_eq!(r.json()["errors"][0]["detail"]["reason"], "TAG_IMMUTABLE");
    assert_eq!(
        srv.req("DELETE", "/v2/team/app/manifests/v1", &[], b"")
            .await
            .status,
        409
    );
    // Not matching the pattern: mutable. With the label: immutable.
    assert_eq!(
        srv.push_image("team/app", "latest", &c1, &[&l])
            .await
            .0
            .status,
        201
    );
    assert_eq!(
        srv.push_image("team/app", "latest", &c2, &[&l])
            .await
            .0
            .status,
        201
    );
    let locked = config_with_labels("3", serde_json::json!({"quay.immutable": "true"}));
    assert_eq!(
        srv.push_image("team/app", "prod", &locked, &[&l])
            .await
            .0
            .status,
        201
    );
    assert_eq!(
        srv.push_image("team/app", "prod", &c1, &[&l])
            .await
            .0
            .status,
        409
    );
}

#[tokio::test]
async fn quotas_count_shared_blobs_once_and_refuse_pushes_beyond() {
    let srv = start(gc_config(3600, 3600), Some(TOKEN)).await;
    let r = srv
        .admin(
            "PUT",
            "/api/v1/namespaces/team/quota",
            &serde_json::json!({"quota_bytes": 5000}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let big = layer("big", 3000);
    assert_eq!(srv.put_blob("team/a", &big).await.status, 201);
    // The same blob in a second repository of the namespace costs nothing more.
    assert_eq!(srv.put_blob("team/b", &big).await.status, 201);
    let q = srv
        .req("GET", "/api/v1/namespaces/team/quota", &[], b"")
        .await;
    assert_eq!(q.json()["used_bytes"], 3000, "{}", q.text());
    let more = layer("more", 2500);
    let r = srv.put_blob("team/b", &more).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["errors"][0]["code"], "DENIED");
    assert!(
        r.text()
            .contains("quota exceeded for namespace team: used 3000 of 5000 bytes"),
        "{}",
        r.text()
    );
    // Mounts are charged too; another namespace is unaffected.
    let r = srv
        .req(
            "POST",
            &format!(
                "/v2/team/c/blobs/uploads/?mount={}&from=team/a",
                digest(&big)
            ),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 201, "already in the namespace: free");
    assert_eq!(srv.put_blob("other/x", &more).await.status, 201);
    // A repository quota.
    let r = srv
        .admin(
            "PUT",
            "/api/v1/repositories/other/x/quota",
            &serde_json::json!({"quota_bytes": 2600}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        srv.put_blob("other/x", &layer("small", 200)).await.status,
        403
    );
    let q = srv
        .req("GET", "/api/v1/repositories/other/x/quota", &[], b"")
        .await;
    assert_eq!(q.json()["used_bytes"], 2500, "{}", q.text());
}

#[tokio::test]
async fn retention_dry_run_reports_and_apply_prunes() {
    let srv = start(gc_config(3600, 3600), Some(TOKEN)).await;
    let l = layer("r", 200);
    for (i, tag) in ["a1", "a2", "keep-me", "a3", "a4"].iter().enumerate() {
        let cfg = config_with_labels(&i.to_string(), serde_json::json!({}));
        assert_eq!(
            srv.push_image("team/svc", tag, &cfg, &[&l]).await.0.status,
            201
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let policy = serde_json::json!({"retention": {"keep_last": 2, "keep_patterns": ["keep-*"]}});
    let r = srv
        .admin("PUT", "/api/v1/namespaces/team/retention", &policy)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let dry = srv
        .admin(
            "POST",
            "/api/v1/repositories/team/svc/retention/run?dry_run=true",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(dry.status, 200, "{}", dry.text());
    assert_eq!(
        dry.json()["repositories"][0]["pruned"],
        serde_json::json!(["a2", "a1"])
    );
    assert_eq!(
        srv.tags("team/svc").await.len(),
        5,
        "dry run deletes nothing"
    );
    let run = srv
        .admin(
            "POST",
            "/api/v1/namespaces/team/retention/run",
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(
        run.json()["repositories"][0]["pruned"],
        serde_json::json!(["a2", "a1"]),
        "{}",
        run.text()
    );
    assert_eq!(srv.tags("team/svc").await, ["a3", "a4", "keep-me"]);
    let h = srv
        .req(
            "GET",
            "/api/v1/repositories/team/svc/tags/a1/history",
            &[],
            b"",
        )
        .await;
    assert_eq!(h.json()["history"][0]["action"], "retention");
}
