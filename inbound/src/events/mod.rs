//! Delivery events that email providers report back, in one shape.
//!
//! Why: Postledger may hand mail to a relay provider (Postmark, SendGrid, Mailgun, Amazon
//! SES) or to its own relays, and every one of them reports deliveries, bounces,
//! complaints, opens, clicks and unsubscribes in its own webhook format. Suppressions and
//! message state must not care which: [`normalise`] turns one webhook body into
//! [`InboundEvent`]s. It is pure: no IO, no clock (a missing event time stays `None`).
//!
//! Rules common to every provider:
//! * `recipient` is [`crate::address::normalise`]d without plus-addressing (trimmed,
//!   lower-cased, display name and angle brackets removed); an implausible recipient makes
//!   the payload `Malformed`.
//! * `provider_event_id` is the provider's own event id where it has one, otherwise the
//!   SHA-256 hex of the provider name and the canonical JSON of the provider's event object
//!   (plus the recipient index when one object yields several events). The same body
//!   always yields the same ids, so retried webhooks deduplicate.
//! * [`MessageRef::postledger_id`] is our message id (a UUID, returned hyphenated and
//!   lower-case) from, in order: the provider's metadata / custom-argument field
//!   `postledger_message_id`, the `X-Postledger-Message-Id` header where the provider echoes
//!   headers, or the local part of a `<uuid@domain>` Message-ID. Values that are not UUIDs
//!   are ignored rather than trusted.
//! * Errors never quote a recipient address.
//!
//! Per-provider mappings are documented in each submodule.

mod generic;
pub(crate) mod json;
mod mailgun;
mod postmark;
mod sendgrid;
mod ses;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where an inbound event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Postledger's own documented webhook format (for relays and tools of the tenant's).
    Generic,
    Postmark,
    SendGrid,
    Mailgun,
    /// Amazon SES notifications, through SNS or bare.
    Ses,
    /// An RFC 3464 bounce message received by mail (see [`crate::dsn`]).
    Dsn,
}

impl Provider {
    /// Every provider, in declaration order.
    pub const ALL: [Provider; 6] = [
        Provider::Generic,
        Provider::Postmark,
        Provider::SendGrid,
        Provider::Mailgun,
        Provider::Ses,
        Provider::Dsn,
    ];

    /// The stable lower-case name (also the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Generic => "generic",
            Provider::Postmark => "postmark",
            Provider::SendGrid => "sendgrid",
            Provider::Mailgun => "mailgun",
            Provider::Ses => "ses",
            Provider::Dsn => "dsn",
        }
    }

    /// The provider named `name` (case-insensitive), or `None`.
    pub fn parse(name: &str) -> Option<Provider> {
        let name = name.trim();
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    Delivered,
    /// `hard`: the address is not deliverable (suppress it); otherwise a temporary failure.
    Bounced {
        hard: bool,
        /// RFC 3463 enhanced status code (`5.1.1`) when known.
        smtp_status: Option<String>,
        diagnostic: Option<String>,
    },
    Complained,
    Opened,
    Clicked {
        url: Option<String>,
    },
    Unsubscribed,
}

impl EventKind {
    /// The stable snake_case name (the serde tag).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Bounced { .. } => "bounced",
            EventKind::Complained => "complained",
            EventKind::Opened => "opened",
            EventKind::Clicked { .. } => "clicked",
            EventKind::Unsubscribed => "unsubscribed",
        }
    }
}

/// Which message an event is about, as far as the provider tells.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// Our message id (hyphenated lower-case UUID).
    pub postledger_id: Option<String>,
    /// The RFC 5322 Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// The provider's own id for the message (Postmark `MessageID`, SendGrid
    /// `sg_message_id`, SES `mail.messageId`), which is not a Message-ID.
    pub provider_message_id: Option<String>,
}

impl MessageRef {
    /// Builds a reference: `postledger_id` from the first of `explicit` that is a UUID,
    /// otherwise from a `<uuid@domain>` `message_id`.
    pub(crate) fn build<'a>(
        explicit: impl IntoIterator<Item = Option<&'a str>>,
        message_id: Option<&str>,
        provider_message_id: Option<&str>,
    ) -> MessageRef {
        let message_id = message_id.and_then(clean_message_id);
        let postledger_id = explicit
            .into_iter()
            .flatten()
            .find_map(parse_uuid)
            .or_else(|| {
                message_id
                    .as_deref()
                    .and_then(postledger_id_from_message_id)
            });
        MessageRef {
            postledger_id,
            message_id,
            provider_message_id: provider_message_id
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        }
    }
}

/// A Message-ID without surrounding whitespace and angle brackets; `None` if empty.
pub(crate) fn clean_message_id(raw: &str) -> Option<String> {
    let id = raw.trim();
    let id = id.strip_prefix('<').unwrap_or(id);
    let id = id.strip_suffix('>').unwrap_or(id).trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// `value` as a hyphenated lower-case UUID, or `None`.
pub(crate) fn parse_uuid(value: &str) -> Option<String> {
    let value = value.trim();
    if value.len() != 32 && value.len() != 36 {
        return None;
    }
    Uuid::try_parse(value)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// Our id from a Message-ID of the form `uuid@domain` (how Postledger writes them).
pub fn postledger_id_from_message_id(message_id: &str) -> Option<String> {
    let id = clean_message_id(message_id)?;
    let (local, domain) = id.split_once('@')?;
    if domain.is_empty() {
        return None;
    }
    parse_uuid(local)
}

/// One delivery event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundEvent {
    pub provider: Provider,
    /// Stable id for deduplication (see the module docs).
    pub provider_event_id: String,
    pub kind: EventKind,
    /// Normalised recipient (lower-case, no display name).
    pub recipient: String,
    pub message: MessageRef,
    pub occurred_at: Option<DateTime<Utc>>,
    /// The provider's own name for the event type (`Bounce`, `bounce`, `failed`, …).
    pub raw_type: String,
}

/// Why a body could not be turned into events.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// Not valid for the provider: not JSON, wrong types, missing required fields, an empty
    /// batch, broken MIME, not a DSN.
    #[error("malformed inbound payload: {message}")]
    Malformed { message: String },
    /// A well-formed event of a type Postledger does not act on (Mailgun `accepted`, SES
    /// `Send`, a Postmark auto-responder, …). Callers usually acknowledge and drop it.
    #[error("unsupported inbound event type {raw_type:?}")]
    UnsupportedEvent { raw_type: String },
    /// An Amazon SNS subscription confirmation. Nothing is fetched here: the caller reports
    /// the URL so an operator (or a deliberate step) can confirm the subscription.
    #[error("SNS subscription confirmation; confirm at {subscribe_url}")]
    SubscriptionConfirmation { subscribe_url: String },
}

impl InboundError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            InboundError::Malformed { .. } => "INBOUND_MALFORMED",
            InboundError::UnsupportedEvent { .. } => "INBOUND_UNSUPPORTED_EVENT",
            InboundError::SubscriptionConfirmation { .. } => "INBOUND_SUBSCRIPTION_CONFIRMATION",
        }
    }

    pub(crate) fn malformed(message: impl Into<String>) -> InboundError {
        InboundError::Malformed {
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(raw_type: &str) -> InboundError {
        // The type comes from the payload: keep it short in case it is junk.
        let raw_type: String = raw_type.chars().take(64).collect();
        InboundError::UnsupportedEvent { raw_type }
    }
}

/// The events in one webhook `body` from `provider`.
///
/// `Ok(vec![])` is possible only for batches whose every event is one Postledger ignores
/// (a SendGrid batch of `processed` events); an empty batch itself is `Malformed`.
/// `Provider::Dsn` parses `body` as a raw RFC 3464 message ([`crate::dsn::parse_dsn`]).
pub fn normalise(provider: Provider, body: &[u8]) -> Result<Vec<InboundEvent>, InboundError> {
    if provider == Provider::Dsn {
        let dsn = crate::dsn::parse_dsn(body)?;
        return Ok(crate::dsn::to_events(&dsn));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| InboundError::malformed(format!("{provider}: body is not JSON ({e})")))?;
    match provider {
        Provider::Generic => generic::parse(&value),
        Provider::Postmark => postmark::parse(&value),
        Provider::SendGrid => sendgrid::parse(&value),
        Provider::Mailgun => mailgun::parse(&value),
        Provider::Ses => ses::parse(&value),
        Provider::Dsn => Err(InboundError::malformed("dsn: not a JSON provider")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.as_str())
            );
        }
        assert_eq!(Provider::parse("SendGrid"), Some(Provider::SendGrid));
        assert_eq!(Provider::SendGrid.as_str(), "sendgrid");
        assert_eq!(Provider::parse("sparkpost"), None);
    }

    #[test]
    fn event_kind_serde_shape() {
        let k = EventKind::Bounced {
            hard: true,
            smtp_status: Some("5.1.1".into()),
            diagnostic: None,
        };
        assert_eq!(
            serde_json::to_value(&k).unwrap(),
            serde_json::json!({"kind": "bounced", "hard": true, "smtp_status": "5.1.1", "diagnostic": null})
        );
        assert_eq!(
            serde_json::to_value(EventKind::Delivered).unwrap(),
            serde_json::json!({"kind": "delivered"})
        );
        assert_eq!(k.name(), "bounced");
    }

    #[test]
    fn postledger_id_from_message_ids() {
        let id = "0190c5a4-7b1e-7c3d-9f00-1234567890ab";
        assert_eq!(
            postledger_id_from_message_id(&format!("<{id}@mail.example>")).as_deref(),
            Some(id)
        );
        assert_eq!(
            postledger_id_from_message_id(&format!("<{}@mail.example>", id.to_uppercase()))
                .as_deref(),
            Some(id)
        );
        assert_eq!(postledger_id_from_message_id(&format!("<{id}>")), None);
        assert_eq!(
            postledger_id_from_message_id("<20130503182626.18666.16540@sandbox.mailgun.org>"),
            None
        );
        assert_eq!(
            postledger_id_from_message_id(&format!("<x{id}@mail.example>")),
            None
        );
    }

    #[test]
    fn message_ref_prefers_explicit_ids_that_are_uuids() {
        let ours = "0190c5a4-7b1e-7c3d-9f00-1234567890ab";
        let other = "0190c5a4-7b1e-7c3d-9f00-ffffffffffff";
        let r = MessageRef::build(
            [Some("junk"), Some(ours)],
            Some(&format!("<{other}@x.example>")),
            Some(" p "),
        );
        assert_eq!(r.postledger_id.as_deref(), Some(ours));
        assert_eq!(r.message_id, Some(format!("{other}@x.example")));
        assert_eq!(r.provider_message_id.as_deref(), Some("p"));
        let r = MessageRef::build([Some("junk")], Some(&format!("<{other}@x.example>")), None);
        assert_eq!(r.postledger_id.as_deref(), Some(other));
        let r = MessageRef::build([None], Some("<>"), Some(""));
        assert_eq!(r, MessageRef::default());
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(InboundError::malformed("x").code(), "INBOUND_MALFORMED");
        assert_eq!(
            InboundError::unsupported("x").code(),
            "INBOUND_UNSUPPORTED_EVENT"
        );
        assert_eq!(
            InboundError::SubscriptionConfirmation {
                subscribe_url: "u".into()
            }
            .code(),
            "INBOUND_SUBSCRIPTION_CONFIRMATION"
        );
    }

    #[test]
    fn unsupported_raw_type_is_truncated() {
        let InboundError::UnsupportedEvent { raw_type } =
            InboundError::unsupported(&"x".repeat(500))
        else {
            panic!("wrong variant");
        };
        assert_eq!(raw_type.len(), 64);
    }

    #[test]
    fn non_json_bodies_are_malformed_for_every_json_provider() {
        for p in [
            Provider::Generic,
            Provider::Postmark,
            Provider::SendGrid,
            Provider::Mailgun,
            Provider::Ses,
        ] {
            for body in [&b""[..], b"not json", b"{", b"\xff\xfe"] {
                let err = normalise(p, body).unwrap_err();
                assert_eq!(err.code(), "INBOUND_MALFORMED", "{p} {body:?}");
            }
        }
    }
}
