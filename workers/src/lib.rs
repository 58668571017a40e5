//! Workers: the parts of Postledger that follow the log and act on the world, then record
//! what they did as new events. Each starts by replaying the log up to its head, so what it
//! knows after a restart is exactly what the log says (nothing is kept only in memory).
//!
//! - [`dispatch`]: the SMTP dispatcher. Keeps the queue of due messages, builds the MIME
//!   with lettre, sends through the tenant's relays (pooled connections, failover, rate
//!   limits derived from the log) or into the file outbox, and records every attempt.
//!   Drops suppressed recipients right before each transaction, and adds one-click
//!   unsubscribe headers to marketing mail.
//! - [`reports`]: delivery reports. POSTs a signed JSON report of every sent, deferred,
//!   failed, cancelled and suppressed message to the tenant's callback URL, with retries,
//!   and records every try.
//! - [`seal`]: AES-256-GCM sealing of the secrets kept in events (relay passwords, callback
//!   signing secrets) under the master key, and keys derived from it for one purpose each.
pub mod dispatch;
mod error;
pub mod reports;
pub mod seal;
pub mod smtp;

pub use error::{Error, Result};
