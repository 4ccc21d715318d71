//! Checkout (step 4): keep one clone per environment in `<work_dir>/<project>/<environment>`,
//! then fetch and hard-checkout the ref, and report the commit.
//!
//! A private repository's credential comes as the agent-only secrets `STAGELY_GIT_TOKEN` (and
//! optionally `STAGELY_GIT_USERNAME`, default `x-access-token`). It reaches git only through the
//! environment of the git process and an askpass helper script that holds no secret itself; it
//! is never in argv, `.git/config` or a file. Credential helpers are switched off for these
//! commands so git cannot store it either.

use std::path::{Path, PathBuf};

use super::ephemeral::{EphemeralDir, EphemeralError};
use super::{LogSink, agent_line, process};
use stagely_protocol::mask::Masker;
use stagely_protocol::{ProjectSpec, SecretEntry};

/// The secret holding a private repository's password or token.
pub const GIT_TOKEN_KEY: &str = "STAGELY_GIT_TOKEN";
/// The secret holding the user name for it (default [`DEFAULT_GIT_USERNAME`]).
pub const GIT_USERNAME_KEY: &str = "STAGELY_GIT_USERNAME";
/// Accepted by GitHub for tokens; GitLab and Gitea accept any user name with a token.
pub const DEFAULT_GIT_USERNAME: &str = "x-access-token";

const ASKPASS_SCRIPT: &str = "#!/bin/sh\n\
# Git asks for a user name, then a password; the answers come from this process's environment.\n\
case \"$1\" in\n\
  [Uu]sername*) printf '%s\\n' \"$STAGELY_ASKPASS_USERNAME\" ;;\n\
  *) printf '%s\\n' \"$STAGELY_ASKPASS_PASSWORD\" ;;\n\
esac\n";

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("{what} {value:?} cannot be used as a directory name")]
    BadName { what: &'static str, value: String },
    #[error("{0}")]
    BadInput(String),
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git {step} failed ({exit}): {message}")]
    Git {
        step: &'static str,
        exit: String,
        message: String,
    },
    #[error("ref {0:?} is not a branch, tag or commit of the repository")]
    RefNotFound(String),
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Private(#[from] EphemeralError),
}

/// The credential for a private repository. Its `Debug` never shows it; zeroed on drop.
#[derive(zeroize::ZeroizeOnDrop)]
pub struct GitCredential {
    username: String,
    token: String,
}

impl std::fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GitCredential(<redacted>)")
    }
}

impl GitCredential {
    /// From the DEPLOY's secrets, when `STAGELY_GIT_TOKEN` is among them.
    pub fn from_secrets(secrets: &[SecretEntry]) -> Option<Self> {
        let find = |key: &str| secrets.iter().find(|s| s.key == key).map(|s| s.value.clone());
        let token = find(GIT_TOKEN_KEY).filter(|t| !t.is_empty())?;
        let username = find(GIT_USERNAME_KEY)
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_GIT_USERNAME.into());
        Some(Self { username, token })
    }
}

/// The checked-out tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub dir: PathBuf,
    pub commit: String,
}

/// A name from the server used as one path component: no separators, no `.`/`..`.
pub fn safe_component(what: &'static str, value: &str) -> Result<String, CheckoutError> {
    let ok = !value.is_empty()
        && value.len() <= 200
        && value != "."
        && value != ".."
        && !value.contains(['/', '\\', '\0'])
        && !value.starts_with('-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(CheckoutError::BadName {
            what,
            value: value.chars().take(64).collect(),
        })
    }
}

/// Where the compose file is inside a checkout: relative, no `..`.
pub fn compose_file_in(dir: &Path, compose_path: &str) -> Result<PathBuf, CheckoutError> {
    let rel = Path::new(compose_path);
    if compose_path.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
    {
        return Err(CheckoutError::BadInput(format!(
            "compose_path {compose_path:?} must be a relative path inside the repository"
        )));
    }
    Ok(dir.join(rel))
}

/// Everything a checkout needs besides the project.
pub struct Git<'a> {
    pub work_dir: &'a Path,
    pub private: &'a EphemeralDir,
    pub credential: Option<&'a GitCredential>,
    pub masker: &'a Masker,
    pub log: &'a LogSink,
}

impl Git<'_> {
    /// Clone once, fetch, hard-checkout `project.git_ref`; returns the directory and commit.
    pub async fn checkout(&self, project: &ProjectSpec, repo_url: &str) -> Result<Checkout, CheckoutError> {
        let name = safe_component("project name", &project.name)?;
        let env = safe_component("environment name", &project.environment)?;
        let git_ref = project.git_ref.trim();
        if git_ref.is_empty() || git_ref.starts_with('-') || git_ref.contains(char::is_whitespace) {
            return Err(CheckoutError::BadInput(format!(
                "git ref {git_ref:?} is not valid"
            )));
        }
        if repo_url.starts_with('-') || repo_url.contains('\0') {
            return Err(CheckoutError::BadInput("repo URL is not valid".into()));
        }
        let dir = self.work_dir.join(name).join(env);
        let askpass = match self.credential {
            Some(_) => Some(self.private.write("git-askpass", ASKPASS_SCRIPT, 0o700)?),
            None => None,
        };
        let askpass = askpass.as_deref();

        if !dir.join(".git").is_dir() {
            if dir.exists() {
                // A clone that died half-way: start over.
                std::fs::remove_dir_all(&dir).map_err(|source| CheckoutError::Io {
                    path: dir.clone(),
                    source,
                })?;
            }
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|source| CheckoutError::Io {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            agent_line(self.log, format!("cloning the repository into {}", dir.display()));
            let target = dir.to_string_lossy().into_owned();
            self.git(
                "clone",
                vec!["clone", "--no-checkout", "--", repo_url, &target],
                None,
                askpass,
            )
            .await?;
        } else {
            self.git(
                "remote set-url",
                vec!["remote", "set-url", "origin", repo_url],
                Some(&dir),
                askpass,
            )
            .await?;
        }
        agent_line(self.log, format!("fetching {git_ref}"));
        self.git(
            "fetch",
            vec![
                "fetch",
                "--prune",
                "--force",
                "--tags",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
            ],
            Some(&dir),
            askpass,
        )
        .await?;
        let mut commit = self.resolve(&dir, git_ref).await?;
        if commit.is_none() && git_ref.len() >= 7 && git_ref.chars().all(|c| c.is_ascii_hexdigit()) {
            // A commit on no branch: fetch it by id (servers allow this for reachable commits).
            self.git("fetch", vec!["fetch", "origin", git_ref], Some(&dir), askpass)
                .await?;
            commit = self.resolve(&dir, git_ref).await?;
        }
        let commit = commit.ok_or_else(|| CheckoutError::RefNotFound(git_ref.to_owned()))?;
        self.git(
            "checkout",
            vec!["checkout", "--force", "--detach", &commit],
            Some(&dir),
            askpass,
        )
        .await?;
        // Untracked files from an earlier commit go; ignored ones (a server-local .env) stay.
        self.git("clean", vec!["clean", "-ffd"], Some(&dir), askpass)
            .await?;
        agent_line(self.log, format!("checked out {git_ref} at {commit}"));
        Ok(Checkout { dir, commit })
    }

    async fn resolve(&self, dir: &Path, git_ref: &str) -> Result<Option<String>, CheckoutError> {
        for candidate in [
            format!("refs/remotes/origin/{git_ref}"),
            format!("refs/tags/{git_ref}"),
            git_ref.to_owned(),
        ] {
            let mut cmd = process::command("git");
            cmd.arg("-C")
                .arg(dir)
                .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
                .arg(format!("{candidate}^{{commit}}"));
            let out = process::output(cmd).await.map_err(CheckoutError::Spawn)?;
            let sha = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && sha.len() >= 40 && sha.chars().all(|c| c.is_ascii_hexdigit()) {
                return Ok(Some(sha));
            }
        }
        Ok(None)
    }

    async fn git(
        &self,
        step: &'static str,
        args: Vec<&str>,
        cwd: Option<&Path>,
        askpass: Option<&Path>,
    ) -> Result<(), CheckoutError> {
        let mut cmd = process::command("git");
        // No credential helper may store (or supply) anything: the token stays in memory.
        cmd.args(["-c", "credential.helper="]);
        if let Some(dir) = cwd {
            cmd.arg("-C").arg(dir);
        }
        cmd.args(&args);
        cmd.env("GIT_TERMINAL_PROMPT", "0");
        match (askpass, self.credential) {
            (Some(helper), Some(cred)) => {
                cmd.env("GIT_ASKPASS", helper)
                    .env("STAGELY_ASKPASS_USERNAME", &cred.username)
                    .env("STAGELY_ASKPASS_PASSWORD", &cred.token);
            }
            _ => {
                // Without a credential, fail fast rather than prompt anywhere.
                cmd.env("GIT_ASKPASS", "false");
            }
        }
        let out = process::run_streamed(cmd, self.masker, self.log, 10)
            .await
            .map_err(CheckoutError::Spawn)?;
        if out.success() {
            Ok(())
        } else {
            Err(CheckoutError::Git {
                step,
                exit: out.describe_exit(),
                message: out.tail.join("\n"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagely_protocol::Scope;

    #[test]
    fn names_and_paths_are_confined() {
        assert!(safe_component("p", "shop").is_ok());
        for bad in ["", ".", "..", "a/b", "-x", "a\0b"] {
            assert!(safe_component("p", bad).is_err(), "{bad:?}");
        }
        let d = Path::new("/w");
        assert_eq!(
            compose_file_in(d, "deploy/compose.yml").unwrap(),
            Path::new("/w/deploy/compose.yml")
        );
        assert!(compose_file_in(d, "../x.yml").is_err());
        assert!(compose_file_in(d, "/etc/x.yml").is_err());
        assert!(compose_file_in(d, "").is_err());
    }

    #[test]
    fn credential_comes_from_secrets_and_is_redacted() {
        let s = |k: &str, v: &str| SecretEntry {
            key: k.into(),
            value: v.into(),
            scope: Scope::Global,
            service: None,
        };
        assert!(GitCredential::from_secrets(&[s("OTHER", "x")]).is_none());
        let c = GitCredential::from_secrets(&[s(GIT_TOKEN_KEY, "tok-canary")]).unwrap();
        assert_eq!(c.username, DEFAULT_GIT_USERNAME);
        assert!(!format!("{c:?}").contains("tok-canary"));
    }

    #[tokio::test]
    async fn askpass_helper_answers_from_its_environment() {
        let work = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let rt = super::super::ephemeral::RuntimeDir::prepare(work.path(), Some(base.path())).unwrap();
        let dir = rt.deployment_dir(1).unwrap();
        let helper = dir.write("git-askpass", ASKPASS_SCRIPT, 0o700).unwrap();
        let ask = |prompt: &'static str| {
            let mut cmd = tokio::process::Command::new(&helper);
            cmd.arg(prompt)
                .env("STAGELY_ASKPASS_USERNAME", "u$er")
                .env("STAGELY_ASKPASS_PASSWORD", "p 'a\" ss");
            cmd
        };
        // Another test's fork may still hold the freshly written file open for a moment
        // (ETXTBSY until that child execs): retry, as a loaded test runner needs.
        let run = |prompt: &'static str| async move {
            for _ in 0..50 {
                match ask(prompt).output().await {
                    Err(e) if e.raw_os_error() == Some(26) => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    other => return other.unwrap(),
                }
            }
            panic!("the helper stayed busy");
        };
        let out = run("Username for 'https://h': ").await;
        assert_eq!(out.stdout, b"u$er\n");
        let out = run("Password for 'https://u@h': ").await;
        assert_eq!(out.stdout, b"p 'a\" ss\n");
        assert!(!std::fs::read_to_string(&helper).unwrap().contains("a\" ss"));
    }
}
