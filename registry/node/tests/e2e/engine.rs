//! The blob I/O engine (issue 4): chosen at start-up, logged, forceable; both engines serve
//! the same bytes, and a read through either catches a flipped byte.

use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::support::{berth_bin, Node, Res, Rng};

/// The engine named by the start-up log line `main.rs::install_io_engine` writes.
fn logged_engine(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("blob I/O engine selected"))?;
    let line = strip_ansi(line);
    let value = line.split("io_engine=").nth(1)?;
    let value = value.trim_start_matches('"').split(['"', ' ']).next()?;
    Some(value.to_owned())
}

/// Removes terminal colour sequences (`ESC [ ... letter`), which the log may carry.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn io_engine_flag_is_logged_and_both_engines_serve_and_check_blobs() -> Res {
    let mut rng = Rng::from_clock();
    for engine in ["io_uring", "std"] {
        let tmp = TempDir::new()?;
        let data_dir = tmp.path().join("data");
        let mut node = Node::start_with(&data_dir, &["--io-engine".into(), engine.into()])?;
        let log = node.log_text();
        assert_eq!(logged_engine(&log).as_deref(), Some(engine), "log:\n{log}");
        let metrics = node
            .request("GET", "/metrics", &[], b"")?
            .expect_status(200, "metrics")?;
        let metrics = String::from_utf8_lossy(&metrics.body);
        let gauge = format!("berth_io_engine{{engine=\"{engine}\"}} 1");
        assert!(metrics.contains(&gauge), "{gauge} missing:\n{metrics}");

        let blob = rng.bytes((3 << 20) + 77);
        let digest = node.push_blob("e2e/engine", &blob)?;
        for _ in 0..2 {
            // Twice: the second GET takes the chunk crcs from the index cache.
            let resp = node
                .request("GET", &format!("/v2/e2e/engine/blobs/{digest}"), &[], b"")?
                .expect_status(200, "blob GET")?;
            assert!(resp.body == blob, "{engine}: served bytes differ");
        }

        // Flip a byte in the last chunk: the node must not serve it as good, with crcs from
        // its cache.
        let hex = digest.trim_start_matches("sha256:");
        let path = data_dir.join("blobs/sha256").join(&hex[..2]).join(hex);
        let mut bytes = std::fs::read(&path)?;
        bytes[(3 << 20) + 5] ^= 0x10;
        std::fs::write(&path, &bytes)?;
        let resp = node.request("GET", &format!("/v2/e2e/engine/blobs/{digest}"), &[], b"");
        if let Ok(resp) = resp {
            assert!(
                resp.status != 200 || resp.body != bytes,
                "{engine}: corrupt blob served as good"
            );
        }
        node.terminate(std::time::Duration::from_secs(10))?;
    }
    Ok(())
}

#[test]
fn io_engine_default_follows_the_environment_and_bad_values_are_refused() -> Res {
    // Node::start passes the test's environment: BERTH_IO_ENGINE (the second CI run sets
    // std) or nothing, which means auto (io_uring on this machine: the probe works here).
    let tmp = TempDir::new()?;
    let mut node = Node::start(&tmp.path().join("data"))?;
    let log = node.log_text();
    let want = match std::env::var("BERTH_IO_ENGINE").as_deref() {
        Ok("std") => Some("std"),
        Ok("io_uring") => Some("io_uring"),
        _ if std::env::var("BERTH_EXPECT_IO_URING").as_deref() == Ok("1") => Some("io_uring"),
        _ => None,
    };
    let got = logged_engine(&log);
    let got = got.as_deref();
    assert!(matches!(got, Some("std" | "io_uring")), "log:\n{log}");
    if want.is_some() {
        assert_eq!(got, want, "log:\n{log}");
    }
    node.terminate(std::time::Duration::from_secs(10))?;

    let out = Command::new(berth_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--io-engine", "fast"])
        .arg("--data-dir")
        .arg(tmp.path().join("bad"))
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("expected auto, io_uring or std"),
        "stderr:\n{stderr}"
    );
    Ok(())
}
