//! JSON API for notification channels. A channel's URL and SMTP password are write-only; its
//! signing secret is in the create answer only. Handlers translate HTTP to [`super::ops`].

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{ChannelInfo, ChannelInput, Created, Delivery, NotifyError, ops, store};
use crate::app::AppState;
use crate::users::Principal;
use crate::web::error::{Json, WebError};

/// Rows of the delivery log answered.
const DELIVERIES: i64 = 100;

impl From<NotifyError> for WebError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::NotFound => WebError::NotFound("notification channel"),
            NotifyError::ProjectNotFound => WebError::NotFound("project"),
            NotifyError::Invalid { field, message } => WebError::invalid(field, message),
            e @ NotifyError::NameTaken(_) => WebError::NameTaken {
                field: "name".into(),
                message: e.to_string(),
            },
            NotifyError::Vault(e) => e.into(),
            NotifyError::Db(e) => e.into(),
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    Path(project_id): Path<i64>,
) -> Result<axum::Json<Vec<ChannelInfo>>, WebError> {
    let channels = state
        .db
        .read(move |c| {
            if store::project_name(c, project_id)?.is_none() {
                return Err(NotifyError::ProjectNotFound);
            }
            Ok(store::list_channels(c, project_id)?)
        })
        .await?;
    Ok(axum::Json(channels))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    Json(input): Json<ChannelInput>,
) -> Result<(StatusCode, axum::Json<Created>), WebError> {
    let created = ops::create_channel(&state, &who, project_id, input).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<StatusCode, WebError> {
    ops::delete_channel(&state, &who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Vec<Delivery>>, WebError> {
    let rows = state
        .db
        .read(move |c| {
            store::get_channel(c, id)?;
            Ok::<_, NotifyError>(store::deliveries(c, id, DELIVERIES)?)
        })
        .await?;
    Ok(axum::Json(rows))
}

/// `202` to a test: the delivery to watch in the channel's deliveries.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TestQueued {
    pub delivery_id: i64,
}

/// Enqueue a test notice for this channel: 202 with the delivery's id (see its deliveries).
pub async fn test(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<(StatusCode, axum::Json<TestQueued>), WebError> {
    let delivery_id = ops::send_test(&state, id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(TestQueued { delivery_id })))
}
