//! RFC 3464 delivery status notifications (bounce messages received by mail).
//!
//! Why: mail that Postledger sends through its own SMTP relays bounces back as a message,
//! not a webhook. Such a bounce is a `multipart/report; report-type=delivery-status`
//! whose `message/delivery-status` part holds per-message fields, then one group of fields
//! per recipient (separated by blank lines): `Final-Recipient`, `Action`, `Status`,
//! `Diagnostic-Code`, `Remote-MTA`. The returned original (`message/rfc822`, or just its
//! headers as `text/rfc822-headers`) carries the Message-ID and `X-Postledger-Message-Id`,
//! and the address the bounce was sent to carries the VERP-encoded message id
//! ([`crate::verp`]) when the relay used one.
//!
//! Hard or soft: only `Action: failed` with a status of class 5 is hard. Class 4, and
//! `delayed`, are soft. When `Status` is missing or not `x.y.z`, the status is taken from
//! the enhanced code in `Diagnostic-Code`, else the class of its SMTP reply code (`550` →
//! `5.0.0`); when nothing says, the status is `None` and the bounce is soft: an address is
//! never suppressed on a guess.
//!
//! Parsing is lenient about what real MTAs emit (folded lines, `\n` line ends, missing
//! per-message block, `message/global-delivery-status` of RFC 6533) and strict about what it
//! returns: a recipient group without a plausible address or a known action is skipped, and
//! a DSN with no usable recipient group is `Malformed`.

use chrono::{DateTime, Utc};
use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::events::{self, EventKind, InboundError, InboundEvent, MessageRef, Provider};
use crate::smtp;

/// The `Action` of a recipient group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsnAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl DsnAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
            DsnAction::Expanded => "expanded",
        }
    }

    fn parse(value: &str) -> Option<DsnAction> {
        // `Action: failed (bad address)` is seen; the first word is the action.
        let word = value
            .split(|c: char| c.is_whitespace() || c == '(')
            .next()?
            .to_ascii_lowercase();
        Some(match word.as_str() {
            "failed" => DsnAction::Failed,
            "delayed" => DsnAction::Delayed,
            "delivered" => DsnAction::Delivered,
            "relayed" => DsnAction::Relayed,
            "expanded" => DsnAction::Expanded,
            _ => return None,
        })
    }
}

/// One recipient group of a DSN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsnRecipient {
    /// The `Final-Recipient` address (else `Original-Recipient`), normalised.
    pub recipient: String,
    /// The `Original-Recipient` address as given, when present.
    pub original_recipient: Option<String>,
    pub action: DsnAction,
    /// Enhanced status code `x.y.z` (see the module docs for how it is found).
    pub status: Option<String>,
    /// `action` is failed and the status class is 5.
    pub hard: bool,
    /// The `Diagnostic-Code` field as given (`smtp; 550 5.1.1 …`).
    pub diagnostic: Option<String>,
    /// The `Remote-MTA` name, without its type (`dns;`).
    pub remote_mta: Option<String>,
}

/// A parsed delivery status notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dsn {
    pub recipients: Vec<DsnRecipient>,
    /// Message-ID of the returned original (no angle brackets).
    pub original_message_id: Option<String>,
    /// `X-Postledger-Message-Id` of the returned original, when a UUID.
    pub postledger_message_id: Option<String>,
    /// Our message id decoded from the address the DSN was sent to (VERP).
    pub verp_message_id: Option<String>,
    /// `Reporting-MTA`, without its type.
    pub reporting_mta: Option<String>,
    /// The DSN's own Message-ID (no angle brackets).
    pub dsn_message_id: Option<String>,
    /// The DSN's `Date`.
    pub date: Option<DateTime<Utc>>,
    /// SHA-256 hex of the raw DSN bytes (for ids when it has no Message-ID).
    pub raw_sha256: String,
}

fn malformed(message: &str) -> InboundError {
    InboundError::malformed(format!("dsn: {message}"))
}

/// Parses a raw RFC 5322 message that should be an RFC 3464 DSN.
pub fn parse_dsn(raw: &[u8]) -> Result<Dsn, InboundError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(malformed("the message is empty"));
    }
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| malformed("not a MIME message (no header fields)"))?;
    let Some(root) = message.parts.first() else {
        return Err(malformed("not a MIME message (no header fields)"));
    };

    let status_part = message
        .parts
        .iter()
        .find(|p| is_type(p, "message", &["delivery-status", "global-delivery-status"]));
    let Some(status_part) = status_part else {
        if let Some(ct) = root.content_type() {
            if ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
            {
                let report_type: String = ct
                    .attribute("report-type")
                    .unwrap_or("(none)")
                    .chars()
                    .take(40)
                    .collect();
                if !report_type.eq_ignore_ascii_case("delivery-status") {
                    return Err(malformed(&format!(
                        "a multipart/report of report-type {report_type}, not delivery-status"
                    )));
                }
                return Err(malformed("a delivery-status report without a message/delivery-status part (broken MIME?)"));
            }
        }
        return Err(malformed(
            "no message/delivery-status part: not an RFC 3464 bounce",
        ));
    };

    let text = String::from_utf8_lossy(status_part.contents());
    let blocks = field_blocks(&text);
    let mut reporting_mta = None;
    let mut recipients = Vec::new();
    for block in &blocks {
        let is_recipient = block
            .iter()
            .any(|(n, _)| n == "final-recipient" || n == "original-recipient");
        if is_recipient {
            if let Some(r) = recipient_group(block) {
                recipients.push(r);
            }
        } else if reporting_mta.is_none() {
            reporting_mta = field(block, "reporting-mta").map(strip_type);
        }
    }
    if recipients.is_empty() {
        return Err(malformed(
            "the delivery-status part has no usable per-recipient fields",
        ));
    }

    let original = original_headers(&message);
    let (original_message_id, postledger_message_id) = match &original {
        Some(part) => (
            header_text(part, "Message-ID").and_then(|v| events::clean_message_id(&v)),
            header_text(part, "X-Postledger-Message-Id").and_then(|v| events::parse_uuid(&v)),
        ),
        None => (None, None),
    };

    let verp_message_id = ["To", "Delivered-To", "X-Original-To", "Envelope-To"]
        .iter()
        .flat_map(|name| raw_header_values(&message, name))
        .flat_map(|value| value.split(',').map(str::to_string).collect::<Vec<_>>())
        .find_map(|address| crate::verp::decode(&address));

    Ok(Dsn {
        recipients,
        original_message_id,
        postledger_message_id,
        verp_message_id,
        reporting_mta,
        dsn_message_id: header_text(root, "Message-ID").and_then(|v| events::clean_message_id(&v)),
        date: message
            .date()
            .and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0)),
        raw_sha256: canonical::sha256_hex(&[raw]),
    })
}

/// The events a DSN stands for: `failed` → `Bounced` (hard by status class), `delayed` →
/// soft `Bounced`, `delivered` → `Delivered`; `relayed` and `expanded` give none.
///
/// Ids are the SHA-256 of the DSN's Message-ID (or of its raw bytes when it has none) and
/// the recipient, so the same DSN received twice gives the same ids. Our message id is the
/// original's `X-Postledger-Message-Id`, else the VERP address, else a `<uuid@domain>`
/// original Message-ID.
pub fn to_events(dsn: &Dsn) -> Vec<InboundEvent> {
    let message = MessageRef::build(
        [
            dsn.postledger_message_id.as_deref(),
            dsn.verp_message_id.as_deref(),
        ],
        dsn.original_message_id.as_deref(),
        None,
    );
    dsn.recipients
        .iter()
        .filter_map(|r| {
            let kind = match r.action {
                DsnAction::Failed => EventKind::Bounced {
                    hard: r.hard,
                    smtp_status: r.status.clone(),
                    diagnostic: r.diagnostic.clone(),
                },
                DsnAction::Delayed => EventKind::Bounced {
                    hard: false,
                    smtp_status: r.status.clone(),
                    diagnostic: r.diagnostic.clone(),
                },
                DsnAction::Delivered => EventKind::Delivered,
                DsnAction::Relayed | DsnAction::Expanded => return None,
            };
            let provider_event_id = match &dsn.dsn_message_id {
                Some(id) => {
                    canonical::sha256_hex(&[b"message-id", id.as_bytes(), r.recipient.as_bytes()])
                }
                None => canonical::sha256_hex(&[
                    b"raw",
                    dsn.raw_sha256.as_bytes(),
                    r.recipient.as_bytes(),
                ]),
            };
            Some(InboundEvent {
                provider: Provider::Dsn,
                provider_event_id,
                kind,
                recipient: r.recipient.clone(),
                message: message.clone(),
                occurred_at: dsn.date,
                raw_type: r.action.as_str().to_string(),
            })
        })
        .collect()
}

fn is_type(part: &MessagePart<'_>, ctype: &str, subtypes: &[&str]) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ctype)
            && ct
                .subtype()
                .is_some_and(|s| subtypes.iter().any(|want| s.eq_ignore_ascii_case(want)))
    })
}

/// Header fields of the returned original: the top part of a `message/rfc822` (or
/// `message/global`) part, or a `text/rfc822-headers` (`message/global-headers`) part
/// parsed as headers.
fn original_headers(message: &Message<'_>) -> Option<MessagePart<'static>> {
    for part in &message.parts {
        if let PartType::Message(inner) = &part.body {
            if let Some(top) = inner.parts.first() {
                return Some(top.clone().into_owned());
            }
        }
        if is_type(part, "text", &["rfc822-headers"])
            || is_type(part, "message", &["global-headers", "rfc822"])
        {
            let contents = part.contents();
            if let Some(top) = MessageParser::default()
                .parse_headers(contents)
                .and_then(|m| m.parts.into_iter().next())
            {
                return Some(top.into_owned());
            }
        }
    }
    None
}

/// The text of a header in a part, whatever shape mail-parser gave it.
fn header_text(part: &MessagePart<'_>, name: &str) -> Option<String> {
    let header = part
        .headers
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))?;
    let value = header.value();
    value.as_text().map(str::to_string).or_else(|| {
        value
            .as_text_list()
            .and_then(|l| l.first())
            .map(|s| s.to_string())
    })
}

/// Every raw value of a top-level header (all occurrences).
fn raw_header_values(message: &Message<'_>, name: &str) -> Vec<String> {
    let Some(root) = message.parts.first() else {
        return Vec::new();
    };
    root.headers
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .filter_map(|h| {
            let bytes = message
                .raw_message
                .get(h.offset_start as usize..h.offset_end as usize)?;
            Some(String::from_utf8_lossy(bytes).into_owned())
        })
        .collect()
}

type Block = Vec<(String, String)>;

/// Field groups separated by blank lines; names lower-cased; folded lines joined.
fn field_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Block = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(char::is_whitespace) {
                current.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    blocks
}

fn field<'a>(block: &'a Block, name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `rfc822; jane@example.com` → `jane@example.com`; a value without a type is kept.
fn strip_type(value: &str) -> String {
    match value.split_once(';') {
        Some((_, rest)) => rest.trim().to_string(),
        None => value.trim().to_string(),
    }
}

fn recipient_group(block: &Block) -> Option<DsnRecipient> {
    let original_recipient = field(block, "original-recipient").map(strip_type);
    let final_recipient = field(block, "final-recipient").map(strip_type);
    let address = final_recipient
        .as_deref()
        .or(original_recipient.as_deref())?;
    let recipient = crate::address::normalise(crate::address::bare(address), false)?;
    let action = DsnAction::parse(field(block, "action")?)?;
    let diagnostic = field(block, "diagnostic-code").map(str::to_string);
    let status = field(block, "status")
        .and_then(|s| s.split_whitespace().next())
        .filter(|s| smtp::status_class(s).is_some())
        .map(str::to_string)
        .or_else(|| {
            let diagnostic = diagnostic.as_deref()?;
            smtp::find_enhanced_status(diagnostic)
                .or_else(|| smtp::reply_class(diagnostic).map(|class| format!("{class}.0.0")))
        });
    let hard =
        action == DsnAction::Failed && status.as_deref().and_then(smtp::status_class) == Some(5);
    Some(DsnRecipient {
        recipient,
        original_recipient,
        action,
        status,
        hard,
        diagnostic,
        remote_mta: field(block, "remote-mta").map(strip_type),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fold_and_split() {
        let text = "Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@b.example\r\nDiagnostic-Code: smtp; 550\r\n  5.1.1 unknown\r\n\n\nFinal-Recipient: rfc822; c@d.example\n";
        let blocks = field_blocks(text);
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            field(&blocks[1], "diagnostic-code"),
            Some("smtp; 550 5.1.1 unknown")
        );
        assert_eq!(field(&blocks[0], "reporting-mta"), Some("dns; mx.example"));
    }

    #[test]
    fn actions() {
        assert_eq!(DsnAction::parse("failed"), Some(DsnAction::Failed));
        assert_eq!(DsnAction::parse("Delayed"), Some(DsnAction::Delayed));
        assert_eq!(
            DsnAction::parse("failed (bad address)"),
            Some(DsnAction::Failed)
        );
        assert_eq!(DsnAction::parse("exploded"), None);
    }

    fn group(fields: &[(&str, &str)]) -> Block {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn status_falls_back_to_the_diagnostic() {
        let r = recipient_group(&group(&[
            ("final-recipient", "rfc822; A@B.example"),
            ("action", "failed"),
            ("diagnostic-code", "smtp; 550 5.1.1 user unknown"),
        ]))
        .unwrap();
        assert_eq!(r.recipient, "a@b.example");
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert!(r.hard);

        let r = recipient_group(&group(&[
            ("final-recipient", "rfc822; a@b.example"),
            ("action", "failed"),
            ("status", "junk"),
            ("diagnostic-code", "smtp; 550 user unknown"),
        ]))
        .unwrap();
        assert_eq!(r.status.as_deref(), Some("5.0.0"));
        assert!(r.hard);
    }

    #[test]
    fn no_status_at_all_is_soft() {
        let r = recipient_group(&group(&[
            ("final-recipient", "rfc822; a@b.example"),
            ("action", "failed"),
        ]))
        .unwrap();
        assert_eq!(r.status, None);
        assert!(!r.hard);
    }

    #[test]
    fn failed_with_class_4_is_soft() {
        let r = recipient_group(&group(&[
            ("final-recipient", "rfc822; a@b.example"),
            ("action", "failed"),
            ("status", "4.4.7"),
        ]))
        .unwrap();
        assert!(!r.hard);
    }

    #[test]
    fn unusable_groups_are_skipped() {
        assert!(recipient_group(&group(&[
            ("final-recipient", "rfc822; not an address"),
            ("action", "failed")
        ]))
        .is_none());
        assert!(recipient_group(&group(&[
            ("final-recipient", "rfc822; a@b.example"),
            ("action", "vanished")
        ]))
        .is_none());
        assert!(recipient_group(&group(&[("final-recipient", "rfc822; a@b.example")])).is_none());
        let r = recipient_group(&group(&[
            ("original-recipient", "rfc822; a@b.example"),
            ("action", "delayed"),
            ("status", "4.2.2"),
        ]))
        .unwrap();
        assert_eq!(r.recipient, "a@b.example");
    }
}
