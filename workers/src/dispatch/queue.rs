//! The dispatcher's in-memory queue: one small entry per message that is neither sent,
//! failed nor cancelled. Never the body: a round reads the MessageQueued event back from
//! the log when it is time to send, so memory stays proportional to the number of pending
//! messages, not to their size.
//!
//! Every entry is in exactly one place:
//! - `waiting`, ordered by the time it may go (its due time, or the opening of a rate-limit
//!   window);
//! - `ready`, ordered by dispatch order (priority, then age as the log position of its
//!   MessageQueued);
//! - in flight (in neither set), so that it can never be taken twice.
use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use domain::message::{MessageState, MessageStatus, Priority};
use uuid::Uuid;

/// (tenant, message id): message ids are only unique within a tenant.
pub(super) type MsgKey = (Uuid, Uuid);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Waiting(DateTime<Utc>),
    Ready,
    InFlight,
}

#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub priority: Priority,
    /// When the log says it may go next: scheduled_at, queued_at or next_attempt_at.
    pub due: DateTime<Utc>,
    /// Global position of its MessageQueued: the age order among equal priorities.
    pub position: u64,
    /// Rounds recorded so far (the highest DeliveryAttempted.attempt).
    pub rounds: u32,
    /// The message stream's version as far as the dispatcher has followed it.
    pub version: u64,
    pub status: MessageStatus,
    /// A final event arrived while the entry was in flight: it leaves when it settles.
    finished: bool,
    slot: Slot,
}

impl Entry {
    pub fn state(&self) -> MessageState {
        MessageState {
            exists: true,
            status: self.status,
            rounds: self.rounds,
        }
    }
}

#[derive(Default)]
pub(super) struct Queue {
    entries: HashMap<MsgKey, Entry>,
    waiting: BTreeSet<(DateTime<Utc>, u64, MsgKey)>,
    ready: BTreeSet<(Priority, u64, MsgKey)>,
    in_flight: usize,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    #[cfg(test)]
    pub fn get(&self, key: &MsgKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    fn unslot(&mut self, key: MsgKey) {
        let Some(e) = self.entries.get(&key) else {
            return;
        };
        match e.slot {
            Slot::Waiting(at) => {
                self.waiting.remove(&(at, e.position, key));
            }
            Slot::Ready => {
                self.ready.remove(&(e.priority, e.position, key));
            }
            Slot::InFlight => self.in_flight -= 1,
        }
    }

    /// Puts an entry that is in no set into `waiting` at `at`.
    fn wait(&mut self, key: MsgKey, at: DateTime<Utc>) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.slot = Slot::Waiting(at);
            self.waiting.insert((at, e.position, key));
        }
    }

    pub fn queued(
        &mut self,
        key: MsgKey,
        priority: Priority,
        due: DateTime<Utc>,
        position: u64,
        version: u64,
    ) {
        if self.entries.contains_key(&key) {
            return;
        }
        self.entries.insert(
            key,
            Entry {
                priority,
                due,
                position,
                rounds: 0,
                version,
                status: MessageStatus::Queued,
                finished: false,
                slot: Slot::Waiting(due),
            },
        );
        self.waiting.insert((due, position, key));
    }

    fn seen(&mut self, key: &MsgKey, version: u64) -> Option<&mut Entry> {
        let e = self.entries.get_mut(key)?;
        e.version = e.version.max(version);
        Some(e)
    }

    pub fn attempted(&mut self, key: MsgKey, attempt: u32, version: u64) {
        if let Some(e) = self.seen(&key, version) {
            e.rounds = e.rounds.max(attempt);
        }
    }

    pub fn deferred(&mut self, key: MsgKey, next_attempt_at: DateTime<Utc>, version: u64) {
        let Some(e) = self.seen(&key, version) else {
            return;
        };
        e.status = MessageStatus::Deferred;
        e.due = next_attempt_at;
        if e.slot != Slot::InFlight {
            self.unslot(key);
            self.wait(key, next_attempt_at);
        }
    }

    pub fn finished(&mut self, key: MsgKey, status: MessageStatus, version: u64) {
        let Some(e) = self.seen(&key, version) else {
            return;
        };
        e.status = status;
        if e.slot == Slot::InFlight {
            e.finished = true;
        } else {
            self.remove(key);
        }
    }

    pub fn remove(&mut self, key: MsgKey) {
        self.unslot(key);
        self.entries.remove(&key);
    }

    /// Moves every waiting entry whose time has come into `ready`.
    pub fn promote(&mut self, now: DateTime<Utc>) {
        while let Some(&(at, position, key)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            if let Some(e) = self.entries.get_mut(&key) {
                e.slot = Slot::Ready;
                self.ready.insert((e.priority, position, key));
            }
        }
    }

    /// When the next waiting entry becomes due.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.waiting.first().map(|(at, _, _)| *at)
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Takes the first ready entry in dispatch order and marks it in flight.
    pub fn take(&mut self) -> Option<(MsgKey, Entry)> {
        let (_, _, key) = self.ready.pop_first()?;
        let e = self.entries.get_mut(&key)?;
        e.slot = Slot::InFlight;
        self.in_flight += 1;
        Some((key, e.clone()))
    }

    /// An entry in flight goes back to waiting until `until` without any change to what the
    /// log says (rate limits, a failed read): its due time stays as recorded.
    pub fn hold(&mut self, key: MsgKey, until: DateTime<Utc>) {
        if matches!(self.entries.get(&key), Some(e) if e.slot == Slot::InFlight) {
            self.unslot(key);
            self.wait(key, until);
        }
    }

    /// An entry in flight whose round the dispatcher has now followed in the log: it leaves
    /// if that round (or a cancel) finished it, otherwise it waits for its next due time.
    pub fn settle(&mut self, key: MsgKey) {
        let Some(e) = self.entries.get(&key) else {
            return;
        };
        if e.slot != Slot::InFlight {
            return;
        }
        if e.finished || e.status.is_final() {
            self.remove(key);
        } else {
            let due = e.due;
            self.unslot(key);
            self.wait(key, due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    fn key(n: u128) -> MsgKey {
        (Uuid::from_u128(1), Uuid::from_u128(n))
    }

    #[test]
    fn due_entries_go_by_priority_then_age_and_never_early() {
        let mut q = Queue::default();
        q.queued(key(1), Priority::Low, t(0), 1, 1);
        q.queued(key(2), Priority::Normal, t(0), 2, 1);
        q.queued(key(3), Priority::Immediate, t(0), 3, 1);
        q.queued(key(4), Priority::Normal, t(0), 4, 1);
        q.queued(key(5), Priority::Immediate, t(10), 5, 1);
        q.promote(t(5));
        let order: Vec<_> = std::iter::from_fn(|| q.take().map(|(k, _)| k)).collect();
        assert_eq!(order, vec![key(3), key(2), key(4), key(1)]);
        assert_eq!(q.next_wake(), Some(t(10)));
        assert_eq!(q.in_flight(), 4);
        q.promote(t(9));
        assert!(q.take().is_none());
        q.promote(t(10));
        assert_eq!(q.take().map(|(k, _)| k), Some(key(5)));
    }

    #[test]
    fn in_flight_entries_are_not_taken_twice_and_settle_by_what_the_log_said() {
        let mut q = Queue::default();
        q.queued(key(1), Priority::Normal, t(0), 1, 1);
        q.queued(key(2), Priority::Normal, t(0), 2, 1);
        q.promote(t(0));
        let (k1, _) = q.take().unwrap();
        let (k2, _) = q.take().unwrap();
        assert!(q.take().is_none());
        // A deferral seen while in flight only takes effect when the round settles.
        q.attempted(k1, 1, 2);
        q.deferred(k1, t(60), 3);
        assert_eq!(q.next_wake(), None);
        q.settle(k1);
        assert_eq!(q.next_wake(), Some(t(60)));
        let e = q.get(&k1).unwrap();
        assert_eq!(
            (e.rounds, e.version, e.status),
            (1, 3, MessageStatus::Deferred)
        );
        // A final event while in flight removes the entry when it settles.
        q.finished(k2, MessageStatus::Sent, 3);
        assert!(q.get(&k2).is_some());
        q.settle(k2);
        assert!(q.get(&k2).is_none());
        assert_eq!((q.len(), q.in_flight()), (1, 0));
    }

    #[test]
    fn a_cancel_before_the_take_removes_and_a_hold_keeps_the_due_time() {
        let mut q = Queue::default();
        q.queued(key(1), Priority::Normal, t(0), 1, 1);
        q.queued(key(2), Priority::Normal, t(0), 2, 1);
        q.finished(key(1), MessageStatus::Cancelled, 2);
        q.promote(t(0));
        let (k, e) = q.take().unwrap();
        assert_eq!(k, key(2));
        q.hold(k, t(30));
        assert_eq!(q.next_wake(), Some(t(30)));
        assert_eq!(q.get(&k).unwrap().due, e.due);
        assert!(q.take().is_none());
        assert_eq!(q.len(), 1);
    }
}
