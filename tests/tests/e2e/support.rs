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
