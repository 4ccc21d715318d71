//! HTTP for webhooks: the receivers (public, authenticated by the signature) and the
//! per-project secret and delivery log (signed-in users).

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::ops::{self, Incoming};
use super::{HookError, Outcome, Provider, Urls, WebhookInfo};
use crate::app::AppState;
use crate::users::Principal;
use crate::web::error::{ErrorBody, ErrorDetail, WebError, request_id};

impl From<HookError> for WebError {
    fn from(e: HookError) -> Self {
        match e {
            HookError::ProjectNotFound => WebError::NotFound("project"),
            HookError::BadSignature => WebError::Unauthorized,
            e @ HookError::TooLarge(_) => WebError::invalid("body", e.to_string()),
            HookError::Vault(e) => e.into(),
            HookError::Db(e) => e.into(),
        }
    }
}

/// The answer to a rotation: where to point the host, and the secret (only here, once).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NewWebhook {
    /// The GitHub receiver (`urls` has all three).
    pub url: String,
    pub urls: Urls,
    pub secret: String,
}

/// `POST /api/projects/{id}/webhook`: a new secret, answered once.
pub async fn rotate(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
) -> Result<impl IntoResponse, WebError> {
    let new = ops::rotate(&state, &who, project_id).await?;
    let answer = NewWebhook {
        url: new.urls.github.clone(),
        secret: new.secret.as_str().to_owned(),
        urls: new.urls,
    };
    Ok((StatusCode::CREATED, axum::Json(answer)))
}

/// `GET /api/projects/{id}/webhook`: no secret.
pub async fn get(
    State(state): State<AppState>,
    Path(project_id): Path<i64>,
) -> Result<axum::Json<WebhookInfo>, WebError> {
    Ok(axum::Json(ops::info(&state, project_id).await?))
}

pub async fn github(state: State<AppState>, path: Path<i64>, headers: HeaderMap, body: Body) -> Response {
    receive(state, Provider::Github, path, headers, body).await
}

pub async fn gitlab(state: State<AppState>, path: Path<i64>, headers: HeaderMap, body: Body) -> Response {
    receive(state, Provider::Gitlab, path, headers, body).await
}

pub async fn gitea(state: State<AppState>, path: Path<i64>, headers: HeaderMap, body: Body) -> Response {
    receive(state, Provider::Gitea, path, headers, body).await
}

/// The first of `names` present in `headers`, as text.
fn header(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()).map(str::to_owned))
}

fn incoming(provider: Provider, h: &HeaderMap) -> Incoming {
    match provider {
        Provider::Github => Incoming {
            signature: header(h, &["x-hub-signature-256"]),
            event: header(h, &["x-github-event"]),
            delivery_id: header(h, &["x-github-delivery"]),
        },
        Provider::Gitlab => Incoming {
            signature: header(h, &["x-gitlab-token"]),
            event: header(h, &["x-gitlab-event"]),
            delivery_id: header(h, &["x-gitlab-event-uuid", "idempotency-key"]),
        },
        Provider::Gitea => Incoming {
            signature: header(h, &["x-gitea-signature", "x-forgejo-signature"]),
            event: header(h, &["x-gitea-event", "x-forgejo-event"]),
            delivery_id: header(h, &["x-gitea-delivery", "x-forgejo-delivery"]),
        },
    }
}

/// The API's error body ([`ErrorBody`]) with a receiver's own code (`bad_signature`, …).
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            request_id: request_id(),
            field: None,
            last_seen: None,
        },
    };
    (status, axum::Json(body)).into_response()
}

/// How much more of an oversized body is read (and dropped) before the 413, and for how long at
/// most. A sender still writing its body when the answer comes sees a broken pipe instead of the
/// 413 (the server closes a connection whose request body it did not read), so a body a little
/// over the cap is drained first; one far over it is answered at once.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain(stream: &mut axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Read at most `max` bytes of body; `PAYLOAD_TOO_LARGE` when it is longer.
async fn read_capped(headers: &HeaderMap, body: Body, max: usize) -> Result<Vec<u8>, StatusCode> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if let Some(n) = declared.filter(|n| *n > max as u64) {
        if n <= max as u64 + DRAIN_BYTES {
            drain(&mut stream).await;
        }
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let mut out = Vec::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        if out.len() + chunk.len() > max {
            drain(&mut stream).await;
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn receive(
    State(state): State<AppState>,
    provider: Provider,
    Path(project_id): Path<i64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let max = state.config.hooks.max_body_bytes;
    let body = match read_capped(&headers, body, max).await {
        Ok(b) => b,
        Err(StatusCode::PAYLOAD_TOO_LARGE) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &HookError::TooLarge(max).to_string(),
            );
        }
        Err(status) => return error(status, "bad_request", "the body could not be read"),
    };
    match ops::receive(&state, provider, project_id, incoming(provider, &headers), &body).await {
        Ok(handled) => {
            let status = if handled.result == Outcome::Deployed {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(handled)).into_response()
        }
        Err(HookError::BadSignature) => error(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the webhook signature is missing or wrong (or this project has no webhook)",
        ),
        Err(e) => WebError::from(e).into_response(),
    }
}
