//! Turning a model's reply text into template content. Models asked for "only JSON" still
//! sometimes wrap it in a Markdown fence or add a sentence around it, so the parser looks
//! for the outermost JSON object instead of demanding a clean reply. What it does not do
//! is guess: a reply without a `subject` string and at least one body part is rejected
//! with a reason a person can act on.

use domain::template::{TemplateContent, TemplateVariable};
use serde_json::{Map, Value};

/// Most `{` positions tried when looking for an object inside prose.
const MAX_OBJECT_STARTS: usize = 64;

/// Parses a reply into content whose `variables` are `variables`.
pub(crate) fn parse_reply(
    reply: &str,
    variables: &[TemplateVariable],
) -> Result<TemplateContent, String> {
    let object = find_object(reply)?;
    let field = |name: &str| -> Result<Option<String>, String> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "the model's answer has a \"{name}\" that is not a string ({})",
                kind(other)
            )),
        }
    };
    let subject = field("subject")?
        .map(|s| s.trim().to_string())
        .ok_or_else(|| "the model's answer has no \"subject\" string".to_string())?;
    let preview = field("preview")?.map(|s| s.trim().to_string());
    let html = field("html")?;
    let text = field("text")?;
    if html.is_none() && text.is_none() {
        return Err("the model's answer has neither an \"html\" nor a \"text\" body".to_string());
    }
    Ok(TemplateContent {
        subject,
        subject_variants: Vec::new(),
        preview,
        html,
        text,
        variables: variables.to_vec(),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn find_object(reply: &str) -> Result<Map<String, Value>, String> {
    let trimmed = reply.trim();
    if trimmed.is_empty() {
        return Err("the model's answer was empty".to_string());
    }
    if let Some(object) = whole_object(trimmed) {
        return Ok(object);
    }
    if let Some(inner) = fenced(trimmed) {
        if let Some(object) = whole_object(inner).or_else(|| first_object(inner)) {
            return Ok(object);
        }
    }
    if let Some(object) = first_object(trimmed) {
        return Ok(object);
    }
    let what = match serde_json::from_str::<Value>(trimmed) {
        Ok(value) => format!("it is {}", kind(&value)),
        Err(e) => format!("no JSON object found ({e})"),
    };
    Err(format!(
        "the model's answer is not the JSON object asked for: {what}; it starts with {:?}",
        excerpt(trimmed, 80)
    ))
}

fn whole_object(s: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    }
}

/// The content of the first Markdown code fence (```` ``` ```` or ```` ```json ````); an
/// unclosed fence runs to the end.
fn fenced(s: &str) -> Option<&str> {
    let open = s.find("```")?;
    let after = &s[open + 3..];
    let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
    let body = &after[body_start..];
    Some(match body.find("```") {
        Some(close) => &body[..close],
        None => body,
    })
}

/// The first complete JSON object that starts at a `{`, scanning left to right, so the
/// outermost object wins over the ones nested in it.
fn first_object(s: &str) -> Option<Map<String, Value>> {
    s.match_indices('{')
        .take(MAX_OBJECT_STARTS)
        .find_map(|(at, _)| {
            let mut stream = serde_json::Deserializer::from_str(&s[at..]).into_iter::<Value>();
            match stream.next() {
                Some(Ok(Value::Object(object))) => Some(object),
                _ => None,
            }
        })
}

fn excerpt(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"subject":" Hi ","preview":"","html":"<p>{{ name }}</p>","text":null}"#;

    fn vars() -> Vec<TemplateVariable> {
        vec![TemplateVariable {
            name: "name".into(),
            required: true,
            default: None,
            description: None,
        }]
    }

    #[test]
    fn clean_json_parses_and_takes_the_declared_variables() {
        let c = parse_reply(JSON, &vars()).expect("parses");
        assert_eq!(c.subject, "Hi");
        assert_eq!(c.preview, None);
        assert_eq!(c.html.as_deref(), Some("<p>{{ name }}</p>"));
        assert_eq!(c.text, None);
        assert_eq!(c.variables, vars());
    }

    #[test]
    fn fences_and_prose_are_tolerated() {
        for reply in [
            format!("```json\n{JSON}\n```"),
            format!("```\n{JSON}\n```\n"),
            format!("Here is the draft:\n```json\n{JSON}\n```\nHope it helps {{:}}"),
            format!("Sure! {JSON} Let me know."),
            format!("```json\n{JSON}"),
        ] {
            let c = parse_reply(&reply, &[]).unwrap_or_else(|e| panic!("{reply}: {e}"));
            assert_eq!(c.subject, "Hi", "{reply}");
        }
    }

    #[test]
    fn outermost_object_wins() {
        let reply = r#"note {"subject":"Outer","html":"x","extra":{"subject":"Inner"}}"#;
        assert_eq!(
            parse_reply(reply, &[]).map(|c| c.subject),
            Ok("Outer".into())
        );
    }

    #[test]
    fn unusable_answers_say_why() {
        let cases = [
            ("", "was empty"),
            ("I cannot help with that.", "not the JSON object asked for"),
            ("[1, 2]", "it is an array"),
            (r#"{"html":"x"}"#, "no \"subject\""),
            (r#"{"subject":"s"}"#, "neither an \"html\" nor a \"text\""),
            (
                r#"{"subject":"s","html":5}"#,
                "\"html\" that is not a string (a number)",
            ),
        ];
        for (reply, reason) in cases {
            let err = parse_reply(reply, &[]).expect_err(reply);
            assert!(err.contains(reason), "{reply}: {err}");
        }
    }
}
