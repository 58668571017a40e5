//! Who is calling: the operator, or exactly one tenant through one of its API keys.
use domain::ApiKeyRole;
use eventlog::Actor;
use uuid::Uuid;

use crate::app::App;
use crate::error::{ApiError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Holds the operator token: may act on any tenant, but must name it.
    Operator,
    /// Holds an API key: scoped to that key's tenant, always.
    Tenant {
        tenant: Uuid,
        key: Uuid,
        role: ApiKeyRole,
    },
}

impl Principal {
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Operator => Actor::Operator("operator".into()),
            Principal::Tenant { key, .. } => Actor::ApiKey(*key),
        }
    }

    /// The tenant a call acts on. A tenant key always acts on its own tenant; naming any
    /// other id gets the same answer as a tenant that does not exist, so a tenant cannot
    /// even learn whether another tenant's id is real.
    pub fn scope(&self, requested: Option<Uuid>) -> Result<Uuid> {
        match (self, requested) {
            (Principal::Tenant { tenant, .. }, None) => Ok(*tenant),
            (Principal::Tenant { tenant, .. }, Some(r)) if r == *tenant => Ok(r),
            (Principal::Tenant { .. }, Some(_)) => Err(ApiError::tenant_not_found()),
            (Principal::Operator, Some(r)) => Ok(r),
            (Principal::Operator, None) => Err(ApiError::invalid(
                "tenantId",
                "operator calls must name the tenant",
            )),
        }
    }

    pub fn require_operator(&self) -> Result<()> {
        match self {
            Principal::Operator => Ok(()),
            Principal::Tenant { .. } => {
                Err(ApiError::forbidden("this call needs the operator token"))
            }
        }
    }
}

/// Resolves an `Authorization` header value.
pub fn authenticate(app: &App, header: Option<&str>) -> Result<Principal> {
    let Some(header) = header else {
        return Err(ApiError::unauthenticated(
            "missing Authorization: Bearer <api key>",
        ));
    };
    let Some(token) = header.strip_prefix("Bearer ").map(str::trim) else {
        return Err(ApiError::unauthenticated(
            "the Authorization header must be `Bearer <api key>`",
        ));
    };
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::unauthenticated("unknown API key"));
    }
    let hash = app.secrets.token_hash(token);
    if let Some(op) = &app.operator_hash {
        if hashes_equal(op, &hash) {
            return Ok(Principal::Operator);
        }
    }
    let Some((tenant, key)) = app.tenants.by_hash(&hash)? else {
        return Err(ApiError::unauthenticated("unknown API key"));
    };
    if key.revoked_at_us.is_some() {
        return Err(ApiError::unauthenticated("this API key was revoked"));
    }
    if !key.usable_at(chrono::Utc::now().timestamp_micros()) {
        return Err(ApiError::unauthenticated("this API key has expired"));
    }
    if tenant.suspended {
        return Err(ApiError::new(
            403,
            "TENANT_SUSPENDED",
            "this tenant is suspended",
        ));
    }
    let role = if key.role == ApiKeyRole::Approver.as_str() {
        ApiKeyRole::Approver
    } else {
        ApiKeyRole::Sender
    };
    Ok(Principal::Tenant {
        tenant: tenant.id,
        key: key.id,
        role,
    })
}

/// Constant-time comparison of two hex hashes (blake3's `Hash` compares in constant time).
fn hashes_equal(a: &str, b: &str) -> bool {
    match (blake3::Hash::from_hex(a), blake3::Hash::from_hex(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
