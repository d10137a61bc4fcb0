//! Identity and access (issue 7) with real clients: a node with `[auth] enabled = true` and
//! a bootstrap administrator; an organization, a team, a user and a robot created through
//! the management API over HTTP; then docker, podman, skopeo and containerd's `ctr` log in
//! and push / pull, and anonymous access to the private repository is refused.
//!
//! Every client keeps its credentials in a temp dir (`DOCKER_CONFIG`, podman `--authfile`),
//! so the user's own login state is never read or written. Docker tests hold
//! [`crate::mirror::DOCKER_DAEMON_LOCK`] (the mirror test reconfigures the shared daemon).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::layout::Layout;
use crate::support::{
    berth_bin, fail, require_client, run, unique_token, Node, Res, Response, Rng,
};

/// The bootstrap administrator of every node here.
pub const ADMIN: &str = "admin";
/// Its password (test-only).
pub const ADMIN_PASSWORD: &str = "admin-password-e2e";
/// The local user's password (test-only).
const ALICE_PASSWORD: &str = "alice-password-e2e";

/// RFC 4648 base64 (for `Authorization: Basic`; 15 lines instead of a dev-dependency).
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

/// A node with auth on: `[auth]` plus `extra_auth_toml` (e.g. an `[auth.ldap]` table) in a
/// config file, and the administrator made by `berth admin bootstrap` beforehand.
pub fn start_auth_node(dir: &Path, extra_toml: &str) -> Res<Node> {
    let data = dir.join("data");
    let out = Command::new(berth_bin())
        .args(["admin", "bootstrap", "--user", ADMIN, "--data-dir"])
        .arg(&data)
        .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(fail(format!(
            "berth admin bootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let config = dir.join("berth.toml");
    std::fs::write(
        &config,
        format!("[auth]\nenabled = true\nlockout_threshold = 50\n{extra_toml}\n"),
    )?;
    Node::start_with(&data, &["--config".into(), config.display().to_string()])
}

/// One management API call as `auth` (an `Authorization` value); `body` is JSON or empty.
pub fn api(
    node: &Node,
    method: &str,
    path: &str,
    auth: &str,
    body: Option<Value>,
) -> Res<Response> {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let mut headers = vec![("Authorization", auth)];
    if !bytes.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    node.request(method, &format!("/api/v1/{path}"), &headers, &bytes)
}

/// Like [`api`], failing unless the status is `want`; returns the JSON body (Null if empty).
pub fn api_ok(
    node: &Node,
    method: &str,
    path: &str,
    auth: &str,
    body: Option<Value>,
    want: u16,
) -> Res<Value> {
    let resp = api(node, method, path, auth, body)?
        .expect_status(want, &format!("{method} /api/v1/{path}"))?;
    if resp.body.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&resp.body)?)
}

/// What [`provision`] made.
struct Tenant {
    /// `acme+ci`.
    robot: String,
    /// Its token (shown once by the API).
    robot_token: String,
}

/// Organization `acme`, team `devs` (member) with write on `acme/app`, user `alice` in it,
/// robot `acme+ci` with write on `acme/app` — all through the management API.
fn provision(node: &Node) -> Res<Tenant> {
    let admin = basic(ADMIN, ADMIN_PASSWORD);
    api_ok(
        node,
        "POST",
        "organizations",
        &admin,
        Some(json!({"name": "acme"})),
        201,
    )?;
    api_ok(
        node,
        "POST",
        "organizations/acme/teams",
        &admin,
        Some(json!({"name": "devs", "role": "member"})),
        201,
    )?;
    api_ok(
        node,
        "POST",
        "users",
        &admin,
        Some(json!({"name": "alice", "password": ALICE_PASSWORD})),
        201,
    )?;
    api_ok(
        node,
        "PUT",
        "organizations/acme/teams/devs/members/alice",
        &admin,
        None,
        204,
    )?;
    api_ok(
        node,
        "PUT",
        "permissions/acme/app/teams/devs",
        &admin,
        Some(json!({"role": "write"})),
        204,
    )?;
    let robot = api_ok(
        node,
        "POST",
        "organizations/acme/robots",
        &admin,
        Some(json!({"name": "ci"})),
        201,
    )?;
    let name = robot["name"]
        .as_str()
        .ok_or_else(|| fail("robot name"))?
        .to_owned();
    let token = robot["token"]
        .as_str()
        .ok_or_else(|| fail("robot token"))?
        .to_owned();
    assert_eq!(name, "acme+ci");
    api_ok(
        node,
        "PUT",
        "permissions/acme/app/accounts/acme+ci",
        &admin,
        Some(json!({"role": "write"})),
        204,
    )?;
    Ok(Tenant {
        robot: name,
        robot_token: token,
    })
}

/// Runs `cmd` with `secret` on its stdin (`--password-stdin`); the secret never appears in
/// the process list.
pub fn run_with_stdin(cmd: &mut Command, secret: &str) -> Res<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("spawning {cmd:?}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(secret.as_bytes())?;
    }
    let out = child.wait_with_output()?;
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

/// Logs docker out of the node and removes the images a test tagged, also on failure. The
/// credentials themselves live in the temp `DOCKER_CONFIG` dir and go with it.
pub struct DockerSession {
    /// Temp `DOCKER_CONFIG` directory.
    pub config: PathBuf,
    /// `host:port` logged in to.
    pub host: String,
    /// Image references to remove.
    pub images: Vec<String>,
}

impl DockerSession {
    /// `docker` with this session's config dir and the classic builder.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("--config")
            .arg(&self.config)
            .env("DOCKER_BUILDKIT", "0");
        cmd
    }
}

impl Drop for DockerSession {
    fn drop(&mut self) {
        let _ = self
            .docker()
            .args(["logout", &self.host])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for image in &self.images {
            let _ = self
                .docker()
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Builds a two-file `FROM scratch` image in `context`.
fn write_scratch_context(context: &Path, rng: &mut Rng) -> Res<Vec<u8>> {
    std::fs::create_dir_all(context)?;
    let payload = format!("identity e2e {}\n", rng.next_u64()).into_bytes();
    std::fs::write(context.join("hello.txt"), &payload)?;
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )?;
    Ok(payload)
}

#[test]
fn docker_login_push_pull_with_a_team_permission() -> Res {
    if !require_client("docker") {
        return Ok(());
    }
    let _serial = crate::mirror::DOCKER_DAEMON_LOCK
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let tmp = TempDir::new()?;
    let node = start_auth_node(tmp.path(), "")?;
    provision(&node)?;
    let mut rng = Rng::from_clock();
    let context = tmp.path().join("context");
    write_scratch_context(&context, &mut rng)?;
    let config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&config)?;
    let tag = format!("{}/acme/app:d{}", node.host(), unique_token());
    let session = DockerSession {
        config,
        host: node.host(),
        images: vec![tag.clone()],
    };

    // Without a login the push is refused.
    run(session
        .docker()
        .args(["build", "--quiet", "--force-rm", "-t", &tag])
        .arg(&context))?;
    let anonymous = session.docker().args(["push", &tag]).output()?;
    assert!(
        !anonymous.status.success(),
        "anonymous docker push succeeded"
    );

    // A wrong password is refused by `docker login`.
    let wrong = run_with_stdin(
        session
            .docker()
            .args(["login", &node.host(), "-u", "alice", "--password-stdin"]),
        "not-the-password",
    );
    assert!(wrong.is_err(), "docker login accepted a wrong password");

    run_with_stdin(
        session
            .docker()
            .args(["login", &node.host(), "-u", "alice", "--password-stdin"]),
        ALICE_PASSWORD,
    )?;
    let stored = std::fs::read_to_string(session.config.join("config.json"))?;
    assert!(
        stored.contains(&node.host()),
        "docker stored no login: {stored}"
    );
    run(session.docker().args(["push", &tag]))?;
    run(session.docker().args(["rmi", &tag]))?;
    run(session.docker().args(["pull", &tag]))?;

    // The audit log recorded alice's push.
    let audit = api_ok(
        &node,
        "GET",
        "audit?actor=alice&action=push",
        &basic(ADMIN, ADMIN_PASSWORD),
        None,
        200,
    )?;
    let events = audit["events"].as_array().ok_or_else(|| fail("events"))?;
    assert!(!events.is_empty(), "no push event for alice: {audit}");

    run(session.docker().args(["logout", &node.host()]))?;
    let stored = std::fs::read_to_string(session.config.join("config.json"))?;
    assert!(
        !stored.contains(&node.host()),
        "docker logout left {stored}"
    );
    Ok(())
}

/// podman with all state (storage, auth file) inside `dir`.
fn podman(dir: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .env("TMPDIR", dir)
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"));
    cmd
}

/// Removes what a `ctr` run left in its own containerd namespace.
struct CtrCleanup {
    address: String,
    namespace: String,
    images: Vec<String>,
}

impl CtrCleanup {
    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.args(["--address", &self.address, "--namespace", &self.namespace]);
        cmd
    }
}

impl Drop for CtrCleanup {
    fn drop(&mut self) {
        for image in &self.images {
            let _ = self
                .ctr()
                .args(["images", "rm", "--sync", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self
            .ctr()
            .args(["namespaces", "rm", &self.namespace])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Docker's containerd socket (or the system one).
fn containerd_socket() -> Option<String> {
    [
        "/run/docker/containerd/containerd.sock",
        "/run/containerd/containerd.sock",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .map(str::to_owned)
}

#[test]
fn robot_skopeo_podman_and_ctr_use_their_credentials_and_anonymous_is_refused() -> Res {
    if !require_client("skopeo") || !require_client("podman") || !require_client("ctr") {
        return Ok(());
    }
    let Some(socket) = containerd_socket() else {
        if std::env::var("BERTH_E2E_REQUIRED").as_deref() == Ok("1") {
            return Err(fail("no containerd socket and BERTH_E2E_REQUIRED=1"));
        }
        println!("SKIP: no containerd socket");
        return Ok(());
    };
    let tmp = TempDir::new()?;
    let node = start_auth_node(tmp.path(), "")?;
    let tenant = provision(&node)?;
    let mut rng = Rng::from_clock();
    let src = Layout::create(&tmp.path().join("src"))?;
    let image = src.build_image(&mut rng, "amd64", 1, 64 << 10)?;
    src.tag(&image.descriptor(None), "v1")?;
    let remote = format!("docker://{}/acme/app:robot", node.host());

    // The robot pushes with skopeo.
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
        ])
        .arg(format!("{}:{}", tenant.robot, tenant.robot_token))
        .arg(format!("oci:{}:v1", src.dir.display()))
        .arg(&remote))?;
    // A robot token for another name is refused.
    let wrong = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
        ])
        .arg(format!("acme+other:{}", tenant.robot_token))
        .arg(format!("oci:{}:v1", src.dir.display()))
        .arg(format!("docker://{}/acme/app:other", node.host()))
        .stdin(Stdio::null())
        .output()?;
    assert!(
        !wrong.status.success(),
        "skopeo pushed with a token under another name"
    );

    // Anonymous reads of the private repository are refused, with an auth error.
    let anon = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--no-creds",
            "--tls-verify=false",
            &remote,
        ])
        .env("REGISTRY_AUTH_FILE", tmp.path().join("none.json"))
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&anon.stderr).to_lowercase();
    assert!(!anon.status.success(), "anonymous skopeo inspect succeeded");
    assert!(
        text.contains("unauthorized") || text.contains("authentication"),
        "anonymous refusal does not say why: {text}"
    );
    // The robot reads it back.
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("{}:{}", tenant.robot, tenant.robot_token))
        .arg(&remote))?;
    assert_eq!(raw.stdout, image.manifest);

    // podman: login with a private auth file, pull what the robot pushed, push a copy.
    let state = tmp.path().join("podman");
    std::fs::create_dir_all(&state)?;
    let authfile = state.join("auth.json");
    let source = format!("{}/acme/app:robot", node.host());
    let target = format!("{}/acme/app:podman", node.host());
    run_with_stdin(
        podman(&state)
            .args(["login", "--tls-verify=false", "--authfile"])
            .arg(&authfile)
            .args(["-u", "alice", "--password-stdin", &node.host()]),
        ALICE_PASSWORD,
    )?;
    run(podman(&state)
        .args(["pull", "--quiet", "--tls-verify=false", "--authfile"])
        .arg(&authfile)
        .arg(&source))?;
    run(podman(&state)
        .args(["push", "--tls-verify=false", "--authfile"])
        .arg(&authfile)
        .args([&source, &target]))?;
    node.get_manifest("acme/app", "podman")?
        .expect_status(401, "anonymous GET of the podman-pushed manifest")?;
    let pushed = node
        .request(
            "GET",
            "/v2/acme/app/manifests/podman",
            &[
                ("Authorization", &basic("alice", ALICE_PASSWORD)),
                ("Accept", crate::support::MANIFEST_ACCEPT),
            ],
            b"",
        )?
        .expect_status(200, "alice GETs the podman-pushed manifest")?;
    assert!(!pushed.body.is_empty());
    run(podman(&state)
        .args(["logout", "--authfile"])
        .arg(&authfile)
        .arg(node.host()))?;

    // containerd: fetch with a user's credentials in a namespace of our own.
    let cleanup = CtrCleanup {
        address: socket,
        namespace: format!("berth-e2e-{}", unique_token()),
        images: vec![source.clone()],
    };
    let denied = cleanup
        .ctr()
        .args([
            "content",
            "fetch",
            "--plain-http",
            "--user",
            "alice:wrong-password",
            &source,
        ])
        .stdin(Stdio::null())
        .output()?;
    assert!(
        !denied.status.success(),
        "ctr fetched with a wrong password"
    );
    run(cleanup
        .ctr()
        .args(["content", "fetch", "--plain-http", "--user"])
        .arg(format!("alice:{ALICE_PASSWORD}"))
        .arg(&source))?;
    let listed = run(cleanup.ctr().args(["images", "ls", "-q"]))?;
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&source),
        "ctr did not record {source}"
    );
    let content = run(cleanup.ctr().args(["content", "ls", "-q"]))?;
    let content = String::from_utf8_lossy(&content.stdout).into_owned();
    for layer in &image.layers {
        assert!(
            content.contains(&layer.digest),
            "ctr lacks layer {}",
            layer.digest
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// LDAP against a real slapd.

/// The directory's suffix.
const LDAP_BASE: &str = "dc=berth,dc=test";
/// slapd's root DN (also berth's service account here).
const LDAP_ROOT_DN: &str = "cn=admin,dc=berth,dc=test";
/// Test-only root password.
const LDAP_ROOT_PW: &str = "ldap-admin-pw";
/// How long slapd may take to answer `ldapsearch` after being spawned.
const SLAPD_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A `slapd` child process on a loopback port with an mdb database in a temp dir, configured
/// by a generated `slapd.conf` (`-f`). Killed on drop.
struct Slapd {
    child: std::process::Child,
    url: String,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Slapd {
    fn start(dir: &Path) -> Res<Slapd> {
        let db = dir.join("db");
        std::fs::create_dir_all(&db)?;
        let conf = dir.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 pidfile {pid}\n\
                 database mdb\n\
                 maxsize 10485760\n\
                 suffix \"{LDAP_BASE}\"\n\
                 rootdn \"{LDAP_ROOT_DN}\"\n\
                 rootpw {LDAP_ROOT_PW}\n\
                 directory {db}\n\
                 access to attrs=userPassword by anonymous auth by * none\n\
                 access to * by * read\n",
                pid = dir.join("slapd.pid").display(),
                db = db.display(),
            ),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("ldap://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("slapd.log"))?;
        // `-d 0`: stay in the foreground (a child we can kill), log nothing.
        let child = Command::new("slapd")
            .args(["-d", "0", "-h", &url, "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut slapd = Slapd { child, url };
        let deadline = std::time::Instant::now() + SLAPD_START_TIMEOUT;
        loop {
            if let Some(status) = slapd.child.try_wait()? {
                return Err(fail(format!(
                    "slapd exited with {status}: {}",
                    std::fs::read_to_string(dir.join("slapd.log")).unwrap_or_default()
                )));
            }
            let probe = Command::new("ldapsearch")
                .args([
                    "-x",
                    "-H",
                    &slapd.url,
                    "-b",
                    "",
                    "-s",
                    "base",
                    "namingContexts",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if probe.success() {
                return Ok(slapd);
            }
            if std::time::Instant::now() > deadline {
                return Err(fail("slapd did not answer ldapsearch in time"));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// `ldapadd` / `ldapmodify` as the root DN with `ldif`.
    fn modify(&self, tool: &str, ldif: &str) -> Res {
        let mut child = Command::new(tool)
            .args([
                "-x",
                "-H",
                &self.url,
                "-D",
                LDAP_ROOT_DN,
                "-w",
                LDAP_ROOT_PW,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ldif.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(fail(format!(
                "{tool} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

/// Whether slapd and ldap-utils are installed (neither has a `--version` flag, so
/// [`require_client`] cannot probe them); same SKIP / required rules.
fn require_ldap_tools() -> bool {
    let found = |p: &str| {
        ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
            .iter()
            .any(|d| Path::new(d).join(p).exists())
    };
    if ["slapd", "ldapsearch", "ldapadd", "ldapmodify"]
        .iter()
        .all(|p| found(p))
    {
        return true;
    }
    if std::env::var("BERTH_E2E_REQUIRED").as_deref() == Ok("1") {
        panic!("slapd / ldap-utils are not installed, and BERTH_E2E_REQUIRED=1");
    }
    println!("SKIP: slapd / ldap-utils not installed");
    false
}

/// The directory: users bob and carol (plain `userPassword`, fine for a test directory),
/// group `cn=devs` with both.
fn ldap_seed() -> String {
    let mut ldif = format!(
        "dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\no: berth\ndc: berth\n\n\
         dn: ou=people,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    for user in ["bob", "carol"] {
        ldif.push_str(&format!(
            "dn: uid={user},ou=people,{LDAP_BASE}\nobjectClass: inetOrgPerson\nuid: {user}\n\
             cn: {user}\nsn: {user}\nmail: {user}@berth.test\nuserPassword: {user}-ldap-pw\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=devs,ou=groups,{LDAP_BASE}\nobjectClass: groupOfNames\ncn: devs\n\
         member: uid=bob,ou=people,{LDAP_BASE}\nmember: uid=carol,ou=people,{LDAP_BASE}\n"
    ));
    ldif
}

/// `GET /auth/token` for `scope` with Basic credentials: (status, granted actions).
fn token_actions(node: &Node, user: &str, password: &str, repo: &str) -> Res<(u16, Vec<String>)> {
    let resp = node.request(
        "GET",
        &format!("/auth/token?service=berth&scope=repository:{repo}:pull,push"),
        &[("Authorization", &basic(user, password))],
        b"",
    )?;
    if resp.status != 200 {
        return Ok((resp.status, Vec::new()));
    }
    let body: Value = serde_json::from_slice(&resp.body)?;
    let token = body["token"].as_str().ok_or_else(|| fail("no token"))?;
    // The JWT's payload: `access[].actions`.
    let payload = token.split('.').nth(1).ok_or_else(|| fail("not a JWT"))?;
    let claims: Value = serde_json::from_slice(&base64url_decode(payload)?)?;
    let actions = claims["access"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["name"] == repo)
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    Ok((200, actions))
}

/// Unpadded URL-safe base64 decoding (JWT segments).
fn base64url_decode(s: &str) -> Res<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return Err(fail("bad base64url")),
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Ok(out)
}

/// A blob push with Basic credentials: the status of the monolithic upload.
fn push_status(node: &Node, repo: &str, auth: &str, bytes: &[u8]) -> Res<u16> {
    let digest = crate::support::sha256_digest(bytes);
    Ok(node
        .request(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[
                ("Authorization", auth),
                ("Content-Type", "application/octet-stream"),
            ],
            bytes,
        )?
        .status)
}

#[test]
fn ldap_login_syncs_team_membership_from_groups() -> Res {
    if !require_ldap_tools() {
        return Ok(());
    }
    let tmp = TempDir::new()?;
    let slapd = Slapd::start(&tmp.path().join("slapd"))?;
    slapd.modify("ldapadd", &ldap_seed())?;
    let node = start_auth_node(
        tmp.path(),
        &format!(
            "[auth.ldap]\nurl = \"{}\"\nbind_dn = \"{LDAP_ROOT_DN}\"\nbind_password = \"{LDAP_ROOT_PW}\"\n\
             user_base = \"ou=people,{LDAP_BASE}\"\n",
            slapd.url
        ),
    )?;
    let admin = basic(ADMIN, ADMIN_PASSWORD);
    api_ok(
        &node,
        "POST",
        "organizations",
        &admin,
        Some(json!({"name": "acme"})),
        201,
    )?;
    api_ok(
        &node,
        "POST",
        "organizations/acme/teams",
        &admin,
        Some(json!({"name": "devs", "role": "member",
                    "ldap_group": format!("cn=devs,ou=groups,{LDAP_BASE}")})),
        201,
    )?;
    api_ok(
        &node,
        "PUT",
        "permissions/acme/ldap/teams/devs",
        &admin,
        Some(json!({"role": "write"})),
        204,
    )?;
    let repo = "acme/ldap";

    // bob logs in at the token endpoint: his account is created and his group makes him a
    // member of acme/devs, whose write permission covers the push.
    let (status, actions) = token_actions(&node, "bob", "bob-ldap-pw", repo)?;
    assert_eq!(status, 200);
    assert!(actions.iter().any(|a| a == "push"), "bob got {actions:?}");
    let members = api_ok(
        &node,
        "GET",
        "organizations/acme/teams/devs/members",
        &admin,
        None,
        200,
    )?;
    assert!(members.to_string().contains("bob"), "{members}");
    let bob = basic("bob", "bob-ldap-pw");
    assert_eq!(
        push_status(&node, repo, &bob, b"pushed by bob via ldap")?,
        201
    );
    let user = api_ok(&node, "GET", "users/bob", &admin, None, 200)?;
    assert_eq!(user["external"], "ldap", "{user}");

    // A wrong password is refused (by the directory's bind).
    let (status, _) = token_actions(&node, "bob", "not-bobs-password", repo)?;
    assert_eq!(status, 401);
    let (status, _) = token_actions(&node, "nobody", "whatever-password", repo)?;
    assert_eq!(status, 401);

    // carol logs in too, then the directory drops bob from the group; a sync removes him.
    assert_eq!(token_actions(&node, "carol", "carol-ldap-pw", repo)?.0, 200);
    slapd.modify(
        "ldapmodify",
        &format!(
            "dn: cn=devs,ou=groups,{LDAP_BASE}\nchangetype: modify\ndelete: member\n\
             member: uid=bob,ou=people,{LDAP_BASE}\n"
        ),
    )?;
    let report = api_ok(&node, "POST", "ldap/sync", &admin, None, 200)?;
    let members = api_ok(
        &node,
        "GET",
        "organizations/acme/teams/devs/members",
        &admin,
        None,
        200,
    )?;
    assert!(
        !members.to_string().contains("bob"),
        "{members} after {report}"
    );
    assert!(members.to_string().contains("carol"), "{members}");
    assert_eq!(push_status(&node, repo, &bob, b"bob after removal")?, 403);
    let (status, actions) = token_actions(&node, "bob", "bob-ldap-pw", repo)?;
    assert_eq!(status, 200, "bob still authenticates against the directory");
    assert!(actions.is_empty(), "bob still granted {actions:?}");
    let carol = basic("carol", "carol-ldap-pw");
    assert_eq!(push_status(&node, repo, &carol, b"pushed by carol")?, 201);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// OIDC against a real OpenID Provider (pyop 3.5.0 in a Flask app, tests/e2e/fixtures).

/// How long the provider may take to answer discovery after being spawned.
const PROVIDER_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The callback URL registered with the provider. The test plays the browser: it reads
/// the provider's redirect and hands `code` and `state` to the node itself, so this host
/// never has to resolve.
const OIDC_REDIRECT: &str = "http://berth.test/auth/oidc/callback";

/// The Python that has pyop (`.ci/run` makes `<target>/oidc-venv`), or `BERTH_OIDC_PYTHON`.
fn oidc_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BERTH_OIDC_PYTHON") {
        return Some(PathBuf::from(p));
    }
    // tests run from <target>/debug/deps/
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    let python = target.join("oidc-venv/bin/python");
    let usable = Command::new(&python)
        .args(["-c", "import pyop, flask"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    usable.then_some(python)
}

/// The provider process; killed on drop.
struct Provider {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    /// With TLS: the throwaway CA that signed the provider's certificate.
    ca: Option<PathBuf>,
}

/// Makes a throwaway CA and a certificate for `127.0.0.1` (IP SAN) signed by it, with the
/// `openssl` CLI, in `dir`: `(ca.pem, server.pem, server.key)`.
pub(crate) fn make_test_pki(dir: &Path) -> Res<(PathBuf, PathBuf, PathBuf)> {
    let openssl = |args: &[&str]| -> Res {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(fail(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=berth e2e test CA",
    ];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca)?;
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&csr)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ])?;
    Ok((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    /// Starts the provider on a free loopback port; over HTTPS (a fresh test CA, see
    /// [`make_test_pki`]) when `tls`.
    fn start(python: &Path, dir: &Path, user: &str, password: &str, tls: bool) -> Res<Provider> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fixtures/oidc_provider.py");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("provider.log"))?;
        let mut cmd = Command::new(python);
        cmd.arg(&script).args([
            &port.to_string(),
            "berth",
            "berth-client-secret",
            OIDC_REDIRECT,
            user,
            password,
        ]);
        let ca = if tls {
            let (ca, cert, key) = make_test_pki(dir)?;
            cmd.arg(cert).arg(key);
            Some(ca)
        } else {
            None
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut p = Provider {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            ca,
        };
        let deadline = std::time::Instant::now() + PROVIDER_START_TIMEOUT;
        loop {
            if let Some(status) = p.child.try_wait()? {
                return Err(fail(format!(
                    "provider exited with {status}: {}",
                    std::fs::read_to_string(dir.join("provider.log")).unwrap_or_default()
                )));
            }
            if p.request("GET", "/.well-known/openid-configuration", &[], b"")
                .is_ok_and(|r| r.status == 200)
            {
                return Ok(p);
            }
            if std::time::Instant::now() > deadline {
                return Err(fail("the OIDC provider did not start in time"));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The issuer URL.
    fn issuer(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// One request to the provider, as the browser would make it: plain over std's
    /// TcpStream, or over TLS with `curl --cacert <test CA>` (no TLS client in the tests).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Res<Response> {
        let Some(ca) = &self.ca else {
            return crate::support::request(self.addr, method, path, headers, body);
        };
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-i", "--max-time", "20", "--cacert"])
            .arg(ca)
            .args(["-X", method]);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        if !body.is_empty() {
            cmd.args(["--data-binary", "@-"]);
        }
        let mut child = cmd
            .arg(format!("{}{path}", self.issuer()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(body)?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(fail(format!(
                "curl {method} {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let split = out
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| fail("curl: no header block"))?;
        let head = String::from_utf8_lossy(&out.stdout[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| fail(format!("curl: bad status line in {head}")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Response {
            status,
            headers,
            body: out.stdout[split + 4..].to_vec(),
        })
    }
}

/// Form / query escaping.
fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `path?query` of an absolute `http(s)://host:port/path?query` URL.
fn path_of(url: &str) -> Res<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| fail(format!("not http(s): {url}")))?;
    Ok(rest
        .find('/')
        .map(|i| rest[i..].to_owned())
        .unwrap_or_else(|| "/".into()))
}

/// One query parameter of a URL (values here are URL-safe; no decoding needed).
fn url_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Walks the provider's login form: returns the redirect to our callback (or the status).
fn provider_login(
    provider: &Provider,
    authorize_url: &str,
    user: &str,
    password: &str,
) -> Res<Result<String, u16>> {
    let page = provider
        .request("GET", &path_of(authorize_url)?, &[], b"")?
        .expect_status(200, "provider login page")?;
    let page = String::from_utf8_lossy(&page.body).into_owned();
    let query = page
        .split("name='query' value='")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| fail(format!("no login form in {page}")))?
        .replace("&amp;", "&");
    let form = format!(
        "query={}&username={}&password={}",
        form_escape(&query),
        form_escape(user),
        form_escape(password)
    );
    let resp = provider.request(
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )?;
    if resp.status != 302 {
        return Ok(Err(resp.status));
    }
    Ok(Ok(resp.require_header("location")?.to_owned()))
}

/// The Python with pyop, `None` to skip (an error under `BERTH_E2E_REQUIRED=1`).
fn oidc_python_or_skip() -> Res<Option<PathBuf>> {
    if let Some(python) = oidc_python() {
        return Ok(Some(python));
    }
    if std::env::var("BERTH_E2E_REQUIRED").as_deref() == Ok("1") {
        return Err(fail(
            "no Python with pyop (.ci/run makes <target>/oidc-venv)",
        ));
    }
    println!("SKIP: no Python with pyop");
    Ok(None)
}

/// The `[auth.oidc]` section for `provider`, trusting `ca_file` if given.
fn oidc_toml(provider: &Provider, ca_file: Option<&Path>) -> String {
    let mut toml = format!(
        "[auth.oidc]\nissuer = \"{}\"\nclient_id = \"berth\"\n\
         client_secret = \"berth-client-secret\"\nredirect_url = \"{OIDC_REDIRECT}\"\n",
        provider.issuer()
    );
    if let Some(ca) = ca_file {
        toml.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
    }
    toml
}

#[test]
fn oidc_code_flow_with_a_real_provider_issues_a_working_token() -> Res {
    let Some(python) = oidc_python_or_skip()? else {
        return Ok(());
    };
    let tmp = TempDir::new()?;
    let provider = Provider::start(&python, tmp.path(), "dora", "dora-oidc-pw", false)?;
    let node = start_auth_node(tmp.path(), &oidc_toml(&provider, None))?;
    oidc_code_flow(&node, &provider)
}

/// The provider over HTTPS with a certificate from a throwaway CA: with `ca_file` = that CA
/// the whole code flow works; without it the login fails at once with 502 naming the
/// certificate problem (system roots do not know the CA).
#[test]
fn oidc_code_flow_over_https_trusts_the_configured_ca_only() -> Res {
    let Some(python) = oidc_python_or_skip()? else {
        return Ok(());
    };
    let tmp = TempDir::new()?;
    let provider = Provider::start(&python, tmp.path(), "dora", "dora-oidc-pw", true)?;
    let ca = provider.ca.clone().ok_or_else(|| fail("no CA"))?;

    let untrusting_dir = tmp.path().join("untrusting");
    std::fs::create_dir_all(&untrusting_dir)?;
    let untrusting = start_auth_node(&untrusting_dir, &oidc_toml(&provider, None))?;
    let started = std::time::Instant::now();
    let refused = untrusting
        .request("GET", "/auth/oidc/login", &[], b"")?
        .expect_status(502, "GET /auth/oidc/login without the CA")?;
    let text = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(untrusting);

    let node_dir = tmp.path().join("trusting");
    std::fs::create_dir_all(&node_dir)?;
    let node = start_auth_node(&node_dir, &oidc_toml(&provider, Some(&ca)))?;
    oidc_code_flow(&node, &provider)
}

/// The whole code flow of `node` against `provider`, playing the browser.
fn oidc_code_flow(node: &Node, provider: &Provider) -> Res {
    // 1. The node sends the browser to the provider with state, nonce and PKCE.
    let start = node
        .request("GET", "/auth/oidc/login", &[], b"")?
        .expect_status(302, "GET /auth/oidc/login")?;
    let authorize = start.require_header("location")?.to_owned();
    assert!(
        authorize.starts_with(&format!("{}/authorize?", provider.issuer())),
        "{authorize}"
    );
    for p in [
        "state",
        "nonce",
        "code_challenge",
        "client_id",
        "redirect_uri",
    ] {
        assert!(
            url_param(&authorize, p).is_some(),
            "{p} missing in {authorize}"
        );
    }
    assert_eq!(
        url_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );

    // 2. A wrong password at the provider goes nowhere; the right one redirects back.
    assert_eq!(
        provider_login(provider, &authorize, "dora", "wrong")?,
        Err(401)
    );
    let back = provider_login(provider, &authorize, "dora", "dora-oidc-pw")?
        .map_err(|s| fail(format!("provider login answered {s}")))?;
    assert!(back.starts_with(OIDC_REDIRECT), "{back}");
    let query = back.split_once('?').map(|(_, q)| q).unwrap_or("");

    // 3. The callback exchanges the code, verifies the id_token and issues a berth token.
    let resp = node
        .request("GET", &format!("/auth/oidc/callback?{query}"), &[], b"")?
        .expect_status(200, "GET /auth/oidc/callback")?;
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let body: Value = serde_json::from_slice(&resp.body)?;
    assert_eq!(body["user"], "dora", "{body}");
    let token = body["token"]
        .as_str()
        .ok_or_else(|| fail("no token"))?
        .to_owned();
    assert!(token.starts_with("berth_"));

    // The state is single-use.
    node.request("GET", &format!("/auth/oidc/callback?{query}"), &[], b"")?
        .expect_status(401, "replayed callback")?;

    // 4. The token is a password for the token endpoint (docker login) and pushes.
    let (status, actions) = token_actions(node, "dora", &token, "dora/app")?;
    assert_eq!(status, 200);
    assert!(actions.iter().any(|a| a == "push"), "{actions:?}");
    assert_eq!(
        push_status(
            node,
            "dora/app",
            &basic("dora", &token),
            b"pushed after OIDC"
        )?,
        201
    );
    let user = api_ok(
        node,
        "GET",
        "users/dora",
        &basic(ADMIN, ADMIN_PASSWORD),
        None,
        200,
    )?;
    assert!(
        user["external"]
            .as_str()
            .is_some_and(|e| e.starts_with("oidc:")),
        "{user}"
    );
    // It is not an administrator and has no password login.
    assert_eq!(
        token_actions(node, "dora", "dora-oidc-pw", "dora/app")?.0,
        401
    );

    // A second login maps to the same account and yields a new token.
    let again = node
        .request("GET", "/auth/oidc/login", &[], b"")?
        .expect_status(302, "login")?;
    let back = provider_login(
        provider,
        again.require_header("location")?,
        "dora",
        "dora-oidc-pw",
    )?
    .map_err(|s| fail(format!("provider login answered {s}")))?;
    let query = back.split_once('?').map(|(_, q)| q).unwrap_or("");
    let second: Value = serde_json::from_slice(
        &node
            .request("GET", &format!("/auth/oidc/callback?{query}"), &[], b"")?
            .expect_status(200, "second callback")?
            .body,
    )?;
    assert_eq!(second["user"], "dora");
    assert_ne!(second["token"], body["token"]);
    Ok(())
}

/// `berth admin <args…> --node http://NODE` with the API token in `BERTH_TOKEN`: stdout.
fn berth_admin(node: &Node, token: &str, args: &[&str]) -> Res<String> {
    let out = run(Command::new(berth_bin())
        .arg("admin")
        .args(args)
        .args(["--node", &format!("http://{}", node.host())])
        .env("BERTH_TOKEN", token))?;
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn cli_manages_organizations_teams_robots_and_permissions() -> Res {
    let tmp = TempDir::new()?;
    let node = start_auth_node(tmp.path(), "")?;
    let created = api_ok(
        &node,
        "POST",
        "tokens",
        &basic(ADMIN, ADMIN_PASSWORD),
        Some(json!({"name": "cli", "scopes": ["repo:admin", "org:admin", "user:admin"]})),
        201,
    )?;
    let token = created["token"]
        .as_str()
        .ok_or_else(|| fail("token"))?
        .to_owned();
    berth_admin(&node, &token, &["org", "create", "globex"])?;
    berth_admin(
        &node,
        &token,
        &["team", "create", "globex", "builders", "--role", "member"],
    )?;
    let out = Command::new(berth_bin())
        .args([
            "admin",
            "user",
            "create",
            "gina",
            "--node",
            &format!("http://{}", node.host()),
        ])
        .env("BERTH_TOKEN", &token)
        .env("BERTH_USER_PASSWORD", "gina-password-e2e")
        .stdin(Stdio::null())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    berth_admin(
        &node,
        &token,
        &["team", "add-member", "globex", "builders", "gina"],
    )?;
    berth_admin(
        &node,
        &token,
        &[
            "perm",
            "grant",
            "globex/site",
            "--team",
            "builders",
            "--role",
            "write",
        ],
    )?;
    let robot: Value = serde_json::from_str(&berth_admin(
        &node,
        &token,
        &["robot", "create", "globex", "deploy"],
    )?)?;
    let robot_token = robot["token"].as_str().ok_or_else(|| fail("robot token"))?;
    assert_eq!(robot["name"], "globex+deploy");
    berth_admin(
        &node,
        &token,
        &[
            "perm",
            "grant",
            "globex/site",
            "--account",
            "globex+deploy",
            "--role",
            "read",
        ],
    )?;

    // The grants work: gina (team write) pushes; the robot (read) may not.
    assert_eq!(
        push_status(
            &node,
            "globex/site",
            &basic("gina", "gina-password-e2e"),
            b"g"
        )?,
        201
    );
    assert_eq!(
        push_status(
            &node,
            "globex/site",
            &basic("globex+deploy", robot_token),
            b"r"
        )?,
        403
    );
    berth_admin(
        &node,
        &token,
        &["team", "remove-member", "globex", "builders", "gina"],
    )?;
    assert_eq!(
        push_status(
            &node,
            "globex/site",
            &basic("gina", "gina-password-e2e"),
            b"g2"
        )?,
        403
    );

    // A bad token is refused with the API's error, and a non-zero exit.
    let bad = Command::new(berth_bin())
        .args([
            "admin",
            "org",
            "create",
            "nope",
            "--node",
            &format!("http://{}", node.host()),
        ])
        .env("BERTH_TOKEN", "berth_not-a-token")
        .stdin(Stdio::null())
        .output()?;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    Ok(())
}
