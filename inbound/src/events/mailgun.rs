//! Mailgun webhooks: `{"signature": {…}, "event-data": {…}}`, one event per call.
//!
//! | event-data.event | becomes |
//! | --- | --- |
//! | `delivered` | `Delivered` |
//! | `failed` | `Bounced`: hard when `severity` is `permanent`, soft when `temporary` or absent |
//! | `complained` | `Complained` |
//! | `opened` | `Opened` |
//! | `clicked` | `Clicked { url }` |
//! | `unsubscribed` | `Unsubscribed` |
//! | anything else (`accepted`, `rejected`, `stored`, …) | `UnsupportedEvent` |
//!
//! `delivery-status`: the enhanced status is `enhanced-code`, else the first one found in
//! `message` / `description`; the diagnostic is `code` and `message` (else `description`).
//! The Mailgun `signature` is not checked here (this crate has no Mailgun key); the caller
//! checks it before trusting the body.
//!
//! Ids: `event-data.id`, which Mailgun documents as unique within a day, which covers its
//! retry window. The Message-ID is `message.headers.message-id`; our id comes from
//! `user-variables.postledger_message_id`. Times are fractional unix seconds.

use serde_json::Value;

use super::json;
use super::{EventKind, InboundError, InboundEvent, MessageRef, Provider};
use crate::canonical;
use crate::smtp;

pub(super) fn parse(value: &Value) -> Result<Vec<InboundEvent>, InboundError> {
    let root = json::object(value, "mailgun")?;
    let data = json::req_obj(root, "event-data", "mailgun")?;
    let raw_type = json::req_str(data, "event", "mailgun event-data")?;
    let ctx = &format!("mailgun {raw_type}");
    let kind = match raw_type {
        "delivered" => EventKind::Delivered,
        "failed" => {
            let hard = json::opt_str(data, "severity", ctx)? == Some("permanent");
            let (smtp_status, diagnostic) = match json::opt_obj(data, "delivery-status", ctx)? {
                Some(status) => delivery_status(status, &format!("{ctx}.delivery-status"))?,
                None => (
                    None,
                    json::opt_str(data, "reason", ctx)?.map(str::to_string),
                ),
            };
            EventKind::Bounced {
                hard,
                smtp_status,
                diagnostic,
            }
        }
        "complained" => EventKind::Complained,
        "opened" => EventKind::Opened,
        "clicked" => EventKind::Clicked {
            url: json::opt_str(data, "url", ctx)?.map(str::to_string),
        },
        "unsubscribed" => EventKind::Unsubscribed,
        other => return Err(InboundError::unsupported(other)),
    };
    let recipient = json::recipient(json::req_str(data, "recipient", ctx)?, ctx)?;

    let message_id = match json::opt_obj(data, "message", ctx)? {
        Some(m) => match json::opt_obj(m, "headers", &format!("{ctx}.message"))? {
            Some(h) => json::opt_str(h, "message-id", &format!("{ctx}.message.headers"))?,
            None => None,
        },
        None => None,
    };
    let ours = match json::opt_obj(data, "user-variables", ctx)? {
        Some(vars) => json::opt_str(
            vars,
            "postledger_message_id",
            &format!("{ctx}.user-variables"),
        )?,
        None => None,
    };
    let message = MessageRef::build([ours], message_id, None);

    let occurred_at = json::opt_unix(data, "timestamp", ctx)?;
    let provider_event_id = match json::opt_id(data, "id", ctx)? {
        Some(id) => id,
        None => canonical::event_hash(Provider::Mailgun.as_str(), &Value::Object(data.clone()), ""),
    };
    Ok(vec![InboundEvent {
        provider: Provider::Mailgun,
        provider_event_id,
        kind,
        recipient,
        message,
        occurred_at,
        raw_type: raw_type.to_string(),
    }])
}

type StatusAndDiagnostic = (Option<String>, Option<String>);

fn delivery_status(status: &json::Obj, ctx: &str) -> Result<StatusAndDiagnostic, InboundError> {
    let code = json::opt_id(status, "code", ctx)?;
    let message = json::opt_str(status, "message", ctx)?;
    let description = json::opt_str(status, "description", ctx)?;
    let enhanced = json::opt_str(status, "enhanced-code", ctx)?
        .filter(|s| smtp::status_class(s).is_some())
        .map(|s| s.trim().to_string())
        .or_else(|| message.and_then(smtp::find_enhanced_status))
        .or_else(|| description.and_then(smtp::find_enhanced_status));
    let text = message.or(description);
    let diagnostic = match (code, text) {
        (Some(code), Some(text)) => Some(format!("{code} {text}")),
        (None, Some(text)) => Some(text.to_string()),
        (Some(code), None) => Some(code),
        (None, None) => None,
    };
    Ok((enhanced, diagnostic))
}
