//! The MIME of a queued message, built with lettre.
//!
//! Structure, from the inside out:
//! - text only → text/plain; HTML only → text/html; both → multipart/alternative;
//! - inline parts (an attachment with a content id) go with the HTML in multipart/related;
//! - any other attachment makes the whole multipart/mixed.
//!
//! Bcc recipients are in the envelope only (lettre drops the Bcc header after deriving the
//! envelope from the headers).
//!
//! Marketing mail gets one-click unsubscribe headers (RFC 8058) when the dispatcher is
//! configured with [`UnsubscribeLinks`]; transactional mail never does.
use std::time::SystemTime;

use domain::message::{AttachmentRef, Category, Mailbox, MessageQueued};
use eventlog::BlobStore;
use lettre::address::Envelope;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, MultiPart, SinglePart};
use lettre::Address;
use uuid::Uuid;

use super::UnsubscribeLinks;

/// Our own header naming the message, so that a bounce or a complaint can be tied back to
/// it whatever the relay did to Message-ID.
pub(super) const MESSAGE_ID_HEADER: &str = "X-Postledger-Message-Id";

pub(super) const LIST_UNSUBSCRIBE: &str = "List-Unsubscribe";
pub(super) const LIST_UNSUBSCRIBE_POST: &str = "List-Unsubscribe-Post";
/// The only value RFC 8058 defines: the receiver may POST this body to the HTTPS URI.
pub(super) const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// The `List-Unsubscribe` value of a marketing message, or `None` when it gets none.
///
/// The token names the first `to` address. The dispatcher sends one SMTP transaction per
/// message, so every recipient (cc included) receives the same bytes and the same link;
/// a link per recipient would need one transaction per recipient. Never a bcc address:
/// the header is visible to everyone, and the token's payload is readable.
pub(super) fn list_unsubscribe(
    m: &MessageQueued,
    tenant: Uuid,
    links: Option<&UnsubscribeLinks>,
) -> Option<String> {
    let links = links?;
    if m.category != Category::Marketing {
        return None;
    }
    let recipient = m.to.first()?.email.trim().to_lowercase();
    let token = inbound::unsubscribe::token(
        &links.key,
        &tenant.to_string(),
        &m.message_id.to_string(),
        &recipient,
    );
    let base = links.base_url.trim_end_matches('/');
    let mut value = format!("<{base}/unsubscribe/{token}>");
    if let Some(domain) = links.mailto_domain.as_deref().filter(|d| !d.is_empty()) {
        value.push_str(&format!(", <mailto:unsubscribe+{token}@{domain}>"));
    }
    Some(value)
}

/// What a round sends: the SMTP envelope and the message bytes.
pub(super) struct Built {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
}

fn mailbox(m: &Mailbox, field: &str) -> Result<lettre::message::Mailbox, String> {
    let address: Address = m
        .email
        .parse()
        .map_err(|e| format!("the {field} address is not usable: {e}"))?;
    Ok(lettre::message::Mailbox::new(m.name.clone(), address))
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Body {
    fn into_multipart_of(self, parent: MultiPart) -> MultiPart {
        match self {
            Body::Single(p) => parent.singlepart(p),
            Body::Multi(p) => parent.multipart(p),
        }
    }
}

fn attachment_part(
    a: &AttachmentRef,
    blobs: &BlobStore,
    inline: bool,
) -> Result<SinglePart, String> {
    let content_type = ContentType::parse(&a.content_type).map_err(|e| {
        format!(
            "attachment {:?} has an unusable content type {:?}: {e}",
            a.filename, a.content_type
        )
    })?;
    let bytes = blobs.get(&a.digest).map_err(|e| {
        format!(
            "the content of attachment {:?} (blob {}) could not be read: {e}",
            a.filename, a.digest
        )
    })?;
    let builder = match (&a.content_id, inline) {
        (Some(cid), true) => Attachment::new_inline_with_name(cid.clone(), a.filename.clone()),
        _ => Attachment::new(a.filename.clone()),
    };
    Ok(builder.body(bytes, content_type))
}

/// Builds the message. The error says, for the MessageFailed reason, why it cannot be
/// built (a missing blob, an unusable address or header): retrying would not help.
pub(super) fn build(
    m: &MessageQueued,
    blobs: &BlobStore,
    tenant: Uuid,
    links: Option<&UnsubscribeLinks>,
) -> Result<Built, String> {
    let from = mailbox(&m.from, "from")?;
    let domain = m
        .from
        .email
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| "the from address has no domain".to_string())?;
    let mut b = lettre::Message::builder()
        .from(from)
        .subject(m.subject.clone())
        .message_id(Some(format!("<{}@{}>", m.message_id, domain)))
        .date(SystemTime::from(m.due_at()));
    if let Some(r) = &m.reply_to {
        b = b.reply_to(mailbox(r, "reply_to")?);
    }
    for t in &m.to {
        b = b.to(mailbox(t, "to")?);
    }
    for c in &m.cc {
        b = b.cc(mailbox(c, "cc")?);
    }
    for c in &m.bcc {
        b = b.bcc(mailbox(c, "bcc")?);
    }
    for (name, value) in &m.headers {
        let header = HeaderName::new_from_ascii(name.clone())
            .map_err(|_| format!("the header name {name:?} is not usable"))?;
        b = b.raw_header(HeaderValue::new(header, value.clone()));
    }
    // Last, so that ours replace a caller's headers of the same names.
    b = b.raw_header(HeaderValue::new(
        HeaderName::new_from_ascii_str(MESSAGE_ID_HEADER),
        m.message_id.to_string(),
    ));
    if let Some(value) = list_unsubscribe(m, tenant, links) {
        b = b
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(LIST_UNSUBSCRIBE),
                value,
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(LIST_UNSUBSCRIBE_POST),
                ONE_CLICK.to_string(),
            ));
    }

    // A body too big for the event was stored beside the log; the event names its digest.
    let from_blob = |digest: &Option<String>, what: &str| -> Result<Option<String>, String> {
        match digest {
            None => Ok(None),
            Some(d) => {
                let bytes = blobs
                    .get(d)
                    .map_err(|e| format!("the {what} body is missing from the blob store: {e}"))?;
                String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| format!("the stored {what} body is not UTF-8"))
            }
        }
    };
    let text_stored = from_blob(&m.text_blob, "text")?;
    let html_stored = from_blob(&m.html_blob, "HTML")?;
    let text = m
        .text
        .as_deref()
        .or(text_stored.as_deref())
        .filter(|t| !t.is_empty());
    let html = m
        .html
        .as_deref()
        .or(html_stored.as_deref())
        .filter(|h| !h.is_empty());
    // Inline parts only make sense next to HTML that references them; without HTML they
    // are sent as ordinary attachments rather than lost.
    let (inline, attached): (Vec<&AttachmentRef>, Vec<&AttachmentRef>) = m
        .attachments
        .iter()
        .partition(|a| a.content_id.is_some() && html.is_some());

    let html_part = match html {
        None => None,
        Some(h) if inline.is_empty() => Some(Body::Single(SinglePart::html(h.to_string()))),
        Some(h) => {
            let mut related = MultiPart::related()
                .build()
                .singlepart(SinglePart::html(h.to_string()));
            for a in &inline {
                related = related.singlepart(attachment_part(a, blobs, true)?);
            }
            Some(Body::Multi(related))
        }
    };
    let body = match (text, html_part) {
        (Some(t), None) => Body::Single(SinglePart::plain(t.to_string())),
        (None, Some(h)) => h,
        (Some(t), Some(h)) => Body::Multi(
            h.into_multipart_of(
                MultiPart::alternative()
                    .build()
                    .singlepart(SinglePart::plain(t.to_string())),
            ),
        ),
        (None, None) => return Err("the message has neither text nor HTML".into()),
    };
    let body = if attached.is_empty() {
        body
    } else {
        let mut mixed = body.into_multipart_of(MultiPart::mixed().build());
        for a in &attached {
            mixed = mixed.singlepart(attachment_part(a, blobs, false)?);
        }
        Body::Multi(mixed)
    };
    let message = match body {
        Body::Single(p) => b.singlepart(p),
        Body::Multi(p) => b.multipart(p),
    }
    .map_err(|e| format!("the message could not be built: {e}"))?;
    Ok(Built {
        envelope: message.envelope().clone(),
        bytes: message.formatted(),
    })
}

/// Replaces the envelope sender with a VERP return path naming the message.
pub(super) fn with_return_path(
    built: Built,
    m: &MessageQueued,
    bounce_domain: &str,
) -> Result<Built, String> {
    let verp = inbound::verp::encode("bounces", &m.message_id.to_string(), bounce_domain);
    let from = verp
        .parse::<lettre::Address>()
        .map_err(|e| format!("the return path {verp:?} is not an address: {e}"))?;
    let envelope = Envelope::new(Some(from), built.envelope.to().to_vec())
        .map_err(|e| format!("the envelope could not be built: {e}"))?;
    Ok(Built {
        envelope,
        bytes: built.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use domain::message::{Category, Priority};
    use uuid::Uuid;

    fn mb(e: &str) -> Mailbox {
        Mailbox {
            email: e.into(),
            name: None,
        }
    }

    fn message() -> MessageQueued {
        MessageQueued {
            message_id: Uuid::from_u128(0xabc),
            sender_id: Uuid::from_u128(1),
            from: Mailbox {
                email: "news@example.test".into(),
                name: Some("News Desk".into()),
            },
            reply_to: Some(mb("help@example.test")),
            to: vec![mb("ada@example.test")],
            cc: vec![mb("cc@example.test")],
            bcc: vec![mb("hidden@example.test")],
            subject: "Hello".into(),
            html: Some("<p>Hi <img src=\"cid:logo\"></p>".into()),
            text: Some("Hi".into()),
            html_blob: None,
            text_blob: None,
            headers: [("X-Campaign".to_string(), "spring".to_string())].into(),
            tags: vec![],
            metadata: serde_json::Value::Null,
            attachments: vec![],
            priority: Priority::Normal,
            category: Category::Transactional,
            scheduled_at: None,
            idempotency_key: None,
            request_digest: "00".into(),
            queued_at: Utc.timestamp_opt(1_800_000_000, 0).single().unwrap(),
            template: None,
        }
    }

    fn att(blobs: &BlobStore, bytes: &[u8], name: &str, cid: Option<&str>) -> AttachmentRef {
        AttachmentRef {
            digest: blobs.put(bytes).unwrap(),
            size: bytes.len() as u64,
            filename: name.into(),
            content_type: if cid.is_some() {
                "image/png"
            } else {
                "application/pdf"
            }
            .into(),
            content_id: cid.map(str::to_string),
        }
    }

    fn text_of(b: &Built) -> String {
        String::from_utf8(b.bytes.clone()).unwrap()
    }

    #[test]
    fn headers_envelope_and_nesting() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let mut m = message();
        m.attachments = vec![
            att(&blobs, b"\x89PNG logo", "logo.png", Some("logo")),
            att(&blobs, b"%PDF-1.7 report", "report.pdf", None),
        ];
        let built = build(&m, &blobs, Uuid::nil(), None).unwrap();
        let s = text_of(&built);
        assert!(
            s.contains("From: \"News Desk\" <news@example.test>\r\n"),
            "{s}"
        );
        assert!(s.contains("Message-ID: <00000000-0000-0000-0000-000000000abc@example.test>"));
        assert!(s.contains("X-Postledger-Message-Id: 00000000-0000-0000-0000-000000000abc\r\n"));
        assert!(s.contains("X-Campaign: spring\r\n"));
        assert!(s.contains("Reply-To: help@example.test\r\n"));
        assert!(!s.contains("hidden@example.test"));
        let rcpt: Vec<String> = built.envelope.to().iter().map(|a| a.to_string()).collect();
        assert_eq!(
            rcpt,
            ["ada@example.test", "cc@example.test", "hidden@example.test"]
        );
        let mixed = s.find("multipart/mixed").unwrap();
        let alt = s.find("multipart/alternative").unwrap();
        let related = s.find("multipart/related").unwrap();
        assert!(mixed < alt && alt < related, "{s}");
        assert!(s.contains("Content-ID: <logo>"));
        assert!(s.contains("Content-Disposition: inline"));
        assert!(s.contains("Content-Disposition: attachment; filename=\"report.pdf\""));
    }

    #[test]
    fn single_parts() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let mut m = message();
        m.html = None;
        let s = text_of(&build(&m, &blobs, Uuid::nil(), None).unwrap());
        assert!(s.contains("Content-Type: text/plain") && !s.contains("multipart"));
        let mut m = message();
        m.text = None;
        let s = text_of(&build(&m, &blobs, Uuid::nil(), None).unwrap());
        assert!(s.contains("Content-Type: text/html") && !s.contains("multipart"));
    }

    fn links(mailto: Option<&str>) -> UnsubscribeLinks {
        UnsubscribeLinks {
            base_url: "https://mail.example.test".into(),
            mailto_domain: mailto.map(str::to_string),
            key: [9; 32],
        }
    }

    fn unfolded(s: &str, name: &str) -> Option<String> {
        let start = s.find(&format!("\r\n{name}: "))? + name.len() + 4;
        let rest = &s[start..];
        let mut end = 0;
        while let Some(i) = rest[end..].find("\r\n") {
            end += i;
            if !rest[end + 2..].starts_with([' ', '\t']) {
                break;
            }
            end += 2;
        }
        Some(rest[..end].replace("\r\n", ""))
    }

    #[test]
    fn marketing_mail_gets_one_click_unsubscribe_headers_and_transactional_none() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let tenant = Uuid::from_u128(0x7e);
        let mut m = message();
        m.to = vec![mb("Ada@Example.test"), mb("bob@example.test")];
        m.headers
            .insert("List-Unsubscribe".into(), "<https://forged.test/x>".into());
        // Transactional: the caller's own header stays, nothing of ours is added.
        let s =
            text_of(&build(&m, &blobs, tenant, Some(&links(Some("unsub.example.test")))).unwrap());
        assert!(s.contains("forged.test"));
        assert!(!s.contains("List-Unsubscribe-Post"), "{s}");

        m.category = Category::Marketing;
        let s =
            text_of(&build(&m, &blobs, tenant, Some(&links(Some("unsub.example.test")))).unwrap());
        assert!(
            !s.contains("forged.test"),
            "ours replaces the caller's: {s}"
        );
        let value = unfolded(&s, LIST_UNSUBSCRIBE).unwrap();
        let token = value
            .strip_prefix("<https://mail.example.test/unsubscribe/")
            .and_then(|v| v.split_once('>'))
            .map(|(t, _)| t.to_string())
            .unwrap();
        assert!(
            value.ends_with(&format!(
                ", <mailto:unsubscribe+{token}@unsub.example.test>"
            )),
            "{value}"
        );
        let claim = inbound::unsubscribe::verify_token(&[9; 32], &token).unwrap();
        assert_eq!(
            (claim.tenant, claim.message, claim.address),
            (
                tenant.to_string(),
                m.message_id.to_string(),
                "ada@example.test".to_string()
            )
        );
        assert_eq!(
            unfolded(&s, LIST_UNSUBSCRIBE_POST).as_deref(),
            Some(ONE_CLICK)
        );
        // Without a mailto domain, the HTTPS link only; without links, nothing.
        let value = list_unsubscribe(&m, tenant, Some(&links(None))).unwrap();
        assert!(value.starts_with('<') && value.ends_with('>') && !value.contains("mailto"));
        assert_eq!(list_unsubscribe(&m, tenant, None), None);
    }

    #[test]
    fn our_message_id_header_wins_and_a_missing_blob_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let mut m = message();
        m.headers
            .insert("X-Postledger-Message-Id".into(), "forged".into());
        let s = text_of(&build(&m, &blobs, Uuid::nil(), None).unwrap());
        assert!(!s.contains("forged"));
        m.attachments = vec![AttachmentRef {
            digest: "ab".repeat(32),
            size: 3,
            filename: "gone.pdf".into(),
            content_type: "application/pdf".into(),
            content_id: None,
        }];
        let err = build(&m, &blobs, Uuid::nil(), None).err().unwrap();
        assert!(err.contains("gone.pdf"), "{err}");
    }
}
