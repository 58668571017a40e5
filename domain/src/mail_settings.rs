//! A tenant's mail settings: its sender profiles, its SMTP relays and its delivery-report
//! callback. They change rarely and are read on every send, so they form one small
//! aggregate per tenant on the stream [`MAIL_SETTINGS_STREAM`]` / <tenant id>`.
//!
//! Secrets (relay passwords, the callback signing secret) arrive here already sealed by
//! the caller: the domain never sees them in clear, so no event can carry them in clear.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{from_json, require_v1, to_json, unknown_type, DomainEvent};
use crate::error::{DomainError, FieldError, Result};
use crate::message::{valid_email, Category};

pub const MAIL_SETTINGS_STREAM: &str = "mail-settings";
pub const MAX_SENDERS: usize = 1000;
pub const MAX_RELAYS: usize = 20;

/// An address a tenant may send from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderProfile {
    pub id: Uuid,
    /// Lower-cased.
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub category: Category,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain SMTP (only sensible on a private network or loopback).
    None,
    /// Plain connect, then STARTTLS required.
    Starttls,
    /// TLS from the first byte (port 465 style).
    Tls,
}

impl TlsMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Starttls => "starttls",
            TlsMode::Tls => "tls",
        }
    }

    pub fn parse(s: &str) -> Option<TlsMode> {
        match s {
            "none" => Some(TlsMode::None),
            "starttls" => Some(TlsMode::Starttls),
            "tls" => Some(TlsMode::Tls),
            _ => None,
        }
    }
}

/// AES-256-GCM output, hex encoded; opened only by the dispatcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Sealed>,
    /// Lower is tried first.
    pub priority: u32,
    pub max_connections: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCallback {
    pub url: String,
    pub secret: Sealed,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MailSettingsCommand {
    PutSender(SenderProfile),
    RemoveSender { id: Uuid },
    PutRelay(Relay),
    RemoveRelay { id: Uuid },
    SetCallback(DeliveryCallback),
    ClearCallback,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbackCleared {}

#[derive(Clone, Debug, PartialEq)]
pub enum MailSettingsEvent {
    SenderAdded(SenderProfile),
    SenderUpdated(SenderProfile),
    SenderRemoved(Removed),
    RelayAdded(Relay),
    RelayUpdated(Relay),
    RelayRemoved(Removed),
    CallbackSet(DeliveryCallback),
    CallbackCleared(CallbackCleared),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MailSettings {
    pub senders: BTreeMap<Uuid, SenderProfile>,
    pub relays: BTreeMap<Uuid, Relay>,
    pub callback: Option<DeliveryCallback>,
}

impl MailSettings {
    /// The sender profile for a from address, matched without regard to case.
    pub fn sender_for(&self, email: &str) -> Option<&SenderProfile> {
        let email = email.to_ascii_lowercase();
        self.senders.values().find(|s| s.email == email)
    }

    /// Relays in the order the dispatcher tries them.
    pub fn relays_in_order(&self) -> Vec<&Relay> {
        let mut r: Vec<&Relay> = self.relays.values().collect();
        r.sort_by_key(|r| (r.priority, r.name.clone()));
        r
    }
}

pub fn apply(state: &mut MailSettings, event: &MailSettingsEvent) {
    match event {
        MailSettingsEvent::SenderAdded(s) | MailSettingsEvent::SenderUpdated(s) => {
            state.senders.insert(s.id, s.clone());
        }
        MailSettingsEvent::SenderRemoved(r) => {
            state.senders.remove(&r.id);
        }
        MailSettingsEvent::RelayAdded(r) | MailSettingsEvent::RelayUpdated(r) => {
            state.relays.insert(r.id, r.clone());
        }
        MailSettingsEvent::RelayRemoved(r) => {
            state.relays.remove(&r.id);
        }
        MailSettingsEvent::CallbackSet(c) => state.callback = Some(c.clone()),
        MailSettingsEvent::CallbackCleared(_) => state.callback = None,
    }
}

fn invalid(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

fn plain(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

fn check_sender(state: &MailSettings, s: &SenderProfile) -> Vec<FieldError> {
    let mut f = Vec::new();
    if !valid_email(&s.email) || s.email != s.email.to_ascii_lowercase() {
        f.push(invalid(
            "email",
            "is not a valid (lower-case) email address",
        ));
    } else if state
        .senders
        .values()
        .any(|o| o.email == s.email && o.id != s.id)
    {
        f.push(invalid("email", "another sender profile has this address"));
    }
    if let Some(n) = &s.name {
        if !plain(n, 200) {
            f.push(invalid("name", "must be 1..=200 characters"));
        }
    }
    if let Some(r) = &s.reply_to {
        if !valid_email(r) {
            f.push(invalid("reply_to", "is not a valid email address"));
        }
    }
    f
}

fn check_relay(state: &MailSettings, r: &Relay) -> Vec<FieldError> {
    let mut f = Vec::new();
    if !plain(&r.name, 100) {
        f.push(invalid("name", "must be 1..=100 characters"));
    } else if state
        .relays
        .values()
        .any(|o| o.name == r.name && o.id != r.id)
    {
        f.push(invalid("name", "another relay has this name"));
    }
    let host_ok = !r.host.is_empty()
        && r.host.len() <= 253
        && r.host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !host_ok {
        f.push(invalid("host", "must be a host name or an IP address"));
    }
    if r.port == 0 {
        f.push(invalid("port", "must be 1..=65535"));
    }
    if r.max_connections == 0 || r.max_connections > 100 {
        f.push(invalid("max_connections", "must be 1..=100"));
    }
    if let Some(u) = &r.username {
        if !plain(u, 256) {
            f.push(invalid("username", "must be 1..=256 characters"));
        }
    }
    if r.password.is_some() && r.username.is_none() {
        f.push(invalid("password", "a password needs a username"));
    }
    for (name, v) in [
        ("per_minute", r.per_minute),
        ("per_hour", r.per_hour),
        ("per_day", r.per_day),
    ] {
        if v == Some(0) {
            f.push(invalid(name, "must be at least 1 (or absent for no limit)"));
        }
    }
    f
}

/// An http(s) URL with a host; the callback worker will POST to it.
pub fn valid_callback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty()
                && url.len() <= 2048
                && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

pub fn decide(state: &MailSettings, cmd: MailSettingsCommand) -> Result<Vec<MailSettingsEvent>> {
    match cmd {
        MailSettingsCommand::PutSender(s) => {
            let fields = check_sender(state, &s);
            if !fields.is_empty() {
                return Err(DomainError::Validation { fields });
            }
            if state.senders.contains_key(&s.id) {
                Ok(vec![MailSettingsEvent::SenderUpdated(s)])
            } else if state.senders.len() >= MAX_SENDERS {
                Err(DomainError::Validation {
                    fields: vec![invalid(
                        "email",
                        "a tenant has at most 1000 sender profiles",
                    )],
                })
            } else {
                Ok(vec![MailSettingsEvent::SenderAdded(s)])
            }
        }
        MailSettingsCommand::RemoveSender { id } => {
            if !state.senders.contains_key(&id) {
                return Err(DomainError::SenderNotFound);
            }
            Ok(vec![MailSettingsEvent::SenderRemoved(Removed { id })])
        }
        MailSettingsCommand::PutRelay(r) => {
            let fields = check_relay(state, &r);
            if !fields.is_empty() {
                return Err(DomainError::Validation { fields });
            }
            if state.relays.contains_key(&r.id) {
                Ok(vec![MailSettingsEvent::RelayUpdated(r)])
            } else if state.relays.len() >= MAX_RELAYS {
                Err(DomainError::Validation {
                    fields: vec![invalid("name", "a tenant has at most 20 relays")],
                })
            } else {
                Ok(vec![MailSettingsEvent::RelayAdded(r)])
            }
        }
        MailSettingsCommand::RemoveRelay { id } => {
            if !state.relays.contains_key(&id) {
                return Err(DomainError::RelayNotFound);
            }
            Ok(vec![MailSettingsEvent::RelayRemoved(Removed { id })])
        }
        MailSettingsCommand::SetCallback(c) => {
            if !valid_callback_url(&c.url) {
                return Err(DomainError::Validation {
                    fields: vec![invalid("url", "must be an http:// or https:// URL")],
                });
            }
            Ok(vec![MailSettingsEvent::CallbackSet(c)])
        }
        MailSettingsCommand::ClearCallback => {
            if state.callback.is_none() {
                return Err(DomainError::CallbackNotSet);
            }
            Ok(vec![MailSettingsEvent::CallbackCleared(CallbackCleared {})])
        }
    }
}

pub const SENDER_ADDED: &str = "SenderProfileAdded";
pub const SENDER_UPDATED: &str = "SenderProfileUpdated";
pub const SENDER_REMOVED: &str = "SenderProfileRemoved";
pub const RELAY_ADDED: &str = "RelayAdded";
pub const RELAY_UPDATED: &str = "RelayUpdated";
pub const RELAY_REMOVED: &str = "RelayRemoved";
pub const CALLBACK_SET: &str = "DeliveryCallbackSet";
pub const CALLBACK_CLEARED: &str = "DeliveryCallbackCleared";

pub fn mail_settings_event_types() -> &'static [&'static str] {
    &[
        SENDER_ADDED,
        SENDER_UPDATED,
        SENDER_REMOVED,
        RELAY_ADDED,
        RELAY_UPDATED,
        RELAY_REMOVED,
        CALLBACK_SET,
        CALLBACK_CLEARED,
    ]
}

impl DomainEvent for MailSettingsEvent {
    fn event_type(&self) -> &'static str {
        match self {
            MailSettingsEvent::SenderAdded(_) => SENDER_ADDED,
            MailSettingsEvent::SenderUpdated(_) => SENDER_UPDATED,
            MailSettingsEvent::SenderRemoved(_) => SENDER_REMOVED,
            MailSettingsEvent::RelayAdded(_) => RELAY_ADDED,
            MailSettingsEvent::RelayUpdated(_) => RELAY_UPDATED,
            MailSettingsEvent::RelayRemoved(_) => RELAY_REMOVED,
            MailSettingsEvent::CallbackSet(_) => CALLBACK_SET,
            MailSettingsEvent::CallbackCleared(_) => CALLBACK_CLEARED,
        }
    }

    fn schema_version(&self) -> u16 {
        1
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            MailSettingsEvent::SenderAdded(p) | MailSettingsEvent::SenderUpdated(p) => to_json(p),
            MailSettingsEvent::SenderRemoved(p) | MailSettingsEvent::RelayRemoved(p) => to_json(p),
            MailSettingsEvent::RelayAdded(p) | MailSettingsEvent::RelayUpdated(p) => to_json(p),
            MailSettingsEvent::CallbackSet(p) => to_json(p),
            MailSettingsEvent::CallbackCleared(p) => to_json(p),
        }
    }

    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self> {
        require_v1(event_type, schema_version, mail_settings_event_types())?;
        let t = event_type;
        Ok(match event_type {
            SENDER_ADDED => MailSettingsEvent::SenderAdded(from_json(t, payload)?),
            SENDER_UPDATED => MailSettingsEvent::SenderUpdated(from_json(t, payload)?),
            SENDER_REMOVED => MailSettingsEvent::SenderRemoved(from_json(t, payload)?),
            RELAY_ADDED => MailSettingsEvent::RelayAdded(from_json(t, payload)?),
            RELAY_UPDATED => MailSettingsEvent::RelayUpdated(from_json(t, payload)?),
            RELAY_REMOVED => MailSettingsEvent::RelayRemoved(from_json(t, payload)?),
            CALLBACK_SET => MailSettingsEvent::CallbackSet(from_json(t, payload)?),
            CALLBACK_CLEARED => MailSettingsEvent::CallbackCleared(from_json(t, payload)?),
            _ => return Err(unknown_type(event_type)),
        })
    }

    fn summary(&self) -> String {
        match self {
            MailSettingsEvent::SenderAdded(s) => format!("Sender profile {} added", s.email),
            MailSettingsEvent::SenderUpdated(s) => format!("Sender profile {} updated", s.email),
            MailSettingsEvent::SenderRemoved(r) => format!("Sender profile {} removed", r.id),
            MailSettingsEvent::RelayAdded(r) => {
                format!("Relay '{}' added ({}:{})", r.name, r.host, r.port)
            }
            MailSettingsEvent::RelayUpdated(r) => {
                format!("Relay '{}' updated ({}:{})", r.name, r.host, r.port)
            }
            MailSettingsEvent::RelayRemoved(r) => format!("Relay {} removed", r.id),
            MailSettingsEvent::CallbackSet(c) => format!("Delivery callback set to {}", c.url),
            MailSettingsEvent::CallbackCleared(_) => "Delivery callback removed".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(id: u128, email: &str) -> SenderProfile {
        SenderProfile {
            id: Uuid::from_u128(id),
            email: email.into(),
            name: Some("News".into()),
            reply_to: None,
            category: Category::Transactional,
        }
    }

    fn relay(id: u128, name: &str, priority: u32) -> Relay {
        Relay {
            id: Uuid::from_u128(id),
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 2525,
            tls: TlsMode::None,
            username: None,
            password: None,
            priority,
            max_connections: 4,
            per_minute: None,
            per_hour: None,
            per_day: None,
        }
    }

    fn run(state: &mut MailSettings, cmd: MailSettingsCommand) -> Result<Vec<MailSettingsEvent>> {
        let events = decide(state, cmd)?;
        for e in &events {
            apply(state, e);
        }
        Ok(events)
    }

    #[test]
    fn senders_are_unique_by_address_and_updated_in_place() {
        let mut s = MailSettings::default();
        run(
            &mut s,
            MailSettingsCommand::PutSender(sender(1, "a@example.test")),
        )
        .unwrap();
        let dup = run(
            &mut s,
            MailSettingsCommand::PutSender(sender(2, "a@example.test")),
        );
        assert_eq!(dup.unwrap_err().code(), "VALIDATION_FAILED");
        let upd = run(
            &mut s,
            MailSettingsCommand::PutSender(sender(1, "b@example.test")),
        )
        .unwrap();
        assert!(matches!(upd[0], MailSettingsEvent::SenderUpdated(_)));
        assert!(s.sender_for("B@Example.test").is_some());
        assert!(s.sender_for("a@example.test").is_none());
        let upper = run(
            &mut s,
            MailSettingsCommand::PutSender(sender(3, "C@example.test")),
        );
        assert!(upper.is_err());
    }

    #[test]
    fn relays_are_validated_and_ordered_by_priority() {
        let mut s = MailSettings::default();
        run(
            &mut s,
            MailSettingsCommand::PutRelay(relay(1, "backup", 20)),
        )
        .unwrap();
        run(
            &mut s,
            MailSettingsCommand::PutRelay(relay(2, "primary", 10)),
        )
        .unwrap();
        let names: Vec<_> = s.relays_in_order().iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["primary", "backup"]);
        let mut bad = relay(3, "bad", 1);
        bad.port = 0;
        bad.max_connections = 0;
        bad.per_day = Some(0);
        let Err(DomainError::Validation { fields }) =
            run(&mut s, MailSettingsCommand::PutRelay(bad))
        else {
            panic!("expected validation errors")
        };
        assert_eq!(fields.len(), 3);
        assert_eq!(
            run(&mut s, MailSettingsCommand::RemoveRelay { id: Uuid::nil() })
                .unwrap_err()
                .code(),
            "RELAY_NOT_FOUND"
        );
    }

    #[test]
    fn callback_urls_must_be_http() {
        let mut s = MailSettings::default();
        let sealed = Sealed {
            nonce: "00".into(),
            ciphertext: "00".into(),
        };
        for bad in ["ftp://x", "http://", "javascript:alert(1)"] {
            let r = run(
                &mut s,
                MailSettingsCommand::SetCallback(DeliveryCallback {
                    url: bad.into(),
                    secret: sealed.clone(),
                }),
            );
            assert!(r.is_err(), "{bad}");
        }
        run(
            &mut s,
            MailSettingsCommand::SetCallback(DeliveryCallback {
                url: "http://127.0.0.1:9/hook".into(),
                secret: sealed,
            }),
        )
        .unwrap();
        run(&mut s, MailSettingsCommand::ClearCallback).unwrap();
        assert!(run(&mut s, MailSettingsCommand::ClearCallback).is_err());
    }

    #[test]
    fn events_round_trip() {
        for e in [
            MailSettingsEvent::SenderAdded(sender(1, "a@example.test")),
            MailSettingsEvent::RelayUpdated(relay(1, "r", 1)),
            MailSettingsEvent::RelayRemoved(Removed { id: Uuid::nil() }),
            MailSettingsEvent::CallbackCleared(CallbackCleared {}),
        ] {
            let back =
                MailSettingsEvent::decode(e.event_type(), e.schema_version(), &e.encode()).unwrap();
            assert_eq!(back, e);
        }
    }
}
