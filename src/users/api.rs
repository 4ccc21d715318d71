//! The users domain's JSON routes: the caller's own account. `POST /api/account/password`
//! changes the caller's own password (the current one required), for a signed-in browser or an
//! API token of that same person; there is no user id to name, so nobody changes another's.

use axum::Extension;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Principal, UserError, ops};
use crate::app::AppState;
use crate::web::error::{Json, WebError};
use crate::web::request::ClientAddr;
use crate::web::session::Session;

/// A password change. The passwords are wiped from memory when the body is dropped.
#[derive(Deserialize, utoipa::ToSchema, zeroize::ZeroizeOnDrop)]
pub struct PasswordInput {
    /// The password the account has now.
    pub current_password: String,
    /// The new password (at least 10 characters, at most 1024 bytes).
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PasswordChanged {
    /// How many other sessions of the account were ended (the calling session stays).
    pub sessions_ended: usize,
}

pub async fn change_password(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    session: Option<Extension<Session>>,
    client: ClientAddr,
    Json(input): Json<PasswordInput>,
) -> Result<axum::Json<PasswordChanged>, WebError> {
    if who.user_id.is_none() {
        // A CLI token stands for no person: there is no account to change.
        return Err(UserError::NotFound.into());
    }
    let change = ops::PasswordChange {
        current: Zeroizing::new(input.current_password.clone()),
        new: Zeroizing::new(input.password.clone()),
        confirm: Zeroizing::new(input.password.clone()),
    };
    let keep = session.map(|Extension(s)| s.id_hash);
    let n = ops::change_password(&state, &who, keep, &client.to_string(), change).await?;
    Ok(axum::Json(PasswordChanged { sessions_ended: n }))
}
