//! Postmark webhooks: one JSON object per call, told apart by `RecordType`.
//!
//! | RecordType | becomes |
//! | --- | --- |
//! | `Delivery` | `Delivered` |
//! | `Bounce` | see below |
//! | `SpamComplaint` | `Complained` |
//! | `Open` | `Opened` |
//! | `Click` | `Clicked { url: OriginalLink }` |
//! | `SubscriptionChange` with `SuppressSending: true` | by `SuppressionReason`: `HardBounce` → hard bounce, `SpamComplaint` → `Complained`, otherwise (`ManualSuppression`) → `Unsubscribed` |
//! | `SubscriptionChange` with `SuppressSending: false` | `UnsupportedEvent` (`SubscriptionChange:Reactivated`): a reactivation is not ours to act on |
//! | anything else (`Inbound`, …) | `UnsupportedEvent` |
//!
//! Bounce `Type`s: `HardBounce`, `BadEmailAddress` and `ManuallyDeactivated` are hard (the
//! address itself is bad, or was deactivated on Postmark by hand). `Unsubscribe` becomes
//! `Unsubscribed` and `SpamComplaint` becomes `Complained`. `AutoResponder`,
//! `AddressChange`, `Subscribe`, `ChallengeVerification` and `OpenRelayTest` are replies,
//! not delivery failures, and are `UnsupportedEvent`. Every other type (`Transient`,
//! `SoftBounce`, `DnsError`, `Blocked`, `SpamNotification`, `DMARCPolicy`, `Unknown`, …)
//! is a soft bounce: it says nothing certain about the address, so it must not suppress
//! it. The enhanced status code is taken from `Details` when it contains one; the
//! diagnostic is `Details`, else `Description`.
//!
//! Ids: Bounce and SpamComplaint records have a numeric `ID`, giving `Bounce:<ID>` /
//! `SpamComplaint:<ID>`; the other records have none and are hashed. `MessageID` is
//! Postmark's own id (`provider_message_id`). Our id comes from `Metadata.
//! postledger_message_id`, or from `Headers` (`[{Name, Value}]`) when present.

use serde_json::Value;

use super::json::{self, Obj};
use super::{EventKind, InboundError, InboundEvent, MessageRef, Provider};
use crate::canonical;
use crate::smtp;

const HARD_TYPES: [&str; 3] = ["HardBounce", "BadEmailAddress", "ManuallyDeactivated"];
const NOT_FAILURES: [&str; 5] = [
    "AutoResponder",
    "AddressChange",
    "Subscribe",
    "ChallengeVerification",
    "OpenRelayTest",
];

pub(super) fn parse(value: &Value) -> Result<Vec<InboundEvent>, InboundError> {
    let ctx = "postmark";
    let obj = json::object(value, ctx)?;
    let record_type = json::req_str(obj, "RecordType", ctx)?;
    let ctx = &format!("postmark {record_type}");

    let (kind, recipient_key, time_key, raw_type) = match record_type {
        "Delivery" => (
            EventKind::Delivered,
            "Recipient",
            "DeliveredAt",
            record_type.to_string(),
        ),
        "Bounce" => {
            let bounce_type = json::req_str(obj, "Type", ctx)?;
            let kind = bounce_kind(obj, bounce_type, ctx)?;
            (kind, "Email", "BouncedAt", format!("Bounce:{bounce_type}"))
        }
        "SpamComplaint" => (
            EventKind::Complained,
            "Email",
            "BouncedAt",
            record_type.to_string(),
        ),
        "Open" => (
            EventKind::Opened,
            "Recipient",
            "ReceivedAt",
            record_type.to_string(),
        ),
        "Click" => (
            EventKind::Clicked {
                url: json::opt_str(obj, "OriginalLink", ctx)?.map(str::to_string),
            },
            "Recipient",
            "ReceivedAt",
            record_type.to_string(),
        ),
        "SubscriptionChange" => {
            let suppress = json::opt_bool(obj, "SuppressSending", ctx)?.ok_or_else(|| {
                InboundError::malformed(format!("{ctx}: `SuppressSending` is missing"))
            })?;
            if !suppress {
                return Err(InboundError::unsupported("SubscriptionChange:Reactivated"));
            }
            let kind = match json::opt_str(obj, "SuppressionReason", ctx)? {
                Some("HardBounce") => EventKind::Bounced {
                    hard: true,
                    smtp_status: None,
                    diagnostic: None,
                },
                Some("SpamComplaint") => EventKind::Complained,
                _ => EventKind::Unsubscribed,
            };
            (kind, "Recipient", "ChangedAt", record_type.to_string())
        }
        other => return Err(InboundError::unsupported(other)),
    };

    // Bounce records name the address `Email`; accept `Recipient` as well, and the other way.
    let raw_recipient = match json::opt_str(obj, recipient_key, ctx)? {
        Some(r) => r,
        None => {
            let other = if recipient_key == "Email" {
                "Recipient"
            } else {
                "Email"
            };
            json::opt_str(obj, other, ctx)?.ok_or_else(|| {
                InboundError::malformed(format!("{ctx}: `{recipient_key}` is missing"))
            })?
        }
    };
    let recipient = json::recipient(raw_recipient, ctx)?;

    let metadata = json::opt_obj(obj, "Metadata", ctx)?;
    let from_metadata = match metadata {
        Some(m) => json::opt_str(m, "postledger_message_id", &format!("{ctx}.Metadata"))?,
        None => None,
    };
    let headers = json::opt_array(obj, "Headers", ctx)?.unwrap_or(&[]);
    let message = MessageRef::build(
        [
            from_metadata,
            json::header_in_list(headers, "Name", "Value", "X-Postledger-Message-Id"),
        ],
        json::header_in_list(headers, "Name", "Value", "Message-ID"),
        json::opt_id(obj, "MessageID", ctx)?.as_deref(),
    );

    let occurred_at = json::opt_rfc3339(obj, time_key, ctx)?;
    let provider_event_id = match (record_type, json::opt_id(obj, "ID", ctx)?) {
        ("Bounce" | "SpamComplaint", Some(id)) => format!("{record_type}:{id}"),
        _ => canonical::event_hash(Provider::Postmark.as_str(), value, ""),
    };

    Ok(vec![InboundEvent {
        provider: Provider::Postmark,
        provider_event_id,
        kind,
        recipient,
        message,
        occurred_at,
        raw_type,
    }])
}

fn bounce_kind(obj: &Obj, bounce_type: &str, ctx: &str) -> Result<EventKind, InboundError> {
    if NOT_FAILURES.contains(&bounce_type) {
        return Err(InboundError::unsupported(&format!("Bounce:{bounce_type}")));
    }
    match bounce_type {
        "Unsubscribe" => return Ok(EventKind::Unsubscribed),
        "SpamComplaint" => return Ok(EventKind::Complained),
        _ => {}
    }
    let details = json::opt_str(obj, "Details", ctx)?;
    let description = json::opt_str(obj, "Description", ctx)?;
    Ok(EventKind::Bounced {
        hard: HARD_TYPES.contains(&bounce_type),
        smtp_status: details.and_then(smtp::find_enhanced_status),
        diagnostic: details.or(description).map(str::to_string),
    })
}
