//! The REST surface under `/api/v1`: messages, sender profiles, relays and the delivery
//! callback. Every route authenticates with `Authorization: Bearer <api key>`; the operator
//! token acts for the tenant named in the `Postledger-Tenant` header. Every error is
//! `{"error":{"code","message","details"}}`.
use actix_web::{web, HttpRequest, HttpResponse};
use projections::messages::MessageFilter;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::App;
use crate::error::{ApiError, HttpError};
use crate::sending::{self, RelayInput, SendRequest, SenderInput};
use crate::server::{correlation_id, principal, read_body};
use crate::service::Ctx;

pub(crate) type Reply = Result<HttpResponse, HttpError>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .route("/messages/send/", web::post().to(send))
            .route("/messages/batch/", web::post().to(batch))
            .route("/messages/", web::get().to(list_messages))
            .route("/messages/{id}/", web::get().to(get_message))
            .route("/messages/{id}/events/", web::get().to(message_events))
            .route("/messages/{id}/cancel/", web::post().to(cancel_message))
            .route("/senders/", web::get().to(list_senders))
            .route("/senders/", web::post().to(create_sender))
            .route("/senders/{id}/", web::get().to(get_sender))
            .route("/senders/{id}/", web::patch().to(update_sender))
            .route("/senders/{id}/", web::delete().to(delete_sender))
            .route("/relays/", web::get().to(list_relays))
            .route("/relays/", web::post().to(create_relay))
            .route("/relays/{id}/", web::get().to(get_relay))
            .route("/relays/{id}/", web::patch().to(update_relay))
            .route("/relays/{id}/", web::delete().to(delete_relay))
            .route("/callback/", web::get().to(get_callback))
            .route("/callback/", web::put().to(set_callback))
            .route("/callback/", web::delete().to(clear_callback))
            .configure(crate::rest_templates::routes)
            .configure(crate::rest_suppressions::routes)
            .configure(crate::rest_signals::routes),
    );
}

/// Who calls, for which tenant.
pub(crate) fn caller(app: &App, req: &HttpRequest) -> Result<(Ctx, Option<Uuid>), ApiError> {
    let principal = principal(app, req)?;
    let requested = match req.headers().get("postledger-tenant") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| Uuid::parse_str(s.trim()).ok())
                .ok_or_else(|| {
                    ApiError::new(400, "BAD_REQUEST", "Postledger-Tenant must be a tenant id")
                })?,
        ),
    };
    Ok((
        Ctx {
            principal,
            correlation_id: correlation_id(req),
        },
        requested,
    ))
}

fn path_id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::new(404, what, "no such id"))
}

pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    app: &App,
    payload: web::Payload,
) -> Result<T, ApiError> {
    let body = read_body(payload, app.max_body_bytes).await?;
    sending::parse_json(&body)
}

/// A small optional JSON body of at most `limit` bytes: nothing at all means `T::default()`.
pub(crate) async fn optional_body<T: serde::de::DeserializeOwned + Default>(
    payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    let body = read_body(payload, limit).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        sending::parse_json(&body)
    }
}

/// The `Idempotency-Key` header, if any.
pub(crate) fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    req.headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))
        })
        .transpose()
}

/// 202 for a new message, 200 for a replay of an earlier request.
pub(crate) fn receipt_reply(receipt: &sending::SendReceipt) -> HttpResponse {
    let status = if receipt.duplicate {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::ACCEPTED
    };
    HttpResponse::build(status).json(receipt)
}

async fn send(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    // Authenticate before reading a possibly large body.
    let (ctx, tenant) = caller(&app, &req)?;
    let key = idempotency_key(&req)?;
    let body: SendRequest = json_body(&app, payload).await?;
    let receipt = sending::send(&app, &ctx, tenant, body, key).await?;
    Ok(receipt_reply(&receipt))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    messages: Vec<Value>,
}

async fn batch(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let body: BatchBody = json_body(&app, payload).await?;
    let results = sending::send_batch(&app, &ctx, tenant, body.messages).await?;
    let accepted = results.iter().filter(|r| r.status < 300).count();
    Ok(HttpResponse::Ok().json(json!({
        "accepted": accepted,
        "rejected": results.len() - accepted,
        "results": results,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    tag: Option<String>,
    to: Option<String>,
    from: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn time_param(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_micros())
            .map_err(|_| ApiError::invalid(name, "must be an RFC 3339 time"))
    })
    .transpose()
}

async fn list_messages(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let q = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(422, "VALIDATION_FAILED", e.to_string()))?
        .into_inner();
    let filter = MessageFilter {
        status: q.status,
        tag: q.tag,
        to: q.to,
        from: q.from,
        since_us: time_param("since", q.since.as_deref())?,
        until_us: time_param("until", q.until.as_deref())?,
    };
    let after = q
        .cursor
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| ApiError::invalid("cursor", "is not a cursor from a previous page"))
        })
        .transpose()?;
    let page = sending::list_messages(&app, &ctx, tenant, &filter, after, q.limit.unwrap_or(50))?;
    Ok(HttpResponse::Ok().json(json!({
        "data": page.items.iter().map(sending::message_json).collect::<Vec<_>>(),
        "next_cursor": page.next.map(|n| n.to_string()),
    })))
}

async fn get_message(app: web::Data<App>, req: HttpRequest, id: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "MESSAGE_NOT_FOUND")?;
    let v = sending::get_message(&app, &ctx, tenant, id).await?;
    Ok(HttpResponse::Ok().json(sending::message_json(&v)))
}

async fn message_events(app: web::Data<App>, req: HttpRequest, id: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "MESSAGE_NOT_FOUND")?;
    let events = sending::message_events(&app, &ctx, tenant, id).await?;
    Ok(HttpResponse::Ok().json(json!({ "message_id": id, "events": events })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

async fn cancel_message(
    app: web::Data<App>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "MESSAGE_NOT_FOUND")?;
    let body: CancelBody = optional_body(payload, 64 * 1024).await?;
    let v = sending::cancel_message(&app, &ctx, tenant, id, body.reason).await?;
    Ok(HttpResponse::Ok().json(sending::message_json(&v)))
}

async fn list_senders(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let list = sending::senders(&app, &ctx, tenant)?;
    Ok(HttpResponse::Ok().json(json!({
        "data": list.iter().map(sending::sender_json).collect::<Vec<_>>()
    })))
}

async fn create_sender(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let input: SenderInput = json_body(&app, payload).await?;
    let v = sending::create_sender(&app, &ctx, tenant, input).await?;
    Ok(HttpResponse::Created().json(sending::sender_json(&v)))
}

async fn get_sender(app: web::Data<App>, req: HttpRequest, id: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "SENDER_NOT_FOUND")?;
    let v = sending::sender(&app, &ctx, tenant, id)?;
    Ok(HttpResponse::Ok().json(sending::sender_json(&v)))
}

async fn update_sender(
    app: web::Data<App>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "SENDER_NOT_FOUND")?;
    let input: SenderInput = json_body(&app, payload).await?;
    let v = sending::update_sender(&app, &ctx, tenant, id, input).await?;
    Ok(HttpResponse::Ok().json(sending::sender_json(&v)))
}

async fn delete_sender(app: web::Data<App>, req: HttpRequest, id: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "SENDER_NOT_FOUND")?;
    sending::delete_sender(&app, &ctx, tenant, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn list_relays(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let list = sending::relays(&app, &ctx, tenant)?;
    Ok(HttpResponse::Ok().json(json!({
        "data": list.iter().map(sending::relay_json).collect::<Vec<_>>()
    })))
}

async fn create_relay(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let input: RelayInput = json_body(&app, payload).await?;
    let v = sending::create_relay(&app, &ctx, tenant, input).await?;
    Ok(HttpResponse::Created().json(sending::relay_json(&v)))
}

async fn get_relay(app: web::Data<App>, req: HttpRequest, id: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "RELAY_NOT_FOUND")?;
    let v = sending::relay(&app, &ctx, tenant, id)?;
    Ok(HttpResponse::Ok().json(sending::relay_json(&v)))
}

async fn update_relay(
    app: web::Data<App>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "RELAY_NOT_FOUND")?;
    let input: RelayInput = json_body(&app, payload).await?;
    let v = sending::update_relay(&app, &ctx, tenant, id, input).await?;
    Ok(HttpResponse::Ok().json(sending::relay_json(&v)))
}

async fn delete_relay(app: web::Data<App>, req: HttpRequest, id: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = path_id(&id, "RELAY_NOT_FOUND")?;
    sending::delete_relay(&app, &ctx, tenant, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn get_callback(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    match sending::callback(&app, &ctx, tenant)? {
        Some(v) => Ok(HttpResponse::Ok().json(sending::callback_json(&v))),
        None => Err(ApiError::from(domain::DomainError::CallbackNotSet).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallbackBody {
    url: String,
}

async fn set_callback(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let body: CallbackBody = json_body(&app, payload).await?;
    let (v, secret) = sending::set_callback(&app, &ctx, tenant, &body.url).await?;
    let mut out = sending::callback_json(&v);
    out["secret"] = json!(secret);
    Ok(HttpResponse::Ok().json(out))
}

async fn clear_callback(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    sending::clear_callback(&app, &ctx, tenant).await?;
    Ok(HttpResponse::NoContent().finish())
}
