use serde_json::json;

use crate::support::Server;

const WHOAMI: &str = "{ tenant { id name status } apiKeys { id label } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_works_until_revoked_and_sees_only_its_own_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());

    let (status, body) = s.gql(None, "{ healthz: __typename }", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let ready = s
        .http
        .get(format!("{}/readyz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    let a = s.create_tenant("Acme").await;
    let b = s.create_tenant("Bolt").await;
    let (a_key_id, a_key) = s.issue_key(&a, "acme ci", None).await;
    let (_, b_key) = s.issue_key(&b, "bolt ci", None).await;

    let d = s.ok(&a_key, WHOAMI, json!({})).await;
    assert_eq!(d["tenant"]["id"], a.as_str());
    assert_eq!(d["tenant"]["name"], "Acme");
    assert_eq!(d["apiKeys"].as_array().unwrap().len(), 1);
    assert_eq!(d["apiKeys"][0]["id"], a_key_id.as_str());

    // B sees nothing of A: not A's tenant, keys, timeline or chain; the answers are the same
    // as for an id that does not exist at all.
    let d = s.ok(&b_key, WHOAMI, json!({})).await;
    assert_eq!(d["tenant"]["id"], b.as_str());
    assert!(!d.to_string().contains(&a), "B's view mentions A: {d}");
    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [&a, &unknown] {
        for q in [
            "query($t: ID) { tenant(id: $t) { id } }",
            "query($t: ID) { apiKeys(tenantId: $t) { id } }",
            "query($t: ID) { auditTrail(tenantId: $t) { edges { node { type } } } }",
            "query($t: ID) { verifyAudit(tenantId: $t) { ok } }",
        ] {
            assert_eq!(
                s.err_code(&b_key, q, json!({ "t": id })).await,
                "TENANT_NOT_FOUND",
                "{q}"
            );
        }
        assert_eq!(
            s.err_code(
                &b_key,
                "mutation($t: ID, $k: ID!) { revokeApiKey(tenantId: $t, id: $k) { id } }",
                json!({ "t": id, "k": a_key_id })
            )
            .await,
            "TENANT_NOT_FOUND"
        );
    }
    // B cannot revoke A's key by naming it under B either.
    assert_eq!(
        s.err_code(
            &b_key,
            "mutation($k: ID!) { revokeApiKey(id: $k) { id } }",
            json!({ "k": a_key_id })
        )
        .await,
        "API_KEY_NOT_FOUND"
    );
    let b_trail = s
        .ok(
            &b_key,
            "{ auditTrail { edges { node { type stream summary } } } }",
            json!({}),
        )
        .await;
    assert!(!b_trail.to_string().contains(&a), "B's timeline mentions A");

    // Tenant keys cannot do operator work.
    assert_eq!(
        s.err_code(
            &a_key,
            "mutation { createTenant(name: \"x\") { id } }",
            json!({})
        )
        .await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.err_code(&a_key, "{ tenants { id } }", json!({})).await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.err_code(
            &a_key,
            "mutation { issueApiKey(label: \"x\", role: APPROVER) { secret } }",
            json!({})
        )
        .await,
        "FORBIDDEN"
    );

    // A's timeline, read from the log, says who did what.
    let trail = s
        .ok(&a_key, "{ auditTrail(first: 10) { edges { cursor node { type actor summary correlationId } } pageInfo { hasNextPage } } }", json!({}))
        .await;
    let edges = trail["auditTrail"]["edges"].as_array().unwrap();
    let types: Vec<_> = edges
        .iter()
        .map(|e| e["node"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["TenantCreated", "ApiKeyIssued"]);
    assert_eq!(edges[0]["node"]["actor"], "operator:operator");
    assert_eq!(
        edges[1]["node"]["summary"],
        "API key 'acme ci' issued (role sender)"
    );
    assert!(
        !trail.to_string().contains(&a_key),
        "the secret leaked into the timeline"
    );

    // Paging.
    let page = s
        .ok(
            &a_key,
            "{ auditTrail(first: 1) { edges { cursor } pageInfo { hasNextPage endCursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(page["auditTrail"]["pageInfo"]["hasNextPage"], true);
    let next = s
        .ok(
            &a_key,
            "query($c: String) { auditTrail(first: 5, after: $c) { edges { node { type } } pageInfo { hasNextPage } } }",
            json!({ "c": page["auditTrail"]["pageInfo"]["endCursor"] }),
        )
        .await;
    assert_eq!(
        next["auditTrail"]["edges"][0]["node"]["type"],
        "ApiKeyIssued"
    );
    assert_eq!(next["auditTrail"]["pageInfo"]["hasNextPage"], false);

    // A tenant key may issue another sender key for its own tenant, and revoke it: the
    // revoked key is refused at once.
    let d = s
        .ok(
            &a_key,
            "mutation { issueApiKey(label: \"second\") { apiKey { id } secret } }",
            json!({}),
        )
        .await;
    let (second_id, second) = (
        d["issueApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        d["issueApiKey"]["secret"].as_str().unwrap().to_string(),
    );
    s.ok(&second, WHOAMI, json!({})).await;
    let d = s
        .ok(
            &a_key,
            "mutation($k: ID!) { revokeApiKey(id: $k) { status revokedAt } }",
            json!({ "k": second_id }),
        )
        .await;
    assert_eq!(d["revokeApiKey"]["status"], "REVOKED");
    let (status, body) = s.gql(Some(&second), WHOAMI, json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    assert_eq!(
        s.err_code(
            &a_key,
            "mutation($k: ID!) { revokeApiKey(id: $k) { id } }",
            json!({ "k": second_id })
        )
        .await,
        "API_KEY_ALREADY_REVOKED"
    );

    // The operator revokes A's first key: refused at once too.
    s.ok(
        &s.operator,
        "mutation($t: ID, $k: ID!) { revokeApiKey(tenantId: $t, id: $k) { id } }",
        json!({ "t": a, "k": a_key_id }),
    )
    .await;
    let (status, _) = s.gql(Some(&a_key), WHOAMI, json!({})).await;
    assert_eq!(status, 401);
    s.ok(&b_key, WHOAMI, json!({})).await;

    // Tenant B's chain verifies from B's own key.
    let v = s
        .ok(&b_key, "{ verifyAudit { ok events tenants } }", json!({}))
        .await;
    assert_eq!(v["verifyAudit"]["ok"], true);
    assert_eq!(v["verifyAudit"]["events"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_expiry_and_validation_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let t = s.create_tenant("Cargo").await;
    let (_, key) = s.issue_key(&t, "main", None).await;
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let (_, short) = s.issue_key(&t, "short-lived", Some(soon)).await;
    s.ok(&short, WHOAMI, json!({})).await;

    // Suspended: 403 for every key of the tenant; reactivated: back.
    let d = s.ok(&s.operator, "mutation($t: ID!) { suspendTenant(tenantId: $t, reason: \"unpaid\") { status suspendedReason } }", json!({ "t": t })).await;
    assert_eq!(d["suspendTenant"]["status"], "SUSPENDED");
    let (status, body) = s.gql(Some(&key), WHOAMI, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("TENANT_SUSPENDED"))
    );
    assert_eq!(
        s.err_code(
            &s.operator,
            "mutation($t: ID!) { suspendTenant(tenantId: $t) { id } }",
            json!({ "t": t })
        )
        .await,
        "TENANT_SUSPENDED"
    );
    s.ok(
        &s.operator,
        "mutation($t: ID!) { reactivateTenant(tenantId: $t) { status } }",
        json!({ "t": t }),
    )
    .await;
    s.ok(&key, WHOAMI, json!({})).await;

    // Expired: 401.
    tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
    let (status, body) = s.gql(Some(&short), WHOAMI, json!({})).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let keys = s.ok(&key, "{ apiKeys { label status } }", json!({})).await;
    assert!(keys.to_string().contains("EXPIRED"));

    // Validation errors carry stable codes; nothing is written for them.
    let before = s
        .ok(
            &key,
            "{ auditTrail(first: 100) { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        s.err_code(
            &s.operator,
            "mutation { createTenant(name: \"   \") { id } }",
            json!({})
        )
        .await,
        "INVALID_TENANT_NAME"
    );
    assert_eq!(
        s.err_code(
            &key,
            "mutation { renameTenant(name: \"\") { id } }",
            json!({})
        )
        .await,
        "INVALID_TENANT_NAME"
    );
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        s.err_code(
            &key,
            "mutation($e: DateTime) { issueApiKey(label: \"x\", expiresAt: $e) { secret } }",
            json!({ "e": past })
        )
        .await,
        "EXPIRY_NOT_IN_FUTURE"
    );
    assert_eq!(
        s.err_code(
            &key,
            "{ auditTrail(first: 0) { edges { cursor } } }",
            json!({})
        )
        .await,
        "VALIDATION_FAILED"
    );
    assert_eq!(
        s.err_code(
            &key,
            "{ auditTrail(after: \"nope\") { edges { cursor } } }",
            json!({})
        )
        .await,
        "VALIDATION_FAILED"
    );
    assert_eq!(
        s.err_code(&s.operator, "{ apiKeys { id } }", json!({}))
            .await,
        "VALIDATION_FAILED"
    );
    let after = s
        .ok(
            &key,
            "{ auditTrail(first: 100) { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(before, after);

    // Bad bodies get our JSON error format, not a panic.
    let resp = s
        .http
        .post(format!("{}/graphql", s.url))
        .bearer_auth(&key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BAD_REQUEST");
    let huge = "x".repeat(2 * 1024 * 1024);
    let resp = s
        .http
        .post(format!("{}/graphql", s.url))
        .bearer_auth(&key)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let resp = s
        .http
        .get(format!("{}/nowhere", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    // GraphiQL is served.
    let page = s
        .http
        .get(format!("{}/graphql", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.to_lowercase().contains("graphiql"));

    // Time-range reads of the timeline.
    let all = s
        .ok(
            &key,
            "{ auditTrail(first: 100) { edges { node { type recordedAt } } } }",
            json!({}),
        )
        .await;
    let edges = all["auditTrail"]["edges"].as_array().unwrap().clone();
    let from = edges[2]["node"]["recordedAt"].clone();
    let to = edges[4]["node"]["recordedAt"].clone();
    let window = s
        .ok(&key, "query($f: DateTime, $t: DateTime) { auditTrail(from: $f, to: $t) { edges { node { recordedAt } } } }", json!({ "f": from, "t": to }))
        .await;
    let got = window["auditTrail"]["edges"].as_array().unwrap();
    assert!(!got.is_empty() && got.len() <= 2, "{window}");
    assert_eq!(got[0]["node"]["recordedAt"], from);
}
