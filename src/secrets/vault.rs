//! The secret vault: an age X25519 identity in a key file; every value encrypted on its own.
//!
//! The database holds a check value encrypted to the current key, so a missing or wrong key
//! file stops the start with a clear message instead of yielding empty secrets at deploy time.
//! Key rotation writes the new identity to `<key_file>.new`, re-encrypts every value in one
//! transaction, then renames the new file into place; a crash between commit and rename is
//! finished at the next start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::db::Tx;
use age::secrecy::ExposeSecret;
use age::x25519::{Identity, Recipient};
use zeroize::Zeroizing;

use super::store;
use crate::db::{Db, DbError};

const CHECK_PLAINTEXT: &[u8] = b"stagely vault check v1";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "the master key file {path} is missing, but the database already holds secrets encrypted with a \
         key. Restore the key file (from your backup) or point key_file at it; Stagely will not start \
         without it"
    )]
    KeyMissing { path: PathBuf },
    #[error(
        "the master key file {path} does not match this database (its secrets were encrypted with \
         another key). Restore the right key file or point key_file at it"
    )]
    WrongKey { path: PathBuf },
    #[error("the master key file {path} is not an age identity (expected a line starting AGE-SECRET-KEY-1)")]
    BadKeyFile { path: PathBuf },
    #[error("master key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encrypt a secret value")]
    Encrypt,
    #[error("cannot decrypt a stored secret value (was the key file replaced?)")]
    Decrypt,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for VaultError {
    fn from(e: crate::db::SqlError) -> Self {
        VaultError::Db(e.into())
    }
}

/// Holds the identity in memory for the life of the process. `Debug` shows only the public key.
pub struct Vault {
    identity: Identity,
    recipient: Recipient,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({})", self.recipient)
    }
}

impl Vault {
    /// Load (or, for a database without secrets, create) the key and check it against the database.
    pub fn open(key_file: &Path, db: &Db) -> Result<Vault, VaultError> {
        let check = db.read_blocking(store::vault_check)?;
        let pending = pending_path(key_file);
        let vault = match (key_file.exists(), check) {
            (false, None) => {
                let vault = Vault::from_identity(Identity::generate());
                write_key_file(key_file, &vault.identity)?;
                vault
            }
            (false, Some(_)) => {
                return Err(VaultError::KeyMissing {
                    path: key_file.to_owned(),
                });
            }
            (true, None) => Vault::from_identity(read_key_file(key_file)?),
            (true, Some(check)) => {
                let current = Vault::from_identity(read_key_file(key_file)?);
                if current.decrypt(&check).is_ok() {
                    current
                } else if pending.exists() {
                    // A rotation committed but did not get to rename the new key into place.
                    let next = Vault::from_identity(read_key_file(&pending)?);
                    if next.decrypt(&check).is_err() {
                        return Err(VaultError::WrongKey {
                            path: key_file.to_owned(),
                        });
                    }
                    std::fs::rename(&pending, key_file).map_err(|source| VaultError::Io {
                        path: key_file.to_owned(),
                        source,
                    })?;
                    tracing::warn!(key_file = %key_file.display(), "finished an interrupted key rotation");
                    next
                } else {
                    return Err(VaultError::WrongKey {
                        path: key_file.to_owned(),
                    });
                }
            }
        };
        let sealed = age::encrypt(&vault.recipient, CHECK_PLAINTEXT).map_err(|_| VaultError::Encrypt)?;
        db.write_blocking(move |tx| store::init_vault_check(tx, &sealed))?;
        if pending.exists() {
            // Left by a rotation that failed before commit: the old key is still the right one.
            remove_pending(&pending);
        }
        Ok(vault)
    }

    fn from_identity(identity: Identity) -> Vault {
        let recipient = identity.to_public();
        Vault { identity, recipient }
    }

    /// The public half, safe to show (`age1…`).
    pub fn recipient(&self) -> String {
        self.recipient.to_string()
    }

    pub fn encrypt(&self, value: &str) -> Result<Vec<u8>, VaultError> {
        age::encrypt(&self.recipient, value.as_bytes()).map_err(|_| VaultError::Encrypt)
    }

    /// Decrypt one value; the plaintext is wiped from memory when dropped.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<String>, VaultError> {
        let bytes =
            Zeroizing::new(age::decrypt(&self.identity, ciphertext).map_err(|_| VaultError::Decrypt)?);
        std::str::from_utf8(&bytes)
            .map(|s| Zeroizing::new(s.to_owned()))
            .map_err(|_| VaultError::Decrypt)
    }
}

/// Re-encrypt every secret under a new identity in one transaction. The caller must hold the
/// data directory lock (no server running with the old key in memory).
pub fn rotate_key(key_file: &Path, db: &Db) -> Result<RotationReport, VaultError> {
    let old = Vault::open(key_file, db)?;
    let new = Vault::from_identity(Identity::generate());
    let pending = pending_path(key_file);
    write_key_file(&pending, &new.identity)?;
    let result = db.write_blocking(|tx| reencrypt_all(tx, &old, &new));
    let count = match result {
        Ok(n) => n,
        Err(e) => {
            // Not committed: the old key stays; the rotation's error is the one to report.
            remove_pending(&pending);
            return Err(e);
        }
    };
    // Committed: only now may the old key go.
    std::fs::rename(&pending, key_file).map_err(|source| VaultError::Io {
        path: key_file.to_owned(),
        source,
    })?;
    Ok(RotationReport {
        secrets: count,
        old_recipient: old.recipient(),
        new_recipient: new.recipient(),
    })
}

#[derive(Debug)]
pub struct RotationReport {
    pub secrets: usize,
    pub old_recipient: String,
    pub new_recipient: String,
}

fn reencrypt_all(tx: &Tx<'_>, old: &Vault, new: &Vault) -> Result<usize, VaultError> {
    let rows = store::all_ciphertexts(tx)?;
    for (id, ciphertext) in &rows {
        let plain = old.decrypt(ciphertext)?;
        store::set_ciphertext(tx, *id, &new.encrypt(&plain)?)?;
    }
    // Every kept version of every secret (the current ones are the same values again).
    let versions = store::all_version_ciphertexts(tx)?;
    for (id, version, ciphertext) in &versions {
        let plain = old.decrypt(ciphertext)?;
        store::set_version_ciphertext(tx, *id, *version, &new.encrypt(&plain)?)?;
    }
    // Notification channels' URLs, SMTP settings and signing secrets (src/notify).
    let channels = crate::notify::store::all_ciphertexts(tx)?;
    for (id, target, signing) in &channels {
        let target = new.encrypt(&old.decrypt(target)?)?;
        let signing = match signing {
            Some(s) => Some(new.encrypt(&old.decrypt(s)?)?),
            None => None,
        };
        crate::notify::store::set_ciphertexts(tx, *id, &target, signing.as_deref())?;
    }
    // Push webhook secrets are vault values too (src/hooks).
    let hooks = crate::hooks::store::all_ciphertexts(tx)?;
    for (project_id, ciphertext) in &hooks {
        let plain = old.decrypt(ciphertext)?;
        crate::hooks::store::set_ciphertext(tx, *project_id, &new.encrypt(&plain)?)?;
    }
    // Two-factor (TOTP) secrets of local accounts (src/users/two_factor).
    let totp = crate::users::two_factor::store::all_ciphertexts(tx)?;
    for (user_id, ciphertext) in &totp {
        let plain = old.decrypt(ciphertext)?;
        crate::users::two_factor::store::set_ciphertext(tx, *user_id, &new.encrypt(&plain)?)?;
    }
    let sealed = age::encrypt(&new.recipient, CHECK_PLAINTEXT).map_err(|_| VaultError::Encrypt)?;
    store::set_vault_check(tx, &sealed)?;
    Ok(rows.len() + channels.len() + hooks.len() + totp.len())
}

/// Remove a `<key_file>.new` that is not (or no longer) needed. A failure is logged rather than
/// returned: the key in use is right either way, and the next rotation refuses to overwrite
/// the leftover file (it is created with `create_new`), so nothing is lost silently.
fn remove_pending(pending: &Path) {
    if let Err(e) = std::fs::remove_file(pending) {
        tracing::warn!(file = %pending.display(), error = %e, "cannot remove the unused new key file; delete it by hand");
    }
}

fn pending_path(key_file: &Path) -> PathBuf {
    let mut name = key_file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".new");
    key_file.with_file_name(name)
}

fn read_key_file(path: &Path) -> Result<Identity, VaultError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| VaultError::Io {
        path: path.to_owned(),
        source,
    })?);
    let mode = std::fs::metadata(path)
        .map_err(|source| VaultError::Io {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o077;
    if mode != 0 {
        tracing::warn!(key_file = %path.display(), "master key file is readable by group/others; chmod 600 it");
    }
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .and_then(|l| Identity::from_str(l).ok())
        .ok_or_else(|| VaultError::BadKeyFile {
            path: path.to_owned(),
        })
}

fn write_key_file(path: &Path, identity: &Identity) -> Result<(), VaultError> {
    let io = |source| VaultError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::db::create_private_dir(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let body = Zeroizing::new(format!(
        "# Stagely master key (age X25519 identity). Back it up apart from the database.\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    ));
    file.write_all(body.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Db, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let key = dir.path().join("master.key");
        (dir, db, key)
    }

    #[test]
    fn round_trips_hard_values() {
        let (_d, db, key) = setup();
        let vault = Vault::open(&key, &db).unwrap();
        for v in [
            "",
            "multi\nline",
            "$HOME ${X}",
            "\"'`",
            "ünïcødé 🚀",
            &"x".repeat(64 * 1024),
        ] {
            let ct = vault.encrypt(v).unwrap();
            assert!(
                !ct.windows(v.len().max(1))
                    .any(|w| !v.is_empty() && w == v.as_bytes())
            );
            assert_eq!(vault.decrypt(&ct).unwrap().as_str(), v);
        }
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn missing_or_wrong_key_is_refused() {
        let (dir, db, key) = setup();
        Vault::open(&key, &db).unwrap();
        std::fs::rename(&key, dir.path().join("elsewhere")).unwrap();
        assert!(matches!(
            Vault::open(&key, &db),
            Err(VaultError::KeyMissing { .. })
        ));
        write_key_file(&key, &Identity::generate()).unwrap();
        let err = Vault::open(&key, &db).unwrap_err();
        assert!(matches!(err, VaultError::WrongKey { .. }), "{err}");
    }

    #[test]
    fn rotation_reencrypts_and_finishes_after_a_crash() {
        let (_d, db, key) = setup();
        let vault = Vault::open(&key, &db).unwrap();
        db.write_blocking(|tx| {
            tx.execute(
                "INSERT INTO projects (name, git_ref, compose_path, pull, created_at, updated_at) VALUES ('p','main','c','always',0,0)",
                [],
            )?;
            tx.execute(
                "INSERT INTO secrets (project_id, key, scope, encrypted_value, updated_by, updated_at) VALUES (1,'K','global',?1,'t',0)",
                [vault.encrypt("v1").unwrap()],
            )?;
            Ok::<_, VaultError>(())
        })
        .unwrap();
        let report = rotate_key(&key, &db).unwrap();
        assert_eq!(report.secrets, 1);
        assert_ne!(report.old_recipient, report.new_recipient);
        let vault = Vault::open(&key, &db).unwrap();
        assert_eq!(vault.recipient(), report.new_recipient);
        let ct: Vec<u8> = db
            .read_blocking(|c| {
                Ok::<_, VaultError>(c.query_row("SELECT encrypted_value FROM secrets", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_eq!(vault.decrypt(&ct).unwrap().as_str(), "v1");

        // Simulate a crash after commit, before the rename: new key only at <key>.new.
        let next = Identity::generate();
        let next_vault = Vault::from_identity(next.clone());
        write_key_file(&pending_path(&key), &next).unwrap();
        db.write_blocking(|tx| reencrypt_all(tx, &vault, &next_vault))
            .unwrap();
        let reopened = Vault::open(&key, &db).unwrap();
        assert_eq!(reopened.recipient(), next_vault.recipient());
        assert!(!pending_path(&key).exists());
    }
}
