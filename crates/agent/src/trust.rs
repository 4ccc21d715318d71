//! Which appliance this agent obeys (issue 11): every frame from the server must be a signed
//! envelope ([`stagely_protocol::signing`]) addressed to this agent's token and signed by the
//! pinned appliance key; a DEPLOY must also be recent and not one already seen.
//!
//! The pin lives in `<work_dir>/appliance-key.pin` (0600). At the first start it is taken from
//! the fingerprint carried in the token (`stga_<secret>.<fingerprint>`); a token without one
//! (made before issue 11) pins the first key that signs a frame for it: trust on first use, said
//! in the log. A signed REKEY carrying the appliance's rotation chain moves the pin from an older
//! key to the one signing today. Deleting the pin file re-pins at the next start.
//!
//! DEPLOYs seen are remembered in `<work_dir>/seen-deployments.json` with the time the appliance
//! signed them: a frame repeated byte for byte (same id, same or older signing time) is a replay
//! and is refused; a DEPLOY signed more than [`REPLAY_WINDOW`] ago is refused as stale, and ids
//! are remembered for twice that, so no old DEPLOY can come back after it is forgotten.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::Token;
use stagely_protocol::signing::{self as sig, EnvelopeError, Opened};
use stagely_protocol::{Incoming, ServerMessage};

pub const PIN_FILE: &str = "appliance-key.pin";
pub const SEEN_FILE: &str = "seen-deployments.json";
/// A DEPLOY signed longer ago than this (by the agent's clock) is refused as stale. Generous, so
/// clocks that drift apart by hours still work.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} does not hold a key fingerprint (ed25519:…): delete it to pin again")]
    BadPin(PathBuf),
}

/// What to do with one frame from the server.
#[derive(Debug)]
pub enum Verdict {
    /// Signed by the trusted key, for this agent: decode [`Opened::message`].
    Accept(Box<Opened>),
    /// Not to be obeyed. `deployment_id` is set when the frame was (or claimed to be) a DEPLOY,
    /// so the refusal can fail that deployment with the reason.
    Refuse {
        reason: String,
        deployment_id: Option<i64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    deployment_id: i64,
    /// The newest signing time of a DEPLOY for it (appliance clock, ms).
    signed_at: i64,
    /// When this agent first saw it (agent clock, ms), for forgetting it.
    first_seen: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SeenFile {
    version: u32,
    seen: Vec<Seen>,
}

/// The pin and the remembered DEPLOYs.
#[derive(Debug)]
pub struct Trust {
    tag: String,
    pin_path: PathBuf,
    pinned: Option<String>,
    seen_path: PathBuf,
    seen: Vec<Seen>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Write aside and rename, 0600: a crash never leaves a torn pin.
fn write_private(path: &Path, text: &str) -> Result<(), TrustError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

impl Trust {
    /// Load the pin (or take it from the token) and the remembered DEPLOYs.
    pub fn open(work_dir: &Path, token: &Token) -> Result<Trust, TrustError> {
        let pin_path = work_dir.join(PIN_FILE);
        let (_, from_token) = sig::split_token(token.expose());
        let pinned = match fs::read_to_string(&pin_path) {
            Ok(text) => {
                let fp = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .and_then(sig::parse_fingerprint)
                    .ok_or_else(|| TrustError::BadPin(pin_path.clone()))?;
                if from_token.as_ref().is_some_and(|t| *t != fp) {
                    tracing::info!(
                        pinned = %fp,
                        token = from_token.as_deref().unwrap_or_default(),
                        pin_file = %pin_path.display(),
                        "the pinned appliance key is not the one named in the token (expected after a key \
                         rotation); keeping the pin file: delete it to pin the token's key instead"
                    );
                }
                Some(fp)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(fp) = &from_token {
                    write_pin(&pin_path, fp)?;
                    tracing::info!(fingerprint = %fp, pin_file = %pin_path.display(), "pinned the appliance key named in the token");
                } else {
                    tracing::warn!(
                        pin_file = %pin_path.display(),
                        "the token carries no appliance key fingerprint (it was made before signed commands): \
                         the first key that signs a frame for this agent will be trusted (trust on first use). \
                         Create a new agent token to pin the key from the start"
                    );
                }
                from_token
            }
            Err(e) => return Err(io(&pin_path)(e)),
        };
        let seen_path = work_dir.join(SEEN_FILE);
        let seen = match fs::read_to_string(&seen_path) {
            Ok(text) => match serde_json::from_str::<SeenFile>(&text) {
                Ok(f) => f.seen,
                Err(e) => {
                    // Written whole or not at all, so this is outside damage. Without the list a
                    // replayed DEPLOY of the last two days is still refused by the results record
                    // when it holds the id; say so and go on.
                    tracing::error!(file = %seen_path.display(), error = %e, "the remembered deployments are unreadable; starting a new list");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&seen_path)(e)),
        };
        Ok(Trust {
            tag: sig::recipient_tag(token.expose()),
            pin_path,
            pinned,
            seen_path,
            seen,
        })
    }

    /// The fingerprint trusted now, if any yet.
    pub fn pinned(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    /// Check one text frame from the server.
    pub fn check(&mut self, frame: &str) -> Verdict {
        let opened = match sig::open(frame) {
            Ok(opened) => opened,
            Err(e) => {
                // Only an unsigned frame can be read to say which DEPLOY it claimed to be.
                let deployment_id = match e {
                    EnvelopeError::NotSigned => sig::deploy_id_of(frame),
                    _ => None,
                };
                return Verdict::Refuse {
                    reason: format!("refused a frame from the server: {e}"),
                    deployment_id,
                };
            }
        };
        let deployment_id = sig::deploy_id_of(opened.message());
        if opened.to != self.tag {
            return Verdict::Refuse {
                reason: "refused a frame signed for another agent (it was replayed or misrouted)".into(),
                deployment_id,
            };
        }
        match self.pinned.clone() {
            None => {
                if let Err(e) = write_pin(&self.pin_path, &opened.fingerprint) {
                    // Still trusted for this run; the next start pins again on first use.
                    tracing::error!(error = %e, "cannot write the pin file");
                }
                tracing::warn!(
                    fingerprint = %opened.fingerprint,
                    pin_file = %self.pin_path.display(),
                    "trust on first use: pinned the first appliance key that signed a frame for this agent"
                );
                self.pinned = Some(opened.fingerprint.clone());
            }
            Some(pinned) if pinned == opened.fingerprint => {}
            Some(pinned) => {
                // Another key: acceptable only as a REKEY whose chain leads from the pin to it.
                let chain = match stagely_protocol::decode_server_message(opened.message()) {
                    Ok(Incoming::Known(ServerMessage::Rekey { chain })) => Some(chain),
                    _ => None,
                };
                let followed = chain
                    .as_deref()
                    .map(|c| sig::follow_chain(&pinned, c, &opened.fingerprint));
                match followed {
                    Some(Ok(())) => {
                        if let Err(e) = write_pin(&self.pin_path, &opened.fingerprint) {
                            tracing::error!(error = %e, "cannot write the pin file");
                        }
                        tracing::info!(
                            old = %pinned,
                            new = %opened.fingerprint,
                            "the appliance rotated its signing key: followed the signed hand-over and pinned the new key"
                        );
                        self.pinned = Some(opened.fingerprint.clone());
                    }
                    other => {
                        let why = match other {
                            Some(Err(e)) => format!(" ({e})"),
                            _ => String::new(),
                        };
                        return Verdict::Refuse {
                            reason: format!(
                                "refused a frame signed by another key, {}; this agent trusts {pinned}{why}. \
                                 If the appliance was reinstalled or its key replaced without rotation, delete {} \
                                 on the agent (or reinstall it with a new token) to pin the new key",
                                opened.fingerprint,
                                self.pin_path.display()
                            ),
                            deployment_id,
                        };
                    }
                }
            }
        }
        Verdict::Accept(Box::new(opened))
    }

    /// Why a DEPLOY signed at `signed_at` must not run, checked before anything else about it:
    /// a stale frame, or a copy of one already seen. `now_ms` is the agent's clock.
    pub fn refuse_deploy(&self, deployment_id: i64, signed_at: i64, now_ms: i64) -> Option<String> {
        let window = i64::try_from(REPLAY_WINDOW.as_millis()).unwrap_or(i64::MAX);
        if now_ms.saturating_sub(signed_at) > window {
            return Some(format!(
                "refused DEPLOY {deployment_id}: it was signed more than {} hours ago (a replayed frame, or \
                 the appliance's and this machine's clocks disagree)",
                REPLAY_WINDOW.as_secs() / 3600
            ));
        }
        self.seen
            .iter()
            .find(|s| s.deployment_id == deployment_id && signed_at <= s.signed_at)
            .map(|_| format!("refused DEPLOY {deployment_id}: a replay of a frame already received"))
    }

    /// Whether a DEPLOY for this id was ever received (within the remembered window).
    pub fn has_seen(&self, deployment_id: i64) -> bool {
        self.seen.iter().any(|s| s.deployment_id == deployment_id)
    }

    /// Remember a DEPLOY (its newest signing time), forgetting those older than twice the window.
    pub fn remember(&mut self, deployment_id: i64, signed_at: i64, now_ms: i64) -> Result<(), TrustError> {
        let keep = i64::try_from(2 * REPLAY_WINDOW.as_millis()).unwrap_or(i64::MAX);
        self.seen.retain(|s| now_ms.saturating_sub(s.first_seen) <= keep);
        match self.seen.iter_mut().find(|s| s.deployment_id == deployment_id) {
            Some(s) => s.signed_at = s.signed_at.max(signed_at),
            None => self.seen.push(Seen {
                deployment_id,
                signed_at,
                first_seen: now_ms,
            }),
        }
        let file = SeenFile {
            version: 1,
            seen: self.seen.clone(),
        };
        let text = serde_json::to_string(&file).map_err(|e| io(&self.seen_path)(std::io::Error::other(e)))?;
        write_private(&self.seen_path, &text)
    }
}

fn write_pin(path: &Path, fingerprint: &str) -> Result<(), TrustError> {
    write_private(
        path,
        &format!(
            "# The Stagely appliance signing key this agent obeys (docs/agent.md, \"Signed commands\").\n\
             # Delete this file to pin again: from the token's fingerprint, or the first key seen.\n\
             {fingerprint}\n"
        ),
    )
}

/// The agent's clock in unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagely_protocol::signing::{SigningKey, fingerprint, seal, sign_rotation, token_with_fingerprint};

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn fp(k: &SigningKey) -> String {
        fingerprint(&k.verifying_key())
    }

    const ACK: &str = r#"{"type":"ACK","deployment_id":1}"#;
    const DEPLOY: &str = r#"{"type":"DEPLOY","deployment_id":5,"project":{},"secrets":[]}"#;

    #[test]
    fn the_token_pins_and_other_keys_unsigned_and_misaddressed_frames_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::new(token_with_fingerprint("stga_abc", &fp(&key(1))));
        let tag = sig::recipient_tag(token.expose());
        let mut trust = Trust::open(dir.path(), &token).unwrap();
        assert_eq!(trust.pinned(), Some(fp(&key(1)).as_str()));
        let pin = fs::read_to_string(dir.path().join(PIN_FILE)).unwrap();
        assert!(pin.contains(&fp(&key(1))));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(PIN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        assert!(matches!(
            trust.check(&seal(&key(1), &tag, 0, ACK)),
            Verdict::Accept(_)
        ));
        let Verdict::Refuse {
            reason,
            deployment_id,
        } = trust.check(&seal(&key(2), &tag, 0, DEPLOY))
        else {
            panic!("another key accepted")
        };
        assert!(
            reason.contains("another key") && reason.contains(&fp(&key(2))),
            "{reason}"
        );
        assert_eq!(deployment_id, Some(5));
        let Verdict::Refuse { deployment_id, .. } = trust.check(DEPLOY) else {
            panic!("an unsigned frame accepted")
        };
        assert_eq!(deployment_id, Some(5));
        assert!(matches!(
            trust.check(&seal(&key(1), "0000000000000000", 0, ACK)),
            Verdict::Refuse { .. }
        ));
    }

    #[test]
    fn without_a_fingerprint_the_first_key_is_pinned_and_a_rotation_chain_moves_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::new("stga_old_style");
        let tag = sig::recipient_tag(token.expose());
        let mut trust = Trust::open(dir.path(), &token).unwrap();
        assert_eq!(trust.pinned(), None);
        assert!(matches!(
            trust.check(&seal(&key(1), &tag, 0, ACK)),
            Verdict::Accept(_)
        ));
        assert_eq!(trust.pinned(), Some(fp(&key(1)).as_str()));

        // A REKEY from key 2 without a valid chain is refused; with one, the pin moves.
        let bad = stagely_protocol::encode(&ServerMessage::Rekey {
            chain: vec![sign_rotation(&key(3), &key(2).verifying_key())],
        });
        assert!(matches!(
            trust.check(&seal(&key(2), &tag, 0, &bad)),
            Verdict::Refuse { .. }
        ));
        let good = stagely_protocol::encode(&ServerMessage::Rekey {
            chain: vec![sign_rotation(&key(1), &key(2).verifying_key())],
        });
        assert!(matches!(
            trust.check(&seal(&key(2), &tag, 0, &good)),
            Verdict::Accept(_)
        ));
        assert_eq!(trust.pinned(), Some(fp(&key(2)).as_str()));
        // The pin survives a restart.
        let again = Trust::open(dir.path(), &token).unwrap();
        assert_eq!(again.pinned(), Some(fp(&key(2)).as_str()));
    }

    #[test]
    fn replays_and_stale_deploys_are_refused_and_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::new("stga_x");
        let mut trust = Trust::open(dir.path(), &token).unwrap();
        let now = 10 * REPLAY_WINDOW.as_millis() as i64;
        assert_eq!(trust.refuse_deploy(5, now - 10, now), None);
        trust.remember(5, now - 10, now).unwrap();
        assert!(trust.refuse_deploy(5, now - 10, now).unwrap().contains("replay"));
        assert_eq!(
            trust.refuse_deploy(5, now, now),
            None,
            "a fresh resend is not a replay"
        );
        let stale = now - REPLAY_WINDOW.as_millis() as i64 - 1;
        assert!(trust.refuse_deploy(6, stale, now).unwrap().contains("hours ago"));
        let trust = Trust::open(dir.path(), &token).unwrap();
        assert!(trust.has_seen(5));
        assert!(trust.refuse_deploy(5, now - 10, now).is_some());
    }
}
