//! The tenants and API keys read model: what `tenant`, `apiKeys` and authentication read.
//!
//! Keys, all starting with the tenant where the data is the tenant's:
//! `t/<tenant>` → [`TenantView`], `k/<tenant>/<key>` → [`ApiKeyView`],
//! `h/<key hash>` → [`KeyRef`] (the authentication lookup: one point read per request).
use domain::{DomainEvent, TenantEvent, TENANT_STREAM};
use eventlog::RecordedEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{ModelRead, ModelWrite};
use crate::runner::Projector;

pub const NAME: &str = "tenants";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantView {
    pub id: Uuid,
    pub name: String,
    pub suspended: bool,
    pub suspended_reason: Option<String>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub tenant: Uuid,
    pub label: String,
    /// Public prefix of the secret, so a person can tell keys apart; never the secret.
    pub prefix: String,
    pub role: String,
    pub created_at_us: i64,
    pub expires_at_us: Option<i64>,
    pub revoked_at_us: Option<i64>,
    /// Keyed blake3 of the secret (hex); the secret itself is never stored.
    pub key_hash: String,
}

impl ApiKeyView {
    /// Whether the key authenticates at `now_us`.
    pub fn usable_at(&self, now_us: i64) -> bool {
        self.revoked_at_us.is_none() && self.expires_at_us.is_none_or(|e| now_us < e)
    }
}

/// Where an API key hash points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    pub tenant: Uuid,
    pub key: Uuid,
}

fn tenant_key(t: Uuid) -> Vec<u8> {
    let mut k = b"t/".to_vec();
    k.extend_from_slice(t.as_bytes());
    k
}

fn keys_prefix(t: Uuid) -> Vec<u8> {
    let mut k = b"k/".to_vec();
    k.extend_from_slice(t.as_bytes());
    k.push(b'/');
    k
}

fn api_key_key(t: Uuid, key: Uuid) -> Vec<u8> {
    let mut k = keys_prefix(t);
    k.extend_from_slice(key.as_bytes());
    k
}

fn hash_key(hex_hash: &str) -> Vec<u8> {
    let mut k = b"h/".to_vec();
    k.extend_from_slice(hex_hash.as_bytes());
    k
}

pub struct TenantsProjector;

impl Projector for TenantsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, e: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()> {
        if e.stream.kind != TENANT_STREAM
            || !domain::tenant_event_types().contains(&e.event_type.as_str())
        {
            return Ok(());
        }
        let event =
            TenantEvent::decode(&e.event_type, e.schema_version, &e.payload).map_err(|err| {
                Error::Apply {
                    projector: NAME.into(),
                    position: e.position,
                    reason: err.to_string(),
                }
            })?;
        let t = e.tenant;
        let at = e.recorded_at_us;
        let mut tenant: Option<TenantView> = model.get(&tenant_key(t))?;
        match event {
            TenantEvent::Created(c) => {
                tenant = Some(TenantView {
                    id: c.tenant_id.as_uuid(),
                    name: c.name,
                    suspended: false,
                    suspended_reason: None,
                    created_at_us: at,
                    updated_at_us: at,
                });
            }
            TenantEvent::Renamed(r) => {
                if let Some(v) = tenant.as_mut() {
                    v.name = r.name;
                }
            }
            TenantEvent::Suspended(s) => {
                if let Some(v) = tenant.as_mut() {
                    v.suspended = true;
                    v.suspended_reason = Some(s.reason);
                }
            }
            TenantEvent::Reactivated(_) => {
                if let Some(v) = tenant.as_mut() {
                    v.suspended = false;
                    v.suspended_reason = None;
                }
            }
            TenantEvent::ApiKeyIssued(k) => {
                let view = ApiKeyView {
                    id: k.key_id.as_uuid(),
                    tenant: t,
                    label: k.label,
                    prefix: k.prefix,
                    role: k.role.as_str().to_string(),
                    created_at_us: at,
                    expires_at_us: k.expires_at.map(|d| d.timestamp_micros()),
                    revoked_at_us: None,
                    key_hash: k.key_hash.to_ascii_lowercase(),
                };
                model.put(
                    &hash_key(&view.key_hash),
                    &KeyRef {
                        tenant: t,
                        key: view.id,
                    },
                )?;
                model.put(&api_key_key(t, view.id), &view)?;
            }
            TenantEvent::ApiKeyRevoked(r) => {
                let k = api_key_key(t, r.key_id.as_uuid());
                if let Some(mut view) = model.get::<ApiKeyView>(&k)? {
                    view.revoked_at_us = Some(at);
                    model.put(&k, &view)?;
                }
            }
        }
        if let Some(mut v) = tenant {
            v.updated_at_us = at;
            model.put(&tenant_key(t), &v)?;
        }
        Ok(())
    }
}

/// Queries over the model.
#[derive(Clone)]
pub struct Tenants {
    model: ModelRead,
}

impl Tenants {
    pub fn new(model: ModelRead) -> Self {
        Tenants { model }
    }

    pub fn get(&self, tenant: Uuid) -> Result<Option<TenantView>> {
        self.model.get(&tenant_key(tenant))
    }

    /// Every tenant, for operators.
    pub fn list(&self, after: Option<Uuid>, max: usize) -> Result<Vec<TenantView>> {
        let after = after.map(tenant_key);
        Ok(self
            .model
            .scan::<TenantView>(b"t/", after.as_deref(), max)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub fn api_keys(&self, tenant: Uuid) -> Result<Vec<ApiKeyView>> {
        Ok(self
            .model
            .scan::<ApiKeyView>(&keys_prefix(tenant), None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub fn api_key(&self, tenant: Uuid, key: Uuid) -> Result<Option<ApiKeyView>> {
        self.model.get(&api_key_key(tenant, key))
    }

    /// The key whose keyed hash is `hex_hash`, with its tenant.
    pub fn by_hash(&self, hex_hash: &str) -> Result<Option<(TenantView, ApiKeyView)>> {
        let Some(r) = self.model.get::<KeyRef>(&hash_key(hex_hash))? else {
            return Ok(None);
        };
        let (Some(t), Some(k)) = (self.get(r.tenant)?, self.api_key(r.tenant, r.key)?) else {
            return Ok(None);
        };
        Ok(Some((t, k)))
    }
}
