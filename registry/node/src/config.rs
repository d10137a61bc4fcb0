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
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./berth-data"),
            shutdown_grace_seconds: 30,
            registry: RegistryConfig::default(),
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
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            anyhow::bail!("data_dir must not be empty");
        }
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
            "listen = \"127.0.0.1:6000\"\ndata_dir = \"/tmp/x\"\n[registry]\npage_size_max = 5\n",
        )?;
        let config = NodeConfig::load(ServeArgs {
            listen: Some("127.0.0.1:7000".parse()?),
            data_dir: None,
            config: Some(file.clone()),
        })?;
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.registry.page_size_max, 5);

        std::fs::write(&file, "lisen = \"127.0.0.1:6000\"\n")?;
        let err = NodeConfig::load(ServeArgs {
            listen: None,
            data_dir: None,
            config: Some(file),
        })
        .expect_err("typo is refused");
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}
