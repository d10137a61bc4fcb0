//! A server that lies about content: every lie must be counted as `digest_mismatch`.

use crate::support::{config, fake_server, respond};
use berth_loadtest::{run, ScenarioKind};
use hyper::Method;
use std::sync::Arc;

const SIZE: u64 = 8192;

/// Claims to have every blob (so setup skips the upload), then serves `body` for it.
async fn lying_registry(body: Vec<u8>) -> String {
    fake_server(Arc::new(move |req| {
        let path = req.uri().path();
        if path == "/v2/" {
            return respond(200, "{}");
        }
        if path.contains("/blobs/sha256:") {
            if req.method() == Method::HEAD {
                let mut r = respond(200, "");
                r.headers_mut().insert("content-length", SIZE.into());
                return r;
            }
            return respond(200, body.clone());
        }
        respond(404, "")
    }))
    .await
}

async fn mismatches(body: Vec<u8>) -> (u64, u64, Option<u64>) {
    let url = lying_registry(body).await;
    let mut cfg = config(ScenarioKind::BlobGet, &url);
    cfg.requests = Some(5);
    cfg.size = Some(SIZE);
    let report = run(&cfg).await.expect("run against the lying server");
    let b = report.targets[0]
        .op("blob-get")
        .expect("blob-get op")
        .clone();
    (
        b.requests,
        b.errors,
        b.errors_by_kind.get("digest_mismatch").copied(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_of_right_length_are_digest_mismatches() {
    assert_eq!(mismatches(vec![0; SIZE as usize]).await, (5, 5, Some(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_and_long_bodies_are_digest_mismatches() {
    assert_eq!(mismatches(vec![0; 100]).await, (5, 5, Some(5)));
    assert_eq!(
        mismatches(vec![0; SIZE as usize * 3]).await,
        (5, 5, Some(5))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_counted_by_status() {
    let url = fake_server(Arc::new(|req| match req.uri().path() {
        "/v2/" => respond(200, "{}"),
        p if p.contains("/blobs/") && req.method() == Method::HEAD => {
            let mut r = respond(200, "");
            r.headers_mut().insert("content-length", SIZE.into());
            r
        }
        _ => respond(503, "busy"),
    }))
    .await;
    let mut cfg = config(ScenarioKind::BlobGet, &url);
    cfg.requests = Some(4);
    cfg.size = Some(SIZE);
    let report = run(&cfg).await.expect("run");
    let b = report.targets[0].op("blob-get").expect("op");
    assert_eq!(b.errors_by_kind.get("http_503"), Some(&4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_fails_setup_with_the_target_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cfg = config(ScenarioKind::BlobGet, &url);
    cfg.requests = Some(1);
    let err = run(&cfg).await.expect_err("nothing listens there");
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("connect"), "{msg}");
}
