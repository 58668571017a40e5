//! The GraphQL surface: thin resolvers over [`crate::service`].
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, MergedObject, Object, SimpleObject, ID};
use chrono::{DateTime, TimeZone, Utc};
use eventlog::{RecordedEvent, VerifyReport};
use projections::tenants::{ApiKeyView, TenantView};
use uuid::Uuid;

use crate::app::App;
use crate::error::ApiError;
use crate::service::{self, Ctx};

pub type AppSchema =
    async_graphql::Schema<QueryRoot, MutationRoot, async_graphql::EmptySubscription>;

/// Every query: tenants and audit here, the send pipeline in [`crate::graphql_mail`].
#[derive(MergedObject, Default)]
pub struct QueryRoot(
    Query,
    crate::graphql_mail::MailQuery,
    crate::graphql_templates::TemplateQuery,
    crate::graphql_suppressions::SuppressionQuery,
);

#[derive(MergedObject, Default)]
pub struct MutationRoot(
    Mutation,
    crate::graphql_mail::MailMutation,
    crate::graphql_templates::TemplateMutation,
    crate::graphql_suppressions::SuppressionMutation,
);

/// The schema with its limits; data is attached per request.
pub fn schema(app: Option<App>) -> AppSchema {
    let mut b = async_graphql::Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        async_graphql::EmptySubscription,
    )
    .limit_depth(16)
    .limit_complexity(5_000);
    if let Some(app) = app {
        b = b.data(app);
    }
    b.finish()
}

pub(crate) type GqlResult<T> = async_graphql::Result<T>;

pub(crate) fn parts<'a>(ctx: &'a Context<'_>) -> GqlResult<(&'a App, &'a Ctx)> {
    Ok((ctx.data::<App>()?, ctx.data::<Ctx>()?))
}

pub(crate) fn parse_id(field: &str, id: &ID) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id.as_str()).map_err(|_| ApiError::invalid(field, "not a valid id"))
}

pub(crate) fn opt_id(field: &str, id: Option<ID>) -> Result<Option<Uuid>, ApiError> {
    id.as_ref().map(|i| parse_id(field, i)).transpose()
}

pub(crate) fn time(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn page_size(first: Option<i32>) -> Result<usize, ApiError> {
    match first {
        None => Ok(50),
        Some(n) if (1..=500).contains(&n) => Ok(usize::try_from(n).unwrap_or(50)),
        Some(_) => Err(ApiError::invalid("first", "must be between 1 and 500")),
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum TenantStatus {
    Active,
    Suspended,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum ApiKeyRole {
    /// Sends mail and manages its own tenant's sender keys.
    Sender,
    /// May also approve templates and issue approver keys.
    Approver,
}

impl From<ApiKeyRole> for domain::ApiKeyRole {
    fn from(r: ApiKeyRole) -> Self {
        match r {
            ApiKeyRole::Sender => domain::ApiKeyRole::Sender,
            ApiKeyRole::Approver => domain::ApiKeyRole::Approver,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum ApiKeyStatus {
    Active,
    Revoked,
    Expired,
}

#[derive(SimpleObject)]
pub struct Tenant {
    pub id: ID,
    pub name: String,
    pub status: TenantStatus,
    pub suspended_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<TenantView> for Tenant {
    fn from(v: TenantView) -> Self {
        Tenant {
            id: ID(v.id.to_string()),
            name: v.name,
            status: if v.suspended {
                TenantStatus::Suspended
            } else {
                TenantStatus::Active
            },
            suspended_reason: v.suspended_reason,
            created_at: time(v.created_at_us),
            updated_at: time(v.updated_at_us),
        }
    }
}

/// An API key as listed: never its secret, never its hash.
#[derive(SimpleObject)]
pub struct ApiKey {
    pub id: ID,
    pub label: String,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    pub role: ApiKeyRole,
    pub status: ApiKeyStatus,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyView> for ApiKey {
    fn from(v: ApiKeyView) -> Self {
        let now = Utc::now().timestamp_micros();
        let status = if v.revoked_at_us.is_some() {
            ApiKeyStatus::Revoked
        } else if v.usable_at(now) {
            ApiKeyStatus::Active
        } else {
            ApiKeyStatus::Expired
        };
        ApiKey {
            id: ID(v.id.to_string()),
            label: v.label,
            prefix: v.prefix,
            role: if v.role == "approver" {
                ApiKeyRole::Approver
            } else {
                ApiKeyRole::Sender
            },
            status,
            created_at: time(v.created_at_us),
            expires_at: v.expires_at_us.map(time),
            revoked_at: v.revoked_at_us.map(time),
        }
    }
}

/// A freshly issued key: the only time its secret is ever shown.
#[derive(SimpleObject)]
pub struct IssuedApiKey {
    pub api_key: ApiKey,
    pub secret: String,
}

/// One event of the tenant's audit timeline, read straight from the log.
#[derive(SimpleObject)]
pub struct AuditEntry {
    /// Position in the tenant's hash chain.
    pub sequence: u64,
    pub event_id: ID,
    #[graphql(name = "type")]
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: DateTime<Utc>,
    /// `api_key:<id>`, `operator:<name>` or `system:<component>`.
    pub actor: String,
    pub correlation_id: ID,
    pub causation_id: Option<ID>,
    /// The stream the event belongs to, e.g. `tenant/0191…`.
    pub stream: String,
    pub summary: String,
    /// This event's link in the tenant's blake3 chain, hex.
    pub hash: String,
}

impl From<&RecordedEvent> for AuditEntry {
    fn from(e: &RecordedEvent) -> Self {
        AuditEntry {
            sequence: e.tenant_seq,
            event_id: ID(e.event_id.to_string()),
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            recorded_at: e.recorded_at(),
            actor: e.actor.to_string(),
            correlation_id: ID(e.correlation_id.to_string()),
            causation_id: e.causation_id.map(|c| ID(c.to_string())),
            stream: e.stream.to_string(),
            summary: service::summary(e),
            hash: blake3::Hash::from_bytes(e.hash).to_hex().to_string(),
        }
    }
}

#[derive(SimpleObject)]
pub struct AuditVerification {
    pub ok: bool,
    pub events: u64,
    pub tenants: u64,
    /// Global position of the first break.
    pub broken_at: Option<u64>,
    pub broken_tenant: Option<ID>,
    pub broken_sequence: Option<u64>,
    pub reason: Option<String>,
}

impl From<VerifyReport> for AuditVerification {
    fn from(r: VerifyReport) -> Self {
        match r {
            VerifyReport::Ok { events, tenants } => AuditVerification {
                ok: true,
                events,
                tenants,
                broken_at: None,
                broken_tenant: None,
                broken_sequence: None,
                reason: None,
            },
            VerifyReport::Broken {
                position,
                tenant,
                tenant_seq,
                reason,
            } => AuditVerification {
                ok: false,
                events: 0,
                tenants: 0,
                broken_at: Some(position),
                broken_tenant: tenant.map(|t| ID(t.to_string())),
                broken_sequence: tenant_seq,
                reason: Some(reason),
            },
        }
    }
}

#[derive(SimpleObject)]
pub struct ProjectionState {
    pub name: String,
    pub checkpoint: u64,
    pub head: u64,
    /// Head position minus checkpoint.
    pub lag: u64,
    pub failed: Option<String>,
}

#[derive(SimpleObject)]
pub struct RebuildReport {
    pub name: String,
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

#[derive(Default)]
pub struct Query;

#[Object]
impl Query {
    /// The caller's tenant; an operator names it.
    async fn tenant(&self, ctx: &Context<'_>, id: Option<ID>) -> GqlResult<Tenant> {
        let (app, c) = parts(ctx)?;
        Ok(service::get_tenant(app, c, opt_id("id", id)?)?.into())
    }

    /// Every tenant (operator only).
    async fn tenants(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<ID>,
    ) -> GqlResult<Vec<Tenant>> {
        let (app, c) = parts(ctx)?;
        let list = service::list_tenants(app, c, opt_id("after", after)?, page_size(first)?)?;
        Ok(list.into_iter().map(Tenant::from).collect())
    }

    /// The API keys of the caller's tenant; an operator names it.
    async fn api_keys(&self, ctx: &Context<'_>, tenant_id: Option<ID>) -> GqlResult<Vec<ApiKey>> {
        let (app, c) = parts(ctx)?;
        let keys = service::api_keys(app, c, opt_id("tenantId", tenant_id)?)?;
        Ok(keys.into_iter().map(ApiKey::from).collect())
    }

    /// The tenant's audit timeline, oldest first, read straight from the log. `from` is
    /// inclusive and `to` exclusive; `after` is a cursor from a previous page.
    async fn audit_trail(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        after: Option<String>,
        first: Option<i32>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> GqlResult<Connection<String, AuditEntry>> {
        let (app, c) = parts(ctx)?;
        let after_seq = match after {
            None => 0,
            Some(a) => a
                .parse::<u64>()
                .map_err(|_| ApiError::invalid("after", "not a cursor from this timeline"))?,
        };
        let first = page_size(first)?;
        let (events, more) = service::audit_trail(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            after_seq,
            first,
            from,
            to,
        )
        .await?;
        let mut conn = Connection::new(after_seq > 0, more);
        conn.edges.extend(
            events
                .iter()
                .map(|e| Edge::new(e.tenant_seq.to_string(), AuditEntry::from(e))),
        );
        Ok(conn)
    }

    /// Walks the hash chain: the caller's tenant, or (operator) one or every tenant.
    async fn verify_audit(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
    ) -> GqlResult<AuditVerification> {
        let (app, c) = parts(ctx)?;
        Ok(service::verify(app, c, opt_id("tenantId", tenant_id)?)
            .await?
            .into())
    }

    /// The read models and how far behind the log each is (operator only).
    async fn projections(&self, ctx: &Context<'_>) -> GqlResult<Vec<ProjectionState>> {
        let (app, c) = parts(ctx)?;
        c.principal.require_operator()?;
        Ok(app
            .projections
            .status()
            .into_iter()
            .map(|s| ProjectionState {
                name: s.name,
                checkpoint: s.checkpoint,
                head: s.head,
                lag: s.lag,
                failed: s.failed,
            })
            .collect())
    }
}

#[derive(Default)]
pub struct Mutation;

#[Object]
impl Mutation {
    /// Creates a tenant (operator only).
    async fn create_tenant(&self, ctx: &Context<'_>, name: String) -> GqlResult<Tenant> {
        let (app, c) = parts(ctx)?;
        Ok(service::create_tenant(app, c, &name).await?.into())
    }

    async fn rename_tenant(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        name: String,
    ) -> GqlResult<Tenant> {
        let (app, c) = parts(ctx)?;
        Ok(
            service::rename_tenant(app, c, opt_id("tenantId", tenant_id)?, &name)
                .await?
                .into(),
        )
    }

    /// Suspends a tenant: its keys get 403 until it is reactivated (operator only).
    async fn suspend_tenant(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        reason: Option<String>,
    ) -> GqlResult<Tenant> {
        let (app, c) = parts(ctx)?;
        let t = parse_id("tenantId", &tenant_id)?;
        Ok(
            service::suspend_tenant(app, c, t, reason.as_deref().unwrap_or(""))
                .await?
                .into(),
        )
    }

    async fn reactivate_tenant(&self, ctx: &Context<'_>, tenant_id: ID) -> GqlResult<Tenant> {
        let (app, c) = parts(ctx)?;
        let t = parse_id("tenantId", &tenant_id)?;
        Ok(service::reactivate_tenant(app, c, t).await?.into())
    }

    /// Issues an API key; its secret is in this answer and nowhere else, ever.
    async fn issue_api_key(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        label: String,
        role: Option<ApiKeyRole>,
        expires_at: Option<DateTime<Utc>>,
    ) -> GqlResult<IssuedApiKey> {
        let (app, c) = parts(ctx)?;
        let role = role.unwrap_or(ApiKeyRole::Sender).into();
        let (view, secret) = service::issue_api_key(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            &label,
            role,
            expires_at,
        )
        .await?;
        Ok(IssuedApiKey {
            api_key: view.into(),
            secret,
        })
    }

    /// Revokes a key; it stops working before this answer returns.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        id: ID,
    ) -> GqlResult<ApiKey> {
        let (app, c) = parts(ctx)?;
        let key = parse_id("id", &id)?;
        Ok(
            service::revoke_api_key(app, c, opt_id("tenantId", tenant_id)?, key)
                .await?
                .into(),
        )
    }

    /// Drops a read model (or all) and rebuilds it from the log (operator only).
    async fn rebuild_projections(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
    ) -> GqlResult<Vec<RebuildReport>> {
        let (app, c) = parts(ctx)?;
        c.principal.require_operator()?;
        let reports = app
            .projections
            .rebuild(name.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(reports
            .into_iter()
            .map(|r| RebuildReport {
                name: r.name,
                events: r.events,
                seconds: r.seconds,
                events_per_second: r.events_per_s,
            })
            .collect())
    }
}
