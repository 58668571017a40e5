//! Integration tests of the event log on real sled files.
use std::collections::HashSet;

use eventlog::{
    Actor, AppendOutcome, Error, EventLog, ExpectedVersion, Metadata, NewEvent, Options, StreamId,
    VerifyReport,
};
use uuid::Uuid;

const KEY: [u8; 32] = [7u8; 32];

fn open(dir: &std::path::Path) -> EventLog {
    EventLog::open(dir, Options::new(KEY)).expect("open log")
}

fn ev(event_type: &str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        payload: payload.as_bytes().to_vec(),
    }
}

/// Appends one event to the new stream `s/<n>`.
fn append_to_new_stream(log: &EventLog, tenant: Uuid, n: u64) {
    append(
        log,
        tenant,
        &StreamId::new("s", n.to_string()),
        ExpectedVersion::NoStream,
        vec![ev("A", "{}")],
    )
    .unwrap();
}

/// Alters the stored bytes of the record at `position` directly in sled: `f` gets the
/// chunk value holding it and the record's byte range within it.
fn alter(
    dir: &std::path::Path,
    position: u64,
    f: impl FnOnce(&mut Vec<u8>, std::ops::Range<usize>),
) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree("log").unwrap();
    let (key, range) = eventlog::record_location(&tree, position)
        .unwrap()
        .expect("record is stored");
    let mut v = tree.get(&key).unwrap().unwrap().to_vec();
    f(&mut v, range);
    tree.insert(&key, v).unwrap();
    db.flush().unwrap();
}

fn meta() -> Metadata {
    Metadata::new(Actor::System("test".into()), Uuid::now_v7())
}

fn append(
    log: &EventLog,
    tenant: Uuid,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> eventlog::Result<AppendOutcome> {
    log.append_blocking(tenant, stream.clone(), expected, events, meta())
}

#[test]
fn versions_sequences_and_positions_are_gapless() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let s = StreamId::new("message", "m1");
    let o1 = append(
        &log,
        a,
        &s,
        ExpectedVersion::NoStream,
        vec![ev("A", "1"), ev("A", "2")],
    )
    .unwrap();
    assert_eq!(
        (
            o1.first_position,
            o1.last_position,
            o1.stream_version,
            o1.tenant_seq
        ),
        (1, 2, 2, 2)
    );
    let o2 = append(&log, b, &s, ExpectedVersion::NoStream, vec![ev("B", "1")]).unwrap();
    assert_eq!(
        (o2.last_position, o2.stream_version, o2.tenant_seq),
        (3, 1, 1)
    );
    let o3 = append(&log, a, &s, ExpectedVersion::Exact(2), vec![ev("A", "3")]).unwrap();
    assert_eq!(
        (o3.last_position, o3.stream_version, o3.tenant_seq),
        (4, 3, 3)
    );
    let all = log.read_all(0, 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let stream_a = log.read_stream(a, &s, 1, 100).unwrap();
    assert_eq!(
        stream_a.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(log.stream_version(a, &s).unwrap(), 3);
    assert_eq!(log.stream_version(b, &s).unwrap(), 1);
    assert_eq!(
        log.read_tenant(a, 1, 100)
            .unwrap()
            .iter()
            .map(|e| e.tenant_seq)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
}

#[test]
fn wrong_expected_version_names_stream_expected_and_actual() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = Uuid::now_v7();
    let s = StreamId::new("tenant", "x");
    append(&log, t, &s, ExpectedVersion::NoStream, vec![ev("A", "1")]).unwrap();
    match append(&log, t, &s, ExpectedVersion::Exact(5), vec![ev("A", "2")]) {
        Err(Error::WrongExpectedVersion {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, s);
            assert_eq!(expected, "5");
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        append(&log, t, &s, ExpectedVersion::NoStream, vec![ev("A", "2")]),
        Err(Error::WrongExpectedVersion { .. })
    ));
    // Nothing of the rejected appends was written.
    assert_eq!(log.head(), 1);
}

#[test]
fn the_same_event_id_is_not_appended_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = Uuid::now_v7();
    let s = StreamId::new("message", "m");
    let events = vec![ev("A", "1"), ev("A", "2")];
    let first = append(&log, t, &s, ExpectedVersion::NoStream, events.clone()).unwrap();
    // A retry with a now stale expected version still succeeds, and writes nothing.
    let again = append(&log, t, &s, ExpectedVersion::NoStream, events.clone()).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.last_position, first.last_position);
    assert_eq!(log.head(), 2);
    // Half old, half new is refused.
    let mixed = vec![events[0].clone(), ev("A", "3")];
    assert!(matches!(
        append(&log, t, &s, ExpectedVersion::Any, mixed),
        Err(Error::DuplicateMismatch { .. })
    ));
    assert_eq!(log.head(), 2);
}

#[test]
fn concurrent_appends_share_fsyncs_and_conflicts_reject_only_the_loser() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = Uuid::now_v7();
    let results: Vec<_> = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                // Every task races for version 1 of a shared stream, and appends to its own.
                let shared = log
                    .append(
                        t,
                        StreamId::new("s", "shared"),
                        ExpectedVersion::NoStream,
                        vec![ev("A", "x")],
                        meta(),
                    )
                    .await;
                let own = log
                    .append(
                        t,
                        StreamId::new("s", format!("own{i}")),
                        ExpectedVersion::NoStream,
                        vec![ev("A", "y")],
                        meta(),
                    )
                    .await;
                (shared.is_ok(), own.is_ok())
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    assert_eq!(
        results.iter().filter(|r| r.0).count(),
        1,
        "exactly one wins the shared stream"
    );
    assert!(results.iter().all(|r| r.1));
    assert_eq!(log.head(), 65);
    assert_eq!(
        log.verify(None).unwrap(),
        VerifyReport::Ok {
            events: 65,
            tenants: 1
        }
    );
}

#[test]
fn reopening_keeps_everything_and_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let t = Uuid::now_v7();
    let s = StreamId::new("tenant", "t");
    {
        let log = open(dir.path());
        append(&log, t, &s, ExpectedVersion::NoStream, vec![ev("A", "1")]).unwrap();
    }
    let log = open(dir.path());
    assert_eq!(log.head(), 1);
    let o = append(&log, t, &s, ExpectedVersion::Exact(1), vec![ev("A", "2")]).unwrap();
    assert_eq!((o.last_position, o.tenant_seq), (2, 2));
    assert_eq!(
        log.verify(Some(t)).unwrap(),
        VerifyReport::Ok {
            events: 2,
            tenants: 1
        }
    );
}

#[test]
fn opening_with_another_payload_key_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    assert!(matches!(
        EventLog::open(dir.path(), Options::new([8u8; 32])),
        Err(Error::WrongKey)
    ));
    open(dir.path());
}

#[test]
fn an_unknown_on_disk_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("log")
            .unwrap()
            .insert(b"Mformat", &[2u8])
            .unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        EventLog::open(dir.path(), Options::new(KEY)),
        Err(Error::UnsupportedFormat {
            found: 2,
            supported: 1
        })
    ));
}

#[test]
fn a_second_open_of_the_folder_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path());
    assert!(matches!(
        EventLog::open(dir.path(), Options::new(KEY)),
        Err(Error::Locked)
    ));
}

#[test]
fn verify_names_the_position_of_one_altered_byte() {
    let dir = tempfile::tempdir().unwrap();
    let t = Uuid::now_v7();
    {
        let log = open(dir.path());
        for i in 0..10 {
            append(
                &log,
                t,
                &StreamId::new("s", format!("{i}")),
                ExpectedVersion::NoStream,
                vec![ev("A", &format!("{{\"n\":{i}}}"))],
            )
            .unwrap();
        }
        assert_eq!(
            log.verify(None).unwrap(),
            VerifyReport::Ok {
                events: 10,
                tenants: 1
            }
        );
    }
    // Alter the last byte (inside the payload) of the record at position 7, directly in sled.
    alter(dir.path(), 7, |v, r| v[r.end - 1] ^= 0x01);
    let log = open(dir.path());
    for report in [log.verify(None).unwrap(), log.verify(Some(t)).unwrap()] {
        match report {
            VerifyReport::Broken {
                position,
                tenant_seq,
                ..
            } => {
                assert_eq!(position, 7);
                assert_eq!(tenant_seq, Some(7));
            }
            other => panic!("expected a break, got {other:?}"),
        }
    }
}

#[test]
fn verify_catches_an_altered_header_byte_and_a_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let t = Uuid::now_v7();
    {
        let log = open(dir.path());
        for i in 0..5 {
            append(
                &log,
                t,
                &StreamId::new("s", "one"),
                ExpectedVersion::Exact(i),
                vec![ev("A", "{}")],
            )
            .unwrap();
        }
    }
    // Cut the tail: the last record disappears, the tenant's stored tip still names it.
    alter(dir.path(), 5, |v, r| v.truncate(r.start - 4));
    {
        let log = open(dir.path());
        assert_eq!(log.head(), 4);
        match log.verify(None).unwrap() {
            VerifyReport::Broken {
                tenant_seq, reason, ..
            } => {
                assert_eq!(tenant_seq, Some(5));
                assert!(reason.contains("missing from the end"), "{reason}");
            }
            other => panic!("a cut tail went unnoticed: {other:?}"),
        }
    }
    // The last byte of the event id of record 3: its header no longer links.
    alter(dir.path(), 3, |v, r| v[r.start + 16] ^= 0x80);
    let log = open(dir.path());
    assert!(matches!(
        log.verify(None).unwrap(),
        VerifyReport::Broken { position: 3, .. }
    ));
}

#[test]
fn subscriptions_catch_up_then_follow_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = Uuid::now_v7();
    for i in 0..10 {
        append_to_new_stream(&log, t, i);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = rt.block_on(async {
        let mut sub = log.subscribe(3);
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 10..40 {
                    log.append(
                        t,
                        StreamId::new("s", format!("{i}")),
                        ExpectedVersion::NoStream,
                        vec![ev("A", "{}")],
                        meta(),
                    )
                    .await
                    .unwrap();
                }
            })
        };
        let mut seen = Vec::new();
        while seen.len() < 37 {
            for e in sub.next_batch(7).await.unwrap() {
                assert!(e.position <= log.head(), "never past the durable head");
                seen.push(e.position);
            }
        }
        writer.await.unwrap();
        seen
    });
    assert_eq!(seen, (4..=40).collect::<Vec<u64>>());
}

/// A lingering subscription that finds only a few new events waits for more and hands
/// them out together; when nothing more comes, it still answers after the wait.
#[test]
fn a_lingering_subscription_gathers_events_that_arrive_while_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = Uuid::now_v7();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (first, second) = rt.block_on(async {
        let mut sub = log
            .subscribe(0)
            .linger(std::time::Duration::from_millis(400), 100);
        append_async(&log, t, 0).await;
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                for i in 1..5 {
                    append_async(&log, t, i).await;
                }
            })
        };
        let first: Vec<u64> = sub
            .next_batch(100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        writer.await.unwrap();
        append_async(&log, t, 5).await;
        let second: Vec<u64> = sub
            .next_batch(100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        (first, second)
    });
    assert_eq!(
        first,
        [1, 2, 3, 4, 5],
        "the appends made during the wait come with the first"
    );
    assert_eq!(second, [6], "alone, it is still handed out after the wait");
}

async fn append_async(log: &EventLog, tenant: Uuid, n: u64) {
    log.append(
        tenant,
        StreamId::new("s", n.to_string()),
        ExpectedVersion::NoStream,
        vec![ev("A", "{}")],
        meta(),
    )
    .await
    .unwrap();
}

#[test]
fn time_range_reads_return_only_that_window() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = Uuid::now_v7();
    let mut stamps = Vec::new();
    for i in 0..6 {
        append(
            &log,
            t,
            &StreamId::new("s", "r"),
            ExpectedVersion::Exact(i),
            vec![ev("A", "{}")],
        )
        .unwrap();
        stamps.push(log.read_tenant(t, i, 1).unwrap()[0].recorded_at());
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    let got = log
        .read_tenant_range(t, Some(stamps[2]), Some(stamps[4]), 0, 100)
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.tenant_seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let other = log
        .read_tenant_range(Uuid::now_v7(), Some(stamps[0]), None, 0, 100)
        .unwrap();
    assert!(other.is_empty());
}

#[test]
fn invalid_appends_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t = Uuid::now_v7();
    let s = StreamId::new("s", "x");
    let big = NewEvent {
        payload: vec![b'x'; eventlog::MAX_PAYLOAD + 1],
        ..ev("A", "")
    };
    assert!(matches!(
        append(&log, t, &s, ExpectedVersion::Any, vec![ev("A", "ok"), big]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        append(&log, t, &s, ExpectedVersion::Any, vec![]),
        Err(Error::InvalidInput(_))
    ));
    let dup = ev("A", "1");
    assert!(matches!(
        append(&log, t, &s, ExpectedVersion::Any, vec![dup.clone(), dup]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        append(
            &log,
            t,
            &StreamId::new("", "x"),
            ExpectedVersion::Any,
            vec![ev("A", "1")]
        ),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(log.head(), 0);
}

mod isolation {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Op {
        tenant: usize,
        stream: u8,
        count: usize,
    }

    fn op() -> impl Strategy<Value = Op> {
        (0usize..3, 0u8..4, 1usize..4).prop_map(|(tenant, stream, count)| Op {
            tenant,
            stream,
            count,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
        /// Tenants share stream ids on purpose: no read for one may yield another's event.
        #[test]
        fn no_read_for_one_tenant_yields_another_tenants_event(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path());
            let tenants = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
            let mut written: Vec<HashSet<Uuid>> = vec![HashSet::new(); 3];
            for op in &ops {
                let events: Vec<_> = (0..op.count).map(|_| ev("A", "{}")).collect();
                for e in &events { written[op.tenant].insert(e.event_id); }
                append(&log, tenants[op.tenant], &StreamId::new("message", op.stream.to_string()), ExpectedVersion::Any, events).unwrap();
            }
            for (i, t) in tenants.iter().enumerate() {
                let by_tenant = log.read_tenant(*t, 0, 10_000).unwrap();
                prop_assert_eq!(by_tenant.len(), written[i].len());
                for e in &by_tenant { prop_assert_eq!(e.tenant, *t); prop_assert!(written[i].contains(&e.event_id)); }
                for s in 0u8..4 {
                    for e in log.read_stream(*t, &StreamId::new("message", s.to_string()), 1, 10_000).unwrap() {
                        prop_assert_eq!(e.tenant, *t);
                        prop_assert!(written[i].contains(&e.event_id));
                    }
                }
                for e in log.read_tenant_range(*t, None, None, 0, 10_000).unwrap() {
                    prop_assert_eq!(e.tenant, *t);
                }
                match log.verify(Some(*t)).unwrap() {
                    VerifyReport::Ok { events, .. } => prop_assert_eq!(events, u64::try_from(written[i].len()).unwrap()),
                    other => prop_assert!(false, "verify failed: {:?}", other),
                }
            }
        }
    }
}

#[test]
fn a_split_walk_reports_exactly_what_one_walk_reports() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    {
        let log = open(dir.path());
        for i in 0..300u64 {
            let t = tenants[usize::try_from(i % 3).unwrap()];
            append_to_new_stream(&log, t, i);
        }
        for threads in [1, 2, 3, 4, 7] {
            assert_eq!(
                log.verify_with_threads(None, threads).unwrap(),
                VerifyReport::Ok {
                    events: 300,
                    tenants: 3
                }
            );
        }
    }
    // Break the chain around the start of the second of two ranges (ranges begin at the
    // first chunk starting at or after position 151): some of these records open the range,
    // so their break is found while merging; others are found inside a range.
    let targets = (148u64..=156)
        .map(|t| (t, 2usize))
        .chain([(226, 4), (17, 3)]);
    for (target, threads) in targets {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
            }
        }
        // A byte of the event id: the header changes, so the stored hash no longer links.
        alter(copy.path(), target, |v, r| v[r.start + 5] ^= 0x01);
        let log = open(copy.path());
        let single = log.verify_with_threads(None, 1).unwrap();
        let split = log.verify_with_threads(None, threads).unwrap();
        assert_eq!(split, single, "target {target}, {threads} threads");
        assert!(
            matches!(single, VerifyReport::Broken { position, .. } if position == target),
            "{single:?}"
        );
    }
}
