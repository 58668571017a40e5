//! The suppression index the dispatcher checks right before each SMTP transaction.
//!
//! The reader task folds every suppression event (added, removed, imported) and every
//! tenant's signal settings (plus-address matching) into it as it reads the log, and then
//! publishes how far it has read. A round waits until the reader has reached the durable
//! head as of the check before it looks (see [`Screen::synced`]), so a suppression that
//! was acknowledged before a message's transaction always stops it, however soon after
//! queuing it came. The read models are not used: the dispatcher follows the log, not
//! them, and it must not depend on a projection's lag.
//!
//! Size: an index may hold a million entries, so an entry is its exact (lower-cased)
//! address and 16 bytes of what matters for the decision. A second map exists only for the
//! entries whose plus/Gmail-normalised form differs from their address (a `+tag`, dots at
//! Gmail, googlemail.com): most entries are already in that form and are found through
//! the exact map with the recipient's normalised form. The tenant's setting is only read
//! when matching, so turning plus addressing on or off rebuilds nothing.
//!
//! Partitions: the log partition an event is in says whose entry it is (a tenant's, or
//! [`GLOBAL_TENANT`]'s for the global list that binds every tenant). The partition is
//! trusted rather than the payload's `scope`: only the log's partition is enforced by
//! the API's tenant isolation, so a tenant cannot add an entry binding another tenant.
use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::message::{Category, SuppressedRecipient};
use domain::signals::{SignalEvent, SignalSettings};
use domain::suppression::{AppliesTo, Reason, Scope, Suppression, SuppressionEvent, GLOBAL_TENANT};
use eventlog::EventLog;
use lettre::address::Envelope;
use tokio::sync::watch;
use uuid::Uuid;

/// How long a round waits for the reader to reach the log head before it gives up and
/// tries again later (sending unchecked is never an option). Below the dispatcher's stop
/// grace, so that a stopping dispatcher never waits on it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

/// What an entry decides, without the address (which is the map key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    reason: Reason,
    applies_to: AppliesTo,
    expires_at: Option<DateTime<Utc>>,
}

impl Entry {
    fn of(s: &Suppression) -> Entry {
        Entry {
            reason: s.reason,
            applies_to: s.applies_to,
            expires_at: s.expires_at,
        }
    }

    /// The same rule as `Suppression::blocks` (a unit test holds them together).
    fn blocks(&self, category: Category, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|e| e > now)
            && (self.applies_to == AppliesTo::All || category == Category::Marketing)
    }
}

/// Case-insensitive always: the form every address is stored and looked up in.
fn exact_form(address: &str) -> String {
    inbound::address::normalise(address, false).unwrap_or_else(|| address.trim().to_lowercase())
}

/// The plus/Gmail-normalised form, when the address is plausible.
fn canonical_form(address: &str) -> Option<String> {
    inbound::address::normalise(address, true)
}

#[derive(Default)]
struct Partition {
    exact: HashMap<Box<str>, Entry>,
    /// Canonical form → the stored addresses with that form, only for addresses that are
    /// not their own canonical form.
    canonical: HashMap<Box<str>, Vec<Box<str>>>,
}

impl Partition {
    fn insert(&mut self, s: &Suppression) {
        let key = exact_form(&s.address);
        if let Some(c) = canonical_form(&key).filter(|c| *c != key) {
            let list = self.canonical.entry(c.into_boxed_str()).or_default();
            if !list.iter().any(|k| **k == *key) {
                list.push(key.clone().into_boxed_str());
            }
        }
        self.exact.insert(key.into_boxed_str(), Entry::of(s));
    }

    fn remove(&mut self, address: &str) {
        let key = exact_form(address);
        if self.exact.remove(key.as_str()).is_none() {
            return;
        }
        if let Some(c) = canonical_form(&key).filter(|c| *c != key) {
            if let Some(list) = self.canonical.get_mut(c.as_str()) {
                list.retain(|k| **k != *key);
                if list.is_empty() {
                    self.canonical.remove(c.as_str());
                }
            }
        }
    }

    /// The first entry stopping `category` at `now` among those matching the address.
    fn find(
        &self,
        exact: &str,
        canonical: Option<&str>,
        category: Category,
        now: DateTime<Utc>,
    ) -> Option<Reason> {
        let blocking = |k: &str| {
            self.exact
                .get(k)
                .filter(|e| e.blocks(category, now))
                .map(|e| e.reason)
        };
        if let Some(r) = blocking(exact) {
            return Some(r);
        }
        let c = canonical?;
        blocking(c).or_else(|| {
            self.canonical
                .get(c)
                .and_then(|list| list.iter().find_map(|k| blocking(k)))
        })
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }
}

/// Every partition's entries and the tenants that match with plus addressing.
#[derive(Default)]
pub(super) struct Index {
    partitions: HashMap<Uuid, Partition>,
    plus_addressing: HashSet<Uuid>,
}

impl Index {
    pub fn apply_suppression(&mut self, partition: Uuid, event: &SuppressionEvent) {
        match event {
            SuppressionEvent::Added(s) => self.partitions.entry(partition).or_default().insert(s),
            SuppressionEvent::Imported(i) => {
                let p = self.partitions.entry(partition).or_default();
                for s in &i.entries {
                    p.insert(s);
                }
            }
            SuppressionEvent::Removed(r) => {
                if let Some(p) = self.partitions.get_mut(&partition) {
                    p.remove(&r.address);
                    if p.is_empty() {
                        self.partitions.remove(&partition);
                    }
                }
            }
        }
    }

    pub fn apply_signal_settings(&mut self, tenant: Uuid, event: &SignalEvent) {
        let mut settings = SignalSettings {
            plus_addressing: self.plus_addressing.contains(&tenant),
            ..SignalSettings::default()
        };
        domain::signals::apply_settings(&mut settings, event);
        if settings.plus_addressing {
            self.plus_addressing.insert(tenant);
        } else {
            self.plus_addressing.remove(&tenant);
        }
    }

    /// Why `address` may not receive a message of `category` from `tenant` at `now`:
    /// the tenant's own entries first, then the global ones.
    pub fn check(
        &self,
        tenant: Uuid,
        address: &str,
        category: Category,
        now: DateTime<Utc>,
    ) -> Option<(Reason, Scope)> {
        let exact = exact_form(address);
        let canonical = if self.plus_addressing.contains(&tenant) {
            canonical_form(address)
        } else {
            None
        };
        let mut order = vec![(tenant, Scope::Tenant)];
        if tenant != GLOBAL_TENANT {
            order.push((GLOBAL_TENANT, Scope::Global));
        } else {
            order[0].1 = Scope::Global;
        }
        order.into_iter().find_map(|(partition, scope)| {
            self.partitions
                .get(&partition)?
                .find(&exact, canonical.as_deref(), category, now)
                .map(|reason| (reason, scope))
        })
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.partitions.values().map(|p| p.exact.len()).sum()
    }

    #[cfg(test)]
    fn canonical_links(&self) -> usize {
        self.partitions
            .values()
            .flat_map(|p| p.canonical.values())
            .map(Vec::len)
            .sum()
    }
}

/// One transaction's recipients after the check.
pub(super) struct Screened {
    /// The envelope to send with, holding only the recipients left; `None` when every
    /// recipient is suppressed.
    pub envelope: Option<Envelope>,
    /// The recipients dropped, once each, in envelope order.
    pub suppressed: Vec<SuppressedRecipient>,
    /// When the check was made.
    pub at: DateTime<Utc>,
}

/// The index, shared by the reader (which writes it) and the rounds (which read it).
pub(super) struct Screen {
    index: RwLock<Index>,
    /// The log position the reader has folded into the index.
    indexed: watch::Sender<u64>,
}

impl Default for Screen {
    fn default() -> Self {
        Screen {
            index: RwLock::new(Index::default()),
            indexed: watch::Sender::new(0),
        }
    }
}

impl Screen {
    /// A poisoned lock only means a panic elsewhere mid-update of one entry; the map itself
    /// stays usable, and refusing every send over it would be worse.
    pub fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reader has folded everything up to `position`.
    pub fn indexed(&self, position: u64) {
        self.indexed.send_replace(position);
    }

    /// Waits until the index holds everything durable in the log now. False when the
    /// reader did not get there in time (it is stopped, or far behind).
    pub async fn synced(&self, log: &EventLog) -> bool {
        let head = log.head();
        let mut rx = self.indexed.subscribe();
        let reached = tokio::time::timeout(SYNC_TIMEOUT, rx.wait_for(|p| *p >= head))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
    }

    /// Drops from `envelope` every recipient suppressed for `category` at `now`.
    pub fn screen(
        &self,
        tenant: Uuid,
        category: Category,
        envelope: &Envelope,
        now: DateTime<Utc>,
    ) -> Screened {
        let index = self.read();
        let mut kept = Vec::new();
        let mut suppressed: Vec<SuppressedRecipient> = Vec::new();
        for address in envelope.to() {
            let text = address.to_string();
            match index.check(tenant, &text, category, now) {
                None => kept.push(address.clone()),
                Some((reason, scope)) => {
                    if !suppressed
                        .iter()
                        .any(|s| s.address.eq_ignore_ascii_case(&text))
                    {
                        suppressed.push(SuppressedRecipient {
                            address: text,
                            reason,
                            scope,
                        });
                    }
                }
            }
        }
        drop(index);
        let envelope = if kept.is_empty() {
            None
        } else if suppressed.is_empty() {
            Some(envelope.clone())
        } else {
            // Only fails without recipients, which `kept` is not.
            Envelope::new(envelope.from().cloned(), kept).ok()
        };
        Screened {
            envelope,
            suppressed,
            at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::suppression::{Source, SuppressionRemoved, SuppressionsImported};

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    fn entry(address: &str, applies_to: AppliesTo) -> Suppression {
        Suppression {
            address: address.into(),
            scope: Scope::Tenant,
            reason: Reason::Complaint,
            applies_to,
            source: Source::Api,
            created_by: "test".into(),
            created_at: at(0),
            expires_at: None,
            note: None,
            message_id: None,
        }
    }

    fn added(address: &str) -> SuppressionEvent {
        SuppressionEvent::Added(entry(address, AppliesTo::All))
    }

    fn plus(on: bool) -> SignalEvent {
        SignalEvent::SettingsSet(SignalSettings {
            plus_addressing: on,
            ..SignalSettings::default()
        })
    }

    const T: Category = Category::Transactional;
    const M: Category = Category::Marketing;

    #[test]
    fn the_compact_entry_blocks_exactly_like_the_domain_rule() {
        for applies_to in [AppliesTo::All, AppliesTo::Marketing] {
            for expires_at in [None, Some(at(10))] {
                let mut s = entry("a@example.com", applies_to);
                s.expires_at = expires_at;
                for category in [T, M] {
                    for now in [at(5), at(10), at(11)] {
                        assert_eq!(
                            Entry::of(&s).blocks(category, now),
                            s.blocks(category, now),
                            "{applies_to:?} {expires_at:?} {category:?} {now}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matching_is_case_insensitive_and_by_partition() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut i = Index::default();
        i.apply_suppression(a, &added("jane@example.com"));
        assert_eq!(
            i.check(a, "Jane@EXAMPLE.com", T, at(1)),
            Some((Reason::Complaint, Scope::Tenant))
        );
        assert_eq!(i.check(b, "jane@example.com", T, at(1)), None);
        i.apply_suppression(GLOBAL_TENANT, &added("all@example.com"));
        assert_eq!(
            i.check(b, "ALL@example.com", T, at(1)),
            Some((Reason::Complaint, Scope::Global))
        );
    }

    #[test]
    fn plus_and_gmail_forms_match_only_with_the_tenants_setting() {
        let t = Uuid::from_u128(1);
        let mut i = Index::default();
        i.apply_suppression(t, &added("a@example.com"));
        i.apply_suppression(t, &added("j.doe+news@googlemail.com"));
        i.apply_suppression(GLOBAL_TENANT, &added("g+x@example.org"));
        // Only the entries not in their canonical form are linked.
        assert_eq!(i.canonical_links(), 2);
        let variants = [
            "A+x@Example.com",
            "jdoe@gmail.com",
            "J.Doe+other@Gmail.com",
            "g+y@example.org",
            "g@example.org",
        ];
        for recipient in variants {
            assert_eq!(i.check(t, recipient, T, at(1)), None, "{recipient}");
        }
        i.apply_signal_settings(t, &plus(true));
        for recipient in variants {
            assert!(i.check(t, recipient, T, at(1)).is_some(), "{recipient}");
        }
        // Still never a different mailbox.
        assert_eq!(i.check(t, "b@example.com", T, at(1)), None);
        assert_eq!(i.check(t, "a@example.co", T, at(1)), None);
        assert_eq!(
            i.check(t, "g@example.org", T, at(1)).map(|r| r.1),
            Some(Scope::Global)
        );
        // Another tenant without the setting is not affected.
        assert_eq!(i.check(Uuid::from_u128(9), "g@example.org", T, at(1)), None);
        // Turning it off again stops the normalised matching.
        i.apply_signal_settings(t, &plus(false));
        assert_eq!(i.check(t, "A+x@Example.com", T, at(1)), None);
    }

    #[test]
    fn removal_imports_categories_and_expiry() {
        let t = Uuid::from_u128(1);
        let mut i = Index::default();
        let mut marketing = entry("m@example.com", AppliesTo::Marketing);
        marketing.expires_at = Some(at(100));
        i.apply_suppression(
            t,
            &SuppressionEvent::Imported(SuppressionsImported {
                import_id: Uuid::nil(),
                chunk: 1,
                entries: vec![marketing, entry("x+y@example.com", AppliesTo::All)],
            }),
        );
        assert_eq!(i.entries(), 2);
        assert!(i.check(t, "m@example.com", M, at(1)).is_some());
        assert!(i.check(t, "m@example.com", T, at(1)).is_none());
        assert!(i.check(t, "m@example.com", M, at(100)).is_none());
        let removed = |address: &str| {
            SuppressionEvent::Removed(Box::new(SuppressionRemoved {
                address: address.into(),
                scope: Scope::Tenant,
                removed_by: "op".into(),
                note: "asked".into(),
                removed_at: at(2),
                original: entry(address, AppliesTo::All),
            }))
        };
        i.apply_signal_settings(t, &plus(true));
        assert!(i.check(t, "x@example.com", T, at(1)).is_some());
        i.apply_suppression(t, &removed("X+Y@example.com"));
        assert!(i.check(t, "x@example.com", T, at(1)).is_none());
        assert!(i.check(t, "x+y@example.com", T, at(1)).is_none());
        assert_eq!(i.canonical_links(), 0);
        // Removing what is not there is harmless; a re-add replaces the entry.
        i.apply_suppression(t, &removed("nobody@example.com"));
        i.apply_suppression(
            t,
            &SuppressionEvent::Added(entry("m@example.com", AppliesTo::All)),
        );
        assert!(i.check(t, "m@example.com", T, at(500)).is_some());
        assert_eq!(i.entries(), 1);
        i.apply_suppression(t, &removed("m@example.com"));
        assert_eq!(i.entries(), 0);
    }

    #[test]
    fn screening_keeps_the_rest_and_names_each_dropped_recipient_once() {
        let t = Uuid::from_u128(1);
        let screen = Screen::default();
        screen
            .write()
            .apply_suppression(t, &added("gone@example.com"));
        let addr = |s: &str| s.parse::<lettre::Address>().unwrap();
        let envelope = Envelope::new(
            Some(addr("news@example.test")),
            vec![
                addr("Gone@example.com"),
                addr("stay@example.com"),
                addr("gone@example.com"),
            ],
        )
        .unwrap();
        let s = screen.screen(t, T, &envelope, at(1));
        let kept: Vec<String> = s
            .envelope
            .as_ref()
            .unwrap()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(kept, ["stay@example.com"]);
        assert_eq!(
            s.envelope
                .unwrap()
                .from()
                .map(ToString::to_string)
                .as_deref(),
            Some("news@example.test")
        );
        assert_eq!(s.suppressed.len(), 1);
        assert_eq!(s.suppressed[0].address, "Gone@example.com");
        let only = Envelope::new(None, vec![addr("gone@example.com")]).unwrap();
        let s = screen.screen(t, T, &only, at(1));
        assert!(s.envelope.is_none());
        assert_eq!(s.suppressed.len(), 1);
    }
}
