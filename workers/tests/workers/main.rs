//! Integration tests of the workers against a real log on disk and real servers on
//! loopback (the aiosmtpd sink of `tests/smtp_sink.py`, a local HTTP receiver).
mod dispatch;
mod reports;
// One SMTP sink for both test binaries (see the file).
#[path = "../../../tests/tests/e2e/sink.rs"]
mod sink;
mod support;
mod suppression;
