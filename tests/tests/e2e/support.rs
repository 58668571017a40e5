use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_postledger-under-test");

/// A `postledger serve` child process on a free loopback port, killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub operator: String,
    pub http: reqwest::Client,
}

pub fn postledger(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--data-dir")
        .arg(dir)
        .env_remove("POSTLEDGER_PEPPER")
        .env_remove("POSTLEDGER_CONFIG");
    c
}

/// Runs a CLI subcommand to completion.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    postledger(dir).args(args).output().expect("run postledger")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        let _ = std::fs::remove_file(dir.join("server.json"));
        let child = postledger(dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(dir.join("server.json")) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    if v["pid"].as_u64() == Some(u64::from(child.id())) {
                        break v["url"].as_str().expect("url").to_string();
                    }
                }
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let operator = std::fs::read_to_string(dir.join("secrets/operator-token"))
            .expect("operator token file")
            .trim()
            .to_string();
        Server {
            child,
            url,
            operator,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped) and a valid
        // signal number has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait for server");
        assert!(status.success(), "the server exited with {status}");
    }

    /// POSTs a GraphQL request; returns the HTTP status and the JSON body.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json body"))
    }

    /// A GraphQL call that must succeed; returns `data`.
    pub async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let (status, body) = self.gql(Some(token), query, variables).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// A GraphQL call that must fail; returns the first error's `code` extension.
    pub async fn err_code(&self, token: &str, query: &str, variables: Value) -> String {
        let (status, body) = self.gql(Some(token), query, variables).await;
        assert_eq!(status, 200, "{body}");
        body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {body}"))
            .to_string()
    }

    pub async fn create_tenant(&self, name: &str) -> String {
        let d = self
            .ok(
                &self.operator,
                "mutation($n: String!) { createTenant(name: $n) { id name status } }",
                json!({ "n": name }),
            )
            .await;
        assert_eq!(d["createTenant"]["name"], name);
        assert_eq!(d["createTenant"]["status"], "ACTIVE");
        d["createTenant"]["id"].as_str().expect("id").to_string()
    }

    /// Issues a key with the operator token; returns (key id, secret).
    pub async fn issue_key(
        &self,
        tenant: &str,
        label: &str,
        expires_at: Option<String>,
    ) -> (String, String) {
        let d = self
            .ok(
                &self.operator,
                "mutation($t: ID, $l: String!, $e: DateTime) { issueApiKey(tenantId: $t, label: $l, expiresAt: $e) { apiKey { id label status } secret } }",
                json!({ "t": tenant, "l": label, "e": expires_at }),
            )
            .await;
        let k = &d["issueApiKey"];
        assert_eq!(k["apiKey"]["status"], "ACTIVE");
        (
            k["apiKey"]["id"].as_str().expect("id").to_string(),
            k["secret"].as_str().expect("secret").to_string(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The send pipeline: a server started with a configuration file, REST calls, tenants with
// a sender profile and relays, and waiting for a message to reach a status.

/// The sender profile every [`setup_tenant`] creates.
pub const SENDER: &str = "news@example.test";

impl Server {
    /// Writes `<dir>/postledger.toml` and starts the server with `--config <that file>`.
    pub fn start_with(dir: &Path, config_toml: &str) -> Server {
        Server::launch(dir, config_toml, Stdio::null(), &[])
    }

    /// Like [`Server::start_with`], with the server's stderr appended to `stderr_file` and
    /// extra environment variables (e.g. `POSTLEDGER_LOG`).
    pub fn start_logged(
        dir: &Path,
        config_toml: &str,
        stderr_file: &Path,
        env: &[(&str, &str)],
    ) -> Server {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_file)
            .expect("open the server's stderr file");
        Server::launch(dir, config_toml, Stdio::from(file), env)
    }

    fn launch(dir: &Path, config_toml: &str, stderr: Stdio, env: &[(&str, &str)]) -> Server {
        let config = dir.join("postledger.toml");
        std::fs::write(&config, config_toml).expect("write postledger.toml");
        let _ = std::fs::remove_file(dir.join("server.json"));
        let mut cmd = postledger(dir);
        cmd.arg("--config")
            .arg(&config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("POSTLEDGER_LOG")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn server");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(dir.join("server.json")) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    if v["pid"].as_u64() == Some(u64::from(child.id())) {
                        break v["url"].as_str().expect("url").to_string();
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the server exited with {status} before it started");
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(25));
        };
        let operator = std::fs::read_to_string(dir.join("secrets/operator-token"))
            .expect("operator token file")
            .trim()
            .to_string();
        Server {
            child,
            url,
            operator,
            http: reqwest::Client::new(),
        }
    }

    /// A REST call with a JSON body (or none); see [`Server::rest_raw`].
    pub async fn rest(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        tenant: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| serde_json::to_vec(&b).expect("encode body"));
        self.rest_raw(method, path, token, tenant, &[], body).await
    }

    /// A REST call: `token` as `Authorization: Bearer`, `tenant` as `Postledger-Tenant`,
    /// extra headers, raw body bytes (sent as `application/json`). Returns the status and
    /// the JSON answer (`Null` for an empty body, a string for a body that is not JSON).
    pub async fn rest_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        tenant: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(t) = tenant {
            req = req.header("Postledger-Tenant", t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: request failed: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("read the answer");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    /// A call under `/api/v1` with an API key; returns the status and the answer.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.rest(method, &format!("/api/v1{path}"), Some(key), None, body)
            .await
    }

    /// A call under `/api/v1` that must answer `status`; returns the answer.
    pub async fn expect(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let (got, answer) = self.api(method, path, key, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        answer
    }

    /// POST /api/v1/messages/send/ with the key; returns the status and the answer.
    pub async fn send(&self, key: &str, body: Value) -> (u16, Value) {
        self.rest(
            "POST",
            "/api/v1/messages/send/",
            Some(key),
            None,
            Some(body),
        )
        .await
    }

    /// Sends a message that must be accepted (202); returns its id.
    pub async fn send_ok(&self, key: &str, body: Value) -> String {
        let (status, answer) = self.send(key, body.clone()).await;
        assert_eq!(status, 202, "send {body} answered {answer}");
        assert_eq!(answer["status"], "queued", "{answer}");
        assert_eq!(answer["duplicate"], false, "{answer}");
        answer["id"].as_str().expect("id").to_string()
    }

    /// GET /api/v1/messages/{id}/ that must succeed.
    pub async fn message(&self, key: &str, id: &str) -> Value {
        let (status, body) = self
            .rest(
                "GET",
                &format!("/api/v1/messages/{id}/"),
                Some(key),
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "GET message {id}: {body}");
        body
    }

    /// The message's timeline (`events` of GET /api/v1/messages/{id}/events/).
    pub async fn timeline(&self, key: &str, id: &str) -> Vec<Value> {
        let (status, body) = self
            .rest(
                "GET",
                &format!("/api/v1/messages/{id}/events/"),
                Some(key),
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "GET events of {id}: {body}");
        assert_eq!(body["message_id"], id, "{body}");
        body["events"].as_array().expect("events").clone()
    }
}

/// Creates a tenant with an API key, the sender profile [`SENDER`] ("News") and the given
/// relays `(name, port, priority)` on 127.0.0.1 without TLS. Returns (tenant id, key).
pub async fn setup_tenant(server: &Server, relays: &[(&str, u16, u32)]) -> (String, String) {
    let name = format!("T-{}", uuid::Uuid::new_v4().simple());
    let tenant = server.create_tenant(&name).await;
    let (_, key) = server.issue_key(&tenant, "send tests", None).await;
    let (status, body) = server
        .rest(
            "POST",
            "/api/v1/senders/",
            Some(&key),
            None,
            Some(json!({ "email": SENDER, "name": "News" })),
        )
        .await;
    assert_eq!(status, 201, "create sender: {body}");
    assert_eq!(body["email"], SENDER, "{body}");
    for (name, port, priority) in relays {
        let (status, body) = server
            .rest(
                "POST",
                "/api/v1/relays/",
                Some(&key),
                None,
                Some(json!({
                    "name": name,
                    "host": "127.0.0.1",
                    "port": port,
                    "tls": "none",
                    "priority": priority,
                })),
            )
            .await;
        assert_eq!(status, 201, "create relay {name}: {body}");
        assert_eq!(body["name"], *name, "{body}");
    }
    (tenant, key)
}

/// Polls GET /api/v1/messages/{id}/ every 50 ms until its status is `status`; returns the
/// message. Panics after `timeout`, or at once when it reached another final status.
pub async fn wait_status(
    server: &Server,
    key: &str,
    id: &str,
    status: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let m = server.message(key, id).await;
        let now = m["status"].as_str().unwrap_or_default().to_string();
        if now == status {
            return m;
        }
        if ["sent", "failed", "cancelled"].contains(&now.as_str()) {
            let events = server.timeline(key, id).await;
            panic!(
                "message {id} ended {now}, expected {status}: {m:#}\ntimeline: {:#}",
                Value::Array(events)
            );
        }
        if Instant::now() >= deadline {
            let events = server.timeline(key, id).await;
            panic!(
                "message {id} is still {now} after {timeout:?}, expected {status}: {m:#}\n\
                 timeline: {:#}",
                Value::Array(events)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `error.code` of an answer (`<no code>` when it is not an error).
pub fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or("<no code>")
}
