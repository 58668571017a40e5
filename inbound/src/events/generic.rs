//! Postledger's own webhook format, for relays and tools that are not one of the providers.
//!
//! One object or a non-empty array of them:
//!
//! ```json
//! {"id": "evt-1", "type": "bounced", "recipient": "jane@example.com",
//!  "message_id": "<0190…@mail.example>", "postledger_message_id": "0190…",
//!  "occurred_at": "2024-05-01T12:00:00Z",
//!  "bounce": {"hard": true, "status": "5.1.1", "diagnostic": "smtp; 550 5.1.1 …"},
//!  "url": "https://…"}
//! ```
//!
//! `type` is one of delivered, bounced, complained, opened, clicked, unsubscribed; any
//! other is `UnsupportedEvent` (the format is ours, so it is strict). `type` and
//! `recipient` are required; `id` falls back to a content hash. For `bounced`, `hard`
//! defaults to "the status class is 5" (false without a status).

use serde_json::Value;

use super::json::{self, Obj};
use super::{EventKind, InboundError, InboundEvent, MessageRef, Provider};
use crate::canonical;
use crate::smtp;

pub(super) fn parse(value: &Value) -> Result<Vec<InboundEvent>, InboundError> {
    json::one_or_many(value, "generic")?
        .into_iter()
        .enumerate()
        .map(|(i, obj)| parse_one(obj, &format!("generic[{i}]")))
        .collect()
}

fn parse_one(obj: &Obj, ctx: &str) -> Result<InboundEvent, InboundError> {
    let raw_type = json::req_str(obj, "type", ctx)?;
    let kind = match raw_type {
        "delivered" => EventKind::Delivered,
        "bounced" => {
            let bounce = json::opt_obj(obj, "bounce", ctx)?;
            let bctx = format!("{ctx}.bounce");
            let (hard, status, diagnostic) = match bounce {
                Some(b) => (
                    json::opt_bool(b, "hard", &bctx)?,
                    json::opt_str(b, "status", &bctx)?.map(|s| s.trim().to_string()),
                    json::opt_str(b, "diagnostic", &bctx)?.map(str::to_string),
                ),
                None => (None, None, None),
            };
            let hard =
                hard.unwrap_or_else(|| status.as_deref().and_then(smtp::status_class) == Some(5));
            EventKind::Bounced {
                hard,
                smtp_status: status,
                diagnostic,
            }
        }
        "complained" => EventKind::Complained,
        "opened" => EventKind::Opened,
        "clicked" => EventKind::Clicked {
            url: json::opt_str(obj, "url", ctx)?.map(str::to_string),
        },
        "unsubscribed" => EventKind::Unsubscribed,
        other => return Err(InboundError::unsupported(other)),
    };
    let recipient = json::recipient(json::req_str(obj, "recipient", ctx)?, ctx)?;
    let message = MessageRef::build(
        [json::opt_str(obj, "postledger_message_id", ctx)?],
        json::opt_str(obj, "message_id", ctx)?,
        None,
    );
    let occurred_at = json::opt_rfc3339(obj, "occurred_at", ctx)?;
    let provider_event_id = match json::opt_id(obj, "id", ctx)? {
        Some(id) => id,
        None => canonical::event_hash(Provider::Generic.as_str(), &Value::Object(obj.clone()), ""),
    };
    Ok(InboundEvent {
        provider: Provider::Generic,
        provider_event_id,
        kind,
        recipient,
        message,
        occurred_at,
        raw_type: raw_type.to_string(),
    })
}
