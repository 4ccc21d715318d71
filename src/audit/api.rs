//! JSON API for the audit log (admin): `GET /api/audit?project=&actor=&before=&limit=`.

use axum::extract::{Query, State};
use serde::Deserialize;

use super::AuditEntry;
use crate::app::AppState;
use crate::web::error::WebError;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;

#[derive(Deserialize)]
pub struct ApiQuery {
    before: Option<i64>,
    project: Option<String>,
    actor: Option<String>,
    limit: Option<i64>,
}

/// Newest first; page with `before=<the last id you got>`.
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ApiQuery>,
) -> Result<axum::Json<Vec<AuditEntry>>, WebError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(WebError::invalid("limit", format!("limit is 1 to {MAX_LIMIT}")));
    }
    let page = super::pages::AuditQuery {
        before: q.before,
        project: q.project,
        actor: q.actor,
    };
    let filter = page.filter().map_err(|field| match field {
        "project" => WebError::invalid("project", "project is a project id (a number)"),
        _ => WebError::invalid("actor", "actor is at most 200 characters"),
    })?;
    let before = page.before;
    Ok(axum::Json(
        state
            .db
            .read(move |c| super::list(c, &filter, before, limit))
            .await?,
    ))
}
