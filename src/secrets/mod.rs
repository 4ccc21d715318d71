//! Project secrets: validation, storage as age ciphertext, and resolution for a deploy.
//!
//! A secret is a key, a value, a scope (`global`: every service; `service`: one service) and an
//! optional environment (none: every environment of the project). Values leave this module only
//! as ciphertext (to the store) or as a [`stagely_protocol::SecretEntry`] bound for an agent.
//!
//! Types and validation live here, the operations in `ops`, every SQL statement (the vault's
//! included) in `store`; `api` (JSON) and `pages` (HTML) only translate HTTP to `ops`.

pub mod api;
pub mod ops;
pub mod pages;
pub mod store;
pub mod vault;

use serde::{Deserialize, Serialize};

use crate::db::DbError;
use stagely_protocol::Scope;
use vault::VaultError;

/// Largest value accepted: 64 KiB of UTF-8.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_KEY_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret not found")]
    NotFound,
    #[error("project not found")]
    ProjectNotFound,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error(
        "a secret {0} already exists with this scope and environment; update it with PUT /api/secrets/{{id}}"
    )]
    Exists(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for SecretError {
    fn from(e: crate::db::SqlError) -> Self {
        SecretError::Db(e.into())
    }
}

/// What anyone may see of a secret: everything but the value.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecretInfo {
    pub id: i64,
    pub project_id: i64,
    pub key: String,
    /// `global` or `service`.
    #[schema(value_type = String)]
    pub scope: Scope,
    pub service: Option<String>,
    /// Environment name; `None` means every environment of the project.
    pub environment: Option<String>,
    pub version: i64,
    pub updated_by: String,
    pub updated_at: String,
    /// Set only in the answer to a create or update: things to check that did not stop the
    /// change (a service secret for a service the environment's last release does not have).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A create request. `Debug` is hand-written so the value never reaches a log; the value is
/// wiped from memory on drop.
#[derive(Clone, Deserialize, zeroize::ZeroizeOnDrop, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretInput {
    #[zeroize(skip)]
    pub key: String,
    pub value: String,
    #[zeroize(skip)]
    pub scope: String,
    #[serde(default)]
    #[zeroize(skip)]
    pub service: Option<String>,
    #[serde(default)]
    #[zeroize(skip)]
    pub environment: Option<String>,
}

/// A new value for an existing secret, wiped from memory on drop.
#[derive(Deserialize, zeroize::ZeroizeOnDrop, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewValue {
    pub value: String,
}

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretInput")
            .field("key", &self.key)
            .field("scope", &self.scope)
            .field("service", &self.service)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

fn invalid<T>(field: &'static str, message: impl Into<String>) -> Result<T, SecretError> {
    Err(SecretError::Invalid {
        field,
        message: message.into(),
    })
}

/// Keys become environment variable names inside containers.
pub fn validate_key(key: &str) -> Result<(), SecretError> {
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || key.len() > MAX_KEY_LEN || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return invalid(
            "key",
            format!(
                "must be an environment variable name: [A-Za-z_][A-Za-z0-9_]*, at most {MAX_KEY_LEN} characters"
            ),
        );
    }
    Ok(())
}

/// A value becomes an environment variable, which cannot hold a NUL byte: compose and the
/// kernel refuse it, so every deploy of the project would fail. Refused at input, naming the key.
pub fn refuse_nul(key: &str, has_nul: bool) -> Result<(), SecretError> {
    if has_nul {
        return invalid(
            "value",
            format!(
                "the value of {key} contains a NUL byte (\\0), which an environment variable cannot hold \
                 (every deploy would fail); nothing was stored"
            ),
        );
    }
    Ok(())
}

/// Any UTF-8 (JSON strings already are) up to 64 KiB, including empty.
pub fn validate_value(value: &str) -> Result<(), SecretError> {
    if value.len() > MAX_VALUE_BYTES {
        return invalid(
            "value",
            format!("is {} bytes; the limit is {MAX_VALUE_BYTES} bytes", value.len()),
        );
    }
    Ok(())
}

/// Compose service names: letters, digits, `_`, `.` and `-`, starting with a letter or digit.
pub fn validate_service(service: &str) -> Result<(), SecretError> {
    let ok_start = service.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = service.len() <= 200
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok_start || !ok {
        return invalid(
            "service",
            "must be a compose service name (letters, digits, '_', '.', '-')",
        );
    }
    Ok(())
}

/// Scope and service must agree: a service secret names its service, a global one does not.
pub fn validate_scope(scope: &str, service: Option<&str>) -> Result<(Scope, Option<String>), SecretError> {
    let Some(scope) = Scope::parse(scope) else {
        return invalid("scope", "allowed values are \"global\" and \"service\"");
    };
    let service = service.map(str::trim).filter(|s| !s.is_empty());
    match (scope, service) {
        (Scope::Global, None) => Ok((scope, None)),
        (Scope::Global, Some(_)) => invalid("service", "must be empty for a global secret"),
        (Scope::Service, None) => invalid("service", "is required for a service secret"),
        (Scope::Service, Some(s)) => {
            validate_service(s)?;
            Ok((scope, Some(s.to_owned())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_env_var_names() {
        for ok in ["A", "_x", "DATABASE_URL", "a1", &"K".repeat(256)] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "Ä", "A=B", &"K".repeat(257)] {
            assert!(
                matches!(validate_key(bad), Err(SecretError::Invalid { field: "key", .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_up_to_64k_of_anything() {
        for ok in [
            "",
            "multi\nline",
            "$x ${y} \"q\" 'q'",
            "🚀",
            &"v".repeat(MAX_VALUE_BYTES),
        ] {
            assert!(validate_value(ok).is_ok());
        }
        assert!(matches!(
            validate_value(&"v".repeat(MAX_VALUE_BYTES + 1)),
            Err(SecretError::Invalid { field: "value", .. })
        ));
    }

    #[test]
    fn scope_and_service_agree() {
        assert_eq!(validate_scope("global", None).unwrap(), (Scope::Global, None));
        assert_eq!(
            validate_scope("service", Some("web")).unwrap(),
            (Scope::Service, Some("web".into()))
        );
        assert!(matches!(
            validate_scope("service", None),
            Err(SecretError::Invalid { field: "service", .. })
        ));
        assert!(matches!(
            validate_scope("global", Some("web")),
            Err(SecretError::Invalid { field: "service", .. })
        ));
        assert!(matches!(
            validate_scope("team", None),
            Err(SecretError::Invalid { field: "scope", .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_value() {
        let input = SecretInput {
            key: "K".into(),
            value: "canary-1234".into(),
            scope: "global".into(),
            service: None,
            environment: None,
        };
        assert!(!format!("{input:?}").contains("canary-1234"));
    }
}
