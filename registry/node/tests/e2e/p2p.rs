//! The libp2p peer layer (issue 5, part 2): an origin and three nodes on loopback, each node
//! with `--upstream <origin>` and the other two as bootstrap peers. Pulls are driven by
//! skopeo; assertions read `/metrics` and `/berth/v1/peers`.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::layout::{read_blob, str_field, tagged_descriptor, Image, Layout};
use crate::skopeo::skopeo_copy;
use crate::support::{fail, require_client, Node, Res, Rng};

/// How long announcements may take to be visible to other nodes (scan interval 1 s).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(15);

fn metric(node: &Node, line_prefix: &str) -> Res<u64> {
    let resp = node
        .request("GET", "/metrics", &[], b"")?
        .expect_status(200, "metrics")?;
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    Ok(text
        .lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<u64>().ok())
        .sum())
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

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

fn origin_with_image(tmp: &Path, repo: &str) -> Res<(Node, Image)> {
    let origin = Node::start(&tmp.join("origin"))?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.join("src"))?;
    // 2 layers, the big one 5.5 MiB: six pieces, so several peers can share one blob.
    let image = src.build_image(&mut rng, "amd64", 2, (11 << 20) / 2)?;
    src.tag(&image.descriptor(None), "v1")?;
    skopeo_copy(
        &format!("oci:{}:v1", src.dir.display()),
        &format!("docker://{}/{repo}:v1", origin.host()),
        false,
    )?;
    Ok((origin, image))
}

fn check_copy(out: &Path, image: &Image) -> Res {
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
    let (mut origin, image) = origin_with_image(tmp.path(), "e2e/p2p")?;
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
    let (mut origin, image) = origin_with_image(tmp.path(), "e2e/liar")?;
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
