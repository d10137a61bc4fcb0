//! The libp2p peer layer (issue 5, part 2): an origin and three nodes on loopback, each node
//! with `--upstream <origin>` and the other two as bootstrap peers. Pulls are driven by
//! skopeo; assertions read `/metrics` and `/berth/v1/peers`.

use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::mirror::{check_copy, origin_with_image};
use crate::skopeo::skopeo_copy;
use crate::support::{fail, free_port, metric, require_client, Node, Res, Rng};

/// How long announcements may take to be visible to other nodes (scan interval 1 s).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(15);

fn maddr(port: u16) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}")
}

/// A fleet member: pulls through `origin`, bootstraps from the other ports.
fn start_node(dir: &Path, origin: &Node, ports: &[u16], me: usize, extra: &[&str]) -> Res<Node> {
    let others: Vec<String> = ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, p)| maddr(*p))
        .collect();
    let mut args = vec![
        "--upstream".to_owned(),
        format!("http://{}", origin.host()),
        "--p2p-listen".to_owned(),
        maddr(ports[me]),
        "--p2p-bootstrap".to_owned(),
        others.join(","),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Node::start_with(dir, &args)
}

/// 2 layers, the big one 5.5 MiB: six pieces, so several peers can share one blob.
const P2P_LAYER: usize = (11 << 20) / 2;

/// Waits until `node` has a connection to `n` peers that told their HTTP address.
fn wait_for_peers(node: &Node, n: usize) -> Res {
    let deadline = Instant::now() + ANNOUNCE_WAIT;
    loop {
        let resp = node
            .request("GET", "/berth/v1/peers", &[], b"")?
            .expect_status(200, "peers")?;
        let v: serde_json::Value = serde_json::from_slice(&resp.body)?;
        let ready = v["peers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["connected"] == true && p["http_addr"].is_string())
                    .count()
            })
            .unwrap_or(0);
        if ready >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(format!("only {ready} peers ready: {v}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn p2p_pull_is_served_by_a_peer_when_the_origin_is_gone() -> Res {
    if !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let (mut origin, _src, image) = origin_with_image(tmp.path(), "e2e/p2p", P2P_LAYER)?;
    let ports = [free_port()?, free_port()?, free_port()?];
    let nodes: Vec<Node> = (0..3)
        .map(|i| start_node(&tmp.path().join(format!("n{i}")), &origin, &ports, i, &[]))
        .collect::<Res<_>>()?;
    for n in &nodes {
        wait_for_peers(n, 2)?;
    }
    skopeo_copy(
        &format!("docker://{}/e2e/p2p:v1", nodes[0].host()),
        &format!("oci:{}:v1", tmp.path().join("out1").display()),
        false,
    )?;
    check_copy(&tmp.path().join("out1"), &image)?;
    // Node 1 announces within a scan interval; then the origin goes away.
    std::thread::sleep(Duration::from_secs(3));
    origin.kill()?;
    let egress_before = metric(&nodes[0], "berth_http_response_bytes_total")?;
    skopeo_copy(
        &format!("docker://{}/e2e/p2p:v1", nodes[1].host()),
        &format!("oci:{}:v1", tmp.path().join("out2").display()),
        false,
    )?;
    check_copy(&tmp.path().join("out2"), &image)?;
    let layer_bytes: u64 = image.layers.iter().map(|l| l.blob.len() as u64).sum();
    let peer_bytes = metric(&nodes[1], "berth_blob_bytes_total{source=\"peer\"}")?;
    assert!(
        peer_bytes >= layer_bytes,
        "node 2 got {peer_bytes} bytes from peers, layers are {layer_bytes}"
    );
    let egress = metric(&nodes[0], "berth_http_response_bytes_total")? - egress_before;
    assert!(
        egress >= layer_bytes,
        "node 1 sent {egress} bytes, layers are {layer_bytes}"
    );
    assert!(metric(&nodes[1], "berth_peer_bytes_total{")? >= layer_bytes);
    Ok(())
}

#[test]
fn p2p_a_peer_sending_bad_pieces_is_banned_and_the_pull_succeeds() -> Res {
    if !require_client("skopeo") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let (mut origin, _src, image) = origin_with_image(tmp.path(), "e2e/liar", P2P_LAYER)?;
    let ports = [free_port()?, free_port()?, free_port()?];
    // Node 0 lies on every ranged read; node 1 is honest; node 2 pulls.
    let liar = start_node(
        &tmp.path().join("liar"),
        &origin,
        &ports,
        0,
        &["--p2p-liar"],
    )?;
    let honest = start_node(&tmp.path().join("honest"), &origin, &ports, 1, &[])?;
    let puller = start_node(&tmp.path().join("puller"), &origin, &ports, 2, &[])?;
    wait_for_peers(&puller, 2)?;
    for (node, out) in [(&liar, "o-liar"), (&honest, "o-honest")] {
        skopeo_copy(
            &format!("docker://{}/e2e/liar:v1", node.host()),
            &format!("oci:{}:v1", tmp.path().join(out).display()),
            false,
        )?;
    }
    std::thread::sleep(Duration::from_secs(3));
    origin.kill()?;
    skopeo_copy(
        &format!("docker://{}/e2e/liar:v1", puller.host()),
        &format!("oci:{}:v1", tmp.path().join("out").display()),
        false,
    )?;
    check_copy(&tmp.path().join("out"), &image)?;
    assert_eq!(
        metric(&puller, "berth_peer_bans_total")?,
        1,
        "{}",
        puller.log_text()
    );
    assert!(metric(&puller, "berth_peer_bad_pieces_total")? >= 1);
    assert!(
        puller.log_text().contains("peer banned"),
        "no ban log line:\n{}",
        puller.log_text()
    );
    Ok(())
}

/// GETs `/v2/<repo>/blobs/<digest>` through `node` and checks the bytes.
fn pull_blob(node: &Node, repo: &str, digest: &str, want: &[u8]) -> Res {
    let resp = node
        .request("GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"")?
        .expect_status(200, "blob through a node")?;
    if resp.body != want {
        return Err(fail(format!(
            "{} bytes came back for {digest}, want {} (same content: {})",
            resp.body.len(),
            want.len(),
            crate::support::sha256_digest(&resp.body) == digest
        )));
    }
    Ok(())
}

#[test]
fn p2p_cold_nodes_share_pieces_while_downloading() -> Res {
    let tmp = TempDir::new()?;
    // A slow origin (8 MiB/s uplink): a 24 MiB blob takes it 3 s to send once.
    let origin = Node::start_with(
        &tmp.path().join("origin"),
        &["--serve-rate-limit-mbps".into(), "8".into()],
    )?;
    let blob = Rng::from_clock().bytes(24 << 20);
    let digest = origin.push_blob("e2e/share", &blob)?;
    let ports = [free_port()?, free_port()?];
    let nodes: Vec<Node> = (0..2)
        .map(|i| start_node(&tmp.path().join(format!("n{i}")), &origin, &ports, i, &[]))
        .collect::<Res<_>>()?;
    for n in &nodes {
        wait_for_peers(n, 1)?;
    }
    let egress_before = metric(&origin, "berth_http_response_bytes_total")?;
    // Both nodes are cold and start at the same time: nothing is committed anywhere until
    // the end, so any peer bytes were shared while downloading.
    std::thread::scope(|s| -> Res {
        let pulls: Vec<_> = nodes
            .iter()
            .map(|n| s.spawn(|| pull_blob(n, "e2e/share", &digest, &blob)))
            .collect();
        for p in pulls {
            p.join().map_err(|_| fail("pull thread panicked"))??;
        }
        Ok(())
    })?;
    let egress = metric(&origin, "berth_http_response_bytes_total")? - egress_before;
    let copies = egress as f64 / blob.len() as f64;
    for (i, n) in nodes.iter().enumerate() {
        let peer = metric(n, "berth_blob_bytes_total{source=\"peer\"}")?;
        let up = metric(n, "berth_blob_bytes_total{source=\"upstream\"}")?;
        eprintln!("node {i}: {peer} bytes from its peer, {up} from the origin");
        assert!(
            peer > 0 && peer + up == blob.len() as u64,
            "node {i}: {peer} bytes from its peer, {up} from the origin; log:\n{}",
            n.log_text()
        );
    }
    eprintln!("origin sent {copies:.2} copies");
    assert!(
        copies <= 1.5,
        "the origin sent {copies:.2} copies of the blob (two nodes without sharing: 2.0)"
    );
    // The partial files are gone once the blob is committed.
    for i in 0..2 {
        let dir = tmp.path().join(format!("n{i}")).join("p2p-partial");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&dir)?.count() > 0 {
            if Instant::now() > deadline {
                return Err(fail(format!("{} still holds partial files", dir.display())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[test]
fn p2p_private_blobs_are_never_announced_nor_served_to_anonymous_peers() -> Res {
    use crate::identity::{api_ok, basic, start_auth_node, ADMIN, ADMIN_PASSWORD};
    let tmp = TempDir::new()?;
    let ports = [free_port()?, free_port()?];
    let p2p_toml = format!("[p2p]\nlisten = [\"{}\"]\n", maddr(ports[0]));
    let a = start_auth_node(&tmp.path().join("a"), &p2p_toml)?;
    let admin = basic(ADMIN, ADMIN_PASSWORD);
    // admin/pub is made public before its blob arrives; admin/secret stays private (default).
    api_ok(
        &a,
        "PUT",
        "visibility/admin/pub",
        &admin,
        Some(serde_json::json!({"public": true})),
        204,
    )?;
    let mut rng = Rng::from_clock();
    let (public_blob, private_blob) = (rng.bytes(3 << 20), rng.bytes(3 << 20));
    let mut digests = Vec::new();
    for (repo, bytes) in [("admin/secret", &private_blob), ("admin/pub", &public_blob)] {
        let digest = crate::support::sha256_digest(bytes);
        a.request(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[
                ("Authorization", &admin),
                ("Content-Type", "application/octet-stream"),
            ],
            bytes,
        )?
        .expect_status(201, "authenticated push")?;
        digests.push(digest);
    }
    let (private_digest, public_digest) = (&digests[0], &digests[1]);
    // B: no auth, no upstream, A as its only peer.
    let b = Node::start_with(
        &tmp.path().join("b"),
        &[
            "--p2p-listen".into(),
            maddr(ports[1]),
            "--p2p-bootstrap".into(),
            maddr(ports[0]),
        ],
    )?;
    wait_for_peers(&b, 1)?;
    std::thread::sleep(Duration::from_secs(3)); // several announcer scans on A
                                                // The public blob reaches B from A (so announcements work at all)...
    pull_blob(&b, "admin/pub", public_digest, &public_blob)?;
    // ...the private one does not, and B's lookup saw A provide one key only.
    b.request(
        "GET",
        &format!("/v2/admin/secret/blobs/{private_digest}"),
        &[],
        b"",
    )?
    .expect_status(404, "private blob through an anonymous peer")?;
    let peers = b
        .request("GET", "/berth/v1/peers", &[], b"")?
        .expect_status(200, "peers")?;
    let v: serde_json::Value = serde_json::from_slice(&peers.body)?;
    let provides: Vec<u64> = v["peers"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["provides"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(
        provides,
        vec![1],
        "A must provide the public blob only: {v}"
    );
    // Peer-style requests without credentials get nothing private from A.
    let peer_hdr = [("x-berth-peer", "1"), ("Range", "bytes=0-1048575")];
    a.request(
        "GET",
        &format!("/v2/admin/secret/blobs/{private_digest}"),
        &peer_hdr,
        b"",
    )?
    .expect_status(401, "anonymous peer range GET of a private blob")?;
    a.request(
        "GET",
        &format!("/berth/v1/pieces/admin/secret/blobs/{private_digest}"),
        &peer_hdr[..1],
        b"",
    )?
    .expect_status(404, "pieces of a private blob")?;
    let torrent = a.request(
        "GET",
        &format!("/berth/v1/torrent/admin/secret/blobs/{private_digest}"),
        &peer_hdr[..1],
        b"",
    )?;
    assert_ne!(torrent.status, 200, "torrent of a private blob");
    let public_pieces = a
        .request(
            "GET",
            &format!("/berth/v1/pieces/admin/pub/blobs/{public_digest}"),
            &peer_hdr[..1],
            b"",
        )?
        .expect_status(200, "pieces of a public blob")?;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&public_pieces.body)?["complete"],
        true
    );
    // `berth peers` on B lists A, with the bytes B received from it.
    let out = crate::support::run(
        std::process::Command::new(crate::support::berth_bin())
            .args(["peers", "--node"])
            .arg(format!("http://{}", b.host())),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&a.host()))
        .ok_or_else(|| fail(format!("A ({}) not listed:\n{text}", a.host())))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.get(2), Some(&"true"), "connected: {line}");
    assert_eq!(
        fields.get(4),
        Some(&public_blob.len().to_string().as_str()),
        "bytes: {line}"
    );
    assert!(text.ends_with("1 peer(s)\n"), "{text}");
    Ok(())
}

#[test]
fn p2p_nodes_find_each_other_over_quic_only() -> Res {
    let tmp = TempDir::new()?;
    let quic = |p: u16| format!("/ip4/127.0.0.1/udp/{p}/quic-v1");
    let ports = [free_udp_port()?, free_udp_port()?];
    let a = Node::start_with(
        &tmp.path().join("a"),
        &["--p2p-listen".into(), quic(ports[0])],
    )?;
    let blob = Rng::from_clock().bytes((2 << 20) + 5);
    let digest = a.push_blob("e2e/quic", &blob)?;
    let b = Node::start_with(
        &tmp.path().join("b"),
        &[
            "--p2p-listen".into(),
            quic(ports[1]),
            "--p2p-bootstrap".into(),
            quic(ports[0]),
        ],
    )?;
    wait_for_peers(&b, 1)?;
    let peers = b
        .request("GET", "/berth/v1/peers", &[], b"")?
        .expect_status(200, "peers")?;
    let v: serde_json::Value = serde_json::from_slice(&peers.body)?;
    let addrs = v["peers"][0]["addrs"].to_string();
    assert!(
        addrs.contains("/quic-v1") && !addrs.contains("/tcp/"),
        "A is known by QUIC addresses only: {v}"
    );
    std::thread::sleep(Duration::from_secs(3)); // A's announcer scan
                                                // B has no upstream: the blob can only come from A, found over QUIC.
    pull_blob(&b, "e2e/quic", &digest, &blob)?;
    assert_eq!(
        metric(&b, "berth_blob_bytes_total{source=\"peer\"}")?,
        blob.len() as u64
    );
    Ok(())
}

fn free_udp_port() -> Res<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
