//! The runner on a real log: checkpoints, live following, restart, rebuild, halting.
use std::sync::Arc;
use std::time::Duration;

use eventlog::{
    Actor, EventLog, ExpectedVersion, Metadata, NewEvent, Options, RecordedEvent, StreamId,
};
use projections::{ModelWrite, Projections, Projector, Result};
use uuid::Uuid;

/// Counts the events it has applied: applying any event twice would show.
struct Counter;

impl Projector for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn apply(&self, e: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()> {
        let n: u64 = model.get(b"n")?.unwrap_or(0);
        model.put(b"n", &(n + 1))?;
        model.put(b"last", &e.position)?;
        Ok(())
    }
}

/// Refuses events of type "Poison".
struct Picky;

impl Projector for Picky {
    fn name(&self) -> &'static str {
        "picky"
    }
    fn apply(&self, e: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()> {
        if e.event_type == "Poison" {
            return Err(projections::Error::Apply {
                projector: "picky".into(),
                position: e.position,
                reason: "poisoned".into(),
            });
        }
        model.put(b"last", &e.position)
    }
}

fn open(dir: &std::path::Path) -> EventLog {
    EventLog::open(dir, Options::new([1u8; 32])).unwrap()
}

async fn append(log: &EventLog, n: usize, event_type: &str) {
    for _ in 0..n {
        log.append(
            Uuid::nil(),
            StreamId::new("s", Uuid::now_v7().to_string()),
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_id: Uuid::now_v7(),
                event_type: event_type.into(),
                schema_version: 1,
                payload: b"{}".to_vec(),
            }],
            Metadata::new(Actor::System("test".into()), Uuid::now_v7()),
        )
        .await
        .unwrap();
    }
}

fn count(p: &Projections) -> u64 {
    p.model("counter")
        .unwrap()
        .get::<u64>(b"n")
        .unwrap()
        .unwrap_or(0)
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_catches_up_follows_restarts_and_rebuilds_without_repeating() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        append(&log, 10, "A").await;
        let p = Projections::start(log.clone(), vec![Arc::new(Counter)]).unwrap();
        assert!(p.wait_for(10, WAIT).await);
        assert_eq!(count(&p), 10);
        append(&log, 5, "A").await;
        assert!(p.wait_for(15, WAIT).await);
        assert_eq!(count(&p), 15);
        assert!(p.caught_up());
        assert_eq!(p.status()[0].lag, 0);

        // An online rebuild starts from an empty model: it recounts, it does not add.
        let reports = p.rebuild(Some("counter")).await.unwrap();
        assert_eq!(reports[0].events, 15);
        assert_eq!(count(&p), 15);
        assert!(p.rebuild(Some("nope")).await.is_err());
        p.stop().await;
    }
    // After a restart the projection resumes from its stored checkpoint.
    {
        let log = open(dir.path());
        let p = Projections::start(log.clone(), vec![Arc::new(Counter)]).unwrap();
        assert_eq!(p.model("counter").unwrap().checkpoint().unwrap(), 15);
        append(&log, 1, "A").await;
        assert!(p.wait_for(16, WAIT).await);
        assert_eq!(count(&p), 16, "nothing applied twice after the restart");
        assert_eq!(
            p.model("counter").unwrap().get::<u64>(b"last").unwrap(),
            Some(16)
        );
        p.stop().await;
    }
    // Offline rebuild, as the CLI does it on a folder no server holds.
    let log = open(dir.path());
    let mut seen = 0;
    let report = projections::rebuild_offline(&log, &Counter, |done, total| {
        assert!(done <= total);
        seen = done;
    })
    .unwrap();
    assert_eq!((report.events, seen), (16, 16));
    let p = Projections::start(log.clone(), vec![Arc::new(Counter)]).unwrap();
    assert!(p.wait_for(16, WAIT).await);
    assert_eq!(count(&p), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_that_cannot_apply_an_event_halts_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    append(&log, 3, "A").await;
    append(&log, 1, "Poison").await;
    append(&log, 2, "A").await;
    let p = Projections::start(log.clone(), vec![Arc::new(Picky), Arc::new(Counter)]).unwrap();
    assert!(!p.wait_for(6, Duration::from_millis(500)).await);
    let status = p.status();
    let picky = status.iter().find(|s| s.name == "picky").unwrap();
    assert!(
        picky.failed.as_deref().unwrap_or("").contains("poisoned"),
        "{picky:?}"
    );
    assert!(picky.checkpoint < 4, "the poisoned event was not skipped");
    let last = p.model("picky").unwrap().get::<u64>(b"last").unwrap();
    assert!(
        last.unwrap_or(0) < 4,
        "picky applied past the poison: {last:?}"
    );
    assert!(!p.caught_up());
    let counter = status.iter().find(|s| s.name == "counter").unwrap();
    assert_eq!(counter.checkpoint, 6, "other projections go on");
}
