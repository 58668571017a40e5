//! Templates of each tenant with all their versions, for the API and for send-template.
//!
//! The model is the domain's own fold ([`domain::template::apply`]) kept per template, so
//! the read side can never disagree with the rules about which version is current.
//! Values are JSON (template defaults are free JSON, which bincode cannot carry).
//!
//! Keys: `t/<tenant>/<template key>` → JSON of [`Template`].
use domain::template::{apply, Template, TemplateEvent, TEMPLATE_STREAM};
use domain::DomainEvent;
use eventlog::RecordedEvent;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{ModelRead, ModelWrite};
use crate::runner::Projector;

pub const NAME: &str = "templates";

fn key(tenant: Uuid, template: &str) -> Vec<u8> {
    let mut k = b"t/".to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(b'/');
    k.extend_from_slice(template.as_bytes());
    k
}

fn corrupt(e: serde_json::Error) -> Error {
    Error::Corrupt(e.to_string())
}

pub struct TemplatesProjector;

impl Projector for TemplatesProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, e: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()> {
        if e.stream.kind != TEMPLATE_STREAM {
            return Ok(());
        }
        let event =
            TemplateEvent::decode(&e.event_type, e.schema_version, &e.payload).map_err(|err| {
                Error::Apply {
                    projector: NAME.into(),
                    position: e.position,
                    reason: err.to_string(),
                }
            })?;
        if matches!(
            event,
            TemplateEvent::DraftGenerated(_) | TemplateEvent::Rendered(_)
        ) {
            return Ok(());
        }
        let k = key(e.tenant, &e.stream.id);
        let mut state: Template = match model.get::<String>(&k)? {
            Some(json) => serde_json::from_str(&json).map_err(corrupt)?,
            None => Template::default(),
        };
        apply(&mut state, &event);
        model.put(&k, &serde_json::to_string(&state).map_err(corrupt)?)?;
        Ok(())
    }
}

/// Queries over the model; every one is scoped to one tenant.
#[derive(Clone)]
pub struct TemplatesRead {
    model: ModelRead,
}

impl TemplatesRead {
    pub fn new(model: ModelRead) -> Self {
        TemplatesRead { model }
    }

    pub fn get(&self, tenant: Uuid, template: &str) -> Result<Option<Template>> {
        match self.model.get::<String>(&key(tenant, template))? {
            Some(json) => serde_json::from_str(&json).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    /// Templates in key order, after the key `after`, at most `first`.
    pub fn list(&self, tenant: Uuid, after: Option<&str>, first: usize) -> Result<Vec<Template>> {
        let after = after.map(|a| key(tenant, a));
        self.model
            .scan::<String>(&key(tenant, ""), after.as_deref(), first)?
            .into_iter()
            .map(|(_, json)| serde_json::from_str(&json).map_err(corrupt))
            .collect()
    }
}
