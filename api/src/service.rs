//! The operations behind every surface (GraphQL, REST, the CLI working on the folder):
//! authorise, load the aggregate from the log, decide, append, wait for the read models.
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{
    ApiKeyId, ApiKeyRole, DomainEvent, TenantCommand, TenantEvent, TenantId, TenantState,
    TENANT_STREAM,
};
use eventlog::{
    EventLog, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId, VerifyReport,
};
use projections::tenants::{ApiKeyView, TenantView};
use uuid::Uuid;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, Result};
use crate::secrets;

/// How long a write waits for the read models before answering anyway.
pub(crate) const READ_YOUR_WRITES: Duration = Duration::from_secs(10);
/// Retries of a command whose stream changed between load and append.
const CONFLICT_RETRIES: usize = 5;

/// Who asks, and the request they ask within.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub principal: Principal,
    pub correlation_id: Uuid,
}

fn tenant_stream(tenant: Uuid) -> StreamId {
    StreamId::new(TENANT_STREAM, tenant.to_string())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

/// New events for an append: each gets a fresh id, its stable type and current version.
pub(crate) fn new_events<E: DomainEvent>(events: &[E]) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| NewEvent::new(e.event_type(), e.schema_version(), e.encode()))
        .collect()
}

/// The envelope fields of everything `ctx` appends.
pub(crate) fn metadata(ctx: &Ctx) -> Metadata {
    Metadata {
        actor: ctx.principal.actor(),
        correlation_id: ctx.correlation_id,
        causation_id: None,
    }
}

/// Folds `stream` into its state with `apply`; returns the state and the stream version.
pub(crate) fn fold<S: Default, E: DomainEvent>(
    log: &EventLog,
    tenant: Uuid,
    stream: &StreamId,
    apply: fn(&mut S, &E),
) -> Result<(S, u64)> {
    let mut state = S::default();
    let mut version = 0;
    for e in log.read_stream(tenant, stream, 1, usize::MAX)? {
        let ev = E::decode(&e.event_type, e.schema_version, &e.payload)?;
        apply(&mut state, &ev);
        version = e.version;
    }
    Ok((state, version))
}

/// [`fold`] on a blocking thread.
pub(crate) async fn load<S, E>(
    app: &App,
    tenant: Uuid,
    stream: &StreamId,
    apply: fn(&mut S, &E),
) -> Result<(S, u64)>
where
    S: Default + Send + 'static,
    E: DomainEvent + 'static,
{
    let log = app.log.clone();
    let stream = stream.clone();
    blocking(move || fold(&log, tenant, &stream, apply)).await
}

/// The command cycle every write goes through: load the aggregate from its stream, decide
/// against that state, append with the version it was loaded at, and wait for the read
/// models. Retried when another writer got in between; `noun` names the aggregate in the
/// conflict error ("the tenant").
pub(crate) async fn execute_on<S, E>(
    app: &App,
    ctx: &Ctx,
    tenant: Uuid,
    stream: StreamId,
    apply: fn(&mut S, &E),
    noun: &str,
    decide: impl Fn(&S) -> Result<Vec<E>>,
) -> Result<Vec<E>>
where
    S: Default + Send + 'static,
    E: DomainEvent + 'static,
{
    execute_as(app, metadata(ctx), tenant, stream, apply, noun, decide).await
}

/// [`execute_on`] on behalf of whoever `meta` names (a webhook, a worker of the API).
pub(crate) async fn execute_as<S, E>(
    app: &App,
    meta: Metadata,
    tenant: Uuid,
    stream: StreamId,
    apply: fn(&mut S, &E),
    noun: &str,
    decide: impl Fn(&S) -> Result<Vec<E>>,
) -> Result<Vec<E>>
where
    S: Default + Send + 'static,
    E: DomainEvent + 'static,
{
    for _ in 0..CONFLICT_RETRIES {
        let (state, version) = load(app, tenant, &stream, apply).await?;
        let events = decide(&state)?;
        if events.is_empty() {
            // Nothing to record (an idempotent repeat); the log refuses empty appends.
            return Ok(events);
        }
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        match app
            .log
            .append(
                tenant,
                stream.clone(),
                expected,
                new_events(&events),
                meta.clone(),
            )
            .await
        {
            Ok(outcome) => {
                if !app
                    .projections
                    .wait_for(outcome.last_position, READ_YOUR_WRITES)
                    .await
                {
                    tracing::warn!(
                        position = outcome.last_position,
                        "read models are lagging behind a write"
                    );
                }
                return Ok(events);
            }
            Err(eventlog::Error::WrongExpectedVersion { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        409,
        "CONFLICT",
        format!("{noun} changed concurrently; try again"),
    ))
}

/// [`execute_on`] for the tenant aggregate.
async fn execute(
    app: &App,
    ctx: &Ctx,
    tenant: Uuid,
    make_cmd: impl Fn() -> TenantCommand,
) -> Result<Vec<TenantEvent>> {
    execute_on(
        app,
        ctx,
        tenant,
        tenant_stream(tenant),
        domain::apply,
        "the tenant",
        |state: &TenantState| Ok(domain::decide(state, make_cmd())?),
    )
    .await
}

fn tenant_view(app: &App, tenant: Uuid) -> Result<TenantView> {
    app.tenants
        .get(tenant)?
        .ok_or_else(ApiError::tenant_not_found)
}

pub async fn create_tenant(app: &App, ctx: &Ctx, name: &str) -> Result<TenantView> {
    ctx.principal.require_operator()?;
    let tenant = Uuid::now_v7();
    execute(app, ctx, tenant, || TenantCommand::Create {
        tenant_id: TenantId::from_uuid(tenant),
        name: name.to_string(),
    })
    .await?;
    tenant_view(app, tenant)
}

/// The tenant as its caller may see it: a tenant key sees only its own.
pub fn get_tenant(app: &App, ctx: &Ctx, requested: Option<Uuid>) -> Result<TenantView> {
    let tenant = ctx.principal.scope(requested)?;
    tenant_view(app, tenant)
}

pub fn list_tenants(
    app: &App,
    ctx: &Ctx,
    after: Option<Uuid>,
    first: usize,
) -> Result<Vec<TenantView>> {
    ctx.principal.require_operator()?;
    Ok(app.tenants.list(after, first)?)
}

/// Fails as "not found" for a tenant the operator names that does not exist, before any
/// command runs, so that no stream is ever created for it.
fn existing(app: &App, tenant: Uuid) -> Result<()> {
    tenant_view(app, tenant).map(|_| ())
}

pub async fn rename_tenant(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    name: &str,
) -> Result<TenantView> {
    let tenant = ctx.principal.scope(requested)?;
    existing(app, tenant)?;
    execute(app, ctx, tenant, || TenantCommand::Rename {
        name: name.to_string(),
    })
    .await?;
    tenant_view(app, tenant)
}

pub async fn suspend_tenant(
    app: &App,
    ctx: &Ctx,
    tenant: Uuid,
    reason: &str,
) -> Result<TenantView> {
    ctx.principal.require_operator()?;
    existing(app, tenant)?;
    execute(app, ctx, tenant, || TenantCommand::Suspend {
        reason: reason.to_string(),
    })
    .await?;
    tenant_view(app, tenant)
}

pub async fn reactivate_tenant(app: &App, ctx: &Ctx, tenant: Uuid) -> Result<TenantView> {
    ctx.principal.require_operator()?;
    existing(app, tenant)?;
    execute(app, ctx, tenant, || TenantCommand::Reactivate).await?;
    tenant_view(app, tenant)
}

pub fn api_keys(app: &App, ctx: &Ctx, requested: Option<Uuid>) -> Result<Vec<ApiKeyView>> {
    let tenant = ctx.principal.scope(requested)?;
    existing(app, tenant)?;
    Ok(app.tenants.api_keys(tenant)?)
}

/// Issues a key; the secret is returned here and never again.
pub async fn issue_api_key(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    label: &str,
    role: ApiKeyRole,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(ApiKeyView, String)> {
    let tenant = ctx.principal.scope(requested)?;
    if let Principal::Tenant {
        role: ApiKeyRole::Sender,
        ..
    } = ctx.principal
    {
        if role != ApiKeyRole::Sender {
            return Err(ApiError::forbidden(
                "a sender key can only issue sender keys",
            ));
        }
    }
    existing(app, tenant)?;
    let secret = secrets::new_api_key().map_err(|e| ApiError::internal(e.to_string()))?;
    let key_hash = app.secrets.token_hash(&secret);
    let prefix: String = secret.chars().take(11).collect();
    let key = Uuid::now_v7();
    let now = Utc::now();
    execute(app, ctx, tenant, || TenantCommand::IssueApiKey {
        key_id: ApiKeyId::from_uuid(key),
        label: label.to_string(),
        key_hash: key_hash.clone(),
        prefix: prefix.clone(),
        role,
        expires_at,
        now,
    })
    .await?;
    let view = app
        .tenants
        .api_key(tenant, key)?
        .ok_or_else(|| ApiError::internal("issued key is missing from the read model"))?;
    Ok((view, secret))
}

pub async fn revoke_api_key(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    key: Uuid,
) -> Result<ApiKeyView> {
    let tenant = ctx.principal.scope(requested)?;
    existing(app, tenant)?;
    execute(app, ctx, tenant, || TenantCommand::RevokeApiKey {
        key_id: ApiKeyId::from_uuid(key),
    })
    .await?;
    app.tenants
        .api_key(tenant, key)?
        .ok_or_else(|| ApiError::new(404, "API_KEY_NOT_FOUND", "no such API key"))
}

/// A readable line for one event of the audit timeline.
pub fn summary(e: &RecordedEvent) -> String {
    use domain::delivery_report::{DeliveryReportEvent, DELIVERY_REPORT_STREAM};
    use domain::drafting::{DraftingEvent, DRAFTING_SETTINGS_STREAM};
    use domain::mail_settings::{MailSettingsEvent, MAIL_SETTINGS_STREAM};
    use domain::message::{MessageEvent, MESSAGE_STREAM};
    use domain::signals::{
        SignalEvent, MESSAGE_SIGNAL_STREAM, SIGNAL_SETTINGS_STREAM, UNMATCHED_SIGNAL_STREAM,
        WEBHOOK_LOG_STREAM,
    };
    use domain::suppression::{SuppressionEvent, SUPPRESSION_IMPORT_STREAM, SUPPRESSION_STREAM};
    use domain::template::{TemplateEvent, TEMPLATE_RENDER_STREAM, TEMPLATE_STREAM};
    let (t, v, p) = (
        e.event_type.as_str(),
        e.schema_version,
        e.payload.as_slice(),
    );
    let line = match e.stream.kind.as_str() {
        TENANT_STREAM => TenantEvent::decode(t, v, p).map(|ev| ev.summary()),
        MESSAGE_STREAM => MessageEvent::decode(t, v, p).map(|ev| ev.summary()),
        MAIL_SETTINGS_STREAM => MailSettingsEvent::decode(t, v, p).map(|ev| ev.summary()),
        DELIVERY_REPORT_STREAM => DeliveryReportEvent::decode(t, v, p).map(|ev| ev.summary()),
        TEMPLATE_STREAM | TEMPLATE_RENDER_STREAM => {
            TemplateEvent::decode(t, v, p).map(|ev| ev.summary())
        }
        DRAFTING_SETTINGS_STREAM => DraftingEvent::decode(t, v, p).map(|ev| ev.summary()),
        SUPPRESSION_STREAM | SUPPRESSION_IMPORT_STREAM => {
            SuppressionEvent::decode(t, v, p).map(|ev| ev.summary())
        }
        SIGNAL_SETTINGS_STREAM
        | WEBHOOK_LOG_STREAM
        | MESSAGE_SIGNAL_STREAM
        | UNMATCHED_SIGNAL_STREAM => SignalEvent::decode(t, v, p).map(|ev| ev.summary()),
        _ => return e.event_type.clone(),
    };
    line.unwrap_or_else(|_| e.event_type.clone())
}

/// One page of the tenant's audit timeline, read straight from the log.
pub async fn audit_trail(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    after_seq: u64,
    first: usize,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<(Vec<RecordedEvent>, bool)> {
    let tenant = ctx.principal.scope(requested)?;
    existing(app, tenant)?;
    let log = app.log.clone();
    blocking(move || {
        let mut events = log.read_tenant_range(tenant, from, to, after_seq, first + 1)?;
        let more = events.len() > first;
        events.truncate(first);
        Ok((events, more))
    })
    .await
}

/// Walks the chain of the caller's tenant (a tenant key), or of one or all tenants (operator).
pub async fn verify(app: &App, ctx: &Ctx, requested: Option<Uuid>) -> Result<VerifyReport> {
    let only = match ctx.principal {
        Principal::Operator => requested,
        Principal::Tenant { .. } => Some(ctx.principal.scope(requested)?),
    };
    let log = app.log.clone();
    blocking(move || Ok(log.verify(only)?)).await
}
