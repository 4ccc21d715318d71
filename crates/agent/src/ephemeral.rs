//! Where the override (and the git askpass helper) live while compose reads them: a private
//! 0700 directory on tmpfs (`$XDG_RUNTIME_DIR`, else `/dev/shm`), never persistent disk when the
//! machine has a tmpfs. Each deployment gets its own subdirectory, removed by a drop guard on
//! every path (success, failure, error, cancellation, panic); leftovers of a crash are removed
//! when the agent starts, after the process groups a killed agent left running are ended
//! ([`crate::groups`]). The log spill directory ([`crate::log_buffer::SPILL_DIR`]) is left for
//! the agent to sort out: it holds only masked lines an earlier run may still have to resend.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    #[error("cannot prepare the private directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} exists but is not a directory owned by the agent's user: refusing to use it")]
    NotOurs(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EphemeralError + '_ {
    move |source| EphemeralError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The agent's private runtime directory.
#[derive(Debug, Clone)]
pub struct RuntimeDir {
    path: PathBuf,
    on_tmpfs: bool,
}

impl RuntimeDir {
    /// Choose, create and empty the private directory for the agent working in `work_dir`.
    ///
    /// `base` forces the parent directory (config `runtime_dir`, tests); otherwise
    /// `$XDG_RUNTIME_DIR`, then `/dev/shm`, then `<work_dir>/run` with a loud warning. The
    /// directory name is derived from the work dir, so two agents on one machine never clear
    /// each other's files, and one agent finds its own leftovers whichever base it used before.
    pub fn prepare(work_dir: &Path, base: Option<&Path>) -> Result<Self, EphemeralError> {
        let name = private_name(work_dir);
        let candidates = candidate_bases(work_dir);
        // Leftovers may sit under any base an earlier run used: clear them all.
        for b in &candidates {
            let p = b.join(&name);
            if p.is_dir() && owned_by_us(&p) {
                clear_dir(&p);
            }
        }
        let chosen = match base {
            Some(b) => b.to_owned(),
            None => candidates
                .into_iter()
                .find(|b| b.is_dir() && is_tmpfs(b))
                .unwrap_or_else(|| work_dir.join("run")),
        };
        let on_tmpfs = is_tmpfs(&chosen);
        if !on_tmpfs {
            tracing::warn!(
                dir = %chosen.display(),
                "NO TMPFS FOUND: the override file holding secrets will be written to persistent disk \
                 (0600, deleted after each deploy). Set XDG_RUNTIME_DIR or mount /dev/shm to avoid this."
            );
        }
        fs::create_dir_all(&chosen).map_err(io(&chosen))?;
        let path = chosen.join(name);
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&path)(e)),
        }
        if !owned_by_us(&path) {
            return Err(EphemeralError::NotOurs(path));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(io(&path))?;
        clear_dir(&path);
        Ok(Self { path, on_tmpfs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn on_tmpfs(&self) -> bool {
        self.on_tmpfs
    }

    /// A fresh 0700 directory for one deployment, removed when the guard drops.
    pub fn deployment_dir(&self, deployment_id: i64) -> Result<EphemeralDir, EphemeralError> {
        let path = self
            .path
            .join(format!("d{deployment_id}-{:08x}", rand::random::<u32>()));
        DirBuilder::new().mode(0o700).create(&path).map_err(io(&path))?;
        Ok(EphemeralDir { path })
    }
}

/// One deployment's private directory; deleted with everything in it on drop.
#[derive(Debug)]
pub struct EphemeralDir {
    path: PathBuf,
}

impl EphemeralDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write a new file readable only by the agent's user (`mode` 0600, or 0700 for a helper).
    pub fn write(&self, name: &str, contents: &str, mode: u32) -> Result<PathBuf, EphemeralError> {
        let path = self.path.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(contents.as_bytes()).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        Ok(path)
    }
}

impl Drop for EphemeralDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(dir = %self.path.display(), error = %e, "cannot delete the private deploy directory");
        }
    }
}

fn private_name(work_dir: &Path) -> String {
    let canonical = fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_owned());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    format!("stagely-agent-{}", &hex::encode(digest)[..12])
}

fn candidate_bases(work_dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        v.push(PathBuf::from(x));
    }
    v.push(PathBuf::from("/dev/shm"));
    v.push(work_dir.join("run"));
    v
}

fn our_uid() -> Option<u32> {
    // The owner of /proc/self is the process's user: no libc call needed.
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn owned_by_us(path: &Path) -> bool {
    match (fs::symlink_metadata(path), our_uid()) {
        (Ok(m), Some(uid)) => m.is_dir() && m.uid() == uid,
        _ => false,
    }
}

fn clear_dir(path: &Path) {
    // First the commands an earlier agent left running (their records live here too): ended
    // before anything else is removed and before this agent connects and reports.
    super::groups::end_leftovers(path);
    let Ok(entries) = fs::read_dir(path) else { return };
    for entry in entries.flatten() {
        let p = entry.path();
        // Masked log lines kept for resending: the agent sorts out which it still needs
        // (crate::log_buffer), after it has read its deployments record.
        if entry.file_name() == super::log_buffer::SPILL_DIR {
            continue;
        }
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        match removed {
            Ok(()) => tracing::warn!(path = %p.display(), "deleted a leftover override from an earlier run"),
            Err(e) => tracing::error!(path = %p.display(), error = %e, "cannot delete a leftover override"),
        }
    }
}

/// Whether `path` lies on a tmpfs/ramfs mount, from /proc/self/mounts (longest mount prefix).
pub fn is_tmpfs(path: &Path) -> bool {
    let Ok(path) = fs::canonicalize(path) else {
        return false;
    };
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let mut best: Option<(usize, bool)> = None;
    for line in mounts.lines() {
        let mut parts = line.split(' ');
        let (Some(_dev), Some(mount), Some(fstype)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        // /proc/mounts escapes spaces as \040; such mount points are rare enough to skip.
        let mount = Path::new(mount);
        if path.starts_with(mount) {
            let len = mount.as_os_str().len();
            if best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, matches!(fstype, "tmpfs" | "ramfs")));
            }
        }
    }
    best.is_some_and(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_removed_on_drop_and_leftovers_on_start() {
        let work = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let rt = RuntimeDir::prepare(work.path(), Some(base.path())).unwrap();
        let mode = fs::metadata(rt.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let dir = rt.deployment_dir(7).unwrap();
        let f = dir.write("docker-compose.stagely.yml", "x", 0o600).unwrap();
        assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        let kept = dir.path().to_owned();
        drop(dir);
        assert!(!kept.exists());

        // A crash leaves a directory behind; the next start deletes it.
        let dir = rt.deployment_dir(8).unwrap();
        dir.write("docker-compose.stagely.yml", "x", 0o600).unwrap();
        let leftover = dir.path().to_owned();
        std::mem::forget(dir);
        assert!(leftover.exists());
        RuntimeDir::prepare(work.path(), Some(base.path())).unwrap();
        assert!(!leftover.exists());
    }

    #[test]
    fn panics_still_delete_the_directory() {
        let work = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let rt = RuntimeDir::prepare(work.path(), Some(base.path())).unwrap();
        let seen = std::sync::Mutex::new(None);
        let r = std::panic::catch_unwind(|| {
            let dir = rt.deployment_dir(1).unwrap();
            *seen.lock().unwrap() = Some(dir.path().to_owned());
            panic!("boom");
        });
        assert!(r.is_err());
        assert!(!seen.lock().unwrap().clone().unwrap().exists());
    }

    #[test]
    fn dev_shm_is_tmpfs_here() {
        if Path::new("/dev/shm").is_dir() {
            assert!(is_tmpfs(Path::new("/dev/shm")));
        }
        assert!(!is_tmpfs(Path::new("/nonexistent/x")));
    }
}
