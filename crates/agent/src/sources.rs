//! The files compose reads for a deployment stay inside the checkout: the compose file, its
//! `include`s, `extends` files, `env_file`s, `label_file`s and the project's `.env`, each with
//! every symlink followed. Checked before compose runs at all (so compose never reads a file
//! out of the checkout, not even for `config`), and size-capped.
//!
//! Build contexts are checked on compose's normalised model instead ([`super::policy`]): compose
//! reads them only at build time, and the model has them resolved.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::policy::{Effective, Refused, STATE_NEVER_READ, Violation, confined_ok, resolve};

/// Largest single file compose may read for a deployment.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Largest total of all of them.
pub const MAX_TOTAL_BYTES: u64 = 8 * 1024 * 1024;
/// Most compose files (the main one, includes, extends) one deployment may chain.
const MAX_COMPOSE_FILES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is {size} bytes; the agent reads at most {max} bytes per compose file")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("the compose files and the files they name exceed {0} bytes together")]
    TooMuch(u64),
    #[error("more than {0} compose files are included or extended")]
    TooMany(usize),
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    /// Worded like compose's own error (a YAML error is the same whoever finds it).
    #[error("the compose file is invalid: yaml: {message} ({path})")]
    Yaml { path: PathBuf, message: String },
}

/// The checkout a project without a repository uses: the compose file's directory. Refused when
/// that is the whole host, a protected directory or one holding one, or inside /proc, /sys, /dev.
/// (The agent's own state inside it stays out of reach: [`super::policy::confined_ok`].)
pub fn checkout_of_local_file(compose_file: &Path) -> Result<PathBuf, String> {
    let dir = compose_file.parent().unwrap_or(Path::new("/"));
    let real = resolve(dir);
    let protected = super::policy::PROTECTED_PATHS
        .iter()
        .map(|p| resolve(Path::new(p)))
        .any(|p| p == real || p.starts_with(&real));
    let under_kernel = ["/proc", "/sys", "/dev"].iter().any(|p| real.starts_with(p));
    if protected || under_kernel {
        return Err(format!(
            "the compose file's directory {} is the checkout of a project without a repository, \
             and it is (or holds) a protected host directory: put the compose file in a directory of its own",
            real.display()
        ));
    }
    Ok(real)
}

/// Check every file compose will read for `compose_file`, inside `checkout` (resolved) unless
/// an `allow_read` entry names it.
pub fn check(
    compose_file: &Path,
    checkout: &Path,
    agent_state: &[PathBuf],
    allow: &Effective,
) -> Result<(), SourceError> {
    let mut scan = Scan {
        checkout,
        agent_state,
        allow,
        total: 0,
        seen: BTreeSet::new(),
        refused: Vec::new(),
    };
    let project_dir = compose_file.parent().unwrap_or(Path::new("/")).to_owned();
    scan.compose_file(compose_file, "the compose file", "compose_path", &project_dir)?;
    if scan.refused.is_empty() {
        Ok(())
    } else {
        Err(Refused(scan.refused).into())
    }
}

struct Scan<'a> {
    checkout: &'a Path,
    agent_state: &'a [PathBuf],
    allow: &'a Effective,
    total: u64,
    seen: BTreeSet<PathBuf>,
    refused: Vec<Violation>,
}

impl Scan<'_> {
    /// Is `path` (as written in `subject`'s `key`) inside? Returns its resolved form when it is
    /// (or is allowed), after recording a violation when not.
    fn confined(&mut self, subject: &str, key: &str, written: &str, base: &Path) -> Option<PathBuf> {
        if written.contains('$') || written.contains("://") {
            self.refused.push(Violation {
                subject: subject.to_owned(),
                key: key.to_owned(),
                value: written.to_owned(),
                allow_with: "nothing: write a literal path inside the repository (the agent must check \
                             a path before compose reads it, so it cannot be interpolated or remote)"
                    .into(),
            });
            return None;
        }
        let resolved = resolve(&base.join(written));
        if !confined_ok(&resolved, self.checkout, self.agent_state) {
            self.refused.push(Violation {
                subject: subject.to_owned(),
                key: key.to_owned(),
                value: format!("{written} (resolves to {})", resolved.display()),
                allow_with: STATE_NEVER_READ.into(),
            });
            return None;
        }
        if resolved.starts_with(self.checkout) || self.allow.may_read(&resolved) {
            return Some(resolved);
        }
        self.refused.push(Violation {
            subject: subject.to_owned(),
            key: key.to_owned(),
            value: format!("{written} (resolves to {})", resolved.display()),
            allow_with: self.allow.read_hint(&resolved),
        });
        None
    }

    /// Count a file compose reads; `Ok(false)` when it does not exist (an optional env file).
    fn sized(&mut self, path: &Path) -> Result<bool, SourceError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(SourceError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if !meta.is_file() {
            return Err(SourceError::NotAFile {
                path: path.to_owned(),
            });
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(SourceError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
                max: MAX_FILE_BYTES,
            });
        }
        self.total += meta.len();
        if self.total > MAX_TOTAL_BYTES {
            return Err(SourceError::TooMuch(MAX_TOTAL_BYTES));
        }
        Ok(true)
    }

    /// A plain file compose reads (env_file, label_file, `.env`).
    fn data_file(&mut self, subject: &str, key: &str, written: &str, base: &Path) -> Result<(), SourceError> {
        if let Some(path) = self.confined(subject, key, written, base) {
            self.sized(&path)?;
        }
        Ok(())
    }

    /// A compose file: confined, sized, parsed, and everything it names scanned in turn.
    /// `project_dir` is what its relative paths are relative to.
    fn compose_file(
        &mut self,
        file: &Path,
        subject: &str,
        key: &str,
        project_dir: &Path,
    ) -> Result<(), SourceError> {
        let written = file.to_string_lossy().into_owned();
        let Some(path) = self.confined(subject, key, &written, Path::new("/")) else {
            return Ok(());
        };
        if !self.seen.insert(path.clone()) {
            return Ok(());
        }
        if self.seen.len() > MAX_COMPOSE_FILES {
            return Err(SourceError::TooMany(MAX_COMPOSE_FILES));
        }
        if !self.sized(&path)? {
            return Err(SourceError::Io {
                path,
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        // The project's `.env` is read for interpolation: it must not lead out either.
        if project_dir.join(".env").symlink_metadata().is_ok() {
            self.data_file("the project directory", ".env", ".env", project_dir)?;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| SourceError::Io {
            path: path.clone(),
            source,
        })?;
        let mut doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| SourceError::Yaml {
            path: path.clone(),
            message: e.to_string(),
        })?;
        drop(text);
        // Anchors and `<<` merges could hide a key from a plain walk.
        doc.apply_merge().map_err(|e| SourceError::Yaml {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let here = path.parent().unwrap_or(Path::new("/")).to_owned();
        let shown = path.display().to_string();
        self.includes(&doc, &shown, project_dir)?;
        let services = doc
            .get("services")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten();
        for (name, svc) in services {
            let subject = format!("service {} ({shown})", name.as_str().unwrap_or("?"));
            for key in ["env_file", "label_file"] {
                for entry in path_list(svc.get(key)) {
                    self.data_file(&subject, key, &entry, project_dir)?;
                }
            }
            if let Some(extends) = svc.get("extends")
                && let Some(file) = extends.get("file").and_then(Value::as_str)
                && let Some(target) = self.confined(&subject, "extends.file", file, &here)
            {
                let dir = target.parent().unwrap_or(Path::new("/")).to_owned();
                self.compose_file(&target, &subject, "extends.file", &dir)?;
            }
        }
        Ok(())
    }

    /// Top-level `include`: a path, a list of paths, or `{path, env_file, project_directory}`.
    fn includes(&mut self, doc: &Value, shown: &str, project_dir: &Path) -> Result<(), SourceError> {
        let subject = format!("include ({shown})");
        let entries = match doc.get("include") {
            Some(Value::Sequence(s)) => s.clone(),
            Some(v @ Value::String(_)) => vec![v.clone()],
            _ => Vec::new(),
        };
        for entry in &entries {
            let (paths, dir) = match entry {
                Value::String(s) => (vec![s.clone()], None),
                Value::Mapping(_) => (
                    path_list(entry.get("path")),
                    entry.get("project_directory").and_then(Value::as_str),
                ),
                _ => (Vec::new(), None),
            };
            let dir = match dir {
                Some(d) => match self.confined(&subject, "include.project_directory", d, project_dir) {
                    Some(d) => Some(d),
                    None => continue,
                },
                None => None,
            };
            for env in path_list(entry.get("env_file")) {
                self.data_file(&subject, "include.env_file", &env, project_dir)?;
            }
            for p in paths {
                if let Some(target) = self.confined(&subject, "include.path", &p, project_dir) {
                    let own = dir
                        .clone()
                        .unwrap_or_else(|| target.parent().unwrap_or(Path::new("/")).to_owned());
                    self.compose_file(&target, &subject, "include.path", &own)?;
                }
            }
        }
        Ok(())
    }
}

/// `x`, `[x, y]` or `[{path: x}, …]` as strings.
fn path_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Mapping(_) => i.get("path").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
