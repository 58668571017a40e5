//! The signals' REST routes under `/api/v1` (signal settings, inbound webhooks, bounce
//! messages, the webhook log) and the public one-click unsubscribe pages.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::app::App;
use crate::error::{ApiError, HttpError};
use crate::rest::{caller, json_body, Reply};
use crate::server::read_body;
use crate::signals::{self, Caller, SettingsInput, SignatureHeaders};

/// Bounce messages and webhook bodies larger than this are refused before parsing.
const MAX_INBOUND_BODY: usize = 1024 * 1024;

/// Under `/api/v1`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/signals/settings/", web::get().to(get_settings))
        .route("/signals/settings/", web::put().to(put_settings))
        .route("/signals/stats/", web::get().to(stats))
        .route("/webhooks/inbound/{provider}", web::post().to(inbound))
        .route("/webhooks/inbound/{provider}/", web::post().to(inbound))
        .route("/webhooks/log/", web::get().to(list_log))
        .route("/webhooks/log/{id}/replay/", web::post().to(replay))
        .route("/bounces/raw", web::post().to(bounce))
        .route("/bounces/raw/", web::post().to(bounce));
}

/// Public pages outside `/api/v1` (no API key): one-click unsubscribe.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/unsubscribe/{token}", web::get().to(unsubscribe_page))
        .route("/unsubscribe/{token}", web::post().to(unsubscribe_now));
}

async fn get_settings(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let s = signals::settings(&app, &ctx, tenant).await?;
    Ok(HttpResponse::Ok().json(signals::settings_json(&s)))
}

async fn put_settings(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let input: SettingsInput = json_body(&app, payload).await?;
    let (s, secret) = signals::set_settings(&app, &ctx, tenant, input).await?;
    let mut out = signals::settings_json(&s);
    if let Some(secret) = secret {
        out["webhook_secret"] = json!(secret);
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn stats(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let c = signals::counts(&app, &ctx, tenant)?;
    Ok(HttpResponse::Ok().json(json!({
        "sent": c.sent,
        "delivered": c.delivered,
        "hard_bounces": c.hard_bounces,
        "soft_bounces": c.soft_bounces,
        "complaints": c.complaints,
        "opens": c.opens,
        "clicks": c.clicks,
        "unsubscribes": c.unsubscribes,
        "complaint_rate": c.complaint_rate(),
        "hard_bounce_rate": c.hard_bounce_rate(),
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InboundQuery {
    tenant: Option<String>,
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn inbound(
    app: web::Data<App>,
    req: HttpRequest,
    provider: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let who = if req.headers().contains_key("authorization") {
        let (ctx, tenant) = caller(&app, &req)?;
        Caller::Key(ctx, tenant)
    } else {
        let q = web::Query::<InboundQuery>::from_query(req.query_string())
            .map_err(|e| ApiError::new(400, "BAD_REQUEST", e.to_string()))?
            .into_inner();
        let tenant = q
            .tenant
            .as_deref()
            .and_then(|t| Uuid::parse_str(t).ok())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "authenticate with an API key, or name ?tenant= and sign the request",
                )
            })?;
        Caller::Signed(tenant)
    };
    let body = read_body(payload, MAX_INBOUND_BODY).await?;
    let headers = SignatureHeaders {
        timestamp: header(&req, "postledger-timestamp"),
        signature: header(&req, "postledger-signature"),
    };
    let out = signals::receive(&app, who, &provider, headers, &body).await?;
    Ok(HttpResponse::Accepted().json(out))
}

async fn bounce(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let body = read_body(payload, MAX_INBOUND_BODY).await?;
    let out = signals::bounce(&app, &ctx, tenant, &body).await?;
    Ok(HttpResponse::Accepted().json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    limit: Option<usize>,
    cursor: Option<u64>,
}

async fn list_log(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let q = web::Query::<LogQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(422, "VALIDATION_FAILED", e.to_string()))?
        .into_inner();
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let (page, next) = signals::list_log(&app, &ctx, tenant, q.cursor, limit).await?;
    Ok(HttpResponse::Ok().json(json!({
        "data": page.iter().map(|(v, w)| signals::log_json(*v, w)).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

async fn replay(app: web::Data<App>, req: HttpRequest, id: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::new(404, "WEBHOOK_NOT_FOUND", "no such webhook-log entry"))?;
    let out = signals::replay(&app, &ctx, tenant, id).await?;
    Ok(HttpResponse::Accepted().json(out))
}

fn page(status: u16, title: &str, body: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">\
         <h1>{title}</h1>{body}</body></html>"
    );
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
    )
    .content_type("text/html; charset=utf-8")
    .insert_header(("Cache-Control", "no-store"))
    .insert_header(("Referrer-Policy", "no-referrer"))
    .body(html)
}

fn invalid_link() -> HttpResponse {
    page(
        400,
        "This link is not valid",
        "<p>The unsubscribe link is damaged or incomplete. Please use the link from the email as it is.</p>",
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// GET shows a confirmation page with one button; it changes nothing (mail scanners
/// follow links).
async fn unsubscribe_page(
    app: web::Data<App>,
    token: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    let Ok(u) = signals::check_token(&app, &token) else {
        return Ok(invalid_link());
    };
    let address = escape(&u.address);
    if signals::is_unsubscribed(&app, &u, chrono::Utc::now())? {
        return Ok(page(
            200,
            "You are unsubscribed",
            &format!(
                "<p id=\"done\">{address} will get no more marketing email from this sender.</p>"
            ),
        ));
    }
    Ok(page(
        200,
        "Unsubscribe",
        &format!(
            "<p>Stop marketing email to <b>{address}</b>?</p>\
             <form method=\"post\"><button id=\"unsubscribe\" type=\"submit\">Unsubscribe</button></form>"
        ),
    ))
}

/// POST (the page's button, or a mail client's RFC 8058 one-click request) unsubscribes
/// at once; doing it twice is the same as once.
async fn unsubscribe_now(
    app: web::Data<App>,
    token: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HttpError> {
    // The body is `List-Unsubscribe=One-Click` or the empty form; it carries nothing we need.
    let _ = read_body(payload, 4096).await?;
    let Ok(u) = signals::check_token(&app, &token) else {
        return Ok(invalid_link());
    };
    signals::unsubscribe(&app, &u).await?;
    Ok(page(
        200,
        "You are unsubscribed",
        &format!(
            "<p id=\"done\">{} will get no more marketing email from this sender.</p>",
            escape(&u.address)
        ),
    ))
}
