//! Online backup and restore of the data directory.
//!
//! A backup is a tar archive (mode 0600) holding a consistent snapshot of the database
//! (`VACUUM INTO`, safe while the server writes), a manifest, and the master key and the signing
//! key (they always travel together) only when `--include-key` is given (issue 12: by default a
//! backup holds ciphertext only, and the manifest names the key's public half so the right key
//! file can be found at restore). The snapshot is checked against the key before the archive is written, so a backup
//! that could not be decrypted is never produced silently. Restore refuses to run under a live
//! server and checks the key against the restored database before it finishes.

mod store;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::db::{Db, DbError, known_schema_version, now_ms, rfc3339};
use crate::secrets::vault::{Vault, VaultError};

const MANIFEST: &str = "stagely-backup.json";
const DB_ENTRY: &str = "stagely.db";
const KEY_ENTRY: &str = "master.key";
/// The signing key (issue 11) travels exactly when the master key does.
const SIGNING_ENTRY: &str = "signing.key";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Signing(#[from] crate::signing::SigningError),
    #[error(
        "the data is in PostgreSQL (database_url): back it up with pg_dump (docs/operations.md), and \
         the master key and signing key files with it"
    )]
    OnPostgres,
    #[error("{0} is not a Stagely backup (no {MANIFEST} inside)")]
    NotABackup(PathBuf),
    #[error("{path}: its {MANIFEST} does not parse: {source}")]
    BadManifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("this backup was made by a newer Stagely (schema {found}, this binary knows up to {known})")]
    TooNew { found: i64, known: i64 },
    #[error("{0} already holds a database; pass --force to replace it (the old files are kept beside it)")]
    NotEmpty(PathBuf),
    #[error(
        "this backup does not include the master key and {path} does not exist: put the key file whose public key is {recipient} there (or set key_file) first"
    )]
    KeyNeeded { path: PathBuf, recipient: String },
    #[error(
        "the key file {path} is not the key of this backup: it needs the key whose public key is {recipient} (put that file there, or set key_file)"
    )]
    WrongKey { path: PathBuf, recipient: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_at: String,
    pub schema_version: i64,
    pub includes_key: bool,
    /// Public half of the key the secrets are encrypted to (`age1…`), to match a key kept apart.
    pub recipient: String,
    pub stagely_version: String,
    /// Fingerprint of the signing key agents pin (`ed25519:…`); the key itself is in the
    /// archive exactly when `includes_key` is. Absent in backups made before issue 11.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_fingerprint: Option<String>,
}

/// Write a backup of the running (or stopped) appliance's data to `out`.
pub fn backup(config: &Config, out: &Path, include_key: bool) -> Result<Manifest, BackupError> {
    if config.database_url().is_some() {
        return Err(BackupError::OnPostgres);
    }
    let db = Db::open(&config.db_path())?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".stagely-backup-")
        .tempdir_in(dir)
        .map_err(io(dir))?;
    let snapshot = work.path().join(DB_ENTRY);
    let target = snapshot.to_string_lossy().into_owned();
    db.read_blocking(|c| store::snapshot_into(c, &target))?;

    // The snapshot must open with this key: never write a backup that cannot be restored.
    let check = Db::open(&snapshot)?;
    let vault = Vault::open(&config.key_file, &check)?;
    drop(check);
    // A data dir from before issue 11 has no signing key until its next start: back up what is
    // there (restore then makes one at the first start, and agents pin it on first use).
    let signing_path = config.signing_key_path();
    let signing = match crate::signing::Signer::load(&signing_path) {
        Ok(signer) => Some(signer.fingerprint().to_owned()),
        Err(crate::signing::SigningError::Missing(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let manifest = Manifest {
        format: 1,
        created_at: rfc3339(now_ms()),
        schema_version: known_schema_version(),
        includes_key: include_key,
        recipient: vault.recipient(),
        stagely_version: env!("CARGO_PKG_VERSION").to_owned(),
        signing_fingerprint: signing,
    };

    let partial = work.path().join("archive.tar");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(&partial))?;
    let mut tar = tar::Builder::new(file);
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|source| BackupError::BadManifest {
        path: partial.clone(),
        source,
    })?;
    append_bytes(&mut tar, MANIFEST, &manifest_json, &partial)?;
    tar.append_path_with_name(&snapshot, DB_ENTRY)
        .map_err(io(&partial))?;
    if include_key {
        tar.append_path_with_name(&config.key_file, KEY_ENTRY)
            .map_err(io(&config.key_file))?;
        if manifest.signing_fingerprint.is_some() {
            tar.append_path_with_name(&signing_path, SIGNING_ENTRY)
                .map_err(io(&signing_path))?;
        }
    }
    let file = tar.into_inner().map_err(io(&partial))?;
    file.sync_all().map_err(io(&partial))?;
    fs::rename(&partial, out).map_err(io(out))?;
    Ok(manifest)
}

fn append_bytes(
    tar: &mut tar::Builder<File>,
    name: &str,
    bytes: &[u8],
    path: &Path,
) -> Result<(), BackupError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(u64::try_from(now_ms() / 1000).unwrap_or(0));
    header.set_cksum();
    tar.append_data(&mut header, name, bytes).map_err(io(path))
}

/// Restore a backup into the configured data directory. The caller holds the data dir lock.
pub fn restore(config: &Config, archive: &Path, force: bool) -> Result<Manifest, BackupError> {
    if config.database_url().is_some() {
        return Err(BackupError::OnPostgres);
    }
    let db_path = config.db_path();
    if db_path.exists() && !force {
        return Err(BackupError::NotEmpty(config.data_dir.clone()));
    }
    crate::db::create_private_dir(&config.data_dir)?;
    let work = tempfile::Builder::new()
        .prefix(".stagely-restore-")
        .tempdir_in(&config.data_dir)
        .map_err(io(&config.data_dir))?;
    let file = File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(file);
    let mut manifest: Option<Manifest> = None;
    for entry in tar.entries().map_err(io(archive))? {
        let mut entry = entry.map_err(io(archive))?;
        let name = entry.path().map_err(io(archive))?.to_string_lossy().into_owned();
        match name.as_str() {
            MANIFEST => {
                let mut text = String::new();
                entry.read_to_string(&mut text).map_err(io(archive))?;
                manifest = Some(
                    serde_json::from_str(&text).map_err(|source| BackupError::BadManifest {
                        path: archive.to_owned(),
                        source,
                    })?,
                );
            }
            DB_ENTRY | KEY_ENTRY | SIGNING_ENTRY => {
                let dest = work.path().join(&name);
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(io(&dest))?;
                std::io::copy(&mut entry, &mut out).map_err(io(&dest))?;
                out.sync_all().map_err(io(&dest))?;
            }
            _ => {} // Unknown entries from a future format are ignored.
        }
    }
    let manifest = manifest.ok_or_else(|| BackupError::NotABackup(archive.to_owned()))?;
    if manifest.schema_version > known_schema_version() {
        return Err(BackupError::TooNew {
            found: manifest.schema_version,
            known: known_schema_version(),
        });
    }
    let staged_db = work.path().join(DB_ENTRY);
    if !staged_db.exists() {
        return Err(BackupError::NotABackup(archive.to_owned()));
    }
    let staged_key = work.path().join(KEY_ENTRY);
    let key_for_check = if staged_key.exists() {
        staged_key.clone()
    } else {
        config.key_file.clone()
    };
    if !key_for_check.exists() {
        return Err(BackupError::KeyNeeded {
            path: config.key_file.clone(),
            recipient: manifest.recipient.clone(),
        });
    }
    // Prove the pair works before touching the live files.
    match Vault::open(&key_for_check, &Db::open(&staged_db)?) {
        Ok(_) => {}
        Err(VaultError::WrongKey { .. }) if !staged_key.exists() => {
            return Err(BackupError::WrongKey {
                path: config.key_file.clone(),
                recipient: manifest.recipient.clone(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let staged_signing = work.path().join(SIGNING_ENTRY);
    if staged_signing.exists() {
        crate::signing::Signer::load(&staged_signing)?;
    }

    let stamp = now_ms();
    let keep_aside = |path: &Path| -> Result<(), BackupError> {
        if path.exists() {
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".before-restore-{stamp}"));
            fs::rename(path, PathBuf::from(aside)).map_err(io(path))?;
        }
        Ok(())
    };
    keep_aside(&db_path)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = db_path.as_os_str().to_owned();
        side.push(suffix);
        keep_aside(Path::new(&side))?;
    }
    fs::rename(&staged_db, &db_path).map_err(io(&db_path))?;
    if staged_key.exists() {
        keep_aside(&config.key_file)?;
        if let Some(dir) = config.key_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::db::create_private_dir(dir)?;
        }
        fs::rename(&staged_key, &config.key_file).map_err(io(&config.key_file))?;
    }
    if staged_signing.exists() {
        let signing_path = config.signing_key_path();
        keep_aside(&signing_path)?;
        fs::rename(&staged_signing, &signing_path).map_err(io(&signing_path))?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn config(dir: &Path) -> Config {
        let o = Overrides {
            data_dir: Some(dir.to_owned()),
            ..Default::default()
        };
        Config::load(None, Vec::new(), &o).unwrap()
    }

    #[test]
    fn round_trip_keeps_secrets_readable() {
        let tmp = tempfile::tempdir().unwrap();
        let a = config(&tmp.path().join("a"));
        let db = Db::open(&a.db_path()).unwrap();
        let vault = Vault::open(&a.key_file, &db).unwrap();
        let ct = vault.encrypt("survives").unwrap();
        db.write_blocking(|tx| {
            tx.execute("INSERT INTO meta (key, value) VALUES ('probe', ?1)", [&ct])?;
            Ok::<_, DbError>(())
        })
        .unwrap();
        let signer = crate::signing::Signer::open(&a.signing_key_path()).unwrap();
        let archive = tmp.path().join("b.tar");
        let m = backup(&a, &archive, true).unwrap();
        assert!(m.includes_key);
        assert_eq!(m.signing_fingerprint.as_deref(), Some(signer.fingerprint()));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&archive).unwrap().permissions()) & 0o777;
        assert_eq!(mode, 0o600);

        let b = config(&tmp.path().join("b"));
        restore(&b, &archive, false).unwrap();
        let db = Db::open(&b.db_path()).unwrap();
        let vault = Vault::open(&b.key_file, &db).unwrap();
        let ct: Vec<u8> = db
            .read_blocking(|c| {
                Ok::<_, DbError>(c.query_row("SELECT value FROM meta WHERE key = 'probe'", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_eq!(vault.decrypt(&ct).unwrap().as_str(), "survives");
        let restored = crate::signing::Signer::load(&b.signing_key_path()).unwrap();
        assert_eq!(
            restored.fingerprint(),
            signer.fingerprint(),
            "the signing key came back"
        );
        assert!(matches!(
            restore(&b, &archive, false),
            Err(BackupError::NotEmpty(_))
        ));
    }

    #[test]
    fn a_backup_without_key_needs_the_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        let a = config(&tmp.path().join("a"));
        let db = Db::open(&a.db_path()).unwrap();
        Vault::open(&a.key_file, &db).unwrap();
        crate::signing::Signer::open(&a.signing_key_path()).unwrap();
        let archive = tmp.path().join("nokey.tar");
        assert!(!backup(&a, &archive, false).unwrap().includes_key);
        let names: Vec<String> = tar::Archive::new(File::open(&archive).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n == SIGNING_ENTRY || n == KEY_ENTRY),
            "--no-key leaves both keys out: {names:?}"
        );
        let b = config(&tmp.path().join("b"));
        let needed = restore(&b, &archive, false).unwrap_err();
        let recipient = Vault::open(&a.key_file, &db).unwrap().recipient();
        assert!(
            matches!(&needed, BackupError::KeyNeeded { recipient: r, .. } if *r == recipient),
            "{needed}"
        );
        assert!(
            needed.to_string().contains(&recipient),
            "says which key: {needed}"
        );
        // Another key in its place: refused, naming the one needed.
        let other = config(&tmp.path().join("other"));
        Vault::open(&other.key_file, &Db::open(&other.db_path()).unwrap()).unwrap();
        fs::create_dir_all(&b.data_dir).unwrap();
        fs::copy(&other.key_file, &b.key_file).unwrap();
        let wrong = restore(&b, &archive, false).unwrap_err();
        assert!(matches!(wrong, BackupError::WrongKey { .. }), "{wrong}");
        assert!(wrong.to_string().contains(&recipient), "{wrong}");
        fs::copy(&a.key_file, &b.key_file).unwrap();
        restore(&b, &archive, false).unwrap();
        let garbage = tmp.path().join("garbage.tar");
        fs::write(&garbage, b"not a tar").unwrap();
        assert!(restore(&config(&tmp.path().join("c")), &garbage, false).is_err());
    }
}
