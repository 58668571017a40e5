//! The event contract used by the event log: each event is stored as
//! `(event_type, schema_version, payload)` where the payload is the JSON of the
//! inner payload struct. Old schema versions are upcast on `serde_json::Value`
//! before being deserialized into the current struct.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{DomainError, Result};
use crate::tenant::{
    ApiKeyIssued, ApiKeyRevoked, TenantCreated, TenantEvent, TenantReactivated, TenantRenamed,
    TenantSuspended,
};

/// Implemented by every domain event enum.
pub trait DomainEvent: Sized {
    /// Stable name, independent of the Rust path, e.g. "TenantCreated".
    fn event_type(&self) -> &'static str;
    /// Schema version that `encode` writes (the current one).
    fn schema_version(&self) -> u16;
    /// JSON bytes of the inner payload struct.
    fn encode(&self) -> Vec<u8>;
    /// Decodes any known (type, version), upcasting old versions to the current struct.
    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self>;
    /// One readable line for the audit timeline, e.g. "API key 'ci deploy' issued (role sender)".
    /// Must never contain the key_hash.
    fn summary(&self) -> String;
}

pub const TENANT_CREATED: &str = "TenantCreated";
pub const TENANT_RENAMED: &str = "TenantRenamed";
pub const TENANT_SUSPENDED: &str = "TenantSuspended";
pub const TENANT_REACTIVATED: &str = "TenantReactivated";
pub const API_KEY_ISSUED: &str = "ApiKeyIssued";
pub const API_KEY_REVOKED: &str = "ApiKeyRevoked";

const TENANT_EVENT_TYPES: &[&str] = &[
    TENANT_CREATED,
    TENANT_RENAMED,
    TENANT_SUSPENDED,
    TENANT_REACTIVATED,
    API_KEY_ISSUED,
    API_KEY_REVOKED,
];

/// All event type names of the tenant stream.
pub fn tenant_event_types() -> &'static [&'static str] {
    TENANT_EVENT_TYPES
}

/// Current schema version of a known tenant event type, `None` if unknown.
pub fn tenant_current_schema_version(event_type: &str) -> Option<u16> {
    match event_type {
        TENANT_CREATED | TENANT_RENAMED | TENANT_SUSPENDED | TENANT_REACTIVATED
        | API_KEY_REVOKED => Some(1),
        API_KEY_ISSUED => Some(2),
        _ => None,
    }
}

/// ApiKeyIssued v1 -> v2: v1 had no `role` and no `prefix`; they become
/// `"sender"` and `""`. Non-object values are returned unchanged (and will then
/// fail to deserialize as a malformed payload).
pub fn upcast_api_key_issued_v1(v: Value) -> Value {
    match v {
        Value::Object(mut map) => {
            map.insert("role".to_string(), Value::String("sender".to_string()));
            map.insert("prefix".to_string(), Value::String(String::new()));
            Value::Object(map)
        }
        other => other,
    }
}

pub(crate) fn to_json<T: Serialize>(payload: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail; stay panic-free regardless.
    serde_json::to_vec(payload).unwrap_or_default()
}

/// The check every aggregate whose events are all at schema version 1 makes before decoding:
/// the type must be one of `known`, and the version must be 1.
pub(crate) fn require_v1(event_type: &str, schema_version: u16, known: &[&str]) -> Result<()> {
    if !known.contains(&event_type) {
        return Err(unknown_type(event_type));
    }
    if schema_version != 1 {
        return Err(DomainError::UnsupportedSchemaVersion {
            event_type: event_type.to_string(),
            version: schema_version,
        });
    }
    Ok(())
}

pub(crate) fn unknown_type(event_type: &str) -> DomainError {
    DomainError::UnknownEventType {
        event_type: event_type.to_string(),
    }
}

fn malformed(event_type: &str, err: serde_json::Error) -> DomainError {
    DomainError::MalformedPayload {
        event_type: event_type.to_string(),
        reason: err.to_string(),
    }
}

pub(crate) fn from_json<T: DeserializeOwned>(event_type: &str, payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| malformed(event_type, e))
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TenantEvent::Created(_) => TENANT_CREATED,
            TenantEvent::Renamed(_) => TENANT_RENAMED,
            TenantEvent::Suspended(_) => TENANT_SUSPENDED,
            TenantEvent::Reactivated(_) => TENANT_REACTIVATED,
            TenantEvent::ApiKeyIssued(_) => API_KEY_ISSUED,
            TenantEvent::ApiKeyRevoked(_) => API_KEY_REVOKED,
        }
    }

    fn schema_version(&self) -> u16 {
        match self {
            TenantEvent::ApiKeyIssued(_) => 2,
            _ => 1,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            TenantEvent::Created(p) => to_json(p),
            TenantEvent::Renamed(p) => to_json(p),
            TenantEvent::Suspended(p) => to_json(p),
            TenantEvent::Reactivated(p) => to_json(p),
            TenantEvent::ApiKeyIssued(p) => to_json(p),
            TenantEvent::ApiKeyRevoked(p) => to_json(p),
        }
    }

    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self> {
        let current = tenant_current_schema_version(event_type).ok_or_else(|| {
            DomainError::UnknownEventType {
                event_type: event_type.to_string(),
            }
        })?;
        if schema_version == 0 || schema_version > current {
            return Err(DomainError::UnsupportedSchemaVersion {
                event_type: event_type.to_string(),
                version: schema_version,
            });
        }
        let t = event_type;
        Ok(match event_type {
            TENANT_CREATED => TenantEvent::Created(from_json::<TenantCreated>(t, payload)?),
            TENANT_RENAMED => TenantEvent::Renamed(from_json::<TenantRenamed>(t, payload)?),
            TENANT_SUSPENDED => TenantEvent::Suspended(from_json::<TenantSuspended>(t, payload)?),
            TENANT_REACTIVATED => {
                TenantEvent::Reactivated(from_json::<TenantReactivated>(t, payload)?)
            }
            API_KEY_ISSUED => {
                let issued: ApiKeyIssued = if schema_version == 1 {
                    let v1: Value = from_json(t, payload)?;
                    serde_json::from_value(upcast_api_key_issued_v1(v1))
                        .map_err(|e| malformed(t, e))?
                } else {
                    from_json(t, payload)?
                };
                TenantEvent::ApiKeyIssued(issued)
            }
            API_KEY_REVOKED => TenantEvent::ApiKeyRevoked(from_json::<ApiKeyRevoked>(t, payload)?),
            _ => {
                return Err(DomainError::UnknownEventType {
                    event_type: event_type.to_string(),
                })
            }
        })
    }

    fn summary(&self) -> String {
        match self {
            TenantEvent::Created(e) => format!("Tenant '{}' created", e.name),
            TenantEvent::Renamed(e) => format!("Tenant renamed to '{}'", e.name),
            TenantEvent::Suspended(e) if e.reason.is_empty() => "Tenant suspended".to_string(),
            TenantEvent::Suspended(e) => format!("Tenant suspended: {}", e.reason),
            TenantEvent::Reactivated(_) => "Tenant reactivated".to_string(),
            TenantEvent::ApiKeyIssued(e) => match e.expires_at {
                Some(at) => format!(
                    "API key '{}' issued (role {}, expires {})",
                    e.label,
                    e.role.as_str(),
                    at.to_rfc3339()
                ),
                None => format!("API key '{}' issued (role {})", e.label, e.role.as_str()),
            },
            TenantEvent::ApiKeyRevoked(e) => format!("API key {} revoked", e.key_id),
        }
    }
}
