//! SIGTERM is a graceful stop: the node stops accepting connections, finishes the requests in
//! flight (an upload half-way through completes and is acknowledged), then exits 0.

use std::io::Write;
use std::time::Duration;

use tempfile::TempDir;

use crate::support::{connect, read_response, request_head, sha256_digest, Node, Res, Rng};

#[test]
fn sigterm_finishes_in_flight_uploads_then_exits_cleanly() -> Res {
    let tmp = TempDir::new()?;
    let data_dir = tmp.path().join("data");
    let mut node = Node::start(&data_dir)?;
    let addr = node.addr;
    let data = Rng::from_clock().bytes(4 << 20);
    let digest = sha256_digest(&data);

    let mut upload = connect(addr)?;
    let path = format!("/v2/e2e/graceful/blobs/uploads/?digest={digest}");
    let head = request_head(addr, "POST", &path, &[], data.len() as u64);
    upload.write_all(head.as_bytes())?;
    let (first, rest) = data.split_at(data.len() / 2);
    upload.write_all(first)?;
    upload.flush()?;
    std::thread::sleep(Duration::from_millis(200)); // the node is now mid-request

    let exit = std::thread::scope(|scope| -> Res<_> {
        let stopping = scope.spawn(|| node.terminate(Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
            "a stopping node must not accept new connections"
        );
        upload.write_all(rest)?;
        let response = read_response(&mut upload, false)?;
        assert_eq!(
            response.status,
            201,
            "in-flight upload: {}",
            response.describe()
        );
        stopping
            .join()
            .map_err(|_| crate::support::fail("terminate panicked"))?
    })?;
    assert!(exit.success(), "node exit after SIGTERM: {exit}");

    let node = Node::start(&data_dir)?;
    let r = node.request("GET", &format!("/v2/e2e/graceful/blobs/{digest}"), &[], b"")?;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        r.body == data,
        "blob acknowledged during shutdown is intact"
    );
    Ok(())
}
