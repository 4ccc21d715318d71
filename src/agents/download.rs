//! Serving the agent binary (and an install script) from the appliance itself, so target servers
//! need nothing but this appliance's URL. The binary is public: it carries no secret.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use axum::body::Bytes;
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

/// One agent binary as read from disk, with what identifies that read (path, size, mtime): the
/// bytes and their sha256 are kept and shared by every download until the file changes.
#[derive(Clone)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub len: u64,
    pub mtime: Option<SystemTime>,
    pub sha256: String,
    /// Shared, not copied, by each response.
    pub bytes: Bytes,
}

impl AgentBinary {
    fn is_current(&self, path: &Path, meta: &std::fs::Metadata) -> bool {
        self.path == path && self.len == meta.len() && self.mtime == meta.modified().ok()
    }
}

/// The agent binaries read so far, one per target (issue 12: hashing per request took the
/// appliance past 1.5 GB). A request only looks at the file's metadata; the file is read and
/// hashed again only when its path, size or mtime changed, once even under concurrent requests.
#[derive(Default)]
pub struct Binaries {
    by_target: tokio::sync::Mutex<HashMap<String, AgentBinary>>,
}

impl Binaries {
    /// The current binary for `target`, reading it only if the cached one is out of date.
    async fn get(&self, paths: Vec<PathBuf>, target: &str) -> Result<AgentBinary, DownloadError> {
        let found = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .find_map(|p| std::fs::metadata(&p).ok().filter(|m| m.is_file()).map(|m| (p, m)))
        })
        .await
        .map_err(|e| DownloadError::Task(e.to_string()))?;
        let Some((path, meta)) = found else {
            return Err(DownloadError::NotFound);
        };
        // Held across the read so that concurrent requests after a change read the file once.
        let mut cache = self.by_target.lock().await;
        if let Some(bin) = cache.get(target).filter(|b| b.is_current(&path, &meta)) {
            return Ok(bin.clone());
        }
        let bin = tokio::task::spawn_blocking(move || read_binary(path))
            .await
            .map_err(|e| DownloadError::Task(e.to_string()))??;
        tracing::info!(target, path = %bin.path.display(), bytes = bin.len, sha256 = %bin.sha256, "agent binary read");
        cache.insert(target.to_owned(), bin.clone());
        Ok(bin)
    }
}

fn read_binary(path: PathBuf) -> Result<AgentBinary, DownloadError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DownloadError::Io { path, source }
    };
    let mut file = std::fs::File::open(&path).map_err(io(&path))?;
    // Size and mtime from the open file, so they describe the bytes read below.
    let meta = file.metadata().map_err(io(&path))?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io(&path))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(AgentBinary {
        len: meta.len(),
        mtime: meta.modified().ok(),
        sha256,
        bytes: Bytes::from(bytes),
        path,
    })
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

/// The first existing binary for `target` with its bytes and sha256 (cached, see [`Binaries`]).
pub async fn load(state: &AppState, target: &str) -> Result<AgentBinary, DownloadError> {
    if !TARGETS.contains(&target) {
        return Err(DownloadError::NotFound);
    }
    state
        .binaries
        .get(candidates(&state.config, target), target)
        .await
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
