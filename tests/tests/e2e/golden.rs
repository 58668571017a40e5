//! Golden bytes: records as format 1 wrote them, with the v1 payload of `ApiKeyIssued`.
//! These files are never regenerated: if they stop decoding, old logs stop decoding.
use domain::{ApiKeyRole, DomainEvent, TenantEvent};
use eventlog::{Actor, RecordedEvent};

fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    hex::decode(text.trim()).expect("hex")
}

#[test]
fn format_1_records_still_decode_and_api_key_issued_v1_upcasts_to_v2() {
    let (created, _) =
        RecordedEvent::decode(&golden("tenant_created_v1.record.hex")).expect("decode record");
    assert_eq!(created.event_type, "TenantCreated");
    assert_eq!(
        (created.position, created.tenant_seq, created.version),
        (1, 1, 1)
    );
    assert_eq!(created.actor, Actor::Operator("operator".into()));
    assert_eq!(
        created.tenant.to_string(),
        "0191f000-0000-7000-8000-00000000000a"
    );
    match TenantEvent::decode(
        &created.event_type,
        created.schema_version,
        &created.payload,
    )
    .unwrap()
    {
        TenantEvent::Created(c) => assert_eq!(c.name, "Acme"),
        other => panic!("decoded {other:?}"),
    }

    let bytes = golden("api_key_issued_v1.record.hex");
    let (issued, _) = RecordedEvent::decode(&bytes).expect("decode record");
    assert_eq!(
        (issued.event_type.as_str(), issued.schema_version),
        ("ApiKeyIssued", 1)
    );
    assert_eq!(issued.position, 2);
    // The stored record re-encodes to exactly the stored bytes: nothing is rewritten.
    assert_eq!(issued.encode(), bytes);
    let event =
        TenantEvent::decode(&issued.event_type, issued.schema_version, &issued.payload).unwrap();
    assert_eq!(
        event.schema_version(),
        2,
        "decoding yields the current version"
    );
    match event {
        TenantEvent::ApiKeyIssued(k) => {
            assert_eq!(k.label, "ci deploy");
            assert_eq!(
                k.role,
                ApiKeyRole::Sender,
                "v1 keys predate roles: they were senders"
            );
            assert_eq!(k.prefix, "");
            assert_eq!(k.expires_at, None);
        }
        other => panic!("decoded {other:?}"),
    }
}

#[test]
fn a_damaged_golden_record_is_refused_not_misread() {
    let bytes = golden("api_key_issued_v1.record.hex");
    assert!(RecordedEvent::decode(&bytes[..bytes.len() - 1]).is_err());
    let mut wrong_format = bytes.clone();
    wrong_format[0] = 2;
    assert!(RecordedEvent::decode(&wrong_format)
        .unwrap_err()
        .contains("format"));
}
