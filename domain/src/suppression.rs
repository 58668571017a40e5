//! Suppressions: addresses a tenant (or, set by an operator, every tenant) must not email.
//!
//! Entries are decided against the suppression read model rather than folded from a
//! stream: a tenant may hold millions of them, and the only rule that needs the current
//! entry (removal keeps the original's context; adding the same entry twice records
//! nothing) reads one key. Every change is an event on [`SUPPRESSION_STREAM`]` / <tenant>`;
//! a CSV import writes chunks of entries on [`SUPPRESSION_IMPORT_STREAM`]` / <import id>`.
//! Global entries live in the partition of [`GLOBAL_TENANT`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{from_json, require_v1, to_json, unknown_type, DomainEvent};
use crate::error::{DomainError, FieldError, Result};
use crate::message::{valid_email, Category};

pub const SUPPRESSION_STREAM: &str = "suppressions";
pub const SUPPRESSION_IMPORT_STREAM: &str = "suppression-import";
/// The log partition of global suppressions (set by an operator, binding every tenant).
pub const GLOBAL_TENANT: Uuid = Uuid::nil();
pub const MAX_NOTE_CHARS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    HardBounce,
    Complaint,
    Unsubscribe,
    Manual,
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Tenant,
    Global,
}

/// Which mail an entry stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliesTo {
    All,
    Marketing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    Webhook,
    UnsubscribeLink,
    Dsn,
    Import,
}

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(&self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
            pub fn parse(s: &str) -> Option<$t> {
                match s { $($s => Some(<$t>::$v),)* _ => None }
            }
        }
    };
}

names!(Reason { HardBounce => "hard_bounce", Complaint => "complaint", Unsubscribe => "unsubscribe", Manual => "manual", Invalid => "invalid" });
names!(Scope { Tenant => "tenant", Global => "global" });
names!(AppliesTo { All => "all", Marketing => "marketing" });
names!(Source { Api => "api", Webhook => "webhook", UnsubscribeLink => "unsubscribe_link", Dsn => "dsn", Import => "import" });

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// Lower-cased, as given (the plus/Gmail-normalised form is derived when matching).
    pub address: String,
    pub scope: Scope,
    pub reason: Reason,
    pub applies_to: AppliesTo,
    pub source: Source,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The message whose bounce, complaint or unsubscribe caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
}

impl Suppression {
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }

    /// Whether this entry stops a message of `category` at `now`.
    pub fn blocks(&self, category: Category, now: DateTime<Utc>) -> bool {
        self.active_at(now)
            && (self.applies_to == AppliesTo::All || category == Category::Marketing)
    }

    /// Same effect as `other` (who and when aside): adding it again changes nothing.
    fn same_effect(&self, other: &Suppression) -> bool {
        self.reason == other.reason
            && self.applies_to == other.applies_to
            && self.expires_at == other.expires_at
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuppressionRemoved {
    pub address: String,
    pub scope: Scope,
    pub removed_by: String,
    pub note: String,
    pub removed_at: DateTime<Utc>,
    /// The entry as it was, so the log keeps its context.
    pub original: Suppression,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuppressionsImported {
    pub import_id: Uuid,
    /// 1-based chunk number within the import.
    pub chunk: u32,
    pub entries: Vec<Suppression>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SuppressionEvent {
    Added(Suppression),
    Removed(Box<SuppressionRemoved>),
    Imported(SuppressionsImported),
}

pub const SUPPRESSION_ADDED: &str = "SuppressionAdded";
pub const SUPPRESSION_REMOVED: &str = "SuppressionRemoved";
pub const SUPPRESSIONS_IMPORTED: &str = "SuppressionsImported";
const TYPES: &[&str] = &[
    SUPPRESSION_ADDED,
    SUPPRESSION_REMOVED,
    SUPPRESSIONS_IMPORTED,
];

fn invalid(field: impl Into<String>, message: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The field problems of one entry; `at` prefixes field names (`entries[3].`).
pub fn check(entry: &Suppression, at: &str, now: DateTime<Utc>) -> Vec<FieldError> {
    let mut f = Vec::new();
    if !valid_email(&entry.address) || entry.address != entry.address.to_ascii_lowercase() {
        f.push(invalid(
            format!("{at}address"),
            "is not a valid email address",
        ));
    }
    if entry.expires_at.is_some_and(|e| e <= now) {
        f.push(invalid(format!("{at}expires_at"), "must be in the future"));
    }
    if let Some(n) = &entry.note {
        if n.chars().count() > MAX_NOTE_CHARS {
            f.push(invalid(
                format!("{at}note"),
                "must be at most 1000 characters",
            ));
        }
    }
    f
}

/// Adds an entry; adding one that is already in force with the same effect records nothing.
pub fn add(
    existing: Option<&Suppression>,
    entry: Suppression,
    now: DateTime<Utc>,
) -> Result<Vec<SuppressionEvent>> {
    let fields = check(&entry, "", now);
    if !fields.is_empty() {
        return Err(DomainError::Validation { fields });
    }
    match existing {
        Some(e) if e.active_at(now) && e.same_effect(&entry) => Ok(vec![]),
        _ => Ok(vec![SuppressionEvent::Added(entry)]),
    }
}

/// Removes an entry: needs who and why; the event keeps the entry it removes.
pub fn remove(
    existing: Option<Suppression>,
    removed_by: String,
    note: String,
    now: DateTime<Utc>,
) -> Result<Vec<SuppressionEvent>> {
    let Some(original) = existing else {
        return Err(DomainError::SuppressionNotFound);
    };
    let note = note.trim().to_string();
    if note.is_empty() || note.chars().count() > MAX_NOTE_CHARS {
        return Err(DomainError::Validation {
            fields: vec![invalid("note", "is required (1..=1000 characters)")],
        });
    }
    Ok(vec![SuppressionEvent::Removed(Box::new(
        SuppressionRemoved {
            address: original.address.clone(),
            scope: original.scope,
            removed_by,
            note,
            removed_at: now,
            original,
        },
    ))])
}

impl DomainEvent for SuppressionEvent {
    fn event_type(&self) -> &'static str {
        match self {
            SuppressionEvent::Added(_) => SUPPRESSION_ADDED,
            SuppressionEvent::Removed(_) => SUPPRESSION_REMOVED,
            SuppressionEvent::Imported(_) => SUPPRESSIONS_IMPORTED,
        }
    }

    fn schema_version(&self) -> u16 {
        1
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            SuppressionEvent::Added(p) => to_json(p),
            SuppressionEvent::Removed(p) => to_json(p),
            SuppressionEvent::Imported(p) => to_json(p),
        }
    }

    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self> {
        require_v1(event_type, schema_version, TYPES)?;
        let t = event_type;
        Ok(match event_type {
            SUPPRESSION_ADDED => SuppressionEvent::Added(from_json(t, payload)?),
            SUPPRESSION_REMOVED => SuppressionEvent::Removed(from_json(t, payload)?),
            SUPPRESSIONS_IMPORTED => SuppressionEvent::Imported(from_json(t, payload)?),
            _ => return Err(unknown_type(event_type)),
        })
    }

    /// Addresses are masked: the audit line must not spell a recipient out.
    fn summary(&self) -> String {
        match self {
            SuppressionEvent::Added(e) => format!(
                "Suppressed {} ({}, {}, {} mail) by {}",
                mask(&e.address),
                e.scope.as_str(),
                e.reason.as_str(),
                e.applies_to.as_str(),
                e.source.as_str()
            ),
            SuppressionEvent::Removed(r) => format!(
                "Suppression of {} removed by {}: {}",
                mask(&r.address),
                r.removed_by,
                r.note
            ),
            SuppressionEvent::Imported(i) => format!(
                "Suppressions imported: chunk {} with {} entries",
                i.chunk,
                i.entries.len()
            ),
        }
    }
}

/// `j***@example.com`: enough to tell entries apart in an audit line, not to read them.
pub fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    fn entry(address: &str, applies_to: AppliesTo) -> Suppression {
        Suppression {
            address: address.into(),
            scope: Scope::Tenant,
            reason: Reason::Manual,
            applies_to,
            source: Source::Api,
            created_by: "operator".into(),
            created_at: at(0),
            expires_at: None,
            note: None,
            message_id: None,
        }
    }

    #[test]
    fn adding_the_same_entry_twice_records_nothing_the_second_time() {
        let e = entry("a@example.com", AppliesTo::All);
        assert_eq!(add(None, e.clone(), at(1)).unwrap().len(), 1);
        assert!(add(Some(&e), e.clone(), at(1)).unwrap().is_empty());
        let mut marketing = e.clone();
        marketing.applies_to = AppliesTo::Marketing;
        assert_eq!(add(Some(&e), marketing, at(1)).unwrap().len(), 1);
        let mut bad = e;
        bad.address = "Not An Address".into();
        assert_eq!(
            add(None, bad, at(1)).unwrap_err().code(),
            "VALIDATION_FAILED"
        );
    }

    #[test]
    fn removal_needs_a_note_and_keeps_the_original() {
        let e = entry("a@example.com", AppliesTo::All);
        assert_eq!(
            remove(Some(e.clone()), "op".into(), " ".into(), at(1))
                .unwrap_err()
                .code(),
            "VALIDATION_FAILED"
        );
        assert_eq!(
            remove(None, "op".into(), "x".into(), at(1)).unwrap_err(),
            DomainError::SuppressionNotFound
        );
        let ev = remove(Some(e.clone()), "op".into(), "asked by phone".into(), at(1)).unwrap();
        let SuppressionEvent::Removed(r) = &ev[0] else {
            panic!()
        };
        assert_eq!(r.original, e);
        let back = SuppressionEvent::decode(ev[0].event_type(), 1, &ev[0].encode()).unwrap();
        assert_eq!(back, ev[0]);
        assert!(!ev[0].summary().contains("a@example.com"));
    }

    #[test]
    fn marketing_entries_stop_only_marketing_and_expired_ones_nothing() {
        let m = entry("a@example.com", AppliesTo::Marketing);
        assert!(m.blocks(Category::Marketing, at(1)));
        assert!(!m.blocks(Category::Transactional, at(1)));
        let mut all = entry("a@example.com", AppliesTo::All);
        assert!(all.blocks(Category::Transactional, at(1)));
        all.expires_at = Some(at(10));
        assert!(all.blocks(Category::Transactional, at(9)));
        assert!(!all.blocks(Category::Transactional, at(10)));
    }
}
