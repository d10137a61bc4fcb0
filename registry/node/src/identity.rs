//! `berth admin …`: `bootstrap` creates (or promotes) the first administrator in a data
//! directory (password from `BERTH_ADMIN_PASSWORD` or the first line of stdin, never from a
//! flag: flags show up in `ps`). The other subcommands are thin clients of a running node's
//! management API (`/api/v1`, `--node URL --token T` or `BERTH_NODE` / `BERTH_TOKEN`); they
//! print the API's JSON answer. Secrets they receive (robot tokens) go to stdout only.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// `berth admin …`.
#[derive(clap::Subcommand)]
pub enum AdminCmd {
    /// Create the first administrator (password from BERTH_ADMIN_PASSWORD or stdin).
    Bootstrap {
        /// The node's data directory.
        #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
        data_dir: PathBuf,
        /// The administrator's user name.
        #[arg(long)]
        user: String,
    },
    /// Organizations (`org create NAME`).
    Org {
        #[command(subcommand)]
        cmd: OrgCmd,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Teams (`team create ORG TEAM --role member|creator|admin [--ldap-group DN]`,
    /// `team add-member ORG TEAM USER`, `team remove-member ORG TEAM USER`).
    Team {
        #[command(subcommand)]
        cmd: TeamCmd,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Robot accounts (`robot create ORG NAME`: prints the token once).
    Robot {
        #[command(subcommand)]
        cmd: RobotCmd,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Repository permissions (`perm grant REPO --team T | --account A --role R`, `perm revoke …`).
    Perm {
        #[command(subcommand)]
        cmd: PermCmd,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Users (`user create NAME` with the password from BERTH_USER_PASSWORD or stdin).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Syncs LDAP-backed teams now (`POST /api/v1/ldap/sync`).
    LdapSync {
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// Where the management API is and how to authenticate to it.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's base URL (http only).
    #[arg(
        long,
        env = "BERTH_NODE",
        default_value = "http://127.0.0.1:5000",
        global = true
    )]
    node: String,
    /// An API token (`berth_…`, from `POST /api/v1/tokens`) sent as Bearer.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

/// `berth admin org …`.
#[derive(clap::Subcommand)]
pub enum OrgCmd {
    /// Create an organization (its `owners` team gets the caller).
    Create {
        /// Name.
        name: String,
    },
}

/// `berth admin team …`.
#[derive(clap::Subcommand)]
pub enum TeamCmd {
    /// Create or update a team.
    Create {
        /// Organization.
        org: String,
        /// Team name.
        team: String,
        /// member, creator or admin.
        #[arg(long, default_value = "member")]
        role: String,
        /// Sync membership from this LDAP group DN.
        #[arg(long)]
        ldap_group: Option<String>,
    },
    /// Add a user or robot to a team.
    AddMember {
        /// Organization.
        org: String,
        /// Team name.
        team: String,
        /// Account name.
        member: String,
    },
    /// Remove a member from a team.
    RemoveMember {
        /// Organization.
        org: String,
        /// Team name.
        team: String,
        /// Account name.
        member: String,
    },
}

/// `berth admin robot …`.
#[derive(clap::Subcommand)]
pub enum RobotCmd {
    /// Create robot `ORG+NAME`; prints its token (shown once).
    Create {
        /// Organization.
        org: String,
        /// Robot name (without `ORG+`).
        name: String,
    },
}

/// Who a permission is for.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct PermSubject {
    /// A team of the repository's organization.
    #[arg(long)]
    team: Option<String>,
    /// A user or robot (`org+name`).
    #[arg(long)]
    account: Option<String>,
}

/// `berth admin perm …`.
#[derive(clap::Subcommand)]
pub enum PermCmd {
    /// Grant read, write or admin on a repository.
    Grant {
        /// Repository, e.g. `acme/app`.
        repo: String,
        #[command(flatten)]
        subject: PermSubject,
        /// read, write or admin.
        #[arg(long)]
        role: String,
    },
    /// Revoke a direct permission.
    Revoke {
        /// Repository.
        repo: String,
        #[command(flatten)]
        subject: PermSubject,
    },
}

/// `berth admin user …`.
#[derive(clap::Subcommand)]
pub enum UserCmd {
    /// Create a local user (password from BERTH_USER_PASSWORD or stdin).
    Create {
        /// Name.
        name: String,
        /// Make it a superuser.
        #[arg(long)]
        superuser: bool,
    },
}

/// Reads a secret from `var` or the first line of stdin.
fn secret_from(var: &str) -> Result<String> {
    if let Ok(p) = std::env::var(var) {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Percent-encodes one path segment (`+` in robot names stays literal for the API).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'+' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Largest API answer printed.
const API_BODY_MAX: usize = 4 << 20;
/// Timeout of one API call.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One call to `/api/v1/<path>`; prints the answer, fails on a non-2xx status.
fn call(node: &NodeArgs, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<()> {
    use http_body_util::BodyExt as _;
    let token = node
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .context("an API token is required: --token or BERTH_TOKEN")?;
    let url = format!("{}/api/v1/{path}", node.node.trim_end_matches('/'));
    let uri: http::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "--node must be an http:// URL"
    );
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let resp = tokio::time::timeout(API_TIMEOUT, client.request(req))
            .await
            .context("the node did not answer in time")?
            .with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), API_BODY_MAX)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    })?;
    let text = String::from_utf8_lossy(&body);
    anyhow::ensure!(status.is_success(), "{method} {path}: {status} {text}");
    if text.trim().is_empty() {
        println!("ok ({status})");
    } else {
        println!("{}", text.trim());
    }
    Ok(())
}

fn subject_path(repo: &str, s: &PermSubject) -> String {
    match (&s.team, &s.account) {
        (Some(t), _) => format!("permissions/{repo}/teams/{}", seg(t)),
        (None, Some(a)) => format!("permissions/{repo}/accounts/{}", seg(a)),
        (None, None) => format!("permissions/{repo}"),
    }
}

/// Runs `berth admin …`.
pub fn admin(cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::Bootstrap { data_dir, user } => {
            let password = match std::env::var("BERTH_ADMIN_PASSWORD") {
                Ok(p) if !p.is_empty() => p,
                _ => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the password from stdin")?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let store = berth_storage::meta::identity_sqlite::SqliteIdentity::open(
                &data_dir.join("metadata.sqlite"),
            )
            .context("opening the identity tables")?;
            berth_registry::auth::bootstrap_admin(&store, &user, &password)
                .map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?;
            println!("administrator {user} is ready");
            Ok(())
        }
        AdminCmd::Org {
            cmd: OrgCmd::Create { name },
            node,
        } => call(
            &node,
            "POST",
            "organizations",
            Some(serde_json::json!({ "name": name })),
        ),
        AdminCmd::Team { cmd, node } => match cmd {
            TeamCmd::Create {
                org,
                team,
                role,
                ldap_group,
            } => call(
                &node,
                "PUT",
                &format!("organizations/{}/teams/{}", seg(&org), seg(&team)),
                Some(serde_json::json!({ "role": role, "ldap_group": ldap_group })),
            ),
            TeamCmd::AddMember { org, team, member } => call(
                &node,
                "PUT",
                &format!(
                    "organizations/{}/teams/{}/members/{}",
                    seg(&org),
                    seg(&team),
                    seg(&member)
                ),
                None,
            ),
            TeamCmd::RemoveMember { org, team, member } => call(
                &node,
                "DELETE",
                &format!(
                    "organizations/{}/teams/{}/members/{}",
                    seg(&org),
                    seg(&team),
                    seg(&member)
                ),
                None,
            ),
        },
        AdminCmd::Robot {
            cmd: RobotCmd::Create { org, name },
            node,
        } => call(
            &node,
            "POST",
            &format!("organizations/{}/robots", seg(&org)),
            Some(serde_json::json!({ "name": name })),
        ),
        AdminCmd::Perm { cmd, node } => match cmd {
            PermCmd::Grant {
                repo,
                subject,
                role,
            } => call(
                &node,
                "PUT",
                &subject_path(&repo, &subject),
                Some(serde_json::json!({ "role": role })),
            ),
            PermCmd::Revoke { repo, subject } => {
                call(&node, "DELETE", &subject_path(&repo, &subject), None)
            }
        },
        AdminCmd::User {
            cmd: UserCmd::Create { name, superuser },
            node,
        } => {
            let password = secret_from("BERTH_USER_PASSWORD")?;
            call(
                &node,
                "POST",
                "users",
                Some(
                    serde_json::json!({ "name": name, "password": password, "superuser": superuser }),
                ),
            )
        }
        AdminCmd::LdapSync { node } => call(&node, "POST", "ldap/sync", None),
    }
}
