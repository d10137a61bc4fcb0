//! The blob I/O engine (issue 4): chosen at start-up, logged (and in `/metrics`), forceable;
//! both engines serve the same bytes, a read through either catches a flipped byte, and
//! where a seccomp profile denies io_uring, `auto` falls back to std and a forced `io_uring`
//! refuses to start.

use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::support::{berth_bin, fail, require_client, run, unique_token, Node, Res, Rng};

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

/// A container whose seccomp profile denies the io_uring system calls (as some runtimes'
/// profiles do): `auto` falls back to std with a WARN naming the reason, a forced `io_uring`
/// refuses to start, for both `EPERM` and `ENOSYS`. The image is the `berth` binary and the
/// libraries `ldd` names, imported into the local Docker daemon (no registry needed).
#[test]
fn io_engine_falls_back_when_seccomp_denies_io_uring() -> Res {
    if !require_client("docker") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let root = tmp.path().join("rootfs");
    std::fs::create_dir_all(root.join("data"))?;
    std::fs::copy(berth_bin(), root.join("berth"))?;
    let ldd = run(Command::new("ldd").arg(berth_bin()))?;
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().ok_or_else(|| fail("library path"))?)?;
        std::fs::copy(lib, &to)?;
    }
    let image = format!("berth-e2e-seccomp:{}", unique_token());
    let rootfs_tar = tmp.path().join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&rootfs_tar)
        .arg("."))?;
    run(Command::new("docker")
        .arg("import")
        .arg(&rootfs_tar)
        .arg(&image))?;
    let _remove = RemoveImage(image.clone());
    seccomp_cases(tmp.path(), &image)
}

/// Removes the test's image when the test ends, whether it passed, failed or panicked.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn seccomp_cases(dir: &std::path::Path, image: &str) -> Res {
    for (errno, reason) in [
        (1, "Operation not permitted"),
        (38, "Function not implemented"),
    ] {
        let profile = dir.join(format!("seccomp-{errno}.json"));
        std::fs::write(
            &profile,
            format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["io_uring_setup","io_uring_enter","io_uring_register"],"action":"SCMP_ACT_ERRNO","errnoRet":{errno}}}]}}"#
            ),
        )?;
        let scrub = |engine: &str| -> Res<std::process::Output> {
            Ok(Command::new("docker")
                .args(["run", "--rm", "--network", "none", "--security-opt"])
                .arg(format!("seccomp={}", profile.display()))
                .args([
                    image,
                    "/berth",
                    "scrub",
                    "--data-dir",
                    "/data",
                    "--io-engine",
                    engine,
                ])
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()?)
        };
        let auto = scrub("auto")?;
        let log = strip_ansi(&String::from_utf8_lossy(&auto.stderr));
        assert!(auto.status.success(), "errno {errno}, auto:\n{log}");
        assert!(
            log.contains("io_uring is unavailable; falling back to std") && log.contains(reason),
            "errno {errno}: no WARN naming the reason:\n{log}"
        );
        assert_eq!(logged_engine(&log).as_deref(), Some("std"), "{log}");

        let forced = scrub("io_uring")?;
        let err = strip_ansi(&String::from_utf8_lossy(&forced.stderr));
        assert!(
            !forced.status.success(),
            "errno {errno}: forced io_uring started:\n{err}"
        );
        assert!(
            err.contains("io_uring is unavailable here") && err.contains(reason),
            "errno {errno}: unclear start-up error:\n{err}"
        );
    }
    Ok(())
}
