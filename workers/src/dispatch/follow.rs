//! Following the log: a task reads it from the start (catch-up, then live) and hands the
//! dispatcher's core small facts instead of records, so that no message body ever stays
//! in the core's memory or in the channel.
//!
//! Suppressions and signal settings do not go through the core: the reader folds them into
//! the shared suppression index itself (see `suppress`), and says how far it has, before
//! it hands the batch on. Rounds check the index, not the core, and waiting for the reader
//! is shorter than waiting for the core.
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::mail_settings::{MailSettingsEvent, MAIL_SETTINGS_STREAM};
use domain::message::{AttemptOutcome, MessageEvent, MessageStatus, Priority, MESSAGE_STREAM};
use domain::signals::{SignalEvent, SIGNAL_SETTINGS_SET, SIGNAL_SETTINGS_STREAM};
use domain::suppression::{SuppressionEvent, SUPPRESSION_IMPORT_STREAM, SUPPRESSION_STREAM};
use domain::DomainEvent;
use eventlog::{EventLog, RecordedEvent};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::queue::MsgKey;
use super::suppress::Screen;

/// Records read per batch.
const BATCH: usize = 512;

pub(super) enum MessageFact {
    Queued {
        priority: Priority,
        due: DateTime<Utc>,
    },
    Attempted {
        attempt: u32,
        /// The relay, when the attempt was a send it accepted (rate-limit counts).
        sent_via: Option<Uuid>,
        at: DateTime<Utc>,
    },
    Deferred {
        next_attempt_at: DateTime<Utc>,
    },
    Finished(MessageStatus),
}

pub(super) enum Fact {
    Settings {
        tenant: Uuid,
        event: MailSettingsEvent,
    },
    Message {
        key: MsgKey,
        version: u64,
        position: u64,
        fact: MessageFact,
    },
}

/// The facts of one read, and the log position they bring the reader to.
pub(super) struct Batch {
    pub facts: Vec<Fact>,
    pub position: u64,
}

fn fact(rec: &RecordedEvent) -> Option<Fact> {
    let kind = rec.stream.kind.as_str();
    if kind == MAIL_SETTINGS_STREAM {
        return match MailSettingsEvent::decode(&rec.event_type, rec.schema_version, &rec.payload) {
            Ok(event) => Some(Fact::Settings {
                tenant: rec.tenant,
                event,
            }),
            Err(e) => {
                // The code only: a serde message may quote payload values (addresses).
                tracing::warn!(
                    position = rec.position,
                    error = e.code(),
                    "skipping an undecodable mail-settings event"
                );
                None
            }
        };
    }
    if kind != MESSAGE_STREAM {
        return None;
    }
    let Ok(id) = Uuid::parse_str(&rec.stream.id) else {
        tracing::warn!(
            position = rec.position,
            "skipping a message event whose stream id is not a uuid"
        );
        return None;
    };
    let event = match MessageEvent::decode(&rec.event_type, rec.schema_version, &rec.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(
                position = rec.position,
                message_id = %id,
                error = e.code(),
                "skipping an undecodable message event"
            );
            return None;
        }
    };
    let fact = match event {
        MessageEvent::Queued(q) => MessageFact::Queued {
            priority: q.priority,
            due: q.due_at(),
        },
        MessageEvent::Attempted(a) => MessageFact::Attempted {
            attempt: a.attempt,
            sent_via: if a.outcome == AttemptOutcome::Sent {
                a.relay_id
            } else {
                None
            },
            at: a.at,
        },
        MessageEvent::Deferred(d) => MessageFact::Deferred {
            next_attempt_at: d.next_attempt_at,
        },
        MessageEvent::Sent(_) => MessageFact::Finished(MessageStatus::Sent),
        MessageEvent::Failed(_) => MessageFact::Finished(MessageStatus::Failed),
        MessageEvent::Cancelled(_) => MessageFact::Finished(MessageStatus::Cancelled),
        MessageEvent::Suppressed(s) if s.all => MessageFact::Finished(MessageStatus::Suppressed),
        // Some recipients left out of a round: the round's own events follow.
        MessageEvent::Suppressed(_) => return None,
    };
    Some(Fact::Message {
        key: (rec.tenant, id),
        version: rec.version,
        position: rec.position,
        fact,
    })
}

/// Folds a suppression or signal-settings event into the index; false for any other.
/// The lock is taken per event that needs it, so that decoding the other records never
/// holds up a round's check.
fn index(screen: &Screen, rec: &RecordedEvent) -> bool {
    let kind = rec.stream.kind.as_str();
    if kind == SUPPRESSION_STREAM || kind == SUPPRESSION_IMPORT_STREAM {
        match SuppressionEvent::decode(&rec.event_type, rec.schema_version, &rec.payload) {
            Ok(e) => screen.write().apply_suppression(rec.tenant, &e),
            // The code only: a serde message may quote an address. A suppression that
            // cannot be read is loud, because it means mail may go where it must not.
            Err(e) => tracing::error!(
                position = rec.position,
                error = e.code(),
                "skipping an undecodable suppression event"
            ),
        }
        return true;
    }
    // Only the settings matter here; webhook and signal events are on other streams, and
    // checked by type too so that nothing else on the stream is decoded for nothing.
    if kind == SIGNAL_SETTINGS_STREAM && rec.event_type == SIGNAL_SETTINGS_SET {
        match SignalEvent::decode(&rec.event_type, rec.schema_version, &rec.payload) {
            Ok(e) => screen.write().apply_signal_settings(rec.tenant, &e),
            Err(e) => tracing::warn!(
                position = rec.position,
                error = e.code(),
                "skipping an undecodable signal settings event"
            ),
        }
        return true;
    }
    false
}

/// Reads the whole log, then follows it, until the log closes or the core goes away.
pub(super) async fn follow(log: EventLog, tx: mpsc::Sender<Batch>, screen: Arc<Screen>) {
    let mut sub = log.subscribe(0);
    drop(log);
    let mut backoff = Duration::from_millis(100);
    loop {
        // Without the core there is no one to read for; leaving also drops the log handle.
        let next = tokio::select! {
            next = sub.next_batch(BATCH) => next,
            () = tx.closed() => return,
        };
        match next {
            Ok(records) => {
                backoff = Duration::from_millis(100);
                let facts = records
                    .iter()
                    .filter(|rec| !index(&screen, rec))
                    .filter_map(fact)
                    .collect();
                screen.indexed(sub.position());
                let batch = Batch {
                    facts,
                    position: sub.position(),
                };
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
            Err(eventlog::Error::Closed) => {
                tracing::info!("the event log closed; the dispatcher stops following it");
                return;
            }
            Err(e) => {
                // A storage error may pass (the next read retries from the same position);
                // a corrupt record will not, but retrying slowly costs little and keeps
                // the error visible.
                tracing::error!(
                    position = sub.position(),
                    error = %e,
                    "reading the event log failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
