//! Postledger domain: pure business rules, no IO, no clock, no randomness.
//!
//! # Layout
//! - [`ids`]: strongly typed identifiers ([`TenantId`], [`ApiKeyId`]).
//! - [`error`]: [`DomainError`] with stable machine codes, and the [`Result`] alias.
//! - [`tenant`]: the Tenant aggregate (API keys live inside it; every event goes on
//!   the tenant's stream, [`TENANT_STREAM`]): commands, events, state,
//!   [`tenant::decide`] and [`tenant::apply`].
//! - [`message`]: the Message aggregate (stream `message/<id>`): queued, each delivery
//!   attempt, and how it ended; also the field validation of a send request.
//! - [`mail_settings`]: a tenant's sender profiles, SMTP relays and delivery callback
//!   (stream `mail-settings/<tenant>`); secrets arrive already sealed.
//! - [`delivery_report`]: each try to POST a signed delivery report to a tenant's callback.
//! - [`template`]: the Template aggregate (stream `template/<key>`): versions, their review
//!   lifecycle, the current version, drafting records; test renders on `template-render/<key>`.
//! - [`drafting`]: a tenant's defaults for LLM-assisted drafting.
//! - [`suppression`]: addresses not to email (per tenant, or global), added, removed, imported.
//! - [`signals`]: what comes back after sending: webhook and bounce signals, the webhook log,
//!   and the tenant's signal settings (signature mode, plus-address matching).
//! - [`codec`]: the [`DomainEvent`] contract the event log relies on
//!   (stable `event_type`, `schema_version`, JSON payload, upcasting of old versions).
//!
//! # Invariant
//! `decide(&state, command) -> Result<Vec<Event>, DomainError>` holds every business
//! rule; `apply(&mut state, &event)` is infallible and holds none. Anything that was
//! accepted by `decide` and persisted is a fact, so replaying it must never fail.
//! Time enters only as data carried by commands (e.g. `now`), never from a clock.

pub mod codec;
pub mod delivery_report;
pub mod drafting;
pub mod error;
pub mod ids;
pub mod mail_settings;
pub mod message;
pub mod signals;
pub mod suppression;
pub mod template;
pub mod tenant;

pub use codec::*;
pub use error::*;
pub use ids::*;
pub use tenant::*;
