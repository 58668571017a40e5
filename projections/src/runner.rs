use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventlog::{EventLog, RecordedEvent};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::model::{read_checkpoint, ModelRead, ModelWrite};

/// Events applied in one atomic write when rebuilding.
const CHUNK: usize = 2048;
/// Events applied in one atomic write when following: six projections each holding a
/// batch of 3 KB records, so a smaller one bounds the memory of a projection catching up.
const LIVE_CHUNK: usize = 512;

/// Builds one read model from the log.
///
/// `apply` must be deterministic and depend only on the event and the model: a rebuild from
/// the log must give the same model. Events a projector does not care about are ignored.
pub trait Projector: Send + Sync + 'static {
    /// Stable name; the read model lives in the sled tree `rm.<name>`.
    fn name(&self) -> &'static str;
    fn apply(&self, event: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()>;
}

fn tree_name(name: &str) -> String {
    format!("rm.{name}")
}

/// Applies a chunk of events and the new checkpoint in one atomic write.
fn apply_chunk(
    projector: &dyn Projector,
    tree: &sled::Tree,
    events: &[RecordedEvent],
) -> Result<u64> {
    let mut model = ModelWrite::new(tree);
    let mut last = read_checkpoint(tree)?;
    for e in events {
        if e.position <= last {
            // Already applied (a replayed chunk): never apply twice.
            continue;
        }
        projector.apply(e, &mut model)?;
        last = e.position;
    }
    model.commit(last)?;
    Ok(last)
}

/// The state of one projection, for `/readyz`, metrics and operators.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub checkpoint: u64,
    pub head: u64,
    /// Head position minus checkpoint.
    pub lag: u64,
    /// Set when the projector stopped on an event it could not apply.
    pub failed: Option<String>,
}

/// What one `rebuild` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RebuildReport {
    pub name: String,
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
}

struct Running {
    projector: Arc<dyn Projector>,
    tree: sled::Tree,
    checkpoint: watch::Receiver<u64>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    reset: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

/// Runs every projector as a task that follows the log.
///
/// The tasks hold the log, so they would keep it (and the data folder's lock) alive
/// forever; they end on [`Projections::stop`], or once every handle is dropped.
#[derive(Clone)]
pub struct Projections {
    log: EventLog,
    running: Arc<HashMap<&'static str, Running>>,
    stop: Arc<watch::Sender<bool>>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Projections {
    /// Starts one task per projector, each from its stored checkpoint. Needs a tokio runtime.
    pub fn start(log: EventLog, projectors: Vec<Arc<dyn Projector>>) -> Result<Projections> {
        let mut running = HashMap::new();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for projector in projectors {
            let tree = log.models_db().open_tree(tree_name(projector.name()))?;
            let start = read_checkpoint(&tree)?;
            let (cp_tx, cp_rx) = watch::channel(start);
            let (reset_tx, reset_rx) = mpsc::channel(4);
            let failed = Arc::new(std::sync::Mutex::new(None));
            tasks.push(tokio::spawn(follow(
                log.clone(),
                projector.clone(),
                tree.clone(),
                cp_tx,
                reset_rx,
                failed.clone(),
                stop_rx.clone(),
            )));
            running.insert(
                projector.name(),
                Running {
                    projector,
                    tree,
                    checkpoint: cp_rx,
                    failed,
                    reset: reset_tx,
                },
            );
        }
        Ok(Projections {
            log,
            running: Arc::new(running),
            stop: Arc::new(stop),
            tasks: Arc::new(std::sync::Mutex::new(tasks)),
        })
    }

    /// Stops every projection task and waits for them, so that the log they held is
    /// released. What was applied stays applied; a later start resumes from there.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Read access to one projector's model.
    pub fn model(&self, name: &str) -> Result<ModelRead> {
        self.running
            .get(name)
            .map(|r| ModelRead::new(r.tree.clone()))
            .ok_or_else(|| Error::UnknownProjection(name.to_string()))
    }

    pub fn status(&self) -> Vec<ProjectionStatus> {
        let head = self.log.head();
        let mut out: Vec<_> = self
            .running
            .values()
            .map(|r| {
                let checkpoint = *r.checkpoint.borrow();
                ProjectionStatus {
                    name: r.projector.name().to_string(),
                    checkpoint,
                    head,
                    lag: head.saturating_sub(checkpoint),
                    failed: r.failed.lock().ok().and_then(|f| f.clone()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// True when every projection has applied everything durable.
    pub fn caught_up(&self) -> bool {
        self.status()
            .iter()
            .all(|s| s.lag == 0 && s.failed.is_none())
    }

    /// Waits until every projection has applied `position`, so that a caller reads its own
    /// writes. Gives up after `timeout` and says so.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for r in self.running.values() {
            let mut rx = r.checkpoint.clone();
            loop {
                if *rx.borrow_and_update() >= position {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rx.changed()).await {
                    Ok(Ok(())) => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// Drops one read model (or all) and rebuilds it from the start of the log while the
    /// server keeps running; returns when the rebuilt model has caught up with the head it
    /// saw at the start.
    pub async fn rebuild(&self, name: Option<&str>) -> Result<Vec<RebuildReport>> {
        let names: Vec<&'static str> = match name {
            Some(n) => vec![self
                .running
                .get_key_value(n)
                .map(|(k, _)| *k)
                .ok_or_else(|| Error::UnknownProjection(n.to_string()))?],
            None => {
                let mut all: Vec<_> = self.running.keys().copied().collect();
                all.sort();
                all
            }
        };
        let mut reports = Vec::new();
        for n in names {
            let r = self.running.get(n).ok_or(Error::Stopped)?;
            let started = Instant::now();
            let head = self.log.head();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            r.reset.send(done_tx).await.map_err(|_| Error::Stopped)?;
            done_rx.await.map_err(|_| Error::Stopped)?;
            let mut rx = r.checkpoint.clone();
            while *rx.borrow_and_update() < head {
                if rx.changed().await.is_err() {
                    return Err(Error::Stopped);
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            reports.push(RebuildReport {
                name: n.to_string(),
                events: head,
                seconds,
                events_per_s: rate(head, seconds),
            });
        }
        Ok(reports)
    }
}

fn rate(events: u64, seconds: f64) -> f64 {
    // Precision loss above 2^53 events is irrelevant for a rate.
    #[allow(clippy::cast_precision_loss)]
    let e = events as f64;
    if seconds > 0.0 {
        e / seconds
    } else {
        e
    }
}

/// A projection reads a busy log in batches of a few hundred events (see
/// [`eventlog::Subscription::linger`]): six projections woken at every group commit (tens of
/// events) cost more in wake-ups and read-model commits than in applying.
fn subscribe(log: &EventLog, after: u64) -> eventlog::Subscription {
    log.subscribe(after)
        .linger(LINGER, u64::try_from(LIVE_CHUNK / 4).unwrap_or(u64::MAX))
}

/// How long a projection waits for more events when only a few are new: the most it adds
/// to a read model's lag.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

async fn follow(
    log: EventLog,
    projector: Arc<dyn Projector>,
    tree: sled::Tree,
    checkpoint: watch::Sender<u64>,
    mut reset: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sub = subscribe(&log, *checkpoint.borrow());
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = tokio::select! {
            _ = stop.changed() => return,
            b = sub.next_batch(LIVE_CHUNK) => b,
            Some(done) = reset.recv() => {
                let cleared = {
                    let tree = tree.clone();
                    tokio::task::spawn_blocking(move || tree.clear()).await
                };
                if !matches!(cleared, Ok(Ok(()))) {
                    tracing::error!(projector = projector.name(), "could not clear the read model");
                    return;
                }
                if let Ok(mut f) = failed.lock() {
                    *f = None;
                }
                checkpoint.send_replace(0);
                sub = subscribe(&log, 0);
                let _ = done.send(());
                continue;
            }
        };
        let events = match batch {
            Ok(events) => events,
            Err(e) => {
                tracing::info!(projector = projector.name(), error = %e, "projection stops");
                return;
            }
        };
        let (p, t) = (projector.clone(), tree.clone());
        let applied =
            tokio::task::spawn_blocking(move || apply_chunk(p.as_ref(), &t, &events)).await;
        match applied {
            Ok(Ok(last)) => {
                checkpoint.send_replace(last);
            }
            Ok(Err(e)) => {
                tracing::error!(projector = projector.name(), error = %e, "projection halted");
                if let Ok(mut f) = failed.lock() {
                    *f = Some(e.to_string());
                }
                // Wait for a rebuild (or shutdown) rather than skipping the event.
                let next = tokio::select! {
                    _ = stop.changed() => return,
                    r = reset.recv() => r,
                };
                match next {
                    Some(done) => {
                        let _ = tree.clear();
                        if let Ok(mut f) = failed.lock() {
                            *f = None;
                        }
                        checkpoint.send_replace(0);
                        sub = subscribe(&log, 0);
                        let _ = done.send(());
                    }
                    None => return,
                }
            }
            Err(_) => return,
        }
    }
}

/// Rebuilds a read model directly on an opened log, without a server (the CLI's offline
/// path). `progress` is called with (events applied, total).
pub fn rebuild_offline(
    log: &EventLog,
    projector: &dyn Projector,
    mut progress: impl FnMut(u64, u64),
) -> Result<RebuildReport> {
    let started = Instant::now();
    let tree = log.models_db().open_tree(tree_name(projector.name()))?;
    tree.clear()?;
    let head = log.head();
    let mut after = 0;
    while after < head {
        let events = log.read_all(after, CHUNK)?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        apply_chunk(projector, &tree, &events)?;
        after = last;
        progress(after, head);
    }
    log.models_db().flush()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(RebuildReport {
        name: projector.name().to_string(),
        events: after,
        seconds,
        events_per_s: rate(after, seconds),
    })
}
