//! Configuration: flags, then environment variables, then a TOML file, then defaults.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::secrets::Secrets;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_CONFIG_FILE: &str = "postledger.toml";

/// The optional configuration file (`--config`, `POSTLEDGER_CONFIG`, or `./postledger.toml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address the server listens on, e.g. "127.0.0.1:8080".
    pub listen: Option<String>,
    /// Folder holding the log, read models and secrets.
    pub data_dir: Option<PathBuf>,
    /// 64 hex chars: the server pepper that keys API key hashes and payload digests. Changing
    /// it invalidates every issued API key.
    pub pepper: Option<String>,
    /// Refuse development defaults (a generated pepper).
    pub production: Option<bool>,
    /// sled page cache in MiB.
    pub cache_mb: Option<u64>,
}

/// The configuration in force.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub secrets: Secrets,
    pub production: bool,
    pub cache_bytes: u64,
}

/// What the command line and environment said (clap fills both).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub pepper: Option<String>,
    pub production: bool,
}

impl Config {
    pub fn load(o: &Overrides) -> anyhow::Result<Config> {
        let file = match &o.config {
            Some(p) => read_file(p)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                read_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => FileConfig::default(),
        };
        let listen = o
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("listen address {listen:?} is not host:port"))?;
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let production = o.production || file.production.unwrap_or(false);
        let pepper = o.pepper.clone().or(file.pepper);
        let secrets = match pepper {
            Some(hex) => Secrets::from_hex(&hex).context("the pepper must be 64 hex characters")?,
            None if production => {
                bail!("production mode needs a pepper (POSTLEDGER_PEPPER or `pepper` in the config file); it refuses the generated development one")
            }
            None => Secrets::load_or_create(&data_dir)?,
        };
        Ok(Config {
            listen,
            data_dir,
            secrets,
            production,
            cache_bytes: file.cache_mb.unwrap_or(64).saturating_mul(1024 * 1024),
        })
    }
}

fn read_file(p: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read config file {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))
}
