//! Every `/v2/` endpoint and error code, driven in-process through the router.

mod support;

use axum::http::StatusCode;
use support::{blob_digest, image_manifest, Node};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[tokio::test]
async fn base_endpoint_announces_the_api_version() {
    let node = Node::new();
    let r = node.req("GET", "/v2/", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(
        node.req("GET", "/healthz", &[], b"").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn monolithic_upload_and_reads_with_ranges() {
    let node = Node::new();
    let data = b"0123456789abcdef";
    let d = blob_digest(data);
    let r = node.post_blob("lib/app", data).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/lib/app/blobs/{d}").as_str())
    );
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));

    let r = node
        .req("GET", &format!("/v2/lib/app/blobs/{d}"), &[], b"")
        .await;
    assert_eq!((r.status, r.body.as_slice()), (StatusCode::OK, &data[..]));
    assert_eq!(r.header("content-length"), Some("16"));
    let r = node
        .req("HEAD", &format!("/v2/lib/app/blobs/{d}"), &[], b"")
        .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    assert_eq!(r.header("content-length"), Some("16"));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));

    let ranged = [
        ("bytes=2-5", "2345", "bytes 2-5/16"),
        ("bytes=-3", "def", "bytes 13-15/16"),
    ];
    for (range, body, content_range) in ranged {
        let r = node
            .req(
                "GET",
                &format!("/v2/lib/app/blobs/{d}"),
                &[("range", range)],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.body, body.as_bytes(), "{range}");
        assert_eq!(r.header("content-range"), Some(content_range));
    }
    let r = node
        .req(
            "GET",
            &format!("/v2/lib/app/blobs/{d}"),
            &[("range", "bytes=16-")],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */16"));
}

#[tokio::test]
async fn large_blobs_stream_back_intact() {
    let node = Node::new();
    let data: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let d = blob_digest(&data);
    assert_eq!(
        node.post_blob("big", &data).await.status,
        StatusCode::CREATED
    );
    let r = node
        .req("GET", &format!("/v2/big/blobs/{d}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body == data, "streamed body differs");
    let r = node
        .req(
            "GET",
            &format!("/v2/big/blobs/{d}"),
            &[("range", "bytes=1000000-3999999")],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(
        r.body == data[1_000_000..4_000_000],
        "ranged stream differs"
    );
}

#[tokio::test]
async fn a_corrupt_blob_is_never_served_as_good() {
    let node = Node::new();
    let data: Vec<u8> = (0..(3u32 << 20) + 77)
        .map(|i| (i.wrapping_mul(7919) >> 5) as u8)
        .collect();
    let small = b"a small blob that will rot".to_vec();
    let (d, ds) = (blob_digest(&data), blob_digest(&small));
    node.post_blob("rot", &data)
        .await
        .assert_status(StatusCode::CREATED);
    node.post_blob("rot", &small)
        .await
        .assert_status(StatusCode::CREATED);

    // Damage in a later chunk: the transfer has begun, so it is cut short with an error.
    node.corrupt_blob(&d, (2 << 20) + 10);
    let (status, body) = node.req_streamed(&format!("/v2/rot/blobs/{d}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.is_err(),
        "a corrupt chunk must end the body with an error"
    );
    // A range inside the intact first chunk was still fine to serve before quarantine... but
    // the blob is now quarantined: it is gone until pushed again.
    assert_eq!(
        node.quarantined(),
        2,
        "blob and its index are in quarantine/"
    );
    node.req("GET", &format!("/v2/rot/blobs/{d}"), &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");

    // Damage in the first chunk: refused before any header, with an error response.
    node.corrupt_blob(&ds, 3);
    node.req("GET", &format!("/v2/rot/blobs/{ds}"), &[], b"")
        .await
        .assert_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR");
    let metrics =
        String::from_utf8(node.req("GET", "/metrics", &[], b"").await.body).expect("utf8");
    assert!(
        metrics.lines().any(|l| l == "berth_blobs_corrupt_total 2"),
        "{metrics}"
    );

    // Pushing the same content again heals the store.
    node.post_blob("rot", &data)
        .await
        .assert_status(StatusCode::CREATED);
    let (status, body) = node.req_streamed(&format!("/v2/rot/blobs/{d}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.as_deref() == Ok(&data[..]),
        "healed blob is served intact"
    );
}

#[tokio::test]
async fn ranges_across_chunk_boundaries() {
    let node = Node::new();
    let data: Vec<u8> = (0..(2u32 << 20) + 500).map(|i| (i % 251) as u8).collect();
    let d = blob_digest(&data);
    node.post_blob("span", &data)
        .await
        .assert_status(StatusCode::CREATED);
    let mib = 1usize << 20;
    let cases = [
        (mib - 10, mib + 10),
        (0, mib - 1),
        (mib, 2 * mib + 499),
        (mib - 300_000, mib + 300_000),
        (2 * mib, 2 * mib),
    ];
    for (a, b) in cases {
        let range = format!("bytes={a}-{b}");
        let (status, body) = node
            .req_streamed(&format!("/v2/span/blobs/{d}"), &[("range", &range)])
            .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert!(body.as_deref() == Ok(&data[a..=b]), "{range}");
    }
}

#[tokio::test]
async fn wrong_digest_is_refused_and_nothing_is_stored() {
    let node = Node::new();
    let claimed = blob_digest(b"something else");
    let r = node
        .req(
            "POST",
            &format!("/v2/a/blobs/uploads/?digest={claimed}"),
            &[],
            b"actual bytes",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    node.req("HEAD", &format!("/v2/a/blobs/{claimed}"), &[], b"")
        .await
        .assert_status(StatusCode::NOT_FOUND);
    assert_eq!(node.blob_files(), 0, "no blob file may exist");
    assert_eq!(
        node.staged_uploads(),
        0,
        "the refused upload leaves no staging data"
    );

    let cases = [
        ("/v2/a/blobs/uploads/?digest=sha256:xyz", "DIGEST_INVALID"),
        ("/v2/a/blobs/uploads/?digest=md5:abcd", "UNSUPPORTED"),
    ];
    for (path, code) in cases {
        let r = node.req("POST", path, &[], b"x").await;
        assert_eq!(r.code().as_deref(), Some(code), "{path}");
    }
}

#[tokio::test]
async fn chunked_upload_with_status_out_of_order_and_final_chunk() {
    let node = Node::new();
    let r = node
        .req("POST", "/v2/chunky/blobs/uploads/", &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let location = r.header("location").expect("location").to_owned();
    assert!(r.header("docker-upload-uuid").is_some());
    assert_eq!(r.header("range"), Some("0-0"));

    let r = node
        .req(
            "PATCH",
            &location,
            &[("content-range", "0-4"), ("content-length", "5")],
            b"hello",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-4"));

    let r = node
        .req("PATCH", &location, &[("content-range", "9-11")], b"abc")
        .await;
    r.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID");
    assert_eq!(
        r.header("range"),
        Some("0-4"),
        "416 reports the current offset"
    );

    // A streamed PATCH (no Content-Range) appends too.
    let r = node.req("PATCH", &location, &[], b", ").await;
    assert_eq!(r.header("range"), Some("0-6"));

    let r = node.req("GET", &location, &[], b"").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), Some("0-6"));

    let whole = b"hello, world";
    let d = blob_digest(whole);
    let r = node
        .req(
            "PUT",
            &format!("{location}?digest={d}"),
            &[("content-range", "7-11")],
            b"world",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    let r = node
        .req("GET", &format!("/v2/chunky/blobs/{d}"), &[], b"")
        .await;
    assert_eq!(r.body, whole);
    // The session is gone once completed.
    node.req("GET", &location, &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn closing_put_needs_a_matching_digest() {
    let node = Node::new();
    let location = node.start_session("p").await;
    node.req("PATCH", &location, &[], b"data")
        .await
        .assert_status(StatusCode::ACCEPTED);
    node.req("PUT", &location, &[], b"")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    let wrong = blob_digest(b"other");
    let r = node
        .req("PUT", &format!("{location}?digest={wrong}"), &[], b"")
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    assert_eq!(node.blob_files(), 0);
    assert_eq!(node.staged_uploads(), 0, "a refused upload is discarded");
}

#[tokio::test]
async fn unknown_sessions_and_cancel() {
    let node = Node::new();
    let bogus = "/v2/u/blobs/uploads/3f1b7a52-2b4c-4d7e-9a55-111111111111";
    for method in ["PATCH", "GET", "DELETE"] {
        node.req(method, bogus, &[], b"")
            .await
            .assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    }
    let d = blob_digest(b"");
    let r = node
        .req("PUT", &format!("{bogus}?digest={d}"), &[], b"")
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    node.req("PATCH", "/v2/u/blobs/uploads/../../etc", &[], b"")
        .await
        .assert_status(StatusCode::NOT_FOUND);

    let location = node.start_session("u").await;
    // A session belongs to its repository.
    let foreign = location.replace("/v2/u/", "/v2/other/");
    node.req("PATCH", &foreign, &[], b"x")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    node.req("PATCH", &location, &[], b"partial")
        .await
        .assert_status(StatusCode::ACCEPTED);
    node.req("DELETE", &location, &[], b"")
        .await
        .assert_status(StatusCode::NO_CONTENT);
    node.req("GET", &location, &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(node.staged_uploads(), 0);
}

#[tokio::test]
async fn chunked_upload_survives_a_restart() {
    let mut node = Node::new();
    let location = node.start_session("durable").await;
    node.req("PATCH", &location, &[("content-range", "0-5")], b"before")
        .await
        .assert_status(StatusCode::ACCEPTED);
    node.restart();
    let r = node.req("GET", &location, &[], b"").await;
    assert_eq!(r.header("range"), Some("0-5"));
    node.req("PATCH", &location, &[("content-range", "6-11")], b" after")
        .await
        .assert_status(StatusCode::ACCEPTED);
    let d = blob_digest(b"before after");
    node.req("PUT", &format!("{location}?digest={d}"), &[], b"")
        .await
        .assert_status(StatusCode::CREATED);
    assert_eq!(
        node.req("GET", &format!("/v2/durable/blobs/{d}"), &[], b"")
            .await
            .body,
        b"before after"
    );
}

#[tokio::test]
async fn restart_reconciles_staging_data_with_sessions() {
    let mut node = Node::new();
    let lost = node.start_session("r").await;
    let kept = node.start_session("r").await;
    let lost_id = lost.rsplit('/').next().expect("id");
    std::fs::remove_dir_all(node.data_dir().join("uploads").join(lost_id)).expect("remove");
    let stray = node.data_dir().join("uploads").join(uuid_like());
    std::fs::create_dir_all(&stray).expect("stray dir");
    node.restart();
    assert!(!stray.exists(), "staging data of no session is discarded");
    node.req("GET", &lost, &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN");
    node.req("GET", &kept, &[], b"")
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(node.staged_uploads(), 1);
}

fn uuid_like() -> String {
    "0b7c6f1e-3a2d-4c5b-8e9f-aaaaaaaaaaaa".to_owned()
}

#[tokio::test]
async fn sha512_blobs() {
    let node = Node::new();
    let data = b"sha512 content";
    let d = support::sha512_digest(data);
    node.post_blob_as("s", data, &d)
        .await
        .assert_status(StatusCode::CREATED);
    let r = node.req("GET", &format!("/v2/s/blobs/{d}"), &[], b"").await;
    assert_eq!(r.body, data);
    // A session can finish with a sha512 digest too (the node re-hashes).
    let location = node.start_session("s").await;
    let d2 = support::sha512_digest(b"chunked 512");
    node.req("PATCH", &location, &[], b"chunked 512")
        .await
        .assert_status(StatusCode::ACCEPTED);
    node.req("PUT", &format!("{location}?digest={d2}"), &[], b"")
        .await
        .assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn identical_concurrent_uploads_are_safe() {
    let node = Node::new();
    let data = vec![42u8; 3 << 20];
    let d = blob_digest(&data);
    let pushes = (0..8).map(|i| {
        let node = node.clone();
        let data = data.clone();
        tokio::spawn(async move { node.post_blob(&format!("same{i}"), &data).await.status })
    });
    for push in pushes {
        assert_eq!(push.await.expect("task"), StatusCode::CREATED);
    }
    assert_eq!(node.blob_files(), 1, "content is stored once");
    for i in 0..8 {
        let r = node
            .req("GET", &format!("/v2/same{i}/blobs/{d}"), &[], b"")
            .await;
        assert!(r.body == data);
    }
}

#[tokio::test]
async fn cross_repository_mounts() {
    let node = Node::new();
    let data = b"shared layer";
    let d = blob_digest(data);
    node.post_blob("src/repo", data)
        .await
        .assert_status(StatusCode::CREATED);

    let r = node
        .req(
            "POST",
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/dst/blobs/{d}").as_str())
    );
    node.req("HEAD", &format!("/v2/dst/blobs/{d}"), &[], b"")
        .await
        .assert_status(StatusCode::OK);

    // Not in `from`: falls back to an upload session.
    let r = node
        .req(
            "POST",
            &format!("/v2/dst2/blobs/uploads/?mount={d}&from=empty/repo"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r
        .header("location")
        .is_some_and(|l| l.contains("/blobs/uploads/")));
    // Without `from`, a blob the node holds is mounted.
    let r = node
        .req(
            "POST",
            &format!("/v2/dst3/blobs/uploads/?mount={d}"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn blob_errors_and_delete() {
    let node = Node::new();
    let d = blob_digest(b"gone");
    node.req("GET", &format!("/v2/x/blobs/{d}"), &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    node.req("GET", "/v2/x/blobs/sha256:nothex", &[], b"")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
    node.post_blob("x", b"gone")
        .await
        .assert_status(StatusCode::CREATED);
    // Blobs are visible only in repositories that hold them.
    node.req("GET", &format!("/v2/y/blobs/{d}"), &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    node.req("DELETE", &format!("/v2/x/blobs/{d}"), &[], b"")
        .await
        .assert_status(StatusCode::ACCEPTED);
    node.req("GET", &format!("/v2/x/blobs/{d}"), &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    node.req("DELETE", &format!("/v2/x/blobs/{d}"), &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn names_outside_the_grammar_are_refused() {
    let node = Node::new();
    let d = blob_digest(b"x");
    let paths = [
        "/v2/UPPER/tags/list".to_owned(),
        "/v2/a/../b/tags/list".to_owned(),
        "/v2/a/%2e%2e/b/tags/list".to_owned(),
        "/v2/a/%2E%2E/blobs/uploads/".to_owned(),
        format!("/v2//abs/blobs/{d}"),
        "/v2/a..b/manifests/latest".to_owned(),
    ];
    for path in &paths {
        let method = if path.ends_with("uploads/") {
            "POST"
        } else {
            "GET"
        };
        node.req(method, path, &[], b"")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "NAME_INVALID");
    }
    node.req("GET", "/v2/ok/manifests/bad..tag!", &[], b"")
        .await
        .assert_status(StatusCode::BAD_REQUEST);
    node.req("PUT", "/v2/ok/blobs/x", &[], b"")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    node.req("GET", "/v2/ok/nothing/here", &[], b"")
        .await
        .assert_status(StatusCode::NOT_FOUND);
    assert_eq!(node.blob_files(), 0);
    assert!(
        node.only_expected_top_level_entries(),
        "nothing written outside the layout"
    );
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let node = Node::new();
    let (manifest, _) = node.push_image("app", &[b"layer one", b"layer two"]).await;
    let md = blob_digest(&manifest);
    let r = node
        .req(
            "PUT",
            "/v2/app/manifests/v1",
            &[("content-type", OCI_MANIFEST)],
            &manifest,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("docker-content-digest"), Some(md.as_str()));
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/app/manifests/{md}").as_str())
    );

    for reference in ["v1", md.as_str()] {
        let r = node
            .req(
                "GET",
                &format!("/v2/app/manifests/{reference}"),
                &[("accept", OCI_MANIFEST)],
                b"",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, manifest);
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(r.header("docker-content-digest"), Some(md.as_str()));
        let r = node
            .req("HEAD", &format!("/v2/app/manifests/{reference}"), &[], b"")
            .await;
        assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
        assert_eq!(
            r.header("content-length"),
            Some(manifest.len().to_string().as_str())
        );
    }
    // Pushing by digest works and checks the digest.
    let r = node
        .req(
            "PUT",
            &format!("/v2/app/manifests/{md}"),
            &[("content-type", OCI_MANIFEST)],
            &manifest,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let wrong = blob_digest(b"nope");
    let r = node
        .req(
            "PUT",
            &format!("/v2/app/manifests/{wrong}"),
            &[("content-type", OCI_MANIFEST)],
            &manifest,
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");

    node.req("GET", "/v2/app/manifests/v2", &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    node.req("GET", &format!("/v2/app/manifests/{wrong}"), &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn invalid_manifests_are_refused() {
    let node = Node::new();
    let (manifest, _) = node.push_image("m", &[b"l"]).await;
    let missing_layer = image_manifest(&support::config_blob(), &[b"never pushed"]);
    let cases: Vec<(Vec<u8>, &str, StatusCode, &str)> = vec![
        (missing_layer, OCI_MANIFEST, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
        (b"{not json".to_vec(), OCI_MANIFEST, StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        (manifest.clone(), "text/plain", StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        (manifest.clone(), OCI_INDEX, StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        (
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1}]}"#.to_vec(),
            OCI_INDEX,
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
        ),
    ];
    for (body, ct, status, code) in cases {
        let r = node
            .req("PUT", "/v2/m/manifests/bad", &[("content-type", ct)], &body)
            .await;
        r.assert_error(status, code);
    }
    let huge = vec![b' '; (4 << 20) + 1];
    let r = node
        .req(
            "PUT",
            "/v2/m/manifests/huge",
            &[("content-type", OCI_MANIFEST)],
            &huge,
        )
        .await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID");
    node.req("GET", "/v2/m/manifests/bad", &[], b"")
        .await
        .assert_status(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn indexes_docker_types_and_deletes() {
    let node = Node::new();
    let (amd, _) = node.push_image("multi", &[b"amd64 layer"]).await;
    let (arm, _) = node.push_image("multi", &[b"arm64 layer"]).await;
    let (amd_d, arm_d) = (blob_digest(&amd), blob_digest(&arm));
    for (m, d) in [(&amd, &amd_d), (&arm, &arm_d)] {
        node.req(
            "PUT",
            &format!("/v2/multi/manifests/{d}"),
            &[("content-type", OCI_MANIFEST)],
            m,
        )
        .await
        .assert_status(StatusCode::CREATED);
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
        {{"mediaType":"{OCI_MANIFEST}","digest":"{amd_d}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},
        {{"mediaType":"{OCI_MANIFEST}","digest":"{arm_d}","size":{},"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
        amd.len(),
        arm.len()
    );
    node.req(
        "PUT",
        "/v2/multi/manifests/latest",
        &[("content-type", OCI_INDEX)],
        index.as_bytes(),
    )
    .await
    .assert_status(StatusCode::CREATED);
    let r = node
        .req("GET", "/v2/multi/manifests/latest", &[], b"")
        .await;
    assert_eq!(
        (r.header("content-type"), r.body.as_slice()),
        (Some(OCI_INDEX), index.as_bytes())
    );

    // A client that does not accept indexes gets the linux/amd64 image.
    let r = node
        .req(
            "GET",
            "/v2/multi/manifests/latest",
            &[("accept", OCI_MANIFEST)],
            b"",
        )
        .await;
    assert_eq!(
        (r.header("content-type"), r.body.as_slice()),
        (Some(OCI_MANIFEST), amd.as_slice())
    );
    assert_eq!(r.header("docker-content-digest"), Some(amd_d.as_str()));
    let r = node
        .req(
            "GET",
            "/v2/multi/manifests/latest",
            &[("accept", &format!("{OCI_MANIFEST}, {OCI_INDEX}"))],
            b"",
        )
        .await;
    assert_eq!(r.body, index.as_bytes());

    // Docker schema 2 manifest and manifest list.
    let docker = String::from_utf8(amd.clone())
        .expect("utf8")
        .replace(
            OCI_MANIFEST,
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
        )
        .replace(
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.docker.image.rootfs.diff.tar",
        );
    let ct = "application/vnd.docker.distribution.manifest.v2+json";
    node.req(
        "PUT",
        "/v2/multi/manifests/docker",
        &[("content-type", ct)],
        docker.as_bytes(),
    )
    .await
    .assert_status(StatusCode::CREATED);
    let r = node
        .req("GET", "/v2/multi/manifests/docker", &[], b"")
        .await;
    assert_eq!(r.header("content-type"), Some(ct));
    let list = index.replace(
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.list.v2+json",
    );
    let lct = "application/vnd.docker.distribution.manifest.list.v2+json";
    node.req(
        "PUT",
        "/v2/multi/manifests/list",
        &[("content-type", lct)],
        list.as_bytes(),
    )
    .await
    .assert_status(StatusCode::CREATED);

    // Delete by tag removes the tag only; by digest removes the manifest.
    node.req("DELETE", "/v2/multi/manifests/docker", &[], b"")
        .await
        .assert_status(StatusCode::ACCEPTED);
    node.req("GET", "/v2/multi/manifests/docker", &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    let docker_d = blob_digest(docker.as_bytes());
    node.req("GET", &format!("/v2/multi/manifests/{docker_d}"), &[], b"")
        .await
        .assert_status(StatusCode::OK);
    node.req(
        "DELETE",
        &format!("/v2/multi/manifests/{docker_d}"),
        &[],
        b"",
    )
    .await
    .assert_status(StatusCode::ACCEPTED);
    node.req("GET", &format!("/v2/multi/manifests/{docker_d}"), &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    node.req(
        "DELETE",
        &format!("/v2/multi/manifests/{docker_d}"),
        &[],
        b"",
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn referrers_with_artifact_type_filter() {
    let node = Node::new();
    let (image, _) = node.push_image("signed", &[b"payload"]).await;
    let image_d = blob_digest(&image);
    node.req(
        "PUT",
        "/v2/signed/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        &image,
    )
    .await
    .assert_status(StatusCode::CREATED);
    let empty = b"{}";
    node.post_blob("signed", empty)
        .await
        .assert_status(StatusCode::CREATED);
    let mut pushed = Vec::new();
    for (artifact_type, note) in [
        ("application/vnd.example.sig", "a"),
        ("application/vnd.example.sbom", "b"),
    ] {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}",
            "config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},
            "layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{image_d}","size":{}}},
            "annotations":{{"note":"{note}"}}}}"#,
            blob_digest(empty),
            image.len()
        );
        let d = blob_digest(m.as_bytes());
        let r = node
            .req(
                "PUT",
                &format!("/v2/signed/manifests/{d}"),
                &[("content-type", OCI_MANIFEST)],
                m.as_bytes(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.header("oci-subject"), Some(image_d.as_str()));
        pushed.push((d, artifact_type));
    }
    let r = node
        .req("GET", &format!("/v2/signed/referrers/{image_d}"), &[], b"")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(r.header("oci-filters-applied"), None);
    let index: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 2);
    assert!(manifests
        .iter()
        .all(|m| m["annotations"]["note"].is_string() && m["artifactType"].is_string()));

    let r = node
        .req(
            "GET",
            &format!("/v2/signed/referrers/{image_d}?artifactType=application/vnd.example.sbom"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let index: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let only: Vec<&str> = index["manifests"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    let sbom = pushed
        .iter()
        .find(|(_, t)| t.ends_with("sbom"))
        .map(|(d, _)| d.as_str());
    assert_eq!(only, vec![sbom.expect("pushed")]);

    let none = blob_digest(b"no referrers");
    let r = node
        .req("GET", &format!("/v2/signed/referrers/{none}"), &[], b"")
        .await;
    let index: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(0));
    node.req("GET", "/v2/signed/referrers/sha256:bad", &[], b"")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_link_headers() {
    let node = Node::new();
    let (manifest, _) = node.push_image("paged", &[b"l"]).await;
    for tag in ["c", "a", "e", "b", "d"] {
        node.req(
            "PUT",
            &format!("/v2/paged/manifests/{tag}"),
            &[("content-type", OCI_MANIFEST)],
            &manifest,
        )
        .await
        .assert_status(StatusCode::CREATED);
    }
    let r = node.req("GET", "/v2/paged/tags/list", &[], b"").await;
    assert_eq!(
        r.json()["tags"],
        serde_json::json!(["a", "b", "c", "d", "e"])
    );
    assert_eq!(r.header("link"), None);

    let r = node.req("GET", "/v2/paged/tags/list?n=2", &[], b"").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/paged/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let r = node
        .req("GET", "/v2/paged/tags/list?n=2&last=b", &[], b"")
        .await;
    assert_eq!(r.json()["tags"], serde_json::json!(["c", "d"]));
    let r = node
        .req("GET", "/v2/paged/tags/list?n=2&last=d", &[], b"")
        .await;
    assert_eq!(
        (r.json()["tags"].clone(), r.header("link")),
        (serde_json::json!(["e"]), None)
    );
    let r = node.req("GET", "/v2/paged/tags/list?n=0", &[], b"").await;
    assert_eq!(r.json()["tags"], serde_json::json!([]));
    node.req("GET", "/v2/nothere/tags/list", &[], b"")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");

    for repo in ["z/one", "a/two"] {
        node.post_blob(repo, b"x")
            .await
            .assert_status(StatusCode::CREATED);
    }
    let r = node.req("GET", "/v2/_catalog?n=2", &[], b"").await;
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!(["a/two", "paged"])
    );
    assert_eq!(
        r.header("link"),
        Some("</v2/_catalog?n=2&last=paged>; rel=\"next\"")
    );
    let r = node
        .req("GET", "/v2/_catalog?n=2&last=paged", &[], b"")
        .await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["z/one"]));
}

#[tokio::test]
async fn tag_moves_are_kept_as_history() {
    let node = Node::new();
    let (first, _) = node.push_image("hist", &[b"one"]).await;
    let (second, _) = node.push_image("hist", &[b"two"]).await;
    for m in [&first, &second] {
        node.req(
            "PUT",
            "/v2/hist/manifests/latest",
            &[("content-type", OCI_MANIFEST)],
            m,
        )
        .await
        .assert_status(StatusCode::CREATED);
    }
    node.req("DELETE", "/v2/hist/manifests/latest", &[], b"")
        .await
        .assert_status(StatusCode::ACCEPTED);
    let events = node.tag_history("hist", "latest");
    let actions: Vec<(&str, Option<String>, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.digest.as_ref().map(|d| d.to_string()),
                e.previous.as_ref().map(|d| d.to_string()),
            )
        })
        .collect();
    let (d1, d2) = (blob_digest(&first), blob_digest(&second));
    assert_eq!(
        actions,
        vec![
            ("delete", None, Some(d2.clone())),
            ("push", Some(d2), Some(d1.clone())),
            ("push", Some(d1), None),
        ]
    );
}

#[tokio::test]
async fn metrics_count_requests_and_bytes() {
    let node = Node::new();
    node.post_blob("metered", &[1u8; 1000])
        .await
        .assert_status(StatusCode::CREATED);
    let d = blob_digest(&[1u8; 1000]);
    node.req("GET", &format!("/v2/metered/blobs/{d}"), &[], b"")
        .await
        .assert_status(StatusCode::OK);
    let text = String::from_utf8(node.req("GET", "/metrics", &[], b"").await.body).expect("utf8");
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has("berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        has("berth_http_requests_total{route=\"upload\",method=\"POST\",status=\"201\"} 1"),
        "{text}"
    );
    assert!(has("berth_http_request_bytes_total 1000"), "{text}");
    assert!(has("berth_blobs_committed_total 1"), "{text}");
    assert!(has("berth_upload_duration_seconds_count 1"), "{text}");
    let sent = text
        .lines()
        .find_map(|l| l.strip_prefix("berth_http_response_bytes_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("response bytes");
    assert!(sent >= 1000, "{sent}");
}
