//! The committed GraphQL SDL must be the one the server serves.
#[test]
fn committed_schema_matches_the_served_schema() {
    let served = api::graphql::schema(None).sdl();
    let path = format!(
        "{}/../schemas/graphql/schema.graphql",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &served).expect("write schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "schemas/graphql/schema.graphql differs from the served schema; run `UPDATE_SCHEMAS=1 cargo test -p postledger-tests schema` and commit the result"
    );
}
