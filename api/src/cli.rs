//! The `postledger` command line.
//!
//! Only one process can open a sled database. A subcommand that needs the data works
//! directly on the folder when no process holds it, and through the running server's API
//! (with the operator token from the folder) when the server holds it; it says which.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::{open_log, App};
use crate::auth::Principal;
use crate::config::{Config, Overrides};
use crate::error::HttpError;
use crate::server;
use crate::service::{self, Ctx};

#[derive(Parser, Debug)]
#[command(
    name = "postledger",
    version,
    about = "Postledger: an event-sourced control plane for outbound email"
)]
pub struct Cli {
    /// Data folder (log, read models, secrets).
    #[arg(long, global = true, env = "POSTLEDGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (TOML); `./postledger.toml` is read when present.
    #[arg(long, global = true, env = "POSTLEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Server pepper, 64 hex characters (keys API key hashes and payload digests).
    #[arg(long, global = true, env = "POSTLEDGER_PEPPER", hide_env_values = true)]
    pub pepper: Option<String>,
    /// Master key, 64 hex characters (seals relay passwords and callback secrets).
    #[arg(
        long,
        global = true,
        env = "POSTLEDGER_MASTER_KEY",
        hide_env_values = true
    )]
    pub master_key: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the server.
    Serve {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, env = "POSTLEDGER_LISTEN")]
        listen: Option<String>,
        /// Refuse development defaults such as a generated pepper.
        #[arg(long, env = "POSTLEDGER_PRODUCTION")]
        production: bool,
    },
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Queues a ready .eml file as a message of a tenant (its From must be one of the
    /// tenant's sender profiles).
    Send {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        eml: PathBuf,
        /// Makes a retried command queue the message once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Messages: the queue and each message's timeline.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
    /// Benchmarks; each prints one JSON object on stdout.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Prints the GraphQL schema (SDL).
    Schema,
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Creates a tenant and prints its id.
    Create {
        #[arg(long)]
        name: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Role {
    Sender,
    Approver,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Issues an API key and prints its secret, once.
    Issue {
        #[arg(long)]
        tenant: Uuid,
        #[arg(long)]
        label: String,
        #[arg(long, value_enum, default_value = "sender")]
        role: Role,
        /// RFC 3339 time after which the key stops working.
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walks the hash chains and reports OK with the count, or the first break.
    Verify {
        #[arg(long)]
        tenant: Option<Uuid>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProjectionsCommand {
    /// Drops read models and rebuilds them from the log.
    Rebuild {
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MessagesCommand {
    /// Lists messages, newest first.
    List {
        #[arg(long)]
        tenant: Uuid,
        /// queued, deferred, sent, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Shows one message and its timeline from the log.
    Show {
        #[arg(long)]
        tenant: Uuid,
        id: Uuid,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// The send pipeline end to end: a server child process, an SMTP sink, HTTP load.
    Send {
        /// Messages sent and delivered before the measured phases, so that the log holds
        /// `preload + c1 + c64` messages (100,000 by default) when memory is read.
        #[arg(long, default_value_t = 78_000)]
        preload: usize,
        /// Sends made one at a time (latency).
        #[arg(long, default_value_t = 2_000)]
        c1: usize,
        /// Sends made by 64 concurrent clients (throughput).
        #[arg(long, default_value_t = 20_000)]
        c64: usize,
        /// `auto` (Postfix smtp-sink if installed, else aiosmtpd), `smtp-sink` or `aiosmtpd`.
        #[arg(long, default_value = "auto")]
        sink: String,
        /// Run the same workload against another product instead: `host:port` of its SMTP
        /// listener, which must relay to the sink (see `--sink-port`).
        #[arg(long)]
        target: Option<String>,
        /// With `--target`: its (master) process id, for CPU and peak memory.
        #[arg(long, requires = "target")]
        target_pid: Option<u32>,
        /// With `--target`: the sink's port (0 picks a free one and prints it).
        #[arg(long, default_value_t = 0, requires = "target")]
        sink_port: u16,
    },
    /// Render throughput of a realistic template (subject, HTML with a loop and
    /// conditionals, text) on one core.
    Templates {
        /// How long to render, in seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Durable append rate and latency, replay and verify rates, in a fresh folder.
    Eventlog {
        /// Appends made by the single appender.
        #[arg(long, default_value_t = 5_000)]
        c1_appends: usize,
        /// Events appended by the 64 concurrent appenders.
        #[arg(long, default_value_t = 100_000)]
        c64_events: usize,
        /// Where to put the benchmark's data folder (a fresh temporary one by default).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Suppression CSV import rate (durable, and until the read model caught up) and
    /// look-up latency, in a fresh folder.
    Suppressions {
        /// Distinct addresses in the imported CSV.
        #[arg(long, default_value_t = 1_000_000)]
        entries: usize,
        /// sled's page cache for the run (the `cache_mb` setting): sized to hold the
        /// suppression read model, as a deployment with that many entries would be.
        #[arg(long, default_value_t = 1024)]
        cache_mb: u64,
        /// Where to put the benchmark's data folder (a fresh temporary one by default).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTLEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,api=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postledger: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(crate::server::BLOCKING_THREADS)
        .enable_all()
        .build()?)
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut overrides = Overrides {
        config: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        pepper: cli.pepper.clone(),
        master_key: cli.master_key.clone(),
        ..Overrides::default()
    };
    match cli.command {
        Command::Serve { listen, production } => {
            overrides.listen = listen;
            overrides.production = production;
            let config = Config::load(&overrides)?;
            runtime()?.block_on(server::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            print!("{}", crate::graphql::schema(None).sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Send {
                    preload,
                    c1,
                    c64,
                    sink,
                    target,
                    target_pid,
                    sink_port,
                },
        } => {
            let report = match target {
                Some(smtp) => {
                    let target = crate::bench_send::Target {
                        smtp,
                        pid: target_pid,
                        sink_port,
                    };
                    crate::bench_send::external(preload, c1, c64, &sink, &target)?
                }
                None => crate::bench_send::send(preload, c1, c64, &sink)?,
            };
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Templates { seconds },
        } => {
            let report = templating::bench::run(std::time::Duration::from_secs(seconds.max(1)));
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Eventlog {
                    c1_appends,
                    c64_events,
                    dir,
                },
        } => {
            let report = crate::bench::eventlog(c1_appends, c64_events, dir)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Suppressions {
                    entries,
                    cache_mb,
                    dir,
                },
        } => {
            let report = crate::bench_suppressions::run(entries, cache_mb, dir)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant { command } => with_target(&overrides, |t| Box::pin(tenant(t, command))),
        Command::Key { command } => with_target(&overrides, |t| Box::pin(key(t, command))),
        Command::Audit { command } => with_target(&overrides, |t| Box::pin(audit(t, command))),
        Command::Projections { command } => {
            with_target(&overrides, |t| Box::pin(projections(t, command)))
        }
        Command::Send {
            tenant,
            eml,
            idempotency_key,
        } => {
            let bytes =
                std::fs::read(&eml).with_context(|| format!("cannot read {}", eml.display()))?;
            let request = crate::eml::send_request(&bytes)?;
            with_target(&overrides, |t| {
                Box::pin(send(t, tenant, request, idempotency_key))
            })
        }
        Command::Messages { command } => {
            with_target(&overrides, |t| Box::pin(messages(t, command)))
        }
    }
}

/// Where a subcommand's work happens.
// One Target lives per process run; boxing the config would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Target {
    Direct {
        config: Config,
        log: eventlog::EventLog,
    },
    Server(Remote),
}

struct Remote {
    url: String,
    token: String,
    client: reqwest::Client,
}

impl Remote {
    async fn graphql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let resp = self
            .client
            .post(format!("{}/graphql", self.url))
            .bearer_auth(&self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.url))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .context("the server answered with no JSON")?;
        if let Some(err) = body.get("error") {
            bail!(
                "the server refused ({status}): {}",
                err["message"].as_str().unwrap_or("?")
            );
        }
        if let Some(err) = body.get("errors").and_then(|e| e.get(0)) {
            bail!(
                "{} ({})",
                err["message"].as_str().unwrap_or("?"),
                err["extensions"]["code"].as_str().unwrap_or("ERROR")
            );
        }
        Ok(body["data"].clone())
    }
}

impl Remote {
    /// A REST call as the operator acting for `tenant`; an error body becomes an error.
    async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        tenant: Uuid,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("Postledger-Tenant", tenant.to_string());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.url))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .context("the server answered with no JSON")?;
        if let Some(err) = body.get("error") {
            bail!(
                "the server refused ({status}, {}): {} {}",
                err["code"].as_str().unwrap_or("ERROR"),
                err["message"].as_str().unwrap_or("?"),
                if err["details"].is_null() {
                    String::new()
                } else {
                    err["details"].to_string()
                }
            );
        }
        Ok(body)
    }
}

type TargetFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<ExitCode>> + 'a>>;

fn with_target(
    o: &Overrides,
    f: impl for<'a> FnOnce(&'a Target) -> TargetFuture<'a>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(o)?;
    let rt = runtime()?;
    let target = match open_log(&config) {
        Ok(log) => {
            eprintln!(
                "postledger: working directly on the data folder {} (no server holds it)",
                config.data_dir.display()
            );
            Target::Direct { config, log }
        }
        Err(eventlog::Error::Locked) => {
            // A server that is starting holds the lock a moment before it records itself.
            let mut record = server::read_server_record(&config.data_dir);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while record.is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                record = server::read_server_record(&config.data_dir);
            }
            let Some(record) = record else {
                bail!("the data folder {} is held by another process, and no running server is recorded in it", config.data_dir.display());
            };
            let token = crate::secrets::read_operator_token(&config.data_dir)?;
            eprintln!(
                "postledger: the server (pid {}) holds {}; working through its API at {}",
                record.pid,
                config.data_dir.display(),
                record.url
            );
            Target::Server(Remote {
                url: record.url,
                token,
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(600))
                    .build()?,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let code = rt.block_on(f(&target))?;
    drop(target);
    Ok(code)
}

fn operator_ctx() -> Ctx {
    Ctx {
        principal: Principal::Operator,
        correlation_id: Uuid::now_v7(),
    }
}

fn started(config: &Config, log: &eventlog::EventLog) -> anyhow::Result<App> {
    Ok(App::start(log.clone(), config)?)
}

async fn tenant(target: &Target, command: TenantCommand) -> anyhow::Result<ExitCode> {
    let TenantCommand::Create { name } = command;
    let id = match target {
        Target::Direct { config, log } => {
            let app = started(config, log)?;
            service::create_tenant(&app, &operator_ctx(), &name)
                .await
                .map_err(HttpError)?
                .id
                .to_string()
        }
        Target::Server(r) => {
            let data = r
                .graphql(
                    "mutation($name: String!) { createTenant(name: $name) { id } }",
                    json!({ "name": name }),
                )
                .await?;
            data["createTenant"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    eprintln!("postledger: created tenant {name:?}");
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

async fn key(target: &Target, command: KeyCommand) -> anyhow::Result<ExitCode> {
    let KeyCommand::Issue {
        tenant,
        label,
        role,
        expires_at,
    } = command;
    let (id, secret) = match target {
        Target::Direct { config, log } => {
            let app = started(config, log)?;
            let role = match role {
                Role::Sender => domain::ApiKeyRole::Sender,
                Role::Approver => domain::ApiKeyRole::Approver,
            };
            let (view, secret) = service::issue_api_key(
                &app,
                &operator_ctx(),
                Some(tenant),
                &label,
                role,
                expires_at,
            )
            .await
            .map_err(HttpError)?;
            (view.id.to_string(), secret)
        }
        Target::Server(r) => {
            let role = match role {
                Role::Sender => "SENDER",
                Role::Approver => "APPROVER",
            };
            let data = r
                .graphql(
                    "mutation($t: ID, $l: String!, $r: ApiKeyRole, $e: DateTime) { issueApiKey(tenantId: $t, label: $l, role: $r, expiresAt: $e) { apiKey { id } secret } }",
                    json!({ "t": tenant.to_string(), "l": label, "r": role, "e": expires_at }),
                )
                .await?;
            (
                data["issueApiKey"]["apiKey"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                data["issueApiKey"]["secret"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    eprintln!(
        "postledger: issued API key {id} for tenant {tenant}; its secret is shown once, below"
    );
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}

async fn audit(target: &Target, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify { tenant } = command;
    let report: Value = match target {
        Target::Direct { log, .. } => {
            let log = log.clone();
            let r = tokio::task::spawn_blocking(move || log.verify(tenant)).await??;
            match r {
                eventlog::VerifyReport::Ok { events, tenants } => {
                    json!({ "ok": true, "events": events, "tenants": tenants })
                }
                eventlog::VerifyReport::Broken {
                    position,
                    tenant,
                    tenant_seq,
                    reason,
                } => json!({
                    "ok": false, "brokenAt": position, "brokenTenant": tenant.map(|t| t.to_string()),
                    "brokenSequence": tenant_seq, "reason": reason
                }),
            }
        }
        Target::Server(r) => {
            let data = r
                .graphql(
                    "query($t: ID) { verifyAudit(tenantId: $t) { ok events tenants brokenAt brokenTenant brokenSequence reason } }",
                    json!({ "t": tenant.map(|t| t.to_string()) }),
                )
                .await?;
            data["verifyAudit"].clone()
        }
    };
    if report["ok"].as_bool() == Some(true) {
        println!(
            "OK: {} events in {} tenants verified",
            report["events"], report["tenants"]
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "BROKEN at position {} (tenant {}, sequence {}): {}",
            report["brokenAt"],
            report["brokenTenant"].as_str().unwrap_or("?"),
            report["brokenSequence"],
            report["reason"].as_str().unwrap_or("?")
        );
        Ok(ExitCode::FAILURE)
    }
}

fn progress_bar(total: u64, name: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {name}"));
    bar
}

async fn projections(target: &Target, command: ProjectionsCommand) -> anyhow::Result<ExitCode> {
    let ProjectionsCommand::Rebuild { name } = command;
    let reports: Vec<Value> = match target {
        Target::Direct { log, .. } => {
            let projectors = match &name {
                Some(n) => vec![projections::by_name(n)
                    .with_context(|| format!("no projection is named {n}"))?],
                None => projections::all(),
            };
            let mut out = Vec::new();
            for p in projectors {
                let log = log.clone();
                let report = tokio::task::spawn_blocking(move || {
                    let bar = progress_bar(log.head(), p.name());
                    let r = projections::rebuild_offline(&log, p.as_ref(), |done, _| {
                        bar.set_position(done)
                    });
                    bar.finish_and_clear();
                    r
                })
                .await??;
                out.push(json!({ "name": report.name, "events": report.events, "seconds": report.seconds, "eventsPerSecond": report.events_per_s }));
            }
            out
        }
        Target::Server(r) => {
            let status = r
                .graphql("{ projections { name head } }", json!({}))
                .await?;
            let head = status["projections"][0]["head"].as_u64().unwrap_or(0);
            let bar = progress_bar(head, name.as_deref().unwrap_or("all"));
            let rebuild = r.graphql(
                "mutation($n: String) { rebuildProjections(name: $n) { name events seconds eventsPerSecond } }",
                json!({ "n": name }),
            );
            tokio::pin!(rebuild);
            let data = loop {
                tokio::select! {
                    d = &mut rebuild => break d?,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if let Ok(s) = r.graphql("{ projections { name checkpoint } }", json!({})).await {
                            let min = s["projections"].as_array().into_iter().flatten()
                                .filter(|p| name.as_deref().is_none_or(|n| p["name"] == n))
                                .filter_map(|p| p["checkpoint"].as_u64()).min().unwrap_or(0);
                            bar.set_position(min);
                        }
                    }
                }
            };
            bar.finish_and_clear();
            data["rebuildProjections"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    for r in reports {
        println!(
            "rebuilt {}: {} events in {:.3} s ({:.0} events/s)",
            r["name"].as_str().unwrap_or("?"),
            r["events"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["eventsPerSecond"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn send(
    target: &Target,
    tenant: Uuid,
    request: crate::sending::SendRequest,
    idempotency_key: Option<String>,
) -> anyhow::Result<ExitCode> {
    let receipt: Value = match target {
        Target::Direct { config, log } => {
            let app = started(config, log)?;
            let r = crate::sending::send(
                &app,
                &operator_ctx(),
                Some(tenant),
                request,
                idempotency_key,
            )
            .await
            .map_err(HttpError)?;
            eprintln!("postledger: queued; a running server will dispatch it");
            serde_json::to_value(r)?
        }
        Target::Server(r) => {
            let mut body = serde_json::to_value(&request)?;
            if let Some(k) = idempotency_key {
                body["idempotency_key"] = json!(k);
            }
            r.rest(
                reqwest::Method::POST,
                "/api/v1/messages/send/",
                tenant,
                Some(body),
            )
            .await?
        }
    };
    println!("{}", receipt["id"].as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

fn print_message_line(m: &Value) {
    println!(
        "{}  {:<9}  {}  {}  {}",
        m["id"].as_str().unwrap_or("?"),
        m["status"].as_str().unwrap_or("?"),
        m["queued_at"].as_str().unwrap_or("?"),
        m["from"].as_str().unwrap_or("?"),
        m["subject"].as_str().unwrap_or("")
    );
}

async fn messages(target: &Target, command: MessagesCommand) -> anyhow::Result<ExitCode> {
    match command {
        MessagesCommand::List {
            tenant,
            status,
            tag,
            limit,
        } => {
            let list: Vec<Value> = match target {
                Target::Direct { config, log } => {
                    let app = started(config, log)?;
                    app.projections
                        .wait_for(log.head(), Duration::from_secs(60))
                        .await;
                    let filter = projections::messages::MessageFilter {
                        status,
                        tag,
                        ..Default::default()
                    };
                    crate::sending::list_messages(
                        &app,
                        &operator_ctx(),
                        Some(tenant),
                        &filter,
                        None,
                        limit,
                    )
                    .map_err(HttpError)?
                    .items
                    .iter()
                    .map(crate::sending::message_json)
                    .collect()
                }
                Target::Server(r) => {
                    let mut path = format!("/api/v1/messages/?limit={}", limit.clamp(1, 100));
                    if let Some(s) = status {
                        path.push_str(&format!("&status={s}"));
                    }
                    if let Some(t) = tag {
                        path.push_str(&format!("&tag={t}"));
                    }
                    let body = r.rest(reqwest::Method::GET, &path, tenant, None).await?;
                    body["data"].as_array().cloned().unwrap_or_default()
                }
            };
            for m in &list {
                print_message_line(m);
            }
            eprintln!("postledger: {} message(s)", list.len());
        }
        MessagesCommand::Show { tenant, id } => {
            let (message, events): (Value, Value) = match target {
                Target::Direct { config, log } => {
                    let app = started(config, log)?;
                    let ctx = operator_ctx();
                    app.projections
                        .wait_for(log.head(), Duration::from_secs(60))
                        .await;
                    let m = crate::sending::get_message(&app, &ctx, Some(tenant), id)
                        .await
                        .map_err(HttpError)?;
                    let e = crate::sending::message_events(&app, &ctx, Some(tenant), id)
                        .await
                        .map_err(HttpError)?;
                    (crate::sending::message_json(&m), serde_json::to_value(e)?)
                }
                Target::Server(r) => {
                    let m = r
                        .rest(
                            reqwest::Method::GET,
                            &format!("/api/v1/messages/{id}/"),
                            tenant,
                            None,
                        )
                        .await?;
                    let e = r
                        .rest(
                            reqwest::Method::GET,
                            &format!("/api/v1/messages/{id}/events/"),
                            tenant,
                            None,
                        )
                        .await?;
                    (m, e["events"].clone())
                }
            };
            print_message_line(&message);
            for e in events.as_array().into_iter().flatten() {
                println!(
                    "  #{:<4} {}  {:<18} {}  ({})",
                    e["version"],
                    e["at"].as_str().unwrap_or("?"),
                    e["type"].as_str().unwrap_or("?"),
                    e["summary"].as_str().unwrap_or(""),
                    e["actor"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
