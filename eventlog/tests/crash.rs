//! Crash test: a child process (`eventlog-crash-child`) appends from many tasks and prints
//! one line per acknowledged append; the test SIGKILLs it mid-flight, reopens the log and
//! checks that every acknowledged append is there, in order, that positions, sequences and
//! versions are gapless, that the chains verify, and that no append (acknowledged or not) was
//! left half written. Several rounds run over the same folder, so later rounds reopen a log
//! that already survived kills.
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eventlog::{Error, EventLog, Options, RecordedEvent, StreamId, VerifyReport};
use uuid::Uuid;

/// The child's payload key.
const KEY: [u8; 32] = [0x5c; 32];
const CHILD: &str = env!("CARGO_BIN_EXE_eventlog-crash-child");
const ROUNDS: u64 = 5;

/// One `ACK` line of the child.
#[derive(Debug)]
struct Ack {
    tenant: Uuid,
    stream: String,
    last_position: u64,
    stream_version: u64,
    ids: Vec<Uuid>,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.split_whitespace();
    if parts.next()? != "ACK" {
        return None;
    }
    let ack = Ack {
        tenant: parts.next()?.parse().expect("ack tenant"),
        stream: parts.next()?.to_string(),
        last_position: parts.next()?.parse().expect("ack position"),
        stream_version: parts.next()?.parse().expect("ack version"),
        ids: parts
            .next()?
            .split(',')
            .map(|id| id.parse().expect("ack event id"))
            .collect(),
    };
    assert!(parts.next().is_none(), "trailing fields in {line:?}");
    Some(ack)
}

/// A running child (or strace around it) that is SIGKILLed when dropped, so that a failing
/// test leaves no process behind.
struct Running {
    child: Child,
    /// The appending process when it is not `child` itself (under strace).
    traced_pid: Option<u32>,
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the crash child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    // A line cut short by the kill was never completed, so it is no ack.
                    Ok(_) if line.ends_with('\n') => {
                        if tx.send(line.trim_end().to_string()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                }
            }
        });
        Running {
            child,
            traced_pid: None,
            lines,
            reader: Some(reader),
        }
    }

    /// Reads lines until `min_acks` acks were printed; panics if the child stops first.
    fn wait_for_acks(&mut self, min_acks: usize, out: &mut Vec<Ack>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < min_acks {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(pid) = line.strip_prefix("PID ") {
                        let pid: u32 = pid.parse().expect("child pid");
                        if pid != self.child.id() {
                            self.traced_pid = Some(pid);
                        }
                    } else if let Some(ack) = parse_ack(&line) {
                        out.push(ack);
                        seen += 1;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("only {seen} of {min_acks} acks within 60 s")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "the crash child stopped after {seen} of {min_acks} acks: {:?}",
                    self.child.try_wait()
                ),
            }
        }
    }

    /// SIGKILLs the appending process, waits for it, and collects the acks it printed
    /// before it died.
    fn kill(mut self, out: &mut Vec<Ack>) {
        match self.traced_pid {
            Some(pid) => {
                kill_pid(pid);
                // strace exits once its tracee is gone; let it finish writing its trace.
                let deadline = Instant::now() + Duration::from_secs(10);
                while self.child.try_wait().expect("try_wait").is_none() {
                    if Instant::now() > deadline {
                        self.child.kill().expect("kill strace");
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            None => self.child.kill().expect("SIGKILL the crash child"),
        }
        self.child.wait().expect("wait for the crash child");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stdout reader");
        }
        out.extend(self.lines.try_iter().filter_map(|l| parse_ack(&l)));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.traced_pid {
            if self.child.try_wait().ok().flatten().is_none() {
                kill_pid(pid);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill_pid(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

/// Opens the log, retrying for a moment while the dead child's lock lingers.
fn reopen(dir: &Path) -> EventLog {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match EventLog::open(dir, Options::new(KEY)) {
            Ok(log) => return log,
            Err(Error::Locked) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("reopening the log after the kill failed: {e}"),
        }
    }
}

/// The fields of the child's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Tag {
    run: Uuid,
    task: u64,
    append: u64,
}

fn json_field<'a>(payload: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":");
    let at = payload
        .find(&key)
        .unwrap_or_else(|| panic!("{name} in {payload}"))
        + key.len();
    let rest = &payload[at..];
    let end = rest.find([',', '}']).expect("end of field");
    rest[..end].trim_matches('"')
}

fn parse_payload(rec: &RecordedEvent) -> (Tag, usize, usize) {
    let p = std::str::from_utf8(&rec.payload).expect("utf-8 payload");
    let num = |name: &str| json_field(p, name).parse::<u64>().expect("numeric field");
    let tag = Tag {
        run: json_field(p, "run").parse().expect("run id"),
        task: num("task"),
        append: num("append"),
    };
    let index = usize::try_from(num("index")).unwrap();
    let count = usize::try_from(num("count")).unwrap();
    (tag, index, count)
}

fn seq(n: usize) -> Vec<u64> {
    (1..=n as u64).collect()
}

/// Everything the test checks after a kill. Returns the number of events recovered.
fn check_recovered(log: &EventLog, acks: &[Ack]) -> usize {
    let head = log.head();
    let all = log.read_all(0, usize::MAX).expect("read_all");
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        seq(usize::try_from(head).unwrap()),
        "global positions are gapless 1..=head"
    );
    let by_id: HashMap<Uuid, &RecordedEvent> = all.iter().map(|e| (e.event_id, e)).collect();
    assert_eq!(by_id.len(), all.len(), "event ids are unique");

    // Every acknowledged append is present, whole, where the ack said it was.
    let mut last_of_task: HashMap<(Uuid, u64), u64> = HashMap::new();
    for ack in acks {
        let n = ack.ids.len() as u64;
        for (i, id) in ack.ids.iter().enumerate() {
            let rec = by_id
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged event {id} of {ack:?} was lost"));
            assert_eq!(rec.tenant, ack.tenant, "tenant of {id}");
            assert_eq!(rec.stream.to_string(), ack.stream, "stream of {id}");
            assert_eq!(
                rec.position,
                ack.last_position + 1 + i as u64 - n,
                "position of {id}"
            );
            assert_eq!(
                rec.version,
                ack.stream_version + 1 + i as u64 - n,
                "version of {id}"
            );
        }
        // One task's acks were printed in the order its appends committed.
        let (tag, _, _) = parse_payload(by_id[&ack.ids[0]]);
        let prev = last_of_task.insert((tag.run, tag.task), ack.last_position);
        assert!(
            prev.is_none_or(|p| p < ack.last_position),
            "acks of task {} out of commit order",
            tag.task
        );
    }
    let acked: usize = acks.iter().map(|a| a.ids.len()).sum();
    assert!(
        all.len() >= acked,
        "recovered {} < acknowledged {acked}",
        all.len()
    );

    // Streams: versions gapless 1..=head, and the log agrees on the head.
    let mut streams: BTreeMap<(Uuid, StreamId), Vec<&RecordedEvent>> = BTreeMap::new();
    for rec in &all {
        streams
            .entry((rec.tenant, rec.stream.clone()))
            .or_default()
            .push(rec);
    }
    for ((tenant, stream), recs) in &streams {
        assert_eq!(
            recs.iter().map(|e| e.version).collect::<Vec<_>>(),
            seq(recs.len()),
            "versions of {stream} in {tenant} are gapless"
        );
        assert_eq!(
            log.stream_version(*tenant, stream).unwrap(),
            recs.len() as u64
        );
        let read = log.read_stream(*tenant, stream, 1, usize::MAX).unwrap();
        assert!(read
            .iter()
            .map(|e| e.event_id)
            .eq(recs.iter().map(|e| e.event_id)));
    }

    // Tenants: read_tenant returns exactly the tenant's events, in order, seq gapless.
    let mut tenants: Vec<Uuid> = all.iter().map(|e| e.tenant).collect();
    tenants.sort();
    tenants.dedup();
    let mut total = 0;
    for tenant in &tenants {
        let read = log.read_tenant(*tenant, 0, usize::MAX).unwrap();
        assert_eq!(
            read.iter().map(|e| e.tenant_seq).collect::<Vec<_>>(),
            seq(read.len())
        );
        assert!(read.iter().map(|e| e.event_id).eq(all
            .iter()
            .filter(|e| e.tenant == *tenant)
            .map(|e| e.event_id)));
        total += read.len();
    }
    assert_eq!(total, all.len());

    assert_eq!(
        log.verify(None).unwrap(),
        VerifyReport::Ok {
            events: head,
            tenants: tenants.len() as u64
        }
    );

    // No partial batch: every append that left any event left all of them, contiguously.
    let mut appends: HashMap<Tag, Vec<(&RecordedEvent, usize, usize)>> = HashMap::new();
    for rec in &all {
        let (tag, index, count) = parse_payload(rec);
        appends.entry(tag).or_default().push((rec, index, count));
    }
    for (tag, evs) in &appends {
        let (first, _, count) = evs[0];
        assert_eq!(evs.len(), count, "append {tag:?} is partial: {evs:?}");
        for (i, (rec, index, c)) in evs.iter().enumerate() {
            assert_eq!((*index, *c), (i, count), "append {tag:?} out of order");
            assert_eq!(rec.stream, first.stream);
            assert_eq!(rec.tenant, first.tenant);
            assert_eq!(rec.position, first.position + i as u64);
            assert_eq!(rec.version, first.version + i as u64);
        }
    }
    all.len()
}

#[test]
fn sigkill_mid_flight_loses_no_acknowledged_append_and_leaves_no_partial_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut acks = Vec::new();
    for round in 0..ROUNDS {
        // 50..=400 acks before the kill, varying per round.
        let min_acks = usize::try_from(50 + (round * 137 + 61) % 351).unwrap();
        let mut cmd = Command::new(CHILD);
        cmd.arg(dir.path());
        let mut running = Running::spawn(cmd);
        let before = acks.len();
        running.wait_for_acks(min_acks, &mut acks);
        running.kill(&mut acks);
        let log = reopen(dir.path());
        let recovered = check_recovered(&log, &acks);
        let acked: usize = acks.iter().map(|a| a.ids.len()).sum();
        eprintln!(
            "round {round}: {} acks this round (waited for {min_acks}); {acked} acknowledged \
             events in all, {recovered} recovered",
            acks.len() - before
        );
        drop(log);
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[test]
fn appends_are_fdatasynced_and_share_fsyncs() {
    let strace = find_in_path("strace").expect(
        "this test needs strace to observe the fsyncs (apt-get install -y strace); \
         CI installs it",
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("log");
    let trace = tmp.path().join("strace.out");
    let mut cmd = Command::new(strace);
    cmd.args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(CHILD)
        .arg(&data);
    let mut running = Running::spawn(cmd);
    let mut acks = Vec::new();
    running.wait_for_acks(200, &mut acks);
    assert!(running.traced_pid.is_some(), "the child printed its pid");
    running.kill(&mut acks);

    let text = std::fs::read_to_string(&trace).expect("read the strace output");
    let db_file = format!("{}>", data.join("db").display());
    let fdatasyncs = text
        .lines()
        .filter(|l| l.contains("fdatasync(") && l.contains(&db_file))
        .count();
    let appends = acks.len();
    eprintln!(
        "{appends} acknowledged appends, {fdatasyncs} fdatasyncs of the db file ({:.1} appends \
         per fdatasync)",
        appends as f64 / fdatasyncs.max(1) as f64
    );
    assert!(fdatasyncs >= 1, "no fdatasync of {db_file} in:\n{text}");
    assert!(
        appends >= fdatasyncs,
        "{appends} acks but {fdatasyncs} fdatasyncs: group commit should share them"
    );
    let log = reopen(&data);
    check_recovered(&log, &acks);
}
