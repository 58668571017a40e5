//! The suppressions' REST routes under `/api/v1`:
//!
//! | route | what |
//! |---|---|
//! | `GET /suppressions/` | list (filters `reason`, `source`, `applies_to`, `address_prefix`; `limit`, `cursor`) |
//! | `POST /suppressions/` | add one (201 recorded, 200 already in force) |
//! | `POST /suppressions/bulk/` | add up to 1000 (`{"entries": [...]}`), answered per entry |
//! | `POST /suppressions/import/` | CSV import (`text/csv` body) |
//! | `GET /suppressions/import/{id}/` | an import's progress, from the log |
//! | `GET /suppressions/export/` | CSV export (same columns as the import, streamed) |
//! | `GET /suppressions/{address}/` | whether and by what the address is suppressed (404 when not) |
//! | `GET /suppressions/{address}/events/` | the address's adds and removals, from the log |
//! | `DELETE /suppressions/{address}/` | remove (`{"note": "..."}` required) |
//!
//! Every route takes `?scope=global` for the global entries, which needs the operator token
//! (403 for a tenant key).
use actix_web::{web, HttpRequest, HttpResponse};
use domain::suppression::{AppliesTo, Reason, Scope, Source};
use projections::suppressions::SuppressionFilter;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::App;
use crate::error::{ApiError, HttpError};
use crate::rest::{caller, json_body, Reply};
use crate::server::read_body;
use crate::service::{blocking, READ_YOUR_WRITES};
use crate::suppressions::{self as sup, entry_json, SuppressionInput};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/suppressions/", web::get().to(list))
        .route("/suppressions/", web::post().to(add))
        .route("/suppressions/bulk/", web::post().to(bulk))
        .route("/suppressions/import/", web::post().to(import))
        .route("/suppressions/import/{id}/", web::get().to(import_progress))
        .route("/suppressions/export/", web::get().to(export))
        .route("/suppressions/{address}/", web::get().to(lookup))
        .route("/suppressions/{address}/", web::delete().to(remove))
        .route("/suppressions/{address}/events/", web::get().to(history));
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::new(422, "VALIDATION_FAILED", e.to_string()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    scope: Option<String>,
}

fn scope_of(req: &HttpRequest) -> Result<Scope, ApiError> {
    let q: ScopeQuery = query(req)?;
    sup::parse_scope(q.scope.as_deref())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    scope: Option<String>,
    reason: Option<String>,
    source: Option<String>,
    applies_to: Option<String>,
    address_prefix: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn parse_opt<T>(
    v: Option<&str>,
    name: &str,
    parse: fn(&str) -> Option<T>,
    allowed: &str,
) -> Result<Option<T>, ApiError> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => parse(s)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("must be one of {allowed}"))),
    }
}

fn filter_of(q: &ListQuery) -> Result<SuppressionFilter, ApiError> {
    Ok(SuppressionFilter {
        reason: parse_opt(
            q.reason.as_deref(),
            "reason",
            Reason::parse,
            "hard_bounce, complaint, unsubscribe, manual, invalid",
        )?,
        source: parse_opt(
            q.source.as_deref(),
            "source",
            Source::parse,
            "api, webhook, unsubscribe_link, dsn, import",
        )?,
        applies_to: parse_opt(
            q.applies_to.as_deref(),
            "applies_to",
            AppliesTo::parse,
            "all, marketing",
        )?,
        address_prefix: q.address_prefix.clone(),
    })
}

async fn list(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let q: ListQuery = query(&req)?;
    let scope = sup::parse_scope(q.scope.as_deref())?;
    let limit = match q.limit {
        None => 50,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 1000").into()),
    };
    let filter = filter_of(&q)?;
    let (page, total) = sup::list(
        &app,
        &ctx,
        tenant,
        scope,
        filter,
        q.cursor.as_deref(),
        limit,
    )?;
    Ok(HttpResponse::Ok().json(json!({
        "data": page.entries.iter().map(entry_json).collect::<Vec<_>>(),
        "next_cursor": page.next_after,
        "total": total,
    })))
}

async fn add(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let input: SuppressionInput = json_body(&app, payload).await?;
    let (entry, recorded) = sup::add(&app, &ctx, tenant, input).await?;
    let mut body = entry_json(&entry);
    body["recorded"] = Value::Bool(recorded);
    Ok(if recorded {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    entries: Vec<Value>,
}

async fn bulk(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let body: BulkBody = json_body(&app, payload).await?;
    let results = sup::add_many(&app, &ctx, tenant, body.entries).await?;
    let count = |o: &str| results.iter().filter(|r| r.outcome == o).count();
    Ok(HttpResponse::Ok().json(json!({
        "recorded": count("recorded"),
        "unchanged": count("unchanged"),
        "rejected": count("rejected"),
        "results": results,
    })))
}

async fn import(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let scope = scope_of(&req)?;
    // Refuse a caller who may not import here before reading a large body.
    sup::partition_of(&app, &ctx, tenant, scope)?;
    let body = read_body(payload, app.max_body_bytes).await?;
    let report = sup::import_csv(&app, &ctx, tenant, scope, body.to_vec()).await?;
    let caught_up = report.last_position == 0
        || app
            .projections
            .wait_for(report.last_position, READ_YOUR_WRITES)
            .await;
    let mut answer =
        serde_json::to_value(&report).map_err(|e| ApiError::internal(e.to_string()))?;
    answer["read_model_caught_up"] = Value::Bool(caught_up);
    Ok(HttpResponse::Ok().json(answer))
}

async fn import_progress(app: web::Data<App>, req: HttpRequest, id: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let scope = scope_of(&req)?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::new(404, "SUPPRESSION_IMPORT_NOT_FOUND", "no such import"))?;
    let p = sup::import_progress(&app, &ctx, tenant, scope, id).await?;
    Ok(HttpResponse::Ok().json(p))
}

async fn export(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let q: ListQuery = query(&req)?;
    if q.limit.is_some() || q.cursor.is_some() {
        return Err(
            ApiError::invalid("limit", "the export has no pages; drop limit and cursor").into(),
        );
    }
    let scope = sup::parse_scope(q.scope.as_deref())?;
    let mut filter = filter_of(&q)?;
    filter.address_prefix = filter
        .address_prefix
        .map(|p| p.trim().to_lowercase())
        .filter(|p| !p.is_empty());
    let partition = sup::export_partition(&app, &ctx, tenant, scope)?;
    // The first page is read before answering, so an error is still a proper error.
    let first = {
        let (app, filter) = (app.clone(), filter.clone());
        blocking(move || sup::export_page(&app, partition, &filter, None, true)).await?
    };
    struct State {
        app: web::Data<App>,
        filter: SuppressionFilter,
        next: Option<(Vec<u8>, Option<String>)>,
    }
    let state = State {
        app: app.clone(),
        filter,
        next: Some(first),
    };
    let stream = futures_util::stream::unfold(state, move |mut st| async move {
        let (bytes, after) = st.next.take()?;
        if let Some(after) = after {
            let (app, filter) = (st.app.clone(), st.filter.clone());
            let page =
                blocking(move || sup::export_page(&app, partition, &filter, Some(&after), false))
                    .await;
            match page {
                Ok(p) => st.next = Some(p),
                Err(e) => {
                    tracing::warn!(code = e.code, "suppression export stopped: {}", e.message);
                    return Some((Err(HttpError(e)), st));
                }
            }
        }
        Some((Ok(web::Bytes::from(bytes)), st))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "Content-Disposition",
            "attachment; filename=\"suppressions.csv\"",
        ))
        .streaming(stream))
}

async fn lookup(app: web::Data<App>, req: HttpRequest, address: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let scope = scope_of(&req)?;
    let view = sup::lookup(&app, &ctx, tenant, scope, &address)?;
    Ok(HttpResponse::Ok().json(view.to_json()))
}

async fn history(app: web::Data<App>, req: HttpRequest, address: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let scope = scope_of(&req)?;
    let events = sup::history(&app, &ctx, tenant, scope, &address).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "address": address.trim().to_lowercase(), "events": events })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    #[serde(default)]
    note: Option<String>,
}

async fn remove(
    app: web::Data<App>,
    req: HttpRequest,
    address: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let scope = scope_of(&req)?;
    let body = read_body(payload, 64 * 1024).await?;
    let body: RemoveBody = if body.iter().all(u8::is_ascii_whitespace) {
        RemoveBody::default()
    } else {
        crate::sending::parse_json(&body)?
    };
    let removed = sup::remove(
        &app,
        &ctx,
        tenant,
        scope,
        &address,
        body.note.as_deref().unwrap_or(""),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "removed": entry_json(&removed),
        "removed_by": ctx.principal.actor().to_string(),
    })))
}
