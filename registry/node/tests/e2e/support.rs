//! Shared machinery: a `berth serve` child process on its own port and data directory, a
//! minimal HTTP/1.1 client over `std::net::TcpStream`, a seeded PRNG, hashing, a hand-made
//! tar writer and helpers to run external clients.
//!
//! The HTTP client is deliberately tiny (one request per connection, `Connection: close`):
//! the tests need exact control over what goes on the wire (partial bodies, dropped sockets)
//! and a full client library would add ~40 crates to `Cargo.lock` for no gain.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The error type of every test: anything, with a message, sendable across threads.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result of a test or helper.
pub type Res<T = ()> = Result<T, Error>;

/// How long a node may take to answer `/healthz` after being spawned.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Spawn attempts, each on a freshly picked port (another process may take a port between
/// our probe and the node's bind).
const NODE_START_ATTEMPTS: u32 = 3;
/// Socket read/write timeout of the test client: no request of these tests takes longer.
const HTTP_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest HTTP response head the client accepts.
const HTTP_HEAD_SIZE_MAX: usize = 64 << 10;

/// Builds an error from a message.
pub fn fail(msg: impl Into<String>) -> Error {
    msg.into().into()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Whether an external client program is usable. If it is not: with
/// `BERTH_E2E_REQUIRED=1` the test panics (CI must not silently skip), otherwise it prints
/// a SKIP line and the caller returns early.
pub fn require_client(program: &str) -> bool {
    let usable = match program {
        // The docker CLI alone is not enough: the daemon must answer too.
        "docker" => Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        _ => Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    };
    if usable {
        return true;
    }
    if std::env::var("BERTH_E2E_REQUIRED").as_deref() == Ok("1") {
        panic!("{program} is not installed or not usable, and BERTH_E2E_REQUIRED=1");
    }
    println!("SKIP: {program} not installed");
    false
}

/// Runs a command to completion; a non-zero exit is an error carrying its output.
pub fn run(cmd: &mut Command) -> Res<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("spawning {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{cmd:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

/// A unique lower-case token for names that live outside our temp dirs (docker tags).
/// The sum of the values of the `/metrics` lines of `node` that start with `line_prefix`
/// (a metric name, or a name with its full label set); 0 when there is none.
pub fn metric(node: &Node, line_prefix: &str) -> Res<u64> {
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

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// SplitMix64: a seeded, reproducible byte source (the seed is printed by the callers so a
/// failure can be replayed).
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the clock and a counter, so parallel tests differ.
    pub fn from_clock() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        static STREAM: AtomicU64 = AtomicU64::new(1);
        let stream = STREAM.fetch_add(1, Ordering::Relaxed);
        Rng::new(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F))
    }

    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A tar archive (ustar) of regular files, with a directory entry for each parent. Written by
/// hand: 40 lines instead of a dependency, and byte-for-byte deterministic.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for (name, data) in files {
        if let Some((dir, _)) = name.rsplit_once('/') {
            let dir = format!("{dir}/");
            if !dirs.contains(&dir) {
                out.extend_from_slice(&tar_header(&dir, 0, b'5', 0o755));
                dirs.push(dir);
            }
        }
        out.extend_from_slice(&tar_header(name, data.len() as u64, b'0', 0o644));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn tar_header(name: &str, size: u64, kind: u8, mode: u32) -> [u8; 512] {
    assert!(name.len() < 100, "test tar names are short: {name}");
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, value: &[u8]| {
        h[at..at + value.len()].copy_from_slice(value);
    };
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"14000000000\0"); // a fixed mtime keeps layers reproducible
    put(&mut h, 148, b"        ");
    h[156] = kind;
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Gzip-compresses `bytes` (registries clients such as skopeo keep gzip layers as they are,
/// so digests survive a round trip; plain tar layers would be recompressed on push).
pub fn gzip(bytes: &[u8]) -> Res<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

/// Decompresses gzip `bytes`.
pub fn gunzip(bytes: &[u8]) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// One HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Header `name`, or an error that shows the whole response.
    pub fn require_header(&self, name: &str) -> Res<&str> {
        self.header(name)
            .ok_or_else(|| fail(format!("response lacks {name}: {}", self.describe())))
    }

    /// Status, headers and the start of the body, for error messages.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(400)]);
        format!("{} {:?} {body}", self.status, self.headers)
    }

    /// Fails unless the status is `want`.
    pub fn expect_status(self, want: u16, what: &str) -> Res<Response> {
        if self.status != want {
            return Err(fail(format!(
                "{what}: want {want}, got {}",
                self.describe()
            )));
        }
        Ok(self)
    }
}

/// Opens a client connection with timeouts.
pub fn connect(addr: SocketAddr) -> Res<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(HTTP_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The request line and headers of a request with a `Content-Length` body.
pub fn request_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_length: u64,
) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {content_length}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Sends one request and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Res<Response> {
    let mut stream = connect(addr)?;
    let head = request_head(addr, method, path, headers, body.len() as u64);
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    read_response(&mut stream, method == "HEAD")
}

/// Reads a response until the server closes the connection (we always send
/// `Connection: close`).
pub fn read_response(stream: &mut TcpStream, head_only: bool) -> Res<Response> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let _ = stream.shutdown(Shutdown::Both);
    parse_response(&raw, head_only)
}

fn parse_response(raw: &[u8], head_only: bool) -> Res<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .filter(|&end| end <= HTTP_HEAD_SIZE_MAX)
        .ok_or_else(|| fail(format!("no complete response head in {} bytes", raw.len())))?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| fail(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only {
        return Ok(resp);
    }
    let rest = &raw[end + 4..];
    resp.body = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse()?;
        if len != resp.body.len() {
            return Err(fail(format!(
                "Content-Length {len} but {} body bytes arrived",
                resp.body.len()
            )));
        }
    }
    Ok(resp)
}

fn dechunk(mut rest: &[u8]) -> Res<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| fail("truncated chunk size line"))?;
        let size_text = std::str::from_utf8(&rest[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err(fail("truncated chunk"));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A `berth serve` child process. Killed (SIGKILL) when dropped.
pub struct Node {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
}

/// Path of the binary under test.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

impl Node {
    /// Starts a node on a free loopback port over `data_dir` and waits for `/healthz`.
    /// Its log goes to `<data_dir>.log`.
    pub fn start(data_dir: &Path) -> Res<Node> {
        Node::start_with(data_dir, &[])
    }

    /// Like [`Node::start`], with extra `berth serve` arguments.
    pub fn start_with(data_dir: &Path, extra_args: &[String]) -> Res<Node> {
        let mut last_err = fail("no attempt made");
        for _ in 0..NODE_START_ATTEMPTS {
            match Node::try_start(data_dir, extra_args) {
                Ok(node) => return Ok(node),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn try_start(data_dir: &Path, extra_args: &[String]) -> Res<Node> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(berth_bin())
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .env_remove("BERTH_CONFIG")
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()?;
        let mut node = Node {
            child: Some(child),
            addr,
            log,
        };
        node.wait_healthy()?;
        Ok(node)
    }

    fn wait_healthy(&mut self) -> Res {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(fail(format!(
                        "node exited during start-up with {status}; log:\n{}",
                        self.log_text()
                    )));
                }
            }
            if let Ok(resp) = request(self.addr, "GET", "/healthz", &[], b"") {
                if resp.status == 200 && resp.body.trim_ascii() == b"ok" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(fail(format!(
            "node on {} not healthy after {NODE_START_TIMEOUT:?}; log:\n{}",
            self.addr,
            self.log_text()
        )))
    }

    /// `host:port`, as clients spell the registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The node's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (a graceful stop) and waits, at most `limit`, for the node to exit.
    pub fn terminate(&mut self, limit: std::time::Duration) -> Res<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| fail("node already stopped"))?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            return Err(fail("kill -TERM failed"));
        }
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(exit) = child.try_wait()? {
                return Ok(exit);
            }
            if std::time::Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                return Err(fail("node did not stop within the limit after SIGTERM"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILLs the node and reaps it: no shutdown code of the node runs.
    pub fn kill(&mut self) -> Res {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends a request to this node.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Res<Response> {
        request(self.addr, method, path, headers, body)
    }

    /// Monolithic blob upload; fails unless the node answers 201 with the digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Res<String> {
        let digest = sha256_digest(bytes);
        let resp = self
            .request(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                bytes,
            )?
            .expect_status(201, "monolithic upload")?;
        let echoed = resp.require_header("docker-content-digest")?;
        if echoed != digest {
            return Err(fail(format!("node echoed digest {echoed}, want {digest}")));
        }
        Ok(digest)
    }

    /// `GET` of a manifest by tag or digest, accepting every manifest type.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Res<Response> {
        self.request(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", MANIFEST_ACCEPT)],
            b"",
        )
    }
}

/// Every manifest media type a client of these tests may meet.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `berth scrub --data-dir DIR [--full]`, returning its output (whatever the exit).
/// Corrupt blobs are quarantined, as `berth scrub` does by default.
pub fn scrub(data_dir: &Path, full: bool) -> Res<Output> {
    scrub_with(data_dir, full, true)
}

/// Like [`scrub`]; without `quarantine`, passes `--no-quarantine` (report only).
pub fn scrub_with(data_dir: &Path, full: bool, quarantine: bool) -> Res<Output> {
    let mut cmd = Command::new(berth_bin());
    cmd.arg("scrub").arg("--data-dir").arg(data_dir);
    if full {
        cmd.arg("--full");
    }
    if !quarantine {
        cmd.arg("--no-quarantine");
    }
    Ok(cmd
        .env_remove("BERTH_CONFIG")
        .stdin(Stdio::null())
        .output()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums_and_padding() -> Res {
        let archive = tar(&[("d/a.txt", b"hello"), ("d/b.bin", &[1u8; 513])]);
        // dir header, a header + 1 block, b header + 2 blocks, 2 end blocks.
        assert_eq!(archive.len(), 512 * (1 + 2 + 3 + 2));
        let header = &archive[512..1024];
        let stored = std::str::from_utf8(&header[148..154])?;
        let mut copy = header.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(stored, 8)?, sum);
        assert_eq!(&archive[1024..1029], b"hello");
        Ok(())
    }

    #[test]
    fn chunked_bodies_are_decoded() -> Res {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let resp = parse_response(raw, false)?;
        assert_eq!(resp.body, b"abcde");
        Ok(())
    }
}
