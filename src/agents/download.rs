//! Serving the agent binary (and an install script) from the appliance itself, so target servers
//! need nothing but this appliance's URL. The binary is public: it carries no secret.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::app::AppState;

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
fn candidates(state: &AppState, target: &str) -> Vec<PathBuf> {
    let name = format!("stagely-agent-{target}");
    let mut paths = Vec::new();
    if !state.config.agent_binaries_dir.as_os_str().is_empty() {
        paths.push(state.config.agent_binaries_dir.join(&name));
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
    let paths = candidates(state, target);
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
