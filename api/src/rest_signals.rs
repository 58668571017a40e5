//! The signals' REST routes and the public unsubscribe pages (being written).
use actix_web::web;

/// Under `/api/v1`.
pub fn routes(_cfg: &mut web::ServiceConfig) {}

/// Public pages outside `/api/v1` (no API key): one-click unsubscribe.
pub fn public_routes(_cfg: &mut web::ServiceConfig) {}
