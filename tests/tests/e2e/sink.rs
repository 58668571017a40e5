//! A real SMTP server for the tests: `tests/smtp_sink.py` (aiosmtpd) as a child process,
//! with every message it accepts stored as a pair of files in a temporary directory.
//! Shared by two test binaries: the end-to-end tests here, and the workers' tests, which
//! include this file by path.
//!
//! The recipient's local part chooses the answer to RCPT: `tempfail<N>…` gets 451 for its
//! first N RCPTs (N=1 without digits), `reject…` gets 550, anything else 250.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// Relative to the including crate's folder, so that both `tests/` and `workers/` find it.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/smtp_sink.py");
/// The sink's stderr goes here (inside `dir`; a dot file, so never taken for a message).
const STDERR_LOG: &str = ".sink-stderr.log";

/// A running `smtp_sink.py` on a free loopback port, killed on drop.
pub struct Sink {
    pub port: u16,
    /// Where the sink writes `<seq>.json` and `<seq>.eml` for each accepted message.
    pub dir: tempfile::TempDir,
    child: Child,
}

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// Unix seconds, by the sink's clock (the same machine's).
    pub received_at: f64,
    /// The TLS version the message came over (`TLSv1.3`), or `None` in clear.
    pub tls: Option<String>,
    /// The message bytes exactly as received after DATA.
    pub raw: Vec<u8>,
}

impl Sink {
    /// Starts the sink and waits (up to 20 s) for it to report its port.
    pub fn start() -> Sink {
        Sink::start_on(0)
    }

    /// [`Sink::start`] on a chosen port (0 picks a free one): a relay that restarts.
    pub fn start_on(port: u16) -> Sink {
        Sink::start_with(port, &[])
    }

    /// A sink that speaks TLS with the test relay certificate (`tests/fixtures/tls`,
    /// trusted through its `ca.pem`): `mode` is `starttls` (offered, and required before
    /// MAIL) or `implicit` (TLS from the first byte).
    pub fn start_tls(mode: &str) -> Sink {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls");
        Sink::start_with(
            0,
            &[
                "--tls".to_string(),
                mode.to_string(),
                "--tls-cert".to_string(),
                format!("{fixtures}/relay.pem"),
                "--tls-key".to_string(),
                format!("{fixtures}/relay.key"),
            ],
        )
    }

    fn start_with(port: u16, extra: &[String]) -> Sink {
        let dir = tempfile::tempdir().expect("sink temp dir");
        let stderr =
            std::fs::File::create(dir.path().join(STDERR_LOG)).expect("sink stderr log file");
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg("--dir")
            .arg(dir.path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--exit-on-stdin-eof")
            .args(extra)
            // Never written to: when this process dies, the pipe closes and the sink exits.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn python3 tests/smtp_sink.py (is python3 installed?)");

        // Read the `PORT n` line on a thread so that waiting for it can time out; the thread
        // then drains stdout until the sink exits.
        let stdout = child.stdout.take().expect("sink stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(line)) if line.is_empty() => {
                Err("it exited before printing `PORT n`".to_string())
            }
            Ok(Ok(line)) => line
                .trim()
                .strip_prefix("PORT ")
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| format!("unexpected first line {line:?}")),
            Ok(Err(e)) => Err(format!("reading its stdout failed: {e}")),
            Err(_) => Err("no `PORT n` line within 20 s".to_string()),
        };
        match port {
            Ok(port) => Sink { port, dir, child },
            Err(why) => {
                let _ = child.kill();
                let status = match child.wait() {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                panic!(
                    "the SMTP sink did not start: {why} ({status}); its stderr:\n{}\n\
                     (it needs aiosmtpd: python3 -m pip install aiosmtpd==1.4.6)",
                    stderr_log(dir.path())
                );
            }
        }
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every message stored so far, in the order the sink accepted them. A message counts
    /// once its `.eml` exists; the sink renames its `.json` into place before that.
    pub fn delivered(&self) -> Vec<Delivered> {
        let dir = self.dir.path();
        let mut seqs: Vec<(u64, String)> = std::fs::read_dir(dir)
            .expect("read sink dir")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".eml")?;
                if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((stem.parse().ok()?, stem.to_string()))
            })
            .collect();
        seqs.sort();
        seqs.into_iter()
            .map(|(_, stem)| {
                let meta_path = dir.join(format!("{stem}.json"));
                let meta_text = std::fs::read_to_string(&meta_path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", meta_path.display()));
                let meta: serde_json::Value = serde_json::from_str(&meta_text)
                    .unwrap_or_else(|e| panic!("parse {}: {e}: {meta_text}", meta_path.display()));
                let raw_path = dir.join(format!("{stem}.eml"));
                let raw = std::fs::read(&raw_path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", raw_path.display()));
                Delivered {
                    mail_from: meta["mail_from"].as_str().unwrap_or_default().to_string(),
                    rcpt_tos: meta["rcpt_tos"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    received_at: meta["received_at"].as_f64().unwrap_or_default(),
                    tls: meta["tls"].as_str().map(str::to_string),
                    raw,
                }
            })
            .collect()
    }

    /// Polls every 50 ms until at least `n` messages were stored; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(got) = self.at_least(n, deadline, timeout) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Sink::wait_for`] for async tests: polls every 20 ms without blocking the runtime.
    pub async fn arrived(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(got) = self.at_least(n, deadline, timeout) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The messages when there are at least `n`; `None` to keep waiting; past `deadline`, a
    /// panic that lists what did arrive.
    fn at_least(&self, n: usize, deadline: Instant, timeout: Duration) -> Option<Vec<Delivered>> {
        let got = self.delivered();
        if got.len() >= n {
            return Some(got);
        }
        if Instant::now() < deadline {
            return None;
        }
        let summary: Vec<String> = got
            .iter()
            .map(|d| {
                format!(
                    "from {:?} to {:?}, subject {:?}",
                    d.mail_from,
                    d.rcpt_tos,
                    d.header("Subject")
                )
            })
            .collect();
        panic!(
            "the SMTP sink at {} got {} message(s) within {timeout:?}, expected at least \
             {n}: {summary:#?}\nthe sink's stderr:\n{}",
            self.addr(),
            got.len(),
            stderr_log(self.dir.path())
        );
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Delivered {
    /// The message as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The first header called `name` (case-insensitive) in the header block, unfolded
    /// (line breaks inside it removed) and trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.raw);
        // Unfold: a line starting with a space or tab continues the header before it.
        let mut headers: Vec<String> = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                break; // the blank line that ends the header block
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.push_str(line);
                }
                continue;
            }
            headers.push(line.to_string());
        }
        headers.iter().find_map(|h| {
            let (field, value) = h.split_once(':')?;
            field
                .trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

impl Delivered {
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .expect("the delivered bytes parse as a message")
    }

    /// The X-Postledger-Message-Id header.
    pub fn message_id(&self) -> Option<uuid::Uuid> {
        self.header("X-Postledger-Message-Id")
            .and_then(|v| uuid::Uuid::parse_str(&v).ok())
    }

    /// [`Delivered::received_at`] as a time.
    pub fn received_time(&self) -> chrono::DateTime<chrono::Utc> {
        // Microseconds since the epoch fit an i64 for any time the sink can report.
        #[allow(clippy::cast_possible_truncation)]
        let us = (self.received_at * 1e6) as i64;
        chrono::DateTime::from_timestamp_micros(us).expect("a valid time")
    }
}

/// A loopback port on which nothing listens (bound once, then released).
pub fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn stderr_log(dir: &Path) -> String {
    let mut text = String::new();
    match std::fs::File::open(dir.join(STDERR_LOG)) {
        Ok(mut f) => {
            let _ = f.read_to_string(&mut text);
        }
        Err(e) => text = format!("(no stderr log: {e})"),
    }
    text
}
