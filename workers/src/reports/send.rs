//! One try of one report: build the body from the log, sign it, POST it, record the try.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use domain::delivery_report::{CallbackAttempted, DeliveryReportEvent, DELIVERY_REPORT_STREAM};
use domain::message::{MessageEvent, MESSAGE_STREAM};
use domain::DomainEvent;
use eventlog::{Actor, EventLog, ExpectedVersion, Metadata, NewEvent, StreamId};
use serde::Serialize;
use uuid::Uuid;

use super::state::Job;
use super::{signature, ACTOR};
use crate::seal::{callback_secret_context, MasterKey};

/// Longest error text kept in a `CallbackAttempted`.
const MAX_ERROR_CHARS: usize = 300;

/// What every try shares.
pub(super) struct Context {
    pub log: EventLog,
    /// `Err` holds why the client could not be built; every try then fails with it.
    pub client: Result<reqwest::Client, String>,
    pub master_key: MasterKey,
    pub schedule_len: usize,
}

#[derive(Serialize)]
struct Body<'a> {
    id: Uuid,
    #[serde(rename = "type")]
    kind: &'static str,
    occurred_at: String,
    message_id: Uuid,
    tags: &'a [String],
    metadata: &'a serde_json::Value,
    details: serde_json::Value,
}

/// Makes the try and records it; the recorded try is also the worker's own outcome.
pub(super) async fn attempt(ctx: Arc<Context>, job: Job) -> CallbackAttempted {
    let started = Instant::now();
    let result = post(&ctx, &job).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status, error, delivered) = match result {
        Ok(status) => (Some(status), None, (200..300).contains(&status)),
        Err(error) => (None, Some(error), false),
    };
    let attempt = CallbackAttempted {
        report_of: job.event_id,
        report: job.kind.as_str().to_string(),
        url: job.url.clone(),
        attempt: job.attempt,
        status,
        error,
        duration_ms,
        delivered,
        gave_up: !delivered
            && usize::try_from(job.attempt).unwrap_or(usize::MAX) > ctx.schedule_len,
        // When the outcome was known: the next try's delay counts from here.
        at: Utc::now(),
    };
    match &attempt.error {
        None if delivered => tracing::info!(
            message_id = %job.message_id,
            report_of = %job.event_id,
            attempt = job.attempt,
            status = ?attempt.status,
            "delivery report delivered"
        ),
        _ => tracing::warn!(
            message_id = %job.message_id,
            report_of = %job.event_id,
            attempt = job.attempt,
            status = ?attempt.status,
            error = attempt.error.as_deref().unwrap_or(""),
            gave_up = attempt.gave_up,
            "delivery report try failed"
        ),
    }
    record(&ctx.log, &job, &attempt).await;
    attempt
}

async fn record(log: &EventLog, job: &Job, attempt: &CallbackAttempted) {
    let event = DeliveryReportEvent::CallbackAttempted(attempt.clone());
    let new = NewEvent::new(event.event_type(), event.schema_version(), event.encode());
    let meta = Metadata {
        actor: Actor::System(ACTOR.to_string()),
        correlation_id: job.correlation_id,
        causation_id: Some(job.event_id),
    };
    let stream = StreamId::new(DELIVERY_REPORT_STREAM, job.message_id.to_string());
    if let Err(e) = log
        .append(job.tenant, stream, ExpectedVersion::Any, vec![new], meta)
        .await
    {
        // The worker's own view still counts the try; only a restart (which rebuilds from
        // the log) would make it again, and receivers dedupe on the event id.
        tracing::error!(
            message_id = %job.message_id,
            report_of = %job.event_id,
            error = %e,
            "a delivery report try could not be recorded"
        );
    }
}

/// The HTTP status of the answer, or why there was none.
async fn post(ctx: &Context, job: &Job) -> Result<u16, String> {
    let client = ctx.client.as_ref().map_err(Clone::clone)?;
    let secret = ctx
        .master_key
        .open(&job.secret, &callback_secret_context(job.tenant))
        .map_err(|_| "the callback signing secret could not be opened".to_string())?;
    let body = build_body(&ctx.log, job).await?;
    let timestamp = Utc::now().timestamp();
    let sig = signature(&secret, timestamp, &body);
    drop(secret);
    let response = client
        .post(&job.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Postledger-Timestamp", timestamp.to_string())
        .header("Postledger-Signature", sig)
        .header("Postledger-Event-Id", job.event_id.to_string())
        .body(body)
        .send()
        .await
        .map_err(describe)?;
    Ok(response.status().as_u16())
}

/// Reads the message's `MessageQueued` (tags, metadata) and the reported event back from
/// the log: bodies are never kept in memory between tries.
async fn build_body(log: &EventLog, job: &Job) -> Result<Vec<u8>, String> {
    let log = log.clone();
    let (tenant, message_id, version) = (job.tenant, job.message_id, job.version);
    let (queued, reported) = tokio::task::spawn_blocking(move || {
        let stream = StreamId::new(MESSAGE_STREAM, message_id.to_string());
        let queued = log.read_stream(tenant, &stream, 1, 1)?;
        let reported = log.read_stream(tenant, &stream, version, 1)?;
        Ok::<_, eventlog::Error>((queued, reported))
    })
    .await
    .map_err(|e| format!("reading the message failed: {e}"))?
    .map_err(|e| format!("reading the message failed: {e}"))?;

    let decode = |rec: &eventlog::RecordedEvent| {
        MessageEvent::decode(&rec.event_type, rec.schema_version, &rec.payload)
            .map_err(|e| format!("the message's events could not be decoded: {e}"))
    };
    let (tags, metadata) = match queued.first().map(decode).transpose()? {
        Some(MessageEvent::Queued(q)) => (q.tags, q.metadata),
        _ => (Vec::new(), serde_json::Value::Null),
    };
    let reported = reported
        .first()
        .filter(|rec| rec.event_id == job.event_id)
        .ok_or_else(|| "the reported event is not in the log".to_string())?;
    let details = match decode(reported)? {
        MessageEvent::Sent(p) => serde_json::to_value(p),
        MessageEvent::Deferred(p) => serde_json::to_value(p),
        MessageEvent::Failed(p) => serde_json::to_value(p),
        MessageEvent::Cancelled(p) => serde_json::to_value(p),
        MessageEvent::Suppressed(p) => serde_json::to_value(p),
        _ => return Err("the reported event is not a reportable message event".to_string()),
    }
    .map_err(|e| format!("the report could not be encoded: {e}"))?;
    let body = Body {
        id: job.event_id,
        kind: job.kind.body_type(),
        occurred_at: job.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        message_id: job.message_id,
        tags: &tags,
        metadata: &metadata,
        details,
    };
    serde_json::to_vec(&body).map_err(|e| format!("the report could not be encoded: {e}"))
}

/// The error text of a failed request: what went wrong and its causes, without the URL
/// (which is recorded beside it, and whose query may carry the receiver's own token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_builder() {
        "invalid request"
    } else {
        "request failed"
    };
    let mut text = what.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if text.chars().count() > MAX_ERROR_CHARS {
        text = text.chars().take(MAX_ERROR_CHARS).collect();
        text.push('…');
    }
    text
}

/// The client every try uses: no redirects (a 3xx is a failed try, and a redirect could
/// carry a signed report somewhere the tenant did not configure), a per-request timeout.
pub(super) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent("Postledger")
        .build()
        .map_err(|e| format!("the HTTP client could not be built: {e}"))
}
