//! LLM-assisted drafting of email templates.
//!
//! A template author describes an email in a [`Brief`] (or asks for a revision of an
//! existing version), and a language model writes the subject, preview, HTML and text
//! parts as minijinja source. The crate exists so that this step is *auditable and safe
//! to fail*:
//!
//! * Every call returns a [`DraftRecord`] — never an error — holding the exact prompt sent,
//!   the provider and model that answered, token usage, latency and either the draft or the
//!   reason there is none. The caller stores it as an event, so a reviewer can always see
//!   where a draft came from.
//! * A draft is only a proposal. This crate does not validate it as a template; the caller
//!   runs the same checks as for a human edit (it parses, uses only declared variables,
//!   keeps the locked sections). The prompt tells the model those rules so that drafts
//!   usually pass, and the returned content never declares variables of its own: its
//!   `variables` are always the request's.
//! * The [`ProviderKind::Dummy`] provider is deterministic and needs no network, so tests,
//!   demos and installations without an API key still work, and it is the fallback when a
//!   real provider fails and failover is on.
//! * Real providers (OpenAI, Anthropic, DeepSeek) are reached with one shared
//!   [`reqwest::Client`] over rustls. API keys are never logged, never put in a record and
//!   are scrubbed from provider error messages.

mod brief;
mod config;
mod drafter;
mod dummy;
mod prompt;
mod providers;
mod record;
mod reply;

pub use brief::Brief;
pub use config::{ProviderConfig, ProviderKind};
pub use drafter::Drafter;
pub use prompt::build_prompt;
pub use record::{DraftRecord, DraftRequest, Task, Usage};
