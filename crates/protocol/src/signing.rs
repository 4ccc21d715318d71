//! Signed server frames (issue 11): every frame the appliance sends an agent is an envelope
//! around the ordinary [`crate::ServerMessage`] JSON, signed with the appliance's Ed25519 key.
//!
//! ```json
//! {"type":"SIGNED","signed":"<base64url payload>","sig":"<base64url signature>",
//!  "key":"ed25519:<fingerprint>","pub":"<base64url public key>"}
//! ```
//! The payload is `{"to":"<token tag>","at":<unix ms>,"msg":{…the ServerMessage…}}`, and the
//! signature covers [`FRAME_CONTEXT`] followed by the payload's exact bytes. `to` binds the frame
//! to one agent (a prefix of its token's hash, which both sides can compute and nobody can turn
//! back into the token), `at` dates it, and the inner message carries its own ids (a DEPLOY's
//! deployment id), so a frame cannot be moved to another agent or passed off as another one.
//!
//! [`open`] always checks the signature against the key the envelope names; whether that key is
//! the one to trust (the agent's pin, or a rotation chain leading to it) is the caller's call.
//! Both sides use this module: the appliance seals, the agent opens. See docs/protocol.md.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

/// The `type` of an envelope.
pub const SIGNED_TYPE: &str = "SIGNED";
/// What a fingerprint starts with.
pub const FINGERPRINT_PREFIX: &str = "ed25519:";
/// Bytes signed before a frame's payload, so a frame signature is never valid for anything else
/// this key signs (rotation statements, agent downloads).
pub const FRAME_CONTEXT: &[u8] = b"stagely frame v1\n";
/// Length of the base64url part of a fingerprint (SHA-256, no padding).
const FINGERPRINT_CHARS: usize = 43;
/// Hex characters of the token hash a frame is addressed to (64 bits).
const TAG_HEX: usize = 16;

/// Why a frame was not accepted as signed. The text never quotes the frame (it may hold secrets).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("the frame is not signed (no SIGNED envelope)")]
    NotSigned,
    #[error("the signed envelope is malformed: {0}")]
    Malformed(&'static str),
    #[error("the envelope's public key does not match the fingerprint it names")]
    KeyMismatch,
    #[error("the signature does not verify (the frame was altered or forged)")]
    BadSignature,
}

/// The fingerprint of a public key: `ed25519:` + base64url(SHA-256(raw 32 bytes)), no padding.
pub fn fingerprint(key: &VerifyingKey) -> String {
    format!(
        "{FINGERPRINT_PREFIX}{}",
        B64.encode(Sha256::digest(key.as_bytes()))
    )
}

/// A fingerprint in its canonical form, from `ed25519:<43>` or the bare 43 characters.
pub fn parse_fingerprint(s: &str) -> Option<String> {
    let bare = s.trim();
    let bare = bare.strip_prefix(FINGERPRINT_PREFIX).unwrap_or(bare);
    let ok = bare.len() == FINGERPRINT_CHARS
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| format!("{FINGERPRINT_PREFIX}{bare}"))
}

/// An agent token with the appliance key's fingerprint appended: `stga_<secret>.<43 chars>`.
pub fn token_with_fingerprint(token: &str, fingerprint: &str) -> String {
    let bare = fingerprint
        .strip_prefix(FINGERPRINT_PREFIX)
        .unwrap_or(fingerprint);
    format!("{token}.{bare}")
}

/// The part of an agent token the appliance authenticates (everything before the first `.`),
/// and the fingerprint it carries, if any. Old tokens have no `.` and no fingerprint.
pub fn split_token(token: &str) -> (&str, Option<String>) {
    match token.split_once('.') {
        Some((secret, fp)) => (secret, parse_fingerprint(fp)),
        None => (token, None),
    }
}

/// What a frame to the agent holding `token` is addressed to: the first 64 bits of the SHA-256 of
/// the token's secret part, in hex (the appliance stores that hash; the prefix cannot be used to
/// authenticate).
pub fn recipient_tag(token: &str) -> String {
    let (secret, _) = split_token(token);
    let mut tag = hex_lower(&Sha256::digest(secret.as_bytes()));
    tag.truncate(TAG_HEX);
    tag
}

/// The same tag from an already computed token hash (the appliance's stored form).
pub fn recipient_tag_of_hash(hash: &[u8]) -> String {
    let mut tag = hex_lower(hash);
    tag.truncate(TAG_HEX);
    tag
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A public key's base64url form (43 characters), as envelopes and rotation links carry it.
pub fn encode_public(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

pub fn decode_public(s: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = B64.decode(s).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// A public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), for `openssl pkeyutl -verify`.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    // The fixed DER header of an Ed25519 SubjectPublicKeyInfo (RFC 8410), then the raw key.
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

/// The envelope on the wire. Borrowed on decode: base64 and fingerprints need no JSON escapes,
/// so the (possibly secret-bearing) payload is never copied out of the frame.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    signed: &'a str,
    sig: &'a str,
    key: &'a str,
    #[serde(rename = "pub")]
    public: &'a str,
}

/// Seal one server message (its JSON text) for the agent whose tag is `to`, dated `at_ms`.
/// The result may hold secret values (a DEPLOY's): it is wiped when dropped.
pub fn seal(key: &SigningKey, to: &str, at_ms: i64, message_json: &str) -> Zeroizing<String> {
    let to = serde_json::to_string(to).unwrap_or_else(|_| String::from("\"\""));
    let payload = Zeroizing::new(format!(r#"{{"to":{to},"at":{at_ms},"msg":{message_json}}}"#));
    let mut signed = Zeroizing::new(FRAME_CONTEXT.to_vec());
    signed.extend_from_slice(payload.as_bytes());
    let sig = key.sign(&signed);
    let public = key.verifying_key();
    let signed_b64 = Zeroizing::new(B64.encode(payload.as_bytes()));
    let (sig, fp, public) = (
        B64.encode(sig.to_bytes()),
        fingerprint(&public),
        encode_public(&public),
    );
    let wire = Wire {
        kind: SIGNED_TYPE,
        signed: &signed_b64,
        sig: &sig,
        key: &fp,
        public: &public,
    };
    Zeroizing::new(serde_json::to_string(&wire).unwrap_or_else(|_| String::from("{}")))
}

/// A frame whose signature verified under the key it names (which may not be a trusted one).
pub struct Opened {
    pub signer: VerifyingKey,
    /// The signer's fingerprint.
    pub fingerprint: String,
    /// The token tag the frame is addressed to.
    pub to: String,
    /// When the appliance signed it (unix ms, the appliance's clock).
    pub at_ms: i64,
    payload: Zeroizing<String>,
    message: std::ops::Range<usize>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("fingerprint", &self.fingerprint)
            .field("to", &self.to)
            .field("at_ms", &self.at_ms)
            .finish_non_exhaustive()
    }
}

impl Opened {
    /// The inner message's JSON text, for [`crate::decode_server_message`].
    pub fn message(&self) -> &str {
        self.payload.get(self.message.clone()).unwrap_or("{}")
    }
}

/// Parse an envelope and verify its signature under the key it carries.
pub fn open(frame: &str) -> Result<Opened, EnvelopeError> {
    let wire: Wire = serde_json::from_str(frame).map_err(|_| EnvelopeError::NotSigned)?;
    if wire.kind != SIGNED_TYPE {
        return Err(EnvelopeError::NotSigned);
    }
    let signer = decode_public(wire.public).ok_or(EnvelopeError::Malformed("bad public key"))?;
    let fp = fingerprint(&signer);
    if parse_fingerprint(wire.key).as_deref() != Some(fp.as_str()) {
        return Err(EnvelopeError::KeyMismatch);
    }
    let sig: [u8; 64] = B64
        .decode(wire.sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(EnvelopeError::Malformed("bad signature encoding"))?;
    let payload = Zeroizing::new(
        B64.decode(wire.signed.as_bytes())
            .map_err(|_| EnvelopeError::Malformed("bad payload encoding"))?,
    );
    let mut signed = Zeroizing::new(FRAME_CONTEXT.to_vec());
    signed.extend_from_slice(&payload);
    signer
        .verify(&signed, &Signature::from_bytes(&sig))
        .map_err(|_| EnvelopeError::BadSignature)?;
    let payload = Zeroizing::new(
        String::from_utf8(payload.to_vec()).map_err(|_| EnvelopeError::Malformed("payload is not UTF-8"))?,
    );
    #[derive(Deserialize)]
    struct Payload<'a> {
        to: String,
        at: i64,
        #[serde(borrow)]
        msg: &'a serde_json::value::RawValue,
    }
    let parsed: Payload = serde_json::from_str(&payload)
        .map_err(|_| EnvelopeError::Malformed("payload is not a signed message"))?;
    let start = (parsed.msg.get().as_ptr() as usize).saturating_sub(payload.as_ptr() as usize);
    let message = start..start + parsed.msg.get().len();
    let (to, at_ms) = (parsed.to, parsed.at);
    Ok(Opened {
        signer,
        fingerprint: fp,
        to,
        at_ms,
        payload,
        message,
    })
}

/// The deployment id of a DEPLOY message (JSON text), read without decoding the rest, so a
/// refused DEPLOY can still be reported as failed.
pub fn deploy_id_of(message_json: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        deployment_id: Option<i64>,
    }
    let peek: Peek = serde_json::from_str(message_json).ok()?;
    (peek.kind == "DEPLOY").then_some(peek.deployment_id).flatten()
}

// --- key rotation -------------------------------------------------------------------------------

/// One rotation: the old key signs "the new key is X". An agent that pinned `old` follows the
/// chain of these (oldest first) to the key that signs today.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationLink {
    /// The old public key (base64url).
    pub old: String,
    /// The new public key (base64url).
    pub new: String,
    /// The old key's signature over [`rotation_statement`].
    pub sig: String,
}

/// What a rotation link's signature covers.
pub fn rotation_statement(old_fingerprint: &str, new_fingerprint: &str) -> Vec<u8> {
    format!("stagely signing key rotation v1\nold {old_fingerprint}\nnew {new_fingerprint}\n").into_bytes()
}

/// The link saying `old` hands over to `new`.
pub fn sign_rotation(old: &SigningKey, new: &VerifyingKey) -> RotationLink {
    let old_public = old.verifying_key();
    let statement = rotation_statement(&fingerprint(&old_public), &fingerprint(new));
    RotationLink {
        old: encode_public(&old_public),
        new: encode_public(new),
        sig: B64.encode(old.sign(&statement).to_bytes()),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("no rotation statement leads from the pinned key {pinned} to {target}")]
    NoPath { pinned: String, target: String },
    #[error("a rotation statement's signature does not verify")]
    BadLink,
}

/// Check that `chain` leads from the key with fingerprint `pinned` to `target`, each step signed
/// by the key before it.
pub fn follow_chain(pinned: &str, chain: &[RotationLink], target: &str) -> Result<(), ChainError> {
    let mut current = pinned.to_owned();
    for link in chain {
        if current == target {
            break;
        }
        let (Some(old), Some(new)) = (decode_public(&link.old), decode_public(&link.new)) else {
            return Err(ChainError::BadLink);
        };
        if fingerprint(&old) != current {
            continue;
        }
        let sig: [u8; 64] = B64
            .decode(&link.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(ChainError::BadLink)?;
        let statement = rotation_statement(&current, &fingerprint(&new));
        old.verify(&statement, &Signature::from_bytes(&sig))
            .map_err(|_| ChainError::BadLink)?;
        current = fingerprint(&new);
    }
    if current == target {
        Ok(())
    } else {
        Err(ChainError::NoPath {
            pinned: pinned.to_owned(),
            target: target.to_owned(),
        })
    }
}

// --- agent downloads ----------------------------------------------------------------------------

/// What the signature served at `/agent/download/<target>/sig` covers; install.sh rebuilds it
/// from the hash of the file it downloaded and checks it with `openssl pkeyutl -verify -rawin`.
pub fn download_statement(target: &str, sha256_hex: &str) -> String {
    format!("stagely agent download v1\n{target}\n{sha256_hex}\n")
}

/// A detached signature over a download statement, base64 (standard, as `openssl base64 -d`
/// reads it).
pub fn sign_download(key: &SigningKey, target: &str, sha256_hex: &str) -> String {
    let sig = key.sign(download_statement(target, sha256_hex).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn a_sealed_frame_opens_with_its_message_and_names_its_signer() {
        let k = key(1);
        let msg = r#"{"type":"ACK","deployment_id":7}"#;
        let frame = seal(&k, "00aa", 1234, msg);
        let opened = open(&frame).unwrap();
        assert_eq!(opened.message(), msg);
        assert_eq!(opened.to, "00aa");
        assert_eq!(opened.at_ms, 1234);
        assert_eq!(opened.fingerprint, fingerprint(&k.verifying_key()));
        assert!(opened.fingerprint.starts_with("ed25519:") && opened.fingerprint.len() == 8 + 43);
    }

    #[test]
    fn tampering_unsigned_frames_and_swapped_keys_are_refused() {
        let frame = seal(&key(1), "t", 1, r#"{"type":"ACK","deployment_id":7}"#);
        let mut wire: serde_json::Value = serde_json::from_str(&frame).unwrap();
        let payload = String::from_utf8(B64.decode(wire["signed"].as_str().unwrap()).unwrap()).unwrap();
        wire["signed"] = B64.encode(payload.replace('7', "8")).into();
        assert_eq!(open(&wire.to_string()).unwrap_err(), EnvelopeError::BadSignature);

        // Another key's public half with the original signature.
        let mut wire: serde_json::Value = serde_json::from_str(&frame).unwrap();
        let other = key(2).verifying_key();
        wire["pub"] = encode_public(&other).into();
        wire["key"] = fingerprint(&other).into();
        assert_eq!(open(&wire.to_string()).unwrap_err(), EnvelopeError::BadSignature);
        wire["key"] = fingerprint(&key(1).verifying_key()).into();
        assert_eq!(open(&wire.to_string()).unwrap_err(), EnvelopeError::KeyMismatch);

        assert_eq!(
            open(r#"{"type":"ACK","deployment_id":7}"#).unwrap_err(),
            EnvelopeError::NotSigned
        );
        assert_eq!(open("nope").unwrap_err(), EnvelopeError::NotSigned);
    }

    #[test]
    fn tokens_carry_and_give_back_the_fingerprint() {
        let fp = fingerprint(&key(3).verifying_key());
        let token = token_with_fingerprint("stga_secretpart", &fp);
        assert_eq!(split_token(&token), ("stga_secretpart", Some(fp.clone())));
        assert_eq!(split_token("stga_old"), ("stga_old", None));
        assert_eq!(recipient_tag(&token), recipient_tag("stga_secretpart"));
        assert_eq!(recipient_tag(&token).len(), 16);
        assert_eq!(
            recipient_tag("stga_secretpart"),
            recipient_tag_of_hash(&Sha256::digest(b"stga_secretpart"))
        );
        assert_eq!(parse_fingerprint("ed25519:short"), None);
    }

    #[test]
    fn a_rotation_chain_is_followed_only_when_every_link_verifies() {
        let (a, b, c) = (key(1), key(2), key(3));
        let fp = |k: &SigningKey| fingerprint(&k.verifying_key());
        let chain = vec![
            sign_rotation(&a, &b.verifying_key()),
            sign_rotation(&b, &c.verifying_key()),
        ];
        assert_eq!(follow_chain(&fp(&a), &chain, &fp(&c)), Ok(()));
        assert_eq!(follow_chain(&fp(&b), &chain, &fp(&c)), Ok(()));
        assert_eq!(follow_chain(&fp(&c), &chain, &fp(&c)), Ok(()));
        let stranger = key(9);
        assert!(matches!(
            follow_chain(&fp(&stranger), &chain, &fp(&c)),
            Err(ChainError::NoPath { .. })
        ));
        // A link "signed" by someone else than the old key.
        let mut forged = sign_rotation(&stranger, &c.verifying_key());
        forged.old = encode_public(&a.verifying_key());
        assert_eq!(
            follow_chain(&fp(&a), &[forged], &fp(&c)),
            Err(ChainError::BadLink)
        );
    }

    #[test]
    fn the_pem_is_the_standard_ed25519_spki() {
        let pem = public_key_pem(&key(1).verifying_key());
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"),
            "{pem}"
        );
    }
}
