//! The operations on templates behind REST and GraphQL: versions and their review, test
//! renders, LLM-assisted drafting, and send-template.
//!
//! Every save runs the template engine first (`templating::analyse`: it must parse, use
//! only declared variables and have well-formed locked-section markers); the domain then
//! decides the lifecycle and the locked-section rule. A drafted version goes through the
//! very same two steps, so a model can never save what a person could not.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use domain::drafting::{self as drafting_settings, DraftingDefaults, DRAFTING_SETTINGS_STREAM};
use domain::template::{
    self, CheckedContent, DraftGenerated, Editor, SubjectVariant, Template, TemplateCommand,
    TemplateContent, TemplateEvent, TemplateRendered, TemplateUse, TemplateVariable,
    TemplateVersion, VersionSource, VersionStatus, TEMPLATE_RENDER_STREAM, TEMPLATE_STREAM,
};
use domain::{ApiKeyRole, DomainError, FieldError};
use drafting::{Brief, DraftRecord, DraftRequest, ProviderConfig, ProviderKind, Task};
use eventlog::{ExpectedVersion, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use templating::{Compiled, Limits, RenderError, Rendered};
use uuid::Uuid;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, Result};
use crate::sending::{
    self, field, request_digest, take_idempotency_key, tenant_of, validation, AddressInput,
    AddressList, AttachmentInput, SendReceipt, SendRequest,
};
use crate::service::{execute_on, metadata, new_events, Ctx};

/// Compiled versions, shared by request handlers. Only a draft's content can change, so
/// only a draft's entry also carries its content digest; a submitted, approved, rejected or
/// archived version is found by its number alone and never re-serialised to look it up.
#[derive(Clone, Default)]
pub struct TemplateCache {
    inner: Arc<Mutex<CompiledVersions>>,
}

/// (tenant, template key, version, content digest of a draft) → the compiled version.
type CompiledVersions = HashMap<(Uuid, String, u32, Option<String>), Arc<Compiled>>;

const CACHE_ENTRIES: usize = 4096;

impl TemplateCache {
    fn compiled(&self, tenant: Uuid, template: &str, v: &TemplateVersion) -> Result<Arc<Compiled>> {
        let digest = (v.status == VersionStatus::Draft).then(|| request_digest(&v.content));
        let key = (tenant, template.to_string(), v.number, digest);
        let content = &v.content;
        if let Ok(map) = self.inner.lock() {
            if let Some(c) = map.get(&key) {
                return Ok(c.clone());
            }
        }
        let compiled = Arc::new(Compiled::new(content, Limits::default()).map_err(invalid)?);
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= CACHE_ENTRIES {
                map.clear();
            }
            map.insert(key, compiled.clone());
        }
        Ok(compiled)
    }
}

fn stream(key: &str) -> StreamId {
    StreamId::new(TEMPLATE_STREAM, key)
}

fn not_found() -> ApiError {
    ApiError::from(DomainError::TemplateNotFound)
}

/// The engine's findings as a 422 that names the part, line and column of each.
fn invalid(issues: Vec<templating::Issue>) -> ApiError {
    let first = issues
        .first()
        .map_or_else(String::new, |i| match (i.line, i.column) {
            (Some(l), Some(c)) => format!("{} line {l} column {c}: {}", i.part, i.message),
            (Some(l), None) => format!("{} line {l}: {}", i.part, i.message),
            _ => format!("{}: {}", i.part, i.message),
        });
    ApiError::new(
        422,
        "TEMPLATE_INVALID",
        format!("the template is invalid: {first}"),
    )
    .with_details(json!({ "issues": issues }))
}

fn check(content: TemplateContent) -> Result<CheckedContent> {
    let analysis = templating::analyse(&content).map_err(invalid)?;
    Ok(CheckedContent {
        content,
        locked_sections: analysis.locked_sections,
    })
}

fn actor_label(ctx: &Ctx) -> String {
    ctx.principal.actor().to_string()
}

fn is_approver(ctx: &Ctx) -> bool {
    matches!(
        ctx.principal,
        Principal::Operator
            | Principal::Tenant {
                role: ApiKeyRole::Approver,
                ..
            }
    )
}

fn require_approver(ctx: &Ctx) -> Result<()> {
    if is_approver(ctx) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "this needs the operator token or an API key with the approver role",
        ))
    }
}

fn editor(ctx: &Ctx, edit_locked: bool) -> Editor {
    Editor {
        actor: actor_label(ctx),
        may_edit_locked: is_approver(ctx),
        edit_locked,
    }
}

/// Runs a template command built from the template's current state.
async fn change(
    app: &App,
    ctx: &Ctx,
    tenant: Uuid,
    key: &str,
    make: impl Fn(&Template) -> Result<TemplateCommand>,
) -> Result<Vec<TemplateEvent>> {
    if !template::valid_key(key) {
        return Err(not_found());
    }
    execute_on(
        app,
        ctx,
        tenant,
        stream(key),
        template::apply,
        "the template",
        |state: &Template| Ok(template::decide(state, make(state)?)?),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Inputs

/// The content of a version as callers write it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInput {
    pub subject: String,
    #[serde(default)]
    pub subject_variants: Vec<SubjectVariant>,
    #[serde(default)]
    pub preview: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub variables: Vec<TemplateVariable>,
    /// Says that a change to a locked section is intended (operator or approver only).
    #[serde(default)]
    pub edit_locked: bool,
}

impl VersionInput {
    fn into_parts(self) -> (TemplateContent, bool) {
        (
            TemplateContent {
                subject: self.subject,
                subject_variants: self.subject_variants,
                preview: self.preview.filter(|p| !p.is_empty()),
                html: self.html.filter(|p| !p.is_empty()),
                text: self.text.filter(|p| !p.is_empty()),
                variables: self.variables,
            },
            self.edit_locked,
        )
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateInput {
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub category: Option<String>,
    /// Version 1, a draft.
    pub version: VersionInput,
}

// ---------------------------------------------------------------------------------------
// Reads

pub fn list(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    after: Option<&str>,
    first: usize,
) -> Result<Vec<Template>> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    Ok(app.templates.list(tenant, after, first.clamp(1, 200))?)
}

pub fn get(app: &App, ctx: &Ctx, requested: Option<Uuid>, key: &str) -> Result<Template> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    if !template::valid_key(key) {
        return Err(not_found());
    }
    app.templates.get(tenant, key)?.ok_or_else(not_found)
}

/// The template's whole timeline from the log: every change, drafting record and test
/// render, in log order.
pub async fn events(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: &str,
) -> Result<Vec<sending::TimelineEntry>> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    if !template::valid_key(key) {
        return Err(not_found());
    }
    let log = app.log.clone();
    let key = key.to_string();
    let events = crate::service::blocking(move || {
        let mut events = log.read_stream(tenant, &stream(&key), 1, usize::MAX)?;
        if !events.is_empty() {
            events.extend(log.read_stream(
                tenant,
                &StreamId::new(TEMPLATE_RENDER_STREAM, key.as_str()),
                1,
                usize::MAX,
            )?);
            events.sort_by_key(|e| e.position);
        }
        Ok(events)
    })
    .await?;
    if events.is_empty() {
        return Err(not_found());
    }
    Ok(events.iter().map(sending::timeline_entry).collect())
}

// ---------------------------------------------------------------------------------------
// Writes

pub async fn create(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    input: CreateTemplateInput,
) -> Result<Template> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let category = match input.category.as_deref() {
        None => domain::message::Category::Transactional,
        Some(c) => domain::message::Category::parse(c).ok_or_else(|| {
            validation(vec![field(
                "category",
                "must be `transactional` or `marketing`",
            )])
        })?,
    };
    if !template::valid_key(&input.key) {
        return Err(validation(vec![field(
            "key",
            "must be 1..=64 characters of a-z, 0-9, '_', '-', '.', starting with a letter or digit",
        )]));
    }
    let (content, _) = input.version.into_parts();
    let first = check(content)?;
    let author = actor_label(ctx);
    let now = Utc::now();
    change(app, ctx, tenant, &input.key, |_| {
        Ok(TemplateCommand::Create {
            key: input.key.clone(),
            name: input.name.clone(),
            category,
            first: first.clone(),
            author: author.clone(),
            now,
        })
    })
    .await?;
    get(app, ctx, Some(tenant), &input.key)
}

/// A new draft version started from `based_on` (default: the current version).
pub async fn create_version(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: &str,
    based_on: Option<u32>,
    input: VersionInput,
) -> Result<(Template, u32)> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let (content, edit_locked) = input.into_parts();
    let draft = check(content)?;
    let ed = editor(ctx, edit_locked);
    let now = Utc::now();
    let events = change(app, ctx, tenant, key, |_| {
        Ok(TemplateCommand::DraftVersion {
            based_on,
            draft: draft.clone(),
            editor: ed.clone(),
            source: VersionSource::Human,
            generated: None,
            now,
        })
    })
    .await?;
    let number = drafted_number(&events);
    Ok((get(app, ctx, Some(tenant), key)?, number))
}

fn drafted_number(events: &[TemplateEvent]) -> u32 {
    events
        .iter()
        .find_map(|e| match e {
            TemplateEvent::VersionDrafted(d) => Some(d.version),
            _ => None,
        })
        .unwrap_or(0)
}

pub async fn edit_draft(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: &str,
    version: u32,
    input: VersionInput,
) -> Result<Template> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let (content, edit_locked) = input.into_parts();
    let draft = check(content)?;
    let ed = editor(ctx, edit_locked);
    let now = Utc::now();
    change(app, ctx, tenant, key, |_| {
        Ok(TemplateCommand::EditDraft {
            version,
            draft: draft.clone(),
            editor: ed.clone(),
            now,
        })
    })
    .await?;
    get(app, ctx, Some(tenant), key)
}

/// What a review step does to a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Review {
    Submit,
    Approve,
    Reject,
    MakeCurrent,
}

pub async fn review(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: &str,
    version: u32,
    step: Review,
    note: Option<String>,
) -> Result<Template> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    if step != Review::Submit {
        require_approver(ctx)?;
    }
    let by = actor_label(ctx);
    let note = note.unwrap_or_default();
    let now = Utc::now();
    change(app, ctx, tenant, key, |_| {
        let (by, note) = (by.clone(), note.clone());
        Ok(match step {
            Review::Submit => TemplateCommand::Submit {
                version,
                by,
                note,
                now,
            },
            Review::Approve => TemplateCommand::Approve {
                version,
                by,
                note,
                now,
            },
            Review::Reject => TemplateCommand::Reject {
                version,
                by,
                note,
                now,
            },
            Review::MakeCurrent => TemplateCommand::MakeCurrent { version, by, now },
        })
    })
    .await?;
    get(app, ctx, Some(tenant), key)
}

// ---------------------------------------------------------------------------------------
// Rendering

fn render_error(e: RenderError) -> ApiError {
    let code = e.code();
    let details = match &e {
        RenderError::MissingVariables { names } => json!({
            "missing": names,
            "fields": names.iter().map(|n| json!({
                "field": format!("context.{n}"),
                "message": "is a required variable of the template",
            })).collect::<Vec<_>>(),
        }),
        RenderError::Failed { part, line, .. } => json!({ "part": part, "line": line }),
        RenderError::RenderLimit { part, .. } => json!({ "part": part }),
        RenderError::InvalidContext { .. } => Value::Null,
    };
    ApiError::new(422, code, e.to_string()).with_details(details)
}

/// Renders a version with a context; the variant is picked for `recipient`.
fn render_version(
    app: &App,
    tenant: Uuid,
    key: &str,
    version: &TemplateVersion,
    context: &Value,
    recipient: &str,
) -> Result<Rendered> {
    if !(context.is_object() || context.is_null()) {
        return Err(ApiError::invalid("context", "must be a JSON object"));
    }
    let compiled = app.template_cache.compiled(tenant, key, version)?;
    compiled
        .render(context, &variant_key(key, recipient))
        .map_err(render_error)
}

/// The same recipient always gets the same subject variant of the same template.
fn variant_key(template: &str, recipient: &str) -> String {
    format!("{template}\n{}", recipient.trim().to_ascii_lowercase())
}

pub fn rendered_json(version: u32, r: &Rendered) -> Value {
    json!({
        "version": version,
        "subject": r.subject,
        "preview": r.preview,
        "html": r.html,
        "text": r.text,
        "variant": r.variant,
        "context": r.context,
    })
}

/// A test render of any version (drafts included): answers the output and records the
/// exact context used on the template's render log.
pub async fn test_render(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: &str,
    version: u32,
    context: Value,
    recipient: Option<String>,
) -> Result<Rendered> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let t = get(app, ctx, Some(tenant), key)?;
    let v = t
        .versions
        .get(&version)
        .ok_or(DomainError::TemplateVersionNotFound { version })?;
    let rendered = render_version(
        app,
        tenant,
        key,
        v,
        &context,
        recipient.as_deref().unwrap_or(""),
    )?;
    let event = TemplateEvent::Rendered(TemplateRendered {
        key: key.to_string(),
        version,
        context: rendered.context.clone(),
        variant: rendered.variant,
        by: actor_label(ctx),
        at: Utc::now(),
    });
    app.log
        .append(
            tenant,
            StreamId::new(TEMPLATE_RENDER_STREAM, key),
            ExpectedVersion::Any,
            new_events(&[event]),
            metadata(ctx),
        )
        .await?;
    Ok(rendered)
}

// ---------------------------------------------------------------------------------------
// Send-template

/// The body of `POST /api/v1/messages/send-template/` and the GraphQL `sendTemplateEmail`
/// input: a raw send whose subject and bodies come from the template's current version.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendTemplateRequest {
    pub template: Option<String>,
    #[serde(default)]
    pub context: Option<Value>,
    pub from: Option<AddressInput>,
    pub to: Option<AddressList>,
    #[serde(default)]
    pub cc: Option<AddressList>,
    #[serde(default)]
    pub bcc: Option<AddressList>,
    #[serde(default)]
    pub reply_to: Option<AddressInput>,
    #[serde(default)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub attachments: Option<Vec<AttachmentInput>>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub scheduled_at: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Hides the preview text at the top of the HTML body, where mail clients show it beside
/// the subject.
fn with_preheader(html: Option<String>, preview: Option<&str>) -> Option<String> {
    match (html, preview) {
        (Some(h), Some(p)) if !p.trim().is_empty() => {
            let escaped = p
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            Some(format!(
                "<div style=\"display:none;max-height:0;overflow:hidden\">{escaped}</div>{h}"
            ))
        }
        (h, _) => h,
    }
}

pub async fn send_template(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    mut req: SendTemplateRequest,
    header_key: Option<String>,
) -> Result<SendReceipt> {
    let tenant = tenant_of(app, ctx, requested, true)?;
    let (idempotency_key, problems) = take_idempotency_key(&mut req.idempotency_key, header_key);
    // A retry must match the request as sent, not as rendered: the current version may
    // have changed in between.
    let digest = request_digest(&req);
    let Some(key) = req.template.clone() else {
        return Err(validation(vec![field("template", "is required")]));
    };
    let t = match template::valid_key(&key) {
        true => app.templates.get(tenant, &key)?,
        false => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            422,
            "TEMPLATE_NOT_FOUND",
            "no template of this tenant has this key",
        )
        .with_details(json!({ "fields": [{ "field": "template", "message": "no such template" }] }))
    })?;
    let Some(current) = t.current_version() else {
        return Err(ApiError::new(
            422,
            "TEMPLATE_NOT_APPROVED",
            "this template has no approved current version",
        ));
    };
    let first_to = AddressList::mailboxes(&req.to)
        .into_iter()
        .next()
        .map(|m| m.email)
        .unwrap_or_default();
    let context = req.context.clone().unwrap_or(Value::Null);
    let rendered = render_version(app, tenant, &key, current, &context, &first_to)?;
    let category = req
        .category
        .clone()
        .or_else(|| t.created.as_ref().map(|c| c.category.as_str().to_string()));
    let send = SendRequest {
        from: req.from,
        to: req.to,
        cc: req.cc,
        bcc: req.bcc,
        reply_to: req.reply_to,
        subject: Some(rendered.subject.clone()),
        html: with_preheader(rendered.html.clone(), rendered.preview.as_deref()),
        text: rendered.text.clone(),
        headers: req.headers,
        tags: req.tags,
        metadata: req.metadata,
        attachments: req.attachments,
        priority: req.priority,
        scheduled_at: req.scheduled_at,
        category,
        idempotency_key: None,
    };
    let used = TemplateUse {
        key,
        version: current.number,
        variant: rendered.variant,
    };
    sending::queue(
        app,
        ctx,
        tenant,
        send,
        idempotency_key,
        digest,
        problems,
        Some(used),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Drafting defaults

fn drafting_stream(tenant: Uuid) -> StreamId {
    StreamId::new(DRAFTING_SETTINGS_STREAM, tenant.to_string())
}

/// The tenant's drafting defaults, straight from its (tiny) stream.
pub async fn drafting_defaults(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
) -> Result<DraftingDefaults> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    load_defaults(app, tenant).await
}

async fn load_defaults(app: &App, tenant: Uuid) -> Result<DraftingDefaults> {
    let (state, _) = crate::service::load(
        app,
        tenant,
        &drafting_stream(tenant),
        drafting_settings::apply,
    )
    .await?;
    Ok(state.unwrap_or_default())
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftingDefaultsInput {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub brand_voice: Option<String>,
    pub failover: Option<bool>,
}

pub async fn set_drafting_defaults(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    input: DraftingDefaultsInput,
) -> Result<DraftingDefaults> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let events = execute_on(
        app,
        ctx,
        tenant,
        drafting_stream(tenant),
        drafting_settings::apply,
        "the drafting defaults",
        |state: &Option<DraftingDefaults>| {
            let old = state.clone().unwrap_or_default();
            let text = |v: &Option<String>, old: Option<String>| match v {
                Some(s) if s.trim().is_empty() => None,
                Some(s) => Some(s.trim().to_string()),
                None => old,
            };
            let new = DraftingDefaults {
                provider: input.provider.clone().unwrap_or(old.provider),
                model: text(&input.model, old.model),
                temperature: input.temperature.unwrap_or(old.temperature),
                brand_voice: text(&input.brand_voice, old.brand_voice),
                failover: input.failover.unwrap_or(old.failover),
            };
            Ok(drafting_settings::decide(state, new)?)
        },
    )
    .await?;
    let mut state = None;
    for e in &events {
        drafting_settings::apply(&mut state, e);
    }
    Ok(state.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------
// LLM-assisted drafting

/// Overrides of the tenant's defaults for one drafting call.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftOptions {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateInput {
    pub brief: Brief,
    /// The variables the draft may use; default those of the version it starts from.
    #[serde(default)]
    pub variables: Option<Vec<TemplateVariable>>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviseInput {
    pub instruction: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub temperature: Option<f32>,
}

/// How a drafting call ended.
#[derive(Clone, Debug, Serialize)]
pub struct DraftOutcome {
    /// The draft version it was saved as; `None` when it was not saved.
    pub version: Option<u32>,
    pub provider: String,
    pub requested_provider: String,
    pub model: String,
    pub failed_over: bool,
    pub provider_error: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub latency_ms: u64,
    pub issues: Vec<Value>,
}

fn provider_config(app: &App, provider: &str, model: Option<&str>) -> Result<ProviderConfig> {
    let kind = ProviderKind::parse(provider).ok_or_else(|| {
        validation(vec![field(
            "provider",
            "must be `dummy`, `openai`, `anthropic` or `deepseek`",
        )])
    })?;
    let mut cfg = app
        .llm
        .iter()
        .find(|c| c.kind == kind)
        .cloned()
        .unwrap_or_else(|| ProviderConfig::defaults(kind));
    if let Some(m) = model.filter(|m| !m.trim().is_empty()) {
        cfg.model = m.trim().to_string();
    }
    Ok(cfg)
}

fn issues_of(e: &ApiError) -> Vec<Value> {
    match e.details.get("issues").or_else(|| e.details.get("fields")) {
        Some(Value::Array(a)) => a.clone(),
        _ => vec![json!({ "code": e.code, "message": e.message })],
    }
}

#[allow(clippy::too_many_arguments)]
async fn draft(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: &str,
    base_version: Option<u32>,
    task: Task,
    variables: Option<Vec<TemplateVariable>>,
    options: DraftOptions,
) -> Result<DraftOutcome> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let t = get(app, ctx, Some(tenant), key)?;
    let base = match base_version {
        Some(n) => Some(
            t.versions
                .get(&n)
                .ok_or(DomainError::TemplateVersionNotFound { version: n })?,
        ),
        None => t
            .current_version()
            .or_else(|| t.versions.values().next_back()),
    };
    let defaults = load_defaults(app, tenant).await?;
    let provider = options.provider.unwrap_or(defaults.provider);
    let cfg = provider_config(
        app,
        &provider,
        options.model.as_deref().or(defaults.model.as_deref()),
    )?;
    let temperature = options.temperature.unwrap_or(defaults.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(validation(vec![field(
            "temperature",
            "must be between 0 and 2",
        )]));
    }
    let task_name = match &task {
        Task::Generate(_) => "generate",
        Task::Revise { .. } => "revise",
    };
    let request = DraftRequest {
        template_key: key.to_string(),
        template_name: t
            .created
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default(),
        category: t
            .created
            .as_ref()
            .map_or("transactional", |c| c.category.as_str())
            .to_string(),
        task,
        base: base.map(|b| b.content.clone()),
        variables: variables.unwrap_or_else(|| {
            base.map(|b| b.content.variables.clone())
                .unwrap_or_default()
        }),
        locked_sections: base.map(|b| b.locked_sections.clone()).unwrap_or_default(),
        brand_voice: defaults.brand_voice.clone(),
        temperature,
    };
    let record: DraftRecord = app.drafter.draft(&cfg, defaults.failover, &request).await;
    let mut generated = DraftGenerated {
        task: task_name.to_string(),
        base_version: base.map(|b| b.number),
        requested_provider: record.requested_provider.as_str().to_string(),
        provider: record.provider.as_str().to_string(),
        model: record.model.clone(),
        failed_over: record.failed_over,
        provider_error: record.provider_error.clone(),
        prompt: record.prompt.clone(),
        input_tokens: record.usage.input_tokens,
        output_tokens: record.usage.output_tokens,
        latency_ms: record.latency_ms,
        issues: Vec::new(),
        saved_as: None,
        requested_by: actor_label(ctx),
        at: Utc::now(),
    };
    let outcome = |g: &DraftGenerated| DraftOutcome {
        version: g.saved_as,
        provider: g.provider.clone(),
        requested_provider: g.requested_provider.clone(),
        model: g.model.clone(),
        failed_over: g.failed_over,
        provider_error: g.provider_error.clone(),
        input_tokens: g.input_tokens,
        output_tokens: g.output_tokens,
        latency_ms: g.latency_ms,
        issues: g.issues.clone(),
    };
    // The same two checks as a human edit: the engine's, then the domain's.
    let saved = match record.content.clone() {
        Err(reason) => Err(vec![json!({ "code": "NO_DRAFT", "message": reason })]),
        Ok(content) => match check(content) {
            Err(e) => Err(issues_of(&e)),
            Ok(checked) => {
                let g = Box::new(generated.clone());
                let based_on = base.map(|b| b.number);
                let ed = editor(ctx, false);
                let now = generated.at;
                match change(app, ctx, tenant, key, |_| {
                    Ok(TemplateCommand::DraftVersion {
                        based_on,
                        draft: checked.clone(),
                        editor: Editor {
                            may_edit_locked: false,
                            ..ed.clone()
                        },
                        source: VersionSource::Llm,
                        generated: Some(g.clone()),
                        now,
                    })
                })
                .await
                {
                    Ok(events) => Ok(drafted_number(&events)),
                    Err(e) if e.status == 422 || e.status == 403 => Err(issues_of(&e)),
                    Err(e) => return Err(e),
                }
            }
        },
    };
    match saved {
        Ok(version) => {
            generated.saved_as = Some(version);
            Ok(outcome(&generated))
        }
        Err(issues) => {
            generated.issues = issues;
            let g = Box::new(generated.clone());
            change(app, ctx, tenant, key, |_| {
                Ok(TemplateCommand::RecordGeneration(g.clone()))
            })
            .await?;
            let out = outcome(&generated);
            Err(ApiError::new(
                422,
                "DRAFT_INVALID",
                "the drafted version did not pass validation and was not saved",
            )
            .with_details(serde_json::to_value(out).unwrap_or(Value::Null)))
        }
    }
}

pub async fn generate(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: &str,
    input: GenerateInput,
) -> Result<DraftOutcome> {
    let problems: Vec<FieldError> = input
        .brief
        .validate()
        .into_iter()
        .map(|(f, m)| field(format!("brief.{f}"), m))
        .collect();
    if !problems.is_empty() {
        return Err(validation(problems));
    }
    let options = DraftOptions {
        provider: input.provider,
        model: input.model,
        temperature: input.temperature,
    };
    draft(
        app,
        ctx,
        requested,
        key,
        None,
        Task::Generate(input.brief),
        input.variables,
        options,
    )
    .await
}

pub async fn revise(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: &str,
    version: u32,
    input: ReviseInput,
) -> Result<DraftOutcome> {
    let instruction = input.instruction.trim().to_string();
    if instruction.is_empty() || instruction.chars().count() > 4000 {
        return Err(ApiError::invalid(
            "instruction",
            "must be 1..=4000 characters",
        ));
    }
    draft(
        app,
        ctx,
        requested,
        key,
        Some(version),
        Task::Revise { instruction },
        None,
        DraftOptions {
            provider: input.provider,
            model: input.model,
            temperature: input.temperature,
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// JSON shapes

fn time(t: chrono::DateTime<Utc>) -> Value {
    json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

pub fn version_json(t: &Template, n: u32) -> Value {
    let Some(v) = t.versions.get(&n) else {
        return Value::Null;
    };
    let review = |r: &Option<template::Review>| {
        r.as_ref()
            .map(|r| json!({ "by": r.by, "at": time(r.at), "note": r.note }))
    };
    json!({
        "version": v.number,
        "status": v.status.as_str(),
        "current": t.current == Some(v.number),
        "based_on": v.based_on,
        "source": match v.source { VersionSource::Human => "human", VersionSource::Llm => "llm" },
        "author": v.author,
        "subject": v.content.subject,
        "subject_variants": v.content.subject_variants,
        "preview": v.content.preview,
        "html": v.content.html,
        "text": v.content.text,
        "variables": v.content.variables,
        "locked_sections": v.locked_sections,
        "created_at": time(v.created_at),
        "updated_at": time(v.updated_at),
        "submitted": review(&v.submitted),
        "reviewed": review(&v.reviewed),
    })
}

/// A template; `with_versions` adds every version in full.
pub fn template_json(t: &Template, with_versions: bool) -> Value {
    let created = t.created.as_ref();
    let mut out = json!({
        "key": created.map(|c| c.key.clone()),
        "name": created.map(|c| c.name.clone()),
        "category": created.map(|c| c.category.as_str()),
        "current_version": t.current,
        "latest_version": t.versions.keys().next_back(),
        "created_at": created.map(|c| time(c.at)),
    });
    if with_versions {
        out["versions"] = Value::Array(t.versions.keys().map(|n| version_json(t, *n)).collect());
    }
    out
}
