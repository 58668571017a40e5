//! End-to-end tests: the real `postledger` binary, real sled files, HTTP over loopback,
//! and a real SMTP server (aiosmtpd, `tests/smtp_sink.py`).
mod cli;
mod crash;
mod golden;
mod graphql;
mod schema;
mod send;
mod sink;
mod support;
mod surfaces;
mod templates;
