//! Amazon SES notifications, delivered by SNS over HTTP(S) or bare.
//!
//! The SNS envelope (`Type`, `MessageId`, `Message`, `Timestamp`, …):
//! * `Notification`: `Message` is a JSON string holding the SES notification.
//! * `SubscriptionConfirmation`: `InboundError::SubscriptionConfirmation` with
//!   `SubscribeURL`. Nothing is fetched here.
//! * `UnsubscribeConfirmation` and other types: `UnsupportedEvent`.
//!
//! A body without `Type` but with `notificationType` or `eventType` is a bare SES
//! notification (SNS raw message delivery, or a relay that unwrapped it).
//!
//! SES notification types (`notificationType`, or `eventType` of event publishing):
//!
//! | type | becomes, one event per recipient of |
//! | --- | --- |
//! | `Bounce` | `Bounced { hard: bounceType == Permanent }` per `bounce.bouncedRecipients[]` (`status`, `diagnosticCode`); `Transient` and `Undetermined` are soft |
//! | `Complaint` | `Complained` per `complaint.complainedRecipients[]` |
//! | `Delivery` | `Delivered` per `delivery.recipients[]` |
//! | `DeliveryDelay` | soft `Bounced` per `deliveryDelay.delayedRecipients[]` |
//! | `Open` | `Opened` per `mail.destination[]` |
//! | `Click` | `Clicked { url: click.link }` per `mail.destination[]` |
//! | others (`Send`, `Reject`, `Rendering Failure`, `Subscription`, …) | `UnsupportedEvent` |
//!
//! Ids: `<SNS MessageId>:<recipient index>`; for a bare notification
//! `<feedbackId>:<index>` when the bounce or complaint has one, else a hash. The time is the
//! type's own `timestamp` (`bounce.timestamp`, …), else the SNS `Timestamp`. `mail.messageId`
//! is SES's id; the Message-ID and `X-Postledger-Message-Id` come from `mail.headers`
//! (`commonHeaders.messageId` as a fallback); our id may also be the message tag
//! `postledger_message_id` (`mail.tags`).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::json::{self, Obj};
use super::{EventKind, InboundError, InboundEvent, MessageRef, Provider};
use crate::canonical;
use crate::smtp;

struct Envelope<'a> {
    message_id: &'a str,
    timestamp: Option<DateTime<Utc>>,
}

pub(super) fn parse(value: &Value) -> Result<Vec<InboundEvent>, InboundError> {
    let root = json::object(value, "ses")?;
    if let Some(sns_type) = json::opt_str(root, "Type", "sns")? {
        let ctx = &format!("sns {sns_type}");
        return match sns_type {
            "Notification" => {
                let message_id = json::req_str(root, "MessageId", ctx)?;
                let timestamp = json::opt_rfc3339(root, "Timestamp", ctx)?;
                let message = json::req_str(root, "Message", ctx)?;
                let inner: Value = serde_json::from_str(message).map_err(|e| {
                    InboundError::malformed(format!("{ctx}: `Message` is not JSON ({e})"))
                })?;
                let notification = json::object(&inner, "ses (in SNS Message)")?;
                parse_notification(
                    notification,
                    Some(Envelope {
                        message_id,
                        timestamp,
                    }),
                )
            }
            "SubscriptionConfirmation" => Err(InboundError::SubscriptionConfirmation {
                subscribe_url: json::req_str(root, "SubscribeURL", ctx)?.trim().to_string(),
            }),
            other => Err(InboundError::unsupported(other)),
        };
    }
    if root.contains_key("notificationType") || root.contains_key("eventType") {
        return parse_notification(root, None);
    }
    Err(InboundError::malformed(
        "ses: neither an SNS envelope (`Type`) nor an SES notification (`notificationType` / `eventType`)",
    ))
}

/// One recipient of a notification, with what is particular to it.
struct Target<'a> {
    address: &'a str,
    status: Option<&'a str>,
    diagnostic: Option<&'a str>,
}

fn parse_notification(
    n: &Obj,
    envelope: Option<Envelope<'_>>,
) -> Result<Vec<InboundEvent>, InboundError> {
    let raw_type = match json::opt_str(n, "notificationType", "ses")? {
        Some(t) => t,
        None => json::req_str(n, "eventType", "ses")?,
    };
    let ctx = &format!("ses {raw_type}");
    let mail = json::req_obj(n, "mail", ctx)?;
    let mctx = &format!("{ctx}.mail");

    // (the object holding the type's details, its key, what kind each target gets)
    let (detail_key, targets_key) = match raw_type {
        "Bounce" => ("bounce", "bouncedRecipients"),
        "Complaint" => ("complaint", "complainedRecipients"),
        "Delivery" => ("delivery", "recipients"),
        "DeliveryDelay" => ("deliveryDelay", "delayedRecipients"),
        "Open" => ("open", ""),
        "Click" => ("click", ""),
        other => return Err(InboundError::unsupported(other)),
    };
    let detail = json::req_obj(n, detail_key, ctx)?;
    let dctx = &format!("{ctx}.{detail_key}");

    let targets: Vec<Target<'_>> = if targets_key.is_empty() {
        json::req_non_empty_array(mail, "destination", mctx)?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(|address| Target {
                        address,
                        status: None,
                        diagnostic: None,
                    })
                    .ok_or_else(|| {
                        InboundError::malformed(format!("{mctx}: `destination` must hold strings"))
                    })
            })
            .collect::<Result<_, _>>()?
    } else if raw_type == "Delivery" {
        json::req_non_empty_array(detail, targets_key, dctx)?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(|address| Target {
                        address,
                        status: None,
                        diagnostic: None,
                    })
                    .ok_or_else(|| {
                        InboundError::malformed(format!(
                            "{dctx}: `{targets_key}` must hold strings"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?
    } else {
        let items = json::req_non_empty_array(detail, targets_key, dctx)?;
        let objects = json::non_empty_objects(items, &format!("{dctx}.{targets_key}"))?;
        objects
            .into_iter()
            .map(|o| {
                let tctx = format!("{dctx}.{targets_key}[]");
                Ok(Target {
                    address: json::req_str(o, "emailAddress", &tctx)?,
                    status: json::opt_str(o, "status", &tctx)?,
                    diagnostic: json::opt_str(o, "diagnosticCode", &tctx)?,
                })
            })
            .collect::<Result<_, InboundError>>()?
    };

    let hard =
        raw_type == "Bounce" && json::opt_str(detail, "bounceType", dctx)? == Some("Permanent");
    let url = if raw_type == "Click" {
        json::opt_str(detail, "link", dctx)?
    } else {
        None
    };
    let feedback_id = json::opt_str(detail, "feedbackId", dctx)?;
    let occurred_at = match json::opt_rfc3339(detail, "timestamp", dctx)? {
        Some(t) => Some(t),
        None => envelope.as_ref().and_then(|e| e.timestamp),
    };
    let message = message_ref(mail, mctx)?;

    let mut events = Vec::with_capacity(targets.len());
    for (i, target) in targets.into_iter().enumerate() {
        let kind = match raw_type {
            "Bounce" | "DeliveryDelay" => EventKind::Bounced {
                hard,
                smtp_status: target
                    .status
                    .filter(|s| smtp::status_class(s).is_some())
                    .map(|s| s.trim().to_string())
                    .or_else(|| target.diagnostic.and_then(smtp::find_enhanced_status)),
                diagnostic: target.diagnostic.map(str::to_string),
            },
            "Complaint" => EventKind::Complained,
            "Delivery" => EventKind::Delivered,
            "Open" => EventKind::Opened,
            _ => EventKind::Clicked {
                url: url.map(str::to_string),
            },
        };
        let provider_event_id = match (&envelope, feedback_id) {
            (Some(env), _) => format!("{}:{i}", env.message_id.trim()),
            (None, Some(feedback)) => format!("{}:{i}", feedback.trim()),
            (None, None) => canonical::event_hash(
                Provider::Ses.as_str(),
                &Value::Object(n.clone()),
                &i.to_string(),
            ),
        };
        events.push(InboundEvent {
            provider: Provider::Ses,
            provider_event_id,
            kind,
            recipient: json::recipient(target.address, ctx)?,
            message: message.clone(),
            occurred_at,
            raw_type: raw_type.to_string(),
        });
    }
    Ok(events)
}

fn message_ref(mail: &Obj, ctx: &str) -> Result<MessageRef, InboundError> {
    let headers = json::opt_array(mail, "headers", ctx)?.unwrap_or(&[]);
    let common_message_id = match json::opt_obj(mail, "commonHeaders", ctx)? {
        Some(common) => json::opt_str(common, "messageId", &format!("{ctx}.commonHeaders"))?,
        None => None,
    };
    // Message tags are `{"name": ["value"]}` in event publishing.
    let tag = match json::opt_obj(mail, "tags", ctx)? {
        Some(tags) => tags
            .get("postledger_message_id")
            .and_then(Value::as_array)
            .and_then(|values| values.first())
            .and_then(Value::as_str),
        None => None,
    };
    Ok(MessageRef::build(
        [
            json::header_in_list(headers, "name", "value", "X-Postledger-Message-Id"),
            tag,
        ],
        json::header_in_list(headers, "name", "value", "Message-ID").or(common_message_id),
        json::opt_str(mail, "messageId", ctx)?,
    ))
}
