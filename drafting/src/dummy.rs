//! The dummy provider: a plain, deterministic draft built from the request alone. It lets
//! the whole drafting flow (records, review, validation) run without a network or an API
//! key, and is what failover falls back to. Its drafts are meant to pass the caller's
//! template validation: author text is escaped so it can never form template syntax, only
//! required declared variables are used, and locked sections are copied verbatim.

use domain::template::TemplateContent;

use crate::brief::{given, Brief};
use crate::prompt::{find_open_marker, locked_block, placement, AnswerFields};
use crate::record::{DraftRequest, Task, Usage};

/// The dummy's draft and what it counts as usage for `prompt`.
pub(crate) fn answer(req: &DraftRequest, prompt: &str) -> (Result<TemplateContent, String>, Usage) {
    let content = match &req.task {
        Task::Generate(brief) => Ok(generate(req, brief)),
        Task::Revise { instruction } => match &req.base {
            Some(base) => Ok(revise(req, base, instruction)),
            None => Err("a revision needs the version to revise (no base was given)".to_string()),
        },
    };
    let answer_text = content
        .as_ref()
        .ok()
        .and_then(|c| serde_json::to_string(&AnswerFields::of(c)).ok())
        .unwrap_or_default();
    let usage = Usage {
        input_tokens: words(prompt),
        output_tokens: words(&answer_text),
    };
    (content, usage)
}

fn words(s: &str) -> u64 {
    u64::try_from(s.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// HTML-escapes author text; `{` is escaped too so the text can never open a template tag.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '{' => out.push_str("&#123;"),
            '}' => out.push_str("&#125;"),
            c => out.push(c),
        }
    }
    out
}

/// Author text for the subject and text parts: `{{`, `{%` and `{#` get a space after the
/// brace so they stay literal text instead of opening a template tag.
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '{' && matches!(chars.peek(), Some('{' | '%' | '#')) {
            out.push(' ');
        }
    }
    out
}

/// One line of at most `max` characters (an ellipsis marks a cut).
fn headline(s: &str, max: usize) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

fn generate(req: &DraftRequest, brief: &Brief) -> TemplateContent {
    // Paragraphs as (text part, html part).
    let mut paragraphs: Vec<(String, String)> = Vec::new();
    let purpose = brief.purpose.trim();
    paragraphs.push((plain(purpose), format!("<p>{}</p>", html_escape(purpose))));
    for fact in brief.mandatory_facts.iter().map(|f| f.trim()) {
        if !fact.is_empty() {
            paragraphs.push((plain(fact), format!("<p>{}</p>", html_escape(fact))));
        }
    }
    for v in req.variables.iter().filter(|v| v.required) {
        let label = v
            .description
            .as_deref()
            .map(|d| headline(d, 80))
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| v.name.clone());
        let slot = format!("{{{{ {} }}}}", v.name);
        paragraphs.push((
            format!("{}: {slot}", plain(&label)),
            format!("<p>{}: {slot}</p>", html_escape(&label)),
        ));
    }
    if let Some(cta) = given(&brief.call_to_action) {
        paragraphs.push((
            plain(cta),
            format!("<p><strong>{}</strong></p>", html_escape(cta)),
        ));
    }

    let mut html: Vec<String> = paragraphs.iter().map(|(_, h)| h.clone()).collect();
    let mut text: Vec<String> = paragraphs.into_iter().map(|(t, _)| t).collect();
    for (name, body) in &req.locked_sections {
        let place = placement(req.base.as_ref(), name);
        if place.html {
            html.push(locked_block(name, body));
        }
        if place.text {
            text.push(locked_block(name, body));
        }
    }

    let preview_source = brief
        .mandatory_facts
        .iter()
        .map(|f| f.trim())
        .find(|f| !f.is_empty())
        .unwrap_or(purpose);
    TemplateContent {
        subject: plain(&headline(purpose, 78)),
        subject_variants: Vec::new(),
        preview: Some(plain(&headline(preview_source, 120))),
        html: Some(html.join("\n") + "\n"),
        text: Some(text.join("\n\n") + "\n"),
        variables: req.variables.clone(),
    }
}

fn revise(req: &DraftRequest, base: &TemplateContent, instruction: &str) -> TemplateContent {
    let instruction = instruction.trim();
    let html_note = format!("<p>Revised: {}</p>\n", html_escape(instruction));
    let text_note = format!("Revised: {}\n\n", plain(instruction));
    let mut content = base.clone();
    content.html = base
        .html
        .as_deref()
        .map(|h| insert_note(h, &html_note, true));
    content.text = base
        .text
        .as_deref()
        .map(|t| insert_note(t, &text_note, false));
    if content.html.is_none() && content.text.is_none() {
        content.text = Some(text_note.trim_end().to_string() + "\n");
    }
    content.subject_variants = Vec::new();
    content.variables = req.variables.clone();
    content
}

/// Puts `note` before the first locked section; else (HTML) before `</body>`; else at the
/// end, on its own line.
fn insert_note(src: &str, note: &str, is_html: bool) -> String {
    let at = find_open_marker(src, None).or_else(|| {
        if is_html {
            src.to_ascii_lowercase().rfind("</body>")
        } else {
            None
        }
    });
    match at {
        Some(at) => format!("{}{note}{}", &src[..at], &src[at..]),
        None => {
            let mut out = src.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            if !is_html && !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(note.trim_end());
            out.push('\n');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn author_text_cannot_form_template_syntax() {
        assert_eq!(
            plain("a {{ b }} {% if %} {# c #} {x}"),
            "a { { b }} { % if %} { # c #} {x}"
        );
        assert_eq!(plain("{{{"), "{ { {");
        assert_eq!(
            html_escape("<b>\"Tom\" & 'Jerry'</b> {{ x }}"),
            "&lt;b&gt;&quot;Tom&quot; &amp; &#39;Jerry&#39;&lt;/b&gt; &#123;&#123; x &#125;&#125;"
        );
    }

    #[test]
    fn headlines_are_one_bounded_line() {
        assert_eq!(
            headline("  Your\norder   shipped ", 78),
            "Your order shipped"
        );
        let long = headline(&"word ".repeat(40), 20);
        assert_eq!(long.chars().count(), 20);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn notes_go_before_the_first_locked_section_or_body_end() {
        let html = "<p>a</p>\n{# locked: legal #}L{# endlocked #}\n";
        assert_eq!(
            insert_note(html, "<p>N</p>\n", true),
            "<p>a</p>\n<p>N</p>\n{# locked: legal #}L{# endlocked #}\n"
        );
        assert_eq!(
            insert_note("<html><BODY><p>a</p></BODY></html>", "<p>N</p>\n", true),
            "<html><BODY><p>a</p><p>N</p>\n</BODY></html>"
        );
        assert_eq!(insert_note("a", "N\n\n", false), "a\n\nN\n");
    }
}
