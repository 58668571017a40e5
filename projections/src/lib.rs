//! Projections: read models built from the event log.
//!
//! Layout:
//! - `runner`: the [`Projector`] trait, [`Projections`] (one task per projector following
//!   the log), lag, online and offline rebuild.
//! - `model`: [`ModelWrite`] (a batch's pending writes, read-your-own-writes) and
//!   [`ModelRead`] (queries).
//! - `tenants`: the tenants and API keys read model.
//! - `mail_settings`: sender profiles, relays (without secrets) and callbacks per tenant.
//! - `messages`: each message's current state and the filtered, newest-first listing.
//! - `templates`: each template with all its versions (the domain's own fold).
//! - `signals`: per-tenant counts of sends and signals (complaint and bounce rates).
//! - `suppressions`: suppression entries per tenant and global, matched exactly or
//!   plus/Gmail-normalised.
//!
//! **A projector's read-model update and its checkpoint are written in one atomic sled
//! batch on the projector's own tree, so a crash neither skips nor repeats an event.**
//! Read models are disposable: they can be dropped and rebuilt from the log at any time.
mod error;
pub mod mail_settings;
pub mod messages;
mod model;
mod runner;
pub mod signals;
pub mod suppressions;
pub mod templates;
pub mod tenants;

use std::sync::Arc;

pub use error::{Error, Result};
pub use model::{ModelRead, ModelWrite};
pub use runner::{rebuild_offline, ProjectionStatus, Projections, Projector, RebuildReport};

/// Every projector Postledger runs, in one place so the server and the CLI agree.
pub fn all() -> Vec<Arc<dyn Projector>> {
    with_suppressions(suppressions::SuppressionsProjector::default())
}

/// [`all`], with `suppressions` as the suppressions projector (the server's keeps the
/// in-memory index its look-ups use: [`suppressions::SuppressionIndex`]).
pub fn with_suppressions(
    suppressions: suppressions::SuppressionsProjector,
) -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(tenants::TenantsProjector),
        Arc::new(mail_settings::MailSettingsProjector),
        Arc::new(messages::MessagesProjector),
        Arc::new(templates::TemplatesProjector),
        Arc::new(suppressions),
        Arc::new(signals::SignalsProjector),
    ]
}

/// Looks a projector up by name.
pub fn by_name(name: &str) -> Option<Arc<dyn Projector>> {
    all().into_iter().find(|p| p.name() == name)
}
