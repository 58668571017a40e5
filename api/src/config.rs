//! Configuration: flags, then environment variables, then a TOML file, then defaults.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// sled page cache in MiB, for each of the two databases (the log and the read
    /// models); default 8. sled may hold up to about twice this; the hot data (recent
    /// messages) is small, and a larger cache mostly raises memory (BENCHMARKS.md).
    pub cache_mb: Option<u64>,
    /// 64 hex chars: the AES-256-GCM key that seals relay passwords and callback secrets in
    /// the log. Losing it makes them unreadable (re-enter them); production requires it.
    pub master_key: Option<String>,
    /// Largest REST request body in MiB (attachments travel base64-encoded inside it).
    pub max_body_mb: Option<u64>,
    /// Delays between delivery tries after a deferral, in milliseconds; the last repeats.
    pub retry_schedule_ms: Option<Vec<u64>>,
    /// A message still not sent this long after it was queued fails.
    pub max_age_secs: Option<u64>,
    /// Messages in flight at once.
    pub dispatch_concurrency: Option<usize>,
    /// Timeout of each SMTP connection and command, in milliseconds.
    pub smtp_timeout_ms: Option<u64>,
    /// The name the dispatcher gives in EHLO.
    pub hello_name: Option<String>,
    /// Delays between tries of a delivery report callback, in milliseconds; after the last
    /// one it gives up.
    pub callback_retry_schedule_ms: Option<Vec<u64>>,
    /// Language-model providers for template drafting: `[llm.openai]`, `[llm.anthropic]`,
    /// `[llm.deepseek]`. Keys may instead come from `POSTLEDGER_OPENAI_API_KEY`,
    /// `POSTLEDGER_ANTHROPIC_API_KEY` and `POSTLEDGER_DEEPSEEK_API_KEY`.
    pub llm: Option<BTreeMap<String, LlmProviderFile>>,
    /// The address recipients reach this server at (unsubscribe links), e.g.
    /// "https://mail.example.com". Default: `http://<listen>`.
    pub public_url: Option<String>,
    /// When set, marketing mail's `List-Unsubscribe` also offers
    /// `mailto:unsubscribe+<token>@<this domain>`.
    pub unsubscribe_mailto_domain: Option<String>,
    /// When set, mail is sent with the return path `bounces+<message id>@<this domain>`
    /// (VERP); pipe that domain's mail into `POST /api/v1/bounces/raw`.
    pub bounce_domain: Option<String>,
    /// A PEM file of extra CA certificates that relays' TLS certificates may chain to
    /// (STARTTLS and implicit TLS), beside the webpki roots: relays with a private CA.
    pub relay_ca_file: Option<PathBuf>,
}

/// One `[llm.<provider>]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmProviderFile {
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// How the workers behave; defaults suit production, tests shorten the schedules.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub retry_schedule: Vec<Duration>,
    pub max_age: Duration,
    pub concurrency: usize,
    pub smtp_timeout: Duration,
    pub hello_name: String,
    pub callback_retry_schedule: Vec<Duration>,
}

/// The configuration in force.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub secrets: Secrets,
    pub production: bool,
    pub cache_bytes: u64,
    pub master_key: [u8; 32],
    pub max_body_bytes: usize,
    pub delivery: DeliverySettings,
    /// How to reach each language-model provider (the dummy needs nothing).
    pub llm: Vec<drafting::ProviderConfig>,
    /// Base URL of the public pages (unsubscribe), without a trailing slash; `None` means
    /// `http://<the bound address>`.
    pub public_url: Option<String>,
    pub unsubscribe_mailto_domain: Option<String>,
    pub bounce_domain: Option<String>,
    /// `relay_ca_file`'s certificates (DER), read and checked at start.
    pub relay_roots: Vec<Vec<u8>>,
}

/// What the command line and environment said (clap fills both).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub pepper: Option<String>,
    pub master_key: Option<String>,
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
        let master_key = match o.master_key.clone().or(file.master_key) {
            Some(hex) => crate::secrets::master_key_from_hex(&hex)
                .context("the master key must be 64 hex characters")?,
            None if production => {
                bail!("production mode needs a master key (POSTLEDGER_MASTER_KEY or `master_key` in the config file); it refuses the generated development one")
            }
            None => crate::secrets::load_or_create_master_key(&data_dir)?,
        };
        let ms = |v: Vec<u64>| v.into_iter().map(Duration::from_millis).collect::<Vec<_>>();
        let retry_schedule = ms(file.retry_schedule_ms.unwrap_or_else(|| {
            vec![
                60_000, 300_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 14_400_000,
            ]
        }));
        if retry_schedule.is_empty() {
            bail!("retry_schedule_ms must name at least one delay");
        }
        let delivery = DeliverySettings {
            retry_schedule,
            max_age: Duration::from_secs(file.max_age_secs.unwrap_or(24 * 3600)),
            concurrency: file.dispatch_concurrency.unwrap_or(64).clamp(1, 1024),
            smtp_timeout: Duration::from_millis(file.smtp_timeout_ms.unwrap_or(30_000)),
            hello_name: file
                .hello_name
                .unwrap_or_else(|| "postledger.localhost".to_string()),
            callback_retry_schedule: ms(file.callback_retry_schedule_ms.unwrap_or_else(|| {
                vec![10_000, 60_000, 300_000, 1_800_000, 7_200_000, 21_600_000]
            })),
        };
        let mut llm_file = file.llm.unwrap_or_default();
        let mut llm = Vec::new();
        for kind in [
            drafting::ProviderKind::OpenAi,
            drafting::ProviderKind::Anthropic,
            drafting::ProviderKind::DeepSeek,
        ] {
            let mut p = drafting::ProviderConfig::defaults(kind);
            let f = llm_file.remove(kind.as_str()).unwrap_or_default();
            if let Some(u) = f.base_url {
                p.base_url = u;
            }
            if let Some(m) = f.model {
                p.model = m;
            }
            if let Some(t) = f.timeout_ms {
                p.timeout = Duration::from_millis(t);
            }
            let env = format!("POSTLEDGER_{}_API_KEY", kind.as_str().to_ascii_uppercase());
            p.api_key = std::env::var(env)
                .ok()
                .filter(|k| !k.is_empty())
                .or(f.api_key);
            llm.push(p);
        }
        if let Some(unknown) = llm_file.keys().next() {
            bail!("[llm.{unknown}] is not a provider (openai, anthropic, deepseek)");
        }
        Ok(Config {
            listen,
            data_dir,
            secrets,
            production,
            cache_bytes: file.cache_mb.unwrap_or(8).saturating_mul(1024 * 1024),
            master_key,
            max_body_bytes: usize::try_from(
                file.max_body_mb.unwrap_or(25).saturating_mul(1024 * 1024),
            )
            .unwrap_or(usize::MAX),
            delivery,
            llm,
            public_url: file.public_url.map(|u| u.trim_end_matches('/').to_string()),
            unsubscribe_mailto_domain: file.unsubscribe_mailto_domain,
            bounce_domain: file.bounce_domain,
            relay_roots: match &file.relay_ca_file {
                Some(path) => read_ca_file(path)?,
                None => Vec::new(),
            },
        })
    }
}

/// The certificates of `relay_ca_file`; an unreadable file or one without any certificate
/// stops the start, rather than TLS failing later at every send.
fn read_ca_file(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read relay_ca_file {}", path.display()))?;
    workers::smtp::roots_from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("relay_ca_file {}: {e}", path.display()))
}

fn read_file(p: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read config file {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))
}
