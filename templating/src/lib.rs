//! Email templates: validating a version when it is saved, and rendering it when a message
//! is sent.
//!
//! Template parts (subject, subject variants, preview, html, text) are minijinja source
//! written by tenants or drafted by models, so they are untrusted code. Two moments matter:
//!
//! - **Save** ([`analyse`]): everything knowable from the source is checked then, and all
//!   problems are reported together with their part, line and column. A version that passes
//!   uses only variables it declares, so a send can only fail on the data it is given.
//! - **Send** ([`Compiled::render`]): on the hot path, so a version is compiled once
//!   ([`Compiled::new`]), cached and shared; a render builds the context and runs.
//!
//! The sandbox, and why each piece is there:
//! - no loader: a version is self-contained, nothing reaches files or other templates;
//! - strict undefined: `{{ user.nmae }}` is an error naming the expression, never a blank in
//!   a customer's inbox;
//! - HTML escaping in the html part only: the subject, preview and text are not HTML;
//! - fuel and an output cap ([`Limits`]): a runaway loop stops in milliseconds and a render
//!   cannot fill memory with output; minijinja's recursion limit bounds nesting;
//! - no panics: every input, however broken, ends in an [`Issue`] or a [`RenderError`].
//!
//! What the sandbox does not bound: memory held by intermediate values. minijinja has no
//! memory limit, and a few loop iterations of string doubling (`{% set ns.s = ns.s ~ ns.s %}`)
//! or of appending 100 MB repeats to a list build huge values without spending fuel or
//! writing output. Rendering untrusted versions should therefore also run under a process
//! memory limit.
//!
//! Locked sections (`{# locked: NAME #}` … `{# endlocked #}`) are comments, so rendering
//! ignores the markers; [`locked_sections`] extracts their source verbatim so that the rest of
//! the system can keep edits (human or model) from changing them.
#![forbid(unsafe_code)]

mod analyse;
pub mod bench;
mod render;
mod scan;
mod variant;

pub use analyse::{analyse, locked_sections, Analysis, Issue, MAX_PART_BYTES};
pub use render::{Compiled, Limits, RenderError, Rendered};
pub use variant::pick_variant;

#[cfg(test)]
mod tests;
