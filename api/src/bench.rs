//! `postledger bench …`: measured on a fresh data folder, reported as one JSON object.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use eventlog::{Actor, EventLog, ExpectedVersion, Metadata, NewEvent, Options, StreamId};
use serde_json::{json, Value};
use uuid::Uuid;

/// A payload of about 300 bytes, the size of a typical queued-message event.
fn payload(i: usize) -> Vec<u8> {
    let mut p = format!(
        "{{\"message_id\":\"{}\",\"to_domain\":\"example.com\",\"subject\":\"Your receipt #{i}\",\"priority\":\"normal\",\"category\":\"transactional\",\"tags\":[\"receipt\",\"billing\"],\"pad\":\"",
        Uuid::now_v7()
    );
    while p.len() < 298 {
        p.push('x');
    }
    p.push_str("\"}");
    p.into_bytes()
}

fn event(i: usize) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "BenchEvent".into(),
        schema_version: 1,
        payload: payload(i),
    }
}

pub(crate) fn per_s(n: usize, d: Duration) -> f64 {
    // Counts far below 2^53: no precision is lost.
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / d.as_secs_f64().max(1e-9)
}

/// The `p` quantile of sorted durations, in milliseconds.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

pub fn eventlog(
    c1_appends: usize,
    c64_events: usize,
    dir: Option<PathBuf>,
) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let path = dir.unwrap_or_else(|| tmp.path().join("bench"));
    let log = EventLog::open(&path, Options::new([9u8; 32]))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tenants: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let meta = Metadata::new(Actor::System("bench".into()), Uuid::now_v7());

    // One appender: each append waits for its own fsync.
    let mut latencies = Vec::with_capacity(c1_appends);
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..c1_appends {
            let t = Instant::now();
            log.append(
                tenants[i % tenants.len()],
                StreamId::new("message", i.to_string()),
                ExpectedVersion::NoStream,
                vec![event(i)],
                meta.clone(),
            )
            .await?;
            latencies.push(t.elapsed());
        }
        anyhow::Ok(())
    })?;
    let c1_elapsed = started.elapsed();
    latencies.sort();

    // 64 appenders: group commit shares fsyncs between them.
    let per_task = c64_events.div_ceil(64);
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..64usize {
            let log = log.clone();
            let meta = meta.clone();
            let tenant = tenants[task % tenants.len()];
            tasks.push(tokio::spawn(async move {
                for i in 0..per_task {
                    log.append(
                        tenant,
                        StreamId::new("message", format!("c64-{task}-{i}")),
                        ExpectedVersion::NoStream,
                        vec![event(i)],
                        meta.clone(),
                    )
                    .await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    let c64_elapsed = started.elapsed();
    let c64_total = per_task * 64;

    // Replay: every event, in order, decoded.
    let started = Instant::now();
    let mut after = 0;
    let mut replayed = 0usize;
    loop {
        let batch = log.read_all(after, 4096)?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        replayed += batch.len();
    }
    let replay_elapsed = started.elapsed();

    // How many records share a sled item: what makes replay and verify cheap.
    let chunks = log
        .db()
        .open_tree("log")?
        .range(b"G".to_vec()..b"H".to_vec())
        .count();

    let started = Instant::now();
    let report = log.verify(None)?;
    let verify_elapsed = started.elapsed();
    let eventlog::VerifyReport::Ok { events, .. } = report else {
        anyhow::bail!("the benchmark's own log does not verify: {report:?}");
    };
    let verified = usize::try_from(events)?;
    drop(log);

    Ok(json!({
        "append_per_s_c1": per_s(c1_appends, c1_elapsed).round(),
        "append_per_s_c64": per_s(c64_total, c64_elapsed).round(),
        "append_p50_ms_c1": percentile(&latencies, 0.50),
        "append_p99_ms_c1": percentile(&latencies, 0.99),
        "replay_per_s": per_s(replayed, replay_elapsed).round(),
        "verify_per_s": per_s(verified, verify_elapsed).round(),
        "chunks_in_log": chunks,
        "events_in_log": replayed,
        "payload_bytes": payload(0).len(),
    }))
}
