//! A small, forgiving scanner over minijinja source that finds the tags (`{{ }}`, `{% %}`,
//! `{# #}`) and where they sit.
//!
//! minijinja's own lexer is not public, and its meta API (`undeclared_variables`) gives names
//! without positions. We need positions for three things minijinja does not do for us: the
//! locked-section markers (which are comments, so the parser throws them away), the line of an
//! undeclared variable, and the statements we refuse (`include` and friends). The scanner
//! never decides whether a template is valid; the real parser does that. When the source is
//! broken the scanner simply stops, and the parser's syntax error is what the author sees.

/// Which delimiter opened a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagKind {
    Comment,
    Expr,
    Stmt,
}

/// One tag: `start` is the offset of its opening `{`, `body` the text between the delimiters
/// (whitespace-control `-`/`+` included), `body_start` the offset of that text and `end` the
/// offset just past the closing delimiter.
#[derive(Clone, Debug)]
pub(crate) struct Tag<'a> {
    pub kind: TagKind,
    pub start: usize,
    pub end: usize,
    pub body: &'a str,
    pub body_start: usize,
}

impl<'a> Tag<'a> {
    /// The body without whitespace control markers and surrounding whitespace.
    pub fn inner(&self) -> &'a str {
        let b = self.body;
        let b = b.strip_prefix(['-', '+']).unwrap_or(b);
        let b = b.strip_suffix(['-', '+']).unwrap_or(b);
        b.trim()
    }

    /// The first word of a statement (`for`, `include`, `raw`...).
    pub fn keyword(&self) -> &'a str {
        let inner = self.inner();
        let end = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        &inner[..end]
    }
}

/// All tags of `src`, in order. Text inside `{% raw %}` blocks is data, so it yields no tags.
pub(crate) fn tags(src: &str) -> Vec<Tag<'_>> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = find(bytes, i, b"{") {
        let Some(&next) = bytes.get(p + 1) else { break };
        let (kind, closer): (TagKind, &[u8]) = match next {
            b'#' => (TagKind::Comment, b"#}"),
            b'{' => (TagKind::Expr, b"}}"),
            b'%' => (TagKind::Stmt, b"%}"),
            _ => {
                i = p + 1;
                continue;
            }
        };
        let body_start = p + 2;
        let close = if kind == TagKind::Comment {
            find(bytes, body_start, closer)
        } else {
            find_code_end(bytes, body_start, closer)
        };
        let Some(close) = close else { break };
        let tag = Tag {
            kind,
            start: p,
            end: close + 2,
            body: &src[body_start..close],
            body_start,
        };
        i = tag.end;
        let is_raw = kind == TagKind::Stmt && tag.keyword() == "raw";
        out.push(tag);
        if is_raw {
            match find_endraw(src, i) {
                Some(after) => i = after,
                None => break,
            }
        }
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(src: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let column = before[line_start..].chars().count() + 1;
    (saturate(line), saturate(column))
}

pub(crate) fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Offset of the first place `name` is used as a variable (not an attribute, filter or test
/// name, not inside a string) in an expression or statement tag.
pub(crate) fn first_use(src: &str, name: &str) -> Option<usize> {
    for tag in tags(src) {
        if tag.kind == TagKind::Comment {
            continue;
        }
        if let Some(at) = find_ident(tag.body, name) {
            return Some(tag.body_start + at);
        }
    }
    None
}

fn find_ident(body: &str, name: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut i = 0;
    let mut prev_significant: u8 = b' ';
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\'' {
            i = skip_string(bytes, i);
            prev_significant = b'"';
            continue;
        }
        if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let attribute_like = matches!(prev_significant, b'.' | b'|');
            if !attribute_like && &body[start..i] == name {
                return Some(start);
            }
            prev_significant = b'a';
            continue;
        }
        if b.is_ascii_digit() {
            // a number such as `1e5` must not yield the identifier `e5`
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            prev_significant = b'0';
            continue;
        }
        if !b.is_ascii_whitespace() {
            prev_significant = b;
        }
        i += 1;
    }
    None
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// End of an expression or statement: the closer, ignoring closers inside string literals.
fn find_code_end(bytes: &[u8], from: usize, closer: &[u8]) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => i = skip_string(bytes, i),
            _ if bytes[i..].starts_with(closer) => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Offset just past a string literal starting at `at` (or the end of input when unterminated).
fn skip_string(bytes: &[u8], at: usize) -> usize {
    let quote = bytes[at];
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Offset just past the `{% endraw %}` that closes a raw block whose body starts at `from`.
fn find_endraw(src: &str, from: usize) -> Option<usize> {
    let bytes = src.as_bytes();
    let mut i = from;
    while let Some(p) = find(bytes, i, b"{%") {
        let close = find(bytes, p + 2, b"%}")?;
        let tag = Tag {
            kind: TagKind::Stmt,
            start: p,
            end: close + 2,
            body: &src[p + 2..close],
            body_start: p + 2,
        };
        if tag.inner() == "endraw" {
            return Some(tag.end);
        }
        i = p + 2;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tags_and_skips_strings_and_raw() {
        let src = "a {{ x ~ '}}' }} {# c #} {% raw %}{{ y }}{# z #}{% endraw %}{% if w %}";
        let kinds: Vec<_> = tags(src).iter().map(|t| (t.kind, t.inner())).collect();
        assert_eq!(
            kinds,
            vec![
                (TagKind::Expr, "x ~ '}}'"),
                (TagKind::Comment, "c"),
                (TagKind::Stmt, "raw"),
                (TagKind::Stmt, "if w"),
            ]
        );
    }

    #[test]
    fn first_use_ignores_attributes_filters_and_strings() {
        let src = "{{ a.name }}\n{{ 'name' }}{{ b|name }}\n  {{ name }}";
        let at = first_use(src, "name").unwrap();
        assert_eq!(line_col(src, at), (3, 6));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("é\nàb", 5), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("é", 1), (1, 1));
    }
}
