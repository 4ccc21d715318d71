//! `GET /api/environments/{id}/runtime` (viewer): what runs there and its drift.

use axum::extract::{Path, State};

use super::{Runtime, ops};
use crate::app::AppState;
use crate::web::error::WebError;

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Runtime>, WebError> {
    Ok(axum::Json(ops::get(&state, id).await?))
}
