//! The agent's age identity: the key DEPLOY secrets are sealed to, end to end.
//!
//! Made at first start in the work dir (`identity.age`, mode 0600, written to a private temporary
//! file and linked into place, so a half-written or clobbered key is never seen), reused after.
//! HELLO carries its public half (`age1…`); the appliance pins it at the first connection and
//! encrypts every DEPLOY's secrets to it. The secret half never leaves this file and this process:
//! it is not logged, not printed, not in an error.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519::{Identity, Recipient};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use stagely_protocol::{ProjectSpec, SealedSecrets, SecretEntry};

/// The identity's file name in the work dir.
pub const IDENTITY_FILE: &str = "identity.age";

/// Largest `sealed_secrets` accepted (the frame limit bounds it anyway).
const MAX_SEALED_BYTES: usize = stagely_protocol::MAX_FRAME_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {action} the agent identity {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the agent identity {0} is not an age identity (expected one line starting AGE-SECRET-KEY-1). \
         Move it away to make a new one, then reset the agent's identity on the appliance"
    )]
    Malformed(PathBuf),
    #[error("the agent identity {path} is readable by others (mode {mode:o}): run chmod 600 {path}")]
    Exposed { path: PathBuf, mode: u32 },
}

/// Why a DEPLOY's secrets could not be opened. The text never holds a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("the DEPLOY's sealed secrets are not base64 or too large")]
    Encoding,
    #[error(
        "the DEPLOY's secrets are not sealed to this agent's identity (was {IDENTITY_FILE} replaced? \
         an admin can reset the agent's identity on the appliance)"
    )]
    NotForThisAgent,
    #[error("the DEPLOY's sealed secrets are not valid: {0}")]
    Invalid(String),
    #[error("the DEPLOY's sealed secrets belong to another deployment or project: refused")]
    Mismatch,
}

/// The agent's identity, loaded. Its `Debug` shows the public half only.
pub struct AgentIdentity {
    identity: Identity,
    recipient: String,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentIdentity({})", self.recipient)
    }
}

impl AgentIdentity {
    /// A fresh identity in memory (tests, the load generator).
    pub fn generate() -> AgentIdentity {
        Self::from_identity(Identity::generate())
    }

    fn from_identity(identity: Identity) -> AgentIdentity {
        let recipient = identity.to_public().to_string();
        AgentIdentity { identity, recipient }
    }

    /// The identity in `work_dir`, made there if it does not exist yet.
    pub fn load_or_create(work_dir: &Path) -> Result<AgentIdentity, IdentityError> {
        let path = work_dir.join(IDENTITY_FILE);
        match Self::load(&path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let made = Self::generate();
        match made.write_new(work_dir, &path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), recipient = %made.recipient, "made the agent identity");
                Ok(made)
            }
            // Another process made one first: that one is the identity.
            Err(IdentityError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load(&path)
            }
            Err(e) => Err(e),
        }
    }

    fn load(path: &Path) -> Result<AgentIdentity, IdentityError> {
        let io = |action, source| IdentityError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| io("read", e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| io("read", e))?);
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let (Some(key), None) = (keys.next(), keys.next()) else {
            return Err(IdentityError::Malformed(path.to_owned()));
        };
        // age's parse error says nothing of the key; it is not kept either way.
        let identity = Identity::from_str(key).map_err(|_| IdentityError::Malformed(path.to_owned()))?;
        Ok(Self::from_identity(identity))
    }

    /// Write to a private temporary file, then link it into place: `path` either does not exist
    /// or holds a whole key, and an existing one is never overwritten (link fails instead).
    fn write_new(&self, dir: &Path, path: &Path) -> Result<(), IdentityError> {
        let io = |action, source| IdentityError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let tmp = tempfile::Builder::new()
            .prefix(".identity-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| io("create", e))?;
        let body = Zeroizing::new(format!(
            "# Stagely agent identity (age X25519). DEPLOY secrets are sealed to it.\n\
             # public key: {}\n{}\n",
            self.recipient,
            self.identity.to_string().expose_secret()
        ));
        let mut file = tmp.as_file();
        file.write_all(body.as_bytes()).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("write", e))?;
        std::fs::hard_link(tmp.path(), path).map_err(|e| io("create", e))?;
        // The temporary name goes when `tmp` drops; the key stays under `path`.
        Ok(())
    }

    /// The public half for HELLO (`age1…`).
    pub fn recipient(&self) -> &str {
        &self.recipient
    }

    /// Open a DEPLOY's `sealed_secrets`, checking they were sealed for this very DEPLOY.
    pub fn open(
        &self,
        sealed: &str,
        deployment_id: i64,
        project: &ProjectSpec,
    ) -> Result<Vec<SecretEntry>, OpenError> {
        let plaintext = self.decrypt(sealed)?;
        let payload =
            SealedSecrets::from_plaintext(&plaintext).map_err(|e| OpenError::Invalid(e.to_string()))?;
        if !payload.matches(deployment_id, project) {
            return Err(OpenError::Mismatch);
        }
        Ok(payload.secrets.clone())
    }

    /// Open a LOGS request's `sealed_secrets`, checking they were sealed for this very request
    /// and compose project (issue 15).
    pub fn open_logs(
        &self,
        sealed: &str,
        request_id: u64,
        project: &str,
    ) -> Result<Vec<SecretEntry>, OpenError> {
        let plaintext = self.decrypt(sealed)?;
        let payload = stagely_protocol::operate::SealedLogSecrets::from_plaintext(&plaintext)
            .map_err(|e| OpenError::Invalid(e.to_string()))?;
        if !payload.matches(request_id, project) {
            return Err(OpenError::Mismatch);
        }
        Ok(payload.secrets)
    }

    fn decrypt(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() > MAX_SEALED_BYTES {
            return Err(OpenError::Encoding);
        }
        let ciphertext = STANDARD.decode(sealed).map_err(|_| OpenError::Encoding)?;
        Ok(Zeroizing::new(
            age::decrypt(&self.identity, &ciphertext).map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => OpenError::NotForThisAgent,
                _ => OpenError::Invalid("not an age file for this agent".into()),
            })?,
        ))
    }
}

/// Seal a LOGS request's secrets to a recipient (what the appliance does; for the agent's tests).
pub fn seal_logs(recipient: &str, payload: &stagely_protocol::operate::SealedLogSecrets) -> Option<String> {
    let recipient = Recipient::from_str(recipient).ok()?;
    let ciphertext = age::encrypt(&recipient, &payload.to_plaintext()).ok()?;
    Some(STANDARD.encode(ciphertext))
}

/// Seal secrets to a recipient as a DEPLOY carries them (what the appliance does; here for the
/// agent's own tests and the load generator).
pub fn seal(recipient: &str, payload: &SealedSecrets) -> Option<String> {
    let recipient = Recipient::from_str(recipient).ok()?;
    let ciphertext = age::encrypt(&recipient, &payload.to_plaintext()).ok()?;
    Some(STANDARD.encode(ciphertext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagely_protocol::{PullPolicy, Scope};

    fn spec() -> ProjectSpec {
        ProjectSpec {
            name: "shop".into(),
            environment: "staging".into(),
            repo_url: None,
            git_ref: "main".into(),
            compose_path: "/srv/shop/compose.yaml".into(),
            pull: PullPolicy::Never,
            compose_project: None,
            images: Default::default(),
        }
    }

    fn payload(id: i64) -> SealedSecrets {
        SealedSecrets {
            deployment_id: id,
            project: spec(),
            secrets: vec![SecretEntry {
                key: "K".into(),
                value: "canary-identity-value".into(),
                scope: Scope::Global,
                service: None,
            }],
        }
    }

    #[test]
    fn made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(first.recipient().starts_with("age1"));
        let again = AgentIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.recipient(), again.recipient());
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(IDENTITY_FILE)]);
        assert!(!format!("{first:?}").contains("AGE-SECRET-KEY"));
    }

    #[test]
    fn an_exposed_or_broken_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        AgentIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AgentIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Exposed { .. }), "{err}");
        std::fs::write(&path, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = AgentIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Malformed(_)), "{err}");
        assert!(!err.to_string().contains("NOTAKEY"));
    }

    #[test]
    fn opens_only_what_was_sealed_to_it_for_this_deploy() {
        let me = AgentIdentity::generate();
        let sealed = seal(me.recipient(), &payload(7)).unwrap();
        assert!(!sealed.contains("canary"));
        let secrets = me.open(&sealed, 7, &spec()).unwrap();
        assert_eq!(secrets[0].value, "canary-identity-value");

        assert_eq!(me.open(&sealed, 8, &spec()), Err(OpenError::Mismatch));
        let moved = ProjectSpec {
            repo_url: Some("https://evil.example/x.git".into()),
            ..spec()
        };
        assert_eq!(me.open(&sealed, 7, &moved), Err(OpenError::Mismatch));

        let other = AgentIdentity::generate();
        assert_eq!(other.open(&sealed, 7, &spec()), Err(OpenError::NotForThisAgent));
        assert_eq!(me.open("not base64!", 7, &spec()), Err(OpenError::Encoding));
        assert!(matches!(me.open("YWJj", 7, &spec()), Err(OpenError::Invalid(_))));
    }
}
