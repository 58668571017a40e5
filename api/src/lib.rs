//! The `postledger` binary's crate: the HTTP surface and the command line.
//!
//! Layout:
//! - `config`, `secrets`: configuration (flags, environment, file) and the pepper, API key
//!   and operator token handling.
//! - `app`: the state every request shares (log, projections, read models).
//! - `auth`: who is calling ([`auth::Principal`]): the operator or exactly one tenant.
//! - `service`: every operation, whatever the surface: authorise, load, decide, append,
//!   wait for the read models.
//! - `sending`: the send pipeline's operations (sender profiles, relays, the delivery
//!   callback, send, batch, message reads, timeline, cancel).
//! - `templates`: template versions and their review, test renders, LLM-assisted drafting
//!   (over the `drafting` crate) and send-template (rendering by the `templating` crate).
//! - `suppressions`: suppression entries (add, bulk, list, look up, remove, CSV import and
//!   export); `signals`: inbound webhooks, bounce messages, the webhook log, signal
//!   settings and one-click unsubscribe.
//! - `graphql`: the schema, thin resolvers over `service` and `sending`; `graphql_mail` and
//!   `graphql_templates` add the send pipeline's and the templates' fields.
//! - `rest`: the `/api/v1` routes over `sending`; `rest_templates` adds the templates'.
//! - `server`: actix-web routes, health and readiness; starts the workers.
//! - `cli`: the subcommands; `bench`: `postledger bench …`.
//!
//! The library exists so that tests can drive the same code the binary runs; it is the
//! binary's crate, so it uses `anyhow` where the process ends.
pub mod app;
pub mod auth;
pub mod bench;
pub mod bench_send;
pub mod bench_suppressions;
pub mod cli;
pub mod config;
pub mod eml;
pub mod error;
pub mod graphql;
pub mod graphql_mail;
pub mod graphql_suppressions;
pub mod graphql_templates;
pub mod rest;
pub mod rest_signals;
pub mod rest_suppressions;
pub mod rest_templates;
pub mod secrets;
pub mod sending;
pub mod server;
pub mod service;
pub mod signals;
pub mod suppressions;
pub mod templates;
