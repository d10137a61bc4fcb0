//! Identity and access (issue 7): the authorization matrix — every operation × every actor
//! × public / private repository — run in-process against a node with `auth.enabled`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use berth_registry::auth::{Auth, AuthConfig};
use berth_registry::{Registry, RegistryConfig};
use berth_storage::{BlobStore, SqliteMetadata};
use http_body_util::BodyExt;
use sha2::Digest as _;
use tower::ServiceExt;

const ADMIN_PW: &str = "admin-password-1";
const PW: &str = "user-password-1";

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    fn code(&self) -> Option<String> {
        self.json()["errors"][0]["code"].as_str().map(str::to_owned)
    }
}

#[derive(Clone)]
enum Cred {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

struct Node {
    _dir: tempfile::TempDir,
    router: Router,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let db = dir.path().join("metadata.sqlite");
        let meta = Arc::new(SqliteMetadata::open(&db).unwrap());
        let config = AuthConfig {
            enabled: true,
            lockout_threshold: 3,
            ..AuthConfig::default()
        };
        let auth = Auth::open(config, dir.path(), &db).unwrap();
        berth_registry::auth::bootstrap_admin(auth.store().as_ref(), "admin", ADMIN_PW).unwrap();
        let registry = Registry::new(RegistryConfig::default(), blobs, meta)
            .unwrap()
            .with_auth(auth);
        Node {
            _dir: dir,
            router: Arc::new(registry).router(),
        }
    }

    async fn req(&self, method: &str, uri: &str, cred: &Cred, body: Vec<u8>) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "registry.test");
        match cred {
            Cred::Anonymous => {}
            Cred::Basic(u, p) => {
                let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                b = b.header("authorization", format!("Basic {v}"));
            }
            Cred::Bearer(t) => b = b.header("authorization", format!("Bearer {t}")),
        }
        if uri.contains("/manifests/") && method == "PUT" {
            b = b.header("content-type", "application/vnd.oci.image.manifest.v1+json");
        }
        if uri.starts_with("/api/") && !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        let resp = self
            .router
            .clone()
            .oneshot(b.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn api(&self, method: &str, path: &str, cred: &Cred, json: serde_json::Value) -> Reply {
        let body = if json.is_null() {
            Vec::new()
        } else {
            json.to_string().into_bytes()
        };
        self.req(method, &format!("/api/v1/{path}"), cred, body)
            .await
    }

    /// Pushes one blob and a manifest referencing it as `repo:tag`; returns the blob digest.
    async fn push_image(&self, repo: &str, tag: &str, cred: &Cred, layer: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(layer)));
        let r = self
            .req(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                cred,
                layer.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let config = b"{}";
        let cdigest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(config)));
        let r = self
            .req(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={cdigest}"),
                cred,
                config.to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": layer.len()}],
        });
        let r = self
            .req(
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                cred,
                manifest.to_string().into_bytes(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }
}

fn basic(u: &str, p: &str) -> Cred {
    Cred::Basic(u.into(), p.into())
}

/// What the matrix expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Authorized (any status the handler gives: 2xx, or 404 for absent content).
    Ok,
    /// 401 UNAUTHORIZED with a Bearer challenge.
    Unauth,
    /// 403 DENIED.
    Denied,
}

fn judge(r: &Reply) -> Want {
    match (r.status, r.code().as_deref()) {
        (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")) => {
            let challenge = r
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(
                challenge.starts_with("Bearer realm="),
                "challenge: {challenge}"
            );
            Want::Unauth
        }
        (StatusCode::FORBIDDEN, Some("DENIED")) => Want::Denied,
        (s, _) if s.is_success() || s == StatusCode::NOT_FOUND => Want::Ok,
        (s, c) => panic!("unexpected {s} {c:?}: {}", String::from_utf8_lossy(&r.body)),
    }
}

struct World {
    node: Node,
    actors: Vec<(&'static str, Cred)>,
    layer_digest: String,
    secret_digest: String,
}

async fn world() -> World {
    let node = Node::new();
    let admin = basic("admin", ADMIN_PW);
    for u in ["olivia", "tom", "uma", "oscar"] {
        let r = node
            .api(
                "POST",
                "users",
                &admin,
                serde_json::json!({"name": u, "password": PW}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let olivia = basic("olivia", PW);
    let oscar = basic("oscar", PW);
    // olivia owns acme; tom is in its team "devs"; oscar owns globex.
    assert_eq!(
        node.api(
            "POST",
            "organizations",
            &olivia,
            serde_json::json!({"name": "acme"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(
        node.api(
            "POST",
            "organizations",
            &oscar,
            serde_json::json!({"name": "globex"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let r = node
        .api(
            "POST",
            "organizations/acme/teams",
            &olivia,
            serde_json::json!({"name": "devs", "role": "member"}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        node.api(
            "PUT",
            "organizations/acme/teams/devs/members/tom",
            &olivia,
            serde_json::Value::Null
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    // A robot, its token shown once.
    let r = node
        .api(
            "POST",
            "organizations/acme/robots",
            &olivia,
            serde_json::json!({"name": "ci"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let robot_token = r.json()["token"].as_str().unwrap().to_owned();
    // Content: acme/private, acme/public (pushed by the org owner), globex/secret.
    let layer_digest = node
        .push_image("acme/private", "v1", &olivia, b"acme layer")
        .await;
    node.push_image("acme/public", "v1", &olivia, b"acme layer")
        .await;
    let secret_digest = node
        .push_image("globex/secret", "v1", &oscar, b"globex secret layer")
        .await;
    assert_eq!(
        node.api(
            "PUT",
            "visibility/acme/public",
            &olivia,
            serde_json::json!({"public": true})
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    // devs write acme/private; the robot writes acme/private.
    for path in [
        "permissions/acme/private/teams/devs",
        "permissions/acme/private/accounts/acme+ci",
    ] {
        let r = node
            .api("PUT", path, &olivia, serde_json::json!({"role": "write"}))
            .await;
        assert_eq!(
            r.status,
            StatusCode::NO_CONTENT,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    World {
        actors: vec![
            ("anonymous", Cred::Anonymous),
            ("admin", admin),
            ("owner", olivia),
            ("team member", basic("tom", PW)),
            ("robot", basic("acme+ci", &robot_token)),
            ("user", basic("uma", PW)),
            ("other org", oscar),
        ],
        node,
        layer_digest,
        secret_digest,
    }
}

#[tokio::test]
async fn authorization_matrix() {
    let w = world().await;
    let zero = format!("sha256:{}", "0".repeat(64));
    use Want::*;
    // (operation, method, uri template with {repo}) × actor expectations for private, public.
    type Row = (&'static str, &'static str, String, [Want; 7], [Want; 7]);
    //                                           anon    admin owner team robot user  other
    let rows: Vec<Row> = vec![
        (
            "pull",
            "GET",
            "/v2/{repo}/manifests/v1".into(),
            [Unauth, Ok, Ok, Ok, Ok, Denied, Denied],
            [Ok, Ok, Ok, Ok, Ok, Ok, Ok],
        ),
        (
            "pull blob",
            "GET",
            format!("/v2/{{repo}}/blobs/{}", w.layer_digest),
            [Unauth, Ok, Ok, Ok, Ok, Denied, Denied],
            [Ok, Ok, Ok, Ok, Ok, Ok, Ok],
        ),
        (
            "tags",
            "GET",
            "/v2/{repo}/tags/list".into(),
            [Unauth, Ok, Ok, Ok, Ok, Denied, Denied],
            [Ok, Ok, Ok, Ok, Ok, Ok, Ok],
        ),
        (
            "referrers",
            "GET",
            format!("/v2/{{repo}}/referrers/{zero}"),
            [Unauth, Ok, Ok, Ok, Ok, Denied, Denied],
            [Ok, Ok, Ok, Ok, Ok, Ok, Ok],
        ),
        (
            "push",
            "POST",
            "/v2/{repo}/blobs/uploads/".into(),
            [Unauth, Ok, Ok, Ok, Ok, Denied, Denied],
            [Unauth, Ok, Ok, Denied, Denied, Denied, Denied],
        ),
        (
            "delete",
            "DELETE",
            format!("/v2/{{repo}}/blobs/{zero}"),
            [Unauth, Ok, Ok, Ok, Ok, Denied, Denied],
            [Unauth, Ok, Ok, Denied, Denied, Denied, Denied],
        ),
    ];
    let mut failures = Vec::new();
    for (op, method, uri, private, public) in &rows {
        for (repo, wants) in [("acme/private", private), ("acme/public", public)] {
            for ((actor, cred), want) in w.actors.iter().zip(wants.iter()) {
                let r = w
                    .node
                    .req(method, &uri.replace("{repo}", repo), cred, Vec::new())
                    .await;
                let got = judge(&r);
                if got != *want {
                    failures.push(format!(
                        "{op} {repo} as {actor}: want {want:?}, got {got:?} ({})",
                        r.status
                    ));
                }
            }
        }
    }
    // A repository that does not exist answers like a private one: no existence leak.
    for ((actor, cred), want) in w
        .actors
        .iter()
        .zip([Unauth, Ok, Ok, Denied, Denied, Denied, Denied])
    {
        let got = judge(
            &w.node
                .req("GET", "/v2/acme/nothing/tags/list", cred, Vec::new())
                .await,
        );
        if got != want {
            failures.push(format!(
                "tags of absent repo as {actor}: want {want:?}, got {got:?}"
            ));
        }
    }
    // The admin API.
    for ((actor, cred), want) in w
        .actors
        .iter()
        .zip([Unauth, Ok, Denied, Denied, Denied, Denied, Denied])
    {
        let got = judge(
            &w.node
                .api("GET", "users", cred, serde_json::Value::Null)
                .await,
        );
        if got != want {
            failures.push(format!("admin API as {actor}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "matrix failures:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn no_cross_tenant_leaks() {
    let w = world().await;
    let cred = |name: &str| {
        w.actors
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.clone())
            .unwrap()
    };
    // Catalog: only readable repositories.
    let expect: [(&str, &[&str]); 7] = [
        ("anonymous", &["acme/public"]),
        ("admin", &["acme/private", "acme/public", "globex/secret"]),
        ("owner", &["acme/private", "acme/public"]),
        ("team member", &["acme/private", "acme/public"]),
        ("robot", &["acme/private", "acme/public"]),
        ("user", &["acme/public"]),
        ("other org", &["acme/public", "globex/secret"]),
    ];
    for (actor, repos) in expect {
        let r = w
            .node
            .req("GET", "/v2/_catalog", &cred(actor), Vec::new())
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let got: Vec<String> = serde_json::from_value(r.json()["repositories"].clone()).unwrap();
        assert_eq!(got, repos, "catalog as {actor}");
    }
    // Mounting another tenant's blob into a repository tom may push to: refused both with
    // `from` and without (falls back to an upload session, 202, and links nothing).
    let tom = cred("team member");
    for query in [
        format!("mount={}&from=globex/secret", w.secret_digest),
        format!("mount={}", w.secret_digest),
    ] {
        let r = w
            .node
            .req(
                "POST",
                &format!("/v2/acme/private/blobs/uploads/?{query}"),
                &tom,
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{query}");
        let r = w
            .node
            .req(
                "HEAD",
                &format!("/v2/acme/private/blobs/{}", w.secret_digest),
                &tom,
                Vec::new(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{query}: blob leaked by mount"
        );
    }
    // The owner of both ends may mount.
    let oscar = cred("other org");
    let r = w
        .node
        .req(
            "POST",
            &format!(
                "/v2/globex/copy/blobs/uploads/?mount={}&from=globex/secret",
                w.secret_digest
            ),
            &oscar,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Mount of a readable source without `from` works.
    let r = w
        .node
        .req(
            "POST",
            &format!("/v2/acme/private/blobs/uploads/?mount={}", w.layer_digest),
            &tom,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Another tenant's blob is not reachable through a repository one may read.
    let uma = cred("user");
    let r = w
        .node
        .req(
            "GET",
            &format!("/v2/acme/public/blobs/{}", w.secret_digest),
            &uma,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn token_flow_lockout_and_audit() {
    let w = world().await;
    let tom = basic("tom", PW);
    // Docker token flow: challenge, token, access.
    let r = w
        .node
        .req("GET", "/v2/", &Cred::Anonymous, Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = w.node.req("GET", "/auth/token?service=berth&scope=repository:acme/private:pull,push&scope=repository:globex/secret:pull", &tom, Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let claims = berth_registry::auth::token::unverified_claims(&token).unwrap();
    assert_eq!(claims["sub"], "tom");
    assert_eq!(
        claims["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    assert_eq!(claims["access"][1]["actions"], serde_json::json!([]));
    let bearer = Cred::Bearer(token);
    assert_eq!(
        w.node
            .req("GET", "/v2/acme/private/manifests/v1", &bearer, Vec::new())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        judge(
            &w.node
                .req("GET", "/v2/globex/secret/manifests/v1", &bearer, Vec::new())
                .await
        ),
        Want::Denied
    );
    // Allowed but not in the token's scope: a new challenge naming the scope.
    let r = w
        .node
        .req("GET", "/v2/acme/public/tags/list", &bearer, Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenge = r
        .headers
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("scope=\"repository:acme/public:pull\""),
        "{challenge}"
    );
    // A forged token is refused.
    assert_eq!(
        w.node
            .req("GET", "/v2/", &Cred::Bearer("a.b.c".into()), Vec::new())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Anonymous token: public pulls only.
    let r = w.node.req("GET", "/auth/token?service=berth&scope=repository:acme/public:pull&scope=repository:acme/private:pull", &Cred::Anonymous, Vec::new()).await;
    let anon = Cred::Bearer(r.json()["token"].as_str().unwrap().to_owned());
    assert_eq!(
        w.node
            .req("GET", "/v2/acme/public/manifests/v1", &anon, Vec::new())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        judge(
            &w.node
                .req("GET", "/v2/acme/private/manifests/v1", &anon, Vec::new())
                .await
        ),
        Want::Unauth
    );

    // Lockout after 3 failures, even with the right password; an admin resets it.
    for _ in 0..3 {
        let r = w
            .node
            .req(
                "GET",
                "/auth/token?service=berth",
                &basic("uma", "wrong-password"),
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        w.node
            .req(
                "GET",
                "/auth/token?service=berth",
                &basic("uma", PW),
                Vec::new()
            )
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let admin = basic("admin", ADMIN_PW);
    assert_eq!(
        w.node
            .api("POST", "users/uma/unlock", &admin, serde_json::Value::Null)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        w.node
            .req(
                "GET",
                "/auth/token?service=berth",
                &basic("uma", PW),
                Vec::new()
            )
            .await
            .status,
        StatusCode::OK
    );

    // API tokens with scopes.
    let r = w
        .node
        .api(
            "POST",
            "tokens",
            &tom,
            serde_json::json!({"name": "ci", "scopes": ["repo:read"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let api_token = Cred::Bearer(r.json()["token"].as_str().unwrap().to_owned());
    assert_eq!(
        w.node
            .req(
                "GET",
                "/v2/acme/private/manifests/v1",
                &api_token,
                Vec::new()
            )
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        judge(
            &w.node
                .req(
                    "POST",
                    "/v2/acme/private/blobs/uploads/",
                    &api_token,
                    Vec::new()
                )
                .await
        ),
        Want::Denied
    );
    assert_eq!(
        w.node
            .api("GET", "user", &api_token, serde_json::Value::Null)
            .await
            .json()["name"],
        "tom"
    );

    // Robot token regeneration revokes the old token.
    let olivia = basic("olivia", PW);
    let robot = w
        .actors
        .iter()
        .find(|(n, _)| *n == "robot")
        .map(|(_, c)| c.clone())
        .unwrap();
    let r = w
        .node
        .api(
            "POST",
            "organizations/acme/robots/ci/regenerate",
            &olivia,
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        judge(
            &w.node
                .req("GET", "/v2/acme/private/tags/list", &robot, Vec::new())
                .await
        ),
        Want::Unauth
    );
    let fresh = basic("acme+ci", r.json()["token"].as_str().unwrap());
    assert_eq!(
        w.node
            .req("GET", "/v2/acme/private/tags/list", &fresh, Vec::new())
            .await
            .status,
        StatusCode::OK
    );

    // The audit log saw logins, failures, the lock, pushes, permission changes.
    let r = w
        .node
        .api("GET", "audit?n=1000", &admin, serde_json::Value::Null)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let events = r.json()["events"].as_array().cloned().unwrap();
    for action in [
        "login",
        "login_failed",
        "account_locked",
        "login_locked",
        "account_unlock",
        "push",
        "permission_set",
        "robot_create",
        "robot_token_regenerate",
        "token_create",
        "access_denied",
    ] {
        assert!(
            events.iter().any(|e| e["action"] == action),
            "no {action} event"
        );
    }
    assert!(
        !String::from_utf8_lossy(&r.body).contains(PW),
        "a secret reached the audit log"
    );
    // Organization admins read their organization's events only.
    assert_eq!(
        w.node
            .api("GET", "audit?target=acme", &olivia, serde_json::Value::Null)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        judge(
            &w.node
                .api(
                    "GET",
                    "audit?target=globex",
                    &olivia,
                    serde_json::Value::Null
                )
                .await
        ),
        Want::Denied
    );
    // OpenAPI document is served.
    let r = w
        .node
        .req("GET", "/api/v1/openapi.json", &Cred::Anonymous, Vec::new())
        .await;
    assert_eq!(r.json()["openapi"], "3.0.3");
}
