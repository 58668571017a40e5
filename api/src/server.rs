//! The HTTP server: health, readiness, GraphQL (and GraphiQL).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use anyhow::Context;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::App;
use crate::auth;
use crate::config::Config;
use crate::error::{ApiError, HttpError};
use crate::graphql::{self, AppSchema};
use crate::secrets;
use crate::service::Ctx;

/// Blocking threads per runtime (the main one and each HTTP worker's). The blocking work is
/// short sled reads and writes, CPU-bound: a handful of threads per runtime keeps both
/// cores busy.
pub const BLOCKING_THREADS: usize = 8;

/// Largest GraphQL request body.
const MAX_GRAPHQL_BODY: usize = 1024 * 1024;

/// Written to the data folder while a server holds it, so that the CLI can find it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerRecord {
    pub url: String,
    pub pid: u32,
}

pub fn server_record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server.json")
}

pub fn read_server_record(data_dir: &Path) -> Option<ServerRecord> {
    let text = std::fs::read_to_string(server_record_path(data_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub app: App,
    pub server: actix_web::dev::Server,
    pub dispatcher: workers::dispatch::Dispatcher,
    pub reports: workers::reports::DeliveryReports,
}

/// Starts the workers that follow the log: SMTP dispatch and delivery reports.
fn start_workers(
    app: &App,
    config: &Config,
    public_url: &str,
) -> (
    workers::dispatch::Dispatcher,
    workers::reports::DeliveryReports,
) {
    let d = &config.delivery;
    let mut dispatch = workers::dispatch::DispatchConfig::new(
        config.data_dir.join("outbox"),
        app.blobs.clone(),
        app.master_key.clone(),
    );
    dispatch.retry_schedule = d.retry_schedule.clone();
    dispatch.max_age = d.max_age;
    dispatch.concurrency = d.concurrency;
    dispatch.smtp_timeout = d.smtp_timeout;
    dispatch.hello_name = d.hello_name.clone();
    // The API verifies the tokens with the same derived key.
    dispatch.unsubscribe = Some(workers::dispatch::UnsubscribeLinks {
        base_url: public_url.to_string(),
        mailto_domain: config.unsubscribe_mailto_domain.clone(),
        key: app
            .master_key
            .derive(workers::seal::UNSUBSCRIBE_KEY_CONTEXT),
    });
    dispatch.bounce_domain = config.bounce_domain.clone();
    dispatch.relay_roots = config.relay_roots.clone();
    let mut reports = workers::reports::ReportConfig::new(app.master_key.clone());
    reports.retry_schedule = d.callback_retry_schedule.clone();
    (
        workers::dispatch::Dispatcher::start(app.log.clone(), dispatch),
        workers::reports::DeliveryReports::start(app.log.clone(), reports),
    )
}

/// Opens the data folder, starts the projections and binds the listener. Must run inside
/// a tokio runtime; await `server` to serve.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let mut app = App::open(config).map_err(|e| match e {
        eventlog::Error::Locked => anyhow::anyhow!(
            "the data folder {} is held by another process (is a server already running?)",
            config.data_dir.display()
        ),
        other => anyhow::Error::new(other),
    })?;
    let (token, token_path, created) = secrets::operator_token(&config.data_dir)?;
    app.operator_hash = Some(Arc::from(app.secrets.token_hash(&token)));
    if created {
        eprintln!(
            "postledger: created the operator token; it is stored in {}",
            token_path.display()
        );
    } else {
        eprintln!(
            "postledger: the operator token is stored in {}",
            token_path.display()
        );
    }
    // Bound before the workers start, so that links in mail can name the real port.
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let (dispatcher, reports) = start_workers(&app, config, &public_url);
    let schema = graphql::schema(Some(app.clone()));
    let data_app = web::Data::new(app.clone());
    let data_workers = web::Data::new((dispatcher.clone(), reports.clone()));
    let data_schema = web::Data::new(schema);
    let http = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data_app.clone())
            .app_data(data_schema.clone())
            .app_data(data_workers.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/graphql", web::post().to(graphql_post))
            .route("/graphql", web::get().to(graphiql))
            .configure(crate::rest::routes)
            .configure(crate::rest_signals::public_routes)
            .default_service(web::to(not_found))
    })
    .workers(2)
    // The blocking pool serves short sled reads; tokio's default (512 threads) let load
    // spikes start hundreds of threads, each with its own stack and allocator caches.
    .worker_max_blocking_threads(BLOCKING_THREADS)
    .disable_signals()
    .listen(listener)
    .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = http
        .addrs()
        .first()
        .copied()
        .context("the server bound no address")?;
    let server = http.run();
    let record = ServerRecord {
        url: format!("http://{addr}"),
        pid: std::process::id(),
    };
    std::fs::write(
        server_record_path(&config.data_dir),
        serde_json::to_vec(&record)?,
    )?;
    Ok(Running {
        addr,
        app,
        server,
        dispatcher,
        reports,
    })
}

/// `postledger serve`: runs until SIGINT or SIGTERM, then stops gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let running = start(&config).await?;
    eprintln!(
        "postledger: listening on http://{} (data in {})",
        running.addr,
        config.data_dir.display()
    );
    let handle = running.server.handle();
    let app = running.app.clone();
    let (dispatcher, reports) = (running.dispatcher, running.reports);
    let server = tokio::spawn(running.server);
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.stop(true).await;
    let _ = server.await;
    dispatcher.stop().await;
    reports.stop().await;
    app.projections.stop().await;
    let _ = std::fs::remove_file(server_record_path(&config.data_dir));
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

type Workers = (
    workers::dispatch::Dispatcher,
    workers::reports::DeliveryReports,
);

async fn readyz(app: web::Data<App>, workers: web::Data<Workers>) -> HttpResponse {
    let status = app.projections.status();
    let dispatch = workers.0.status();
    let reports = workers.1.status();
    let ready = status.iter().all(|s| s.lag == 0 && s.failed.is_none())
        && dispatch.caught_up
        && reports.caught_up;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "catching_up" },
        "head": app.log.head(),
        "projections": status,
        "dispatch": dispatch,
        "delivery_reports": reports,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn not_found() -> Result<HttpResponse, HttpError> {
    Err(ApiError::new(404, "NOT_FOUND", "no such route").into())
}

async fn graphiql() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            async_graphql::http::GraphiQLSource::build()
                .endpoint("/graphql")
                .finish(),
        )
}

/// The request's correlation id: the caller's `X-Correlation-Id` when it is a UUID.
pub fn correlation_id(req: &HttpRequest) -> Uuid {
    req.headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(Uuid::now_v7)
}

pub fn principal(app: &App, req: &HttpRequest) -> Result<auth::Principal, ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    auth::authenticate(app, header)
}

/// Reads a body up to `limit` bytes; larger is a 413 in our error format.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(400, "BAD_REQUEST", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                413,
                "PAYLOAD_TOO_LARGE",
                format!("the body exceeds {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn graphql_post(
    app: web::Data<App>,
    schema: web::Data<AppSchema>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, HttpError> {
    let principal = principal(&app, &req)?;
    let correlation = correlation_id(&req);
    let body = read_body(payload, MAX_GRAPHQL_BODY).await?;
    let request: async_graphql::Request = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            400,
            "BAD_REQUEST",
            format!("the body is not a GraphQL request: {e}"),
        )
    })?;
    let ctx = Ctx {
        principal,
        correlation_id: correlation,
    };
    let mut response = schema.execute(request.data(ctx)).await;
    // Parse and validation errors come from async-graphql without our `code` extension;
    // give every error one, so clients can always branch on `extensions.code`.
    for err in &mut response.errors {
        let ext = err.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", "GRAPHQL_VALIDATION_FAILED");
        }
    }
    Ok(HttpResponse::Ok()
        .insert_header(("x-correlation-id", correlation.to_string()))
        .json(response))
}
