//! The operations of the send pipeline behind REST, GraphQL and the CLI: sender profiles,
//! relays and the delivery callback (the tenant's mail settings), and messages (send,
//! batch, read, timeline, list, cancel).
//!
//! A send answers once `MessageQueued` is durable and does not wait for the read models:
//! the dispatcher follows the log, not the read models. Reads of a message that the read
//! model has not caught up with wait briefly for it.
use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use domain::delivery_report::DELIVERY_REPORT_STREAM;
use domain::mail_settings::{
    self as settings, DeliveryCallback, MailSettings, MailSettingsCommand, Relay, SenderProfile,
    TlsMode, MAIL_SETTINGS_STREAM,
};
use domain::message::{
    self, AttachmentRef, Category, Mailbox, MessageCommand, MessageEvent, MessageQueued,
    MessageState, Priority, MESSAGE_STREAM,
};
use domain::{DomainError, DomainEvent, FieldError};
use eventlog::{ExpectedVersion, RecordedEvent, StreamId};
use projections::mail_settings::{CallbackView, RelayView, SenderView};
use projections::messages::{MessageFilter, MessagePage, MessageView};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::App;
use crate::error::{ApiError, Result};
use crate::service::{blocking, execute_on, metadata, new_events, Ctx, READ_YOUR_WRITES};

pub const MAX_BATCH: usize = 500;

/// The tenant the call acts on, which must exist; sending also needs it active.
pub(crate) fn tenant_of(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    sending: bool,
) -> Result<Uuid> {
    let tenant = ctx.principal.scope(requested)?;
    let view = app
        .tenants
        .get(tenant)?
        .ok_or_else(ApiError::tenant_not_found)?;
    if sending && view.suspended {
        return Err(ApiError::new(
            403,
            "TENANT_SUSPENDED",
            "this tenant is suspended",
        ));
    }
    Ok(tenant)
}

pub(crate) fn validation(fields: Vec<FieldError>) -> ApiError {
    ApiError::from(DomainError::Validation { fields })
}

pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Mail settings

fn settings_stream(tenant: Uuid) -> StreamId {
    StreamId::new(MAIL_SETTINGS_STREAM, tenant.to_string())
}

/// Runs a mail-settings command built from the current settings.
async fn change_settings(
    app: &App,
    ctx: &Ctx,
    tenant: Uuid,
    make: impl Fn(&MailSettings) -> Result<MailSettingsCommand>,
) -> Result<()> {
    execute_on(
        app,
        ctx,
        tenant,
        settings_stream(tenant),
        settings::apply,
        "the settings",
        |state: &MailSettings| Ok(settings::decide(state, make(state)?)?),
    )
    .await?;
    Ok(())
}

/// Fields of a sender profile; on update, absent fields keep their value and an empty
/// string clears an optional one.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderInput {
    pub email: Option<String>,
    pub name: Option<String>,
    pub reply_to: Option<String>,
    pub category: Option<String>,
}

fn opt_text(v: Option<String>, old: Option<String>) -> Option<String> {
    match v {
        Some(s) if s.trim().is_empty() => None,
        Some(s) => Some(s.trim().to_string()),
        None => old,
    }
}

fn parse_category(v: &str, field_name: &str) -> Result<Category> {
    Category::parse(v).ok_or_else(|| {
        validation(vec![field(
            field_name,
            "must be `transactional` or `marketing`",
        )])
    })
}

fn merge_sender(
    id: Uuid,
    input: &SenderInput,
    old: Option<&SenderProfile>,
) -> Result<SenderProfile> {
    let email = match (&input.email, old) {
        (Some(e), _) => e.trim().to_ascii_lowercase(),
        (None, Some(o)) => o.email.clone(),
        (None, None) => return Err(validation(vec![field("email", "is required")])),
    };
    let category = match (&input.category, old) {
        (Some(c), _) => parse_category(c, "category")?,
        (None, Some(o)) => o.category,
        (None, None) => Category::Transactional,
    };
    Ok(SenderProfile {
        id,
        email,
        name: opt_text(input.name.clone(), old.and_then(|o| o.name.clone())),
        reply_to: opt_text(input.reply_to.clone(), old.and_then(|o| o.reply_to.clone())),
        category,
    })
}

pub fn senders(app: &App, ctx: &Ctx, requested: Option<Uuid>) -> Result<Vec<SenderView>> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    Ok(app.mail.senders(tenant)?)
}

fn sender_not_found() -> ApiError {
    ApiError::from(DomainError::SenderNotFound)
}

pub fn sender(app: &App, ctx: &Ctx, requested: Option<Uuid>, id: Uuid) -> Result<SenderView> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    app.mail.sender(tenant, id)?.ok_or_else(sender_not_found)
}

pub async fn create_sender(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    input: SenderInput,
) -> Result<SenderView> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let id = Uuid::now_v7();
    let profile = merge_sender(id, &input, None)?;
    change_settings(app, ctx, tenant, |_| {
        Ok(MailSettingsCommand::PutSender(profile.clone()))
    })
    .await?;
    app.mail.sender(tenant, id)?.ok_or_else(sender_not_found)
}

pub async fn update_sender(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    id: Uuid,
    input: SenderInput,
) -> Result<SenderView> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    change_settings(app, ctx, tenant, |s| {
        let old = s.senders.get(&id).ok_or_else(sender_not_found)?;
        Ok(MailSettingsCommand::PutSender(merge_sender(
            id,
            &input,
            Some(old),
        )?))
    })
    .await?;
    app.mail.sender(tenant, id)?.ok_or_else(sender_not_found)
}

pub async fn delete_sender(app: &App, ctx: &Ctx, requested: Option<Uuid>, id: Uuid) -> Result<()> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    change_settings(app, ctx, tenant, |_| {
        Ok(MailSettingsCommand::RemoveSender { id })
    })
    .await?;
    Ok(())
}

/// Fields of a relay; on update, absent fields keep their value. The password is write-only:
/// it is sealed here and no read ever returns it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayInput {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: Option<String>,
    /// An empty string removes the username and the password.
    pub username: Option<String>,
    /// An empty string removes the password.
    pub password: Option<String>,
    pub priority: Option<u32>,
    pub max_connections: Option<u32>,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
}

fn merge_relay(
    app: &App,
    tenant: Uuid,
    id: Uuid,
    input: &RelayInput,
    old: Option<&Relay>,
) -> Result<Relay> {
    let mut missing = Vec::new();
    let name = input.name.clone().or_else(|| old.map(|o| o.name.clone()));
    let host = input.host.clone().or_else(|| old.map(|o| o.host.clone()));
    if name.is_none() {
        missing.push(field("name", "is required"));
    }
    if host.is_none() {
        missing.push(field("host", "is required"));
    }
    let tls = match (&input.tls, old) {
        (Some(t), _) => match TlsMode::parse(t) {
            Some(t) => t,
            None => {
                missing.push(field("tls", "must be `none`, `starttls` or `tls`"));
                TlsMode::Starttls
            }
        },
        (None, Some(o)) => o.tls,
        (None, None) => TlsMode::Starttls,
    };
    if !missing.is_empty() {
        return Err(validation(missing));
    }
    let username = opt_text(input.username.clone(), old.and_then(|o| o.username.clone()));
    let password = match (&input.password, old) {
        _ if username.is_none() => None,
        (Some(p), _) if p.is_empty() => None,
        (Some(p), _) => Some(
            app.master_key
                .seal(
                    p.as_bytes(),
                    &workers::seal::relay_password_context(tenant, id),
                )
                .map_err(|e| ApiError::internal(e.to_string()))?,
        ),
        (None, Some(o)) => o.password.clone(),
        (None, None) => None,
    };
    let keep = |new: Option<u32>, old: Option<u32>| new.or(old);
    Ok(Relay {
        id,
        name: name.unwrap_or_default().trim().to_string(),
        host: host.unwrap_or_default().trim().to_string(),
        port: input.port.or(old.map(|o| o.port)).unwrap_or(587),
        tls,
        username,
        password,
        priority: input.priority.or(old.map(|o| o.priority)).unwrap_or(10),
        max_connections: input
            .max_connections
            .or(old.map(|o| o.max_connections))
            .unwrap_or(4),
        per_minute: keep(input.per_minute, old.and_then(|o| o.per_minute)),
        per_hour: keep(input.per_hour, old.and_then(|o| o.per_hour)),
        per_day: keep(input.per_day, old.and_then(|o| o.per_day)),
    })
}

fn relay_not_found() -> ApiError {
    ApiError::from(DomainError::RelayNotFound)
}

pub fn relays(app: &App, ctx: &Ctx, requested: Option<Uuid>) -> Result<Vec<RelayView>> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    Ok(app.mail.relays(tenant)?)
}

pub fn relay(app: &App, ctx: &Ctx, requested: Option<Uuid>, id: Uuid) -> Result<RelayView> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    app.mail.relay(tenant, id)?.ok_or_else(relay_not_found)
}

pub async fn create_relay(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    input: RelayInput,
) -> Result<RelayView> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let id = Uuid::now_v7();
    let relay = merge_relay(app, tenant, id, &input, None)?;
    change_settings(app, ctx, tenant, |_| {
        Ok(MailSettingsCommand::PutRelay(relay.clone()))
    })
    .await?;
    app.mail.relay(tenant, id)?.ok_or_else(relay_not_found)
}

pub async fn update_relay(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    id: Uuid,
    input: RelayInput,
) -> Result<RelayView> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    change_settings(app, ctx, tenant, |s| {
        let old = s.relays.get(&id).ok_or_else(relay_not_found)?;
        Ok(MailSettingsCommand::PutRelay(merge_relay(
            app,
            tenant,
            id,
            &input,
            Some(old),
        )?))
    })
    .await?;
    app.mail.relay(tenant, id)?.ok_or_else(relay_not_found)
}

pub async fn delete_relay(app: &App, ctx: &Ctx, requested: Option<Uuid>, id: Uuid) -> Result<()> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    change_settings(app, ctx, tenant, |_| {
        Ok(MailSettingsCommand::RemoveRelay { id })
    })
    .await?;
    Ok(())
}

pub fn callback(app: &App, ctx: &Ctx, requested: Option<Uuid>) -> Result<Option<CallbackView>> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    Ok(app.mail.callback(tenant)?)
}

/// Sets the callback URL with a new signing secret, returned here and never again.
pub async fn set_callback(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    url: &str,
) -> Result<(CallbackView, String)> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let secret = format!(
        "whsec_{}",
        hex::encode(
            crate::secrets::random_bytes::<32>().map_err(|e| ApiError::internal(e.to_string()))?
        )
    );
    let sealed = app
        .master_key
        .seal(
            secret.as_bytes(),
            &workers::seal::callback_secret_context(tenant),
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let url = url.trim().to_string();
    change_settings(app, ctx, tenant, |_| {
        Ok(MailSettingsCommand::SetCallback(DeliveryCallback {
            url: url.clone(),
            secret: sealed.clone(),
        }))
    })
    .await?;
    let view = app
        .mail
        .callback(tenant)?
        .ok_or_else(|| ApiError::internal("the callback is missing from the read model"))?;
    Ok((view, secret))
}

pub async fn clear_callback(app: &App, ctx: &Ctx, requested: Option<Uuid>) -> Result<()> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    change_settings(app, ctx, tenant, |_| Ok(MailSettingsCommand::ClearCallback)).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Messages

/// An address as callers write it: `"a@b"` or `{"email": "a@b", "name": "A"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "an address: \"a@example.com\" or {\"email\": …, \"name\": …}"
)]
pub enum AddressInput {
    Plain(String),
    Full {
        email: String,
        #[serde(default)]
        name: Option<String>,
    },
}

impl AddressInput {
    pub(crate) fn mailbox(&self) -> Mailbox {
        match self {
            AddressInput::Plain(s) => Mailbox {
                email: s.trim().to_string(),
                name: None,
            },
            AddressInput::Full { email, name } => Mailbox {
                email: email.trim().to_string(),
                name: name.clone().filter(|n| !n.trim().is_empty()),
            },
        }
    }
}

/// One address or a list of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged, expecting = "an address or a list of addresses")]
pub enum AddressList {
    One(AddressInput),
    Many(Vec<AddressInput>),
}

impl AddressList {
    pub(crate) fn mailboxes(list: &Option<AddressList>) -> Vec<Mailbox> {
        match list {
            None => Vec::new(),
            Some(AddressList::One(a)) => vec![a.mailbox()],
            Some(AddressList::Many(v)) => v.iter().map(AddressInput::mailbox).collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    pub filename: String,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Base64 (standard alphabet, padding optional).
    pub content: String,
    /// Makes the part inline, referenced from the HTML as `cid:<content_id>`.
    #[serde(default)]
    pub content_id: Option<String>,
}

/// The body of `POST /api/v1/messages/send/` and the GraphQL `sendEmail` input.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub from: Option<AddressInput>,
    pub to: Option<AddressList>,
    #[serde(default)]
    pub cc: Option<AddressList>,
    #[serde(default)]
    pub bcc: Option<AddressList>,
    #[serde(default)]
    pub reply_to: Option<AddressInput>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
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

/// What a send answers.
#[derive(Clone, Debug, Serialize)]
pub struct SendReceipt {
    pub id: Uuid,
    pub status: String,
    /// True when an earlier request with the same idempotency key created the message.
    pub duplicate: bool,
    /// Recipients left out because they are suppressed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<SuppressedRecipient>,
}

/// A recipient a send left out, and why.
#[derive(Clone, Debug, Serialize)]
pub struct SuppressedRecipient {
    pub address: String,
    pub reason: String,
    pub scope: String,
}

/// Drops every suppressed recipient from the message; answers who was dropped. Refuses the
/// message when no `to` recipient is left.
async fn screen_recipients(
    app: &App,
    tenant: Uuid,
    queued: &mut MessageQueued,
    now: DateTime<Utc>,
) -> Result<Vec<SuppressedRecipient>> {
    let plus = crate::suppressions::plus_addressing(app, tenant)?;
    let mut out = Vec::new();
    let category = queued.category;
    let mut keep = |list: &mut Vec<Mailbox>| -> Result<()> {
        let mut kept = Vec::with_capacity(list.len());
        for m in list.drain(..) {
            match app
                .suppressions
                .lookup(tenant, &m.email, plus, category, now)?
            {
                Some(s) => out.push(SuppressedRecipient {
                    address: m.email,
                    reason: s.reason.as_str().to_string(),
                    scope: s.scope.as_str().to_string(),
                }),
                None => kept.push(m),
            }
        }
        *list = kept;
        Ok(())
    };
    keep(&mut queued.to)?;
    keep(&mut queued.cc)?;
    keep(&mut queued.bcc)?;
    if queued.to.is_empty() && !out.is_empty() {
        return Err(ApiError::new(
            422,
            "RECIPIENTS_SUPPRESSED",
            "every `to` recipient is suppressed; nothing was queued",
        )
        .with_details(json!({ "suppressed": out })));
    }
    Ok(out)
}

/// A message id that only the tenant and the idempotency key decide, so that a retried
/// request lands on the same stream and the log itself refuses the second message.
fn idempotent_id(tenant: Uuid, key: &str) -> Uuid {
    let mut h = blake3::Hasher::new_derive_key("postledger idempotency key v1");
    h.update(tenant.as_bytes());
    h.update(key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Parses a JSON body into `T`, naming the failing field on a type error.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => {
            de.end().map_err(|e| {
                ApiError::new(
                    400,
                    "BAD_REQUEST",
                    format!("the body is not one JSON value: {e}"),
                )
            })?;
            Ok(v)
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                return Err(ApiError::new(
                    400,
                    "BAD_REQUEST",
                    format!("the body is not valid JSON: {inner}"),
                ));
            }
            let name = if path == "." {
                "body".to_string()
            } else {
                path
            };
            Err(validation(vec![field(name, inner.to_string())]))
        }
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let cleaned: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(&cleaned)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&cleaned))
        .ok()
}

fn guess_content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "zip" => "application/zip",
        "ics" => "text/calendar",
        _ => "application/octet-stream",
    }
}

/// Queues one message. Validation problems are collected and reported together.
pub async fn send(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    mut req: SendRequest,
    header_key: Option<String>,
) -> Result<SendReceipt> {
    let tenant = tenant_of(app, ctx, requested, true)?;
    let (idempotency_key, problems) = take_idempotency_key(&mut req.idempotency_key, header_key);
    let digest = request_digest(&req);
    queue(
        app,
        ctx,
        tenant,
        req,
        idempotency_key,
        digest,
        problems,
        None,
    )
    .await
}

/// The idempotency key of a request (header or field, which must agree), taken out of the
/// request so that the request digest does not cover it.
pub(crate) fn take_idempotency_key(
    field_key: &mut Option<String>,
    header_key: Option<String>,
) -> (Option<String>, Vec<FieldError>) {
    let mut problems = Vec::new();
    match (&header_key, &*field_key) {
        (Some(h), Some(f)) if h != f => problems.push(field(
            "idempotency_key",
            "differs from the Idempotency-Key header",
        )),
        (Some(h), None) => *field_key = Some(h.clone()),
        _ => {}
    }
    (field_key.take(), problems)
}

/// Hex blake3 of a request without its idempotency key, so that "same key, same body" is
/// decidable.
pub(crate) fn request_digest<T: Serialize>(req: &T) -> String {
    blake3::hash(&serde_json::to_vec(req).unwrap_or_default())
        .to_hex()
        .to_string()
}

/// Validates a send request and appends its `MessageQueued`; answers once it is durable.
/// `template` says which template version rendered the bodies, for send-template.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn queue(
    app: &App,
    ctx: &Ctx,
    tenant: Uuid,
    req: SendRequest,
    idempotency_key: Option<String>,
    digest: String,
    mut problems: Vec<FieldError>,
    template: Option<domain::template::TemplateUse>,
) -> Result<SendReceipt> {
    let now = Utc::now();

    let from = req.from.as_ref().map(AddressInput::mailbox);
    let sender = match &from {
        None => {
            problems.push(field("from", "is required"));
            None
        }
        Some(m) => app.mail.sender_by_email(tenant, &m.email)?,
    };
    if from.is_some() && sender.is_none() && problems.is_empty() {
        return Err(ApiError::new(
            422,
            "UNKNOWN_SENDER",
            "`from` is not the address of one of this tenant's sender profiles",
        )
        .with_details(json!({ "fields": [{ "field": "from", "message": "no sender profile has this address" }] })));
    }
    let priority = match req.priority.as_deref() {
        None => Priority::Normal,
        Some(p) => Priority::parse(p).unwrap_or_else(|| {
            problems.push(field(
                "priority",
                "must be `immediate`, `high`, `normal` or `low`",
            ));
            Priority::Normal
        }),
    };
    let category = match (req.category.as_deref(), &sender) {
        (Some(c), _) => Category::parse(c).unwrap_or_else(|| {
            problems.push(field("category", "must be `transactional` or `marketing`"));
            Category::Transactional
        }),
        (None, Some(s)) => Category::parse(&s.category).unwrap_or(Category::Transactional),
        (None, None) => Category::Transactional,
    };
    let scheduled_at = match req.scheduled_at.as_deref() {
        None => None,
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                problems.push(field("scheduled_at", "must be an RFC 3339 time"));
                None
            }
        },
    };
    let mut decoded = Vec::new();
    for (i, a) in req.attachments.iter().flatten().enumerate() {
        match decode_base64(&a.content) {
            Some(bytes) => decoded.push(bytes),
            None => {
                problems.push(field(format!("attachments[{i}].content"), "is not base64"));
                decoded.push(Vec::new());
            }
        }
    }
    let reply_to = req
        .reply_to
        .as_ref()
        .map(AddressInput::mailbox)
        .or_else(|| {
            sender.as_ref().and_then(|s| {
                s.reply_to
                    .clone()
                    .map(|email| Mailbox { email, name: None })
            })
        });
    let mut from = from.unwrap_or(Mailbox {
        email: String::new(),
        name: None,
    });
    if from.name.is_none() {
        from.name = sender.as_ref().and_then(|s| s.name.clone());
    }
    let message_id = match &idempotency_key {
        Some(k) => idempotent_id(tenant, k),
        None => Uuid::now_v7(),
    };
    let attachments: Vec<AttachmentRef> = req
        .attachments
        .iter()
        .flatten()
        .zip(&decoded)
        .map(|(a, bytes)| AttachmentRef {
            digest: eventlog::BlobStore::digest(bytes),
            size: bytes.len() as u64,
            filename: a.filename.clone(),
            content_type: a
                .content_type
                .clone()
                .unwrap_or_else(|| guess_content_type(&a.filename).to_string()),
            content_id: a.content_id.clone(),
        })
        .collect();
    // Big bodies go beside the log, like attachments; the event keeps their digests.
    let (mut html, mut text) = (req.html.clone(), req.text.clone());
    let (mut html_blob, mut text_blob) = (None, None);
    let inline = html.as_ref().map_or(0, String::len) + text.as_ref().map_or(0, String::len);
    if inline > message::MAX_INLINE_BODY_BYTES {
        if let Some(h) = html.take().filter(|h| !h.is_empty()) {
            html_blob = Some(eventlog::BlobStore::digest(h.as_bytes()));
            decoded.push(h.into_bytes());
        }
        if let Some(t) = text.take().filter(|t| !t.is_empty()) {
            text_blob = Some(eventlog::BlobStore::digest(t.as_bytes()));
            decoded.push(t.into_bytes());
        }
    }
    let mut queued = MessageQueued {
        message_id,
        sender_id: sender.as_ref().map_or(Uuid::nil(), |s| s.id),
        from,
        reply_to,
        to: AddressList::mailboxes(&req.to),
        cc: AddressList::mailboxes(&req.cc),
        bcc: AddressList::mailboxes(&req.bcc),
        subject: req.subject.clone().unwrap_or_default(),
        html,
        text,
        html_blob,
        text_blob,
        headers: req.headers.clone().unwrap_or_default(),
        tags: req.tags.clone().unwrap_or_default(),
        metadata: req.metadata.clone().unwrap_or(Value::Null),
        attachments,
        priority,
        category,
        scheduled_at,
        idempotency_key: idempotency_key.clone(),
        request_digest: digest.clone(),
        queued_at: now,
        template,
    };
    problems.extend(message::validate_message(&queued, now));
    if !problems.is_empty() {
        return Err(validation(problems));
    }
    let suppressed = screen_recipients(app, tenant, &mut queued, now).await?;
    let events = message::decide(
        &MessageState::default(),
        MessageCommand::Queue {
            message: Box::new(queued),
            now,
        },
    )?;
    let new = new_events(&events);
    if new.iter().any(|e| e.payload.len() > eventlog::MAX_PAYLOAD) {
        return Err(validation(vec![field(
            "body",
            "the message's addresses, headers, tags, metadata and attachment names exceed 64 KiB",
        )]));
    }
    // The bytes go to the blob store before the event that names them is appended.
    if !decoded.is_empty() {
        let blobs = app.blobs.clone();
        blocking(move || {
            for bytes in &decoded {
                blobs.put(bytes)?;
            }
            Ok(())
        })
        .await?;
    }
    let stream = StreamId::new(MESSAGE_STREAM, message_id.to_string());
    match app
        .log
        .append(
            tenant,
            stream.clone(),
            ExpectedVersion::NoStream,
            new,
            metadata(ctx),
        )
        .await
    {
        Ok(_) => Ok(SendReceipt {
            id: message_id,
            status: "queued".into(),
            duplicate: false,
            suppressed,
        }),
        Err(eventlog::Error::WrongExpectedVersion { .. }) if idempotency_key.is_some() => {
            let log = app.log.clone();
            let first = blocking(move || Ok(log.read_stream(tenant, &stream, 1, 1)?)).await?;
            let earlier = first
                .first()
                .map(|e| MessageEvent::decode(&e.event_type, e.schema_version, &e.payload))
                .transpose()?;
            match earlier {
                Some(MessageEvent::Queued(q)) if q.request_digest == digest => {
                    let status = current_status(app, tenant, message_id).await?;
                    Ok(SendReceipt {
                        id: message_id,
                        status,
                        duplicate: true,
                        suppressed,
                    })
                }
                _ => Err(ApiError::new(
                    409,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this idempotency key was already used with a different request",
                )
                .with_details(json!({ "message_id": message_id }))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

async fn current_status(app: &App, tenant: Uuid, id: Uuid) -> Result<String> {
    Ok(load_message_view(app, tenant, id)
        .await?
        .map_or_else(|| "queued".to_string(), |v| v.status))
}

/// One entry of a batch answer: the status a single send would have had.
#[derive(Clone, Debug, Serialize)]
pub struct BatchItem {
    pub index: usize,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// Queues up to [`MAX_BATCH`] messages concurrently (their appends share fsyncs); each is
/// answered on its own.
pub async fn send_batch(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    items: Vec<Value>,
) -> Result<Vec<BatchItem>> {
    tenant_of(app, ctx, requested, true)?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(validation(vec![field(
            "messages",
            format!("must hold 1..={MAX_BATCH} messages"),
        )]));
    }
    let futures = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| async move {
            let parsed = serde_json::to_vec(&item)
                .map_err(|e| ApiError::internal(e.to_string()))
                .and_then(|bytes| parse_json::<SendRequest>(&bytes));
            let outcome = match parsed {
                Ok(req) => send(app, ctx, requested, req, None).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(r) => BatchItem {
                    index,
                    status: if r.duplicate { 200 } else { 202 },
                    id: Some(r.id),
                    message_status: Some(r.status),
                    duplicate: Some(r.duplicate),
                    error: None,
                },
                Err(e) => BatchItem {
                    index,
                    status: e.status,
                    id: None,
                    message_status: None,
                    duplicate: None,
                    error: Some(e.body()["error"].clone()),
                },
            }
        });
    Ok(futures_util::future::join_all(futures).await)
}

/// The read model's view, waiting briefly for it when the log already has the message.
async fn load_message_view(app: &App, tenant: Uuid, id: Uuid) -> Result<Option<MessageView>> {
    if let Some(v) = app.messages.get(tenant, id)? {
        return Ok(Some(v));
    }
    let log = app.log.clone();
    let stream = StreamId::new(MESSAGE_STREAM, id.to_string());
    let exists = blocking(move || Ok(log.stream_version(tenant, &stream)? > 0)).await?;
    if !exists {
        return Ok(None);
    }
    app.projections
        .wait_for(app.log.head(), READ_YOUR_WRITES)
        .await;
    Ok(app.messages.get(tenant, id)?)
}

fn message_not_found() -> ApiError {
    ApiError::from(DomainError::MessageNotFound)
}

pub async fn get_message(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    id: Uuid,
) -> Result<MessageView> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    load_message_view(app, tenant, id)
        .await?
        .ok_or_else(message_not_found)
}

/// One event of a message's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub summary: String,
    pub data: Value,
}

pub(crate) fn timeline_entry(e: &RecordedEvent) -> TimelineEntry {
    TimelineEntry {
        position: e.position,
        stream: e.stream.kind.clone(),
        version: e.version,
        event_id: e.event_id,
        event_type: e.event_type.clone(),
        at: e.recorded_at(),
        actor: e.actor.to_string(),
        summary: crate::service::summary(e),
        data: serde_json::from_slice(&e.payload).unwrap_or(Value::Null),
    }
}

/// The message's whole timeline from the log: its own stream, the tries of its delivery
/// reports and the signals that came back, in log order.
pub async fn message_events(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    id: Uuid,
) -> Result<Vec<TimelineEntry>> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let log = app.log.clone();
    let events = blocking(move || {
        let mut events = log.read_stream(
            tenant,
            &StreamId::new(MESSAGE_STREAM, id.to_string()),
            1,
            usize::MAX,
        )?;
        if events.is_empty() {
            return Ok(events);
        }
        events.extend(log.read_stream(
            tenant,
            &StreamId::new(DELIVERY_REPORT_STREAM, id.to_string()),
            1,
            usize::MAX,
        )?);
        events.extend(log.read_stream(
            tenant,
            &StreamId::new(domain::signals::MESSAGE_SIGNAL_STREAM, id.to_string()),
            1,
            usize::MAX,
        )?);
        events.sort_by_key(|e| e.position);
        Ok(events)
    })
    .await?;
    if events.is_empty() {
        return Err(message_not_found());
    }
    Ok(events.iter().map(timeline_entry).collect())
}

pub fn list_messages(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    filter: &MessageFilter,
    after: Option<u64>,
    first: usize,
) -> Result<MessagePage> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    if let Some(s) = &filter.status {
        if domain::message::MessageStatus::parse(s).is_none() {
            return Err(validation(vec![field(
                "status",
                "must be queued, deferred, sent, failed or cancelled",
            )]));
        }
    }
    Ok(app
        .messages
        .list(tenant, filter, after, first.clamp(1, 100))?)
}

/// Cancels a message that has not been sent yet.
pub async fn cancel_message(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    id: Uuid,
    reason: Option<String>,
) -> Result<MessageView> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let now = Utc::now();
    execute_on(
        app,
        ctx,
        tenant,
        StreamId::new(MESSAGE_STREAM, id.to_string()),
        message::apply,
        "the message",
        |state: &MessageState| {
            Ok(message::decide(
                state,
                MessageCommand::Cancel {
                    reason: reason.clone(),
                    now,
                },
            )?)
        },
    )
    .await?;
    get_message(app, ctx, requested, id).await
}

fn time_us(us: i64) -> Value {
    DateTime::<Utc>::from_timestamp_micros(us).map_or(Value::Null, |t| json!(t.to_rfc3339()))
}

/// The REST (and CLI) JSON of a message.
pub fn message_json(v: &MessageView) -> Value {
    json!({
        "id": v.id,
        "status": v.status,
        "from": v.from,
        "to": v.to,
        "cc": v.cc,
        "bcc_count": v.bcc_count,
        "subject": v.subject,
        "tags": v.tags,
        "priority": v.priority,
        "category": v.category,
        "metadata": serde_json::from_str::<Value>(&v.metadata).unwrap_or(Value::Null),
        "idempotency_key": v.idempotency_key,
        "attachments": v.attachments,
        "scheduled_at": v.scheduled_at_us.map_or(Value::Null, time_us),
        "queued_at": time_us(v.queued_at_us),
        "updated_at": time_us(v.updated_at_us),
        "attempts": v.attempts,
        "last_code": v.last_code,
        "last_reply": v.last_reply,
        "relay": v.relay,
        "next_attempt_at": v.next_attempt_at_us.map_or(Value::Null, time_us),
        "sent_at": v.sent_at_us.map_or(Value::Null, time_us),
    })
}

pub fn sender_json(v: &SenderView) -> Value {
    json!({
        "id": v.id,
        "email": v.email,
        "name": v.name,
        "reply_to": v.reply_to,
        "category": v.category,
        "created_at": time_us(v.created_at_us),
        "updated_at": time_us(v.updated_at_us),
    })
}

pub fn relay_json(v: &RelayView) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "host": v.host,
        "port": v.port,
        "tls": v.tls,
        "username": v.username,
        "has_password": v.has_password,
        "priority": v.priority,
        "max_connections": v.max_connections,
        "per_minute": v.per_minute,
        "per_hour": v.per_hour,
        "per_day": v.per_day,
        "created_at": time_us(v.created_at_us),
        "updated_at": time_us(v.updated_at_us),
    })
}

pub fn callback_json(v: &CallbackView) -> Value {
    json!({ "url": v.url, "updated_at": time_us(v.updated_at_us) })
}
