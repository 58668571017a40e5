//! The Message aggregate: one outbound email from the moment it is queued until it is
//! sent, failed, cancelled or suppressed (every recipient on a suppression list). Every step is an event on the message's own stream
//! ([`MESSAGE_STREAM`]), so the message's timeline is simply that stream.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{from_json, require_v1, to_json, unknown_type, DomainEvent};
use crate::error::{DomainError, FieldError, Result};

/// Stream type name of the message aggregate.
pub const MESSAGE_STREAM: &str = "message";

pub const MAX_RECIPIENTS: usize = 50;
pub const MAX_SUBJECT_CHARS: usize = 998;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 64;
pub const MAX_HEADERS: usize = 50;
pub const MAX_ATTACHMENTS: usize = 50;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Bodies up to this size (HTML and text together) travel inside `MessageQueued`; larger
/// ones go to the blob store, so that the event stays far below the log's payload limit.
pub const MAX_INLINE_BODY_BYTES: usize = 8 * 1024;
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Order in which due messages leave the queue. The derived `Ord` is the dispatch order:
/// `Immediate` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Immediate,
    High,
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::Immediate => "immediate",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "immediate" => Some(Priority::Immediate),
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// Transactional mail is what a user asked for; marketing mail is what they may opt out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Transactional,
    Marketing,
}

impl Category {
    pub fn as_str(&self) -> &'static str {
        match self {
            Category::Transactional => "transactional",
            Category::Marketing => "marketing",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        match s {
            "transactional" => Some(Category::Transactional),
            "marketing" => Some(Category::Marketing),
            _ => None,
        }
    }
}

/// An address with an optional display name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An attachment as the log knows it: the bytes live in the blob store under `digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// Hex blake3 of the content.
    pub digest: String,
    pub size: u64,
    pub filename: String,
    pub content_type: String,
    /// Set for an inline part referenced from the HTML as `cid:<content_id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageQueued {
    pub message_id: Uuid,
    pub sender_id: Uuid,
    pub from: Mailbox,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Mailbox>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Mailbox>,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Digest of the HTML body in the blob store, for a body too big to sit in the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_blob: Option<String>,
    /// Digest of the text body in the blob store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_blob: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Free JSON from the caller, echoed in callbacks.
    #[serde(default)]
    pub metadata: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentRef>,
    pub priority: Priority,
    pub category: Category,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Hex blake3 of the canonical request: the same idempotency key with another body is
    /// told apart by this.
    pub request_digest: String,
    pub queued_at: DateTime<Utc>,
    /// Set when the message was rendered from a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<crate::template::TemplateUse>,
}

impl MessageQueued {
    /// Every envelope recipient (to, cc and bcc).
    pub fn recipients(&self) -> impl Iterator<Item = &Mailbox> {
        self.to.iter().chain(self.cc.iter()).chain(self.bcc.iter())
    }

    /// When the message may first be sent.
    pub fn due_at(&self) -> DateTime<Utc> {
        self.scheduled_at.unwrap_or(self.queued_at)
    }
}

/// How one try at one relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// 2xx: the relay took responsibility.
    Sent,
    /// 4xx: try again later.
    Deferred,
    /// 5xx: will never work.
    Failed,
    /// No SMTP answer at all (refused, timed out, TLS failure): the next relay is tried.
    Unreachable,
}

impl AttemptOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            AttemptOutcome::Sent => "sent",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Unreachable => "unreachable",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempted {
    /// The dispatch round (1-based); failover tries several relays within one round.
    pub attempt: u32,
    /// `None` for the file outbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<Uuid>,
    /// The relay's name, or "outbox".
    pub relay: String,
    pub outcome: AttemptOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The server's reply text, or the connection error.
    pub reply: String,
    pub duration_ms: u64,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<Uuid>,
    pub relay: String,
    pub reply: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeferred {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    pub next_attempt_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFailed {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// False when the message merely ran out of time (it was deferred until its maximum age).
    pub permanent: bool,
    pub at: DateTime<Utc>,
}

/// One recipient the dispatcher dropped because a suppression entry stopped it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedRecipient {
    /// As the message names it (to, cc or bcc).
    pub address: String,
    /// The reason of the entry that matched.
    pub reason: crate::suppression::Reason,
    /// Whether the entry was the tenant's own or global.
    pub scope: crate::suppression::Scope,
}

/// Recipients dropped right before an SMTP transaction (or the file outbox) because they
/// were suppressed for the message's category at that moment. With `all`, no recipient
/// was left, nothing was sent and the message is final ([`MessageStatus::Suppressed`]);
/// otherwise the rest were sent to in the same round, whose events follow this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientsSuppressed {
    pub recipients: Vec<SuppressedRecipient>,
    pub all: bool,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCancelled {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MessageEvent {
    Queued(Box<MessageQueued>),
    Attempted(DeliveryAttempted),
    Sent(MessageSent),
    Deferred(MessageDeferred),
    Failed(MessageFailed),
    Cancelled(MessageCancelled),
    Suppressed(RecipientsSuppressed),
}

/// What a dispatch round concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum DispatchResult {
    Sent(MessageSent),
    Deferred(MessageDeferred),
    Failed(MessageFailed),
}

#[derive(Clone, Debug, PartialEq)]
pub enum MessageCommand {
    Queue {
        message: Box<MessageQueued>,
        now: DateTime<Utc>,
    },
    /// The dispatcher reports one round: the recipients it dropped as suppressed (only
    /// some of them: `all` is false), every relay tried, and the conclusion.
    RecordDispatch {
        suppressed: Option<RecipientsSuppressed>,
        attempts: Vec<DeliveryAttempted>,
        result: DispatchResult,
    },
    /// The dispatcher found every recipient suppressed: nothing is sent, and the message
    /// ends [`MessageStatus::Suppressed`]. The check runs before each relay is tried, so
    /// `attempts` holds the tries of the round at relays that did not answer before it
    /// (usually none).
    Suppress {
        attempts: Vec<DeliveryAttempted>,
        recipients: Vec<SuppressedRecipient>,
        at: DateTime<Utc>,
    },
    Cancel {
        reason: Option<String>,
        now: DateTime<Utc>,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    #[default]
    Queued,
    Deferred,
    Sent,
    Failed,
    Cancelled,
    /// Every recipient was suppressed when it was due; nothing was sent.
    Suppressed,
}

impl MessageStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Deferred => "deferred",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Cancelled => "cancelled",
            MessageStatus::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<MessageStatus> {
        match s {
            "queued" => Some(MessageStatus::Queued),
            "deferred" => Some(MessageStatus::Deferred),
            "sent" => Some(MessageStatus::Sent),
            "failed" => Some(MessageStatus::Failed),
            "cancelled" => Some(MessageStatus::Cancelled),
            "suppressed" => Some(MessageStatus::Suppressed),
            _ => None,
        }
    }

    /// Nothing more will happen to the message.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MessageStatus::Sent
                | MessageStatus::Failed
                | MessageStatus::Cancelled
                | MessageStatus::Suppressed
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageState {
    pub exists: bool,
    pub status: MessageStatus,
    /// Dispatch rounds so far.
    pub rounds: u32,
}

pub fn apply(state: &mut MessageState, event: &MessageEvent) {
    match event {
        MessageEvent::Queued(_) => {
            state.exists = true;
            state.status = MessageStatus::Queued;
        }
        MessageEvent::Attempted(a) => state.rounds = state.rounds.max(a.attempt),
        MessageEvent::Sent(_) => state.status = MessageStatus::Sent,
        MessageEvent::Deferred(_) => state.status = MessageStatus::Deferred,
        MessageEvent::Failed(_) => state.status = MessageStatus::Failed,
        MessageEvent::Cancelled(_) => state.status = MessageStatus::Cancelled,
        MessageEvent::Suppressed(s) => {
            if s.all {
                state.status = MessageStatus::Suppressed;
            }
        }
    }
}

pub fn decide(state: &MessageState, cmd: MessageCommand) -> Result<Vec<MessageEvent>> {
    match cmd {
        MessageCommand::Queue { message, now } => {
            if state.exists {
                return Err(DomainError::MessageAlreadyExists);
            }
            let fields = validate_message(&message, now);
            if !fields.is_empty() {
                return Err(DomainError::Validation { fields });
            }
            Ok(vec![MessageEvent::Queued(message)])
        }
        MessageCommand::RecordDispatch {
            suppressed,
            attempts,
            result,
        } => {
            if !state.exists {
                return Err(DomainError::MessageNotFound);
            }
            // A round that went on to a relay left someone to send to: "all suppressed" is
            // the Suppress command's, and an empty list is no fact at all.
            if let Some(s) = &suppressed {
                if s.all || s.recipients.is_empty() {
                    return Err(DomainError::Validation {
                        fields: vec![FieldError {
                            field: "suppressed".into(),
                            message: "a dispatched round suppresses some recipients, not none \
                                      or all"
                                .into(),
                        }],
                    });
                }
            }
            // A relay's 250 is a fact even if a cancel slipped in while the message was on
            // the wire; anything else after a final state is refused.
            let sent = matches!(result, DispatchResult::Sent(_));
            if state.status.is_final() && !(sent && state.status == MessageStatus::Cancelled) {
                return Err(DomainError::MessageFinal {
                    status: state.status.as_str().to_string(),
                });
            }
            let mut events: Vec<MessageEvent> = suppressed
                .map(MessageEvent::Suppressed)
                .into_iter()
                .chain(attempts.into_iter().map(MessageEvent::Attempted))
                .collect();
            events.push(match result {
                DispatchResult::Sent(s) => MessageEvent::Sent(s),
                DispatchResult::Deferred(d) => MessageEvent::Deferred(d),
                DispatchResult::Failed(f) => MessageEvent::Failed(f),
            });
            Ok(events)
        }
        MessageCommand::Suppress {
            attempts,
            recipients,
            at,
        } => {
            if !state.exists {
                return Err(DomainError::MessageNotFound);
            }
            // Unlike a late 250, nothing left the building: a message that became final
            // meanwhile (a cancel) stays as it is.
            if state.status.is_final() {
                return Err(DomainError::MessageFinal {
                    status: state.status.as_str().to_string(),
                });
            }
            if recipients.is_empty() {
                return Err(DomainError::Validation {
                    fields: vec![FieldError {
                        field: "recipients".into(),
                        message: "at least one suppressed recipient is required".into(),
                    }],
                });
            }
            let mut events: Vec<MessageEvent> =
                attempts.into_iter().map(MessageEvent::Attempted).collect();
            events.push(MessageEvent::Suppressed(RecipientsSuppressed {
                recipients,
                all: true,
                at,
            }));
            Ok(events)
        }
        MessageCommand::Cancel { reason, now } => {
            if !state.exists {
                return Err(DomainError::MessageNotFound);
            }
            if state.status.is_final() {
                return Err(DomainError::MessageFinal {
                    status: state.status.as_str().to_string(),
                });
            }
            Ok(vec![MessageEvent::Cancelled(MessageCancelled {
                reason,
                at: now,
            })])
        }
    }
}

/// A plausible mailbox address: what SMTP will carry, not every RFC 5322 oddity.
pub fn valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return false;
    }
    if local.contains(['<', '>', '(', ')', ',', ';', ':', '\\', '"', '[', ']']) {
        return false;
    }
    if domain.is_empty() || domain.len() > 253 {
        return false;
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    })
}

/// A header name the caller may set: a token, and not one Postledger owns.
pub fn settable_header(name: &str) -> bool {
    const OWNED: &[&str] = &[
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "sender",
    ];
    !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        && !OWNED.contains(&name.to_ascii_lowercase().as_str())
}

fn push(fields: &mut Vec<FieldError>, field: impl Into<String>, message: impl Into<String>) {
    fields.push(FieldError {
        field: field.into(),
        message: message.into(),
    });
}

fn check_mailboxes(fields: &mut Vec<FieldError>, name: &str, list: &[Mailbox]) {
    for (i, m) in list.iter().enumerate() {
        if !valid_email(&m.email) {
            push(
                fields,
                format!("{name}[{i}]"),
                "is not a valid email address",
            );
        }
        if let Some(n) = &m.name {
            if n.chars().any(char::is_control) || n.chars().count() > 200 {
                push(
                    fields,
                    format!("{name}[{i}].name"),
                    "must be at most 200 characters without control characters",
                );
            }
        }
    }
}

/// Every field-level problem of a message, empty when it may be queued.
pub fn validate_message(m: &MessageQueued, now: DateTime<Utc>) -> Vec<FieldError> {
    let mut f = Vec::new();
    if !valid_email(&m.from.email) {
        push(&mut f, "from", "is not a valid email address");
    }
    if let Some(r) = &m.reply_to {
        check_mailboxes(&mut f, "reply_to", std::slice::from_ref(r));
    }
    check_mailboxes(&mut f, "to", &m.to);
    check_mailboxes(&mut f, "cc", &m.cc);
    check_mailboxes(&mut f, "bcc", &m.bcc);
    let count = m.to.len() + m.cc.len() + m.bcc.len();
    if m.to.is_empty() {
        push(&mut f, "to", "at least one recipient is required");
    }
    if count > MAX_RECIPIENTS {
        push(
            &mut f,
            "to",
            format!("at most {MAX_RECIPIENTS} recipients in to, cc and bcc together"),
        );
    }
    if m.subject.trim().is_empty() {
        push(&mut f, "subject", "must not be empty");
    } else if m.subject.chars().count() > MAX_SUBJECT_CHARS || m.subject.contains(['\r', '\n']) {
        push(
            &mut f,
            "subject",
            format!("must be one line of at most {MAX_SUBJECT_CHARS} characters"),
        );
    }
    let html_empty = m.html.as_deref().is_none_or(str::is_empty) && m.html_blob.is_none();
    let text_empty = m.text.as_deref().is_none_or(str::is_empty) && m.text_blob.is_none();
    if html_empty && text_empty {
        push(&mut f, "html", "html or text (or both) is required");
    }
    let header_bytes: usize = m.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if m.headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        push(
            &mut f,
            "headers",
            format!("at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes"),
        );
    }
    if m.metadata.to_string().len() > MAX_METADATA_BYTES {
        push(
            &mut f,
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        );
    }
    for (name, value) in &m.headers {
        if !settable_header(name) {
            push(
                &mut f,
                format!("headers.{name}"),
                "is not a header name the caller may set",
            );
        }
        if value.contains(['\r', '\n']) || value.len() > 998 {
            push(
                &mut f,
                format!("headers.{name}"),
                "the value must be one line of at most 998 bytes",
            );
        }
    }
    if m.tags.len() > MAX_TAGS {
        push(&mut f, "tags", format!("at most {MAX_TAGS} tags"));
    }
    for (i, t) in m.tags.iter().enumerate() {
        if t.is_empty()
            || t.chars().count() > MAX_TAG_CHARS
            || t.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            push(
                &mut f,
                format!("tags[{i}]"),
                format!("must be 1..={MAX_TAG_CHARS} characters without spaces"),
            );
        }
    }
    if m.attachments.len() > MAX_ATTACHMENTS {
        push(
            &mut f,
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments"),
        );
    }
    for (i, a) in m.attachments.iter().enumerate() {
        if a.filename.trim().is_empty()
            || a.filename.len() > 255
            || a.filename.contains(['/', '\\', '\r', '\n', '"'])
        {
            push(
                &mut f,
                format!("attachments[{i}].filename"),
                "must be a plain file name of at most 255 bytes",
            );
        }
        if !a.content_type.contains('/') || a.content_type.contains(['\r', '\n', ';']) {
            push(
                &mut f,
                format!("attachments[{i}].content_type"),
                "must be a MIME type such as application/pdf",
            );
        }
        if let Some(cid) = &a.content_id {
            if cid.is_empty()
                || cid.len() > 200
                || !cid
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
            {
                push(
                    &mut f,
                    format!("attachments[{i}].content_id"),
                    "must be 1..=200 printable characters without < or >",
                );
            }
        }
    }
    if let Some(at) = m.scheduled_at {
        if at <= now {
            push(&mut f, "scheduled_at", "must be in the future");
        }
    }
    if let Some(k) = &m.idempotency_key {
        if k.is_empty()
            || k.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS
            || k.chars().any(char::is_control)
        {
            push(
                &mut f,
                "idempotency_key",
                format!("must be 1..={MAX_IDEMPOTENCY_KEY_CHARS} characters"),
            );
        }
    }
    f
}

pub const MESSAGE_QUEUED: &str = "MessageQueued";
pub const DELIVERY_ATTEMPTED: &str = "DeliveryAttempted";
pub const MESSAGE_SENT: &str = "MessageSent";
pub const MESSAGE_DEFERRED: &str = "MessageDeferred";
pub const MESSAGE_FAILED: &str = "MessageFailed";
pub const MESSAGE_CANCELLED: &str = "MessageCancelled";
pub const RECIPIENTS_SUPPRESSED: &str = "RecipientsSuppressed";

/// Every event type of the message stream.
pub fn message_event_types() -> &'static [&'static str] {
    &[
        MESSAGE_QUEUED,
        DELIVERY_ATTEMPTED,
        MESSAGE_SENT,
        MESSAGE_DEFERRED,
        MESSAGE_FAILED,
        MESSAGE_CANCELLED,
        RECIPIENTS_SUPPRESSED,
    ]
}

impl DomainEvent for MessageEvent {
    fn event_type(&self) -> &'static str {
        match self {
            MessageEvent::Queued(_) => MESSAGE_QUEUED,
            MessageEvent::Attempted(_) => DELIVERY_ATTEMPTED,
            MessageEvent::Sent(_) => MESSAGE_SENT,
            MessageEvent::Deferred(_) => MESSAGE_DEFERRED,
            MessageEvent::Failed(_) => MESSAGE_FAILED,
            MessageEvent::Cancelled(_) => MESSAGE_CANCELLED,
            MessageEvent::Suppressed(_) => RECIPIENTS_SUPPRESSED,
        }
    }

    fn schema_version(&self) -> u16 {
        1
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            MessageEvent::Queued(p) => to_json(p),
            MessageEvent::Attempted(p) => to_json(p),
            MessageEvent::Sent(p) => to_json(p),
            MessageEvent::Deferred(p) => to_json(p),
            MessageEvent::Failed(p) => to_json(p),
            MessageEvent::Cancelled(p) => to_json(p),
            MessageEvent::Suppressed(p) => to_json(p),
        }
    }

    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self> {
        require_v1(event_type, schema_version, message_event_types())?;
        let t = event_type;
        Ok(match event_type {
            MESSAGE_QUEUED => MessageEvent::Queued(Box::new(from_json(t, payload)?)),
            DELIVERY_ATTEMPTED => MessageEvent::Attempted(from_json(t, payload)?),
            MESSAGE_SENT => MessageEvent::Sent(from_json(t, payload)?),
            MESSAGE_DEFERRED => MessageEvent::Deferred(from_json(t, payload)?),
            MESSAGE_FAILED => MessageEvent::Failed(from_json(t, payload)?),
            MESSAGE_CANCELLED => MessageEvent::Cancelled(from_json(t, payload)?),
            RECIPIENTS_SUPPRESSED => MessageEvent::Suppressed(from_json(t, payload)?),
            _ => return Err(unknown_type(event_type)),
        })
    }

    fn summary(&self) -> String {
        match self {
            MessageEvent::Queued(m) => format!(
                "Message queued from {} to {} recipient(s), priority {}",
                m.from.email,
                m.recipients().count(),
                m.priority.as_str()
            ),
            MessageEvent::Attempted(a) => match a.code {
                Some(code) => format!(
                    "Attempt {} via {}: {} ({code} {}) in {} ms",
                    a.attempt,
                    a.relay,
                    a.outcome.as_str(),
                    a.reply,
                    a.duration_ms
                ),
                None => format!(
                    "Attempt {} via {}: {} ({}) in {} ms",
                    a.attempt,
                    a.relay,
                    a.outcome.as_str(),
                    a.reply,
                    a.duration_ms
                ),
            },
            MessageEvent::Sent(s) => format!("Message sent via {}", s.relay),
            MessageEvent::Deferred(d) => format!(
                "Message deferred until {}: {}",
                d.next_attempt_at.to_rfc3339(),
                d.reason
            ),
            MessageEvent::Failed(f) => format!("Message failed: {}", f.reason),
            MessageEvent::Cancelled(c) => match &c.reason {
                Some(r) => format!("Message cancelled: {r}"),
                None => "Message cancelled".to_string(),
            },
            // Masked: the audit line must not spell a recipient out.
            MessageEvent::Suppressed(s) => {
                let who: Vec<String> = s
                    .recipients
                    .iter()
                    .map(|r| {
                        format!(
                            "{} ({}, {})",
                            crate::suppression::mask(&r.address),
                            r.reason.as_str(),
                            r.scope.as_str()
                        )
                    })
                    .collect();
                if s.all {
                    format!(
                        "Message suppressed: every recipient is suppressed: {}",
                        who.join(", ")
                    )
                } else {
                    format!(
                        "{} recipient(s) suppressed and left out: {}",
                        s.recipients.len(),
                        who.join(", ")
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    fn mailbox(e: &str) -> Mailbox {
        Mailbox {
            email: e.into(),
            name: None,
        }
    }

    fn message() -> MessageQueued {
        MessageQueued {
            message_id: Uuid::from_u128(7),
            sender_id: Uuid::from_u128(1),
            from: mailbox("news@example.test"),
            reply_to: None,
            to: vec![mailbox("ada@example.test")],
            cc: vec![],
            bcc: vec![],
            subject: "Hello".into(),
            html: Some("<p>Hi</p>".into()),
            text: None,
            html_blob: None,
            text_blob: None,
            headers: BTreeMap::new(),
            tags: vec!["welcome".into()],
            metadata: serde_json::json!({"user": 42}),
            attachments: vec![],
            priority: Priority::Normal,
            category: Category::Transactional,
            scheduled_at: None,
            idempotency_key: None,
            request_digest: "00".into(),
            queued_at: at(0),
            template: None,
        }
    }

    fn fold(events: &[MessageEvent]) -> MessageState {
        let mut s = MessageState::default();
        for e in events {
            apply(&mut s, e);
        }
        s
    }

    fn queued() -> Vec<MessageEvent> {
        decide(
            &MessageState::default(),
            MessageCommand::Queue {
                message: Box::new(message()),
                now: at(0),
            },
        )
        .unwrap()
    }

    fn attempt(outcome: AttemptOutcome, code: u16) -> DeliveryAttempted {
        DeliveryAttempted {
            attempt: 1,
            relay_id: None,
            relay: "primary".into(),
            outcome,
            code: Some(code),
            reply: "ok".into(),
            duration_ms: 3,
            at: at(1),
        }
    }

    #[test]
    fn a_valid_message_is_queued() {
        let events = queued();
        assert_eq!(events.len(), 1);
        assert_eq!(fold(&events).status, MessageStatus::Queued);
    }

    #[test]
    fn validation_names_every_failing_field() {
        let mut m = message();
        m.from.email = "not an address".into();
        m.to = vec![];
        m.subject = " ".into();
        m.html = None;
        m.scheduled_at = Some(at(-5));
        m.headers.insert("Subject".into(), "x".into());
        let err = decide(
            &MessageState::default(),
            MessageCommand::Queue {
                message: Box::new(m),
                now: at(0),
            },
        )
        .unwrap_err();
        let DomainError::Validation { fields } = err else {
            panic!("expected a validation error")
        };
        let names: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
        for want in [
            "from",
            "to",
            "subject",
            "html",
            "scheduled_at",
            "headers.Subject",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }

    #[test]
    fn a_dispatch_round_records_attempts_then_the_result() {
        let mut events = queued();
        let state = fold(&events);
        let round = decide(
            &state,
            MessageCommand::RecordDispatch {
                suppressed: None,
                attempts: vec![
                    attempt(AttemptOutcome::Unreachable, 0),
                    attempt(AttemptOutcome::Sent, 250),
                ],
                result: DispatchResult::Sent(MessageSent {
                    relay_id: None,
                    relay: "backup".into(),
                    reply: "ok".into(),
                    at: at(2),
                }),
            },
        )
        .unwrap();
        assert_eq!(round.len(), 3);
        events.extend(round);
        let state = fold(&events);
        assert_eq!(state.status, MessageStatus::Sent);
        assert_eq!(state.rounds, 1);
        let again = decide(
            &state,
            MessageCommand::Cancel {
                reason: None,
                now: at(3),
            },
        );
        assert_eq!(
            again.unwrap_err().code(),
            DomainError::MessageFinal {
                status: String::new()
            }
            .code()
        );
    }

    #[test]
    fn cancel_only_while_not_sent_and_a_late_250_is_still_recorded() {
        let mut events = queued();
        events.extend(
            decide(
                &fold(&events),
                MessageCommand::Cancel {
                    reason: Some("typo".into()),
                    now: at(1),
                },
            )
            .unwrap(),
        );
        let state = fold(&events);
        assert_eq!(state.status, MessageStatus::Cancelled);
        let deferred = decide(
            &state,
            MessageCommand::RecordDispatch {
                suppressed: None,
                attempts: vec![],
                result: DispatchResult::Deferred(MessageDeferred {
                    reason: "451".into(),
                    code: Some(451),
                    next_attempt_at: at(60),
                }),
            },
        );
        assert!(deferred.is_err());
        let sent = decide(
            &state,
            MessageCommand::RecordDispatch {
                suppressed: None,
                attempts: vec![attempt(AttemptOutcome::Sent, 250)],
                result: DispatchResult::Sent(MessageSent {
                    relay_id: None,
                    relay: "primary".into(),
                    reply: "ok".into(),
                    at: at(2),
                }),
            },
        );
        assert!(sent.is_ok());
    }

    #[test]
    fn events_round_trip_through_the_codec() {
        let events = vec![
            MessageEvent::Queued(Box::new(message())),
            MessageEvent::Attempted(attempt(AttemptOutcome::Deferred, 451)),
            MessageEvent::Deferred(MessageDeferred {
                reason: "try later".into(),
                code: Some(451),
                next_attempt_at: at(60),
            }),
            MessageEvent::Failed(MessageFailed {
                reason: "expired".into(),
                code: None,
                permanent: false,
                at: at(70),
            }),
        ];
        for e in events {
            let back =
                MessageEvent::decode(e.event_type(), e.schema_version(), &e.encode()).unwrap();
            assert_eq!(back, e);
            assert!(!back.summary().is_empty());
        }
        assert!(MessageEvent::decode("Nope", 1, b"{}").is_err());
        assert!(MessageEvent::decode(MESSAGE_SENT, 2, b"{}").is_err());
    }

    fn suppressed(address: &str) -> SuppressedRecipient {
        SuppressedRecipient {
            address: address.into(),
            reason: crate::suppression::Reason::Unsubscribe,
            scope: crate::suppression::Scope::Tenant,
        }
    }

    fn sent_result() -> DispatchResult {
        DispatchResult::Sent(MessageSent {
            relay_id: None,
            relay: "primary".into(),
            reply: "ok".into(),
            at: at(2),
        })
    }

    #[test]
    fn every_recipient_suppressed_ends_the_message_suppressed() {
        let mut events = queued();
        let round = decide(
            &fold(&events),
            MessageCommand::Suppress {
                attempts: vec![],
                recipients: vec![suppressed("ada@example.test")],
                at: at(1),
            },
        )
        .unwrap();
        assert_eq!(event_types_of(&round), [RECIPIENTS_SUPPRESSED]);
        let MessageEvent::Suppressed(s) = &round[0] else {
            panic!("expected RecipientsSuppressed")
        };
        assert!(s.all);
        events.extend(round);
        let state = fold(&events);
        assert_eq!(state.status, MessageStatus::Suppressed);
        assert!(state.status.is_final());
        // Final: no cancel, no later round, not even a 250 (unlike after a cancel).
        for cmd in [
            MessageCommand::Cancel {
                reason: None,
                now: at(3),
            },
            MessageCommand::RecordDispatch {
                suppressed: None,
                attempts: vec![attempt(AttemptOutcome::Sent, 250)],
                result: sent_result(),
            },
            MessageCommand::Suppress {
                attempts: vec![],
                recipients: vec![suppressed("ada@example.test")],
                at: at(3),
            },
        ] {
            assert_eq!(
                decide(&state, cmd).unwrap_err().code(),
                "MESSAGE_ALREADY_FINAL"
            );
        }
    }

    #[test]
    fn suppressing_needs_a_live_message_and_someone_to_suppress() {
        let none = decide(
            &MessageState::default(),
            MessageCommand::Suppress {
                attempts: vec![],
                recipients: vec![suppressed("ada@example.test")],
                at: at(1),
            },
        );
        assert_eq!(none.unwrap_err(), DomainError::MessageNotFound);
        let empty = decide(
            &fold(&queued()),
            MessageCommand::Suppress {
                attempts: vec![],
                recipients: vec![],
                at: at(1),
            },
        );
        assert_eq!(empty.unwrap_err().code(), "VALIDATION_FAILED");
        let mut events = queued();
        events.extend(
            decide(
                &fold(&events),
                MessageCommand::Cancel {
                    reason: None,
                    now: at(1),
                },
            )
            .unwrap(),
        );
        let after_cancel = decide(
            &fold(&events),
            MessageCommand::Suppress {
                attempts: vec![],
                recipients: vec![suppressed("ada@example.test")],
                at: at(2),
            },
        );
        assert_eq!(after_cancel.unwrap_err().code(), "MESSAGE_ALREADY_FINAL");
    }

    #[test]
    fn tries_before_the_suppression_are_recorded_before_it() {
        let mut events = queued();
        let round = decide(
            &fold(&events),
            MessageCommand::Suppress {
                attempts: vec![attempt(AttemptOutcome::Unreachable, 0)],
                recipients: vec![suppressed("ada@example.test")],
                at: at(2),
            },
        )
        .unwrap();
        assert_eq!(
            event_types_of(&round),
            [DELIVERY_ATTEMPTED, RECIPIENTS_SUPPRESSED]
        );
        events.extend(round);
        let state = fold(&events);
        assert_eq!((state.status, state.rounds), (MessageStatus::Suppressed, 1));
    }

    #[test]
    fn a_partial_suppression_goes_first_in_the_round_and_the_rest_is_sent() {
        let mut events = queued();
        let partial = RecipientsSuppressed {
            recipients: vec![suppressed("cc@example.test")],
            all: false,
            at: at(1),
        };
        let round = decide(
            &fold(&events),
            MessageCommand::RecordDispatch {
                suppressed: Some(partial.clone()),
                attempts: vec![attempt(AttemptOutcome::Sent, 250)],
                result: sent_result(),
            },
        )
        .unwrap();
        assert_eq!(
            event_types_of(&round),
            [RECIPIENTS_SUPPRESSED, DELIVERY_ATTEMPTED, MESSAGE_SENT]
        );
        // A partial suppression alone changes nothing about the status.
        let mut state = fold(&events);
        apply(&mut state, &MessageEvent::Suppressed(partial.clone()));
        assert_eq!(state.status, MessageStatus::Queued);
        events.extend(round);
        assert_eq!(fold(&events).status, MessageStatus::Sent);
        // "All" or nobody cannot come with a dispatched round.
        for bad in [
            RecipientsSuppressed {
                all: true,
                ..partial.clone()
            },
            RecipientsSuppressed {
                recipients: vec![],
                ..partial
            },
        ] {
            let err = decide(
                &fold(&queued()),
                MessageCommand::RecordDispatch {
                    suppressed: Some(bad),
                    attempts: vec![],
                    result: sent_result(),
                },
            );
            assert_eq!(err.unwrap_err().code(), "VALIDATION_FAILED");
        }
    }

    #[test]
    fn the_suppression_event_round_trips_and_its_summary_masks_addresses() {
        let e = MessageEvent::Suppressed(RecipientsSuppressed {
            recipients: vec![
                suppressed("secretname@example.test"),
                SuppressedRecipient {
                    address: "other.person@example.org".into(),
                    reason: crate::suppression::Reason::HardBounce,
                    scope: crate::suppression::Scope::Global,
                },
            ],
            all: true,
            at: at(5),
        });
        assert_eq!(e.event_type(), "RecipientsSuppressed");
        assert_eq!(e.schema_version(), 1);
        let json: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
        assert_eq!(json["recipients"][0]["reason"], "unsubscribe");
        assert_eq!(json["recipients"][1]["scope"], "global");
        assert_eq!(json["all"], true);
        let back = MessageEvent::decode(e.event_type(), 1, &e.encode()).unwrap();
        assert_eq!(back, e);
        let summary = e.summary();
        assert!(!summary.contains("secretname"), "{summary}");
        assert!(!summary.contains("other.person"), "{summary}");
        assert!(summary.contains("s***@example.test"), "{summary}");
        assert!(summary.contains("hard_bounce") && summary.contains("global"));
        assert!(message_event_types().contains(&RECIPIENTS_SUPPRESSED));
    }

    #[test]
    fn the_suppressed_status_has_a_stable_name() {
        assert_eq!(MessageStatus::Suppressed.as_str(), "suppressed");
        assert_eq!(
            MessageStatus::parse("suppressed"),
            Some(MessageStatus::Suppressed)
        );
        for s in [
            MessageStatus::Queued,
            MessageStatus::Deferred,
            MessageStatus::Sent,
            MessageStatus::Failed,
            MessageStatus::Cancelled,
            MessageStatus::Suppressed,
        ] {
            assert_eq!(MessageStatus::parse(s.as_str()), Some(s));
        }
        assert!(!MessageStatus::Deferred.is_final());
    }

    fn event_types_of(events: &[MessageEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.event_type()).collect()
    }

    #[test]
    fn email_validation() {
        for ok in ["a@b.c", "a.b+tag@example.test", "x@localhost"] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "@b.c", "a@", "a b@c.d", "a@b..c", "a@-b.c", "<a@b.c>",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn priorities_order_for_dispatch() {
        let mut p = vec![
            Priority::Low,
            Priority::Immediate,
            Priority::Normal,
            Priority::High,
        ];
        p.sort();
        assert_eq!(
            p,
            vec![
                Priority::Immediate,
                Priority::High,
                Priority::Normal,
                Priority::Low
            ]
        );
    }
}
