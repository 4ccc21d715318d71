//! Serving the agent binary (and an install script) from the appliance itself, so target servers
//! need nothing but this appliance's URL. The binary is public: it carries no secret.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::config::Config;
use crate::signing::Signer;

/// The install script; `@PUBLIC_URL@` and `@AGENT_UNIT@` are filled in when served.
const INSTALL_SH: &str = include_str!("../../packaging/agent/install.sh");
/// The agent's systemd unit (one file, shared with the .deb's documentation copy).
const AGENT_UNIT: &str = include_str!("../../packaging/systemd/stagely-agent.service");

/// Targets the appliance knows how to name; only those with a binary present are served.
pub const TARGETS: &[&str] = &["linux-x86_64", "linux-aarch64"];

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// An unknown target, or no binary for it on this appliance.
    #[error("agent build for this platform not found")]
    NotFound,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("agent download task failed: {0}")]
    Task(String),
}

/// One agent binary, read from disk.
pub struct AgentBinary {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Where agent binaries are looked for: the configured folder, else the packaged location,
/// else next to the running `stagely` binary (a cargo build puts `stagely-agent` there).
fn candidates(config: &Config, target: &str) -> Vec<PathBuf> {
    let name = format!("stagely-agent-{target}");
    let mut paths = Vec::new();
    if !config.agent_binaries_dir.as_os_str().is_empty() {
        paths.push(config.agent_binaries_dir.join(&name));
    }
    paths.push(Path::new("/usr/lib/stagely/agents").join(&name));
    // Without a known executable path this last fallback is skipped; the locations above
    // still apply, and a missing binary is answered with 404.
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        paths.push(dir.join("agents").join(&name));
        if target == host_target() {
            paths.push(dir.join("stagely-agent"));
        }
    }
    paths
}

fn host_target() -> String {
    format!("linux-{}", std::env::consts::ARCH)
}

/// The first existing binary for `target` with its bytes and sha256.
pub async fn load(state: &AppState, target: &str) -> Result<AgentBinary, DownloadError> {
    if !TARGETS.contains(&target) {
        return Err(DownloadError::NotFound);
    }
    let paths = candidates(&state.config, target);
    tokio::task::spawn_blocking(move || {
        let path = paths
            .into_iter()
            .find(|p| p.is_file())
            .ok_or(DownloadError::NotFound)?;
        let bytes = std::fs::read(&path).map_err(|source| DownloadError::Io { path, source })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(AgentBinary { bytes, sha256 })
    })
    .await
    .map_err(|e| DownloadError::Task(e.to_string()))?
}

/// One served binary as it was at start: its sha256 and the signing key's signature over
/// [`stagely_protocol::signing::download_statement`] of it.
#[derive(Debug, Clone)]
pub struct SignedBinary {
    pub sha256: String,
    /// base64, for `openssl pkeyutl -verify -rawin` (install.sh).
    pub signature: String,
}

/// The signatures of every agent binary present at start, made once: the work starts with the
/// appliance (in the background, so a 100 MB debug build does not delay the listener) and a
/// request that comes first waits for that one computation, never its own. A binary replaced
/// while the appliance runs no longer matches its signature: install.sh then refuses it until
/// the appliance is restarted.
pub struct Signatures {
    paths: Vec<(&'static str, Vec<PathBuf>)>,
    signer: std::sync::Arc<Signer>,
    signed: tokio::sync::OnceCell<Vec<(&'static str, SignedBinary)>>,
}

impl Signatures {
    pub fn new(config: &Config, signer: std::sync::Arc<Signer>) -> Signatures {
        Signatures {
            paths: TARGETS.iter().map(|t| (*t, candidates(config, t))).collect(),
            signer,
            signed: tokio::sync::OnceCell::new(),
        }
    }

    /// Every binary present at start with its hash and signature (computed on first use).
    pub async fn all(&self) -> &[(&'static str, SignedBinary)] {
        self.signed
            .get_or_init(|| async {
                let (paths, signer) = (self.paths.clone(), self.signer.clone());
                tokio::task::spawn_blocking(move || compute(&paths, &signer))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "signing the agent binaries failed");
                        Vec::new()
                    })
            })
            .await
    }

    pub async fn get(&self, target: &str) -> Option<&SignedBinary> {
        self.all()
            .await
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, s)| s)
    }
}

fn compute(paths: &[(&'static str, Vec<PathBuf>)], signer: &Signer) -> Vec<(&'static str, SignedBinary)> {
    let mut signed = Vec::new();
    for (target, candidates) in paths {
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            continue;
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let sha256 = hex::encode(Sha256::digest(&bytes));
                let signature = signer.sign_download(target, &sha256);
                signed.push((*target, SignedBinary { sha256, signature }));
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read an agent binary to sign it")
            }
        }
    }
    signed
}

/// The POSIX installer bound to this appliance's public URL.
pub fn install_script(public_url: &str) -> String {
    INSTALL_SH
        .replace("@AGENT_UNIT@", AGENT_UNIT.trim_end())
        .replace("@PUBLIC_URL@", public_url)
}

/// The one-liner the agents page shows.
pub fn install_command(public_url: &str) -> String {
    format!("curl -fsSL {public_url}/agent/install.sh | sudo sh")
}
