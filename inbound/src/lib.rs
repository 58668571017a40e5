//! The pure parts of Postledger's inbound side: suppressions' address matching, delivery
//! events from providers' webhooks, bounce messages, webhook signatures, VERP and
//! one-click unsubscribe tokens.
//!
//! Why a crate of its own, and why pure: every input here comes from the outside world
//! (provider webhooks, bounce mail, links clicked by recipients) and decides whether mail
//! to a person is stopped. Keeping it free of IO and of the clock (times are passed in)
//! makes every rule testable byte for byte, and lets the api and the workers share one
//! implementation. Nothing here logs, and error messages never quote a recipient address
//! (see [`address::redact`] for what may be shown).

pub mod address;
mod canonical;
pub mod dsn;
pub mod events;
pub mod signature;
mod smtp;
pub mod unsubscribe;
pub mod verp;

pub use dsn::{parse_dsn, Dsn, DsnAction, DsnRecipient};
pub use events::{normalise, EventKind, InboundError, InboundEvent, MessageRef, Provider};
pub use signature::SignatureError;
pub use unsubscribe::{TokenError, UnsubscribeClaim};
