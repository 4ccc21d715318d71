//! Two-factor authentication for local accounts: TOTP (RFC 6238, `totp-rs`) with one-time
//! recovery codes, and the second sign-in step.
//!
//! This file holds the pure parts: secrets, codes, recovery codes, the QR code (rendered here as
//! SVG, no external service) and the second-step challenges in flight (in memory, bounded, each
//! bound to a cookie). The rules and writes are in [`ops`], the SQL in [`store`]; the pages are
//! `users::pages::two_factor` (enrolment) and `users::pages::second_step` (`/login/2fa`).

pub mod ops;
pub mod store;

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Secret, Totp};
use zeroize::Zeroizing;

use super::UserError;
use crate::crypto::{hash_token, random_token};

/// Recovery codes issued at enrolment (and at each regeneration).
pub const RECOVERY_CODES: usize = 10;
/// Wrong codes one second-step challenge takes; the next one voids it.
pub const MAX_WRONG_PER_CHALLENGE: u32 = 5;
/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "Stagely";
/// Second steps in flight at most (across every account), and per account.
const MAX_CHALLENGES: usize = 10_000;
const MAX_CHALLENGES_PER_USER: usize = 5;
/// RFC 4648 base32: the alphabet of TOTP secrets, reused for recovery codes.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new TOTP secret: 160 random bits (RFC 4226's recommendation), base32 as apps expect it.
pub fn new_secret() -> Zeroizing<String> {
    let bytes: Zeroizing<[u8; 20]> = Zeroizing::new(rand::random());
    Zeroizing::new(Secret::from(*bytes).to_base32())
}

/// The TOTP generator for a stored secret: SHA-1, 6 digits, 30 s steps, one step of skew either
/// way (what every authenticator app does).
pub fn totp(secret_base32: &str, account: &str) -> Result<Totp, UserError> {
    let secret = Secret::try_from_base32(secret_base32)
        .map_err(|_| UserError::Internal("the stored two-factor secret is not base32".into()))?;
    totp_rs::Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        .with_account_name(account.replace(':', "_"))
        .build()
        .map_err(|e| UserError::Internal(format!("two-factor secret: {e}")))
}

/// The time step a code matches at `now_secs` (within the skew), if it does.
pub fn check_code(totp: &Totp, code: &str, now_secs: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    totp.check(&code, now_secs)
}

/// True when the input looks like a TOTP code (6 digits, spaces allowed), not a recovery code.
pub fn looks_like_totp(input: &str) -> bool {
    let digits: Vec<char> = input.chars().filter(|c| !c.is_whitespace()).collect();
    digits.len() == 6 && digits.iter().all(char::is_ascii_digit)
}

/// `otpauth://totp/...` for the QR code and for apps that take a link.
pub fn otpauth_url(totp: &Totp) -> Result<Zeroizing<String>, UserError> {
    totp.to_url()
        .map(Zeroizing::new)
        .map_err(|e| UserError::Internal(format!("two-factor link: {e}")))
}

/// Ten new recovery codes, `xxxx-xxxx-xx` in base32: 50 random bits each.
pub fn new_recovery_codes() -> Vec<Zeroizing<String>> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let raw: Zeroizing<[u8; 10]> = Zeroizing::new(rand::random());
            let chars: Vec<char> = raw
                .iter()
                .map(|b| char::from(BASE32[usize::from(b & 31)]))
                .collect();
            let s: String = chars[..4].iter().collect::<String>()
                + "-"
                + &chars[4..8].iter().collect::<String>()
                + "-"
                + &chars[8..].iter().collect::<String>();
            Zeroizing::new(s)
        })
        .collect()
}

/// What a recovery code is stored as: SHA-256 of its letters, upper case, without dashes or
/// spaces (so `abcd efgh ij` and `ABCD-EFGH-IJ` are the same code).
pub fn hash_recovery_code(input: &str) -> Vec<u8> {
    let norm = Zeroizing::new(
        input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect::<String>(),
    );
    Sha256::digest(norm.as_bytes()).to_vec()
}

/// The QR code of `text` as an `<img src>` value: an SVG, base64 in a `data:` URL (the CSP
/// allows `img-src data:`; no script, no external service).
pub fn qr_data_url(text: &str) -> Result<String, UserError> {
    let qr = qrcodegen::QrCode::encode_text(text, qrcodegen::QrCodeEcc::Medium)
        .map_err(|_| UserError::Internal("the two-factor link is too long for a QR code".into()))?;
    let border = 4;
    let size = qr.size();
    let dim = size + border * 2;
    let mut path = String::new();
    for y in 0..size {
        for x in 0..size {
            if qr.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + border, y + border));
            }
        }
    }
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {dim} {dim}\" shape-rendering=\"crispEdges\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/><path d=\"{path}\" fill=\"#000000\"/></svg>"
    );
    Ok(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

/// A correct password on an account with two-factor on: what the second step needs.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub user_id: i64,
    pub username: String,
    /// Where to go once signed in (already a safe local path).
    pub next: String,
    pub created: i64,
    /// Codes tried so far (each attempt is counted before it is checked).
    pub attempts: u32,
}

/// Second steps in flight, keyed by the hash of their cookie. In memory: a restart voids them
/// (sign in again). Bounded in total and per account.
#[derive(Default)]
pub struct Challenges {
    map: Mutex<HashMap<Vec<u8>, Challenge>>,
}

impl Challenges {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Challenge>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open a challenge (one per correct password); answers the cookie value.
    pub fn open(&self, challenge: Challenge, ttl_ms: i64) -> String {
        let cookie = random_token("tfa");
        let now = challenge.created;
        let mut map = self.lock();
        map.retain(|_, c| now - c.created < ttl_ms);
        let mut mine: Vec<(Vec<u8>, i64)> = map
            .iter()
            .filter(|(_, c)| c.user_id == challenge.user_id)
            .map(|(k, c)| (k.clone(), c.created))
            .collect();
        if mine.len() >= MAX_CHALLENGES_PER_USER {
            mine.sort_by_key(|(_, created)| *created);
            map.remove(&mine[0].0);
        }
        if map.len() >= MAX_CHALLENGES
            && let Some(oldest) = map.iter().min_by_key(|(_, c)| c.created).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(hash_token(&cookie), challenge);
        cookie
    }

    /// The live challenge behind a cookie, without counting an attempt (to show the form).
    pub fn peek(&self, cookie: &str, now: i64, ttl_ms: i64) -> Option<Challenge> {
        let key = hash_token(cookie);
        let mut map = self.lock();
        match map.get(&key) {
            Some(c) if now - c.created < ttl_ms => Some(c.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Count one attempt on the challenge behind `cookie` and answer it (with the attempt
    /// counted); `None` when it is unknown, expired or has used its attempts (it is removed).
    pub fn attempt(&self, cookie: &str, now: i64, ttl_ms: i64) -> Option<Challenge> {
        let key = hash_token(cookie);
        let mut map = self.lock();
        let live = map
            .get(&key)
            .is_some_and(|c| now - c.created < ttl_ms && c.attempts < MAX_WRONG_PER_CHALLENGE);
        if !live {
            map.remove(&key);
            return None;
        }
        let c = map.get_mut(&key)?;
        c.attempts += 1;
        Some(c.clone())
    }

    /// The challenge is done (signed in) or void (too many wrong codes): forget it.
    pub fn close(&self, cookie: &str) {
        self.lock().remove(&hash_token(cookie));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_recovery_codes_normalise() {
        let secret = new_secret();
        let t = totp(&secret, "alice").unwrap();
        let code = t.generate(1_000_020);
        let step = check_code(&t, &code.to_string(), 1_000_020).unwrap();
        assert_eq!(step, 1_000_020 / 30);
        assert!(check_code(&t, "000000x", 1_000_020).is_none());
        assert!(looks_like_totp("123 456"));
        assert!(!looks_like_totp("ABCD-EFGH-IJ"));
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        assert_eq!(codes[0].len(), 12);
        assert_eq!(
            hash_recovery_code(&codes[0]),
            hash_recovery_code(&codes[0].to_lowercase().replace('-', " "))
        );
        assert!(
            qr_data_url(&otpauth_url(&t).unwrap())
                .unwrap()
                .starts_with("data:image/svg+xml;base64,")
        );
    }

    #[test]
    fn a_challenge_takes_five_attempts_then_is_void_and_expires() {
        let cs = Challenges::default();
        let c = Challenge {
            user_id: 1,
            username: "a".into(),
            next: "/".into(),
            created: 0,
            attempts: 0,
        };
        let cookie = cs.open(c.clone(), 1000);
        for n in 1..=MAX_WRONG_PER_CHALLENGE {
            assert_eq!(cs.attempt(&cookie, 1, 1000).unwrap().attempts, n);
        }
        assert!(cs.attempt(&cookie, 1, 1000).is_none());
        let cookie = cs.open(c, 1000);
        assert!(cs.peek(&cookie, 999, 1000).is_some());
        assert!(cs.attempt(&cookie, 1000, 1000).is_none(), "expired");
    }
}
