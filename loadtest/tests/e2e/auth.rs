//! The Docker bearer-token flow against a fake token server.

use crate::support::{config, fake_server, respond};
use berth_loadtest::auth::Credentials;
use berth_loadtest::data::{derive_key, BlobSpec};
use berth_loadtest::scenario::ids;
use berth_loadtest::{run, ScenarioKind};
use hyper::Method;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

const SIZE: u64 = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_with_basic_creds_and_cached() {
    let seed = 9;
    let blob = BlobSpec {
        key: derive_key(seed, &[ids::BLOB, SIZE, 0]),
        size: SIZE,
    };
    let bytes = blob.chunk(0, SIZE as usize);
    let token_fetches = Arc::new(AtomicU64::new(0));
    let realm: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let (fetches, realm2) = (token_fetches.clone(), realm.clone());
    let url = fake_server(Arc::new(move |req| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if req.uri().path() == "/token" {
            // "alice:secret" in base64.
            if auth != "Basic YWxpY2U6c2VjcmV0" {
                return respond(401, "");
            }
            fetches.fetch_add(1, Ordering::Relaxed);
            return respond(200, r#"{"token":"good-token","expires_in":300}"#);
        }
        if auth != "Bearer good-token" {
            let mut r = respond(401, "");
            let realm = realm2.get().cloned().unwrap_or_default();
            let v = format!(r#"Bearer realm="{realm}/token",service="fake",scope="x""#);
            r.headers_mut()
                .insert("www-authenticate", v.parse().expect("header"));
            return r;
        }
        if req.uri().path().contains("/blobs/") {
            if req.method() == Method::HEAD {
                let mut r = respond(200, "");
                r.headers_mut().insert("content-length", SIZE.into());
                return r;
            }
            return respond(200, bytes.clone());
        }
        respond(200, "{}")
    }))
    .await;
    realm.set(url.clone()).expect("set realm once");
    let mut cfg = config(ScenarioKind::BlobGet, &url);
    cfg.seed = seed;
    cfg.size = Some(SIZE);
    cfg.requests = Some(40);
    cfg.credentials = Some(Credentials {
        user: "alice".into(),
        password: "secret".into(),
    });
    let report = run(&cfg).await.expect("authenticated run");
    let b = report.targets[0].op("blob-get").expect("op");
    assert_eq!(
        (b.requests, b.errors, b.bytes),
        (40, 0, 40 * SIZE),
        "{:?}",
        b.errors_by_kind
    );
    let n = token_fetches.load(Ordering::Relaxed);
    // One for /v2/ (empty scope), one per scope, plus at most one per concurrent worker racing.
    assert!((1..=4).contains(&n), "{n} token fetches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_is_an_auth_error_not_a_hang() {
    let url_cell: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let cell = url_cell.clone();
    let url = fake_server(Arc::new(move |req| {
        if req.uri().path() == "/token" {
            return respond(403, "");
        }
        let mut r = respond(401, "");
        let v = format!(
            r#"Bearer realm="{}/token""#,
            cell.get().cloned().unwrap_or_default()
        );
        r.headers_mut()
            .insert("www-authenticate", v.parse().expect("header"));
        r
    }))
    .await;
    url_cell.set(url.clone()).expect("set once");
    let mut cfg = config(ScenarioKind::BlobGet, &url);
    cfg.requests = Some(1);
    let err = run(&cfg).await.expect_err("setup cannot authenticate");
    assert!(err.to_string().contains("auth"), "{err}");
}
