//! `berth peers`: what a running node knows about its peers (`GET /berth/v1/peers`), as a
//! table or as the endpoint's JSON.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest answer read from the node.
const PEERS_BODY_MAX: usize = 16 << 20;
/// Time for the whole request.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `berth peers` flags.
#[derive(clap::Args)]
pub struct PeersArgs {
    /// The node's registry URL (http://host:port).
    #[arg(long, env = "BERTH_NODE", default_value = "http://127.0.0.1:5000")]
    pub node: String,
    /// Print the endpoint's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `berth peers`.
pub fn run(args: PeersArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = runtime.block_on(fetch(&args.node))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", table(&v));
    }
    Ok(())
}

async fn fetch(node: &str) -> Result<serde_json::Value> {
    let url = format!("{}/berth/v1/peers", node.trim_end_matches('/'));
    let uri: http::Uri = url.parse().with_context(|| format!("node URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("--node must be an http:// URL, got {node:?}");
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let work = async {
        let resp = client
            .get(uri)
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), PEERS_BODY_MAX)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?
            .to_bytes();
        if status == http::StatusCode::NOT_FOUND {
            anyhow::bail!("{url}: 404 — is the node's peer layer on (`--p2p-listen`)?");
        }
        if !status.is_success() {
            anyhow::bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
        }
        serde_json::from_slice(&body).with_context(|| format!("{url}: not JSON"))
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .with_context(|| format!("{url}: no answer within {TIMEOUT:?}"))?
}

/// The peer list as aligned text, one peer per line.
fn table(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "this node: {}", v["peer_id"].as_str().unwrap_or("?"));
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<54} {:<22} {:>9} {:>8} {:>14} {:>6}  libp2p addresses",
        "peer", "http", "connected", "provides", "bytes_received", "banned"
    );
    for p in &peers {
        let addrs: Vec<&str> = p["addrs"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<54} {:<22} {:>9} {:>8} {:>14} {:>6}  {}",
            p["peer_id"].as_str().unwrap_or("?"),
            p["http_addr"].as_str().unwrap_or("-"),
            p["connected"].as_bool().unwrap_or(false),
            p["provides"].as_u64().unwrap_or(0),
            p["bytes_received"].as_u64().unwrap_or(0),
            p["banned"].as_bool().unwrap_or(false),
            addrs.join(",")
        );
    }
    let _ = writeln!(out, "{} peer(s)", peers.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_peer_with_its_counters() {
        let v = serde_json::json!({
            "peer_id": "12D3me",
            "peers": [
                {"peer_id": "12D3a", "addrs": ["/ip4/127.0.0.1/tcp/1"], "http_addr": "127.0.0.1:5001",
                 "connected": true, "provides": 3, "bytes_received": 1048576, "banned": false},
                {"peer_id": "12D3b", "addrs": [], "http_addr": null,
                 "connected": false, "provides": 0, "bytes_received": 0, "banned": true},
            ]
        });
        let t = table(&v);
        assert!(t.starts_with("this node: 12D3me\n"));
        let a = t.lines().find(|l| l.starts_with("12D3a")).expect("peer a");
        assert!(
            a.contains("127.0.0.1:5001")
                && a.contains("1048576")
                && a.contains("/ip4/127.0.0.1/tcp/1")
        );
        let b = t.lines().find(|l| l.starts_with("12D3b")).expect("peer b");
        assert!(b.contains("true") && b.contains(" - "));
        assert!(t.ends_with("2 peer(s)\n"));
    }
}
