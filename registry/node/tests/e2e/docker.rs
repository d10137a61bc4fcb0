//! The docker daemon builds a `FROM scratch` image, pushes it to the node, forgets it, pulls
//! it back and the files inside must be the ones we put in.
//!
//! Docker treats 127.0.0.0/8 registries as insecure by default, so no daemon configuration
//! is touched. Everything created in the daemon carries a unique tag and is removed by
//! [`DockerCleanup`], also when the test fails.

use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::support::{fail, require_client, run, sha256_digest, unique_token, Node, Res, Rng};

/// Removes the containers and images a test created in the shared docker daemon.
#[derive(Default)]
struct DockerCleanup {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = Command::new("docker")
                .args(["rm", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for image in &self.images {
            let _ = Command::new("docker")
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn docker() -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_BUILDKIT", "0");
    cmd
}

fn stdout_line(cmd: &mut Command) -> Res<String> {
    let out = run(cmd)?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[test]
fn docker_build_push_pull_returns_the_same_files() -> Res {
    if !require_client("docker") {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let mut rng = Rng::from_clock();
    let context = tmp.path().join("context");
    std::fs::create_dir_all(&context)?;
    let big = rng.bytes(2 << 20);
    let small = format!("hello from berth e2e {}\n", rng.next_u64()).into_bytes();
    std::fs::write(context.join("big.bin"), &big)?;
    std::fs::write(context.join("hello.txt"), &small)?;
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /data/big.bin\nCOPY hello.txt /data/hello.txt\n",
    )?;

    let mut cleanup = DockerCleanup::default();
    let tag = format!("{}/e2e/docker:t{}", node.host(), unique_token());
    cleanup.images.push(tag.clone());
    run(docker()
        .args(["build", "--quiet", "--force-rm", "-t", &tag])
        .arg(&context))?;
    let push = run(docker().args(["push", &tag]))?;
    let push_out = String::from_utf8_lossy(&push.stdout).into_owned();
    run(docker().args(["rmi", &tag]))?;
    run(docker().args(["pull", &tag]))?;

    // The digest docker recorded for the pull is the one the node serves for the tag.
    let reference = tag
        .split_once("/e2e/docker:")
        .map(|(_, t)| t)
        .ok_or_else(|| fail("tag shape"))?;
    let resp = node
        .get_manifest("e2e/docker", reference)?
        .expect_status(200, "GET manifest docker pushed")?;
    let served = resp.require_header("docker-content-digest")?.to_owned();
    assert_eq!(served, sha256_digest(&resp.body));
    assert!(
        push_out.contains(&served),
        "docker push reported another digest than {served}:\n{push_out}"
    );
    let repo_digests = stdout_line(docker().args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &tag,
    ]))?;
    assert!(
        repo_digests.contains(&served),
        "pulled image has RepoDigests {repo_digests}, want {served}"
    );

    // The files inside the pulled image are the ones we built it from.
    let container = stdout_line(docker().args(["create", &tag, "/nonexistent"]))?;
    cleanup.containers.push(container.clone());
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out)?;
    for (name, want) in [("big.bin", &big), ("hello.txt", &small)] {
        let dest = out.join(name);
        run(docker()
            .arg("cp")
            .arg(format!("{container}:/data/{name}"))
            .arg(&dest))?;
        let got = std::fs::read(&dest)?;
        assert!(
            &got == want,
            "{name}: {} bytes back, sha256 {} (want {} bytes, {})",
            got.len(),
            sha256_digest(&got),
            want.len(),
            sha256_digest(want)
        );
    }
    Ok(())
}
