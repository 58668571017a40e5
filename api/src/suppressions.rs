//! Suppressions: the addresses a tenant (or, set by an operator, every tenant) must not
//! email. Add one, add many, list, look one address up, remove with a note, CSV import and
//! export; and, for the rest of the API, [`suppress`] (record an entry: webhooks,
//! unsubscribe) and [`blocking_entry`] (the check a send makes).
//!
//! Entries are decided against the suppression read model (see `domain::suppression`) and
//! appended with `ExpectedVersion::Any` on `suppressions/<tenant>`; global entries go to the
//! partition of [`GLOBAL_TENANT`] (stream id `global`) and need the operator token. A
//! tenant reads and removes only its own entries, and learns of global ones only that they
//! exist for an address it asks about.
//!
//! A CSV import is parsed and encoded on a blocking thread while the async side appends
//! what is ready, in order, as chunks of entries on `suppression-import/<import id>`
//! (each event under the log's payload limit); it answers once every chunk is durable.
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use domain::message::Category;
use domain::signals::{apply_settings, SignalSettings, SIGNAL_SETTINGS_STREAM};
use domain::suppression::{
    self, AppliesTo, Reason, Scope, Source, Suppression, SuppressionEvent, GLOBAL_TENANT,
    SUPPRESSION_IMPORT_STREAM, SUPPRESSION_STREAM,
};
use domain::{DomainError, DomainEvent, FieldError};
use eventlog::{ExpectedVersion, Metadata, NewEvent, StreamId, MAX_PAYLOAD};
use projections::suppressions::{SuppressionFilter, SuppressionPage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::App;
use crate::error::{ApiError, Result};
use crate::sending::{field, tenant_of, validation};
use crate::service::{blocking, metadata, new_events, Ctx, READ_YOUR_WRITES};

/// Most entries one bulk add carries.
pub const MAX_BULK: usize = 1000;
/// Row errors an import answers with (the count of skipped rows is always complete).
pub const MAX_IMPORT_ERRORS: usize = 100;
/// An import logs its progress every this many rows.
const PROGRESS_EVERY: u64 = 100_000;
/// Import chunks handed to the log in one append.
const CHUNKS_PER_APPEND: usize = 32;
/// The CSV columns, in the order export writes them.
pub const CSV_COLUMNS: [&str; 5] = ["address", "reason", "applies_to", "expires_at", "note"];

fn not_found() -> ApiError {
    ApiError::from(DomainError::SuppressionNotFound)
}

/// The log stream of a partition's entries.
fn stream(partition: Uuid) -> StreamId {
    if partition == GLOBAL_TENANT {
        StreamId::new(SUPPRESSION_STREAM, "global")
    } else {
        StreamId::new(SUPPRESSION_STREAM, partition.to_string())
    }
}

fn import_stream(import_id: Uuid) -> StreamId {
    StreamId::new(SUPPRESSION_IMPORT_STREAM, import_id.to_string())
}

/// `tenant` (default) or `global`.
pub fn parse_scope(raw: Option<&str>) -> Result<Scope> {
    match raw.map(str::trim) {
        None | Some("") => Ok(Scope::Tenant),
        Some(s) => Scope::parse(s)
            .ok_or_else(|| ApiError::invalid("scope", "must be `tenant` or `global`")),
    }
}

/// The partition a call acts on: the caller's tenant, or the global one (operator only).
pub fn partition_of(app: &App, ctx: &Ctx, requested: Option<Uuid>, scope: Scope) -> Result<Uuid> {
    match scope {
        Scope::Global => {
            ctx.principal
                .require_operator()
                .map_err(|_| ApiError::forbidden("global suppressions need the operator token"))?;
            Ok(GLOBAL_TENANT)
        }
        Scope::Tenant => tenant_of(app, ctx, requested, false),
    }
}

// ---------------------------------------------------------------------------------------
// The tenant's plus-addressing setting

/// Per tenant: the signal-settings stream version it was folded at, and its
/// `plus_addressing`. Tenant ids are v7 UUIDs, unique across data folders.
fn settings_cache() -> &'static Mutex<HashMap<Uuid, (u64, bool)>> {
    static CACHE: OnceLock<Mutex<HashMap<Uuid, (u64, bool)>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether the tenant matches addresses with plus/Gmail normalisation: the signal
/// settings folded from the log, cached per stream version.
pub fn plus_addressing(app: &App, tenant: Uuid) -> Result<bool> {
    if tenant == GLOBAL_TENANT {
        return Ok(false);
    }
    let stream = StreamId::new(SIGNAL_SETTINGS_STREAM, tenant.to_string());
    let version = app.log.stream_version(tenant, &stream)?;
    if version == 0 {
        return Ok(false);
    }
    if let Ok(cache) = settings_cache().lock() {
        if let Some(&(v, plus)) = cache.get(&tenant) {
            if v == version {
                return Ok(plus);
            }
        }
    }
    let (settings, folded): (SignalSettings, u64) =
        crate::service::fold(&app.log, tenant, &stream, apply_settings)?;
    if let Ok(mut cache) = settings_cache().lock() {
        if cache.len() >= 100_000 {
            cache.clear();
        }
        cache.insert(tenant, (folded, settings.plus_addressing));
    }
    Ok(settings.plus_addressing)
}

// ---------------------------------------------------------------------------------------
// For the rest of the API

/// The entry that stops mail of `category` to `address` for `tenant` now (the tenant's
/// own, else a global one), honouring the tenant's plus-addressing setting; `None` when
/// the address may be mailed. Synchronous and fast (a few sled reads).
pub fn blocking_entry(
    app: &App,
    tenant: Uuid,
    address: &str,
    category: Category,
) -> Result<Option<Suppression>> {
    let plus = plus_addressing(app, tenant)?;
    Ok(app
        .suppressions
        .lookup(tenant, address, plus, category, Utc::now())?)
}

/// Records `entry` for `tenant` (in the global partition when `entry.scope` is global;
/// the caller checks who may do that). The address is lower-cased here. Idempotent:
/// answers `false` when the same entry is already in force and nothing was recorded.
/// Waits for the read model, so a look-up right after sees it.
pub async fn suppress(app: &App, ctx: &Ctx, tenant: Uuid, entry: Suppression) -> Result<bool> {
    suppress_as(app, tenant, entry, metadata(ctx)).await
}

/// [`suppress`] on behalf of whoever `meta` names (a webhook, an unsubscribe link).
pub(crate) async fn suppress_as(
    app: &App,
    tenant: Uuid,
    mut entry: Suppression,
    meta: Metadata,
) -> Result<bool> {
    let partition = if entry.scope == Scope::Global {
        GLOBAL_TENANT
    } else {
        tenant
    };
    if let Some(a) = inbound::address::normalise(&entry.address, false) {
        entry.address = a;
    }
    let existing = app.suppressions.get(partition, &entry.address)?;
    let events = suppression::add(existing.as_ref(), entry, Utc::now())?;
    if events.is_empty() {
        return Ok(false);
    }
    append(app, partition, new_events(&events), meta).await?;
    Ok(true)
}

/// Appends on the partition's stream and waits for the read models.
async fn append(app: &App, partition: Uuid, events: Vec<NewEvent>, meta: Metadata) -> Result<()> {
    let outcome = app
        .log
        .append(
            partition,
            stream(partition),
            ExpectedVersion::Any,
            events,
            meta,
        )
        .await?;
    if !app
        .projections
        .wait_for(outcome.last_position, READ_YOUR_WRITES)
        .await
    {
        tracing::warn!(
            position = outcome.last_position,
            "read models are lagging behind a suppression write"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Inputs

/// One entry as callers write it (REST body, bulk item).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionInput {
    pub address: Option<String>,
    /// `hard_bounce`, `complaint`, `unsubscribe`, `manual` (default) or `invalid`.
    pub reason: Option<String>,
    /// `all` (default) or `marketing`.
    pub applies_to: Option<String>,
    /// RFC 3339; must be in the future.
    pub expires_at: Option<String>,
    pub note: Option<String>,
    /// `tenant` (default) or `global` (operator only).
    pub scope: Option<String>,
}

fn one_of<T>(
    value: Option<&str>,
    name: &str,
    default: T,
    parse: fn(&str) -> Option<T>,
    allowed: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> T {
    match value.map(str::trim) {
        None | Some("") => default,
        Some(v) => match parse(&v.to_ascii_lowercase()) {
            Some(t) => t,
            None => {
                errors.push(field(
                    format!("{at}{name}"),
                    format!("must be one of {allowed}"),
                ));
                default
            }
        },
    }
}

const REASONS: &str = "hard_bounce, complaint, unsubscribe, manual, invalid";
const APPLIES: &str = "all, marketing";

fn parse_time(
    v: Option<&str>,
    name: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<DateTime<Utc>> {
    match v.map(str::trim) {
        None | Some("") => None,
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errors.push(field(format!("{at}{name}"), "must be an RFC 3339 time"));
                None
            }
        },
    }
}

/// Who records entries, and when.
#[derive(Clone, Debug)]
struct Recorder {
    created_by: String,
    source: Source,
    now: DateTime<Utc>,
}

impl Recorder {
    fn new(ctx: &Ctx, source: Source) -> Recorder {
        Recorder {
            created_by: ctx.principal.actor().to_string(),
            source,
            now: Utc::now(),
        }
    }
}

/// The entry an input describes, or its field problems (names prefixed with `at`).
fn entry_of(
    input: &SuppressionInput,
    scope: Scope,
    rec: &Recorder,
    at: &str,
) -> std::result::Result<Suppression, Vec<FieldError>> {
    let mut errors = Vec::new();
    let address = match input.address.as_deref().map(str::trim) {
        None | Some("") => {
            errors.push(field(format!("{at}address"), "is required"));
            String::new()
        }
        Some(a) => match inbound::address::normalise(a, false) {
            Some(a) => a,
            None => {
                errors.push(field(
                    format!("{at}address"),
                    "is not a valid email address",
                ));
                String::new()
            }
        },
    };
    let reason = one_of(
        input.reason.as_deref(),
        "reason",
        Reason::Manual,
        Reason::parse,
        REASONS,
        at,
        &mut errors,
    );
    let applies_to = one_of(
        input.applies_to.as_deref(),
        "applies_to",
        AppliesTo::All,
        AppliesTo::parse,
        APPLIES,
        at,
        &mut errors,
    );
    let expires_at = parse_time(input.expires_at.as_deref(), "expires_at", at, &mut errors);
    let note = input
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let entry = Suppression {
        address,
        scope,
        reason,
        applies_to,
        source: rec.source,
        created_by: rec.created_by.clone(),
        created_at: rec.now,
        expires_at,
        note,
        message_id: None,
    };
    if errors.is_empty() {
        errors = suppression::check(&entry, at, rec.now);
    }
    if errors.is_empty() {
        Ok(entry)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------
// Views

/// An entry as the API shows it.
pub fn entry_json(s: &Suppression) -> Value {
    json!({
        "address": s.address,
        "scope": s.scope.as_str(),
        "reason": s.reason.as_str(),
        "applies_to": s.applies_to.as_str(),
        "source": s.source.as_str(),
        "created_by": s.created_by,
        "created_at": s.created_at,
        "expires_at": s.expires_at,
        "note": s.note,
        "message_id": s.message_id,
        "active": s.active_at(Utc::now()),
    })
}

/// What a look-up of one address tells its caller.
#[derive(Clone, Debug)]
pub struct LookupView {
    /// The address asked about, lower-cased.
    pub address: String,
    /// The caller's own entry that matches and is in force (with plus addressing, perhaps
    /// stored under another spelling); for an operator asking about global scope, the
    /// global entry.
    pub entry: Option<Suppression>,
    /// Whether a global entry in force matches. Its details stay with the operator.
    pub globally_suppressed: bool,
    pub blocks_transactional: bool,
    pub blocks_marketing: bool,
    pub plus_addressing: bool,
}

impl LookupView {
    pub fn to_json(&self) -> Value {
        json!({
            "address": self.address,
            "suppressed": true,
            "entry": self.entry.as_ref().map(entry_json),
            "globally_suppressed": self.globally_suppressed,
            "blocks_transactional": self.blocks_transactional,
            "blocks_marketing": self.blocks_marketing,
            "plus_addressing": self.plus_addressing,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Reads

/// One page of the partition's entries, and how many it holds in all.
pub fn list(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    scope: Scope,
    mut filter: SuppressionFilter,
    after: Option<&str>,
    first: usize,
) -> Result<(SuppressionPage, u64)> {
    let partition = partition_of(app, ctx, requested, scope)?;
    filter.address_prefix = filter
        .address_prefix
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty());
    let after = after.map(|a| a.trim().to_lowercase());
    let page = app
        .suppressions
        .list(partition, &filter, after.as_deref(), first.clamp(1, 1000))?;
    let total = app.suppressions.count(partition)?;
    Ok((page, total))
}

/// Whether (and by what) `address` is suppressed for the caller. Not suppressed (nothing
/// in force matches) is `SUPPRESSION_NOT_FOUND`, exactly as for another tenant's entry.
pub fn lookup(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    scope: Scope,
    address: &str,
) -> Result<LookupView> {
    let partition = partition_of(app, ctx, requested, scope)?;
    let Some(exact) = inbound::address::normalise(address, false) else {
        return Err(not_found());
    };
    let now = Utc::now();
    let plus = plus_addressing(app, partition)?;
    let in_force = |p: Uuid| -> Result<Vec<Suppression>> {
        Ok(app
            .suppressions
            .matches(p, &exact, plus)?
            .into_iter()
            .filter(|s| s.active_at(now))
            .collect())
    };
    let own = in_force(partition)?;
    let global = if partition == GLOBAL_TENANT {
        Vec::new()
    } else {
        in_force(GLOBAL_TENANT)?
    };
    if own.is_empty() && global.is_empty() {
        return Err(not_found());
    }
    let blocks = |c: Category| own.iter().chain(global.iter()).any(|s| s.blocks(c, now));
    Ok(LookupView {
        blocks_transactional: blocks(Category::Transactional),
        blocks_marketing: blocks(Category::Marketing),
        globally_suppressed: !global.is_empty() || partition == GLOBAL_TENANT,
        entry: own.into_iter().next(),
        address: exact,
        plus_addressing: plus,
    })
}

// ---------------------------------------------------------------------------------------
// Writes

/// Adds one entry; answers the entry in force and whether anything was recorded.
pub async fn add(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    input: SuppressionInput,
) -> Result<(Suppression, bool)> {
    let scope = parse_scope(input.scope.as_deref())?;
    let partition = partition_of(app, ctx, requested, scope)?;
    let entry =
        entry_of(&input, scope, &Recorder::new(ctx, Source::Api), "").map_err(validation)?;
    let address = entry.address.clone();
    let recorded = suppress(app, ctx, partition, entry.clone()).await?;
    let current = app.suppressions.get(partition, &address)?.unwrap_or(entry);
    Ok((current, recorded))
}

/// What became of one entry of a bulk add.
#[derive(Clone, Debug, Serialize)]
pub struct BulkItem {
    pub index: usize,
    /// 201 recorded, 200 already in force, 4xx rejected.
    pub status: u16,
    /// `recorded`, `unchanged` or `rejected`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

fn rejected(index: usize, address: Option<String>, e: &ApiError) -> BulkItem {
    BulkItem {
        index,
        status: e.status,
        outcome: "rejected",
        address,
        error: Some(e.body()["error"].clone()),
    }
}

/// Adds up to [`MAX_BULK`] entries, each answered on its own; the valid ones are recorded
/// in one append per partition.
pub async fn add_many(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    items: Vec<Value>,
) -> Result<Vec<BulkItem>> {
    if items.is_empty() || items.len() > MAX_BULK {
        return Err(validation(vec![field(
            "entries",
            format!("must hold 1..={MAX_BULK} entries"),
        )]));
    }
    let rec = Recorder::new(ctx, Source::Api);
    let mut tenant: Option<Result<Uuid>> = None;
    let mut decided: HashMap<(Uuid, String), Suppression> = HashMap::new();
    let mut events: HashMap<Uuid, Vec<SuppressionEvent>> = HashMap::new();
    let mut results = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let at = format!("entries[{index}].");
        let input = match serde_json::from_value::<SuppressionInput>(item) {
            Ok(i) => i,
            Err(e) => {
                let err = validation(vec![field(format!("entries[{index}]"), e.to_string())]);
                results.push(rejected(index, None, &err));
                continue;
            }
        };
        let scope = match parse_scope(input.scope.as_deref()) {
            Ok(s) => s,
            Err(_) => {
                let err = validation(vec![field(
                    format!("{at}scope"),
                    "must be `tenant` or `global`",
                )]);
                results.push(rejected(index, input.address.clone(), &err));
                continue;
            }
        };
        let partition = match scope {
            Scope::Global => partition_of(app, ctx, requested, scope),
            Scope::Tenant => tenant
                .get_or_insert_with(|| tenant_of(app, ctx, requested, false))
                .clone(),
        };
        let partition = match partition {
            Ok(p) => p,
            // No tenant to act on at all: the whole call fails as a single add would.
            Err(e) if e.status == 404 || e.code == "VALIDATION_FAILED" => return Err(e),
            Err(e) => {
                results.push(rejected(index, input.address.clone(), &e));
                continue;
            }
        };
        let entry = match entry_of(&input, scope, &rec, &at) {
            Ok(e) => e,
            Err(fields) => {
                results.push(rejected(index, input.address.clone(), &validation(fields)));
                continue;
            }
        };
        let key = (partition, entry.address.clone());
        let existing = match decided.get(&key) {
            Some(s) => Some(s.clone()),
            None => app.suppressions.get(partition, &entry.address)?,
        };
        let address = entry.address.clone();
        match suppression::add(existing.as_ref(), entry.clone(), rec.now) {
            Ok(ev) if ev.is_empty() => results.push(BulkItem {
                index,
                status: 200,
                outcome: "unchanged",
                address: Some(address),
                error: None,
            }),
            Ok(ev) => {
                decided.insert(key, entry);
                events.entry(partition).or_default().extend(ev);
                results.push(BulkItem {
                    index,
                    status: 201,
                    outcome: "recorded",
                    address: Some(address),
                    error: None,
                });
            }
            Err(e) => results.push(rejected(index, Some(address), &ApiError::from(e))),
        }
    }
    for (partition, evs) in events {
        append(app, partition, new_events(&evs), metadata(ctx)).await?;
    }
    Ok(results)
}

/// Removes the entry stored under exactly `address` (case aside); the note is required and
/// the event keeps the entry as it was. Answers the removed entry.
pub async fn remove(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    scope: Scope,
    address: &str,
    note: &str,
) -> Result<Suppression> {
    let partition = partition_of(app, ctx, requested, scope)?;
    let existing = app.suppressions.get(partition, address)?;
    let events = suppression::remove(
        existing.clone(),
        ctx.principal.actor().to_string(),
        note.to_string(),
        Utc::now(),
    )?;
    append(app, partition, new_events(&events), metadata(ctx)).await?;
    existing.ok_or_else(not_found)
}

/// The history of `address` from the log: its single adds and removals (with the note and
/// the removed entry), oldest first. Imported entries are on their import's stream and
/// are not listed here. Reads the partition's whole suppression stream, so it is meant for
/// one address at a time, not for listing.
pub async fn history(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    scope: Scope,
    address: &str,
) -> Result<Vec<crate::sending::TimelineEntry>> {
    let partition = partition_of(app, ctx, requested, scope)?;
    let Some(exact) = inbound::address::normalise(address, false) else {
        return Err(not_found());
    };
    let log = app.log.clone();
    let events = blocking(move || {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = log.read_stream(partition, &stream(partition), from, 4096)?;
            let Some(last) = page.last().map(|e| e.version) else {
                break;
            };
            for e in page {
                let ev = SuppressionEvent::decode(&e.event_type, e.schema_version, &e.payload);
                let about = match &ev {
                    Ok(SuppressionEvent::Added(s)) => s.address == exact,
                    Ok(SuppressionEvent::Removed(r)) => r.address == exact,
                    _ => false,
                };
                if about {
                    out.push(e);
                }
            }
            from = last + 1;
        }
        Ok(out)
    })
    .await?;
    if events.is_empty() {
        return Err(not_found());
    }
    Ok(events
        .iter()
        .map(|e| {
            let mut t = crate::sending::timeline_entry(e);
            if let Ok(ev) = SuppressionEvent::decode(&e.event_type, e.schema_version, &e.payload) {
                t.summary = ev.summary();
            }
            t
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// CSV import

/// One row an import skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// 1-based line of the CSV (the header is line 1).
    pub line: u64,
    pub message: String,
}

/// What an import did; answered once every chunk is durable.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub import_id: Uuid,
    /// Data rows read.
    pub rows: u64,
    pub imported: u64,
    pub skipped: u64,
    /// The first [`MAX_IMPORT_ERRORS`] skipped rows.
    pub errors: Vec<RowError>,
    /// Events written on `suppression-import/<import id>`.
    pub chunks: u32,
    /// Log position of the last chunk (0 when nothing was imported).
    #[serde(skip)]
    pub last_position: u64,
}

/// Builds chunk payloads: exactly the JSON of `SuppressionsImported` (field order and
/// compact form of serde_json), each at most [`MAX_PAYLOAD`] bytes.
struct ChunkWriter {
    import_id: Uuid,
    chunk: u32,
    buf: Vec<u8>,
    entries: usize,
    entry: Vec<u8>,
}

impl ChunkWriter {
    fn new(import_id: Uuid) -> ChunkWriter {
        let mut w = ChunkWriter {
            import_id,
            chunk: 0,
            buf: Vec::with_capacity(MAX_PAYLOAD),
            entries: 0,
            entry: Vec::with_capacity(512),
        };
        w.start();
        w
    }

    fn start(&mut self) {
        self.chunk += 1;
        self.entries = 0;
        self.buf.clear();
        self.buf.extend_from_slice(
            format!(
                "{{\"import_id\":\"{}\",\"chunk\":{},\"entries\":[",
                self.import_id, self.chunk
            )
            .as_bytes(),
        );
    }

    /// Adds an entry; returns the previous chunk's payload when this one did not fit.
    fn push(&mut self, entry: &Suppression) -> Result<Option<Vec<u8>>> {
        self.entry.clear();
        serde_json::to_writer(&mut self.entry, entry)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut done = None;
        if self.entries > 0 && self.buf.len() + 1 + self.entry.len() + 2 > MAX_PAYLOAD {
            done = self.finish();
        }
        if self.entries > 0 {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(&self.entry);
        self.entries += 1;
        Ok(done)
    }

    /// The current chunk's payload (if it holds anything); starts the next.
    fn finish(&mut self) -> Option<Vec<u8>> {
        if self.entries == 0 {
            return None;
        }
        self.buf.extend_from_slice(b"]}");
        let payload = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_PAYLOAD));
        self.start();
        Some(payload)
    }
}

fn chunk_event(payload: Vec<u8>) -> NewEvent {
    NewEvent::new(suppression::SUPPRESSIONS_IMPORTED, 1, payload)
}

/// Column positions of a CSV header.
struct Columns {
    address: usize,
    reason: Option<usize>,
    applies_to: Option<usize>,
    expires_at: Option<usize>,
    note: Option<usize>,
}

fn columns(header: &csv::ByteRecord) -> Result<Columns> {
    let mut found: [Option<usize>; 5] = [None; 5];
    for (i, raw) in header.iter().enumerate() {
        let name = String::from_utf8_lossy(raw).trim().to_ascii_lowercase();
        if name.is_empty() && header.len() == 1 {
            break;
        }
        let Some(c) = CSV_COLUMNS.iter().position(|c| *c == name) else {
            return Err(validation(vec![field(
                "header",
                format!(
                    "unknown column `{}`; the columns are {}",
                    name.chars().take(64).collect::<String>(),
                    CSV_COLUMNS.join(", ")
                ),
            )]));
        };
        if found[c].replace(i).is_some() {
            return Err(validation(vec![field(
                "header",
                format!("column `{name}` appears twice"),
            )]));
        }
    }
    let Some(address) = found[0] else {
        return Err(validation(vec![field(
            "header",
            "the first line must name the columns, among them `address`",
        )]));
    };
    Ok(Columns {
        address,
        reason: found[1],
        applies_to: found[2],
        expires_at: found[3],
        note: found[4],
    })
}

/// The text of one cell (absent cells are empty).
fn cell<'a>(
    rec: &'a csv::ByteRecord,
    i: Option<usize>,
    name: &str,
) -> std::result::Result<Option<&'a str>, String> {
    match i.and_then(|i| rec.get(i)) {
        None => Ok(None),
        Some(b) => std::str::from_utf8(b)
            .map(Some)
            .map_err(|_| format!("{name}: is not UTF-8")),
    }
}

fn row_input(rec: &csv::ByteRecord, c: &Columns) -> std::result::Result<SuppressionInput, String> {
    Ok(SuppressionInput {
        address: cell(rec, Some(c.address), "address")?.map(str::to_string),
        reason: cell(rec, c.reason, "reason")?.map(str::to_string),
        applies_to: cell(rec, c.applies_to, "applies_to")?.map(str::to_string),
        expires_at: cell(rec, c.expires_at, "expires_at")?.map(str::to_string),
        note: cell(rec, c.note, "note")?.map(str::to_string),
        scope: None,
    })
}

fn describe(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

struct Counts {
    rows: u64,
    imported: u64,
    skipped: u64,
    errors: Vec<RowError>,
    chunks: u32,
}

/// Parses and encodes on a blocking thread, handing batches of chunk events to `tx` in
/// order. Stops early when the receiver is gone (an append failed).
fn produce(
    csv_bytes: &[u8],
    import_id: Uuid,
    scope: Scope,
    rec: &Recorder,
    tx: &tokio::sync::mpsc::Sender<Vec<NewEvent>>,
) -> Result<Counts> {
    let body = csv_bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(csv_bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let mut record = csv::ByteRecord::new();
    let header_read = reader
        .read_byte_record(&mut record)
        .map_err(|e| validation(vec![field("header", e.to_string())]))?;
    if !header_read {
        return Err(validation(vec![field(
            "body",
            "is empty; the first line must name the columns, among them `address`",
        )]));
    }
    let cols = columns(&record)?;
    let mut counts = Counts {
        rows: 0,
        imported: 0,
        skipped: 0,
        errors: Vec::new(),
        chunks: 0,
    };
    let mut writer = ChunkWriter::new(import_id);
    let mut batch = Vec::with_capacity(CHUNKS_PER_APPEND);
    let skip = |counts: &mut Counts, line: u64, message: String| {
        counts.skipped += 1;
        if counts.errors.len() < MAX_IMPORT_ERRORS {
            counts.errors.push(RowError { line, message });
        }
    };
    let send = |batch: &mut Vec<NewEvent>| -> bool {
        let full = std::mem::replace(batch, Vec::with_capacity(CHUNKS_PER_APPEND));
        tx.blocking_send(full).is_ok()
    };
    loop {
        let read = reader.read_byte_record(&mut record);
        let line = record.position().map_or(0, csv::Position::line);
        match read {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                counts.rows += 1;
                let line = e.position().map_or(line, csv::Position::line);
                skip(&mut counts, line, format!("not valid CSV: {e}"));
                continue;
            }
        }
        counts.rows += 1;
        if counts.rows.is_multiple_of(PROGRESS_EVERY) {
            tracing::info!(
                %import_id,
                rows = counts.rows,
                imported = counts.imported,
                skipped = counts.skipped,
                "suppression import in progress"
            );
        }
        let entry = match row_input(&record, &cols) {
            Ok(input) => entry_of(&input, scope, rec, "").map_err(|f| describe(&f)),
            Err(m) => Err(m),
        };
        match entry {
            Ok(entry) => {
                counts.imported += 1;
                if let Some(payload) = writer.push(&entry)? {
                    counts.chunks += 1;
                    batch.push(chunk_event(payload));
                    if batch.len() >= CHUNKS_PER_APPEND && !send(&mut batch) {
                        return Ok(counts);
                    }
                }
            }
            Err(message) => skip(&mut counts, line, message),
        }
    }
    if let Some(payload) = writer.finish() {
        counts.chunks += 1;
        batch.push(chunk_event(payload));
    }
    if !batch.is_empty() {
        send(&mut batch);
    }
    Ok(counts)
}

/// Imports a CSV (header `address,reason,applies_to,expires_at,note`, only `address`
/// required, in any order). Invalid rows are skipped and reported by line; valid ones are
/// written as chunks on `suppression-import/<import id>`. Answers once every chunk is
/// durable; does not wait for the read model (see [`ImportReport::last_position`]).
pub async fn import_csv(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    scope: Scope,
    csv_bytes: Vec<u8>,
) -> Result<ImportReport> {
    let partition = partition_of(app, ctx, requested, scope)?;
    let import_id = Uuid::now_v7();
    let rec = Recorder::new(ctx, Source::Import);
    let meta = metadata(ctx);
    let started = Instant::now();
    tracing::info!(%import_id, bytes = csv_bytes.len(), scope = scope.as_str(), "suppression import started");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewEvent>>(2);
    let producer =
        tokio::task::spawn_blocking(move || produce(&csv_bytes, import_id, scope, &rec, &tx));
    let mut last_position = 0;
    let mut failed = None;
    while let Some(batch) = rx.recv().await {
        match app
            .log
            .append(
                partition,
                import_stream(import_id),
                ExpectedVersion::Any,
                batch,
                meta.clone(),
            )
            .await
        {
            Ok(o) => last_position = o.last_position,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(rx);
    let counts = producer
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    if let Some(e) = failed {
        tracing::warn!(%import_id, error = %e, "suppression import stopped");
        return Err(e.into());
    }
    tracing::info!(
        %import_id,
        rows = counts.rows,
        imported = counts.imported,
        skipped = counts.skipped,
        chunks = counts.chunks,
        seconds = started.elapsed().as_secs_f64(),
        "suppression import durable"
    );
    Ok(ImportReport {
        import_id,
        rows: counts.rows,
        imported: counts.imported,
        skipped: counts.skipped,
        errors: counts.errors,
        chunks: counts.chunks,
        last_position,
    })
}

/// An import's progress as the log has it: the chunks durable so far.
#[derive(Clone, Debug, Serialize)]
pub struct ImportProgress {
    pub import_id: Uuid,
    pub chunks: u32,
    pub entries: u64,
    pub started_at: DateTime<Utc>,
    pub last_chunk_at: DateTime<Utc>,
    pub created_by: String,
}

pub async fn import_progress(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    scope: Scope,
    import_id: Uuid,
) -> Result<ImportProgress> {
    #[derive(Deserialize)]
    struct ChunkHead {
        entries: Vec<serde::de::IgnoredAny>,
    }
    let partition = partition_of(app, ctx, requested, scope)?;
    let log = app.log.clone();
    let not_found = || ApiError::new(404, "SUPPRESSION_IMPORT_NOT_FOUND", "no such import");
    blocking(move || {
        let mut progress: Option<ImportProgress> = None;
        let mut from = 1;
        loop {
            let page = log.read_stream(partition, &import_stream(import_id), from, 256)?;
            let Some(last) = page.last().map(|e| e.version) else {
                break;
            };
            for e in &page {
                let n = serde_json::from_slice::<ChunkHead>(&e.payload)
                    .map(|c| c.entries.len() as u64)
                    .unwrap_or(0);
                let p = progress.get_or_insert_with(|| ImportProgress {
                    import_id,
                    chunks: 0,
                    entries: 0,
                    started_at: e.recorded_at(),
                    last_chunk_at: e.recorded_at(),
                    created_by: e.actor.to_string(),
                });
                p.chunks += 1;
                p.entries += n;
                p.last_chunk_at = e.recorded_at();
            }
            from = last + 1;
        }
        progress.ok_or_else(not_found)
    })
    .await
}

// ---------------------------------------------------------------------------------------
// CSV export

/// One page of the export as CSV rows (with the header row first when `header`).
pub fn csv_rows(entries: &[Suppression], header: bool) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::with_capacity(entries.len() * 64 + 64));
    let internal = |e: csv::Error| ApiError::internal(e.to_string());
    if header {
        w.write_record(CSV_COLUMNS).map_err(internal)?;
    }
    for s in entries {
        let expires = s.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default();
        w.write_record([
            s.address.as_str(),
            s.reason.as_str(),
            s.applies_to.as_str(),
            expires.as_str(),
            s.note.as_deref().unwrap_or(""),
        ])
        .map_err(internal)?;
    }
    w.into_inner()
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Checks who may export `scope` and answers the partition the pages come from.
pub fn export_partition(
    app: &App,
    ctx: &Ctx,
    requested: Option<Uuid>,
    scope: Scope,
) -> Result<Uuid> {
    partition_of(app, ctx, requested, scope)
}

/// The next page of an export after `after`: its CSV bytes and where the next starts.
pub fn export_page(
    app: &App,
    partition: Uuid,
    filter: &SuppressionFilter,
    after: Option<&str>,
    header: bool,
) -> Result<(Vec<u8>, Option<String>)> {
    let page = app.suppressions.list(partition, filter, after, 1000)?;
    let bytes = csv_rows(&page.entries, header)?;
    Ok((bytes, page.next_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::suppression::SuppressionsImported;

    fn entry(address: &str, note: Option<&str>) -> Suppression {
        Suppression {
            address: address.into(),
            scope: Scope::Tenant,
            reason: Reason::Manual,
            applies_to: AppliesTo::All,
            source: Source::Import,
            created_by: "operator:operator".into(),
            created_at: Utc::now(),
            expires_at: None,
            note: note.map(str::to_string),
            message_id: None,
        }
    }

    #[test]
    fn chunks_are_the_domain_encoding_and_stay_under_the_payload_limit() {
        let id = Uuid::now_v7();
        let mut w = ChunkWriter::new(id);
        let long_note = "n\u{1}\"".repeat(330);
        let entries: Vec<_> = (0..3000)
            .map(|i| {
                entry(
                    &format!("user{i}@example.com"),
                    (i % 7 == 0).then_some(long_note.as_str()),
                )
            })
            .collect();
        let mut payloads = Vec::new();
        for e in &entries {
            if let Some(p) = w.push(e).unwrap() {
                payloads.push(p);
            }
        }
        payloads.extend(w.finish());
        assert!(payloads.len() > 5);
        let mut seen = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
            let ev = SuppressionEvent::decode(suppression::SUPPRESSIONS_IMPORTED, 1, p).unwrap();
            let SuppressionEvent::Imported(ref imp) = ev else {
                panic!("not an import chunk")
            };
            assert_eq!(imp.import_id, id);
            assert_eq!(imp.chunk as usize, i + 1);
            // Byte for byte what the domain itself encodes.
            assert_eq!(&ev.encode(), p);
            seen.extend(imp.entries.iter().cloned());
        }
        assert_eq!(seen, entries);
        let empty = SuppressionsImported {
            import_id: id,
            chunk: 1,
            entries: vec![],
        };
        assert!(!serde_json::to_vec(&empty).unwrap().is_empty());
    }

    #[test]
    fn csv_header_rules() {
        let h = |s: &str| csv::ByteRecord::from(s.split(',').collect::<Vec<_>>());
        assert!(columns(&h("address")).is_ok());
        let c = columns(&h("note,Address,expires_at")).unwrap();
        assert_eq!(
            (c.address, c.note, c.expires_at, c.reason),
            (1, Some(0), Some(2), None)
        );
        assert!(columns(&h("email")).is_err());
        assert!(columns(&h("reason")).is_err());
        assert!(columns(&h("address,address")).is_err());
    }
}
