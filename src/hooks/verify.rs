//! Webhook signatures, each checked in constant time: GitHub's `X-Hub-Signature-256:
//! sha256=<hex>` and Gitea/Forgejo's `X-Gitea-Signature: <hex>` (HMAC-SHA256 of the raw body
//! with the project's webhook secret), GitLab's `X-Gitlab-Token` (the secret itself).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Provider;
use crate::crypto::ct_eq;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused (for the delivery log and the audit entry; never the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Malformed,
    Mismatch,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing signature",
            Rejection::Malformed => "malformed signature",
            Rejection::Mismatch => "signature mismatch",
        }
    }
}

/// The HMAC-SHA256 of `body` under `secret`, as GitHub and Gitea send it (lowercase hex).
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes a key of any length; unreachable, and no signature matches an empty string.
        Err(_) => String::new(),
    }
}

fn hmac_matches(secret: &[u8], body: &[u8], sent_hex: &str) -> Result<(), Rejection> {
    let sent = hex::decode(sent_hex.trim()).map_err(|_| Rejection::Malformed)?;
    if sent.len() != 32 {
        return Err(Rejection::Malformed);
    }
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| Rejection::Mismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sent).map_err(|_| Rejection::Mismatch)
}

/// Check a delivery's credential: `signature` is the provider's header value (if sent).
pub fn verify(
    provider: Provider,
    secret: &[u8],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), Rejection> {
    let sent = signature
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(Rejection::Missing)?;
    match provider {
        Provider::Github => {
            let hex = sent.strip_prefix("sha256=").ok_or(Rejection::Malformed)?;
            hmac_matches(secret, body, hex)
        }
        Provider::Gitea => hmac_matches(secret, body, sent),
        Provider::Gitlab => {
            if ct_eq(sent.as_bytes(), secret) {
                Ok(())
            } else {
                Err(Rejection::Mismatch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_s_documented_example_verifies() {
        // docs.github.com, "Validating webhook deliveries": secret "It's a Secret to Everybody",
        // payload "Hello, World!".
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(hmac_hex(b"It's a Secret to Everybody", b"Hello, World!"), sig);
        let secret = b"It's a Secret to Everybody";
        let ok = format!("sha256={sig}");
        assert_eq!(
            verify(Provider::Github, secret, b"Hello, World!", Some(&ok)),
            Ok(())
        );
        assert_eq!(
            verify(Provider::Github, secret, b"Hello, World?", Some(&ok)),
            Err(Rejection::Mismatch)
        );
        assert_eq!(
            verify(Provider::Github, secret, b"Hello, World!", Some(sig)),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            verify(Provider::Github, secret, b"x", None),
            Err(Rejection::Missing)
        );
        assert_eq!(
            verify(Provider::Gitea, secret, b"Hello, World!", Some(sig)),
            Ok(())
        );
        assert_eq!(
            verify(Provider::Gitea, secret, b"Hello, World!", Some("zz")),
            Err(Rejection::Malformed)
        );
        assert_eq!(verify(Provider::Gitlab, b"tok", b"", Some("tok")), Ok(()));
        assert_eq!(
            verify(Provider::Gitlab, b"tok", b"", Some("tok2")),
            Err(Rejection::Mismatch)
        );
    }
}
