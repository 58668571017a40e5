//! What the log says about delivery reports, folded in log order: each tenant's current
//! callback, the reports still owed, and when each is next due. The worker's in-memory
//! view is only ever this fold, plus the tries it has in flight, so a restart rebuilds
//! exactly the same view from the log.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use domain::delivery_report::{
    CallbackAttempted, DeliveryReportEvent, CALLBACK_ATTEMPTED, DELIVERY_REPORT_STREAM,
};
use domain::mail_settings::{
    self, DeliveryCallback, MailSettings, MailSettingsEvent, Sealed, CALLBACK_CLEARED,
    CALLBACK_SET, MAIL_SETTINGS_STREAM,
};
use domain::message::{
    MessageEvent, MESSAGE_CANCELLED, MESSAGE_DEFERRED, MESSAGE_FAILED, MESSAGE_SENT,
    MESSAGE_STREAM, RECIPIENTS_SUPPRESSED,
};
use domain::DomainEvent;
use eventlog::RecordedEvent;
use uuid::Uuid;

/// The message events a tenant is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Sent,
    Deferred,
    Failed,
    Cancelled,
    /// Every recipient was suppressed; nothing was sent. (Some recipients left out of a
    /// round is no report of its own: the round's sent, deferred or failed follows.)
    Suppressed,
}

impl Kind {
    fn of_event(rec: &RecordedEvent) -> Option<Kind> {
        match rec.event_type.as_str() {
            MESSAGE_SENT => Some(Kind::Sent),
            MESSAGE_DEFERRED => Some(Kind::Deferred),
            MESSAGE_FAILED => Some(Kind::Failed),
            MESSAGE_CANCELLED => Some(Kind::Cancelled),
            RECIPIENTS_SUPPRESSED => {
                match MessageEvent::decode(&rec.event_type, rec.schema_version, &rec.payload) {
                    Ok(MessageEvent::Suppressed(s)) if s.all => Some(Kind::Suppressed),
                    Ok(_) => None,
                    Err(e) => {
                        // The code only: a serde message may quote an address.
                        tracing::warn!(
                            position = rec.position,
                            error = e.code(),
                            "delivery reports: skipping an undecodable suppression event"
                        );
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// The `report` field of `CallbackAttempted`.
    pub(super) fn as_str(&self) -> &'static str {
        match self {
            Kind::Sent => "sent",
            Kind::Deferred => "deferred",
            Kind::Failed => "failed",
            Kind::Cancelled => "cancelled",
            Kind::Suppressed => "suppressed",
        }
    }

    /// The `type` field of the JSON body.
    pub(super) fn body_type(&self) -> &'static str {
        match self {
            Kind::Sent => "message.sent",
            Kind::Deferred => "message.deferred",
            Kind::Failed => "message.failed",
            Kind::Cancelled => "message.cancelled",
            Kind::Suppressed => "message.suppressed",
        }
    }
}

/// A report still owed. Only what locates the reported event is kept: the body is read
/// back from the log for each try.
#[derive(Clone, Debug)]
struct Owed {
    tenant: Uuid,
    message_id: Uuid,
    /// The reported event's version on the message stream.
    version: u64,
    kind: Kind,
    correlation_id: Uuid,
    recorded_at: DateTime<Utc>,
    /// Tries made so far.
    tries: u32,
    due: DateTime<Utc>,
    in_flight: bool,
}

/// One try to make now.
#[derive(Clone, Debug)]
pub(super) struct Job {
    pub tenant: Uuid,
    pub message_id: Uuid,
    pub version: u64,
    /// The reported event's id.
    pub event_id: Uuid,
    pub kind: Kind,
    pub correlation_id: Uuid,
    pub recorded_at: DateTime<Utc>,
    /// 1-based number of this try.
    pub attempt: u32,
    pub url: String,
    pub secret: Sealed,
}

pub(super) struct State {
    schedule: Vec<Duration>,
    /// Only tenants that have a callback right now.
    callbacks: HashMap<Uuid, DeliveryCallback>,
    /// By the reported event's id.
    owed: HashMap<Uuid, Owed>,
    /// Owed reports that are not in flight, by due time.
    queue: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl State {
    pub(super) fn new(schedule: Vec<Duration>) -> Self {
        State {
            schedule,
            callbacks: HashMap::new(),
            owed: HashMap::new(),
            queue: BTreeSet::new(),
        }
    }

    /// Reports owed and not yet delivered or given up, in flight or not.
    pub(super) fn pending(&self) -> usize {
        self.owed.len()
    }

    pub(super) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.queue.first().map(|(due, _)| *due)
    }

    /// When the try after try `attempt` is due, if that one ended at `at`.
    fn due_after(&self, attempt: u32, at: DateTime<Utc>) -> DateTime<Utc> {
        // A try beyond the schedule that did not give up can only come from a run with a
        // longer schedule; one more try (which gives up) follows after the last delay.
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        let delay = self
            .schedule
            .get(index)
            .or(self.schedule.last())
            .copied()
            .unwrap_or(Duration::ZERO);
        TimeDelta::from_std(delay)
            .ok()
            .and_then(|d| at.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Folds one event of the log.
    pub(super) fn fold(&mut self, rec: &RecordedEvent) {
        match rec.stream.kind.as_str() {
            MAIL_SETTINGS_STREAM
                if rec.event_type == CALLBACK_SET || rec.event_type == CALLBACK_CLEARED =>
            {
                match MailSettingsEvent::decode(&rec.event_type, rec.schema_version, &rec.payload) {
                    Ok(event) => self.fold_settings(rec.tenant, &event),
                    Err(e) => tracing::warn!(
                        position = rec.position,
                        error = %e,
                        "delivery reports: skipping an undecodable mail settings event"
                    ),
                }
            }
            // The callback is checked first so that no payload is decoded for a tenant
            // without one.
            MESSAGE_STREAM if self.callbacks.contains_key(&rec.tenant) => {
                if let Some(kind) = Kind::of_event(rec) {
                    self.fold_message(rec, kind);
                }
            }
            DELIVERY_REPORT_STREAM if rec.event_type == CALLBACK_ATTEMPTED => {
                match DeliveryReportEvent::decode(&rec.event_type, rec.schema_version, &rec.payload)
                {
                    Ok(DeliveryReportEvent::CallbackAttempted(a)) => {
                        if self.owed.get(&a.report_of).map(|o| o.tenant) == Some(rec.tenant) {
                            self.apply_try(&a);
                        }
                    }
                    Err(e) => tracing::warn!(
                        position = rec.position,
                        error = %e,
                        "delivery reports: skipping an undecodable callback attempt"
                    ),
                }
            }
            _ => {}
        }
    }

    fn fold_settings(&mut self, tenant: Uuid, event: &MailSettingsEvent) {
        // Only the callback matters here, so the rest of the aggregate is not kept.
        let mut settings = MailSettings {
            callback: self.callbacks.remove(&tenant),
            ..MailSettings::default()
        };
        mail_settings::apply(&mut settings, event);
        match settings.callback {
            Some(callback) => {
                self.callbacks.insert(tenant, callback);
            }
            None => {
                // The tenant no longer wants reports: what was still owed is dropped, so
                // that a later callback does not receive a backlog it never asked for.
                // Deciding this in log order keeps a restart's view the same.
                let dropped: Vec<Uuid> = self
                    .owed
                    .iter()
                    .filter(|(_, o)| o.tenant == tenant)
                    .map(|(id, _)| *id)
                    .collect();
                for id in dropped {
                    if let Some(o) = self.owed.remove(&id) {
                        self.queue.remove(&(o.due, id));
                    }
                }
            }
        }
    }

    fn fold_message(&mut self, rec: &RecordedEvent, kind: Kind) {
        if !self.callbacks.contains_key(&rec.tenant) {
            return;
        }
        let Ok(message_id) = Uuid::parse_str(&rec.stream.id) else {
            tracing::warn!(
                position = rec.position,
                "delivery reports: a message stream id is not a UUID; no report"
            );
            return;
        };
        let recorded_at = rec.recorded_at();
        let owed = Owed {
            tenant: rec.tenant,
            message_id,
            version: rec.version,
            kind,
            correlation_id: rec.correlation_id,
            recorded_at,
            tries: 0,
            due: recorded_at,
            in_flight: false,
        };
        if let Some(old) = self.owed.insert(rec.event_id, owed) {
            self.queue.remove(&(old.due, rec.event_id));
        }
        self.queue.insert((recorded_at, rec.event_id));
    }

    /// A try, from the log or just made: idempotent, so seeing the same try both ways is
    /// harmless.
    fn apply_try(&mut self, a: &CallbackAttempted) {
        let next = self.due_after(a.attempt, a.at);
        let Some(o) = self.owed.get_mut(&a.report_of) else {
            return;
        };
        if a.attempt < o.tries {
            return;
        }
        if !o.in_flight {
            self.queue.remove(&(o.due, a.report_of));
        }
        if a.delivered || a.gave_up {
            self.owed.remove(&a.report_of);
            return;
        }
        o.tries = a.attempt;
        o.due = next;
        if !o.in_flight {
            self.queue.insert((next, a.report_of));
        }
    }

    /// The earliest report due at `now`, marked in flight; `None` when nothing is due.
    pub(super) fn take_due(&mut self, now: DateTime<Utc>) -> Option<Job> {
        loop {
            let &(due, id) = self.queue.first()?;
            if due > now {
                return None;
            }
            self.queue.pop_first();
            let Some(o) = self.owed.get_mut(&id) else {
                continue;
            };
            // A cleared callback drops its reports, so this holds; checked rather than
            // assumed because a report without a URL can only be dropped.
            let Some(callback) = self.callbacks.get(&o.tenant) else {
                self.owed.remove(&id);
                continue;
            };
            o.in_flight = true;
            return Some(Job {
                tenant: o.tenant,
                message_id: o.message_id,
                version: o.version,
                event_id: id,
                kind: o.kind,
                correlation_id: o.correlation_id,
                recorded_at: o.recorded_at,
                attempt: o.tries.saturating_add(1),
                url: callback.url.clone(),
                secret: callback.secret.clone(),
            });
        }
    }

    /// A try made by this worker has ended (whether or not it could be recorded).
    pub(super) fn finish(&mut self, a: &CallbackAttempted) {
        // The log may have handed this try over already, while the report was in flight
        // and so kept out of the queue; applying it again queues the next try.
        if let Some(o) = self.owed.get_mut(&a.report_of) {
            o.in_flight = false;
        }
        self.apply_try(a);
    }

    /// A try that ended without an outcome (its task died): try again after the delay
    /// for the tries already recorded.
    pub(super) fn abandon(&mut self, report_of: Uuid, now: DateTime<Utc>) {
        let Some(tries) = self.owed.get(&report_of).map(|o| o.tries) else {
            return;
        };
        let next = self.due_after(tries.max(1), now);
        if let Some(o) = self.owed.get_mut(&report_of) {
            if o.in_flight {
                o.in_flight = false;
                o.due = next;
                self.queue.insert((next, report_of));
            }
        }
    }
}
