//! The Template aggregate: a tenant's email template under a key unique within the tenant
//! (`email_verification`), with numbered versions that go draft → submitted → approved or
//! rejected. One approved version is current. Every change is an event on the stream
//! [`TEMPLATE_STREAM`]` / <key>`; test renders go to [`TEMPLATE_RENDER_STREAM`]` / <key>` so
//! that a busy render log never conflicts with an edit.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::{from_json, require_v1, to_json, unknown_type, DomainEvent};
use crate::error::{DomainError, FieldError, Result};
use crate::message::Category;

/// A variable a template version declares. Templates may use only declared variables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateVariable {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    /// Used when the caller's context lacks the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An alternative subject for A/B tests; picked per recipient with probability
/// `weight / sum(weights)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectVariant {
    pub subject: String,
    pub weight: u32,
}

/// What a person (or a model) writes: every text part is minijinja source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateContent {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_variants: Vec<SubjectVariant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default)]
    pub variables: Vec<TemplateVariable>,
}

/// Which template, version and subject variant a message was rendered from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateUse {
    pub key: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<u32>,
}

/// Locked sections of a version by name: the exact source between the markers
/// `{# locked: NAME #}` and `{# endlocked #}` in the HTML or text body.
pub type LockedSections = BTreeMap<String, String>;

pub const TEMPLATE_STREAM: &str = "template";
pub const TEMPLATE_RENDER_STREAM: &str = "template-render";
pub const MAX_TEMPLATE_KEY_CHARS: usize = 64;
pub const MAX_VERSIONS: u32 = 10_000;

/// Where a version came from: typed by a person, or drafted by a model and saved because it
/// passed the same validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    Human,
    Llm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    Draft,
    Submitted,
    Approved,
    Rejected,
    /// Approved once, then replaced as current; can be made current again (rollback).
    Archived,
}

impl VersionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            VersionStatus::Draft => "draft",
            VersionStatus::Submitted => "submitted",
            VersionStatus::Approved => "approved",
            VersionStatus::Rejected => "rejected",
            VersionStatus::Archived => "archived",
        }
    }
}

/// A review decision: who, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateCreated {
    pub key: String,
    pub name: String,
    pub category: Category,
    pub at: DateTime<Utc>,
}

/// A new draft version, or a new content of an existing draft (same `version`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionDrafted {
    pub version: u32,
    /// The version this one was started from; its locked sections bind this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<u32>,
    pub content: TemplateContent,
    #[serde(default)]
    pub locked_sections: LockedSections,
    /// The author changed a locked section, with the right to do so.
    #[serde(default)]
    pub locked_edit: bool,
    pub source: VersionSource,
    pub author: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionReviewed {
    pub version: u32,
    #[serde(flatten)]
    pub review: Review,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionMadeCurrent {
    pub version: u32,
    /// The version it replaces, now archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u32>,
    pub by: String,
    pub at: DateTime<Utc>,
}

/// One drafting call to a language model, saved or not: the record an auditor asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DraftGenerated {
    /// `generate` or `revise`.
    pub task: String,
    /// The version a revise started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u32>,
    pub requested_provider: String,
    pub provider: String,
    pub model: String,
    pub failed_over: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_error: Option<String>,
    pub prompt: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub latency_ms: u64,
    /// Empty when the draft passed validation.
    #[serde(default)]
    pub issues: Vec<serde_json::Value>,
    /// The version it was saved as; `None` when it was invalid or the provider gave nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_as: Option<u32>,
    pub requested_by: String,
    pub at: DateTime<Utc>,
}

/// A test render: the exact context used, on [`TEMPLATE_RENDER_STREAM`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateRendered {
    pub key: String,
    pub version: u32,
    pub context: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<u32>,
    pub by: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TemplateEvent {
    Created(TemplateCreated),
    VersionDrafted(Box<VersionDrafted>),
    DraftEdited(Box<VersionDrafted>),
    Submitted(VersionReviewed),
    Approved(VersionReviewed),
    Rejected(VersionReviewed),
    MadeCurrent(VersionMadeCurrent),
    DraftGenerated(Box<DraftGenerated>),
    Rendered(TemplateRendered),
}

pub const TEMPLATE_CREATED: &str = "TemplateCreated";
pub const TEMPLATE_VERSION_DRAFTED: &str = "TemplateVersionDrafted";
pub const TEMPLATE_DRAFT_EDITED: &str = "TemplateDraftEdited";
pub const TEMPLATE_VERSION_SUBMITTED: &str = "TemplateVersionSubmitted";
pub const TEMPLATE_VERSION_APPROVED: &str = "TemplateVersionApproved";
pub const TEMPLATE_VERSION_REJECTED: &str = "TemplateVersionRejected";
pub const TEMPLATE_VERSION_MADE_CURRENT: &str = "TemplateVersionMadeCurrent";
pub const TEMPLATE_DRAFT_GENERATED: &str = "TemplateDraftGenerated";
pub const TEMPLATE_RENDERED: &str = "TemplateRendered";

const TEMPLATE_EVENT_TYPES: &[&str] = &[
    TEMPLATE_CREATED,
    TEMPLATE_VERSION_DRAFTED,
    TEMPLATE_DRAFT_EDITED,
    TEMPLATE_VERSION_SUBMITTED,
    TEMPLATE_VERSION_APPROVED,
    TEMPLATE_VERSION_REJECTED,
    TEMPLATE_VERSION_MADE_CURRENT,
    TEMPLATE_DRAFT_GENERATED,
    TEMPLATE_RENDERED,
];

pub fn template_event_types() -> &'static [&'static str] {
    TEMPLATE_EVENT_TYPES
}

/// One version as the aggregate knows it (and as the read model stores it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub number: u32,
    pub based_on: Option<u32>,
    pub content: TemplateContent,
    pub locked_sections: LockedSections,
    pub source: VersionSource,
    pub status: VersionStatus,
    pub author: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub submitted: Option<Review>,
    pub reviewed: Option<Review>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// `None` until created.
    pub created: Option<TemplateCreated>,
    pub versions: BTreeMap<u32, TemplateVersion>,
    pub current: Option<u32>,
}

impl Template {
    pub fn exists(&self) -> bool {
        self.created.is_some()
    }

    fn next_number(&self) -> u32 {
        self.versions.keys().next_back().map_or(1, |n| n + 1)
    }

    pub fn current_version(&self) -> Option<&TemplateVersion> {
        self.current.and_then(|n| self.versions.get(&n))
    }
}

/// The content of a version as the caller checked it: the API runs the template engine
/// (parse, declared variables, marker syntax) and hands over the locked sections it found,
/// since the domain holds no engine.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedContent {
    pub content: TemplateContent,
    pub locked_sections: LockedSections,
}

/// Who edits, and whether they may change locked sections.
#[derive(Clone, Debug, PartialEq)]
pub struct Editor {
    pub actor: String,
    /// Operators and approver keys may change a locked section when they say so.
    pub may_edit_locked: bool,
    /// The edit says it changes locked sections on purpose.
    pub edit_locked: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TemplateCommand {
    Create {
        key: String,
        name: String,
        category: Category,
        first: CheckedContent,
        author: String,
        now: DateTime<Utc>,
    },
    /// A new draft version started from `based_on` (default: the current version).
    DraftVersion {
        based_on: Option<u32>,
        draft: CheckedContent,
        editor: Editor,
        source: VersionSource,
        generated: Option<Box<DraftGenerated>>,
        now: DateTime<Utc>,
    },
    EditDraft {
        version: u32,
        draft: CheckedContent,
        editor: Editor,
        now: DateTime<Utc>,
    },
    Submit {
        version: u32,
        by: String,
        note: String,
        now: DateTime<Utc>,
    },
    /// Approves a submitted version and makes it current.
    Approve {
        version: u32,
        by: String,
        note: String,
        now: DateTime<Utc>,
    },
    Reject {
        version: u32,
        by: String,
        note: String,
        now: DateTime<Utc>,
    },
    /// Makes an approved (or archived) version current again: the one-click rollback.
    MakeCurrent {
        version: u32,
        by: String,
        now: DateTime<Utc>,
    },
    /// A drafting call whose result was not saved (invalid, or no answer).
    RecordGeneration(Box<DraftGenerated>),
}

fn field(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Keys are what applications put in code: short, lower-case, URL-safe.
pub fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && key.len() <= MAX_TEMPLATE_KEY_CHARS
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

fn check_name(name: &str) -> Option<FieldError> {
    let n = name.trim();
    (n.is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control)).then(|| {
        field(
            "name",
            "must be 1..=200 characters without control characters",
        )
    })
}

fn not_found(version: u32) -> DomainError {
    DomainError::TemplateVersionNotFound { version }
}

fn wrong_status(version: &TemplateVersion, wanted: &str) -> DomainError {
    DomainError::TemplateVersionState {
        version: version.number,
        status: version.status.as_str().to_string(),
        wanted: wanted.to_string(),
    }
}

/// Locked sections bind a version to the one it came from: the same names with the same
/// text, unless an editor allowed to do so says the change is on purpose.
fn check_locked(
    base: Option<&TemplateVersion>,
    draft: &CheckedContent,
    editor: &Editor,
) -> Result<bool> {
    let Some(base) = base else {
        return Ok(false);
    };
    if base.locked_sections == draft.locked_sections {
        return Ok(false);
    }
    if editor.edit_locked {
        if editor.may_edit_locked {
            return Ok(true);
        }
        return Err(DomainError::LockedSectionEditForbidden);
    }
    let mut fields = Vec::new();
    for (name, text) in &base.locked_sections {
        match draft.locked_sections.get(name) {
            None => fields.push(field(
                format!("locked_sections.{name}"),
                format!(
                    "locked section '{name}' of version {} is missing",
                    base.number
                ),
            )),
            Some(t) if t != text => fields.push(field(
                format!("locked_sections.{name}"),
                format!(
                    "locked section '{name}' differs from version {}",
                    base.number
                ),
            )),
            Some(_) => {}
        }
    }
    for name in draft.locked_sections.keys() {
        if !base.locked_sections.contains_key(name) {
            fields.push(field(
                format!("locked_sections.{name}"),
                format!("locked section '{name}' is new; adding one is a locked-section edit"),
            ));
        }
    }
    Err(DomainError::Validation { fields })
}

fn drafted(
    state: &Template,
    version: u32,
    based_on: Option<u32>,
    draft: &CheckedContent,
    editor: &Editor,
    source: VersionSource,
    now: DateTime<Utc>,
) -> Result<VersionDrafted> {
    let base = match based_on {
        Some(n) => Some(state.versions.get(&n).ok_or_else(|| not_found(n))?),
        None => None,
    };
    let locked_edit = check_locked(base, draft, editor)?;
    Ok(VersionDrafted {
        version,
        based_on,
        content: draft.content.clone(),
        locked_sections: draft.locked_sections.clone(),
        locked_edit,
        source,
        author: editor.actor.clone(),
        at: now,
    })
}

fn review(version: u32, by: &str, note: &str, now: DateTime<Utc>) -> Result<VersionReviewed> {
    if note.chars().count() > 2000 || note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(DomainError::Validation {
            fields: vec![field("note", "must be at most 2000 characters")],
        });
    }
    Ok(VersionReviewed {
        version,
        review: Review {
            by: by.to_string(),
            at: now,
            note: note.to_string(),
        },
    })
}

pub fn decide(state: &Template, command: TemplateCommand) -> Result<Vec<TemplateEvent>> {
    use TemplateCommand as C;
    use TemplateEvent as E;
    if let C::Create {
        key,
        name,
        category,
        first,
        author,
        now,
    } = command
    {
        if state.exists() {
            return Err(DomainError::TemplateAlreadyExists);
        }
        let mut fields = Vec::new();
        if !valid_key(&key) {
            fields.push(field(
                "key",
                "must be 1..=64 characters of a-z, 0-9, '_', '-', '.', starting with a letter or digit",
            ));
        }
        fields.extend(check_name(&name));
        if !fields.is_empty() {
            return Err(DomainError::Validation { fields });
        }
        let editor = Editor {
            actor: author,
            may_edit_locked: true,
            edit_locked: false,
        };
        let v1 = drafted(state, 1, None, &first, &editor, VersionSource::Human, now)?;
        return Ok(vec![
            E::Created(TemplateCreated {
                key,
                name: name.trim().to_string(),
                category,
                at: now,
            }),
            E::VersionDrafted(Box::new(v1)),
        ]);
    }
    if !state.exists() {
        return Err(DomainError::TemplateNotFound);
    }
    match command {
        C::Create { .. } => Err(DomainError::TemplateAlreadyExists),
        C::DraftVersion {
            based_on,
            draft,
            editor,
            source,
            generated,
            now,
        } => {
            let number = state.next_number();
            if number > MAX_VERSIONS {
                return Err(DomainError::Validation {
                    fields: vec![field("version", "this template has too many versions")],
                });
            }
            let based_on = based_on.or(state.current);
            let v = drafted(state, number, based_on, &draft, &editor, source, now)?;
            let mut events = vec![E::VersionDrafted(Box::new(v))];
            if let Some(mut g) = generated {
                g.saved_as = Some(number);
                events.push(E::DraftGenerated(g));
            }
            Ok(events)
        }
        C::EditDraft {
            version,
            draft,
            editor,
            now,
        } => {
            let v = state
                .versions
                .get(&version)
                .ok_or_else(|| not_found(version))?;
            if v.status != VersionStatus::Draft {
                return Err(wrong_status(v, "draft"));
            }
            let mut edited = drafted(state, version, v.based_on, &draft, &editor, v.source, now)?;
            edited.author = editor.actor;
            Ok(vec![E::DraftEdited(Box::new(edited))])
        }
        C::Submit {
            version,
            by,
            note,
            now,
        } => {
            let v = state
                .versions
                .get(&version)
                .ok_or_else(|| not_found(version))?;
            if v.status != VersionStatus::Draft {
                return Err(wrong_status(v, "draft"));
            }
            Ok(vec![E::Submitted(review(version, &by, &note, now)?)])
        }
        C::Approve {
            version,
            by,
            note,
            now,
        } => {
            let v = state
                .versions
                .get(&version)
                .ok_or_else(|| not_found(version))?;
            if v.status != VersionStatus::Submitted {
                return Err(wrong_status(v, "submitted"));
            }
            Ok(vec![
                E::Approved(review(version, &by, &note, now)?),
                E::MadeCurrent(VersionMadeCurrent {
                    version,
                    previous: state.current,
                    by,
                    at: now,
                }),
            ])
        }
        C::Reject {
            version,
            by,
            note,
            now,
        } => {
            let v = state
                .versions
                .get(&version)
                .ok_or_else(|| not_found(version))?;
            if v.status != VersionStatus::Submitted {
                return Err(wrong_status(v, "submitted"));
            }
            Ok(vec![E::Rejected(review(version, &by, &note, now)?)])
        }
        C::MakeCurrent { version, by, now } => {
            let v = state
                .versions
                .get(&version)
                .ok_or_else(|| not_found(version))?;
            if state.current == Some(version) {
                return Ok(vec![]);
            }
            if !matches!(v.status, VersionStatus::Approved | VersionStatus::Archived) {
                return Err(wrong_status(v, "approved"));
            }
            Ok(vec![E::MadeCurrent(VersionMadeCurrent {
                version,
                previous: state.current,
                by,
                at: now,
            })])
        }
        C::RecordGeneration(g) => Ok(vec![E::DraftGenerated(g)]),
    }
}

pub fn apply(state: &mut Template, event: &TemplateEvent) {
    match event {
        TemplateEvent::Created(c) => state.created = Some(c.clone()),
        TemplateEvent::VersionDrafted(d) => {
            state.versions.insert(
                d.version,
                TemplateVersion {
                    number: d.version,
                    based_on: d.based_on,
                    content: d.content.clone(),
                    locked_sections: d.locked_sections.clone(),
                    source: d.source,
                    status: VersionStatus::Draft,
                    author: d.author.clone(),
                    created_at: d.at,
                    updated_at: d.at,
                    submitted: None,
                    reviewed: None,
                },
            );
        }
        TemplateEvent::DraftEdited(d) => {
            if let Some(v) = state.versions.get_mut(&d.version) {
                v.content = d.content.clone();
                v.locked_sections = d.locked_sections.clone();
                v.author = d.author.clone();
                v.updated_at = d.at;
            }
        }
        TemplateEvent::Submitted(r) => {
            if let Some(v) = state.versions.get_mut(&r.version) {
                v.status = VersionStatus::Submitted;
                v.submitted = Some(r.review.clone());
            }
        }
        TemplateEvent::Approved(r) | TemplateEvent::Rejected(r) => {
            if let Some(v) = state.versions.get_mut(&r.version) {
                v.status = if matches!(event, TemplateEvent::Approved(_)) {
                    VersionStatus::Approved
                } else {
                    VersionStatus::Rejected
                };
                v.reviewed = Some(r.review.clone());
            }
        }
        TemplateEvent::MadeCurrent(m) => {
            if let Some(prev) = m.previous.and_then(|p| state.versions.get_mut(&p)) {
                prev.status = VersionStatus::Archived;
            }
            if let Some(v) = state.versions.get_mut(&m.version) {
                v.status = VersionStatus::Approved;
            }
            state.current = Some(m.version);
        }
        TemplateEvent::DraftGenerated(_) | TemplateEvent::Rendered(_) => {}
    }
}

impl DomainEvent for TemplateEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TemplateEvent::Created(_) => TEMPLATE_CREATED,
            TemplateEvent::VersionDrafted(_) => TEMPLATE_VERSION_DRAFTED,
            TemplateEvent::DraftEdited(_) => TEMPLATE_DRAFT_EDITED,
            TemplateEvent::Submitted(_) => TEMPLATE_VERSION_SUBMITTED,
            TemplateEvent::Approved(_) => TEMPLATE_VERSION_APPROVED,
            TemplateEvent::Rejected(_) => TEMPLATE_VERSION_REJECTED,
            TemplateEvent::MadeCurrent(_) => TEMPLATE_VERSION_MADE_CURRENT,
            TemplateEvent::DraftGenerated(_) => TEMPLATE_DRAFT_GENERATED,
            TemplateEvent::Rendered(_) => TEMPLATE_RENDERED,
        }
    }

    fn schema_version(&self) -> u16 {
        1
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            TemplateEvent::Created(p) => to_json(p),
            TemplateEvent::VersionDrafted(p) | TemplateEvent::DraftEdited(p) => to_json(p),
            TemplateEvent::Submitted(p)
            | TemplateEvent::Approved(p)
            | TemplateEvent::Rejected(p) => to_json(p),
            TemplateEvent::MadeCurrent(p) => to_json(p),
            TemplateEvent::DraftGenerated(p) => to_json(p),
            TemplateEvent::Rendered(p) => to_json(p),
        }
    }

    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self> {
        require_v1(event_type, schema_version, TEMPLATE_EVENT_TYPES)?;
        let t = event_type;
        Ok(match event_type {
            TEMPLATE_CREATED => TemplateEvent::Created(from_json(t, payload)?),
            TEMPLATE_VERSION_DRAFTED => TemplateEvent::VersionDrafted(from_json(t, payload)?),
            TEMPLATE_DRAFT_EDITED => TemplateEvent::DraftEdited(from_json(t, payload)?),
            TEMPLATE_VERSION_SUBMITTED => TemplateEvent::Submitted(from_json(t, payload)?),
            TEMPLATE_VERSION_APPROVED => TemplateEvent::Approved(from_json(t, payload)?),
            TEMPLATE_VERSION_REJECTED => TemplateEvent::Rejected(from_json(t, payload)?),
            TEMPLATE_VERSION_MADE_CURRENT => TemplateEvent::MadeCurrent(from_json(t, payload)?),
            TEMPLATE_DRAFT_GENERATED => TemplateEvent::DraftGenerated(from_json(t, payload)?),
            TEMPLATE_RENDERED => TemplateEvent::Rendered(from_json(t, payload)?),
            _ => return Err(unknown_type(event_type)),
        })
    }

    fn summary(&self) -> String {
        match self {
            TemplateEvent::Created(c) => format!("Template '{}' created ({})", c.key, c.name),
            TemplateEvent::VersionDrafted(d) => match d.source {
                VersionSource::Human => format!("Version {} drafted by {}", d.version, d.author),
                VersionSource::Llm => format!(
                    "Version {} drafted by a language model for {}",
                    d.version, d.author
                ),
            },
            TemplateEvent::DraftEdited(d) => format!(
                "Draft version {} edited by {}{}",
                d.version,
                d.author,
                if d.locked_edit {
                    " (locked sections changed)"
                } else {
                    ""
                }
            ),
            TemplateEvent::Submitted(r) => {
                format!("Version {} submitted by {}", r.version, r.review.by)
            }
            TemplateEvent::Approved(r) => {
                format!("Version {} approved by {}", r.version, r.review.by)
            }
            TemplateEvent::Rejected(r) => {
                format!("Version {} rejected by {}", r.version, r.review.by)
            }
            TemplateEvent::MadeCurrent(m) => match m.previous {
                Some(p) => format!("Version {} made current (replaces {p})", m.version),
                None => format!("Version {} made current", m.version),
            },
            TemplateEvent::DraftGenerated(g) => format!(
                "Draft {} by {} / {}{}: {}",
                g.task,
                g.provider,
                g.model,
                if g.failed_over { " (failover)" } else { "" },
                match g.saved_as {
                    Some(v) => format!("saved as version {v}"),
                    None => "not saved".to_string(),
                }
            ),
            TemplateEvent::Rendered(r) => {
                format!("Version {} test-rendered by {}", r.version, r.by)
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

    fn content(subject: &str, footer: &str) -> CheckedContent {
        let mut locked = LockedSections::new();
        locked.insert("footer".into(), footer.into());
        CheckedContent {
            content: TemplateContent {
                subject: subject.into(),
                html: Some(format!(
                    "<p>Hi</p>{{# locked: footer #}}{footer}{{# endlocked #}}"
                )),
                ..TemplateContent::default()
            },
            locked_sections: locked,
        }
    }

    fn editor(may: bool, edit: bool) -> Editor {
        Editor {
            actor: "alice".into(),
            may_edit_locked: may,
            edit_locked: edit,
        }
    }

    fn run(state: &mut Template, c: TemplateCommand) -> Result<Vec<TemplateEvent>> {
        let events = decide(state, c)?;
        for e in &events {
            // Every event survives its own codec, as the log would store it.
            let back = TemplateEvent::decode(e.event_type(), e.schema_version(), &e.encode())
                .expect("decodes");
            assert_eq!(&back, e);
            apply(state, &back);
        }
        Ok(events)
    }

    fn created() -> Template {
        let mut t = Template::default();
        run(
            &mut t,
            TemplateCommand::Create {
                key: "welcome".into(),
                name: "Welcome".into(),
                category: Category::Transactional,
                first: content("Hello", "Legal v1"),
                author: "alice".into(),
                now: at(0),
            },
        )
        .unwrap();
        t
    }

    fn approve(t: &mut Template, v: u32) {
        run(
            t,
            TemplateCommand::Submit {
                version: v,
                by: "alice".into(),
                note: String::new(),
                now: at(1),
            },
        )
        .unwrap();
        run(
            t,
            TemplateCommand::Approve {
                version: v,
                by: "bob".into(),
                note: "ok".into(),
                now: at(2),
            },
        )
        .unwrap();
    }

    #[test]
    fn lifecycle_draft_submit_approve_makes_current() {
        let mut t = created();
        assert_eq!(t.versions[&1].status, VersionStatus::Draft);
        assert_eq!(t.current, None);
        approve(&mut t, 1);
        assert_eq!(t.current, Some(1));
        assert_eq!(t.versions[&1].status, VersionStatus::Approved);
        let r = t.versions[&1].reviewed.clone().unwrap();
        assert_eq!((r.by.as_str(), r.note.as_str()), ("bob", "ok"));
    }

    #[test]
    fn only_submitted_versions_can_be_approved_or_rejected() {
        let mut t = created();
        let e = decide(
            &t,
            TemplateCommand::Approve {
                version: 1,
                by: "bob".into(),
                note: String::new(),
                now: at(1),
            },
        )
        .unwrap_err();
        assert_eq!(e.code(), "TEMPLATE_VERSION_STATE");
        approve(&mut t, 1);
        let e = decide(
            &t,
            TemplateCommand::Reject {
                version: 1,
                by: "bob".into(),
                note: String::new(),
                now: at(3),
            },
        )
        .unwrap_err();
        assert_eq!(e.code(), "TEMPLATE_VERSION_STATE");
    }

    #[test]
    fn approved_versions_are_immutable_and_an_edit_makes_a_new_draft() {
        let mut t = created();
        approve(&mut t, 1);
        let e = decide(
            &t,
            TemplateCommand::EditDraft {
                version: 1,
                draft: content("Changed", "Legal v1"),
                editor: editor(false, false),
                now: at(5),
            },
        )
        .unwrap_err();
        assert_eq!(e.code(), "TEMPLATE_VERSION_STATE");
        run(
            &mut t,
            TemplateCommand::DraftVersion {
                based_on: None,
                draft: content("Changed", "Legal v1"),
                editor: editor(false, false),
                source: VersionSource::Human,
                generated: None,
                now: at(5),
            },
        )
        .unwrap();
        assert_eq!(t.versions[&2].based_on, Some(1));
        assert_eq!(t.versions[&2].status, VersionStatus::Draft);
        assert_eq!(t.versions[&1].content.subject, "Hello");
        assert_eq!(t.current, Some(1));
    }

    #[test]
    fn rollback_makes_an_archived_version_current_again() {
        let mut t = created();
        approve(&mut t, 1);
        run(
            &mut t,
            TemplateCommand::DraftVersion {
                based_on: None,
                draft: content("v2", "Legal v1"),
                editor: editor(false, false),
                source: VersionSource::Human,
                generated: None,
                now: at(5),
            },
        )
        .unwrap();
        approve(&mut t, 2);
        assert_eq!(t.current, Some(2));
        assert_eq!(t.versions[&1].status, VersionStatus::Archived);
        let events = run(
            &mut t,
            TemplateCommand::MakeCurrent {
                version: 1,
                by: "bob".into(),
                now: at(9),
            },
        )
        .unwrap();
        assert!(matches!(&events[0], TemplateEvent::MadeCurrent(m) if m.previous == Some(2)));
        assert_eq!(t.current, Some(1));
        assert_eq!(t.versions[&2].status, VersionStatus::Archived);
        // A draft cannot be made current.
        run(
            &mut t,
            TemplateCommand::DraftVersion {
                based_on: None,
                draft: content("v3", "Legal v1"),
                editor: editor(false, false),
                source: VersionSource::Human,
                generated: None,
                now: at(10),
            },
        )
        .unwrap();
        let e = decide(
            &t,
            TemplateCommand::MakeCurrent {
                version: 3,
                by: "bob".into(),
                now: at(11),
            },
        )
        .unwrap_err();
        assert_eq!(e.code(), "TEMPLATE_VERSION_STATE");
    }

    #[test]
    fn locked_sections_bind_new_versions_unless_an_allowed_editor_says_so() {
        let mut t = created();
        approve(&mut t, 1);
        let draft = |editor| TemplateCommand::DraftVersion {
            based_on: None,
            draft: content("v2", "Legal v2"),
            editor,
            source: VersionSource::Human,
            generated: None,
            now: at(5),
        };
        match decide(&t, draft(editor(true, false))).unwrap_err() {
            DomainError::Validation { fields } => {
                assert_eq!(fields[0].field, "locked_sections.footer");
                assert!(fields[0].message.contains("differs from version 1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&t, draft(editor(false, true))).unwrap_err(),
            DomainError::LockedSectionEditForbidden
        );
        let events = run(&mut t, draft(editor(true, true))).unwrap();
        assert!(matches!(&events[0], TemplateEvent::VersionDrafted(d) if d.locked_edit));
        // Removing the section is caught as well.
        let mut bare = content("v3", "x");
        bare.locked_sections.clear();
        let e = decide(
            &t,
            TemplateCommand::EditDraft {
                version: 2,
                draft: bare,
                editor: editor(false, false),
                now: at(6),
            },
        )
        .unwrap_err();
        assert_eq!(e.code(), "VALIDATION_FAILED");
    }

    #[test]
    fn keys_are_checked_and_unique() {
        let t = created();
        let e = decide(
            &t,
            TemplateCommand::Create {
                key: "welcome".into(),
                name: "Again".into(),
                category: Category::Marketing,
                first: content("x", "y"),
                author: "a".into(),
                now: at(0),
            },
        )
        .unwrap_err();
        assert_eq!(e, DomainError::TemplateAlreadyExists);
        for bad in ["", "Upper", "-lead", "has space", &"x".repeat(65)] {
            let e = decide(
                &Template::default(),
                TemplateCommand::Create {
                    key: bad.into(),
                    name: "n".into(),
                    category: Category::Marketing,
                    first: content("x", "y"),
                    author: "a".into(),
                    now: at(0),
                },
            )
            .unwrap_err();
            assert_eq!(e.code(), "VALIDATION_FAILED", "{bad:?}");
        }
        assert!(valid_key("email_verification"));
        assert!(valid_key("v2.receipt-eu"));
    }

    #[test]
    fn commands_on_a_missing_template_or_version_are_refused() {
        let e = decide(
            &Template::default(),
            TemplateCommand::Submit {
                version: 1,
                by: "a".into(),
                note: String::new(),
                now: at(0),
            },
        )
        .unwrap_err();
        assert_eq!(e, DomainError::TemplateNotFound);
        let e = decide(
            &created(),
            TemplateCommand::Submit {
                version: 7,
                by: "a".into(),
                note: String::new(),
                now: at(0),
            },
        )
        .unwrap_err();
        assert_eq!(e.code(), "TEMPLATE_VERSION_NOT_FOUND");
    }
}
