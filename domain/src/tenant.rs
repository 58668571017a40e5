//! The Tenant aggregate. API keys belong to it: every event below is appended to
//! the tenant's own stream ([`TENANT_STREAM`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{DomainError, Result};
use crate::ids::{ApiKeyId, TenantId};

/// Stream type name for the tenant aggregate.
pub const TENANT_STREAM: &str = "tenant";

/// Maximum length (in characters) of a tenant name, after trimming.
pub const MAX_TENANT_NAME_CHARS: usize = 100;
/// Maximum length (in characters) of an API key label, after trimming.
pub const MAX_LABEL_CHARS: usize = 100;
/// Maximum length (in characters) of a suspension reason.
pub const MAX_SUSPEND_REASON_CHARS: usize = 500;
/// Exact length of an API key hash (hex characters).
pub const KEY_HASH_HEX_CHARS: usize = 64;

/// What an API key may do. `Approver` can also send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyRole {
    Sender,
    Approver,
}

impl ApiKeyRole {
    /// "sender" / "approver" (same as the serde form).
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiKeyRole::Sender => "sender",
            ApiKeyRole::Approver => "approver",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// Intent sent to the tenant aggregate.
#[derive(Clone, Debug, PartialEq)]
pub enum TenantCommand {
    Create {
        tenant_id: TenantId,
        name: String,
    },
    Rename {
        name: String,
    },
    Suspend {
        reason: String,
    },
    Reactivate,
    IssueApiKey {
        key_id: ApiKeyId,
        label: String,
        /// 64 hex chars, computed by the caller.
        key_hash: String,
        /// Short public prefix shown in listings.
        prefix: String,
        role: ApiKeyRole,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    },
    RevokeApiKey {
        key_id: ApiKeyId,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantCreated {
    pub tenant_id: TenantId,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantRenamed {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantSuspended {
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantReactivated {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyIssued {
    pub key_id: ApiKeyId,
    pub label: String,
    pub key_hash: String,
    pub prefix: String,
    pub role: ApiKeyRole,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    pub key_id: ApiKeyId,
}

/// Facts recorded on a tenant stream.
#[derive(Clone, Debug, PartialEq)]
pub enum TenantEvent {
    Created(TenantCreated),
    Renamed(TenantRenamed),
    Suspended(TenantSuspended),
    Reactivated(TenantReactivated),
    ApiKeyIssued(ApiKeyIssued),
    ApiKeyRevoked(ApiKeyRevoked),
}

/// Decision state of a tenant, folded from its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantState {
    pub exists: bool,
    pub name: String,
    pub status: Option<TenantStatus>,
    pub keys: BTreeMap<ApiKeyId, ApiKeyState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyState {
    pub label: String,
    pub role: ApiKeyRole,
    pub revoked: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

fn validate_name(name: &str) -> Result<String> {
    validate_text(name, MAX_TENANT_NAME_CHARS, |reason| {
        DomainError::InvalidTenantName { reason }
    })
}

fn validate_label(label: &str) -> Result<String> {
    validate_text(label, MAX_LABEL_CHARS, |reason| DomainError::InvalidLabel {
        reason,
    })
}

/// A short human text: trimmed, not empty, at most `max` characters, no control characters.
fn validate_text(
    text: &str,
    max: usize,
    invalid: impl Fn(String) -> DomainError,
) -> Result<String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if trimmed.chars().count() > max {
        return Err(invalid(format!("must be at most {max} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters".into()));
    }
    Ok(trimmed.to_string())
}

fn validate_key_hash(key_hash: &str) -> Result<()> {
    if key_hash.len() != KEY_HASH_HEX_CHARS || !key_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DomainError::InvalidKeyHash {
            reason: "must be exactly 64 hex characters".to_string(),
        });
    }
    Ok(())
}

fn require_exists(state: &TenantState) -> Result<()> {
    if state.exists {
        Ok(())
    } else {
        Err(DomainError::TenantNotFound)
    }
}

fn require_active(state: &TenantState) -> Result<()> {
    require_exists(state)?;
    match state.status {
        Some(TenantStatus::Active) => Ok(()),
        _ => Err(DomainError::TenantSuspended),
    }
}

/// Holds every business rule of the tenant aggregate.
pub fn decide(state: &TenantState, cmd: TenantCommand) -> Result<Vec<TenantEvent>> {
    match cmd {
        TenantCommand::Create { tenant_id, name } => {
            if state.exists {
                return Err(DomainError::TenantAlreadyExists);
            }
            let name = validate_name(&name)?;
            Ok(vec![TenantEvent::Created(TenantCreated {
                tenant_id,
                name,
            })])
        }
        TenantCommand::Rename { name } => {
            require_active(state)?;
            let name = validate_name(&name)?;
            Ok(vec![TenantEvent::Renamed(TenantRenamed { name })])
        }
        TenantCommand::Suspend { reason } => {
            require_active(state)?;
            if reason.chars().count() > MAX_SUSPEND_REASON_CHARS {
                return Err(DomainError::InvalidSuspendReason {
                    reason: "must be at most 500 characters".to_string(),
                });
            }
            Ok(vec![TenantEvent::Suspended(TenantSuspended { reason })])
        }
        TenantCommand::Reactivate => {
            require_exists(state)?;
            if state.status != Some(TenantStatus::Suspended) {
                return Err(DomainError::TenantNotSuspended);
            }
            Ok(vec![TenantEvent::Reactivated(TenantReactivated {})])
        }
        TenantCommand::IssueApiKey {
            key_id,
            label,
            key_hash,
            prefix,
            role,
            expires_at,
            now,
        } => {
            require_active(state)?;
            let label = validate_label(&label)?;
            validate_key_hash(&key_hash)?;
            if state.keys.contains_key(&key_id) {
                return Err(DomainError::ApiKeyAlreadyExists);
            }
            if let Some(at) = expires_at {
                if at <= now {
                    return Err(DomainError::ExpiryNotInFuture);
                }
            }
            Ok(vec![TenantEvent::ApiKeyIssued(ApiKeyIssued {
                key_id,
                label,
                key_hash,
                prefix,
                role,
                expires_at,
            })])
        }
        TenantCommand::RevokeApiKey { key_id } => {
            // Allowed while suspended: revoking must always be possible.
            require_exists(state)?;
            match state.keys.get(&key_id) {
                None => Err(DomainError::ApiKeyNotFound),
                Some(k) if k.revoked => Err(DomainError::ApiKeyAlreadyRevoked),
                Some(_) => Ok(vec![TenantEvent::ApiKeyRevoked(ApiKeyRevoked { key_id })]),
            }
        }
    }
}

/// Folds one event into the state. Infallible; holds no business rule.
pub fn apply(state: &mut TenantState, event: &TenantEvent) {
    match event {
        TenantEvent::Created(e) => {
            state.exists = true;
            state.name = e.name.clone();
            state.status = Some(TenantStatus::Active);
        }
        TenantEvent::Renamed(e) => state.name = e.name.clone(),
        TenantEvent::Suspended(_) => state.status = Some(TenantStatus::Suspended),
        TenantEvent::Reactivated(_) => state.status = Some(TenantStatus::Active),
        TenantEvent::ApiKeyIssued(e) => {
            state.keys.insert(
                e.key_id,
                ApiKeyState {
                    label: e.label.clone(),
                    role: e.role,
                    revoked: false,
                    expires_at: e.expires_at,
                },
            );
        }
        TenantEvent::ApiKeyRevoked(e) => {
            if let Some(k) = state.keys.get_mut(&e.key_id) {
                k.revoked = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{tenant_event_types, upcast_api_key_issued_v1, DomainEvent};
    use chrono::TimeZone;
    use uuid::Uuid;

    // ---------- fixtures ----------

    fn given(events: &[TenantEvent]) -> TenantState {
        let mut state = TenantState::default();
        for e in events {
            apply(&mut state, e);
        }
        state
    }

    fn tid() -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(0x0191_d3a0_7c4e_7a21_9b0e_2f3c_4d5e_6f70))
    }

    fn kid(n: u128) -> ApiKeyId {
        ApiKeyId::from_uuid(Uuid::from_u128(
            0x0191_d3a0_0000_7000_8000_0000_0000_0000 + n,
        ))
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 15, 12, 0, 0).unwrap()
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn created() -> TenantEvent {
        TenantEvent::Created(TenantCreated {
            tenant_id: tid(),
            name: "Acme".into(),
        })
    }

    fn suspended() -> TenantEvent {
        TenantEvent::Suspended(TenantSuspended {
            reason: "billing".into(),
        })
    }

    fn reactivated() -> TenantEvent {
        TenantEvent::Reactivated(TenantReactivated {})
    }

    fn issued(n: u128) -> TenantEvent {
        TenantEvent::ApiKeyIssued(ApiKeyIssued {
            key_id: kid(n),
            label: "ci deploy".into(),
            key_hash: HASH.into(),
            prefix: "pl_ab12".into(),
            role: ApiKeyRole::Sender,
            expires_at: None,
        })
    }

    fn revoked(n: u128) -> TenantEvent {
        TenantEvent::ApiKeyRevoked(ApiKeyRevoked { key_id: kid(n) })
    }

    fn issue_cmd(n: u128) -> TenantCommand {
        TenantCommand::IssueApiKey {
            key_id: kid(n),
            label: "ci deploy".into(),
            key_hash: HASH.into(),
            prefix: "pl_ab12".into(),
            role: ApiKeyRole::Sender,
            expires_at: None,
            now: now(),
        }
    }

    fn issue_with(f: impl FnOnce(&mut TenantCommand)) -> TenantCommand {
        let mut c = issue_cmd(1);
        f(&mut c);
        c
    }

    fn set_label(c: &mut TenantCommand, v: &str) {
        if let TenantCommand::IssueApiKey { label, .. } = c {
            *label = v.to_string();
        }
    }

    fn invalid_name(r: Result<Vec<TenantEvent>>) -> bool {
        matches!(r, Err(DomainError::InvalidTenantName { .. }))
    }

    fn invalid_label(r: Result<Vec<TenantEvent>>) -> bool {
        matches!(r, Err(DomainError::InvalidLabel { .. }))
    }

    // ---------- Create ----------

    #[test]
    fn create_on_empty_state_emits_created_with_trimmed_name() {
        let state = given(&[]);
        let r = decide(
            &state,
            TenantCommand::Create {
                tenant_id: tid(),
                name: "  Acme  ".into(),
            },
        );
        assert_eq!(r, Ok(vec![created()]));
    }

    #[test]
    fn create_when_already_exists_fails() {
        let state = given(&[created()]);
        let r = decide(
            &state,
            TenantCommand::Create {
                tenant_id: tid(),
                name: "Other".into(),
            },
        );
        assert_eq!(r, Err(DomainError::TenantAlreadyExists));
    }

    #[test]
    fn create_rejects_empty_or_blank_name() {
        for name in ["", "   ", "\t\n"] {
            let r = decide(
                &given(&[]),
                TenantCommand::Create {
                    tenant_id: tid(),
                    name: name.into(),
                },
            );
            assert!(invalid_name(r), "name {name:?} should be rejected");
        }
    }

    #[test]
    fn create_name_length_boundary_is_100_chars() {
        let ok = "é".repeat(100); // 100 chars, 200 bytes
        let r = decide(
            &given(&[]),
            TenantCommand::Create {
                tenant_id: tid(),
                name: ok.clone(),
            },
        );
        assert_eq!(
            r,
            Ok(vec![TenantEvent::Created(TenantCreated {
                tenant_id: tid(),
                name: ok
            })])
        );
        let r = decide(
            &given(&[]),
            TenantCommand::Create {
                tenant_id: tid(),
                name: "a".repeat(101),
            },
        );
        assert!(invalid_name(r));
    }

    #[test]
    fn create_rejects_control_chars_in_name() {
        let r = decide(
            &given(&[]),
            TenantCommand::Create {
                tenant_id: tid(),
                name: "Ac\u{0007}me".into(),
            },
        );
        assert!(invalid_name(r));
    }

    // ---------- Rename ----------

    #[test]
    fn rename_active_tenant_emits_renamed() {
        let state = given(&[created()]);
        let r = decide(
            &state,
            TenantCommand::Rename {
                name: " Acme Corp ".into(),
            },
        );
        assert_eq!(
            r,
            Ok(vec![TenantEvent::Renamed(TenantRenamed {
                name: "Acme Corp".into()
            })])
        );
    }

    #[test]
    fn rename_unknown_tenant_fails() {
        let r = decide(&given(&[]), TenantCommand::Rename { name: "X".into() });
        assert_eq!(r, Err(DomainError::TenantNotFound));
    }

    #[test]
    fn rename_suspended_tenant_fails() {
        let state = given(&[created(), suspended()]);
        let r = decide(&state, TenantCommand::Rename { name: "X".into() });
        assert_eq!(r, Err(DomainError::TenantSuspended));
    }

    #[test]
    fn rename_validates_name() {
        let state = given(&[created()]);
        assert!(invalid_name(decide(
            &state,
            TenantCommand::Rename { name: " ".into() }
        )));
        assert!(invalid_name(decide(
            &state,
            TenantCommand::Rename {
                name: "x".repeat(101)
            }
        )));
        assert!(invalid_name(decide(
            &state,
            TenantCommand::Rename {
                name: "a\u{0000}b".into()
            }
        )));
    }

    // ---------- Suspend ----------

    #[test]
    fn suspend_active_tenant_emits_suspended() {
        let state = given(&[created()]);
        let r = decide(
            &state,
            TenantCommand::Suspend {
                reason: "billing".into(),
            },
        );
        assert_eq!(r, Ok(vec![suspended()]));
    }

    #[test]
    fn suspend_with_empty_reason_is_allowed() {
        let r = decide(
            &given(&[created()]),
            TenantCommand::Suspend {
                reason: String::new(),
            },
        );
        assert_eq!(
            r,
            Ok(vec![TenantEvent::Suspended(TenantSuspended {
                reason: String::new()
            })])
        );
    }

    #[test]
    fn suspend_reason_boundary_is_500_chars() {
        let state = given(&[created()]);
        let ok = "r".repeat(500);
        assert_eq!(
            decide(&state, TenantCommand::Suspend { reason: ok.clone() }),
            Ok(vec![TenantEvent::Suspended(TenantSuspended { reason: ok })])
        );
        assert!(matches!(
            decide(
                &state,
                TenantCommand::Suspend {
                    reason: "r".repeat(501)
                }
            ),
            Err(DomainError::InvalidSuspendReason { .. })
        ));
    }

    #[test]
    fn suspend_unknown_tenant_fails() {
        let r = decide(&given(&[]), TenantCommand::Suspend { reason: "x".into() });
        assert_eq!(r, Err(DomainError::TenantNotFound));
    }

    #[test]
    fn suspend_already_suspended_fails() {
        let state = given(&[created(), suspended()]);
        let r = decide(&state, TenantCommand::Suspend { reason: "x".into() });
        assert_eq!(r, Err(DomainError::TenantSuspended));
    }

    // ---------- Reactivate ----------

    #[test]
    fn reactivate_suspended_tenant_emits_reactivated() {
        let state = given(&[created(), suspended()]);
        assert_eq!(
            decide(&state, TenantCommand::Reactivate),
            Ok(vec![reactivated()])
        );
    }

    #[test]
    fn reactivate_active_tenant_fails() {
        let state = given(&[created()]);
        assert_eq!(
            decide(&state, TenantCommand::Reactivate),
            Err(DomainError::TenantNotSuspended)
        );
        let state = given(&[created(), suspended(), reactivated()]);
        assert_eq!(
            decide(&state, TenantCommand::Reactivate),
            Err(DomainError::TenantNotSuspended)
        );
    }

    #[test]
    fn reactivate_unknown_tenant_fails() {
        assert_eq!(
            decide(&given(&[]), TenantCommand::Reactivate),
            Err(DomainError::TenantNotFound)
        );
    }

    // ---------- IssueApiKey ----------

    #[test]
    fn issue_api_key_on_active_tenant_emits_issued() {
        let state = given(&[created()]);
        assert_eq!(decide(&state, issue_cmd(1)), Ok(vec![issued(1)]));
    }

    #[test]
    fn issue_api_key_with_future_expiry_and_approver_role() {
        let state = given(&[created()]);
        let exp = now() + chrono::Duration::days(30);
        let cmd = issue_with(|c| {
            if let TenantCommand::IssueApiKey {
                expires_at, role, ..
            } = c
            {
                *expires_at = Some(exp);
                *role = ApiKeyRole::Approver;
            }
        });
        assert_eq!(
            decide(&state, cmd),
            Ok(vec![TenantEvent::ApiKeyIssued(ApiKeyIssued {
                key_id: kid(1),
                label: "ci deploy".into(),
                key_hash: HASH.into(),
                prefix: "pl_ab12".into(),
                role: ApiKeyRole::Approver,
                expires_at: Some(exp),
            })])
        );
    }

    #[test]
    fn issue_api_key_unknown_tenant_fails() {
        assert_eq!(
            decide(&given(&[]), issue_cmd(1)),
            Err(DomainError::TenantNotFound)
        );
    }

    #[test]
    fn issue_api_key_suspended_tenant_fails() {
        let state = given(&[created(), suspended()]);
        assert_eq!(
            decide(&state, issue_cmd(1)),
            Err(DomainError::TenantSuspended)
        );
    }

    #[test]
    fn issue_api_key_after_reactivation_succeeds() {
        let state = given(&[created(), suspended(), reactivated()]);
        assert_eq!(decide(&state, issue_cmd(2)), Ok(vec![issued(2)]));
    }

    #[test]
    fn issue_api_key_duplicate_id_fails() {
        let state = given(&[created(), issued(1)]);
        assert_eq!(
            decide(&state, issue_cmd(1)),
            Err(DomainError::ApiKeyAlreadyExists)
        );
        // even once revoked, the id cannot be reused
        let state = given(&[created(), issued(1), revoked(1)]);
        assert_eq!(
            decide(&state, issue_cmd(1)),
            Err(DomainError::ApiKeyAlreadyExists)
        );
    }

    #[test]
    fn issue_api_key_expiry_must_be_strictly_in_future() {
        let state = given(&[created()]);
        for exp in [now(), now() - chrono::Duration::seconds(1)] {
            let cmd = issue_with(|c| {
                if let TenantCommand::IssueApiKey { expires_at, .. } = c {
                    *expires_at = Some(exp);
                }
            });
            assert_eq!(decide(&state, cmd), Err(DomainError::ExpiryNotInFuture));
        }
    }

    #[test]
    fn issue_api_key_validates_label() {
        let state = given(&[created()]);
        for bad in [String::new(), "  ".into(), "x".repeat(101), "a\nb".into()] {
            let cmd = issue_with(|c| set_label(c, &bad));
            assert!(invalid_label(decide(&state, cmd)), "label {bad:?}");
        }
        let ok = "x".repeat(100);
        let cmd = issue_with(|c| set_label(c, &ok));
        assert!(decide(&state, cmd).is_ok());
    }

    #[test]
    fn issue_api_key_validates_key_hash() {
        let state = given(&[created()]);
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            let cmd = issue_with(|c| {
                if let TenantCommand::IssueApiKey { key_hash, .. } = c {
                    *key_hash = bad.to_string();
                }
            });
            assert!(
                matches!(decide(&state, cmd), Err(DomainError::InvalidKeyHash { .. })),
                "hash {bad:?}"
            );
        }
    }

    // ---------- RevokeApiKey ----------

    #[test]
    fn revoke_issued_key_emits_revoked() {
        let state = given(&[created(), issued(1)]);
        assert_eq!(
            decide(&state, TenantCommand::RevokeApiKey { key_id: kid(1) }),
            Ok(vec![revoked(1)])
        );
    }

    #[test]
    fn revoke_is_allowed_while_suspended() {
        let state = given(&[created(), issued(1), suspended()]);
        assert_eq!(
            decide(&state, TenantCommand::RevokeApiKey { key_id: kid(1) }),
            Ok(vec![revoked(1)])
        );
    }

    #[test]
    fn revoke_unknown_key_fails() {
        let state = given(&[created(), issued(1)]);
        assert_eq!(
            decide(&state, TenantCommand::RevokeApiKey { key_id: kid(2) }),
            Err(DomainError::ApiKeyNotFound)
        );
    }

    #[test]
    fn revoke_twice_fails() {
        let state = given(&[created(), issued(1), revoked(1)]);
        assert_eq!(
            decide(&state, TenantCommand::RevokeApiKey { key_id: kid(1) }),
            Err(DomainError::ApiKeyAlreadyRevoked)
        );
    }

    #[test]
    fn revoke_on_unknown_tenant_fails() {
        assert_eq!(
            decide(&given(&[]), TenantCommand::RevokeApiKey { key_id: kid(1) }),
            Err(DomainError::TenantNotFound)
        );
    }

    // ---------- apply ----------

    #[test]
    fn apply_folds_full_history() {
        let state = given(&[
            created(),
            TenantEvent::Renamed(TenantRenamed {
                name: "Acme Corp".into(),
            }),
            issued(1),
            issued(2),
            revoked(1),
            suspended(),
        ]);
        assert!(state.exists);
        assert_eq!(state.name, "Acme Corp");
        assert_eq!(state.status, Some(TenantStatus::Suspended));
        assert_eq!(state.keys.len(), 2);
        assert!(state.keys[&kid(1)].revoked);
        assert_eq!(
            state.keys[&kid(2)],
            ApiKeyState {
                label: "ci deploy".into(),
                role: ApiKeyRole::Sender,
                revoked: false,
                expires_at: None
            }
        );
        let state = given(&[created(), suspended(), reactivated()]);
        assert_eq!(state.status, Some(TenantStatus::Active));
    }

    #[test]
    fn apply_is_infallible_on_unknown_key_revocation() {
        let before = given(&[created()]);
        let mut after = before.clone();
        apply(&mut after, &revoked(9));
        assert_eq!(after, before);
    }

    #[test]
    fn role_as_str_matches_serde() {
        for role in [ApiKeyRole::Sender, ApiKeyRole::Approver] {
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::Value::String(role.as_str().into())
            );
        }
        assert_eq!(ApiKeyRole::Approver.as_str(), "approver");
    }

    // ---------- codec ----------

    fn all_events() -> Vec<TenantEvent> {
        vec![
            created(),
            TenantEvent::Renamed(TenantRenamed {
                name: "Acme Corp".into(),
            }),
            suspended(),
            reactivated(),
            issued(1),
            TenantEvent::ApiKeyIssued(ApiKeyIssued {
                key_id: kid(2),
                label: "approver".into(),
                key_hash: HASH.into(),
                prefix: "pl_zz".into(),
                role: ApiKeyRole::Approver,
                expires_at: Some(now()),
            }),
            revoked(1),
        ]
    }

    #[test]
    fn every_event_round_trips_through_encode_decode() {
        for e in all_events() {
            let bytes = e.encode();
            assert!(!bytes.is_empty());
            let back = TenantEvent::decode(e.event_type(), e.schema_version(), &bytes)
                .unwrap_or_else(|err| panic!("{}: {err}", e.event_type()));
            assert_eq!(back, e);
        }
    }

    #[test]
    fn event_types_and_versions_are_stable() {
        let got: Vec<(&str, u16)> = all_events()
            .iter()
            .map(|e| (e.event_type(), e.schema_version()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("TenantCreated", 1),
                ("TenantRenamed", 1),
                ("TenantSuspended", 1),
                ("TenantReactivated", 1),
                ("ApiKeyIssued", 2),
                ("ApiKeyIssued", 2),
                ("ApiKeyRevoked", 1),
            ]
        );
        assert_eq!(
            tenant_event_types(),
            &[
                "TenantCreated",
                "TenantRenamed",
                "TenantSuspended",
                "TenantReactivated",
                "ApiKeyIssued",
                "ApiKeyRevoked"
            ]
        );
    }

    #[test]
    fn encode_writes_plain_payload_json() {
        let e = TenantEvent::ApiKeyRevoked(ApiKeyRevoked { key_id: kid(1) });
        assert_eq!(
            e.encode(),
            br#"{"key_id":"0191d3a0-0000-7000-8000-000000000001"}"#.to_vec()
        );
        assert_eq!(reactivated().encode(), b"{}".to_vec());
    }

    #[test]
    fn api_key_issued_v1_golden_bytes_upcast_to_v2() {
        let v1: &[u8] = br#"{"key_id":"0191d3a0-0000-7000-8000-000000000001","label":"ci","key_hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","expires_at":null}"#;
        let e = TenantEvent::decode("ApiKeyIssued", 1, v1).unwrap();
        assert_eq!(
            e,
            TenantEvent::ApiKeyIssued(ApiKeyIssued {
                key_id: kid(1),
                label: "ci".into(),
                key_hash: HASH.into(),
                prefix: String::new(),
                role: ApiKeyRole::Sender,
                expires_at: None,
            })
        );
        // re-encoding writes the current version
        assert_eq!(e.schema_version(), 2);
        assert_eq!(TenantEvent::decode("ApiKeyIssued", 2, &e.encode()), Ok(e));
    }

    #[test]
    fn api_key_issued_v1_with_expiry_keeps_it() {
        let v1: &[u8] = br#"{"key_id":"0191d3a0-0000-7000-8000-000000000001","label":"ci","key_hash":"ab","expires_at":"2025-02-01T00:00:00Z"}"#;
        let TenantEvent::ApiKeyIssued(e) = TenantEvent::decode("ApiKeyIssued", 1, v1).unwrap()
        else {
            panic!("wrong variant");
        };
        assert_eq!(
            e.expires_at,
            Some(Utc.with_ymd_and_hms(2025, 2, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(e.role, ApiKeyRole::Sender);
    }

    #[test]
    fn upcast_function_adds_role_and_prefix() {
        let v =
            serde_json::json!({"key_id": "x", "label": "l", "key_hash": "h", "expires_at": null});
        assert_eq!(
            upcast_api_key_issued_v1(v),
            serde_json::json!({"key_id": "x", "label": "l", "key_hash": "h", "expires_at": null, "role": "sender", "prefix": ""})
        );
    }

    #[test]
    fn v2_payload_without_role_is_malformed() {
        let v1_shape: &[u8] = br#"{"key_id":"0191d3a0-0000-7000-8000-000000000001","label":"ci","key_hash":"ab","expires_at":null}"#;
        assert!(matches!(
            TenantEvent::decode("ApiKeyIssued", 2, v1_shape),
            Err(DomainError::MalformedPayload { ref event_type, .. }) if event_type == "ApiKeyIssued"
        ));
    }

    #[test]
    fn decode_unknown_type_fails() {
        assert_eq!(
            TenantEvent::decode("TenantExploded", 1, b"{}"),
            Err(DomainError::UnknownEventType {
                event_type: "TenantExploded".into()
            })
        );
    }

    #[test]
    fn decode_unsupported_versions_fail() {
        for (t, v) in [
            ("TenantCreated", 0),
            ("TenantCreated", 2),
            ("ApiKeyIssued", 0),
            ("ApiKeyIssued", 3),
        ] {
            assert_eq!(
                TenantEvent::decode(t, v, b"{}"),
                Err(DomainError::UnsupportedSchemaVersion {
                    event_type: t.into(),
                    version: v
                })
            );
        }
    }

    #[test]
    fn decode_malformed_payload_fails() {
        for (t, v, p) in [
            ("TenantCreated", 1, &b"not json"[..]),
            ("TenantCreated", 1, &br#"{"name":"Acme"}"#[..]),
            ("TenantRenamed", 1, &br#"{"name":42}"#[..]),
            ("ApiKeyIssued", 1, &b"[]"[..]),
            ("ApiKeyIssued", 2, &b""[..]),
            ("ApiKeyRevoked", 1, &br#"{"key_id":"nope"}"#[..]),
        ] {
            assert!(
                matches!(
                    TenantEvent::decode(t, v, p),
                    Err(DomainError::MalformedPayload { ref event_type, .. }) if event_type == t
                ),
                "{t} v{v} {p:?}"
            );
        }
    }

    #[test]
    fn summaries_are_readable_and_never_contain_the_key_hash() {
        assert_eq!(
            issued(1).summary(),
            "API key 'ci deploy' issued (role sender)"
        );
        assert_eq!(created().summary(), "Tenant 'Acme' created");
        assert_eq!(suspended().summary(), "Tenant suspended: billing");
        assert_eq!(
            revoked(1).summary(),
            "API key 0191d3a0-0000-7000-8000-000000000001 revoked"
        );
        for e in all_events() {
            let s = e.summary();
            assert!(!s.is_empty());
            assert!(!s.contains(HASH), "{s}");
            assert!(!s.contains(&HASH[..16]), "{s}");
        }
    }
}
