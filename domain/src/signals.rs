//! Delivery signals that come back after sending: provider webhooks (delivered, bounced,
//! complained, opened, clicked, unsubscribed) and bounce messages (RFC 3464).
//!
//! - [`SIGNAL_SETTINGS_STREAM`]` / <tenant>`: how the tenant's inbound webhooks are checked
//!   (signature mode, sealed secret, replay window) and whether addresses match with
//!   plus/Gmail normalisation.
//! - [`WEBHOOK_LOG_STREAM`]` / <tenant>`: every webhook or bounce call as received (the
//!   payload, the signature verdict, what came of it), so an operator can list and replay.
//! - [`MESSAGE_SIGNAL_STREAM`]` / <message id>`: the signals of one message; a provider's
//!   event id is recorded there once (the append is checked against the stream).
//! - [`UNMATCHED_SIGNAL_STREAM`]` / <event key>`: a signal whose message is unknown; the
//!   stream per event key makes a duplicate impossible.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{from_json, require_v1, to_json, unknown_type, DomainEvent};
use crate::error::{DomainError, FieldError, Result};
use crate::mail_settings::Sealed;

pub const SIGNAL_SETTINGS_STREAM: &str = "signal-settings";
pub const WEBHOOK_LOG_STREAM: &str = "webhook-log";
pub const MESSAGE_SIGNAL_STREAM: &str = "message-signal";
pub const UNMATCHED_SIGNAL_STREAM: &str = "unmatched-signal";
/// Largest webhook payload kept inline in the webhook log; bigger ones are refused.
pub const MAX_WEBHOOK_PAYLOAD: usize = 48 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureMode {
    /// Not checked.
    Off,
    /// Checked and recorded; a bad signature is still accepted.
    Warn,
    /// A missing or bad signature is refused (401).
    Enforce,
}

impl SignatureMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            SignatureMode::Off => "off",
            SignatureMode::Warn => "warn",
            SignatureMode::Enforce => "enforce",
        }
    }

    pub fn parse(s: &str) -> Option<SignatureMode> {
        match s {
            "off" => Some(SignatureMode::Off),
            "warn" => Some(SignatureMode::Warn),
            "enforce" => Some(SignatureMode::Enforce),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalSettings {
    /// `a+x@example.com` matches `a@example.com`; dots do not count at gmail.com.
    pub plus_addressing: bool,
    pub signature_mode: SignatureMode,
    /// HMAC-SHA256 secret of inbound webhooks, sealed under the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Sealed>,
    /// Replay window: a signed timestamp further than this from now is refused.
    pub tolerance_secs: u32,
}

impl Default for SignalSettings {
    fn default() -> Self {
        SignalSettings {
            plus_addressing: false,
            signature_mode: SignatureMode::Off,
            webhook_secret: None,
            tolerance_secs: 300,
        }
    }
}

/// What a signal says, as Postledger understands it whatever the provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalKind {
    Delivered,
    Bounced {
        hard: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        smtp_status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        diagnostic: Option<String>,
    },
    Complained,
    Opened,
    Clicked {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    Unsubscribed,
}

impl SignalKind {
    pub fn name(&self) -> &'static str {
        match self {
            SignalKind::Delivered => "delivered",
            SignalKind::Bounced { hard: true, .. } => "hard_bounce",
            SignalKind::Bounced { hard: false, .. } => "soft_bounce",
            SignalKind::Complained => "complained",
            SignalKind::Opened => "opened",
            SignalKind::Clicked { .. } => "clicked",
            SignalKind::Unsubscribed => "unsubscribed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReceived {
    /// `generic`, `postmark`, `sendgrid`, `mailgun`, `ses` or `dsn`.
    pub provider: String,
    pub provider_event_id: String,
    #[serde(flatten)]
    pub kind: SignalKind,
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
    /// The RFC 5322 Message-ID the provider reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    pub raw_type: String,
    /// The webhook-log entry it came from.
    pub webhook_id: Uuid,
    pub received_at: DateTime<Utc>,
}

/// One call to a webhook or bounce endpoint, as received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookReceived {
    pub webhook_id: Uuid,
    pub provider: String,
    /// `ok`, `missing`, `malformed`, `expired`, `mismatch` or `not_checked`.
    pub signature: String,
    /// `accepted` or `rejected`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Signals recorded, duplicates skipped, signals whose message is unknown.
    pub recorded: u32,
    pub duplicates: u32,
    pub unmatched: u32,
    /// The body as received (UTF-8, lossy); empty for a rejected call, which records nothing
    /// but the rejection.
    #[serde(default)]
    pub payload: String,
    /// A replay of an earlier entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Uuid>,
    pub received_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SignalEvent {
    SettingsSet(SignalSettings),
    WebhookReceived(Box<WebhookReceived>),
    SignalReceived(Box<SignalReceived>),
}

pub const SIGNAL_SETTINGS_SET: &str = "SignalSettingsSet";
pub const WEBHOOK_RECEIVED: &str = "WebhookReceived";
pub const SIGNAL_RECEIVED: &str = "SignalReceived";
const TYPES: &[&str] = &[SIGNAL_SETTINGS_SET, WEBHOOK_RECEIVED, SIGNAL_RECEIVED];

pub fn check_settings(s: &SignalSettings) -> Result<()> {
    let mut f = Vec::new();
    if !(1..=86_400).contains(&s.tolerance_secs) {
        f.push(FieldError {
            field: "tolerance_secs".into(),
            message: "must be 1..=86400".into(),
        });
    }
    if s.signature_mode != SignatureMode::Off && s.webhook_secret.is_none() {
        f.push(FieldError {
            field: "signature_mode".into(),
            message: "checking signatures needs a webhook secret".into(),
        });
    }
    if f.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Validation { fields: f })
    }
}

pub fn apply_settings(state: &mut SignalSettings, event: &SignalEvent) {
    if let SignalEvent::SettingsSet(s) = event {
        *state = s.clone();
    }
}

/// The provider event ids already recorded on a message's signal stream.
pub type SeenSignals = Vec<String>;

pub fn apply_seen(seen: &mut SeenSignals, event: &SignalEvent) {
    if let SignalEvent::SignalReceived(s) = event {
        seen.push(s.provider_event_id.clone());
    }
}

/// A signal is recorded on its message's stream once per provider event id.
pub fn record_signal(already: &[String], signal: SignalReceived) -> Result<Vec<SignalEvent>> {
    if already.contains(&signal.provider_event_id) {
        return Ok(vec![]);
    }
    Ok(vec![SignalEvent::SignalReceived(Box::new(signal))])
}

impl DomainEvent for SignalEvent {
    fn event_type(&self) -> &'static str {
        match self {
            SignalEvent::SettingsSet(_) => SIGNAL_SETTINGS_SET,
            SignalEvent::WebhookReceived(_) => WEBHOOK_RECEIVED,
            SignalEvent::SignalReceived(_) => SIGNAL_RECEIVED,
        }
    }

    fn schema_version(&self) -> u16 {
        1
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            SignalEvent::SettingsSet(p) => to_json(p),
            SignalEvent::WebhookReceived(p) => to_json(p),
            SignalEvent::SignalReceived(p) => to_json(p),
        }
    }

    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self> {
        require_v1(event_type, schema_version, TYPES)?;
        let t = event_type;
        Ok(match event_type {
            SIGNAL_SETTINGS_SET => SignalEvent::SettingsSet(from_json(t, payload)?),
            WEBHOOK_RECEIVED => SignalEvent::WebhookReceived(from_json(t, payload)?),
            SIGNAL_RECEIVED => SignalEvent::SignalReceived(from_json(t, payload)?),
            _ => return Err(unknown_type(event_type)),
        })
    }

    fn summary(&self) -> String {
        match self {
            SignalEvent::SettingsSet(s) => format!(
                "Signal settings: signatures {}, plus addressing {}",
                s.signature_mode.as_str(),
                if s.plus_addressing { "on" } else { "off" }
            ),
            SignalEvent::WebhookReceived(w) => format!(
                "Webhook from {} {} (signature {}): {} recorded, {} duplicate, {} unmatched",
                w.provider, w.outcome, w.signature, w.recorded, w.duplicates, w.unmatched
            ),
            SignalEvent::SignalReceived(s) => format!(
                "{} reported by {} for {}",
                s.kind.name(),
                s.provider,
                crate::suppression::mask(&s.recipient)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_event_is_recorded_once() {
        let s = SignalReceived {
            provider: "postmark".into(),
            provider_event_id: "Bounce:1".into(),
            kind: SignalKind::Bounced {
                hard: true,
                smtp_status: Some("5.1.1".into()),
                diagnostic: None,
            },
            recipient: "a@example.com".into(),
            message_id: None,
            rfc_message_id: None,
            occurred_at: None,
            raw_type: "HardBounce".into(),
            webhook_id: Uuid::nil(),
            received_at: Utc::now(),
        };
        let ev = record_signal(&[], s.clone()).unwrap();
        assert_eq!(ev.len(), 1);
        let back = SignalEvent::decode(ev[0].event_type(), 1, &ev[0].encode()).unwrap();
        assert_eq!(back, ev[0]);
        assert!(record_signal(&["Bounce:1".into()], s).unwrap().is_empty());
    }

    #[test]
    fn enforcing_signatures_needs_a_secret() {
        let s = SignalSettings {
            signature_mode: SignatureMode::Enforce,
            ..SignalSettings::default()
        };
        assert_eq!(check_settings(&s).unwrap_err().code(), "VALIDATION_FAILED");
        assert!(check_settings(&SignalSettings::default()).is_ok());
    }
}
