//! The one error type of the API surface and how each failure maps to HTTP and GraphQL.
//!
//! | failure                                   | HTTP | code                          |
//! |-------------------------------------------|------|-------------------------------|
//! | missing / unknown / revoked / expired key | 401  | `UNAUTHENTICATED`             |
//! | suspended tenant, not allowed             | 403  | `TENANT_SUSPENDED`, `FORBIDDEN` |
//! | not found (including another tenant's)   | 404  | `*_NOT_FOUND`                 |
//! | concurrent change, already exists         | 409  | `CONFLICT`, `*_ALREADY_*`     |
//! | invalid input                             | 422  | `INVALID_*`, `VALIDATION_FAILED` |
//! | storage failure, log refusing writes      | 503  | `UNAVAILABLE`                 |
//! | corrupt data                              | 500  | `INTERNAL`                    |
use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use domain::DomainError;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

// `ApiError` deliberately implements neither `Display` nor `std::error::Error`:
// async-graphql converts every `Display` type into an error *without* our `code`
// extension, so with `Display` a `?` in a resolver would silently drop the code.
// Actix gets the [`HttpError`] wrapper instead.

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(401, "UNAUTHENTICATED", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "FORBIDDEN", message)
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(422, "VALIDATION_FAILED", format!("{field}: {message}"))
            .with_details(json!({ "fields": [{ "field": field, "message": message }] }))
    }

    pub fn tenant_not_found() -> Self {
        Self::new(404, "TENANT_NOT_FOUND", "no such tenant")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "INTERNAL", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "UNAVAILABLE", message)
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message, "details": self.details } })
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let status = match &e {
            DomainError::TenantNotFound
            | DomainError::ApiKeyNotFound
            | DomainError::MessageNotFound
            | DomainError::SenderNotFound
            | DomainError::RelayNotFound
            | DomainError::CallbackNotSet
            | DomainError::TemplateNotFound
            | DomainError::TemplateVersionNotFound { .. }
            | DomainError::SuppressionNotFound => 404,
            DomainError::TenantAlreadyExists
            | DomainError::ApiKeyAlreadyExists
            | DomainError::ApiKeyAlreadyRevoked
            | DomainError::TenantNotSuspended
            | DomainError::MessageAlreadyExists
            | DomainError::MessageFinal { .. }
            | DomainError::TemplateAlreadyExists
            | DomainError::TemplateVersionState { .. } => 409,
            DomainError::TenantSuspended | DomainError::LockedSectionEditForbidden => 403,
            DomainError::UnknownEventType { .. }
            | DomainError::UnsupportedSchemaVersion { .. }
            | DomainError::MalformedPayload { .. } => 500,
            _ => 422,
        };
        let details = match &e {
            DomainError::Validation { fields } => json!({ "fields": fields }),
            _ => Value::Null,
        };
        ApiError::new(status, e.code(), e.to_string()).with_details(details)
    }
}

impl From<eventlog::Error> for ApiError {
    fn from(e: eventlog::Error) -> Self {
        use eventlog::Error as E;
        match &e {
            E::WrongExpectedVersion { .. } | E::DuplicateMismatch { .. } => {
                ApiError::new(409, "CONFLICT", e.to_string())
            }
            E::InvalidInput(_) => ApiError::new(422, "VALIDATION_FAILED", e.to_string()),
            E::Corrupt { .. } | E::UnsupportedFormat { .. } | E::WrongKey => {
                ApiError::internal(e.to_string())
            }
            E::Locked | E::Unavailable | E::Storage(_) | E::Closed => {
                ApiError::unavailable(e.to_string())
            }
        }
    }
}

impl From<projections::Error> for ApiError {
    fn from(e: projections::Error) -> Self {
        match e {
            projections::Error::Log(l) => l.into(),
            projections::Error::UnknownProjection(n) => ApiError::new(
                404,
                "PROJECTION_NOT_FOUND",
                format!("no projection is named {n}"),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        use async_graphql::ErrorExtensions;
        async_graphql::Error::new(e.message.clone()).extend_with(|_, ext| {
            ext.set("code", e.code);
            ext.set("status", i32::from(e.status));
            if !e.details.is_null() {
                if let Ok(v) = async_graphql::Value::from_json(e.details.clone()) {
                    ext.set("details", v);
                }
            }
        })
    }
}

/// An [`ApiError`] as actix's error type; `?` converts.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0.message, self.0.code)
    }
}

impl std::error::Error for HttpError {}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(self.0.body())
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;
