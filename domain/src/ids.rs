//! Strongly typed identifiers. Generation (v7/v4) happens outside the domain,
//! which has no clock and no randomness; the domain only wraps given UUIDs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Wraps an already generated UUID.
            pub fn from_uuid(u: Uuid) -> Self {
                Self(u)
            }

            /// The inner UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| DomainError::InvalidId {
                    value: s.to_string(),
                })
            }
        }
    };
}

uuid_id!(
    /// Identifies a tenant (and its event stream).
    TenantId
);
uuid_id!(
    /// Identifies an API key within its tenant.
    ApiKeyId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_from_str_round_trip() {
        let s = "0191d3a0-7c4e-7a21-9b0e-2f3c4d5e6f70";
        let id: TenantId = s.parse().unwrap();
        assert_eq!(id.to_string(), s);
        let key: ApiKeyId = s.parse().unwrap();
        assert_eq!(key.0, id.0);
    }

    #[test]
    fn from_str_rejects_garbage() {
        assert_eq!(
            "nope".parse::<ApiKeyId>(),
            Err(DomainError::InvalidId {
                value: "nope".into()
            })
        );
    }

    #[test]
    fn serde_is_transparent() {
        let id = TenantId::from_uuid(Uuid::from_u128(1));
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"00000000-0000-0000-0000-000000000001\""
        );
    }
}
