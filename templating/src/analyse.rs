//! Checks a template version as it is saved.
//!
//! Everything a render could trip over that is knowable from the source alone is reported
//! here, all at once, so that an author (or a drafting model) can fix a version in one round
//! trip instead of discovering problems one send at a time.

use std::collections::{BTreeSet, HashSet};

use domain::template::{LockedSections, TemplateContent};
use minijinja::Environment;
use serde::Serialize;

use crate::render::{environment, Limits};
use crate::scan::{self, TagKind};

/// A part bigger than this is refused before it is parsed: parse time and memory grow with
/// the source, and no real email needs half a megabyte of template.
pub const MAX_PART_BYTES: usize = 512 * 1024;

/// A locked section name: `[a-z0-9_-]{1,64}`.
const MAX_LOCKED_NAME: usize = 64;

/// Names a template cannot reach as plain variables: literals, and names the engine binds
/// itself (inside loops, macros, call blocks and blocks), which would shadow a declared one.
const RESERVED_NAMES: &[&str] = &[
    "true", "false", "none", "True", "False", "None", "loop", "self", "super", "caller", "varargs",
    "kwargs",
];

/// Statements that would reach beyond the version's own source. The environment has no
/// loader, so they could only ever fail at send time; refusing them at save time says so
/// while the author is still looking.
const REFUSED_STATEMENTS: &[&str] = &["include", "import", "from", "extends"];

/// One problem in a template version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// `subject`, `subject_variants[i]`, `preview`, `html`, `text` or `variables[i]`.
    pub part: String,
    pub line: Option<u32>,
    /// 1-based, in characters.
    pub column: Option<u32>,
    pub code: &'static str,
    pub message: String,
}

impl Issue {
    fn new(part: impl Into<String>, code: &'static str, message: impl Into<String>) -> Issue {
        Issue {
            part: part.into(),
            line: None,
            column: None,
            code,
            message: message.into(),
        }
    }

    fn at(mut self, src: &str, offset: usize) -> Issue {
        let (line, column) = scan::line_col(src, offset);
        self.line = Some(line);
        self.column = Some(column);
        self
    }
}

/// What a valid version yields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Analysis {
    pub locked_sections: LockedSections,
    /// Every context variable some part reads (all of them declared).
    pub used_variables: BTreeSet<String>,
}

/// Validates a version as it is saved and returns its locked sections. All issues are
/// collected, not just the first.
pub fn analyse(content: &TemplateContent) -> Result<Analysis, Vec<Issue>> {
    let mut env = environment(&Limits::default());
    let (issues, analysis) = check(content, &mut env);
    if issues.is_empty() {
        Ok(analysis)
    } else {
        Err(issues)
    }
}

/// The locked sections of the html and text parts.
pub fn locked_sections(content: &TemplateContent) -> Result<LockedSections, Vec<Issue>> {
    let mut issues = Vec::new();
    let sections = collect_locked(content, &mut issues);
    if issues.is_empty() {
        Ok(sections)
    } else {
        Err(issues)
    }
}

/// The template parts of a version, with the names they carry in issues and in the
/// environment.
pub(crate) fn parts(content: &TemplateContent) -> Vec<(String, &str)> {
    let mut parts = vec![("subject".to_owned(), content.subject.as_str())];
    for (i, v) in content.subject_variants.iter().enumerate() {
        parts.push((variant_part(i), v.subject.as_str()));
    }
    if let Some(p) = &content.preview {
        parts.push(("preview".to_owned(), p));
    }
    if let Some(h) = &content.html {
        parts.push(("html".to_owned(), h));
    }
    if let Some(t) = &content.text {
        parts.push(("text".to_owned(), t));
    }
    parts
}

pub(crate) fn variant_part(i: usize) -> String {
    format!("subject_variants[{i}]")
}

/// Runs every check, adding each part that parses to `env` (so that `Compiled::new` does
/// not parse twice).
pub(crate) fn check(
    content: &TemplateContent,
    env: &mut Environment<'static>,
) -> (Vec<Issue>, Analysis) {
    let mut issues = Vec::new();
    check_variables(content, &mut issues);
    check_variants(content, &mut issues);
    if is_blank(&content.html) && is_blank(&content.text) {
        issues.push(Issue::new(
            "html",
            "EMPTY_BODY",
            "a template needs an html or a text body",
        ));
    }

    let declared: HashSet<&str> = content.variables.iter().map(|v| v.name.as_str()).collect();
    // Names the engine provides: a template may use them without declaring them.
    let provided: HashSet<String> = env
        .globals()
        .map(|(name, _)| name.to_owned())
        .chain(RESERVED_NAMES.iter().map(|n| (*n).to_owned()))
        .collect();
    let mut used_variables = BTreeSet::new();

    for (part, src) in parts(content) {
        if src.len() > MAX_PART_BYTES {
            issues.push(Issue::new(
                part,
                "TOO_LARGE",
                format!(
                    "this part is {} bytes; the limit is {MAX_PART_BYTES} bytes",
                    src.len()
                ),
            ));
            continue;
        }
        for tag in scan::tags(src) {
            if tag.kind == TagKind::Stmt && REFUSED_STATEMENTS.contains(&tag.keyword()) {
                issues.push(
                    Issue::new(
                        part.clone(),
                        "TEMPLATE_SYNTAX",
                        format!(
                            "`{}` is not available: a template version is self-contained",
                            tag.keyword()
                        ),
                    )
                    .at(src, tag.start),
                );
            }
        }
        if let Err(err) = env.add_template_owned(part.clone(), src.to_owned()) {
            let mut issue = Issue::new(part, "TEMPLATE_SYNTAX", describe_syntax_error(&err));
            match err.range() {
                Some(range) => issue = issue.at(src, range.start),
                None => issue.line = err.line().map(scan::saturate),
            }
            issues.push(issue);
            continue;
        }
        let Ok(template) = env.get_template(&part) else {
            continue;
        };
        let mut names: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|name| !provided.contains(name))
            .collect();
        names.sort();
        for name in names {
            if !declared.contains(name.as_str()) {
                let mut issue = Issue::new(
                    part.clone(),
                    "UNDECLARED_VARIABLE",
                    format!("`{name}` is used in {part} but not declared in variables"),
                );
                if let Some(at) = scan::first_use(src, &name) {
                    issue = issue.at(src, at);
                }
                issues.push(issue);
            }
            used_variables.insert(name);
        }
    }

    let locked_sections = collect_locked(content, &mut issues);
    (
        issues,
        Analysis {
            locked_sections,
            used_variables,
        },
    )
}

fn describe_syntax_error(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("syntax error: {detail}"),
        None => err.kind().to_string(),
    }
}

fn is_blank(part: &Option<String>) -> bool {
    part.as_deref().is_none_or(|s| s.trim().is_empty())
}

fn check_variables(content: &TemplateContent, issues: &mut Vec<Issue>) {
    let mut seen = HashSet::new();
    for (i, var) in content.variables.iter().enumerate() {
        let part = format!("variables[{i}]");
        if !is_identifier(&var.name) {
            issues.push(Issue::new(
                part.clone(),
                "INVALID_VARIABLE_NAME",
                format!(
                    "`{}` is not a valid variable name (letters, digits and `_`, not starting with a digit)",
                    var.name
                ),
            ));
        } else if RESERVED_NAMES.contains(&var.name.as_str()) {
            issues.push(Issue::new(
                part.clone(),
                "INVALID_VARIABLE_NAME",
                format!("`{}` is reserved by the template language", var.name),
            ));
        }
        if !seen.insert(var.name.as_str()) {
            issues.push(Issue::new(
                part,
                "DUPLICATE_VARIABLE",
                format!("`{}` is declared more than once", var.name),
            ));
        }
    }
}

/// minijinja identifiers are ASCII unless its `unicode` feature is on (it is not).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_variants(content: &TemplateContent, issues: &mut Vec<Issue>) {
    for (i, v) in content.subject_variants.iter().enumerate() {
        if v.weight == 0 {
            issues.push(Issue::new(
                variant_part(i),
                "INVALID_VARIANT",
                "a subject variant needs a weight above 0",
            ));
        }
        if v.subject.trim().is_empty() {
            issues.push(Issue::new(
                variant_part(i),
                "INVALID_VARIANT",
                "a subject variant needs a subject",
            ));
        }
    }
}

/// Locked sections of the html and text parts; malformed markers become issues. A part over
/// the size limit is skipped (it is reported as TOO_LARGE by `check`).
fn collect_locked(content: &TemplateContent, issues: &mut Vec<Issue>) -> LockedSections {
    let mut sections = LockedSections::new();
    for (part, src) in [("html", &content.html), ("text", &content.text)] {
        if let Some(src) = src.as_deref().filter(|s| s.len() <= MAX_PART_BYTES) {
            locked_in_part(part, src, &mut sections, issues);
        }
    }
    sections
}

/// A marker; a malformed one still opens or closes, so that one mistake is one issue.
enum Marker<'a> {
    Open(Result<&'a str, &'static str>),
    Close(Result<(), &'static str>),
}

fn marker(inner: &str) -> Option<Marker<'_>> {
    if let Some(rest) = inner.strip_prefix("endlocked") {
        return Some(Marker::Close(if rest.is_empty() {
            Ok(())
        } else {
            Err("a closing marker is exactly `{# endlocked #}`")
        }));
    }
    let rest = inner.strip_prefix("locked")?;
    if let Some(name) = rest.strip_prefix(':') {
        let name = name.trim();
        let valid = (1..=MAX_LOCKED_NAME).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        return Some(Marker::Open(if valid {
            Ok(name)
        } else {
            Err("a locked section name is 1 to 64 of `a-z`, `0-9`, `_` and `-`")
        }));
    }
    if rest.is_empty() || rest.starts_with(char::is_whitespace) {
        return Some(Marker::Open(Err(
            "an opening marker is `{# locked: NAME #}`",
        )));
    }
    // `{# lockedown #}` and the like are ordinary comments.
    None
}

fn locked_in_part(part: &str, src: &str, sections: &mut LockedSections, issues: &mut Vec<Issue>) {
    let malformed = |offset: usize, message: String| {
        Issue::new(part, "LOCKED_SECTION_MALFORMED", message).at(src, offset)
    };
    // Open markers: name (None when malformed), offset of the marker, offset of the content.
    let mut open: Vec<(Option<&str>, usize, usize)> = Vec::new();
    for tag in scan::tags(src) {
        if tag.kind != TagKind::Comment {
            continue;
        }
        match marker(tag.inner()) {
            None => {}
            Some(Marker::Open(name)) => {
                match name {
                    Err(why) => issues.push(malformed(tag.start, why.to_owned())),
                    Ok(name) if !open.is_empty() => issues.push(malformed(
                        tag.start,
                        format!(
                            "locked section `{name}` is nested inside another; locked sections cannot nest"
                        ),
                    )),
                    Ok(name) if sections.contains_key(name) => issues.push(malformed(
                        tag.start,
                        format!("locked section `{name}` is defined more than once"),
                    )),
                    Ok(_) => {}
                }
                open.push((name.ok(), tag.start, tag.end));
            }
            Some(Marker::Close(shape)) => {
                if let Err(why) = shape {
                    issues.push(malformed(tag.start, why.to_owned()));
                }
                match open.pop() {
                    None if shape.is_ok() => issues.push(malformed(
                        tag.start,
                        "`{# endlocked #}` without a matching `{# locked: NAME #}`".to_owned(),
                    )),
                    None => {}
                    Some((name, _, content_start)) => {
                        if let Some(name) =
                            name.filter(|n| open.is_empty() && !sections.contains_key(*n))
                        {
                            let body = src.get(content_start..tag.start).unwrap_or_default();
                            sections.insert(name.to_owned(), body.to_owned());
                        }
                    }
                }
            }
        }
    }
    for (name, at, _) in open {
        let message = match name {
            Some(name) => {
                format!("locked section `{name}` is never closed with `{{# endlocked #}}`")
            }
            None => "locked section is never closed with `{# endlocked #}`".to_owned(),
        };
        issues.push(malformed(at, message));
    }
}
