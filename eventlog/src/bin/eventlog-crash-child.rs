//! Exists only as the child process of the event log's crash test (`tests/crash.rs`); it is
//! not a tool and has no other use.
//!
//! Usage: `eventlog-crash-child <data dir>`. Opens the log with a fixed test key and appends
//! from many tasks until it is killed. It first prints `PID <pid>`, then one line per append
//! that returned Ok, written and flushed before the task appends again:
//!
//! ```text
//! ACK <tenant> <kind/id> <last_position> <stream_version> <event_id,event_id,...>
//! ```
//!
//! Every event's payload is JSON naming the run (one UUID per process), the task, the append
//! number within the task, the index within the append and the append's event count, so that
//! the test can regroup recovered events into their appends.
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use eventlog::{Actor, EventLog, ExpectedVersion, Metadata, NewEvent, Options, StreamId};
use uuid::Uuid;

/// The payload key; the crash test opens the log with the same constant.
const KEY: [u8; 32] = [0x5c; 32];
const TASKS: u64 = 32;
/// The tenants everything is appended to; the test knows them too.
const TENANTS: [Uuid; 3] = [
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002),
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003),
];

type Out = Arc<Mutex<std::io::Stdout>>;

/// Writes one whole line and flushes it; exits when the reader is gone (EPIPE), so that the
/// child never outlives a test that died.
fn emit(out: &Out, line: &str) {
    let ok = match out.lock() {
        Ok(stdout) => {
            let mut lock = stdout.lock();
            lock.write_all(line.as_bytes()).is_ok() && lock.flush().is_ok()
        }
        Err(_) => false,
    };
    if !ok {
        std::process::exit(3);
    }
}

fn payload(run: Uuid, task: u64, append: u64, index: usize, count: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"run":"{run}","task":{task},"append":{append},"index":{index},"count":{count},"pad":""#
    );
    let pad = 300usize.saturating_sub(head.len() + 2).max(1);
    let mut s = head;
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s.into_bytes()
}

async fn run_task(log: EventLog, out: Out, run: Uuid, task: u64) {
    let own_tenant = TENANTS[(task % 3) as usize];
    let own = StreamId::new("task", format!("task-{task}"));
    let mut prev = log
        .stream_version(own_tenant, &own)
        .expect("read the task stream's version");
    for append in 0u64.. {
        // Every fourth append goes to a stream shared by all tasks, in one of the tenants.
        let shared = append % 4 == 3;
        let (tenant, stream, expected) = if shared {
            (
                TENANTS[((task + append) % 3) as usize],
                StreamId::new("shared", format!("shared-{}", append % 3)),
                ExpectedVersion::Any,
            )
        } else {
            (own_tenant, own.clone(), ExpectedVersion::Exact(prev))
        };
        let count = usize::try_from((task + append * 7) % 5 + 1).unwrap_or(1);
        let events: Vec<NewEvent> = (0..count)
            .map(|index| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "CrashTestAppended".into(),
                schema_version: 1,
                payload: payload(run, task, append, index, count),
            })
            .collect();
        let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        let meta = Metadata::new(Actor::System(format!("crash-task-{task}")), Uuid::now_v7());
        match log
            .append(tenant, stream.clone(), expected, events, meta)
            .await
        {
            Ok(outcome) => {
                if !shared {
                    prev = outcome.stream_version;
                }
                emit(
                    &out,
                    &format!(
                        "ACK {tenant} {stream} {} {} {}\n",
                        outcome.last_position,
                        outcome.stream_version,
                        ids.join(",")
                    ),
                );
            }
            Err(e) => {
                eprintln!("eventlog-crash-child: task {task} append {append} failed: {e}");
                std::process::exit(2);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .expect("usage: eventlog-crash-child <data dir>");
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    emit(&out, &format!("PID {}\n", std::process::id()));
    let log = EventLog::open(&dir, Options::new(KEY)).expect("open the log");
    let run = Uuid::new_v4();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        tasks.push(tokio::spawn(run_task(log.clone(), out.clone(), run, task)));
    }
    for task in tasks {
        task.await.expect("append task");
    }
}
