//! Integration tests of the workers against a real log on disk and real servers on
//! loopback (the aiosmtpd sink of `tests/smtp_sink.py`, a local HTTP receiver).
mod dispatch;
mod reports;
mod support;
