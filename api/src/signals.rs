//! What comes back after sending: provider webhooks, bounce messages (RFC 3464) and
//! one-click unsubscribes, and what follows from them (suppressions).
//!
//! Every call to a webhook or bounce endpoint lands in the tenant's webhook log
//! (`webhook-log/<tenant>`), accepted or not; a refused call records only the refusal. Each
//! signal is recorded once per provider event id: on its message's `message-signal/<id>`
//! stream (checked against that stream at append time), or, when the message is unknown,
//! on an `unmatched-signal/<key>` stream of its own (the log refuses a second one).
//!
//! Consequences are idempotent, so a provider's retry after a crash completes them: a hard
//! bounce and a complaint suppress the address for all mail, an unsubscribe for marketing.
use chrono::{DateTime, Utc};
use domain::message::Category;
use domain::signals::{
    self, SignalEvent, SignalKind, SignalReceived, SignalSettings, SignatureMode, WebhookReceived,
    MAX_WEBHOOK_PAYLOAD, MESSAGE_SIGNAL_STREAM, SIGNAL_SETTINGS_STREAM, UNMATCHED_SIGNAL_STREAM,
    WEBHOOK_LOG_STREAM,
};
use domain::suppression::{AppliesTo, Reason, Scope, Source, Suppression};
use domain::DomainEvent;
use eventlog::{Actor, ExpectedVersion, Metadata, StreamId};
use inbound::{EventKind, InboundError, InboundEvent, Provider};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::App;
use crate::error::{ApiError, Result};
use crate::sending::tenant_of;
use crate::service::{blocking, execute_as, execute_on, load, new_events, Ctx};

/// The context a tenant's inbound-webhook secret is sealed under.
fn webhook_secret_context(tenant: Uuid) -> Vec<u8> {
    let mut c = b"postledger inbound webhook secret\0".to_vec();
    c.extend_from_slice(tenant.as_bytes());
    c
}

fn settings_stream(tenant: Uuid) -> StreamId {
    StreamId::new(SIGNAL_SETTINGS_STREAM, tenant.to_string())
}

/// The tenant's signal settings, folded from its (tiny) stream.
pub async fn load_settings(app: &App, tenant: Uuid) -> Result<SignalSettings> {
    let (state, _) = load(
        app,
        tenant,
        &settings_stream(tenant),
        signals::apply_settings,
    )
    .await?;
    Ok(state)
}

pub fn settings_json(s: &SignalSettings) -> Value {
    json!({
        "plus_addressing": s.plus_addressing,
        "signature_mode": s.signature_mode.as_str(),
        "has_webhook_secret": s.webhook_secret.is_some(),
        "tolerance_secs": s.tolerance_secs,
    })
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsInput {
    pub plus_addressing: Option<bool>,
    pub signature_mode: Option<String>,
    pub tolerance_secs: Option<u32>,
    /// Issues a new webhook signing secret (answered once, never shown again).
    #[serde(default)]
    pub rotate_secret: bool,
}

/// Changes the settings; answers them and, when one was issued, the new secret.
pub async fn set_settings(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    input: SettingsInput,
) -> Result<(SignalSettings, Option<String>)> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let mode = input
        .signature_mode
        .as_deref()
        .map(|m| {
            SignatureMode::parse(m).ok_or_else(|| {
                ApiError::invalid("signature_mode", "must be `off`, `warn` or `enforce`")
            })
        })
        .transpose()?;
    let old = load_settings(app, tenant).await?;
    // A secret is issued on request, or the first time signatures get checked.
    let needs_secret = input.rotate_secret
        || (old.webhook_secret.is_none() && mode.is_some_and(|m| m != SignatureMode::Off));
    let secret = if needs_secret {
        let bytes =
            crate::secrets::random_bytes::<32>().map_err(|e| ApiError::internal(e.to_string()))?;
        Some(format!("whsec_{}", hex::encode(bytes)))
    } else {
        None
    };
    let sealed = secret
        .as_ref()
        .map(|s| {
            app.master_key
                .seal(s.as_bytes(), &webhook_secret_context(tenant))
                .map_err(|e| ApiError::internal(e.to_string()))
        })
        .transpose()?;
    let events = execute_on(
        app,
        ctx,
        tenant,
        settings_stream(tenant),
        signals::apply_settings,
        "the signal settings",
        |state: &SignalSettings| {
            let new = SignalSettings {
                plus_addressing: input.plus_addressing.unwrap_or(state.plus_addressing),
                signature_mode: mode.unwrap_or(state.signature_mode),
                webhook_secret: sealed.clone().or_else(|| state.webhook_secret.clone()),
                tolerance_secs: input.tolerance_secs.unwrap_or(state.tolerance_secs),
            };
            signals::check_settings(&new)?;
            Ok(vec![SignalEvent::SettingsSet(new)])
        },
    )
    .await?;
    let mut state = old;
    for e in &events {
        signals::apply_settings(&mut state, e);
    }
    Ok((state, secret))
}

/// The tenant's counts of sends and signals (complaint and bounce rates).
pub fn counts(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
) -> Result<projections::signals::SignalCounts> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    Ok(app.signal_counts.counts(tenant)?)
}

pub async fn settings(app: &App, ctx: &Ctx, requested: Option<Uuid>) -> Result<SignalSettings> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    load_settings(app, tenant).await
}

// ---------------------------------------------------------------------------------------
// Suppressions that signals cause

fn consequence(kind: &SignalKind) -> Option<(Reason, AppliesTo)> {
    match kind {
        SignalKind::Bounced { hard: true, .. } => Some((Reason::HardBounce, AppliesTo::All)),
        SignalKind::Complained => Some((Reason::Complaint, AppliesTo::All)),
        SignalKind::Unsubscribed => Some((Reason::Unsubscribe, AppliesTo::Marketing)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Webhooks and bounces

/// How a webhook call authenticated.
pub enum Caller {
    /// An API key (or the operator naming the tenant).
    Key(Ctx, Option<Uuid>),
    /// No key: the tenant named in the URL; only a valid signature lets it in.
    Signed(Uuid),
}

/// What a webhook call came to.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookOutcome {
    pub webhook_id: Uuid,
    pub recorded: u32,
    pub duplicates: u32,
    pub unmatched: u32,
    pub signature: String,
}

fn kind_of(k: &EventKind) -> SignalKind {
    match k {
        EventKind::Delivered => SignalKind::Delivered,
        EventKind::Bounced {
            hard,
            smtp_status,
            diagnostic,
        } => SignalKind::Bounced {
            hard: *hard,
            smtp_status: smtp_status.clone(),
            diagnostic: diagnostic.clone(),
        },
        EventKind::Complained => SignalKind::Complained,
        EventKind::Opened => SignalKind::Opened,
        EventKind::Clicked { url } => SignalKind::Clicked { url: url.clone() },
        EventKind::Unsubscribed => SignalKind::Unsubscribed,
    }
}

fn system_meta(what: &str) -> Metadata {
    Metadata {
        actor: Actor::System(what.to_string()),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
    }
}

/// Records one signal once; returns whether it was new and whether its message is known.
async fn record_one(
    app: &App,
    tenant: Uuid,
    event: &InboundEvent,
    webhook_id: Uuid,
    meta: &Metadata,
) -> Result<(bool, bool)> {
    let message_id = event
        .message
        .postledger_id
        .as_deref()
        .and_then(|s| Uuid::parse_str(s).ok())
        .filter(|id| matches!(app.messages.get(tenant, *id), Ok(Some(_))));
    let signal = SignalReceived {
        provider: event.provider.as_str().to_string(),
        provider_event_id: event.provider_event_id.clone(),
        kind: kind_of(&event.kind),
        recipient: event.recipient.clone(),
        message_id,
        rfc_message_id: event.message.message_id.clone(),
        occurred_at: event.occurred_at,
        raw_type: event.raw_type.clone(),
        webhook_id,
        received_at: Utc::now(),
    };
    let new = match message_id {
        Some(id) => !execute_as(
            app,
            meta.clone(),
            tenant,
            StreamId::new(MESSAGE_SIGNAL_STREAM, id.to_string()),
            signals::apply_seen,
            "the message's signals",
            |seen| Ok(signals::record_signal(seen, signal.clone())?),
        )
        .await?
        .is_empty(),
        None => {
            let key = blake3::hash(
                format!("{}\n{}", signal.provider, signal.provider_event_id).as_bytes(),
            )
            .to_hex()
            .to_string();
            let events = vec![SignalEvent::SignalReceived(Box::new(signal.clone()))];
            match app
                .log
                .append(
                    tenant,
                    StreamId::new(UNMATCHED_SIGNAL_STREAM, key),
                    ExpectedVersion::NoStream,
                    new_events(&events),
                    meta.clone(),
                )
                .await
            {
                Ok(_) => true,
                Err(eventlog::Error::WrongExpectedVersion { .. }) => false,
                Err(e) => return Err(e.into()),
            }
        }
    };
    // Also for a duplicate: a retry after a crash must finish what the first call began.
    if let Some((reason, applies_to)) = consequence(&signal.kind) {
        if let Some(address) = inbound::address::normalise(&signal.recipient, false) {
            let source = if signal.provider == "dsn" {
                Source::Dsn
            } else {
                Source::Webhook
            };
            let entry = Suppression {
                address,
                scope: Scope::Tenant,
                reason,
                applies_to,
                source,
                created_by: format!("signal:{}", signal.provider),
                created_at: Utc::now(),
                expires_at: None,
                note: None,
                message_id,
            };
            crate::suppressions::suppress_as(app, tenant, entry, meta.clone()).await?;
        }
    }
    Ok((new, message_id.is_some()))
}

fn signature_verdict(e: &inbound::SignatureError) -> &'static str {
    match e {
        inbound::SignatureError::Missing => "missing",
        inbound::SignatureError::Malformed => "malformed",
        inbound::SignatureError::Expired => "expired",
        inbound::SignatureError::Mismatch => "mismatch",
    }
}

async fn append_webhook_log(
    app: &App,
    tenant: Uuid,
    entry: WebhookReceived,
    meta: Metadata,
) -> Result<()> {
    app.log
        .append(
            tenant,
            webhook_log_stream(tenant),
            ExpectedVersion::Any,
            new_events(&[SignalEvent::WebhookReceived(Box::new(entry))]),
            meta,
        )
        .await?;
    Ok(())
}

/// The headers a signed call carries.
pub struct SignatureHeaders {
    pub timestamp: Option<String>,
    pub signature: Option<String>,
}

/// One webhook (or bounce) call: authenticate, check the signature by the tenant's mode,
/// normalise, record each signal once, and log the call.
pub async fn receive(
    app: &App,
    caller: Caller,
    provider: &str,
    headers: SignatureHeaders,
    body: &[u8],
) -> Result<WebhookOutcome> {
    let Some(provider) = Provider::parse(provider) else {
        return Err(ApiError::new(
            404,
            "UNKNOWN_PROVIDER",
            "providers are generic, postmark, sendgrid, mailgun and ses",
        ));
    };
    let (tenant, meta, keyed) = match &caller {
        Caller::Key(ctx, requested) => (
            tenant_of(app, ctx, *requested, false)?,
            crate::service::metadata(ctx),
            true,
        ),
        Caller::Signed(t) => {
            // Same answer for an unknown tenant as for a bad signature: nothing to learn.
            match app.tenants.get(*t)? {
                Some(_) => (*t, system_meta("webhook"), false),
                None => {
                    return Err(ApiError::unauthenticated(
                        "sign the request or authenticate with an API key",
                    ))
                }
            }
        }
    };
    let settings = load_settings(app, tenant).await?;
    let webhook_id = Uuid::now_v7();
    let now = Utc::now();
    let verdict = match (&settings.webhook_secret, settings.signature_mode, keyed) {
        (_, SignatureMode::Off, true) => Ok("not_checked"),
        (None, _, _) => Err("no_secret"),
        (Some(sealed), _, _) => {
            let secret = app
                .master_key
                .open(sealed, &webhook_secret_context(tenant))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            match inbound::signature::verify(
                &secret,
                headers.timestamp.as_deref(),
                headers.signature.as_deref(),
                body,
                now.timestamp(),
                i64::from(settings.tolerance_secs),
            ) {
                Ok(()) => Ok("ok"),
                Err(e) => Err(signature_verdict(&e)),
            }
        }
    };
    let refuse = match verdict {
        Ok(_) => false,
        // Without a key the signature is the only credential, whatever the mode.
        Err(_) if !keyed => true,
        Err(_) => settings.signature_mode == SignatureMode::Enforce,
    };
    let signature = match verdict {
        Ok(v) | Err(v) => v.to_string(),
    };
    let rejected = |error: String, signature: String| WebhookReceived {
        webhook_id,
        provider: provider.as_str().to_string(),
        signature,
        outcome: "rejected".into(),
        error: Some(error),
        recorded: 0,
        duplicates: 0,
        unmatched: 0,
        payload: String::new(),
        replay_of: None,
        received_at: now,
    };
    if refuse {
        let msg = format!("the webhook signature is {signature}");
        if app.tenants.get(tenant)?.is_some() {
            append_webhook_log(app, tenant, rejected(msg.clone(), signature.clone()), meta).await?;
        }
        return Err(ApiError::unauthenticated(msg).with_details(json!({ "signature": signature })));
    }
    if body.len() > MAX_WEBHOOK_PAYLOAD {
        append_webhook_log(
            app,
            tenant,
            rejected("the payload is too large".into(), signature.clone()),
            meta,
        )
        .await?;
        return Err(ApiError::new(
            413,
            "PAYLOAD_TOO_LARGE",
            format!("a webhook payload may hold at most {MAX_WEBHOOK_PAYLOAD} bytes"),
        ));
    }
    let events = match inbound::events::normalise(provider, body) {
        Ok(e) => e,
        Err(InboundError::UnsupportedEvent { raw_type }) => {
            tracing::info!(
                provider = provider.as_str(),
                raw_type,
                "webhook event type ignored"
            );
            Vec::new()
        }
        Err(InboundError::SubscriptionConfirmation { .. }) => {
            tracing::warn!(
                provider = provider.as_str(),
                "an SNS subscription confirmation arrived; confirm it in the AWS console"
            );
            Vec::new()
        }
        Err(e) => {
            append_webhook_log(
                app,
                tenant,
                rejected(e.to_string(), signature.clone()),
                meta,
            )
            .await?;
            return Err(ApiError::new(400, e.code(), e.to_string()));
        }
    };
    let outcome = process(app, tenant, provider, &events, webhook_id, &meta).await?;
    append_webhook_log(
        app,
        tenant,
        WebhookReceived {
            webhook_id,
            provider: provider.as_str().to_string(),
            signature: signature.clone(),
            outcome: "accepted".into(),
            error: None,
            recorded: outcome.0,
            duplicates: outcome.1,
            unmatched: outcome.2,
            payload: String::from_utf8_lossy(body).into_owned(),
            replay_of: None,
            received_at: now,
        },
        meta,
    )
    .await?;
    Ok(WebhookOutcome {
        webhook_id,
        recorded: outcome.0,
        duplicates: outcome.1,
        unmatched: outcome.2,
        signature,
    })
}

/// Records every event; answers (recorded, duplicates, unmatched).
async fn process(
    app: &App,
    tenant: Uuid,
    provider: Provider,
    events: &[InboundEvent],
    webhook_id: Uuid,
    meta: &Metadata,
) -> Result<(u32, u32, u32)> {
    let (mut recorded, mut duplicates, mut unmatched) = (0, 0, 0);
    for e in events {
        let (new, matched) = record_one(app, tenant, e, webhook_id, meta).await?;
        if new {
            recorded += 1;
        } else {
            duplicates += 1;
        }
        if !matched {
            unmatched += 1;
            tracing::info!(
                provider = provider.as_str(),
                event = e.provider_event_id.as_str(),
                "a signal names no known message"
            );
        }
    }
    Ok((recorded, duplicates, unmatched))
}

/// The signals of a bounce message. A VERP return path is our own envelope: it names the
/// message more surely than the headers a remote server chose to quote back.
fn dsn_events(dsn: &inbound::Dsn) -> Vec<InboundEvent> {
    let mut events = inbound::dsn::to_events(dsn);
    if let Some(verp) = &dsn.verp_message_id {
        for e in &mut events {
            e.message.postledger_id = Some(verp.clone());
        }
    }
    events
}

/// A bounce message (RFC 3464) piped in from a bounce mailbox.
pub async fn bounce(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    raw: &[u8],
) -> Result<WebhookOutcome> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    let meta = crate::service::metadata(ctx);
    let webhook_id = Uuid::now_v7();
    let now = Utc::now();
    let dsn = match inbound::parse_dsn(raw) {
        Ok(d) => d,
        Err(e) => {
            let entry = WebhookReceived {
                webhook_id,
                provider: "dsn".into(),
                signature: "not_checked".into(),
                outcome: "rejected".into(),
                error: Some(e.to_string()),
                recorded: 0,
                duplicates: 0,
                unmatched: 0,
                payload: String::new(),
                replay_of: None,
                received_at: now,
            };
            append_webhook_log(app, tenant, entry, meta).await?;
            return Err(ApiError::new(400, e.code(), e.to_string()));
        }
    };
    let events = dsn_events(&dsn);
    let outcome = process(app, tenant, Provider::Dsn, &events, webhook_id, &meta).await?;
    let payload = if raw.len() <= MAX_WEBHOOK_PAYLOAD {
        String::from_utf8_lossy(raw).into_owned()
    } else {
        String::new()
    };
    append_webhook_log(
        app,
        tenant,
        WebhookReceived {
            webhook_id,
            provider: "dsn".into(),
            signature: "not_checked".into(),
            outcome: "accepted".into(),
            error: None,
            recorded: outcome.0,
            duplicates: outcome.1,
            unmatched: outcome.2,
            payload,
            replay_of: None,
            received_at: now,
        },
        meta,
    )
    .await?;
    Ok(WebhookOutcome {
        webhook_id,
        recorded: outcome.0,
        duplicates: outcome.1,
        unmatched: outcome.2,
        signature: "not_checked".into(),
    })
}

// ---------------------------------------------------------------------------------------
// The webhook log

/// The webhook-log entries with stream versions in `from..before` (`None`: to the end).
async fn webhook_log(
    app: &App,
    tenant: Uuid,
    from: u64,
    before: Option<u64>,
) -> Result<Vec<(u64, WebhookReceived)>> {
    let log = app.log.clone();
    let events = blocking(move || {
        let max = before.map_or(usize::MAX, |b| {
            usize::try_from(b.saturating_sub(from)).unwrap_or(usize::MAX)
        });
        Ok(log.read_stream(tenant, &webhook_log_stream(tenant), from, max)?)
    })
    .await?;
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if let SignalEvent::WebhookReceived(w) =
            SignalEvent::decode(&e.event_type, e.schema_version, &e.payload)?
        {
            out.push((e.version, *w));
        }
    }
    Ok(out)
}

/// A page of the webhook log, newest first; `before` is a cursor from a previous page.
pub async fn list_log(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    before: Option<u64>,
    limit: usize,
) -> Result<(Vec<(u64, WebhookReceived)>, Option<u64>)> {
    let tenant = tenant_of(app, ctx, requested, false)?;
    // Every event of the stream is an entry, so a page is a range of stream versions: read
    // only that range, not the whole log.
    let head = app
        .log
        .stream_version(tenant, &webhook_log_stream(tenant))?;
    let upper = before.map_or(head + 1, |b| b.min(head + 1));
    let from = upper.saturating_sub(limit as u64).max(1);
    let mut page = webhook_log(app, tenant, from, Some(upper)).await?;
    page.reverse();
    let next = (from > 1 && !page.is_empty()).then_some(from);
    Ok((page, next))
}

fn webhook_log_stream(tenant: Uuid) -> StreamId {
    StreamId::new(WEBHOOK_LOG_STREAM, tenant.to_string())
}

pub fn log_json(version: u64, w: &WebhookReceived) -> Value {
    json!({
        "cursor": version,
        "webhook_id": w.webhook_id,
        "provider": w.provider,
        "signature": w.signature,
        "outcome": w.outcome,
        "error": w.error,
        "recorded": w.recorded,
        "duplicates": w.duplicates,
        "unmatched": w.unmatched,
        "payload_bytes": w.payload.len(),
        "replay_of": w.replay_of,
        "received_at": w.received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// Re-runs the normaliser on a stored payload (operator only). Signals already recorded
/// stay single; anything the first run missed is recorded now.
pub async fn replay(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    webhook_id: Uuid,
) -> Result<WebhookOutcome> {
    ctx.principal.require_operator()?;
    let tenant = tenant_of(app, ctx, requested, false)?;
    let entry = webhook_log(app, tenant, 1, None)
        .await?
        .into_iter()
        .map(|(_, w)| w)
        .find(|w| w.webhook_id == webhook_id)
        .ok_or_else(|| ApiError::new(404, "WEBHOOK_NOT_FOUND", "no such webhook-log entry"))?;
    if entry.payload.is_empty() {
        return Err(ApiError::new(
            409,
            "NOTHING_TO_REPLAY",
            "this entry keeps no payload (it was refused or too large)",
        ));
    }
    let provider = Provider::parse(&entry.provider)
        .ok_or_else(|| ApiError::internal("the stored provider is unknown"))?;
    let events = match provider {
        Provider::Dsn => inbound::parse_dsn(entry.payload.as_bytes()).map(|d| dsn_events(&d)),
        p => match inbound::events::normalise(p, entry.payload.as_bytes()) {
            Err(InboundError::UnsupportedEvent { .. })
            | Err(InboundError::SubscriptionConfirmation { .. }) => Ok(Vec::new()),
            other => other,
        },
    }
    .map_err(|e| ApiError::new(422, e.code(), e.to_string()))?;
    let meta = crate::service::metadata(ctx);
    let new_id = Uuid::now_v7();
    let outcome = process(app, tenant, provider, &events, new_id, &meta).await?;
    append_webhook_log(
        app,
        tenant,
        WebhookReceived {
            webhook_id: new_id,
            provider: entry.provider.clone(),
            signature: "not_checked".into(),
            outcome: "accepted".into(),
            error: None,
            recorded: outcome.0,
            duplicates: outcome.1,
            unmatched: outcome.2,
            payload: entry.payload.clone(),
            replay_of: Some(webhook_id),
            received_at: Utc::now(),
        },
        meta,
    )
    .await?;
    Ok(WebhookOutcome {
        webhook_id: new_id,
        recorded: outcome.0,
        duplicates: outcome.1,
        unmatched: outcome.2,
        signature: "not_checked".into(),
    })
}

// ---------------------------------------------------------------------------------------
// One-click unsubscribe

/// What an unsubscribe link stands for, once its MAC checks out.
pub struct Unsubscribe {
    pub tenant: Uuid,
    pub message: Uuid,
    pub address: String,
}

pub fn unsubscribe_key(app: &App) -> [u8; 32] {
    app.master_key
        .derive(workers::seal::UNSUBSCRIBE_KEY_CONTEXT)
}

pub fn check_token(app: &App, token: &str) -> Result<Unsubscribe> {
    let bad = || {
        ApiError::new(
            400,
            "INVALID_UNSUBSCRIBE_LINK",
            "this unsubscribe link is not valid",
        )
    };
    let claim =
        inbound::unsubscribe::verify_token(&unsubscribe_key(app), token).map_err(|_| bad())?;
    let tenant = Uuid::parse_str(&claim.tenant).map_err(|_| bad())?;
    let message = Uuid::parse_str(&claim.message).map_err(|_| bad())?;
    if app.tenants.get(tenant)?.is_none() {
        return Err(bad());
    }
    Ok(Unsubscribe {
        tenant,
        message,
        address: claim.address,
    })
}

/// Unsubscribes from marketing mail at once; idempotent.
pub async fn unsubscribe(app: &App, u: &Unsubscribe) -> Result<()> {
    let Some(address) = inbound::address::normalise(&u.address, false) else {
        return Err(ApiError::new(
            400,
            "INVALID_UNSUBSCRIBE_LINK",
            "this unsubscribe link is not valid",
        ));
    };
    let entry = Suppression {
        address,
        scope: Scope::Tenant,
        reason: Reason::Unsubscribe,
        applies_to: AppliesTo::Marketing,
        source: Source::UnsubscribeLink,
        created_by: "recipient".into(),
        created_at: Utc::now(),
        expires_at: None,
        note: None,
        message_id: Some(u.message),
    };
    crate::suppressions::suppress_as(app, u.tenant, entry, system_meta("unsubscribe-link")).await?;
    Ok(())
}

/// Whether the link's address is already unsubscribed (for the confirmation page).
pub fn is_unsubscribed(app: &App, u: &Unsubscribe, now: DateTime<Utc>) -> Result<bool> {
    Ok(
        existing_entry(app, u.tenant, &u.address.to_ascii_lowercase())?
            .is_some_and(|s| s.blocks(Category::Marketing, now)),
    )
}

fn existing_entry(app: &App, tenant: Uuid, address: &str) -> Result<Option<Suppression>> {
    Ok(app.suppressions.get(tenant, address)?)
}
