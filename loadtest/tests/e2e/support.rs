//! Test plumbing: start a real registry, or a scripted fake one.

use berth_loadtest::{RunConfig, ScenarioKind};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a registry gets to answer `GET /v2/` after start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A registry process on loopback, killed on drop.
pub struct Registry {
    pub url: String,
    pub kind: &'static str,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn berth_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        candidates.push(p.into());
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug/berth"));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/berth"));
    candidates.into_iter().find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Starts berth if built, else docker-registry; `None` (after a SKIP line) if neither exists,
/// unless `BERTH_E2E_REQUIRED=1`, which turns that into a failure.
pub async fn start_registry() -> Option<Registry> {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (kind, mut cmd) = if let Some(bin) = berth_bin() {
        let mut c = Command::new(bin);
        c.args(["serve", "--listen", &addr, "--data-dir"])
            .arg(dir.path().join("data"));
        ("berth", c)
    } else if PathBuf::from("/usr/bin/docker-registry").is_file() {
        let cfg = dir.path().join("config.yml");
        let yml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        std::fs::write(&cfg, yml).expect("write registry config");
        let mut c = Command::new("/usr/bin/docker-registry");
        c.arg("serve").arg(&cfg);
        ("docker-registry", c)
    } else {
        assert!(
            std::env::var("BERTH_E2E_REQUIRED").as_deref() != Ok("1"),
            "BERTH_E2E_REQUIRED=1 but neither berth nor docker-registry was found"
        );
        eprintln!("SKIP: no berth binary (BERTH_BIN) and no /usr/bin/docker-registry");
        return None;
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn registry");
    let reg = Registry {
        url: format!("http://{addr}"),
        kind,
        child,
        _dir: dir,
    };
    wait_ready(&reg.url).await;
    eprintln!("using {} at {}", reg.kind, reg.url);
    Some(reg)
}

async fn wait_ready(url: &str) {
    let client = berth_loadtest::client::Client::new(
        url,
        &berth_loadtest::client::ClientConfig {
            pool_idle_per_host: 1,
            timeout: Duration::from_secs(2),
            credentials: None,
        },
    )
    .expect("client");
    let t = Instant::now();
    while client.ping().await.is_err() {
        assert!(
            t.elapsed() < START_TIMEOUT,
            "registry at {url} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small bounded config against `url`.
pub fn config(scenario: ScenarioKind, url: &str) -> RunConfig {
    RunConfig {
        scenario,
        targets: vec![url.to_owned()],
        concurrency: 2,
        progress: false,
        timeout: Duration::from_secs(10),
        ..RunConfig::default()
    }
}

pub type Handler = Arc<dyn Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves `handler` on an ephemeral loopback port until the test's runtime ends.
pub async fn fake_server(handler: Handler) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, std::convert::Infallible>(h(req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

pub fn respond(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    r
}
