//! The messages read model: each message's current state, for `message(id)`, the REST
//! reads and the listing with filters. The timeline itself is not copied here: it is read
//! straight from the message's stream in the log.
//!
//! Keys: `m/<tenant>/<message id>` → [`MessageView`], and `o/<tenant>/<!position>` →
//! message id, where `!position` is the inverted log position of the `MessageQueued`
//! event, so a forward scan lists the newest message first and a cursor is that key.
use domain::message::{AttemptOutcome, MessageEvent, MESSAGE_STREAM};
use domain::DomainEvent;
use eventlog::RecordedEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{ModelRead, ModelWrite};
use crate::runner::Projector;

pub const NAME: &str = "messages";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: Uuid,
    pub tenant: Uuid,
    pub status: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc_count: u32,
    pub subject: String,
    pub tags: Vec<String>,
    pub priority: String,
    pub category: String,
    /// The caller's metadata, as JSON text.
    pub metadata: String,
    pub idempotency_key: Option<String>,
    pub attachments: u32,
    pub scheduled_at_us: Option<i64>,
    pub queued_at_us: i64,
    pub updated_at_us: i64,
    /// Dispatch rounds so far.
    pub attempts: u32,
    pub last_code: Option<u16>,
    pub last_reply: Option<String>,
    pub relay: Option<String>,
    pub next_attempt_at_us: Option<i64>,
    pub sent_at_us: Option<i64>,
    /// The log position of the `MessageQueued` event: the listing cursor.
    pub position: u64,
    /// The stream's version (events so far).
    pub version: u64,
}

fn view_key(tenant: Uuid, id: Uuid) -> Vec<u8> {
    let mut k = b"m/".to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

fn order_prefix(tenant: Uuid) -> Vec<u8> {
    let mut k = b"o/".to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(b'/');
    k
}

fn order_key(tenant: Uuid, position: u64) -> Vec<u8> {
    let mut k = order_prefix(tenant);
    k.extend_from_slice(&(u64::MAX - position).to_be_bytes());
    k
}

pub struct MessagesProjector;

impl Projector for MessagesProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, e: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()> {
        if e.stream.kind != MESSAGE_STREAM {
            return Ok(());
        }
        let event =
            MessageEvent::decode(&e.event_type, e.schema_version, &e.payload).map_err(|err| {
                Error::Apply {
                    projector: NAME.into(),
                    position: e.position,
                    reason: err.to_string(),
                }
            })?;
        let t = e.tenant;
        let at = e.recorded_at_us;
        if let MessageEvent::Queued(q) = &event {
            let view = MessageView {
                id: q.message_id,
                tenant: t,
                status: "queued".into(),
                from: q.from.email.clone(),
                to: q.to.iter().map(|m| m.email.clone()).collect(),
                cc: q.cc.iter().map(|m| m.email.clone()).collect(),
                bcc_count: u32::try_from(q.bcc.len()).unwrap_or(u32::MAX),
                subject: q.subject.clone(),
                tags: q.tags.clone(),
                priority: q.priority.as_str().into(),
                category: q.category.as_str().into(),
                metadata: q.metadata.to_string(),
                idempotency_key: q.idempotency_key.clone(),
                attachments: u32::try_from(q.attachments.len()).unwrap_or(u32::MAX),
                scheduled_at_us: q.scheduled_at.map(|d| d.timestamp_micros()),
                queued_at_us: at,
                updated_at_us: at,
                attempts: 0,
                last_code: None,
                last_reply: None,
                relay: None,
                next_attempt_at_us: None,
                sent_at_us: None,
                position: e.position,
                version: e.version,
            };
            model.put(&order_key(t, e.position), &view.id)?;
            model.put(&view_key(t, view.id), &view)?;
            return Ok(());
        }
        let Ok(id) = Uuid::parse_str(&e.stream.id) else {
            return Ok(());
        };
        let k = view_key(t, id);
        let Some(mut view) = model.get::<MessageView>(&k)? else {
            return Ok(());
        };
        match event {
            MessageEvent::Queued(_) => {}
            MessageEvent::Attempted(a) => {
                view.attempts = view.attempts.max(a.attempt);
                view.last_code = a.code;
                view.last_reply = Some(a.reply);
                if a.outcome == AttemptOutcome::Sent {
                    view.relay = Some(a.relay);
                }
            }
            MessageEvent::Sent(s) => {
                view.status = "sent".into();
                view.relay = Some(s.relay);
                view.sent_at_us = Some(s.at.timestamp_micros());
                view.next_attempt_at_us = None;
            }
            MessageEvent::Deferred(d) => {
                view.status = "deferred".into();
                view.next_attempt_at_us = Some(d.next_attempt_at.timestamp_micros());
            }
            MessageEvent::Failed(f) => {
                view.status = "failed".into();
                view.last_reply = Some(f.reason);
                if f.code.is_some() {
                    view.last_code = f.code;
                }
                view.next_attempt_at_us = None;
            }
            MessageEvent::Cancelled(_) => {
                view.status = "cancelled".into();
                view.next_attempt_at_us = None;
            }
            // Only "every recipient" ends the message; a partial suppression is followed
            // by the round's own events, which set the status.
            MessageEvent::Suppressed(s) if s.all => {
                view.status = "suppressed".into();
                view.next_attempt_at_us = None;
            }
            MessageEvent::Suppressed(_) => {}
        }
        view.updated_at_us = at;
        view.version = e.version;
        model.put(&k, &view)?;
        Ok(())
    }
}

/// What a listing keeps; every field is optional.
#[derive(Clone, Debug, Default)]
pub struct MessageFilter {
    pub status: Option<String>,
    pub tag: Option<String>,
    /// Matches any of to, cc (case-insensitive).
    pub to: Option<String>,
    pub from: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
}

impl MessageFilter {
    fn keeps(&self, v: &MessageView) -> bool {
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        self.status.as_deref().is_none_or(|s| v.status == s)
            && self
                .tag
                .as_deref()
                .is_none_or(|t| v.tags.iter().any(|x| x == t))
            && self
                .to
                .as_deref()
                .is_none_or(|to| v.to.iter().chain(v.cc.iter()).any(|x| eq(x, to)))
            && self.from.as_deref().is_none_or(|f| eq(&v.from, f))
            && self.since_us.is_none_or(|s| v.queued_at_us >= s)
            && self.until_us.is_none_or(|u| v.queued_at_us < u)
    }
}

/// One page of a listing; `next` is the cursor of the following page.
#[derive(Clone, Debug)]
pub struct MessagePage {
    pub items: Vec<MessageView>,
    pub next: Option<u64>,
}

#[derive(Clone)]
pub struct Messages {
    model: ModelRead,
}

/// How many index entries one page may look at before answering with what it has and a
/// cursor: a filter that matches little must not make one request walk the whole tenant.
const SCAN_BUDGET: usize = 20_000;

impl Messages {
    pub fn new(model: ModelRead) -> Self {
        Messages { model }
    }

    pub fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<MessageView>> {
        self.model.get(&view_key(tenant, id))
    }

    /// Newest first. `after` is the position cursor of the last item of the previous page.
    pub fn list(
        &self,
        tenant: Uuid,
        filter: &MessageFilter,
        after: Option<u64>,
        first: usize,
    ) -> Result<MessagePage> {
        let prefix = order_prefix(tenant);
        let mut cursor = after.map(|p| order_key(tenant, p));
        let mut items = Vec::new();
        let mut scanned = 0usize;
        loop {
            let batch = self.model.scan::<Uuid>(&prefix, cursor.as_deref(), 256)?;
            let Some((last_key, _)) = batch.last() else {
                return Ok(MessagePage { items, next: None });
            };
            let last_key = last_key.clone();
            for (k, id) in batch {
                scanned += 1;
                let Some(v) = self.get(tenant, id)? else {
                    continue;
                };
                if filter.keeps(&v) {
                    items.push(v);
                    if items.len() == first {
                        let next = Some(position_of(&k));
                        return Ok(MessagePage { items, next });
                    }
                }
                if scanned >= SCAN_BUDGET {
                    return Ok(MessagePage {
                        items,
                        next: Some(position_of(&k)),
                    });
                }
            }
            cursor = Some(last_key);
        }
    }
}

fn position_of(order_key: &[u8]) -> u64 {
    let n = order_key.len();
    let mut b = [0u8; 8];
    if n >= 8 {
        b.copy_from_slice(&order_key[n - 8..]);
    }
    u64::MAX - u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::Utc;
    use domain::message::{
        self, Category, DispatchResult, Mailbox, MessageCommand, MessageEvent, MessageQueued,
        MessageSent, MessageState, Priority, RecipientsSuppressed, SuppressedRecipient,
    };
    use domain::suppression::{Reason, Scope};
    use domain::DomainEvent;
    use eventlog::{Actor, EventLog, ExpectedVersion, Metadata, NewEvent, Options, StreamId};

    use super::*;
    use crate::Projections;

    fn mailbox(e: &str) -> Mailbox {
        Mailbox {
            email: e.into(),
            name: None,
        }
    }

    fn queued(to: &[&str]) -> MessageQueued {
        MessageQueued {
            message_id: Uuid::now_v7(),
            sender_id: Uuid::now_v7(),
            from: mailbox("news@example.test"),
            reply_to: None,
            to: to.iter().map(|t| mailbox(t)).collect(),
            cc: vec![],
            bcc: vec![],
            subject: "Hello".into(),
            html: None,
            text: Some("Hi".into()),
            html_blob: None,
            text_blob: None,
            headers: Default::default(),
            tags: vec![],
            metadata: serde_json::Value::Null,
            attachments: vec![],
            priority: Priority::Normal,
            category: Category::Marketing,
            scheduled_at: None,
            idempotency_key: None,
            request_digest: "00".into(),
            queued_at: Utc::now(),
            template: None,
        }
    }

    fn gone(address: &str) -> SuppressedRecipient {
        SuppressedRecipient {
            address: address.into(),
            reason: Reason::Unsubscribe,
            scope: Scope::Tenant,
        }
    }

    /// Decides each command against the stream so far and appends the events.
    async fn run(log: &EventLog, tenant: Uuid, m: MessageQueued, then: MessageCommand) -> Uuid {
        let id = m.message_id;
        let stream = StreamId::new(MESSAGE_STREAM, id.to_string());
        let mut state = MessageState::default();
        let queue = MessageCommand::Queue {
            message: Box::new(m),
            now: Utc::now(),
        };
        for cmd in [queue, then] {
            let events = message::decide(&state, cmd).unwrap();
            for e in &events {
                message::apply(&mut state, e);
            }
            let new = events
                .iter()
                .map(|e: &MessageEvent| NewEvent::new(e.event_type(), 1, e.encode()))
                .collect();
            log.append(
                tenant,
                stream.clone(),
                ExpectedVersion::Any,
                new,
                Metadata::new(Actor::System("test".into()), Uuid::now_v7()),
            )
            .await
            .unwrap();
        }
        id
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_suppressed_message_is_final_and_a_partial_suppression_leaves_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), Options::new([3u8; 32])).unwrap();
        let tenant = Uuid::now_v7();
        let all = run(
            &log,
            tenant,
            queued(&["a@example.test"]),
            MessageCommand::Suppress {
                attempts: vec![],
                recipients: vec![gone("a@example.test")],
                at: Utc::now(),
            },
        )
        .await;
        let partial = run(
            &log,
            tenant,
            queued(&["a@example.test", "b@example.test"]),
            MessageCommand::RecordDispatch {
                suppressed: Some(RecipientsSuppressed {
                    recipients: vec![gone("a@example.test")],
                    all: false,
                    at: Utc::now(),
                }),
                attempts: vec![],
                result: DispatchResult::Sent(MessageSent {
                    relay_id: None,
                    relay: "sink".into(),
                    reply: "ok".into(),
                    at: Utc::now(),
                }),
            },
        )
        .await;
        let p = Projections::start(log.clone(), vec![Arc::new(MessagesProjector)]).unwrap();
        assert!(p.wait_for(log.head(), Duration::from_secs(10)).await);
        let messages = Messages::new(p.model(NAME).unwrap());
        let v = messages.get(tenant, all).unwrap().unwrap();
        assert_eq!(
            (v.status.as_str(), v.next_attempt_at_us),
            ("suppressed", None)
        );
        assert_eq!(v.version, 2);
        let v = messages.get(tenant, partial).unwrap().unwrap();
        assert_eq!(v.status, "sent");
        let filter = MessageFilter {
            status: Some("suppressed".into()),
            ..MessageFilter::default()
        };
        let page = messages.list(tenant, &filter, None, 10).unwrap();
        let ids: Vec<Uuid> = page.items.iter().map(|v| v.id).collect();
        assert_eq!(ids, [all]);
        p.stop().await;
    }
}
