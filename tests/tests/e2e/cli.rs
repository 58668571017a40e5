use serde_json::json;

use crate::support::{run, stderr, stdout, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_through_the_server_or_directly_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::start(d);

    // A second server on the same folder is refused clearly.
    let second = run(d, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("held by another process"),
        "{}",
        stderr(&second)
    );

    let o = run(d, &["tenant", "create", "--name", "Delta"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("working through its API"),
        "{}",
        stderr(&o)
    );
    let tenant = stdout(&o);
    uuid::Uuid::parse_str(&tenant).expect("prints the tenant id");

    let o = run(
        d,
        &["key", "issue", "--tenant", &tenant, "--label", "deploy"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let key = stdout(&o);
    assert!(key.starts_with("pl_"));
    let me = s.ok(&key, "{ tenant { name } }", json!({})).await;
    assert_eq!(me["tenant"]["name"], "Delta");

    let o = run(d, &["audit", "verify"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "OK: 2 events in 1 tenants verified");

    let o = run(d, &["projections", "rebuild"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rebuilt tenants: 2 events"),
        "{}",
        stdout(&o)
    );
    // The rebuilt model still authenticates the key.
    s.ok(&key, "{ tenant { name } }", json!({})).await;

    // Unknown tenant: a clear error and a non-zero exit.
    let o = run(
        d,
        &[
            "key",
            "issue",
            "--tenant",
            &uuid::Uuid::now_v7().to_string(),
            "--label",
            "x",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such tenant"), "{}", stderr(&o));

    s.stop();

    // Without a server, the same commands work directly on the folder.
    let o = run(d, &["audit", "verify", "--tenant", &tenant]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("working directly on the data folder"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "OK: 2 events in 1 tenants verified");
    let o = run(d, &["projections", "rebuild", "--name", "tenants"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("events/s"));
    let o = run(d, &["projections", "rebuild", "--name", "nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no projection is named nope"));
    let o = run(d, &["tenant", "create", "--name", "Echo"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Everything is still there after a restart, and the key still works.
    let s = Server::start(d);
    s.ok(&key, "{ tenant { name } }", json!({})).await;
    let all = s.ok(&s.operator, "{ tenants { name } }", json!({})).await;
    assert_eq!(all["tenants"].as_array().unwrap().len(), 2);
    s.stop();
}

#[test]
fn audit_verify_names_the_position_of_a_byte_altered_in_sled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["One", "Two", "Three"] {
        assert!(run(d, &["tenant", "create", "--name", name])
            .status
            .success());
    }
    let o = run(d, &["audit", "verify"]);
    assert_eq!(stdout(&o), "OK: 3 events in 3 tenants verified");
    {
        let db = sled::open(d).unwrap();
        let tree = db.open_tree("log").unwrap();
        let (key, record) = eventlog::record_location(&tree, 2)
            .unwrap()
            .expect("record 2 is stored");
        let mut v = tree.get(&key).unwrap().unwrap().to_vec();
        // A byte of the payload, near the end of record 2.
        v[record.end - 3] ^= 0x20;
        tree.insert(&key, v).unwrap();
        db.flush().unwrap();
    }
    let o = run(d, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).starts_with("BROKEN at position 2 "),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_folder_opened_with_another_pepper_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(dir.path(), &["tenant", "create", "--name", "Peppered"])
        .status
        .success());
    let other = "cd".repeat(32);
    let o = run(dir.path(), &["--pepper", &other, "audit", "verify"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("pepper is not the one"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stdout(&run(dir.path(), &["audit", "verify"])),
        "OK: 1 events in 1 tenants verified"
    );
}

#[test]
fn production_mode_refuses_the_generated_pepper() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &["serve", "--production", "--listen", "127.0.0.1:0"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("production mode needs a pepper"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn configuration_comes_from_a_file_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-file");
    let cfg = dir.path().join("postledger.toml");
    std::fs::write(
        &cfg,
        format!("data_dir = {:?}\npepper = \"{}\"\n", data, "ab".repeat(32)),
    )
    .unwrap();
    let o = std::process::Command::new(crate::support::BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "tenant",
            "create",
            "--name",
            "Filed",
        ])
        .env_remove("POSTLEDGER_DATA_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        data.join("db").exists(),
        "the data folder came from the file"
    );
    assert!(
        !data.join("secrets/pepper").exists(),
        "a configured pepper is not generated"
    );
    let flagged = dir.path().join("from-flag");
    let o = std::process::Command::new(crate::support::BIN)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            flagged.to_str().unwrap(),
            "tenant",
            "create",
            "--name",
            "Flagged",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(flagged.join("db").exists(), "the flag wins over the file");
    let o = std::process::Command::new(crate::support::BIN)
        .args(["--config", cfg.to_str().unwrap(), "audit", "verify"])
        .env("POSTLEDGER_DATA_DIR", &flagged)
        .output()
        .unwrap();
    assert_eq!(
        stdout(&o),
        "OK: 1 events in 1 tenants verified",
        "the environment wins over the file"
    );
    std::fs::write(&cfg, "colour = \"blue\"\n").unwrap();
    let o = std::process::Command::new(crate::support::BIN)
        .args(["--config", cfg.to_str().unwrap(), "audit", "verify"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid config file"), "{}", stderr(&o));
}
