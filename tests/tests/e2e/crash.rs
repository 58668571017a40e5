//! Crash under load: SIGKILL the server while clients send and the dispatcher delivers;
//! after a restart every acknowledged message is delivered, duplicates are few, and the
//! audit chain verifies.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sink::Sink;
use crate::support::{run, setup_tenant, stderr, stdout, Server, SENDER};

const TOTAL: usize = 400;
const CLIENTS: usize = 8;
const KILL_AFTER: usize = 150;
/// The dispatcher's default concurrency: at most this many messages can be on the wire,
/// sent but not yet recorded, when the process dies.
const MAX_DUPLICATES: usize = 64;
const CONFIG: &str = "retry_schedule_ms = [300]\nsmtp_timeout_ms = 5000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let mut s = Server::start_with(dir.path(), CONFIG);
    let (_, key) = setup_tenant(&s, &[("primary", sink.port, 1)]).await;

    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (next, acked, refused) = (next.clone(), acked.clone(), refused.clone());
        let url = format!("{}/api/v1/messages/send/", s.url);
        let key = key.clone();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        clients.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TOTAL {
                    return;
                }
                let body = json!({
                    "from": SENDER,
                    "to": format!("user{i}@example.test"),
                    "subject": format!("Load {i}"),
                    "text": format!("Message number {i}."),
                });
                let resp = match http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("Idempotency-Key", format!("crash-{i}"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return, // the server is gone: in flight, not acknowledged
                };
                let status = resp.status().as_u16();
                let Ok(answer) = resp.json::<Value>().await else {
                    return; // cut off mid-answer: not acknowledged
                };
                if status == 202 {
                    let id = answer["id"].as_str().expect("id").to_string();
                    acked.lock().unwrap().push(id);
                } else {
                    refused
                        .lock()
                        .unwrap()
                        .push(format!("message {i}: {status} {answer}"));
                    return;
                }
            }
        });
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} sends acknowledged in 60 s; refused: {:?}",
            acked.lock().unwrap().len(),
            refused.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    s.child.kill().expect("SIGKILL the server");
    s.child.wait().expect("reap the server");
    let at_kill = acked.lock().unwrap().len();
    while let Some(r) = clients.join_next().await {
        r.expect("a client task panicked");
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        refused.lock().unwrap().is_empty(),
        "sends refused before the kill: {:?}",
        refused.lock().unwrap()
    );
    assert!(
        acked.len() >= KILL_AFTER && acked.len() < TOTAL,
        "the kill must land mid-load: {} of {TOTAL} acknowledged",
        acked.len()
    );
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "an id was acknowledged twice");
    let delivered_at_kill = sink.delivered().len();

    // Restart on the same folder: every acknowledged message must come out.
    let s = Server::start_with(dir.path(), CONFIG);
    let mut pending: Vec<String> = acked.clone();
    let mut statuses: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let (status, m) = s
                .rest(
                    "GET",
                    &format!("/api/v1/messages/{id}/"),
                    Some(&key),
                    None,
                    None,
                )
                .await;
            assert_eq!(
                status, 200,
                "acknowledged message {id} was lost by the crash: {m}"
            );
            match m["status"].as_str().unwrap_or_default() {
                st @ ("sent" | "failed") => {
                    statuses.insert(id, st.to_string());
                }
                _ => still.push(id),
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages still not sent 60 s after the restart, e.g. {:?}",
            pending.len(),
            &pending[..pending.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed: Vec<&String> = statuses
        .iter()
        .filter(|(_, st)| st.as_str() == "failed")
        .map(|(id, _)| id)
        .collect();
    assert!(
        failed.is_empty(),
        "failed although the relay takes everything: {failed:?}"
    );

    let delivered = sink.delivered();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for d in &delivered {
        let id = d
            .header("X-Postledger-Message-Id")
            .map(|v| v.trim_matches(['<', '>']).to_string())
            .unwrap_or_else(|| panic!("no X-Postledger-Message-Id in\n{}", d.text()));
        *counts.entry(id).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never reached the relay, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "crash: {} acknowledged ({at_kill} when the kill was sent), {delivered_at_kill} delivered \
         before the kill, {} delivered in all, {duplicates} duplicate deliveries",
        acked.len(),
        delivered.len()
    );
    assert!(
        duplicates <= MAX_DUPLICATES,
        "{duplicates} duplicate deliveries; at most {MAX_DUPLICATES} can have been in flight"
    );
    s.stop();

    let o = run(dir.path(), &["audit", "verify"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("OK: "), "{}", stdout(&o));
}
