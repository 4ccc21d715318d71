//! Random tokens, their hashes, and constant-time comparison.
//!
//! Tokens carry 32 random bytes, so a plain SHA-256 is a sound way to store them (there is
//! nothing to brute-force); passwords, which are guessable, use argon2id instead.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new random token such as `stg_…` (43 url-safe characters after the prefix).
pub fn random_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Compare two secrets without leaking where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = random_token("stg");
        let b = random_token("stg");
        assert_ne!(a, b);
        assert!(a.starts_with("stg_") && a.len() == 4 + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert!(ct_eq(&hash_token(&a), &hash_token(&a)));
        assert!(!ct_eq(&hash_token(&a), &hash_token(&b)));
    }
}
