//! Password hashing: argon2id with the crate's defaults, always off the async runtime.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("password task failed: {0}")]
    Task(String),
}

/// Hash a password into a PHC string (`$argon2id$v=19$…`).
pub async fn hash(password: Zeroizing<String>) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| PasswordError::Task(e.to_string()))?
}

/// Check a password against a stored hash. With no stored hash (unknown user, GitHub-only user)
/// a dummy hash is checked instead, so the answer takes as long either way.
pub async fn verify(password: Zeroizing<String>, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let (hash, real) = match stored.as_deref() {
            Some(h) => (h, true),
            None => (dummy_hash(), false),
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok();
        ok && real
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"stagely-timing-equaliser")
            .map(|h| h.to_string())
            // Hashing a constant does not fail; if it did, verifying against "" fails closed.
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_match() {
        let h = hash(Zeroizing::new("correct horse battery".into()))
            .await
            .unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(Zeroizing::new("correct horse battery".into()), Some(h.clone())).await);
        assert!(!verify(Zeroizing::new("wrong".into()), Some(h)).await);
        assert!(!verify(Zeroizing::new("stagely-timing-equaliser".into()), None).await);
    }
}
