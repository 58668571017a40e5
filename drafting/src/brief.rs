//! The author's description of an email to draft. Limits keep a single prompt bounded in
//! size (and cost) whatever a client sends; they are checked by [`Brief::validate`] so the
//! API can answer with per-field errors before any provider is called.

use serde::{Deserialize, Serialize};

/// Most characters in [`Brief::purpose`].
pub(crate) const MAX_PURPOSE_CHARS: usize = 2000;
/// Most characters in `audience`, `tone`, `call_to_action` and in each fact or claim.
pub(crate) const MAX_ITEM_CHARS: usize = 500;
/// Most entries in `mandatory_facts` and in `prohibited_claims`.
pub(crate) const MAX_LIST_ITEMS: usize = 50;

/// What the author wants the email to say. Empty or blank optional fields count as absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Brief {
    /// What the email is for, in the author's words (1..=2000 characters).
    pub purpose: String,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub tone: Option<String>,
    #[serde(default)]
    pub call_to_action: Option<String>,
    /// Statements the draft must contain (at most 50, each at most 500 characters).
    #[serde(default)]
    pub mandatory_facts: Vec<String>,
    /// Claims the draft must not make (at most 50, each at most 500 characters).
    #[serde(default)]
    pub prohibited_claims: Vec<String>,
}

impl Brief {
    /// Every problem with the brief as `(field, message)`; empty when the brief is usable.
    /// List entries are named `mandatory_facts[3]` (zero-based).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut push = |field: String, message: String| errors.push((field, message));

        let purpose_chars = self.purpose.chars().count();
        if self.purpose.trim().is_empty() {
            push("purpose".into(), "must not be empty".into());
        } else if purpose_chars > MAX_PURPOSE_CHARS {
            push(
                "purpose".into(),
                format!("must be at most {MAX_PURPOSE_CHARS} characters (has {purpose_chars})"),
            );
        }

        for (field, value) in [
            ("audience", &self.audience),
            ("tone", &self.tone),
            ("call_to_action", &self.call_to_action),
        ] {
            if let Some(value) = value {
                let chars = value.chars().count();
                if chars > MAX_ITEM_CHARS {
                    push(
                        field.into(),
                        format!("must be at most {MAX_ITEM_CHARS} characters (has {chars})"),
                    );
                }
            }
        }

        for (field, list) in [
            ("mandatory_facts", &self.mandatory_facts),
            ("prohibited_claims", &self.prohibited_claims),
        ] {
            if list.len() > MAX_LIST_ITEMS {
                push(
                    field.into(),
                    format!(
                        "must have at most {MAX_LIST_ITEMS} entries (has {})",
                        list.len()
                    ),
                );
            }
            for (i, item) in list.iter().enumerate() {
                let chars = item.chars().count();
                if item.trim().is_empty() {
                    push(format!("{field}[{i}]"), "must not be empty".into());
                } else if chars > MAX_ITEM_CHARS {
                    push(
                        format!("{field}[{i}]"),
                        format!("must be at most {MAX_ITEM_CHARS} characters (has {chars})"),
                    );
                }
            }
        }
        errors
    }
}

/// `Some(trimmed)` when an optional brief field has content.
pub(crate) fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brief() -> Brief {
        Brief {
            purpose: "Tell customers their order shipped".into(),
            audience: None,
            tone: None,
            call_to_action: None,
            mandatory_facts: vec![],
            prohibited_claims: vec![],
        }
    }

    fn fields(errors: &[(String, String)]) -> Vec<&str> {
        errors.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn a_plain_brief_is_valid() {
        assert!(brief().validate().is_empty());
    }

    #[test]
    fn purpose_must_have_content_and_bounded_length() {
        let mut b = brief();
        b.purpose = "   ".into();
        assert_eq!(fields(&b.validate()), ["purpose"]);
        b.purpose = "é".repeat(MAX_PURPOSE_CHARS);
        assert!(
            b.validate().is_empty(),
            "the limit counts characters, not bytes"
        );
        b.purpose.push('x');
        assert_eq!(fields(&b.validate()), ["purpose"]);
    }

    #[test]
    fn lists_are_bounded_and_entries_named() {
        let mut b = brief();
        b.mandatory_facts = vec!["ok".into(), "".into(), "x".repeat(MAX_ITEM_CHARS + 1)];
        b.prohibited_claims = vec!["claim".into(); MAX_LIST_ITEMS + 1];
        b.tone = Some("t".repeat(MAX_ITEM_CHARS + 1));
        assert_eq!(
            fields(&b.validate()),
            [
                "tone",
                "mandatory_facts[1]",
                "mandatory_facts[2]",
                "prohibited_claims"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<Brief>(r#"{"purpose":"x","colour":"red"}"#);
        assert!(err.is_err());
        let ok: Brief = serde_json::from_str(r#"{"purpose":"x"}"#).expect("minimal brief");
        assert_eq!(ok.mandatory_facts.len(), 0);
    }
}
