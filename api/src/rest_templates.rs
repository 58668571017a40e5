//! The templates' REST routes under `/api/v1`: templates and versions, the review steps,
//! test renders, LLM drafting, the tenant's drafting defaults, and send-template.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::error::ApiError;
use crate::rest::{caller, idempotency_key, json_body, optional_body, receipt_reply, Reply};
use crate::templates::{
    self, CreateTemplateInput, DraftOutcome, DraftingDefaultsInput, GenerateInput, Review,
    ReviseInput, SendTemplateRequest, VersionInput,
};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/messages/send-template/", web::post().to(send_template))
        .route("/templates/", web::get().to(list))
        .route("/templates/", web::post().to(create))
        .route("/templates/{key}/", web::get().to(get))
        .route("/templates/{key}/events/", web::get().to(events))
        .route("/templates/{key}/versions/", web::post().to(create_version))
        .route("/templates/{key}/versions/{n}/", web::get().to(get_version))
        .route("/templates/{key}/versions/{n}/", web::put().to(edit_draft))
        .route(
            "/templates/{key}/versions/{n}/submit/",
            web::post().to(submit),
        )
        .route(
            "/templates/{key}/versions/{n}/approve/",
            web::post().to(approve),
        )
        .route(
            "/templates/{key}/versions/{n}/reject/",
            web::post().to(reject),
        )
        .route(
            "/templates/{key}/versions/{n}/make-current/",
            web::post().to(make_current),
        )
        .route(
            "/templates/{key}/versions/{n}/render/",
            web::post().to(render),
        )
        .route(
            "/templates/{key}/versions/{n}/revise/",
            web::post().to(revise),
        )
        .route(
            "/templates/{key}/drafts/generate/",
            web::post().to(generate),
        )
        .route("/drafting/", web::get().to(get_defaults))
        .route("/drafting/", web::put().to(set_defaults));
}

fn version_number(raw: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>()
        .map_err(|_| ApiError::new(404, "TEMPLATE_VERSION_NOT_FOUND", "no such version"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let q = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(422, "VALIDATION_FAILED", e.to_string()))?
        .into_inner();
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let page = templates::list(&app, &ctx, tenant, q.cursor.as_deref(), limit + 1)?;
    let more = page.len() > limit;
    let items: Vec<_> = page.iter().take(limit).collect();
    let next = more
        .then(|| {
            items
                .last()
                .and_then(|t| t.created.as_ref().map(|c| c.key.clone()))
        })
        .flatten();
    Ok(HttpResponse::Ok().json(json!({
        "data": items.iter().map(|t| templates::template_json(t, false)).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

async fn create(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let input: CreateTemplateInput = json_body(&app, payload).await?;
    let t = templates::create(&app, &ctx, tenant, input).await?;
    Ok(HttpResponse::Created().json(templates::template_json(&t, true)))
}

async fn get(app: web::Data<App>, req: HttpRequest, key: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let t = templates::get(&app, &ctx, tenant, &key)?;
    Ok(HttpResponse::Ok().json(templates::template_json(&t, true)))
}

async fn events(app: web::Data<App>, req: HttpRequest, key: web::Path<String>) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let events = templates::events(&app, &ctx, tenant, &key).await?;
    Ok(HttpResponse::Ok().json(json!({ "key": key.as_str(), "events": events })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersionBody {
    #[serde(default)]
    based_on: Option<u32>,
    version: VersionInput,
}

async fn create_version(
    app: web::Data<App>,
    req: HttpRequest,
    key: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let body: NewVersionBody = json_body(&app, payload).await?;
    let (t, n) =
        templates::create_version(&app, &ctx, tenant, &key, body.based_on, body.version).await?;
    Ok(HttpResponse::Created().json(templates::version_json(&t, n)))
}

async fn get_version(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let n = version_number(&path.1)?;
    let t = templates::get(&app, &ctx, tenant, &path.0)?;
    if !t.versions.contains_key(&n) {
        return Err(
            ApiError::from(domain::DomainError::TemplateVersionNotFound { version: n }).into(),
        );
    }
    Ok(HttpResponse::Ok().json(templates::version_json(&t, n)))
}

async fn edit_draft(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let n = version_number(&path.1)?;
    let input: VersionInput = json_body(&app, payload).await?;
    let t = templates::edit_draft(&app, &ctx, tenant, &path.0, n, input).await?;
    Ok(HttpResponse::Ok().json(templates::version_json(&t, n)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    note: Option<String>,
}

async fn review_step(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    step: Review,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let n = version_number(&path.1)?;
    let body: NoteBody = optional_body(payload, 256 * 1024).await?;
    let t = templates::review(&app, &ctx, tenant, &path.0, n, step, body.note).await?;
    Ok(HttpResponse::Ok().json(templates::version_json(&t, n)))
}

async fn submit(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    review_step(app, req, path, payload, Review::Submit).await
}

async fn approve(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    review_step(app, req, path, payload, Review::Approve).await
}

async fn reject(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    review_step(app, req, path, payload, Review::Reject).await
}

async fn make_current(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    review_step(app, req, path, payload, Review::MakeCurrent).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RenderBody {
    #[serde(default)]
    context: Option<Value>,
    /// Picks the subject variant as a send to this address would.
    #[serde(default)]
    to: Option<String>,
}

async fn render(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let n = version_number(&path.1)?;
    let body: RenderBody = optional_body(payload, 256 * 1024).await?;
    let context = body.context.unwrap_or(Value::Null);
    let r = templates::test_render(&app, &ctx, tenant, &path.0, n, context, body.to).await?;
    Ok(HttpResponse::Ok().json(templates::rendered_json(n, &r)))
}

fn draft_reply(out: DraftOutcome) -> HttpResponse {
    HttpResponse::Created().json(out)
}

async fn generate(
    app: web::Data<App>,
    req: HttpRequest,
    key: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let input: GenerateInput = json_body(&app, payload).await?;
    Ok(draft_reply(
        templates::generate(&app, &ctx, tenant, &key, input).await?,
    ))
}

async fn revise(
    app: web::Data<App>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let n = version_number(&path.1)?;
    let input: ReviseInput = json_body(&app, payload).await?;
    Ok(draft_reply(
        templates::revise(&app, &ctx, tenant, &path.0, n, input).await?,
    ))
}

async fn get_defaults(app: web::Data<App>, req: HttpRequest) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let d = templates::drafting_defaults(&app, &ctx, tenant).await?;
    Ok(HttpResponse::Ok().json(d))
}

async fn set_defaults(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let input: DraftingDefaultsInput = json_body(&app, payload).await?;
    let d = templates::set_drafting_defaults(&app, &ctx, tenant, input).await?;
    Ok(HttpResponse::Ok().json(d))
}

async fn send_template(app: web::Data<App>, req: HttpRequest, payload: web::Payload) -> Reply {
    let (ctx, tenant) = caller(&app, &req)?;
    let key = idempotency_key(&req)?;
    let body: SendTemplateRequest = json_body(&app, payload).await?;
    let receipt = templates::send_template(&app, &ctx, tenant, body, key).await?;
    Ok(receipt_reply(&receipt))
}
