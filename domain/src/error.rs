//! Domain errors with stable, machine-readable codes.

/// Every way a domain operation can be refused or an event can fail to decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("tenant already exists")]
    TenantAlreadyExists,
    #[error("tenant not found")]
    TenantNotFound,
    #[error("tenant is suspended")]
    TenantSuspended,
    #[error("tenant is not suspended")]
    TenantNotSuspended,
    #[error("invalid tenant name: {reason}")]
    InvalidTenantName { reason: String },
    #[error("invalid label: {reason}")]
    InvalidLabel { reason: String },
    #[error("invalid suspension reason: {reason}")]
    InvalidSuspendReason { reason: String },
    #[error("invalid key hash: {reason}")]
    InvalidKeyHash { reason: String },
    #[error("API key already exists")]
    ApiKeyAlreadyExists,
    #[error("API key not found")]
    ApiKeyNotFound,
    #[error("API key already revoked")]
    ApiKeyAlreadyRevoked,
    #[error("expiry must be in the future")]
    ExpiryNotInFuture,
    #[error("invalid id: {value:?}")]
    InvalidId { value: String },
    #[error("unknown event type: {event_type}")]
    UnknownEventType { event_type: String },
    #[error("unsupported schema version {version} for event type {event_type}")]
    UnsupportedSchemaVersion { event_type: String, version: u16 },
    #[error("malformed payload for event type {event_type}: {reason}")]
    MalformedPayload { event_type: String, reason: String },
    #[error("invalid fields: {}", fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    Validation { fields: Vec<FieldError> },
    #[error("message already exists")]
    MessageAlreadyExists,
    #[error("message not found")]
    MessageNotFound,
    #[error("the message is already {status}")]
    MessageFinal { status: String },
    #[error("sender profile not found")]
    SenderNotFound,
    #[error("relay not found")]
    RelayNotFound,
    #[error("no delivery callback is set")]
    CallbackNotSet,
    #[error("template not found")]
    TemplateNotFound,
    #[error("a template with this key already exists")]
    TemplateAlreadyExists,
    #[error("template version {version} not found")]
    TemplateVersionNotFound { version: u32 },
    #[error("version {version} is {status}; this needs a {wanted} version")]
    TemplateVersionState {
        version: u32,
        status: String,
        wanted: String,
    },
    #[error("changing a locked section needs the operator token or an approver key")]
    LockedSectionEditForbidden,
    #[error("this address is not suppressed")]
    SuppressionNotFound,
}

/// One failing input field, named as the caller spelled it (`to[2]`, `headers.X-Foo`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl DomainError {
    /// Stable SCREAMING_SNAKE code, safe to expose to API clients.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::TenantAlreadyExists => "TENANT_ALREADY_EXISTS",
            DomainError::TenantNotFound => "TENANT_NOT_FOUND",
            DomainError::TenantSuspended => "TENANT_SUSPENDED",
            DomainError::TenantNotSuspended => "TENANT_NOT_SUSPENDED",
            DomainError::InvalidTenantName { .. } => "INVALID_TENANT_NAME",
            DomainError::InvalidLabel { .. } => "INVALID_LABEL",
            DomainError::InvalidSuspendReason { .. } => "INVALID_SUSPEND_REASON",
            DomainError::InvalidKeyHash { .. } => "INVALID_KEY_HASH",
            DomainError::ApiKeyAlreadyExists => "API_KEY_ALREADY_EXISTS",
            DomainError::ApiKeyNotFound => "API_KEY_NOT_FOUND",
            DomainError::ApiKeyAlreadyRevoked => "API_KEY_ALREADY_REVOKED",
            DomainError::ExpiryNotInFuture => "EXPIRY_NOT_IN_FUTURE",
            DomainError::InvalidId { .. } => "INVALID_ID",
            DomainError::UnknownEventType { .. } => "UNKNOWN_EVENT_TYPE",
            DomainError::UnsupportedSchemaVersion { .. } => "UNSUPPORTED_SCHEMA_VERSION",
            DomainError::MalformedPayload { .. } => "MALFORMED_PAYLOAD",
            DomainError::Validation { .. } => "VALIDATION_FAILED",
            DomainError::MessageAlreadyExists => "MESSAGE_ALREADY_EXISTS",
            DomainError::MessageNotFound => "MESSAGE_NOT_FOUND",
            DomainError::MessageFinal { .. } => "MESSAGE_ALREADY_FINAL",
            DomainError::SenderNotFound => "SENDER_NOT_FOUND",
            DomainError::RelayNotFound => "RELAY_NOT_FOUND",
            DomainError::CallbackNotSet => "CALLBACK_NOT_SET",
            DomainError::TemplateNotFound => "TEMPLATE_NOT_FOUND",
            DomainError::TemplateAlreadyExists => "TEMPLATE_ALREADY_EXISTS",
            DomainError::TemplateVersionNotFound { .. } => "TEMPLATE_VERSION_NOT_FOUND",
            DomainError::TemplateVersionState { .. } => "TEMPLATE_VERSION_STATE",
            DomainError::LockedSectionEditForbidden => "LOCKED_SECTION_EDIT_FORBIDDEN",
            DomainError::SuppressionNotFound => "SUPPRESSION_NOT_FOUND",
        }
    }
}

/// Result alias defaulting to [`DomainError`].
pub type Result<T, E = DomainError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_screaming_snake() {
        assert_eq!(
            DomainError::TenantAlreadyExists.code(),
            "TENANT_ALREADY_EXISTS"
        );
        assert_eq!(DomainError::TenantNotFound.code(), "TENANT_NOT_FOUND");
        assert_eq!(DomainError::TenantSuspended.code(), "TENANT_SUSPENDED");
        assert_eq!(
            DomainError::UnsupportedSchemaVersion {
                event_type: "X".into(),
                version: 9
            }
            .code(),
            "UNSUPPORTED_SCHEMA_VERSION"
        );
    }
}
