//! Sender profiles, relays and the callback of each tenant, for the API: what a send checks
//! its `from` against, and what the relay and callback queries list. Secrets are not copied
//! here; a relay only says whether it has a password.
//!
//! Keys: `s/<tenant>/<sender id>` → [`SenderView`], `e/<tenant>/<email>` → sender id,
//! `r/<tenant>/<relay id>` → [`RelayView`], `c/<tenant>` → [`CallbackView`].
use domain::mail_settings::{MailSettingsEvent, MAIL_SETTINGS_STREAM};
use domain::DomainEvent;
use eventlog::RecordedEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{ModelRead, ModelWrite};
use crate::runner::Projector;

pub const NAME: &str = "mail_settings";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderView {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub reply_to: Option<String>,
    pub category: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayView {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: String,
    pub username: Option<String>,
    pub has_password: bool,
    pub priority: u32,
    pub max_connections: u32,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackView {
    pub url: String,
    pub updated_at_us: i64,
}

fn key(tag: u8, tenant: Uuid, id: &[u8]) -> Vec<u8> {
    let mut k = vec![tag, b'/'];
    k.extend_from_slice(tenant.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id);
    k
}

pub struct MailSettingsProjector;

impl Projector for MailSettingsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, e: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()> {
        if e.stream.kind != MAIL_SETTINGS_STREAM {
            return Ok(());
        }
        let event = MailSettingsEvent::decode(&e.event_type, e.schema_version, &e.payload)
            .map_err(|err| Error::Apply {
                projector: NAME.into(),
                position: e.position,
                reason: err.to_string(),
            })?;
        let t = e.tenant;
        let at = e.recorded_at_us;
        match event {
            MailSettingsEvent::SenderAdded(s) | MailSettingsEvent::SenderUpdated(s) => {
                let k = key(b's', t, s.id.as_bytes());
                let old: Option<SenderView> = model.get(&k)?;
                if let Some(o) = &old {
                    model.remove(&key(b'e', t, o.email.as_bytes()));
                }
                model.put(&key(b'e', t, s.email.as_bytes()), &s.id)?;
                model.put(
                    &k,
                    &SenderView {
                        id: s.id,
                        email: s.email,
                        name: s.name,
                        reply_to: s.reply_to,
                        category: s.category.as_str().to_string(),
                        created_at_us: old.map_or(at, |o| o.created_at_us),
                        updated_at_us: at,
                    },
                )?;
            }
            MailSettingsEvent::SenderRemoved(r) => {
                let k = key(b's', t, r.id.as_bytes());
                if let Some(o) = model.get::<SenderView>(&k)? {
                    model.remove(&key(b'e', t, o.email.as_bytes()));
                }
                model.remove(&k);
            }
            MailSettingsEvent::RelayAdded(r) | MailSettingsEvent::RelayUpdated(r) => {
                let k = key(b'r', t, r.id.as_bytes());
                let old: Option<RelayView> = model.get(&k)?;
                model.put(
                    &k,
                    &RelayView {
                        id: r.id,
                        name: r.name,
                        host: r.host,
                        port: r.port,
                        tls: r.tls.as_str().to_string(),
                        username: r.username,
                        has_password: r.password.is_some(),
                        priority: r.priority,
                        max_connections: r.max_connections,
                        per_minute: r.per_minute,
                        per_hour: r.per_hour,
                        per_day: r.per_day,
                        created_at_us: old.map_or(at, |o| o.created_at_us),
                        updated_at_us: at,
                    },
                )?;
            }
            MailSettingsEvent::RelayRemoved(r) => model.remove(&key(b'r', t, r.id.as_bytes())),
            MailSettingsEvent::CallbackSet(c) => model.put(
                &key(b'c', t, b""),
                &CallbackView {
                    url: c.url,
                    updated_at_us: at,
                },
            )?,
            MailSettingsEvent::CallbackCleared(_) => model.remove(&key(b'c', t, b"")),
        }
        Ok(())
    }
}

/// Queries over the model; every one is scoped to one tenant.
#[derive(Clone)]
pub struct MailSettingsRead {
    model: ModelRead,
}

impl MailSettingsRead {
    pub fn new(model: ModelRead) -> Self {
        MailSettingsRead { model }
    }

    pub fn senders(&self, tenant: Uuid) -> Result<Vec<SenderView>> {
        Ok(self
            .model
            .scan::<SenderView>(&key(b's', tenant, b""), None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub fn sender(&self, tenant: Uuid, id: Uuid) -> Result<Option<SenderView>> {
        self.model.get(&key(b's', tenant, id.as_bytes()))
    }

    /// The sender profile of a from address (any case).
    pub fn sender_by_email(&self, tenant: Uuid, email: &str) -> Result<Option<SenderView>> {
        let email = email.to_ascii_lowercase();
        match self
            .model
            .get::<Uuid>(&key(b'e', tenant, email.as_bytes()))?
        {
            Some(id) => self.sender(tenant, id),
            None => Ok(None),
        }
    }

    /// Relays in the order the dispatcher tries them.
    pub fn relays(&self, tenant: Uuid) -> Result<Vec<RelayView>> {
        let mut r: Vec<RelayView> = self
            .model
            .scan::<RelayView>(&key(b'r', tenant, b""), None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        r.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        Ok(r)
    }

    pub fn relay(&self, tenant: Uuid, id: Uuid) -> Result<Option<RelayView>> {
        self.model.get(&key(b'r', tenant, id.as_bytes()))
    }

    pub fn callback(&self, tenant: Uuid) -> Result<Option<CallbackView>> {
        self.model.get(&key(b'c', tenant, b""))
    }
}
