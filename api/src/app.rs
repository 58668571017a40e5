//! The running state shared by every request: the log, the projections and the secrets.
use std::path::PathBuf;
use std::sync::Arc;

use drafting::Drafter;
use eventlog::{BlobStore, EventLog, Options};
use projections::mail_settings::MailSettingsRead;
use projections::messages::Messages;
use projections::signals::SignalsRead;
use projections::suppressions::{SuppressionIndex, SuppressionsProjector, SuppressionsRead};
use projections::templates::TemplatesRead;
use projections::{tenants::Tenants, Projections};
use workers::seal::MasterKey;

use crate::config::Config;
use crate::secrets::Secrets;
use crate::templates::TemplateCache;

/// Opens the event log of the configured data folder.
pub fn open_log(config: &Config) -> Result<EventLog, eventlog::Error> {
    let mut options = Options::new(config.secrets.payload_key());
    options.cache_capacity = config.cache_bytes;
    EventLog::open(&config.data_dir, options)
}

#[derive(Clone)]
pub struct App {
    pub log: EventLog,
    pub projections: Projections,
    pub tenants: Tenants,
    pub mail: MailSettingsRead,
    pub messages: Messages,
    /// Attachment bytes, by blake3 digest, beside the log.
    pub blobs: BlobStore,
    pub master_key: MasterKey,
    pub max_body_bytes: usize,
    pub templates: TemplatesRead,
    pub suppressions: SuppressionsRead,
    pub signal_counts: SignalsRead,
    /// Compiled template versions, shared by renders and sends.
    pub template_cache: TemplateCache,
    pub drafter: Arc<Drafter>,
    /// How to reach each language-model provider.
    pub llm: Arc<Vec<drafting::ProviderConfig>>,
    pub secrets: Secrets,
    /// Keyed hash of the operator token; `None` where no operator token is in play (the CLI
    /// working directly on the folder acts as the operator itself).
    pub operator_hash: Option<Arc<str>>,
    pub data_dir: PathBuf,
}

impl App {
    /// Opens the log and starts the projections. Must run inside a tokio runtime.
    pub fn open(config: &Config) -> Result<App, eventlog::Error> {
        let log = open_log(config)?;
        App::start(log, config)
    }

    /// Starts the projections over an opened log. Must run inside a tokio runtime.
    pub fn start(log: EventLog, config: &Config) -> Result<App, eventlog::Error> {
        // Loaded before the projections start, so that no event is applied meanwhile.
        let suppression_index =
            SuppressionIndex::open(&log).map_err(|e| eventlog::Error::Storage(e.to_string()))?;
        let projectors = projections::with_suppressions(SuppressionsProjector::with_index(
            suppression_index.clone(),
        ));
        let projections = Projections::start(log.clone(), projectors)
            .map_err(|e| eventlog::Error::Storage(e.to_string()))?;
        let model = |name: &str| {
            projections
                .model(name)
                .map_err(|e| eventlog::Error::Storage(e.to_string()))
        };
        let tenants = Tenants::new(model(projections::tenants::NAME)?);
        let mail = MailSettingsRead::new(model(projections::mail_settings::NAME)?);
        let messages = Messages::new(model(projections::messages::NAME)?);
        let templates = TemplatesRead::new(model(projections::templates::NAME)?);
        let suppressions = SuppressionsRead::with_index(
            model(projections::suppressions::NAME)?,
            suppression_index,
        );
        let signal_counts = SignalsRead::new(model(projections::signals::NAME)?);
        let blobs = BlobStore::open(&config.data_dir.join("blobs"))?;
        Ok(App {
            log,
            projections,
            tenants,
            mail,
            messages,
            blobs,
            master_key: MasterKey::from_bytes(config.master_key),
            max_body_bytes: config.max_body_bytes,
            templates,
            suppressions,
            signal_counts,
            template_cache: TemplateCache::default(),
            drafter: Arc::new(Drafter::new()),
            llm: Arc::new(config.llm.clone()),
            secrets: config.secrets.clone(),
            operator_hash: None,
            data_dir: config.data_dir.clone(),
        })
    }
}
