//! End-to-end tests: the real `postledger` binary, real sled files, HTTP over loopback,
//! and a real SMTP server (aiosmtpd, `tests/smtp_sink.py`).
mod browser;
mod cli;
mod crash;
mod golden;
mod graphql;
mod schema;
mod send;
mod signals;
mod sink;
mod support;
mod suppressions;
mod surfaces;
mod templates;
