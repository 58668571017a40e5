//! SendGrid Event Webhook: a JSON array of event objects, each with `event`.
//!
//! | event | becomes |
//! | --- | --- |
//! | `delivered` | `Delivered` |
//! | `bounce` | `Bounced`: hard when `type` is `bounce` (or absent), soft when `blocked` |
//! | `deferred` | soft `Bounced` (diagnostic: `response`) |
//! | `dropped` | soft `Bounced` (diagnostic: `reason`): a drop is SendGrid's own decision, often caused by the sender's side; the bounce or report that put the address on SendGrid's list already carried the hard signal |
//! | `open` | `Opened` |
//! | `click` | `Clicked { url }` |
//! | `spamreport` | `Complained` |
//! | `unsubscribe`, `group_unsubscribe` | `Unsubscribed` |
//! | `processed`, `group_resubscribe`, anything else | skipped |
//!
//! Skipping rather than failing matters here: SendGrid retries a whole batch that is not
//! acknowledged, so one event of a new type must not make the batch fail for ever. Every
//! item must still be an object with a string `event`.
//!
//! Ids: `sg_event_id`, else a hash. `smtp-id` is the Message-ID; `sg_message_id` is
//! SendGrid's id. Our id comes from the custom argument `postledger_message_id` (top-level,
//! as the v3 API delivers custom args, or inside legacy `unique_args`).

use serde_json::Value;

use super::json::{self, Obj};
use super::{EventKind, InboundError, InboundEvent, MessageRef, Provider};
use crate::canonical;
use crate::smtp;

pub(super) fn parse(value: &Value) -> Result<Vec<InboundEvent>, InboundError> {
    let Value::Array(items) = value else {
        return Err(InboundError::malformed(
            "sendgrid: expected a JSON array of events",
        ));
    };
    let objects = json::non_empty_objects(items, "sendgrid")?;
    let mut events = Vec::with_capacity(objects.len());
    for (i, obj) in objects.into_iter().enumerate() {
        if let Some(event) = parse_one(obj, &format!("sendgrid[{i}]"))? {
            events.push(event);
        }
    }
    Ok(events)
}

fn parse_one(obj: &Obj, ctx: &str) -> Result<Option<InboundEvent>, InboundError> {
    let raw_type = json::req_str(obj, "event", ctx)?;
    let kind = match raw_type {
        "delivered" => EventKind::Delivered,
        "bounce" => {
            let hard = json::opt_str(obj, "type", ctx)? != Some("blocked");
            let status = json::opt_str(obj, "status", ctx)?;
            let reason = json::opt_str(obj, "reason", ctx)?;
            EventKind::Bounced {
                hard,
                smtp_status: status
                    .filter(|s| smtp::status_class(s).is_some())
                    .map(|s| s.trim().to_string())
                    .or_else(|| reason.and_then(smtp::find_enhanced_status)),
                diagnostic: reason.map(str::to_string),
            }
        }
        "deferred" => {
            let response = json::opt_str(obj, "response", ctx)?;
            EventKind::Bounced {
                hard: false,
                smtp_status: response.and_then(smtp::find_enhanced_status),
                diagnostic: response.map(str::to_string),
            }
        }
        "dropped" => {
            let reason = json::opt_str(obj, "reason", ctx)?;
            EventKind::Bounced {
                hard: false,
                smtp_status: None,
                diagnostic: reason.map(str::to_string),
            }
        }
        "open" => EventKind::Opened,
        "click" => EventKind::Clicked {
            url: json::opt_str(obj, "url", ctx)?.map(str::to_string),
        },
        "spamreport" => EventKind::Complained,
        "unsubscribe" | "group_unsubscribe" => EventKind::Unsubscribed,
        _ => return Ok(None),
    };
    let recipient = json::recipient(json::req_str(obj, "email", ctx)?, ctx)?;
    let legacy = match json::opt_obj(obj, "unique_args", ctx)? {
        Some(args) => json::opt_str(args, "postledger_message_id", &format!("{ctx}.unique_args"))?,
        None => None,
    };
    let message = MessageRef::build(
        [json::opt_str(obj, "postledger_message_id", ctx)?, legacy],
        json::opt_str(obj, "smtp-id", ctx)?,
        json::opt_str(obj, "sg_message_id", ctx)?,
    );
    let occurred_at = json::opt_unix(obj, "timestamp", ctx)?;
    let provider_event_id = match json::opt_id(obj, "sg_event_id", ctx)? {
        Some(id) => id,
        None => canonical::event_hash(Provider::SendGrid.as_str(), &Value::Object(obj.clone()), ""),
    };
    Ok(Some(InboundEvent {
        provider: Provider::SendGrid,
        provider_event_id,
        kind,
        recipient,
        message,
        occurred_at,
        raw_type: raw_type.to_string(),
    }))
}
