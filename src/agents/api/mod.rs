//! The agents' HTTP surface: the JSON API (create, the token shown once; list; revoke), the
//! agent download (binary, checksum, install script) and the `/ws/agent` upgrade. Handlers only
//! translate HTTP to [`super::ops`] and back.

pub mod socket;

use std::net::IpAddr;
use std::time::Instant;

use axum::Extension;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::admission::Rejection;
use super::download::{self, DownloadError};
use super::ops::{self, CreatedAgent};
use super::{AGENT_TOKEN_PREFIX, AgentError, AgentIdentity, AgentInfo, store};
use crate::app::AppState;
use crate::crypto::hash_token;
use crate::users::Principal;
use crate::web::error::{Json, WebError};
use crate::web::request::ClientAddr;
use stagely_protocol as protocol;

impl From<AgentError> for WebError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::NotFound => WebError::NotFound("agent"),
            AgentError::EnvironmentNotFound => WebError::NotFound("environment"),
            AgentError::Invalid { field, message } => WebError::invalid(field, message),
            AgentError::NameTaken(name) => WebError::NameTaken {
                field: "name".into(),
                message: format!(
                    "this environment already has an agent named {name:?} (revoked agents keep their names)"
                ),
            },
            e @ AgentError::NotPinned => WebError::Conflict {
                code: "not_pinned",
                message: e.to_string(),
            },
            e @ AgentError::NotRevoked => WebError::Conflict {
                code: "not_revoked",
                message: e.to_string(),
            },
            AgentError::Db(e) => e.into(),
        }
    }
}

impl From<DownloadError> for WebError {
    fn from(e: DownloadError) -> Self {
        match e {
            DownloadError::NotFound => WebError::NotFound("agent build for this platform"),
            e @ (DownloadError::Io { .. } | DownloadError::Task(_)) => WebError::Internal(e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    pub name: String,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(environment_id): Path<i64>,
    Json(input): Json<NewAgent>,
) -> Result<(StatusCode, axum::Json<CreatedAgent>), WebError> {
    let created = ops::create_agent(&state, &who, environment_id, &input.name).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

pub async fn list(State(state): State<AppState>) -> Result<axum::Json<Vec<AgentInfo>>, WebError> {
    Ok(axum::Json(ops::list_agents(&state).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<StatusCode, WebError> {
    // A live agent is revoked; an agent already revoked is deleted for good (issue 15).
    if ops::get_agent(&state, id).await?.revoked {
        ops::delete_revoked_agent(&state, &who, id).await?;
    } else {
        ops::revoke_agent(&state, &who, id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/agents/{id}/identity/reset`: forget the pinned recipient; the agent is
/// disconnected and its next connection pins again.
pub async fn reset_identity(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<StatusCode, WebError> {
    ops::reset_identity(&state, &who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- the agent download -------------------------------------------------------------------------

/// `GET /agent/download/{target}`: the binary, with its sha256 in `X-Checksum-Sha256`.
pub async fn binary(State(state): State<AppState>, Path(target): Path<String>) -> Result<Response, WebError> {
    let bin = download::load(&state, &target).await?;
    let mut response = bin.bytes.into_response();
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
    // A hex digest is always a valid header value; the header is a convenience (the
    // `/sha256` route serves the same sum).
    if let Ok(v) = HeaderValue::from_str(&bin.sha256) {
        headers.insert("x-checksum-sha256", v);
    }
    Ok(response)
}

/// `GET /agent/download/{target}/sha256`: `sha256sum`-style line.
pub async fn checksum(State(state): State<AppState>, Path(target): Path<String>) -> Result<String, WebError> {
    let bin = download::load(&state, &target).await?;
    Ok(format!("{}  stagely-agent\n", bin.sha256))
}

/// `GET /agent/download/{target}/sig`: the signing key's signature (base64) over the download
/// statement of the binary served (`stagely agent download v1`, the target, its sha256).
pub async fn signature(
    State(state): State<AppState>,
    Path(target): Path<String>,
) -> Result<String, WebError> {
    let signed = state
        .agent_downloads
        .get(&target)
        .await
        .ok_or(WebError::NotFound("agent build for this platform"))?;
    Ok(format!("{}\n", signed.signature))
}

/// `GET /agent/signing-key`: the public signing key (PEM) agents and install.sh check against
/// the fingerprint carried in the agent token.
pub async fn signing_key(State(state): State<AppState>) -> String {
    state.signer.public_pem()
}

/// `GET /agent/install.sh`: the POSIX installer bound to this appliance's public URL.
pub async fn install_script(State(state): State<AppState>) -> Response {
    let mut response = download::install_script(state.config.public_url.as_str()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/x-shellscript; charset=utf-8"),
    );
    response
}

// --- the agent connection -----------------------------------------------------------------------

/// `GET /ws/agent`: authenticate the agent token, then upgrade; [`socket::run`] lives the
/// connection.
pub async fn upgrade(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let agent = match admit(&state, client.0, &headers).await {
        Ok(agent) => agent,
        Err(response) => return response,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let address = client.to_string();
    // Small buffers: an idle agent costs a few KB instead of ~130 KB (STACK-NOTES.md). The read
    // buffer is held for the connection's life: 512 bytes still take ~5 LOG frames per read
    // (BENCHMARKS.md: idle agents, log throughput).
    ws.read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * protocol::MAX_FRAME_BYTES)
        .max_message_size(protocol::MAX_FRAME_BYTES)
        .max_frame_size(protocol::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            // The connection gets its own task rather than living inside axum's upgrade future,
            // which keeps the upgrade's config and callback beside it for the connection's whole
            // life (~230 bytes per idle agent).
            tokio::spawn(socket::run(state, agent, address, socket));
            std::future::ready(())
        })
}

/// The agent a handshake's token belongs to, or the refusal. Order matters (issue 12): a request
/// without a valid token never spends the shared budget; one without a token costs a header
/// look; a wrong token is charged to its address, which past its allowance gets 429 before any
/// lookup. The token's hash decides whether the address allowance applies at all.
async fn admit(state: &AppState, ip: IpAddr, headers: &HeaderMap) -> Result<AgentIdentity, Response> {
    let admission = &state.hub.admission;
    let token = bearer(headers).filter(|t| t.starts_with(AGENT_TOKEN_PREFIX));
    // Keyed like the store: by the token's secret part (the fingerprint after the `.` is not
    // part of what authenticates), so the hashes loaded at start and made at creation match.
    let hash = token.map(|t| hash_token(protocol::signing::split_token(t).0));
    let known = hash.as_deref().is_some_and(|h| admission.is_known(h));
    if !known && let Err(retry) = admission.try_attempt(ip, Instant::now()) {
        admission.rejected(Rejection::RateLimited);
        return Err(WebError::TooMany {
            retry_after_secs: retry.as_secs().max(1),
        }
        .into_response());
    }
    let (Some(token), Some(hash)) = (token, hash) else {
        admission.rejected(Rejection::NoToken);
        return Err(WebError::Unauthorized.into_response());
    };
    let token = token.to_owned();
    // A point read on an index: microseconds, on this thread when a reader is free.
    let agent = match state.db.lookup(move |c| store::authenticate(c, &token)).await {
        Ok(Some(agent)) => agent,
        Ok(None) => {
            admission.forget(&hash);
            admission.rejected(Rejection::BadToken);
            return Err(WebError::Unauthorized.into_response());
        }
        Err(e) => return Err(WebError::from(e).into_response()),
    };
    if !known {
        admission.refund(ip);
        admission.remember(hash);
    }
    if !state.hub.admit_handshake() {
        admission.rejected(Rejection::Busy);
        // Spread the retry over a few seconds so a herd does not come back together.
        let retry = 1 + u64::from(rand::random::<u8>() % 5);
        return Err(refusal(
            WebError::Unavailable("too many agent connections at once".into()),
            retry,
        ));
    }
    Ok(agent)
}

fn refusal(error: WebError, retry_after_secs: u64) -> Response {
    let mut response = error.into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The token from `Authorization: Bearer …`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
