//! `postledger bench send`: the send pipeline measured end to end, as a user sees it.
//!
//! A real server (this binary, `serve`, as a child process on a fresh folder) and a real
//! SMTP sink (Postfix's `smtp-sink` when installed, else aiosmtpd's `tests/smtp_sink.py`).
//! The load comes over HTTP on loopback from this process, messages of about 2 KB (text
//! and HTML) with one recipient each. First a preload, sent and delivered unmeasured, so
//! that the log holds 100,000 messages by the end (memory is read then). Then the measured
//! messages, every one scheduled for one moment `T` after the accept phases end, so the
//! accept figures are not disturbed by delivery and the delivery figure is the rate at
//! which the backlog leaves at `T`. CPU counts from the end of the preload.
//! CPU and peak memory are the server's own (`/proc/<pid>`), not this load generator's.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::bench::{per_s, percentile};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of a process, in milliseconds.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    cpu_fields_ms(pid, &[11, 12])
}

/// utime + stime of a process and of its children that it has waited for (a
/// multi-process MTA's master reaps its workers), in milliseconds.
fn cpu_with_children_ms(pid: u32) -> anyhow::Result<f64> {
    cpu_fields_ms(pid, &[11, 12, 13, 14])
}

fn cpu_fields_ms(pid: u32, which: &[usize]) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks_used: f64 = which
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum();
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[allow(clippy::cast_precision_loss)]
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Ok(ticks_used * 1000.0 / ticks)
}

fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn find_smtp_sink() -> Option<PathBuf> {
    ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A running SMTP sink and how to count what it accepted.
struct Sink {
    _proc: Proc,
    port: u16,
    name: String,
    /// smtp-sink's own counter (its `-c` output), or the aiosmtpd sink's files.
    count: SinkCount,
}

enum SinkCount {
    Counter(Arc<AtomicU64>),
    Files(PathBuf),
}

impl Sink {
    /// Messages the sink has accepted so far.
    fn accepted(&self) -> u64 {
        match &self.count {
            SinkCount::Counter(n) => n.load(Ordering::Relaxed),
            SinkCount::Files(dir) => std::fs::read_dir(dir).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .count() as u64
            }),
        }
    }
}

/// Follows smtp-sink's `-c` output (`sess=N quit=N mesg=N\r`, rewritten in place).
fn count_from(stdout: std::process::ChildStdout, n: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut field = Vec::new();
        while std::io::BufRead::read_until(&mut reader, b'\r', &mut field).is_ok_and(|r| r > 0) {
            let text = String::from_utf8_lossy(&field);
            if let Some(m) = text
                .split_whitespace()
                .find_map(|f| f.strip_prefix("mesg="))
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                n.store(m, Ordering::Relaxed);
            }
            field.clear();
        }
    });
}

/// Starts an SMTP sink on loopback, on `port` (0 picks a free one).
fn start_sink(kind: &str, dir: &Path, port: u16) -> anyhow::Result<Sink> {
    let port = if port == 0 { free_port()? } else { port };
    let want_postfix = kind == "smtp-sink" || kind == "auto";
    if want_postfix {
        if let Some(bin) = find_smtp_sink() {
            let mut cmd = Command::new(bin);
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                cmd.args(["-u", "nobody"]);
            }
            let mut child = cmd
                .args(["-c", &format!("127.0.0.1:{port}"), "1024"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start smtp-sink")?;
            let n = Arc::new(AtomicU64::new(0));
            count_from(child.stdout.take().context("no stdout")?, n.clone());
            return Ok(Sink {
                _proc: Proc(child),
                port,
                name: "postfix smtp-sink".into(),
                count: SinkCount::Counter(n),
            });
        }
        if kind == "smtp-sink" {
            bail!("smtp-sink is not installed (Debian package postfix)");
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/smtp_sink.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--dir"])
        .arg(dir)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the aiosmtpd sink")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    if line.trim() != format!("PORT {port}") {
        bail!("the aiosmtpd sink did not start on port {port}");
    }
    Ok(Sink {
        _proc: Proc(child),
        port,
        name: "aiosmtpd".into(),
        count: SinkCount::Files(dir.to_path_buf()),
    })
}

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        tenant: Option<&str>,
        body: Value,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body);
        if let Some(t) = tenant {
            req = req.header("Postledger-Tenant", t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path} answered {status}: {v}");
        }
        Ok(v)
    }

    /// A send of an already serialized request. The measured phases use it, so that the
    /// load generator's own JSON work does not compete with the server for the two cores.
    async fn send_prepared(&self, token: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/api/v1/messages/send/", self.url))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.bytes().await.unwrap_or_default();
        if status != reqwest::StatusCode::ACCEPTED {
            bail!("send answered {status}: {}", String::from_utf8_lossy(&text));
        }
        Ok(())
    }
}

/// Messages `range`, serialized before a phase starts.
fn prepared(range: std::ops::Range<usize>, due: Option<DateTime<Utc>>) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        range
            .map(|i| serde_json::to_vec(&message(i, due)).unwrap_or_default())
            .collect(),
    )
}

/// Message `i`'s subject, text and HTML: about 2 KB, like a receipt.
fn receipt(i: usize) -> (String, String, String) {
    let lines: String = (1..=6)
        .map(|n| format!("<tr><td>{n} x Widget model {n}</td><td>{n}0.00 EUR</td></tr>"))
        .collect();
    let text_lines: String = (1..=6)
        .map(|n| format!("{n} x Widget model {n} .......... {n}0.00 EUR\n"))
        .collect();
    let text = format!(
        "Hello,\n\nThank you for your order #{i}. Your receipt is below.\n\n{text_lines}\n\
         Total: 210.00 EUR\n\nQuestions? Reply to this message and we will help.\n\n\
         The Widget Company, 1 Example Street, Exampletown\n"
    );
    let html = format!(
        "<html><body><p>Hello,</p><p>Thank you for your order <b>#{i}</b>. Your receipt \
         is below.</p><table style=\"border-collapse:collapse;width:100%\">{lines}\
         <tr><td><b>Total</b></td><td><b>210.00 EUR</b></td></tr></table><p>Questions? \
         Reply to this message and we will help.</p><p style=\"color:#888;font-size:12px\">\
         The Widget Company, 1 Example Street, Exampletown</p></body></html>"
    );
    (format!("Your receipt #{i}"), text, html)
}

const FROM: &str = "receipts@bench.example";

fn recipient(i: usize) -> String {
    format!("customer{}@example.com", i % 1000)
}

/// Message `i` as a send request, due at `due` (else now).
fn message(i: usize, due: Option<DateTime<Utc>>) -> Value {
    let (subject, text, html) = receipt(i);
    let mut m = json!({
        "from": FROM,
        "to": [{"email": recipient(i), "name": "A Customer"}],
        "subject": subject,
        "text": text,
        "html": html,
        "tags": ["receipt"],
        "metadata": {"order": i},
    });
    if let Some(due) = due {
        m["scheduled_at"] = json!(due.to_rfc3339());
    }
    m
}

/// Message `i` as MIME (multipart/alternative, text and HTML), for an SMTP target.
fn mime(i: usize) -> anyhow::Result<Vec<u8>> {
    use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
    let (subject, text, html) = receipt(i);
    let from: Mailbox = format!("Receipts <{FROM}>").parse()?;
    let to: Mailbox = format!("A Customer <{}>", recipient(i)).parse()?;
    let m = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html),
                ),
        )?;
    Ok(m.formatted())
}

/// Runs `one(i)` for every `i` in `range` from 64 concurrent clients, each taking the next
/// index when it is done with its last.
async fn from_64_clients<F, Fut>(range: std::ops::Range<usize>, one: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (next, one) = (next.clone(), one.clone());
        let end = range.end;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return anyhow::Ok(());
                }
                one(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Sends `bodies` from 64 concurrent clients, one message per request.
async fn run_prepared(api: &Arc<Api>, key: &str, bodies: Arc<Vec<Vec<u8>>>) -> anyhow::Result<()> {
    let (api, key) = (api.clone(), Arc::new(key.to_string()));
    from_64_clients(0..bodies.len(), move |i| {
        let (api, key, body) = (api.clone(), key.clone(), bodies[i].clone());
        async move { api.send_prepared(&key, body).await }
    })
    .await
}

/// Polls `/readyz` until every projection and worker has caught up with the log, so that
/// no work of one phase is left to run (and be counted) in the next.
async fn wait_settled(api: &Api, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = api.http.get(format!("{url}/readyz")).send().await?;
        if r.status().is_success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server did not catch up with its log");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` until the dispatcher has sent `n` messages; any failure ends the bench.
async fn wait_delivered(api: &Api, url: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = api.http.get(format!("{url}/readyz")).send().await?;
        let v: Value = r.json().await?;
        let sent = v["dispatch"]["sent"].as_u64().unwrap_or(0);
        let failed = v["dispatch"]["failed"].as_u64().unwrap_or(0);
        if failed > 0 {
            bail!("{failed} messages failed during the benchmark");
        }
        if usize::try_from(sent).unwrap_or(0) >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("delivery did not finish: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Another product to run the same workload against, over SMTP submission.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` of its SMTP listener (no TLS, no AUTH).
    pub smtp: String,
    /// Its (master) process, for CPU and memory; without it those figures are null.
    pub pid: Option<u32>,
    /// The sink's port, so that the target can be configured to relay there beforehand.
    pub sink_port: u16,
}

/// The workload against another product: the same messages (as MIME), the same phases,
/// submitted over SMTP, delivered to the same kind of sink. There is no `scheduled_at` in
/// SMTP, so delivery overlaps accepting: `delivered_per_s` is the c64 messages over the
/// time from the first c64 submission until the sink holds every message.
pub fn external(
    preload: usize,
    c1: usize,
    c64: usize,
    sink_kind: &str,
    target: &Target,
) -> anyhow::Result<Value> {
    use lettre::address::Envelope;
    use lettre::transport::smtp::extension::ClientId;
    use workers::smtp::RelayPool;

    let tmp = tempfile::tempdir()?;
    let sink_dir = tmp.path().join("sink");
    std::fs::create_dir_all(&sink_dir)?;
    let sink = start_sink(sink_kind, &sink_dir, target.sink_port)?;
    eprintln!(
        "postledger bench: the sink listens on 127.0.0.1:{}; the target must relay there",
        sink.port
    );
    let (host, port) = target
        .smtp
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .context("--target must be host:port")?;
    let pool = Arc::new(RelayPool::new(
        host,
        port,
        domain::mail_settings::TlsMode::None,
        None,
        ClientId::Domain("bench.example".into()),
        Duration::from_secs(60),
        Vec::new(),
    ));
    let submit = move |pool: Arc<RelayPool>, i: usize| async move {
        let bytes = mime(i)?;
        let envelope = Envelope::new(Some(FROM.parse()?), vec![recipient(i).parse()?])?;
        match pool.send(&envelope, &bytes).await {
            Ok(_) => anyhow::Ok(()),
            Err(e) => bail!("the target refused message {i}: {e:?}"),
        }
    };
    let wait_sink = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(600);
        while sink.accepted() < n as u64 {
            if Instant::now() > deadline {
                bail!("the sink got {} of {n} messages", sink.accepted());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::Ok(())
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let concurrent = |range: std::ops::Range<usize>| {
        let pool = pool.clone();
        rt.block_on(from_64_clients(range, move |i| submit(pool.clone(), i)))
    };

    let preload_started = Instant::now();
    concurrent(0..preload)?;
    wait_sink(preload)?;
    let preload_s = preload_started.elapsed().as_secs_f64();
    let cpu_start = target.pid.map(cpu_with_children_ms).transpose()?;

    let mut lat = Vec::with_capacity(c1);
    for i in preload..preload + c1 {
        let t = Instant::now();
        rt.block_on(submit(pool.clone(), i))?;
        lat.push(t.elapsed());
    }
    lat.sort();
    wait_sink(preload + c1)?;

    let start = Instant::now();
    concurrent(preload + c1..preload + c1 + c64)?;
    let c64_elapsed = start.elapsed();
    wait_sink(preload + c1 + c64)?;
    let delivered_elapsed = start.elapsed();
    let total = c1 + c64;
    #[allow(clippy::cast_precision_loss)]
    let cpu_per_message = match (target.pid, cpu_start) {
        (Some(pid), Some(start)) => Some((cpu_with_children_ms(pid)? - start) / total as f64),
        _ => None,
    };
    let rss = target.pid.map(peak_rss_mb).transpose()?;
    Ok(json!({
        "target": target.smtp,
        "accepted_per_s_c64": per_s(c64, c64_elapsed),
        "accept_p50_ms_c1": percentile(&lat, 0.50),
        "accept_p99_ms_c1": percentile(&lat, 0.99),
        "delivered_per_s": per_s(c64, delivered_elapsed),
        "cpu_ms_per_message": cpu_per_message,
        "peak_rss_mb": rss,
        "messages": total,
        "preload_s": preload_s,
        "sink": sink.name,
    }))
}

pub fn send(preload: usize, c1: usize, c64: usize, sink: &str) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let sink_dir = tmp.path().join("sink");
    std::fs::create_dir_all(&sink_dir)?;
    let sink = start_sink(sink, &sink_dir, 0)?;
    let (sink_port, sink_name) = (sink.port, sink.name.clone());
    std::fs::create_dir_all(&data)?;
    let config = tmp.path().join("postledger.toml");
    std::fs::write(&config, "retry_schedule_ms = [200]\n")?;
    let exe = std::env::current_exe()?;
    let server = Command::new(exe)
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("POSTLEDGER_PEPPER")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the server")?;
    let pid = server.id();
    let _server = Proc(server);
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        if let Some(r) = crate::server::read_server_record(&data) {
            if r.pid == pid {
                break r.url;
            }
        }
        if Instant::now() > deadline {
            bail!("the server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let operator = crate::secrets::read_operator_token(&data)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let api = Arc::new(Api {
            url: url.clone(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()?,
        });
        let gql = api
            .call(
                reqwest::Method::POST,
                "/graphql",
                &operator,
                None,
                json!({"query": "mutation { createTenant(name: \"bench\") { id } }"}),
            )
            .await?;
        let tenant = gql["data"]["createTenant"]["id"]
            .as_str()
            .context("no tenant id")?
            .to_string();
        let gql = api
            .call(
                reqwest::Method::POST,
                "/graphql",
                &operator,
                None,
                json!({"query": "mutation($t: ID) { issueApiKey(tenantId: $t, label: \"bench\") { secret } }", "variables": {"t": tenant}}),
            )
            .await?;
        let key = gql["data"]["issueApiKey"]["secret"]
            .as_str()
            .context("no key")?
            .to_string();
        api.call(
            reqwest::Method::POST,
            "/api/v1/senders/",
            &key,
            None,
            json!({"email": "receipts@bench.example", "name": "Receipts"}),
        )
        .await?;
        api.call(
            reqwest::Method::POST,
            "/api/v1/relays/",
            &key,
            None,
            json!({"name": "sink", "host": "127.0.0.1", "port": sink_port, "tls": "none", "max_connections": 32}),
        )
        .await?;

        // The preload: delivered as it comes, before anything is measured.
        let preload_started = Instant::now();
        run_prepared(&api, &key, prepared(0..preload, None)).await?;
        wait_delivered(&api, &url, preload).await?;
        wait_settled(&api, &url).await?;
        let preload_s = preload_started.elapsed().as_secs_f64();

        // The measured messages are all due at T: after the accept phases, estimated
        // generously.
        let expected_s = c1 as f64 * 0.002 + c64 as f64 / 4_000.0 + 3.0;
        let due = Utc::now() + chrono::Duration::milliseconds((expected_s * 1000.0) as i64);
        let cpu_start = cpu_ms(pid)?;

        let one_by_one = prepared(preload..preload + c1, Some(due));
        let concurrent = prepared(preload + c1..preload + c1 + c64, Some(due));
        let mut lat = Vec::with_capacity(c1);
        for body in one_by_one.iter() {
            let t = Instant::now();
            api.send_prepared(&key, body.clone()).await?;
            lat.push(t.elapsed());
        }
        lat.sort();

        let start = Instant::now();
        run_prepared(&api, &key, concurrent).await?;
        let c64_elapsed = start.elapsed();
        let accept_done = Utc::now();
        if accept_done > due {
            eprintln!("postledger bench: the accept phases ran past T; delivery overlapped them");
        }

        let total = c1 + c64;
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let t0 = Instant::now();
        wait_delivered(&api, &url, preload + total).await?;
        let delivered_elapsed = t0.elapsed();
        // The CPU counts everything the measured messages caused, the read models included.
        wait_settled(&api, &url).await?;
        let cpu_total = cpu_ms(pid)? - cpu_start;
        #[allow(clippy::cast_precision_loss)]
        let cpu_per_message = cpu_total / total as f64;
        Ok(json!({
            "accepted_per_s_c64": per_s(c64, c64_elapsed),
            "accept_p50_ms_c1": percentile(&lat, 0.50),
            "accept_p99_ms_c1": percentile(&lat, 0.99),
            "delivered_per_s": per_s(total, delivered_elapsed),
            "cpu_ms_per_message": cpu_per_message,
            "peak_rss_mb": peak_rss_mb(pid)?,
            "messages": total,
            "messages_in_log": preload + total,
            "preload_s": preload_s,
            "sink": sink_name,
        }))
    })
}
