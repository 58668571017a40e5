//! The suppressions' GraphQL: `suppressions` (a connection in address order) and
//! `suppression(address)`; `addSuppression`, `addSuppressions` (bulk, answered per entry)
//! and `removeSuppression`. Thin resolvers over [`crate::suppressions`]; `scope: GLOBAL`
//! needs the operator token.
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, InputObject, Json, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use domain::suppression as dom;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::graphql::{opt_id, parts, GqlResult};
use crate::suppressions::{self as sup, SuppressionInput as RestInput};

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::suppression::Reason")]
pub enum SuppressionReason {
    HardBounce,
    Complaint,
    Unsubscribe,
    Manual,
    Invalid,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::suppression::Scope")]
pub enum SuppressionScope {
    /// The tenant's own entries.
    Tenant,
    /// Entries an operator set for every tenant.
    Global,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::suppression::AppliesTo")]
pub enum SuppressionAppliesTo {
    All,
    /// Stops marketing mail only.
    Marketing,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::suppression::Source")]
pub enum SuppressionSource {
    Api,
    Webhook,
    UnsubscribeLink,
    Dsn,
    Import,
}

/// An address that must not be mailed.
#[derive(SimpleObject)]
pub struct Suppression {
    /// Lower-cased, as given.
    pub address: String,
    pub scope: SuppressionScope,
    pub reason: SuppressionReason,
    pub applies_to: SuppressionAppliesTo,
    pub source: SuppressionSource,
    /// `api_key:<id>`, `operator:<name>` or `system:<component>`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    /// The message whose bounce, complaint or unsubscribe caused it.
    pub message_id: Option<ID>,
    /// Not expired.
    pub active: bool,
}

impl From<dom::Suppression> for Suppression {
    fn from(s: dom::Suppression) -> Self {
        Suppression {
            active: s.active_at(Utc::now()),
            address: s.address,
            scope: s.scope.into(),
            reason: s.reason.into(),
            applies_to: s.applies_to.into(),
            source: s.source.into(),
            created_by: s.created_by,
            created_at: s.created_at,
            expires_at: s.expires_at,
            note: s.note,
            message_id: s.message_id.map(|m| ID(m.to_string())),
        }
    }
}

/// Whether, and by what, an address is suppressed for the caller.
#[derive(SimpleObject)]
pub struct SuppressionLookup {
    /// The address asked about, lower-cased.
    pub address: String,
    /// The caller's own entry in force that matches (with plus addressing, perhaps stored
    /// under another spelling).
    pub entry: Option<Suppression>,
    /// A global entry in force matches; its details stay with the operator.
    pub globally_suppressed: bool,
    pub blocks_transactional: bool,
    pub blocks_marketing: bool,
    /// Whether the tenant matches `a+x@…` and Gmail spellings.
    pub plus_addressing: bool,
}

#[derive(InputObject, Default)]
pub struct SuppressionFilter {
    pub reason: Option<SuppressionReason>,
    pub source: Option<SuppressionSource>,
    pub applies_to: Option<SuppressionAppliesTo>,
    /// Entries whose address starts with this.
    pub address_prefix: Option<String>,
}

#[derive(InputObject)]
pub struct SuppressionInput {
    pub address: String,
    /// Default `MANUAL`.
    pub reason: Option<SuppressionReason>,
    /// Default `ALL`.
    pub applies_to: Option<SuppressionAppliesTo>,
    pub expires_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    /// Default `TENANT`; `GLOBAL` needs the operator token.
    pub scope: Option<SuppressionScope>,
}

impl From<&SuppressionInput> for RestInput {
    fn from(i: &SuppressionInput) -> Self {
        RestInput {
            address: Some(i.address.clone()),
            reason: i.reason.map(|r| dom::Reason::from(r).as_str().to_string()),
            applies_to: i
                .applies_to
                .map(|a| dom::AppliesTo::from(a).as_str().to_string()),
            expires_at: i.expires_at.map(|t| t.to_rfc3339()),
            note: i.note.clone(),
            scope: i.scope.map(|s| dom::Scope::from(s).as_str().to_string()),
        }
    }
}

fn rest_json(i: &SuppressionInput) -> Value {
    let r = RestInput::from(i);
    json!({
        "address": r.address,
        "reason": r.reason,
        "applies_to": r.applies_to,
        "expires_at": r.expires_at,
        "note": r.note,
        "scope": r.scope,
    })
}

#[derive(SimpleObject)]
pub struct AddSuppressionResult {
    /// False when the same entry was already in force: nothing was recorded.
    pub recorded: bool,
    pub suppression: Suppression,
}

#[derive(SimpleObject)]
pub struct BulkSuppressionItem {
    pub index: i32,
    /// `recorded`, `unchanged` or `rejected`.
    pub outcome: String,
    pub address: Option<String>,
    /// The error of a rejected entry (`code`, `message`, `details`).
    pub error: Option<Json<Value>>,
}

#[derive(SimpleObject)]
pub struct BulkSuppressionResult {
    pub recorded: i32,
    pub unchanged: i32,
    pub rejected: i32,
    pub results: Vec<BulkSuppressionItem>,
}

#[derive(SimpleObject)]
pub struct SuppressionConnectionFields {
    /// Entries the partition holds in all (filters aside, expired ones included).
    pub total_count: u64,
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn scope_of(s: Option<SuppressionScope>) -> dom::Scope {
    s.map_or(dom::Scope::Tenant, dom::Scope::from)
}

#[derive(Default)]
pub struct SuppressionQuery;

#[Object]
impl SuppressionQuery {
    /// Entries in address order; `after` is the cursor of the last edge of the previous
    /// page. A page may hold fewer than `first` entries while `hasNextPage` is true (a
    /// filtered listing reads a bounded number of entries per call).
    async fn suppressions(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        scope: Option<SuppressionScope>,
        filter: Option<SuppressionFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<Connection<String, Suppression, SuppressionConnectionFields>> {
        let (app, c) = parts(ctx)?;
        let first = match first {
            None => 50,
            Some(n) if (1..=1000).contains(&n) => usize::try_from(n).unwrap_or(50),
            Some(_) => return Err(ApiError::invalid("first", "must be between 1 and 1000").into()),
        };
        let f = filter.unwrap_or_default();
        let filter = projections::suppressions::SuppressionFilter {
            reason: f.reason.map(Into::into),
            source: f.source.map(Into::into),
            applies_to: f.applies_to.map(Into::into),
            address_prefix: f.address_prefix,
        };
        let (page, total) = sup::list(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            scope_of(scope),
            filter,
            after.as_deref(),
            first,
        )?;
        let mut conn = Connection::with_additional_fields(
            after.is_some(),
            page.next_after.is_some(),
            SuppressionConnectionFields { total_count: total },
        );
        conn.edges.extend(
            page.entries
                .into_iter()
                .map(|s| Edge::new(s.address.clone(), Suppression::from(s))),
        );
        Ok(conn)
    }

    /// Whether `address` is suppressed for the caller; null when nothing in force matches.
    async fn suppression(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        address: String,
        scope: Option<SuppressionScope>,
    ) -> GqlResult<Option<SuppressionLookup>> {
        let (app, c) = parts(ctx)?;
        match sup::lookup(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            scope_of(scope),
            &address,
        ) {
            Ok(v) => Ok(Some(SuppressionLookup {
                address: v.address,
                entry: v.entry.map(Suppression::from),
                globally_suppressed: v.globally_suppressed,
                blocks_transactional: v.blocks_transactional,
                blocks_marketing: v.blocks_marketing,
                plus_addressing: v.plus_addressing,
            })),
            Err(e) if e.code == "SUPPRESSION_NOT_FOUND" => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[derive(Default)]
pub struct SuppressionMutation;

#[Object]
impl SuppressionMutation {
    /// Suppresses an address; adding an entry already in force records nothing.
    async fn add_suppression(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        input: SuppressionInput,
    ) -> GqlResult<AddSuppressionResult> {
        let (app, c) = parts(ctx)?;
        let (s, recorded) = sup::add(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            RestInput::from(&input),
        )
        .await?;
        Ok(AddSuppressionResult {
            recorded,
            suppression: s.into(),
        })
    }

    /// Suppresses up to 1000 addresses; each is answered on its own.
    async fn add_suppressions(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        inputs: Vec<SuppressionInput>,
    ) -> GqlResult<BulkSuppressionResult> {
        let (app, c) = parts(ctx)?;
        let items = inputs.iter().map(rest_json).collect();
        let results = sup::add_many(app, c, opt_id("tenantId", tenant_id)?, items).await?;
        let n = |o: &str| count(results.iter().filter(|r| r.outcome == o).count());
        Ok(BulkSuppressionResult {
            recorded: n("recorded"),
            unchanged: n("unchanged"),
            rejected: n("rejected"),
            results: results
                .into_iter()
                .map(|r| BulkSuppressionItem {
                    index: count(r.index),
                    outcome: r.outcome.to_string(),
                    address: r.address,
                    error: r.error.map(Json),
                })
                .collect(),
        })
    }

    /// Removes the entry stored under `address`; the note is required and the log keeps
    /// the entry as it was. Answers the removed entry.
    async fn remove_suppression(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        address: String,
        note: String,
        scope: Option<SuppressionScope>,
    ) -> GqlResult<Suppression> {
        let (app, c) = parts(ctx)?;
        let removed = sup::remove(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            scope_of(scope),
            &address,
            &note,
        )
        .await?;
        Ok(removed.into())
    }
}
