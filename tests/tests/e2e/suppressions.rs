//! Suppressions end to end: add, look up, list, remove (with the removal's note and the
//! original kept in the log), case-insensitive matching, plus-address and Gmail matching
//! once the tenant turns `plus_addressing` on (`PUT /api/v1/signals/settings/`), global
//! entries (operator only, binding every tenant), tenant isolation, bulk adds, CSV import
//! and export, the 422s, and the GraphQL surface.
use serde_json::{json, Value};

use crate::support::{code, Server};

async fn tenant_with_key(s: &Server, name: &str) -> (String, String, String) {
    let tenant = s.create_tenant(name).await;
    let (key_id, key) = s.issue_key(&tenant, "suppressions", None).await;
    (tenant, key_id, key)
}

fn first_field(answer: &Value) -> &str {
    answer["error"]["details"]["fields"][0]["field"]
        .as_str()
        .unwrap_or("<no field>")
}

fn addresses(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["address"].as_str().expect("address").to_string())
        .collect()
}

/// A raw call with a body of the given content type; answers the status, the content
/// type and the body text.
async fn raw(
    s: &Server,
    method: &str,
    path: &str,
    key: &str,
    content_type: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = s
        .http
        .request(method, format!("{}/api/v1{path}", s.url))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.header("Content-Type", content_type).body(b.to_string());
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, resp.text().await.expect("body"))
}

async fn import(s: &Server, key: &str, path: &str, csv: &str) -> (u16, Value) {
    let (status, _, text) = raw(s, "POST", path, key, "text/csv", Some(csv)).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn add_look_up_list_and_remove_with_the_original_kept_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, key_id, key) = tenant_with_key(&s, "Acme").await;

    let added = s.expect("POST",
        "/suppressions/",
        &key,
        Some(json!({ "address": " Jane.Doe@Example.COM ", "reason": "hard_bounce", "note": "bounced twice" })),
        201,
    )
    .await;
    assert_eq!(added["address"], "jane.doe@example.com", "{added}");
    assert_eq!(added["reason"], "hard_bounce");
    assert_eq!(added["applies_to"], "all");
    assert_eq!(added["scope"], "tenant");
    assert_eq!(added["source"], "api");
    assert_eq!(added["created_by"], format!("api_key:{key_id}"));
    assert_eq!(added["recorded"], true);
    // The same entry again records nothing.
    let again = s
        .expect(
            "POST",
            "/suppressions/",
            &key,
            Some(json!({ "address": "jane.doe@example.com", "reason": "hard_bounce" })),
            200,
        )
        .await;
    assert_eq!(again["recorded"], false, "{again}");

    // Look-ups ignore case.
    for spelling in [
        "jane.doe@example.com",
        "JANE.DOE@EXAMPLE.COM",
        "Jane.Doe%40Example.com",
    ] {
        let found = s
            .expect(
                "GET",
                &format!("/suppressions/{spelling}/"),
                &key,
                None,
                200,
            )
            .await;
        assert_eq!(found["entry"]["address"], "jane.doe@example.com", "{found}");
        assert_eq!(found["globally_suppressed"], false);
        assert_eq!(found["blocks_transactional"], true);
    }
    let missing = s
        .expect("GET", "/suppressions/nobody@example.com/", &key, None, 404)
        .await;
    assert_eq!(code(&missing), "SUPPRESSION_NOT_FOUND");

    // A marketing-only entry, and the listing with its filters and cursor.
    s.expect("POST",
        "/suppressions/",
        &key,
        Some(json!({ "address": "m@example.com", "applies_to": "marketing", "reason": "unsubscribe" })),
        201,
    )
    .await;
    let m = s
        .expect("GET", "/suppressions/m@example.com/", &key, None, 200)
        .await;
    assert_eq!(m["blocks_transactional"], false, "{m}");
    assert_eq!(m["blocks_marketing"], true);
    let all = s.expect("GET", "/suppressions/", &key, None, 200).await;
    assert_eq!(addresses(&all), ["jane.doe@example.com", "m@example.com"]);
    assert_eq!(all["total"], 2);
    assert_eq!(all["next_cursor"], Value::Null);
    let marketing = s
        .expect(
            "GET",
            "/suppressions/?applies_to=marketing",
            &key,
            None,
            200,
        )
        .await;
    assert_eq!(addresses(&marketing), ["m@example.com"]);
    let bounces = s
        .expect("GET", "/suppressions/?reason=hard_bounce", &key, None, 200)
        .await;
    assert_eq!(addresses(&bounces), ["jane.doe@example.com"]);
    let prefixed = s
        .expect("GET", "/suppressions/?address_prefix=M", &key, None, 200)
        .await;
    assert_eq!(addresses(&prefixed), ["m@example.com"]);
    let page1 = s
        .expect("GET", "/suppressions/?limit=1", &key, None, 200)
        .await;
    assert_eq!(addresses(&page1), ["jane.doe@example.com"]);
    let cursor = page1["next_cursor"].as_str().expect("cursor").to_string();
    let page2 = s
        .expect(
            "GET",
            &format!("/suppressions/?limit=1&cursor={cursor}"),
            &key,
            None,
            200,
        )
        .await;
    assert_eq!(addresses(&page2), ["m@example.com"]);
    for bad in [
        "reason=nope",
        "applies_to=some",
        "limit=0",
        "limit=5000",
        "colour=red",
        "scope=world",
    ] {
        let a = s
            .expect("GET", &format!("/suppressions/?{bad}"), &key, None, 422)
            .await;
        assert_eq!(code(&a), "VALIDATION_FAILED", "{bad}: {a}");
    }

    // Removal needs a note.
    for body in [None, Some(json!({})), Some(json!({ "note": "   " }))] {
        let a = s
            .expect(
                "DELETE",
                "/suppressions/jane.doe@example.com/",
                &key,
                body,
                422,
            )
            .await;
        assert_eq!(code(&a), "VALIDATION_FAILED", "{a}");
        assert_eq!(first_field(&a), "note", "{a}");
    }
    let removed = s
        .expect(
            "DELETE",
            "/suppressions/Jane.Doe@example.com/",
            &key,
            Some(json!({ "note": "the customer asked by phone" })),
            200,
        )
        .await;
    assert_eq!(
        removed["removed"]["address"], "jane.doe@example.com",
        "{removed}"
    );
    assert_eq!(removed["removed_by"], format!("api_key:{key_id}"));
    s.expect(
        "GET",
        "/suppressions/jane.doe@example.com/",
        &key,
        None,
        404,
    )
    .await;
    let gone = s
        .expect(
            "DELETE",
            "/suppressions/jane.doe@example.com/",
            &key,
            Some(json!({ "note": "again" })),
            404,
        )
        .await;
    assert_eq!(code(&gone), "SUPPRESSION_NOT_FOUND");
    let after = s.expect("GET", "/suppressions/", &key, None, 200).await;
    assert_eq!(after["total"], 1);

    // The log keeps the removal, its note, and the entry as it was.
    let history = s
        .expect(
            "GET",
            "/suppressions/jane.doe@example.com/events/",
            &key,
            None,
            200,
        )
        .await;
    let events = history["events"].as_array().expect("events");
    let types: Vec<_> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        ["SuppressionAdded", "SuppressionRemoved"],
        "{history}"
    );
    let removal = &events[1]["data"];
    assert_eq!(removal["note"], "the customer asked by phone");
    assert_eq!(removal["removed_by"], format!("api_key:{key_id}"));
    assert_eq!(removal["original"]["reason"], "hard_bounce");
    assert_eq!(removal["original"]["note"], "bounced twice");
    assert!(
        !events[1]["summary"]
            .as_str()
            .unwrap_or("")
            .contains("jane.doe"),
        "{history}"
    );
    // And so does the audit timeline.
    let trail = s
        .ok(
            &key,
            "{ auditTrail(first: 50) { edges { node { type stream } } } }",
            json!({}),
        )
        .await;
    let audit: Vec<_> = trail["auditTrail"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(audit.contains(&"SuppressionRemoved".to_string()), "{trail}");
    s.stop();
}

#[tokio::test]
async fn malformed_input_is_a_422_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, _, key) = tenant_with_key(&s, "Acme").await;
    let long = "x".repeat(1001);
    for (body, field) in [
        (json!({}), "address"),
        (json!({ "address": "" }), "address"),
        (json!({ "address": "not an address" }), "address"),
        (json!({ "address": "a@b@example.com" }), "address"),
        (
            json!({ "address": "a@example.com", "reason": "bored" }),
            "reason",
        ),
        (
            json!({ "address": "a@example.com", "applies_to": "some" }),
            "applies_to",
        ),
        (
            json!({ "address": "a@example.com", "expires_at": "tomorrow" }),
            "expires_at",
        ),
        (
            json!({ "address": "a@example.com", "expires_at": "2001-01-01T00:00:00Z" }),
            "expires_at",
        ),
        (json!({ "address": "a@example.com", "note": long }), "note"),
        (
            json!({ "address": "a@example.com", "colour": "red" }),
            "body",
        ),
        (json!({ "address": 5 }), "address"),
    ] {
        let a = s
            .expect("POST", "/suppressions/", &key, Some(body.clone()), 422)
            .await;
        assert_eq!(code(&a), "VALIDATION_FAILED", "{body}: {a}");
        assert!(
            first_field(&a).starts_with(field)
                || (field == "body" && first_field(&a) != "<no field>"),
            "{body}: {a}"
        );
    }
    let (status, _, text) = raw(
        &s,
        "POST",
        "/suppressions/",
        &key,
        "application/json",
        Some("{nope"),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    // Nothing was recorded.
    let list = s.expect("GET", "/suppressions/", &key, None, 200).await;
    assert_eq!(list["total"], 0, "{list}");
    s.stop();
}

#[tokio::test]
async fn plus_and_gmail_spellings_match_only_once_the_tenant_turns_them_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, _, key) = tenant_with_key(&s, "Acme").await;
    for a in ["a@example.com", "ab@gmail.com"] {
        s.expect(
            "POST",
            "/suppressions/",
            &key,
            Some(json!({ "address": a })),
            201,
        )
        .await;
    }
    let spellings = [
        ("a+news@example.com", "a@example.com"),
        ("A.B@googlemail.com", "ab@gmail.com"),
        ("a.b+x@gmail.com", "ab@gmail.com"),
    ];
    for (spelling, _) in spellings {
        let a = s
            .expect(
                "GET",
                &format!("/suppressions/{spelling}/"),
                &key,
                None,
                404,
            )
            .await;
        assert_eq!(code(&a), "SUPPRESSION_NOT_FOUND", "{spelling}");
    }
    // Needs the signals API (`PUT /api/v1/signals/settings/`).
    let set = s
        .expect(
            "PUT",
            "/signals/settings/",
            &key,
            Some(json!({ "plus_addressing": true })),
            200,
        )
        .await;
    assert!(set.to_string().contains("plus_addressing"), "{set}");
    for (spelling, stored) in spellings {
        let a = s
            .expect(
                "GET",
                &format!("/suppressions/{spelling}/"),
                &key,
                None,
                200,
            )
            .await;
        assert_eq!(a["entry"]["address"], stored, "{spelling}: {a}");
        assert_eq!(a["plus_addressing"], true);
    }
    // Still conservative: other domains keep their dots, and no tag is not a match.
    s.expect("GET", "/suppressions/a.b@example.com/", &key, None, 404)
        .await;
    s.expect("GET", "/suppressions/b@example.com/", &key, None, 404)
        .await;
    // Removal goes by the stored address only.
    s.expect(
        "DELETE",
        "/suppressions/a+news@example.com/",
        &key,
        Some(json!({ "note": "wrong spelling" })),
        404,
    )
    .await;
    s.stop();
}

#[tokio::test]
async fn global_entries_are_the_operators_and_bind_every_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, _, a_key) = tenant_with_key(&s, "A").await;
    let (_, _, b_key) = tenant_with_key(&s, "B").await;

    // A tenant key cannot touch global scope.
    let refused = s
        .expect(
            "POST",
            "/suppressions/",
            &a_key,
            Some(json!({ "address": "g@example.com", "scope": "global" })),
            403,
        )
        .await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    for (method, path) in [
        ("GET", "/suppressions/?scope=global"),
        ("GET", "/suppressions/g@example.com/?scope=global"),
        ("GET", "/suppressions/export/?scope=global"),
    ] {
        let a = s.expect(method, path, &a_key, None, 403).await;
        assert_eq!(code(&a), "FORBIDDEN", "{path}");
    }

    // The operator adds one, naming no tenant.
    let (status, g) = s
        .rest(
            "POST",
            "/api/v1/suppressions/",
            Some(&s.operator),
            None,
            Some(json!({ "address": "G@example.com", "scope": "global", "reason": "complaint", "note": "spam trap" })),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["scope"], "global");
    assert_eq!(g["created_by"], "operator:operator");

    // Every tenant learns that it is suppressed, but not the entry.
    for key in [&a_key, &b_key] {
        let found = s
            .expect("GET", "/suppressions/g@example.com/", key, None, 200)
            .await;
        assert_eq!(found["globally_suppressed"], true, "{found}");
        assert_eq!(found["entry"], Value::Null, "{found}");
        assert_eq!(found["blocks_transactional"], true);
        assert!(!found.to_string().contains("spam trap"), "{found}");
        let own = s.expect("GET", "/suppressions/", key, None, 200).await;
        assert_eq!(own["total"], 0, "{own}");
        // Nor can a tenant remove it.
        let a = s
            .expect(
                "DELETE",
                "/suppressions/g@example.com/?scope=global",
                key,
                Some(json!({ "note": "mine now" })),
                403,
            )
            .await;
        assert_eq!(code(&a), "FORBIDDEN");
        s.expect(
            "DELETE",
            "/suppressions/g@example.com/",
            key,
            Some(json!({ "note": "mine now" })),
            404,
        )
        .await;
    }
    // The operator sees the entry itself.
    let (status, list) = s
        .rest(
            "GET",
            "/api/v1/suppressions/?scope=global",
            Some(&s.operator),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(addresses(&list), ["g@example.com"]);
    let (status, one) = s
        .rest(
            "GET",
            "/api/v1/suppressions/g@example.com/?scope=global",
            Some(&s.operator),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["entry"]["note"], "spam trap");

    // A tenant's own entry and the global one together.
    s.expect(
        "POST",
        "/suppressions/",
        &a_key,
        Some(json!({ "address": "g@example.com", "applies_to": "marketing" })),
        201,
    )
    .await;
    let both = s
        .expect("GET", "/suppressions/g@example.com/", &a_key, None, 200)
        .await;
    assert_eq!(both["entry"]["applies_to"], "marketing", "{both}");
    assert_eq!(both["globally_suppressed"], true);

    let (status, removed) = s
        .rest(
            "DELETE",
            "/api/v1/suppressions/g@example.com/?scope=global",
            Some(&s.operator),
            None,
            Some(json!({ "note": "not a trap after all" })),
        )
        .await;
    assert_eq!(status, 200, "{removed}");
    s.expect("GET", "/suppressions/g@example.com/", &b_key, None, 404)
        .await;
    let a_only = s
        .expect("GET", "/suppressions/g@example.com/", &a_key, None, 200)
        .await;
    assert_eq!(a_only["globally_suppressed"], false, "{a_only}");
    s.stop();
}

#[tokio::test]
async fn a_tenant_never_sees_or_removes_another_tenants_entries() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (a, _, a_key) = tenant_with_key(&s, "A").await;
    let (b, _, b_key) = tenant_with_key(&s, "B").await;
    s.expect(
        "POST",
        "/suppressions/",
        &a_key,
        Some(json!({ "address": "x@example.com", "note": "A's secret" })),
        201,
    )
    .await;
    // B gets exactly what it gets for an address nobody suppressed.
    let theirs = s
        .expect("GET", "/suppressions/x@example.com/", &b_key, None, 404)
        .await;
    let absent = s
        .expect("GET", "/suppressions/y@example.com/", &b_key, None, 404)
        .await;
    assert_eq!(theirs["error"]["code"], absent["error"]["code"]);
    assert_eq!(theirs["error"]["message"], absent["error"]["message"]);
    let del = s
        .expect(
            "DELETE",
            "/suppressions/x@example.com/",
            &b_key,
            Some(json!({ "note": "gone" })),
            404,
        )
        .await;
    assert_eq!(code(&del), "SUPPRESSION_NOT_FOUND");
    let hist = s
        .expect(
            "GET",
            "/suppressions/x@example.com/events/",
            &b_key,
            None,
            404,
        )
        .await;
    assert_eq!(code(&hist), "SUPPRESSION_NOT_FOUND");
    let list = s.expect("GET", "/suppressions/", &b_key, None, 200).await;
    assert_eq!(list["total"], 0);
    let (_, _, export) = raw(&s, "GET", "/suppressions/export/", &b_key, "", None).await;
    assert!(!export.contains("x@example.com"), "{export}");
    // Naming A with B's key is A not existing.
    let (status, named) = s
        .rest("GET", "/api/v1/suppressions/", Some(&b_key), Some(&a), None)
        .await;
    assert_eq!(status, 404, "{named}");
    assert_eq!(code(&named), "TENANT_NOT_FOUND");
    // The operator acts for the tenant it names.
    let (status, for_a) = s
        .rest(
            "GET",
            "/api/v1/suppressions/x@example.com/",
            Some(&s.operator),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, 200, "{for_a}");
    let (status, for_b) = s
        .rest(
            "GET",
            "/api/v1/suppressions/x@example.com/",
            Some(&s.operator),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, 404, "{for_b}");
    // A still has it.
    s.expect("GET", "/suppressions/x@example.com/", &a_key, None, 200)
        .await;
    s.stop();
}

#[tokio::test]
async fn bulk_adds_are_answered_per_entry() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, _, key) = tenant_with_key(&s, "Acme").await;
    s.expect(
        "POST",
        "/suppressions/",
        &key,
        Some(json!({ "address": "old@example.com" })),
        201,
    )
    .await;
    let answer = s
        .expect(
            "POST",
            "/suppressions/bulk/",
            &key,
            Some(json!({ "entries": [
            { "address": "one@example.com", "reason": "complaint" },
            { "address": "not an address" },
            { "address": "old@example.com" },
            { "address": "One@Example.com", "reason": "complaint" },
            { "address": "two@example.com", "scope": "global" },
            { "address": "three@example.com", "applies_to": "marketing" },
            "not an object",
        ] })),
            200,
        )
        .await;
    let outcomes: Vec<_> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        outcomes,
        [
            "recorded",
            "rejected",
            "unchanged",
            "unchanged",
            "rejected",
            "recorded",
            "rejected"
        ],
        "{answer}"
    );
    assert_eq!(answer["recorded"], 2);
    assert_eq!(answer["unchanged"], 2);
    assert_eq!(answer["rejected"], 3);
    assert_eq!(
        answer["results"][1]["error"]["details"]["fields"][0]["field"],
        "entries[1].address"
    );
    assert_eq!(answer["results"][4]["status"], 403);
    let list = s.expect("GET", "/suppressions/", &key, None, 200).await;
    assert_eq!(
        addresses(&list),
        ["old@example.com", "one@example.com", "three@example.com"]
    );
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({ "address": format!("u{i}@example.com") }))
        .collect();
    let a = s
        .expect(
            "POST",
            "/suppressions/bulk/",
            &key,
            Some(json!({ "entries": too_many })),
            422,
        )
        .await;
    assert_eq!(first_field(&a), "entries");
    let a = s
        .expect(
            "POST",
            "/suppressions/bulk/",
            &key,
            Some(json!({ "entries": [] })),
            422,
        )
        .await;
    assert_eq!(first_field(&a), "entries");
    s.stop();
}

fn csv_lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn csv_import_reports_bad_rows_by_line_and_export_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, _, a_key) = tenant_with_key(&s, "A").await;
    let (_, _, b_key) = tenant_with_key(&s, "B").await;
    let csv = "address,reason,applies_to,expires_at,note\n\
               Alice@Example.com,hard_bounce,,,\n\
               bob@example.com,unsubscribe,marketing,2099-01-01T00:00:00Z,\"asked, politely\"\n\
               not-an-address,manual,,,\n\
               carol@example.com\n\
               dave@example.com,bored,,,\n\
               erin@example.com,complaint,all,,\"said \"\"stop\"\"\"\n";
    let (status, report) = import(&s, &a_key, "/suppressions/import/", csv).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["imported"], 4, "{report}");
    assert_eq!(report["skipped"], 2, "{report}");
    let errors = report["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{report}");
    assert_eq!(errors[0]["line"], 4, "{report}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("address"),
        "{report}"
    );
    assert_eq!(errors[1]["line"], 6, "{report}");
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap_or("")
            .contains("reason"),
        "{report}"
    );
    let import_id = report["import_id"].as_str().expect("import id").to_string();

    // Progress, from the log.
    let progress = s
        .expect(
            "GET",
            &format!("/suppressions/import/{import_id}/"),
            &a_key,
            None,
            200,
        )
        .await;
    assert_eq!(progress["entries"], 4, "{progress}");
    assert_eq!(progress["chunks"], 1, "{progress}");
    let other = s
        .expect(
            "GET",
            &format!("/suppressions/import/{import_id}/"),
            &b_key,
            None,
            404,
        )
        .await;
    assert_eq!(code(&other), "SUPPRESSION_IMPORT_NOT_FOUND");

    // The entries are there, recorded as imported.
    let bob = s
        .expect("GET", "/suppressions/bob@example.com/", &a_key, None, 200)
        .await;
    assert_eq!(bob["entry"]["source"], "import", "{bob}");
    assert_eq!(bob["entry"]["note"], "asked, politely");
    assert_eq!(bob["entry"]["applies_to"], "marketing");
    s.expect("GET", "/suppressions/alice@example.com/", &a_key, None, 200)
        .await;

    // Export: the same columns, quoted where needed.
    let (status, ct, exported) = raw(&s, "GET", "/suppressions/export/", &a_key, "", None).await;
    assert_eq!(status, 200, "{exported}");
    assert!(ct.starts_with("text/csv"), "{ct}");
    let lines = csv_lines(&exported);
    assert_eq!(
        lines[0], "address,reason,applies_to,expires_at,note",
        "{exported}"
    );
    assert_eq!(lines.len(), 5, "{exported}");
    assert_eq!(lines[1], "alice@example.com,hard_bounce,all,,");
    assert!(
        lines[2].starts_with("bob@example.com,unsubscribe,marketing,2099-01-01T00:00:00"),
        "{exported}"
    );
    assert!(lines[2].ends_with(",\"asked, politely\""), "{exported}");
    assert_eq!(
        lines[4],
        "erin@example.com,complaint,all,,\"said \"\"stop\"\"\""
    );
    let filtered = raw(
        &s,
        "GET",
        "/suppressions/export/?reason=complaint",
        &a_key,
        "",
        None,
    )
    .await;
    assert_eq!(csv_lines(&filtered.2).len(), 2, "{}", filtered.2);

    // Round trip: B imports A's export and exports the same thing.
    let (status, again) = import(&s, &b_key, "/suppressions/import/", &exported).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["imported"], 4, "{again}");
    assert_eq!(again["skipped"], 0, "{again}");
    let (_, _, b_export) = raw(&s, "GET", "/suppressions/export/", &b_key, "", None).await;
    assert_eq!(b_export, exported);

    // A header the import does not know, no header, an empty body.
    for (body, field) in [
        ("email,reason\na@example.com,manual\n", "header"),
        ("reason\nmanual\n", "header"),
        ("", "body"),
    ] {
        let (status, a) = import(&s, &a_key, "/suppressions/import/", body).await;
        assert_eq!(status, 422, "{body:?}: {a}");
        assert_eq!(first_field(&a), field, "{a}");
    }
    // Only the address column is required.
    let (status, only) = import(
        &s,
        &a_key,
        "/suppressions/import/",
        "address\nzed@example.com\n",
    )
    .await;
    assert_eq!(status, 200, "{only}");
    assert_eq!(only["imported"], 1);
    // A tenant cannot import global entries.
    let (status, refused) = import(
        &s,
        &a_key,
        "/suppressions/import/?scope=global",
        "address\nq@example.com\n",
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    let unknown = s
        .expect(
            "GET",
            &format!("/suppressions/import/{}/", uuid::Uuid::now_v7()),
            &a_key,
            None,
            404,
        )
        .await;
    assert_eq!(code(&unknown), "SUPPRESSION_IMPORT_NOT_FOUND");
    s.stop();
}

#[tokio::test]
async fn the_graphql_surface() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, _, key) = tenant_with_key(&s, "Acme").await;
    let add = "mutation($i: SuppressionInput!) { addSuppression(input: $i) { recorded suppression { address reason appliesTo scope source createdBy active } } }";
    let d = s
        .ok(
            &key,
            add,
            json!({ "i": { "address": "Q@Example.com", "reason": "COMPLAINT" } }),
        )
        .await;
    assert_eq!(d["addSuppression"]["recorded"], true, "{d}");
    assert_eq!(
        d["addSuppression"]["suppression"]["address"],
        "q@example.com"
    );
    assert_eq!(d["addSuppression"]["suppression"]["reason"], "COMPLAINT");
    assert_eq!(d["addSuppression"]["suppression"]["appliesTo"], "ALL");
    assert_eq!(d["addSuppression"]["suppression"]["source"], "API");
    let d = s
        .ok(
            &key,
            add,
            json!({ "i": { "address": "q@example.com", "reason": "COMPLAINT" } }),
        )
        .await;
    assert_eq!(d["addSuppression"]["recorded"], false, "{d}");
    assert_eq!(
        s.err_code(
            &key,
            add,
            json!({ "i": { "address": "g@example.com", "scope": "GLOBAL" } })
        )
        .await,
        "FORBIDDEN"
    );
    assert_eq!(
        s.err_code(&key, add, json!({ "i": { "address": "nope" } }))
            .await,
        "VALIDATION_FAILED"
    );

    let bulk = s
        .ok(
            &key,
            "mutation($l: [SuppressionInput!]!) { addSuppressions(inputs: $l) { recorded unchanged rejected results { index outcome address error } } }",
            json!({ "l": [
                { "address": "r@example.com" },
                { "address": "bad" },
                { "address": "s@example.com", "appliesTo": "MARKETING" },
            ] }),
        )
        .await;
    assert_eq!(bulk["addSuppressions"]["recorded"], 2, "{bulk}");
    assert_eq!(bulk["addSuppressions"]["rejected"], 1);
    assert_eq!(
        bulk["addSuppressions"]["results"][1]["error"]["code"],
        "VALIDATION_FAILED"
    );

    let list = "query($f: SuppressionFilter, $n: Int, $a: String) { suppressions(filter: $f, first: $n, after: $a) { totalCount edges { cursor node { address } } pageInfo { hasNextPage } } }";
    let page = s.ok(&key, list, json!({ "n": 2 })).await;
    let conn = &page["suppressions"];
    assert_eq!(conn["totalCount"], 3, "{page}");
    assert_eq!(conn["edges"].as_array().map(Vec::len), Some(2));
    assert_eq!(conn["pageInfo"]["hasNextPage"], true);
    let cursor = conn["edges"][1]["cursor"].clone();
    let rest = s.ok(&key, list, json!({ "n": 2, "a": cursor })).await;
    assert_eq!(
        rest["suppressions"]["edges"][0]["node"]["address"], "s@example.com",
        "{rest}"
    );
    let marketing = s
        .ok(&key, list, json!({ "f": { "appliesTo": "MARKETING" } }))
        .await;
    assert_eq!(
        marketing["suppressions"]["edges"].as_array().map(Vec::len),
        Some(1),
        "{marketing}"
    );

    let one = "query($a: String!) { suppression(address: $a) { address globallySuppressed blocksTransactional entry { address reason } } }";
    let found = s.ok(&key, one, json!({ "a": "Q@example.com" })).await;
    assert_eq!(
        found["suppression"]["entry"]["reason"], "COMPLAINT",
        "{found}"
    );
    let none = s.ok(&key, one, json!({ "a": "nobody@example.com" })).await;
    assert_eq!(none["suppression"], Value::Null, "{none}");

    let remove = "mutation($a: String!, $n: String!) { removeSuppression(address: $a, note: $n) { address reason } }";
    assert_eq!(
        s.err_code(&key, remove, json!({ "a": "q@example.com", "n": "" }))
            .await,
        "VALIDATION_FAILED"
    );
    let removed = s
        .ok(
            &key,
            remove,
            json!({ "a": "q@example.com", "n": "resolved" }),
        )
        .await;
    assert_eq!(
        removed["removeSuppression"]["reason"], "COMPLAINT",
        "{removed}"
    );
    assert_eq!(
        s.err_code(&key, remove, json!({ "a": "q@example.com", "n": "again" }))
            .await,
        "SUPPRESSION_NOT_FOUND"
    );
    s.stop();
}
