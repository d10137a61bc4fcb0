//! Node configuration: defaults, overridden by `--config FILE` (TOML), then by `BERTH_*`
//! environment variables, then by flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use berth_registry::RegistryConfig;
use serde::Deserialize;

/// Flags of `berth serve`. Each also reads a `BERTH_*` variable; unset ones fall back to the
/// config file, then to the defaults.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "BERTH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for blobs and the metadata database [default: ./berth-data].
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Optional TOML configuration file.
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Pull through an upstream registry: `URL` (the default upstream) or `HOST=URL` (the
    /// upstream standing for registry HOST, e.g. `docker.io=http://127.0.0.1:6000`).
    /// Repeatable; replaces the config file's `[[upstream]]` list.
    #[arg(long = "upstream", env = "BERTH_UPSTREAM", value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// Extra trusted CA certificates (PEM bundle) for `https://` upstreams without a
    /// `ca_file` of their own; replaces the config file's `upstream_ca_file`.
    #[arg(long, env = "BERTH_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// Tracker announce URL written into served `.torrent` files.
    #[arg(long, env = "BERTH_TORRENT_ANNOUNCE")]
    pub torrent_announce: Option<String>,
    /// Seed public blobs over the BitTorrent peer protocol (`[bittorrent] seed = true`).
    #[arg(long, env = "BERTH_SEED")]
    pub seed: bool,
    /// TCP address for BitTorrent peers [default: 0.0.0.0:6881].
    #[arg(long, env = "BERTH_BITTORRENT_LISTEN")]
    pub bittorrent_listen: Option<SocketAddr>,
    /// Enable the peer layer, listening on these libp2p multiaddrs
    /// (e.g. `/ip4/127.0.0.1/tcp/4001`); replaces `[p2p] listen`.
    #[arg(long = "p2p-listen", env = "BERTH_P2P_LISTEN", value_delimiter = ',')]
    pub p2p_listen: Vec<String>,
    /// Peers to bootstrap from (multiaddrs); replaces `[p2p] bootstrap`.
    #[arg(
        long = "p2p-bootstrap",
        env = "BERTH_P2P_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub p2p_bootstrap: Vec<String>,
    /// Bandwidth cap in MiB/s of traffic with other nodes, each direction: blob fetches
    /// from peers/upstreams and blob responses to peers (`[p2p] rate_limit_mbps`).
    #[arg(long, env = "BERTH_RATE_LIMIT_MBPS")]
    pub rate_limit_mbps: Option<f64>,
    /// Disk I/O engine for blobs: auto (io_uring if available, else std), io_uring (or fail
    /// at start-up) or std; replaces `[storage] io_engine`.
    #[arg(long, env = "BERTH_IO_ENGINE")]
    pub io_engine: Option<berth_storage::IoEngineChoice>,
    /// Bandwidth cap in MiB/s of all blob responses, e.g. an origin's uplink
    /// (`[p2p] serve_rate_limit_mbps`).
    #[arg(long, env = "BERTH_SERVE_RATE_LIMIT_MBPS")]
    pub serve_rate_limit_mbps: Option<f64>,
    /// Test only: serve corrupt bytes on ranged blob reads (a lying peer).
    #[arg(long = "p2p-liar", hide = true)]
    pub p2p_liar: bool,
}

/// The whole node configuration, as read from a TOML file.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for blobs and the metadata database.
    pub data_dir: PathBuf,
    /// Seconds to let in-flight requests finish on shutdown.
    pub shutdown_grace_seconds: u64,
    /// The registry API's settings.
    pub registry: RegistryConfig,
    /// Upstream registries to pull through (empty: not a mirror).
    pub upstream: Vec<crate::upstream::UpstreamConfig>,
    /// Extra trusted CA certificates (PEM bundle) for upstreams without their own `ca_file`.
    pub upstream_ca_file: Option<PathBuf>,
    /// Tracker announce URL written into served `.torrent` files (none by default).
    pub torrent_announce: Option<String>,
    /// Garbage collection, tag expiry and the time machine.
    pub gc: berth_registry::api::GcConfig,
    /// The management API (`/api/v1`); `admin_token` also from `BERTH_ADMIN_TOKEN`.
    pub api: berth_registry::api::ApiConfig,
    /// Identity and access (`[auth]`; off by default). `BERTH_AUTH_ENABLED=true` turns it on.
    pub auth: berth_registry::auth::AuthConfig,
    /// BitTorrent seeding (`[bittorrent]`; off by default).
    pub bittorrent: crate::bittorrent::BitTorrentConfig,
    /// The peer layer (`[p2p]`; off unless `listen` is set).
    pub p2p: crate::p2p::P2pConfig,
    /// Blob storage (`[storage]`).
    pub storage: StorageConfig,
}

/// `[storage]`: how blob bytes reach the disk.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `auto` (default: io_uring if a probe ring works, else std with a warning),
    /// `io_uring` (start-up error if unavailable) or `std`.
    pub io_engine: berth_storage::IoEngineChoice,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./berth-data"),
            shutdown_grace_seconds: 30,
            registry: RegistryConfig::default(),
            upstream: Vec::new(),
            upstream_ca_file: None,
            torrent_announce: None,
            gc: Default::default(),
            api: Default::default(),
            auth: Default::default(),
            bittorrent: Default::default(),
            p2p: Default::default(),
            storage: Default::default(),
        }
    }
}

impl NodeConfig {
    /// Merges defaults, the config file, the environment and flags, then validates.
    pub fn load(args: ServeArgs) -> Result<NodeConfig> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => NodeConfig::default(),
        };
        if let Some(listen) = args.listen {
            config.listen = listen;
        }
        if let Some(dir) = args.data_dir {
            config.data_dir = dir;
        }
        if !args.upstream.is_empty() {
            config.upstream = args
                .upstream
                .iter()
                .map(|s| crate::upstream::UpstreamConfig::parse_flag(s))
                .collect::<Result<_>>()?;
        }
        if args.upstream_ca_file.is_some() {
            config.upstream_ca_file = args.upstream_ca_file;
        }
        if args.torrent_announce.is_some() {
            config.torrent_announce = args.torrent_announce;
        }
        config.bittorrent.seed |= args.seed;
        if !args.p2p_listen.is_empty() {
            config.p2p.listen = args.p2p_listen;
        }
        if !args.p2p_bootstrap.is_empty() {
            config.p2p.bootstrap = args.p2p_bootstrap;
        }
        if args.rate_limit_mbps.is_some() {
            config.p2p.rate_limit_mbps = args.rate_limit_mbps;
        }
        if args.serve_rate_limit_mbps.is_some() {
            config.p2p.serve_rate_limit_mbps = args.serve_rate_limit_mbps;
        }
        config.p2p.liar |= args.p2p_liar;
        if let Some(engine) = args.io_engine {
            config.storage.io_engine = engine;
        }
        if let Some(listen) = args.bittorrent_listen {
            config.bittorrent.listen = listen;
        }
        if let Some(token) = std::env::var("BERTH_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            config.api.admin_token = Some(token);
        }
        if let Ok(v) = std::env::var("BERTH_AUTH_ENABLED") {
            config.auth.enabled = matches!(v.as_str(), "1" | "true" | "yes");
        }
        config
            .auth
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!("data_dir must not be empty");
        }
        self.p2p.validate()?;
        crate::upstream::validate(&self.upstream, self.upstream_ca_file.as_deref())?;
        self.gc
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if self
            .api
            .admin_token
            .as_deref()
            .is_some_and(|t| t.len() < 16)
        {
            anyhow::bail!("invalid configuration: api.admin_token must be at least 16 characters");
        }
        self.bittorrent.validate()?;
        self.registry
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_refused() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("berth-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("berth.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:6000\"\ndata_dir = \"/tmp/x\"\n[registry]\npage_size_max = 5\n\
             [storage]\nio_engine = \"std\"\n",
        )?;
        let config = NodeConfig::load(ServeArgs {
            listen: Some("127.0.0.1:7000".parse()?),
            data_dir: None,
            config: Some(file.clone()),
            upstream: vec!["docker.io=http://127.0.0.1:6000".into()],
            upstream_ca_file: None,
            torrent_announce: None,
            seed: false,
            bittorrent_listen: None,
            p2p_listen: Vec::new(),
            p2p_bootstrap: Vec::new(),
            rate_limit_mbps: None,
            io_engine: Some(berth_storage::IoEngineChoice::IoUring),
            serve_rate_limit_mbps: None,
            p2p_liar: false,
        })?;
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.registry.page_size_max, 5);
        assert_eq!(config.upstream[0].host.as_deref(), Some("docker.io"));
        // `--io-engine` (or BERTH_IO_ENGINE) beats `[storage] io_engine`.
        assert_eq!(
            config.storage.io_engine,
            berth_storage::IoEngineChoice::IoUring
        );

        std::fs::write(&file, "lisen = \"127.0.0.1:6000\"\n")?;
        let err = NodeConfig::load(ServeArgs {
            listen: None,
            data_dir: None,
            config: Some(file),
            upstream: Vec::new(),
            upstream_ca_file: None,
            torrent_announce: None,
            seed: false,
            bittorrent_listen: None,
            p2p_listen: Vec::new(),
            p2p_bootstrap: Vec::new(),
            rate_limit_mbps: None,
            io_engine: None,
            serve_rate_limit_mbps: None,
            p2p_liar: false,
        })
        .expect_err("typo is refused");
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}
