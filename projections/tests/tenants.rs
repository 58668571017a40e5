//! The tenants read model built from real domain events.
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{ApiKeyId, ApiKeyRole, DomainEvent, TenantCommand, TenantId, TenantState};
use eventlog::{Actor, EventLog, ExpectedVersion, Metadata, NewEvent, Options, StreamId};
use projections::tenants::{Tenants, TenantsProjector, NAME};
use projections::Projections;
use uuid::Uuid;

async fn run(
    log: &EventLog,
    tenant: Uuid,
    state: &mut TenantState,
    version: &mut u64,
    cmd: TenantCommand,
) -> u64 {
    let events = domain::decide(state, cmd).unwrap();
    let new = events
        .iter()
        .map(|e| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: e.event_type().into(),
            schema_version: e.schema_version(),
            payload: e.encode(),
        })
        .collect();
    let expected = if *version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(*version)
    };
    let out = log
        .append(
            tenant,
            StreamId::new("tenant", tenant.to_string()),
            expected,
            new,
            Metadata::new(Actor::System("t".into()), Uuid::now_v7()),
        )
        .await
        .unwrap();
    for e in &events {
        domain::apply(state, e);
    }
    *version = out.stream_version;
    out.last_position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_keys_and_the_hash_lookup_follow_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), Options::new([2u8; 32])).unwrap();
    let p = Projections::start(log.clone(), vec![Arc::new(TenantsProjector)]).unwrap();
    let tenants = Tenants::new(p.model(NAME).unwrap());
    let (t, key) = (Uuid::now_v7(), Uuid::now_v7());
    let (mut state, mut version) = (TenantState::default(), 0);
    run(
        &log,
        t,
        &mut state,
        &mut version,
        TenantCommand::Create {
            tenant_id: TenantId::from_uuid(t),
            name: "Acme".into(),
        },
    )
    .await;
    let hash = "ab".repeat(32);
    let issue = TenantCommand::IssueApiKey {
        key_id: ApiKeyId::from_uuid(key),
        label: "ci".into(),
        key_hash: hash.clone(),
        prefix: "pl_ab".into(),
        role: ApiKeyRole::Approver,
        expires_at: None,
        now: Utc::now(),
    };
    run(&log, t, &mut state, &mut version, issue).await;
    let pos = run(
        &log,
        t,
        &mut state,
        &mut version,
        TenantCommand::Suspend {
            reason: "unpaid".into(),
        },
    )
    .await;
    assert!(p.wait_for(pos, Duration::from_secs(10)).await);

    let view = tenants.get(t).unwrap().unwrap();
    assert_eq!(
        (
            view.name.as_str(),
            view.suspended,
            view.suspended_reason.as_deref()
        ),
        ("Acme", true, Some("unpaid"))
    );
    let (tv, kv) = tenants.by_hash(&hash).unwrap().unwrap();
    assert_eq!((tv.id, kv.id, kv.role.as_str()), (t, key, "approver"));
    assert!(tenants.by_hash(&"cd".repeat(32)).unwrap().is_none());

    let pos = run(
        &log,
        t,
        &mut state,
        &mut version,
        TenantCommand::RevokeApiKey {
            key_id: ApiKeyId::from_uuid(key),
        },
    )
    .await;
    assert!(p.wait_for(pos, Duration::from_secs(10)).await);
    let kv = tenants.api_key(t, key).unwrap().unwrap();
    assert!(kv.revoked_at_us.is_some());
    assert!(!kv.usable_at(Utc::now().timestamp_micros()));
    // Another tenant's listing is empty, whatever exists elsewhere.
    assert!(tenants.api_keys(Uuid::now_v7()).unwrap().is_empty());
    assert_eq!(tenants.list(None, 10).unwrap().len(), 1);
}
