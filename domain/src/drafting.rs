//! A tenant's defaults for LLM-assisted drafting: which provider and model, how creative,
//! in which brand voice, and whether the built-in deterministic drafter may answer when
//! the provider fails. One small aggregate on [`DRAFTING_SETTINGS_STREAM`]` / <tenant>`.

use serde::{Deserialize, Serialize};

use crate::codec::{from_json, require_v1, to_json, DomainEvent};
use crate::error::{DomainError, FieldError, Result};

pub const DRAFTING_SETTINGS_STREAM: &str = "drafting-settings";
pub const DRAFTING_DEFAULTS_SET: &str = "DraftingDefaultsSet";
pub const PROVIDERS: &[&str] = &["dummy", "openai", "anthropic", "deepseek"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DraftingDefaults {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub temperature: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand_voice: Option<String>,
    pub failover: bool,
}

impl Default for DraftingDefaults {
    /// The deterministic drafter: works with no key and no network.
    fn default() -> Self {
        DraftingDefaults {
            provider: "dummy".into(),
            model: None,
            temperature: 0.3,
            brand_voice: None,
            failover: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum DraftingEvent {
    DefaultsSet(DraftingDefaults),
}

/// `None` until a tenant sets its own.
pub type DraftingState = Option<DraftingDefaults>;

fn invalid(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

pub fn decide(_state: &DraftingState, defaults: DraftingDefaults) -> Result<Vec<DraftingEvent>> {
    let mut f = Vec::new();
    if !PROVIDERS.contains(&defaults.provider.as_str()) {
        f.push(invalid(
            "provider",
            "must be `dummy`, `openai`, `anthropic` or `deepseek`",
        ));
    }
    if let Some(m) = &defaults.model {
        if m.trim().is_empty() || m.len() > 100 || m.chars().any(char::is_control) {
            f.push(invalid("model", "must be 1..=100 characters"));
        }
    }
    if !(0.0..=2.0).contains(&defaults.temperature) {
        f.push(invalid("temperature", "must be between 0 and 2"));
    }
    if let Some(v) = &defaults.brand_voice {
        if v.chars().count() > 2000 {
            f.push(invalid("brand_voice", "must be at most 2000 characters"));
        }
    }
    if !f.is_empty() {
        return Err(DomainError::Validation { fields: f });
    }
    Ok(vec![DraftingEvent::DefaultsSet(defaults)])
}

pub fn apply(state: &mut DraftingState, event: &DraftingEvent) {
    let DraftingEvent::DefaultsSet(d) = event;
    *state = Some(d.clone());
}

impl DomainEvent for DraftingEvent {
    fn event_type(&self) -> &'static str {
        DRAFTING_DEFAULTS_SET
    }

    fn schema_version(&self) -> u16 {
        1
    }

    fn encode(&self) -> Vec<u8> {
        let DraftingEvent::DefaultsSet(d) = self;
        to_json(d)
    }

    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self> {
        require_v1(event_type, schema_version, &[DRAFTING_DEFAULTS_SET])?;
        Ok(DraftingEvent::DefaultsSet(from_json(event_type, payload)?))
    }

    fn summary(&self) -> String {
        let DraftingEvent::DefaultsSet(d) = self;
        format!(
            "Drafting defaults set: {}{}",
            d.provider,
            d.model
                .as_ref()
                .map(|m| format!(" / {m}"))
                .unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_checked() {
        let bad = DraftingDefaults {
            provider: "gpt".into(),
            temperature: 3.0,
            ..DraftingDefaults::default()
        };
        match decide(&None, bad).unwrap_err() {
            DomainError::Validation { fields } => {
                let names: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(names, ["provider", "temperature"]);
            }
            other => panic!("{other:?}"),
        }
        let good = DraftingDefaults {
            provider: "anthropic".into(),
            model: Some("claude-sonnet-4-5".into()),
            ..DraftingDefaults::default()
        };
        let events = decide(&None, good.clone()).unwrap();
        let mut state = None;
        apply(&mut state, &events[0]);
        assert_eq!(state, Some(good));
    }
}
