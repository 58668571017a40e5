//! Rendering a compiled version on the send path.
//!
//! A version is parsed once, in [`Compiled::new`], into an environment of its own; a render
//! then only builds the context and runs the compiled instructions. The environment is the
//! sandbox: templates come from tenants (and from models drafting for them), so a render must
//! not reach files, must not run forever, must not produce unbounded output and must not
//! silently print a blank where a typo was.

use std::io;
use std::sync::Arc;

use domain::template::TemplateContent;

use minijinja::value::{Enumerator, Object, ObjectExt, ObjectRepr, Value};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;

use crate::analyse::{self, variant_part, Issue};
use crate::variant::pick_variant;

/// How much work and output one render may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// minijinja fuel (about one unit per executed instruction), given to each part.
    pub fuel: u64,
    /// Total bytes of rendered output over all parts of one render.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    /// The bench order confirmation burns about 37 units per line item and part (11,000 for
    /// 300 items), so 250,000 lets several hundred items with richer rows through, while a
    /// runaway nested loop stops after about 5 ms (release build) per part.
    fn default() -> Limits {
        Limits {
            fuel: 250_000,
            max_output_bytes: 2 * 1024 * 1024,
        }
    }
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    pub subject: String,
    pub preview: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
    /// Index of the subject variant used, when the version has variants.
    pub variant: Option<u32>,
    /// The caller's context with defaults (and `null` for absent optional variables) filled
    /// in: what the template actually saw.
    pub context: serde_json::Value,
}

/// Why a render failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("required variables missing from the context: {}", names.join(", "))]
    MissingVariables { names: Vec<String> },
    #[error("invalid context: {message}")]
    InvalidContext { message: String },
    #[error("rendering {part} failed{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Failed {
        part: String,
        line: Option<u32>,
        message: String,
    },
    /// The fuel or the output size limit stopped the render.
    #[error("rendering {part} stopped: {message}")]
    RenderLimit { part: String, message: String },
}

impl RenderError {
    pub fn code(&self) -> &'static str {
        match self {
            RenderError::MissingVariables { .. } => "MISSING_VARIABLES",
            RenderError::InvalidContext { .. } => "INVALID_CONTEXT",
            RenderError::Failed { .. } => "RENDER_FAILED",
            RenderError::RenderLimit { .. } => "RENDER_LIMIT_EXCEEDED",
        }
    }
}

/// The sandboxed environment every version is parsed and rendered in.
pub(crate) fn environment(limits: &Limits) -> Environment<'static> {
    // `Environment::new` has no loader: `include` and friends of any name that is not one of
    // the version's own parts fail with "template not found" (and `analyse` refuses them).
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if name == "html" {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    // An optional variable the caller left out is `none`; print it as nothing rather than
    // the word "none" in someone's inbox.
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            Ok(())
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env.set_fuel(Some(limits.fuel));
    // Keeps error spans in release builds too, so render errors can quote the failing source.
    env.set_debug(true);
    env
}

/// JSON nesting deeper than this is refused: conversion recurses, and serde_json's own
/// parser stops at 128 anyway.
const MAX_CONTEXT_DEPTH: usize = 128;

/// A declared variable, ready for rendering.
struct Var {
    name: String,
    /// The name as a template value, so building a context does not allocate keys.
    key: Value,
    required: bool,
    /// The default both as JSON (for `Rendered::context`) and converted once.
    default: Option<(serde_json::Value, Value)>,
}

/// A version compiled for rendering. Immutable, `Send + Sync`: build it once and share it.
pub struct Compiled {
    env: Environment<'static>,
    vars: Vec<Var>,
    has_preview: bool,
    has_html: bool,
    has_text: bool,
    variant_weights: Vec<u32>,
    variant_parts: Vec<String>,
    limits: Limits,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Compiled>();
};

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field(
                "variables",
                &self.vars.iter().map(|v| &v.name).collect::<Vec<_>>(),
            )
            .field("variants", &self.variant_weights)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Compiled {
    /// Validates (as [`crate::analyse`] does) and compiles every part.
    pub fn new(content: &TemplateContent, limits: Limits) -> Result<Compiled, Vec<Issue>> {
        let mut env = environment(&limits);
        let (mut issues, _) = analyse::check(content, &mut env);
        let mut vars = Vec::with_capacity(content.variables.len());
        for (i, v) in content.variables.iter().enumerate() {
            let default = match &v.default {
                None => None,
                Some(json) => match json_to_value(json, 0) {
                    Ok(value) => Some((json.clone(), value)),
                    Err(message) => {
                        issues.push(Issue {
                            part: format!("variables[{i}]"),
                            line: None,
                            column: None,
                            // Only reachable for a default built in code: parsed JSON stops at 128.
                            code: "TOO_LARGE",
                            message,
                        });
                        None
                    }
                },
            };
            vars.push(Var {
                name: v.name.clone(),
                key: Value::from(v.name.as_str()),
                required: v.required,
                default,
            });
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        vars.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Compiled {
            env,
            vars,
            has_preview: content.preview.is_some(),
            has_html: content.html.is_some(),
            has_text: content.text.is_some(),
            variant_weights: content.subject_variants.iter().map(|v| v.weight).collect(),
            variant_parts: (0..content.subject_variants.len())
                .map(variant_part)
                .collect(),
            limits,
        })
    }

    /// Renders every part. `context` is a JSON object (or null for none); `variant_key`
    /// (typically the recipient) picks the subject variant when the version has variants.
    pub fn render(
        &self,
        context: &serde_json::Value,
        variant_key: &str,
    ) -> Result<Rendered, RenderError> {
        let given = match context {
            serde_json::Value::Object(map) => Some(map),
            serde_json::Value::Null => None,
            other => {
                return Err(RenderError::InvalidContext {
                    message: format!(
                        "the context must be a JSON object, not {}",
                        json_kind(other)
                    ),
                })
            }
        };

        let mut effective = given.cloned().unwrap_or_default();
        let mut entries = Vec::with_capacity(self.vars.len());
        let mut missing = Vec::new();
        for var in &self.vars {
            // An explicit null counts as absent: API clients send `"coupon": null` to mean
            // "no coupon", and a required variable must not be satisfied by it.
            let value = given
                .and_then(|m| m.get(&var.name))
                .filter(|v| !v.is_null());
            let value = match (value, &var.default) {
                (Some(json), _) => json_to_value(json, 0)
                    .map_err(|message| RenderError::InvalidContext { message })?,
                (None, Some((json, value))) => {
                    effective.insert(var.name.clone(), json.clone());
                    value.clone()
                }
                (None, None) if var.required => {
                    missing.push(var.name.clone());
                    continue;
                }
                (None, None) => {
                    effective.insert(var.name.clone(), serde_json::Value::Null);
                    Value::from(())
                }
            };
            entries.push((var.key.clone(), value));
        }
        if !missing.is_empty() {
            missing.sort();
            return Err(RenderError::MissingVariables { names: missing });
        }
        // `self.vars` is sorted by name, so `entries` is too.
        let ctx = SortedMap::value(entries);

        let mut budget = self.limits.max_output_bytes;
        let (subject_part, variant) = match pick_variant(&self.variant_weights, variant_key) {
            Some(i) => (
                self.variant_parts[i].as_str(),
                Some(crate::scan::saturate(i)),
            ),
            None => ("subject", None),
        };
        let subject = one_line(&self.render_part(subject_part, &ctx, &mut budget)?);
        let preview = self.render_if(self.has_preview, "preview", &ctx, &mut budget)?;
        let html = self.render_if(self.has_html, "html", &ctx, &mut budget)?;
        let text = self.render_if(self.has_text, "text", &ctx, &mut budget)?;
        Ok(Rendered {
            subject,
            preview,
            html,
            text,
            variant,
            context: serde_json::Value::Object(effective),
        })
    }

    fn render_if(
        &self,
        present: bool,
        part: &str,
        ctx: &Value,
        budget: &mut usize,
    ) -> Result<Option<String>, RenderError> {
        if present {
            self.render_part(part, ctx, budget).map(Some)
        } else {
            Ok(None)
        }
    }

    fn render_part(
        &self,
        part: &str,
        ctx: &Value,
        budget: &mut usize,
    ) -> Result<String, RenderError> {
        let template = self
            .env
            .get_template(part)
            .map_err(|err| RenderError::Failed {
                part: part.to_owned(),
                line: None,
                message: err.to_string(),
            })?;
        let source = template.source();
        let mut out = Bounded {
            buf: Vec::with_capacity(source.len().saturating_mul(2).min(*budget)),
            limit: *budget,
            exceeded: false,
        };
        if let Err(err) = template.render_captured_to(ctx, &mut out) {
            return Err(self.render_error(part, source, &err, out.exceeded));
        }
        *budget -= out.buf.len();
        // minijinja writes `str`s only, so this cannot fail; still, no panics on this path.
        String::from_utf8(out.buf).map_err(|_| RenderError::Failed {
            part: part.to_owned(),
            line: None,
            message: "the output is not valid UTF-8".to_owned(),
        })
    }

    fn render_error(
        &self,
        part: &str,
        source: &str,
        err: &minijinja::Error,
        output_exceeded: bool,
    ) -> RenderError {
        if output_exceeded {
            return RenderError::RenderLimit {
                part: part.to_owned(),
                message: format!(
                    "the rendered message exceeds the output limit of {} bytes",
                    self.limits.max_output_bytes
                ),
            };
        }
        if err.kind() == ErrorKind::OutOfFuel {
            return RenderError::RenderLimit {
                part: part.to_owned(),
                message: format!(
                    "the template ran too long and was stopped at the fuel limit of {} steps (a runaway loop?)",
                    self.limits.fuel
                ),
            };
        }
        let mut message = match err.detail() {
            Some(detail) => format!("{}: {detail}", err.kind()),
            None => err.kind().to_string(),
        };
        // Quote the failing expression (`user.nmae`) when the error is in this part's source.
        if err.name() == Some(part) {
            if let Some(snippet) = err.range().and_then(|r| source.get(r)) {
                if !snippet.is_empty() && snippet.len() <= 200 {
                    message.push_str(&format!(" (in `{snippet}`)"));
                }
            }
        }
        RenderError::Failed {
            part: part.to_owned(),
            line: err.line().map(crate::scan::saturate),
            message,
        }
    }
}

/// A subject is one header line: line breaks (and the whitespace around them) become one
/// space, and the ends are trimmed.
fn one_line(s: &str) -> String {
    if !s.contains(['\n', '\r']) {
        return s.trim().to_owned();
    }
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Output sink that stops the render as soon as the limit is passed, instead of letting a
/// template fill memory and checking afterwards.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("output limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Builds the template value directly: cheaper than `Value::from_serialize`, which goes
/// through serde's serializer machinery for every node.
fn json_to_value(v: &serde_json::Value, depth: usize) -> Result<Value, String> {
    if depth > MAX_CONTEXT_DEPTH {
        return Err(format!(
            "the context nests deeper than {MAX_CONTEXT_DEPTH} levels"
        ));
    }
    Ok(match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::from(
            items
                .iter()
                .map(|item| json_to_value(item, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        serde_json::Value::Object(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, item) in map {
                entries.push((Value::from(k.as_str()), json_to_value(item, depth + 1)?));
            }
            SortedMap::value(entries)
        }
    })
}

/// A template map backed by a vector sorted by key. Building one is a push per entry and a
/// lookup a binary search, where minijinja's own map (a `BTreeMap<Value, Value>`) pays for
/// node allocation on every context built: a measurable share of a render.
#[derive(Debug)]
struct SortedMap(Vec<(Value, Value)>);

impl SortedMap {
    fn value(mut entries: Vec<(Value, Value)>) -> Value {
        fn key(entry: &(Value, Value)) -> &str {
            entry.0.as_str().unwrap_or_default()
        }
        if !entries.is_sorted_by(|a, b| key(a) <= key(b)) {
            entries.sort_by(|a, b| key(a).cmp(key(b)));
        }
        Value::from_object(SortedMap(entries))
    }
}

impl Object for SortedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().unwrap_or_default().cmp(key))
            .ok()
            .map(|i| self.0[i].1.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_enumerator(|this| Box::new(this.0.iter().map(|(k, _)| k.clone())))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}
