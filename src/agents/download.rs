//! Serving the agent binary (and an install script) from the appliance itself, so target servers
//! need nothing but this appliance's URL. The binary is public: it carries no secret.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::web::error::WebError;

/// The install script; `@PUBLIC_URL@` and `@AGENT_UNIT@` are filled in when served.
const INSTALL_SH: &str = include_str!("../../packaging/agent/install.sh");
/// The agent's systemd unit (one file, shared with the .deb's documentation copy).
const AGENT_UNIT: &str = include_str!("../../packaging/systemd/stagely-agent.service");

/// Targets the appliance knows how to name; only those with a binary present are served.
pub const TARGETS: &[&str] = &["linux-x86_64", "linux-aarch64"];

/// Where agent binaries are looked for: the configured folder, else the packaged location,
/// else next to the running `stagely` binary (a cargo build puts `stagely-agent` there).
fn candidates(state: &AppState, target: &str) -> Vec<PathBuf> {
    let name = format!("stagely-agent-{target}");
    let mut paths = Vec::new();
    if !state.config.agent_binaries_dir.as_os_str().is_empty() {
        paths.push(state.config.agent_binaries_dir.join(&name));
    }
    paths.push(Path::new("/usr/lib/stagely/agents").join(&name));
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
async fn load(state: &AppState, target: &str) -> Result<(Vec<u8>, String), WebError> {
    if !TARGETS.contains(&target) {
        return Err(WebError::NotFound("agent build for this platform"));
    }
    let paths = candidates(state, target);
    tokio::task::spawn_blocking(move || {
        let path = paths
            .into_iter()
            .find(|p| p.is_file())
            .ok_or(WebError::NotFound("agent build for this platform"))?;
        let bytes =
            std::fs::read(&path).map_err(|e| WebError::Internal(format!("{}: {e}", path.display())))?;
        let sum = hex::encode(Sha256::digest(&bytes));
        Ok((bytes, sum))
    })
    .await
    .map_err(|e| WebError::Internal(e.to_string()))?
}

/// `GET /agent/download/{target}`: the binary, with its sha256 in `X-Checksum-Sha256`.
pub async fn binary(
    State(state): State<AppState>,
    UrlPath(target): UrlPath<String>,
) -> Result<Response, WebError> {
    let (bytes, sum) = load(&state, &target).await?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"stagely-agent\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&sum) {
        headers.insert("x-checksum-sha256", v);
    }
    Ok(response)
}

/// `GET /agent/download/{target}/sha256`: `sha256sum`-style line.
pub async fn checksum(
    State(state): State<AppState>,
    UrlPath(target): UrlPath<String>,
) -> Result<String, WebError> {
    let (_, sum) = load(&state, &target).await?;
    Ok(format!("{sum}  stagely-agent\n"))
}

/// `GET /agent/install.sh`: the POSIX installer bound to this appliance's public URL.
pub async fn install_script(State(state): State<AppState>) -> Response {
    let script = INSTALL_SH
        .replace("@AGENT_UNIT@", AGENT_UNIT.trim_end())
        .replace("@PUBLIC_URL@", state.config.public_url.as_str());
    let mut response = script.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/x-shellscript; charset=utf-8"),
    );
    response
}

/// The one-liner the agents page shows.
pub fn install_command(public_url: &str) -> String {
    format!("curl -fsSL {public_url}/agent/install.sh | sudo sh")
}
