//! JSON API for deploys and deployments.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{DeployError, DeployStatus, Deployment, ops, store};
use crate::app::AppState;
use crate::db::rfc3339;
use crate::users::Principal;
use crate::web::error::WebError;

impl From<DeployError> for WebError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::NotFound => WebError::NotFound("deployment"),
            DeployError::ProjectNotFound => WebError::NotFound("project"),
            DeployError::Invalid { field, message } => WebError::invalid(field, message),
            e @ DeployError::NoAgent { .. } => WebError::Conflict {
                code: "no_agent",
                message: e.to_string(),
            },
            ref e @ DeployError::AgentOffline { last_seen_ms, .. } => WebError::AgentOffline {
                message: e.to_string(),
                last_seen: last_seen_ms.map(rfc3339),
            },
            e @ DeployError::AgentTooOld(_) => WebError::Conflict {
                code: "agent_too_old",
                message: e.to_string(),
            },
            e @ DeployError::Seal => WebError::Internal(e.to_string()),
            e @ DeployError::NoRelease(_) => WebError::Conflict {
                code: "no_release",
                message: e.to_string(),
            },
            e @ DeployError::ReleaseIncomplete { .. } => WebError::Conflict {
                code: "release_incomplete",
                message: e.to_string(),
            },
            e @ DeployError::AgentWithoutReleases(_) => WebError::Conflict {
                code: "agent_too_old",
                message: e.to_string(),
            },
            e @ DeployError::InProgress(_) => WebError::Conflict {
                code: "deploy_in_progress",
                message: e.to_string(),
            },
            e @ DeployError::AlreadyFinished { .. } => WebError::Conflict {
                code: "already_finished",
                message: e.to_string(),
            },
            DeployError::Forbidden(why) => WebError::ForbiddenBecause(why),
            e @ DeployError::NotAwaiting(_) => WebError::Conflict {
                code: "not_awaiting_approval",
                message: e.to_string(),
            },
            DeployError::Vault(e) => e.into(),
            DeployError::Db(e) => e.into(),
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(default)]
    pub environment: Option<String>,
    /// A branch, tag or commit other than the environment's `git_ref`.
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
}

/// `202` to a deploy (the new deployment, `queued` when sent or `waiting` while another runs)
/// or to a cancel (`cancelled`, or still `queued`/`running` until the agent stops).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeployAccepted {
    pub deployment_id: i64,
    pub status: DeployStatus,
}

pub async fn deploy(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, WebError> {
    // The body is optional: `POST /api/deploy/1` with no body deploys the only environment.
    let request: DeployRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeployRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| WebError::invalid("body", format!("not a deploy request: {e}")))?
    };
    let request = ops::Request {
        environment: request.environment,
        git_ref: request.git_ref,
        commit: None,
    };
    let t = ops::trigger(&state, &who, project_id, request).await?;
    let accepted = DeployAccepted {
        deployment_id: t.deployment_id,
        status: t.status,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)))
}

/// `POST /api/deployments/{id}/cancel`: 202 `{deployment_id, status}`; `status` is
/// `cancelled` for a waiting one (or one whose agent is offline), else still `queued`/`running`
/// until the agent reports it stopped.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, WebError> {
    let status = super::queue::cancel(&state, &who, id).await?;
    let accepted = DeployAccepted {
        deployment_id: id,
        status,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(accepted)))
}

/// One deployment, with its `approval` (and the approver's diff while it awaits one).
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Deployment>, WebError> {
    let s = state.clone();
    Ok(axum::Json(
        state
            .db
            .read(move |c| {
                let mut d = store::get(c, id)?;
                d.approval = super::approval::view_for(&s, c, &d)?;
                Ok::<_, DeployError>(d)
            })
            .await?,
    ))
}

/// `POST /api/deployments/{id}/approve`: 200 `{deployment_id, status}` (`waiting`, or
/// `queued` once dispatched). 403 for the person who triggered it or one who may not deploy
/// the environment; 409 `not_awaiting_approval` when it does not await one or it expired.
pub async fn approve(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<axum::Json<DeployAccepted>, WebError> {
    let d = super::approval::approve(&state, &who, id).await?;
    Ok(axum::Json(DeployAccepted {
        deployment_id: d.deployment_id,
        status: d.status,
    }))
}

/// `POST /api/deployments/{id}/reject`: 200 `{deployment_id, status: "cancelled"}`.
pub async fn reject(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<axum::Json<DeployAccepted>, WebError> {
    let d = super::approval::reject(&state, &who, id).await?;
    Ok(axum::Json(DeployAccepted {
        deployment_id: d.deployment_id,
        status: d.status,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub environment_id: Option<i64>,
    pub limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Vec<Deployment>>, WebError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    Ok(axum::Json(
        state
            .db
            .read(move |c| store::list(c, q.environment_id, limit))
            .await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    /// Only lines with a larger sequence number (for paging and catching up).
    pub after: Option<i64>,
    /// The same as `after` (the name the `next` cursor uses).
    pub after_seq: Option<i64>,
    pub limit: Option<i64>,
}

/// Lines per logs page unless `limit` says otherwise, and the most it may ask for.
pub const DEFAULT_LOG_PAGE: i64 = 1_000;
pub const MAX_LOG_PAGE: i64 = 5_000;
/// A page also ends once its lines hold this many bytes (at least one line is given).
pub const MAX_LOG_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// One page of a deployment's log: a JSON array (as before paging), with the next page's URL in
/// `Link: <…>; rel="next"` and its cursor in `Stagely-Next-After` while more may follow.
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<LogsQuery>,
) -> Result<impl IntoResponse, WebError> {
    let after = q.after_seq.or(q.after).unwrap_or(-1);
    let limit = q.limit.unwrap_or(DEFAULT_LOG_PAGE).clamp(1, MAX_LOG_PAGE);
    let (lines, full) = state
        .db
        .read(move |c| {
            store::get(c, id)?;
            Ok::<_, DeployError>(store::logs_page(c, id, after, limit, MAX_LOG_PAGE_BYTES)?)
        })
        .await?;
    let mut headers = axum::http::HeaderMap::new();
    if let (true, Some(last)) = (full, lines.last()) {
        let next = format!(
            "</api/deployments/{id}/logs?after_seq={}&limit={limit}>; rel=\"next\"",
            last.seq
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&next) {
            headers.insert(axum::http::header::LINK, v);
        }
        headers.insert("stagely-next-after", axum::http::HeaderValue::from(last.seq));
    }
    Ok((headers, axum::Json(lines)))
}

/// `201` to a redeploy: the new deployment (`queued` when sent, `waiting` while another runs)
/// and the deployment whose release it restores.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RedeployAccepted {
    pub deployment_id: i64,
    pub status: DeployStatus,
    pub redeploy_of: i64,
}

/// `POST /api/deployments/{id}/redeploy`: a new deployment of that deployment's release — its
/// commit, its secret versions, each service's image pinned. 409 `no_release` when it has none,
/// `release_incomplete` (naming the keys) when a secret version it used was pruned.
pub async fn redeploy(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, WebError> {
    let r = super::rollback::redeploy(&state, &who, id).await?;
    let accepted = RedeployAccepted {
        deployment_id: r.deployment_id,
        status: r.status,
        redeploy_of: r.redeploy_of,
    };
    Ok((StatusCode::CREATED, axum::Json(accepted)))
}
