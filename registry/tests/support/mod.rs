//! An in-process node over a temp dir, and request helpers.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use berth_oci::{Algorithm, Digest, RepoName, Tag};
use berth_registry::{Registry, RegistryConfig};
use berth_storage::meta::TagEvent;
use berth_storage::{BlobStore, MetadataStore, SqliteMetadata};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[derive(Clone)]
pub struct Node {
    dir: Arc<tempfile::TempDir>,
    router: Router,
    meta: Arc<SqliteMetadata>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("response is JSON")
    }

    /// The first OCI error code, if the body is an OCI error.
    pub fn code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_owned)
    }

    #[track_caller]
    pub fn assert_status(&self, status: StatusCode) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
    }

    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        self.assert_status(status);
        assert_eq!(
            self.code().as_deref(),
            Some(code),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&self.body).expect("json");
        assert!(v["errors"][0]["message"].is_string(), "message present");
    }
}

fn build(dir: &std::path::Path) -> (Router, Arc<SqliteMetadata>) {
    let blobs = BlobStore::open(dir).expect("blob store");
    let meta = Arc::new(SqliteMetadata::open(&dir.join("metadata.sqlite")).expect("metadata"));
    let registry = Registry::new(RegistryConfig::default(), blobs, meta.clone()).expect("registry");
    (Arc::new(registry).router(), meta)
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let (router, meta) = build(dir.path());
        Node {
            dir: Arc::new(dir),
            router,
            meta,
        }
    }

    /// Drops every in-memory state and reopens the same data directory.
    pub fn restart(&mut self) {
        let (router, meta) = build(self.dir.path());
        self.router = router;
        self.meta = meta;
    }

    pub async fn req(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Body::from(body.to_vec())).expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes().to_vec();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Like `req`, but a body that fails mid-stream is returned as `Err` with the status.
    pub async fn req_streamed(
        &self,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Result<Vec<u8>, String>) {
        let mut builder = Request::builder().method("GET").uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Body::empty()).expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec());
        (status, body.map_err(|e| e.to_string()))
    }

    /// Flips one bit of a stored blob's file at `offset`.
    pub fn corrupt_blob(&self, digest: &str, offset: usize) {
        let (algo, hex) = digest.split_once(':').expect("digest");
        let path = self
            .dir
            .path()
            .join("blobs")
            .join(algo)
            .join(&hex[..2])
            .join(hex);
        let mut bytes = std::fs::read(&path).expect("blob file");
        bytes[offset] ^= 0x10;
        std::fs::write(&path, bytes).expect("rewrite blob");
    }

    pub fn quarantined(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("quarantine")).map_or(0, |d| d.count())
    }

    pub async fn post_blob(&self, repo: &str, data: &[u8]) -> Reply {
        self.post_blob_as(repo, data, &blob_digest(data)).await
    }

    pub async fn post_blob_as(&self, repo: &str, data: &[u8], digest: &str) -> Reply {
        let uri = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
        self.req(
            "POST",
            &uri,
            &[("content-type", "application/octet-stream")],
            data,
        )
        .await
    }

    pub async fn start_session(&self, repo: &str) -> String {
        let r = self
            .req("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"")
            .await;
        r.assert_status(StatusCode::ACCEPTED);
        r.header("location").expect("location").to_owned()
    }

    /// Pushes a config and layers; returns the (unpushed) manifest and the config.
    pub async fn push_image(&self, repo: &str, layers: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        let config = config_blob();
        self.post_blob(repo, &config)
            .await
            .assert_status(StatusCode::CREATED);
        for layer in layers {
            self.post_blob(repo, layer)
                .await
                .assert_status(StatusCode::CREATED);
        }
        (image_manifest(&config, layers), config)
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Blob files under `blobs/` (sidecars excluded).
    pub fn blob_files(&self) -> usize {
        let mut n = 0;
        for algo in ["sha256", "sha512"] {
            let top = self.dir.path().join("blobs").join(algo);
            for shard in std::fs::read_dir(&top).expect("blobs dir").flatten() {
                for f in std::fs::read_dir(shard.path()).expect("shard").flatten() {
                    if !f.file_name().to_string_lossy().ends_with(".idx") {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    pub fn staged_uploads(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("uploads"))
            .expect("uploads dir")
            .count()
    }

    pub fn only_expected_top_level_entries(&self) -> bool {
        std::fs::read_dir(self.dir.path())
            .expect("data dir")
            .flatten()
            .all(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name == "blobs"
                    || name == "uploads"
                    || name == "quarantine"
                    || name.starts_with("metadata.sqlite")
            })
    }

    pub fn tag_history(&self, repo: &str, tag: &str) -> Vec<TagEvent> {
        let repo = RepoName::parse(repo).expect("repo");
        let tag = Tag::parse(tag).expect("tag");
        self.meta.tag_history(&repo, &tag, 100).expect("history")
    }
}

pub fn blob_digest(data: &[u8]) -> String {
    Digest::sha256_of(data).to_string()
}

pub fn sha512_digest(data: &[u8]) -> String {
    Digest::of(Algorithm::Sha512, data).to_string()
}

pub fn config_blob() -> Vec<u8> {
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec()
}

pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": blob_digest(l),
                "size": l.len(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blob_digest(config),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .expect("serialise")
}
