//! The appliance's signing key (issue 11): an Ed25519 key that signs every frame sent to an
//! agent, and the agent downloads, so an agent obeys only this appliance.
//!
//! `<data_dir>/signing.key` (0600) holds the secret half and the rotation chain: for every
//! earlier key, its public half and its signature over "the new key is X". It is made at the
//! first start (written aside, then linked into place, so two starts never make two keys),
//! backed up exactly when the master key is, and rotated with `stagely admin
//! rotate-signing-key` while the server is stopped. Agents pin its fingerprint (carried in
//! their token); after a rotation the appliance sends the chain at every connection so an agent
//! pinned to an older key moves its pin along. The envelope itself is
//! [`stagely_protocol::signing`], shared with the agent.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use stagely_protocol::signing::{self as sig, RotationLink, SigningKey};
use stagely_protocol::{self as protocol, ServerMessage};
use zeroize::Zeroizing;

pub const FILE_NAME: &str = "signing.key";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("signing key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the signing key file {path} is not valid ({reason}); restore it from a backup")]
    BadFile { path: PathBuf, reason: &'static str },
    #[error(
        "there is no signing key at {0}: start the appliance once (it makes one) or restore a backup that has it"
    )]
    Missing(PathBuf),
}

/// The file's shape; the secret is wiped when it is dropped.
#[derive(Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
struct KeyFile {
    #[zeroize(skip)]
    format: u32,
    /// Informational, checked on load: what agents pin.
    #[zeroize(skip)]
    fingerprint: String,
    /// The 32-byte Ed25519 seed, base64url.
    secret: String,
    /// Every rotation, oldest first.
    #[serde(default)]
    #[zeroize(skip)]
    chain: Vec<RotationLink>,
}

/// The signing key in memory. `Debug` shows only the fingerprint.
pub struct Signer {
    key: SigningKey,
    fingerprint: String,
    chain: Vec<RotationLink>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.fingerprint)
    }
}

impl Signer {
    fn new(key: SigningKey, chain: Vec<RotationLink>) -> Signer {
        let fingerprint = sig::fingerprint(&key.verifying_key());
        Signer {
            key,
            fingerprint,
            chain,
        }
    }

    /// Load the key, making it first when there is none yet.
    pub fn open(path: &Path) -> Result<Signer, SigningError> {
        if !path.exists() {
            let signer = Signer::new(generate(), Vec::new());
            match write_file(path, &signer, Replace::Never) {
                Ok(()) => {
                    tracing::info!(fingerprint = %signer.fingerprint, file = %path.display(), "made the signing key");
                    return Ok(signer);
                }
                // Made by another process in between: load that one.
                Err(SigningError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Signer::load(path)
    }

    /// Load an existing key.
    pub fn load(path: &Path) -> Result<Signer, SigningError> {
        let io = |source| SigningError::Io {
            path: path.to_owned(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SigningError::Missing(path.to_owned()));
            }
            Err(e) => return Err(io(e)),
        };
        if std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "the signing key file is readable by group/others; chmod 600 it");
        }
        let bad = |reason| SigningError::BadFile {
            path: path.to_owned(),
            reason,
        };
        let file: KeyFile = serde_json::from_str(&text).map_err(|_| bad("not a Stagely signing key file"))?;
        let seed: Zeroizing<Vec<u8>> = Zeroizing::new(
            B64.decode(file.secret.as_bytes())
                .map_err(|_| bad("the secret is not base64url"))?,
        );
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            seed.as_slice()
                .try_into()
                .map_err(|_| bad("the secret is not 32 bytes"))?,
        );
        let signer = Signer::new(SigningKey::from_bytes(&seed), file.chain.clone());
        if file.fingerprint != signer.fingerprint {
            return Err(bad("the fingerprint written in it is not the key's"));
        }
        Ok(signer)
    }

    /// `ed25519:<43 characters>`: shown on the agents page, carried in agent tokens.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The public key as PEM, served at `/agent/signing-key` for install.sh's openssl.
    pub fn public_pem(&self) -> String {
        sig::public_key_pem(&self.key.verifying_key())
    }

    /// Fingerprints of every earlier key, oldest first.
    pub fn previous(&self) -> Vec<String> {
        self.chain
            .iter()
            .filter_map(|l| sig::decode_public(&l.old))
            .map(|k| sig::fingerprint(&k))
            .collect()
    }

    /// Seal a server message (JSON text) for the agent whose token tag is `to`.
    pub fn seal(&self, to: &str, message_json: &str, now_ms: i64) -> Zeroizing<String> {
        sig::seal(&self.key, to, now_ms, message_json)
    }

    /// The REKEY message sent at every connection once the key has been rotated.
    pub fn rekey_message(&self) -> Option<String> {
        (!self.chain.is_empty()).then(|| {
            protocol::encode(&ServerMessage::Rekey {
                chain: self.chain.clone(),
            })
        })
    }

    /// The signature install.sh checks for one agent binary (base64).
    pub fn sign_download(&self, target: &str, sha256_hex: &str) -> String {
        sig::sign_download(&self.key, target, sha256_hex)
    }
}

fn generate() -> SigningKey {
    let seed = Zeroizing::new(rand::random::<[u8; 32]>());
    SigningKey::from_bytes(&seed)
}

#[derive(PartialEq)]
enum Replace {
    Never,
    Always,
}

/// Write the key file: aside first (0600, synced), then linked into place when it must not
/// exist yet (so a crash or a second process never leaves half a key or two), or renamed over
/// the old one for a rotation.
fn write_file(path: &Path, signer: &Signer, replace: Replace) -> Result<(), SigningError> {
    let io = |source| SigningError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = KeyFile {
        format: 1,
        fingerprint: signer.fingerprint.clone(),
        secret: B64.encode(signer.key.to_bytes()),
        chain: signer.chain.clone(),
    };
    let body = Zeroizing::new(serde_json::to_string_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let aside = PathBuf::from(aside);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)?;
        f.write_all(body.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        match replace {
            Replace::Never => std::fs::hard_link(&aside, path),
            Replace::Always => std::fs::rename(&aside, path),
        }
    })();
    // After a link the aside name is a second name of the key: drop it. After a rename (or a
    // failure before either) it may not exist, which is fine.
    let _ = std::fs::remove_file(&aside);
    written.map_err(io)
}

#[derive(Debug)]
pub struct RotationReport {
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    /// Rotations so far, this one included.
    pub chain_length: usize,
}

/// Make a new signing key, keeping the old public key and its signed statement "the new key is
/// X" in the chain. The caller holds the data directory lock (no server running).
pub fn rotate(path: &Path) -> Result<RotationReport, SigningError> {
    let old = Signer::load(path)?;
    let new_key = generate();
    let mut chain = old.chain.clone();
    chain.push(sig::sign_rotation(&old.key, &new_key.verifying_key()));
    let new = Signer::new(new_key, chain);
    write_file(path, &new, Replace::Always)?;
    Ok(RotationReport {
        old_fingerprint: old.fingerprint,
        new_fingerprint: new.fingerprint.clone(),
        chain_length: new.chain.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_reloaded_and_rotated_through_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let first = Signer::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Signer::open(&path).unwrap().fingerprint(), first.fingerprint());
        assert!(first.rekey_message().is_none());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no file left aside"
        );

        let report = rotate(&path).unwrap();
        assert_eq!(report.old_fingerprint, first.fingerprint());
        let second = Signer::load(&path).unwrap();
        assert_eq!(second.fingerprint(), report.new_fingerprint);
        assert_eq!(second.previous(), vec![first.fingerprint().to_owned()]);
        let Some(rekey) = second.rekey_message() else {
            panic!("a rotated key sends REKEY")
        };
        let Ok(protocol::Incoming::Known(ServerMessage::Rekey { chain })) =
            protocol::decode_server_message(&rekey)
        else {
            panic!("REKEY does not decode")
        };
        sig::follow_chain(first.fingerprint(), &chain, second.fingerprint()).unwrap();
    }

    #[test]
    fn a_damaged_or_edited_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert!(matches!(Signer::load(&path), Err(SigningError::Missing(_))));
        Signer::open(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["fingerprint"] = "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
        std::fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(Signer::load(&path), Err(SigningError::BadFile { .. })));
    }
}
