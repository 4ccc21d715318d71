//! Two-factor on the account page: the section (status, regenerate recovery codes, disable),
//! enrolment (`/account/2fa`: the QR code, the secret for manual entry, a code to confirm),
//! the recovery codes shown once, and an admin's reset from the Users page. Every rule is a
//! [`crate::users::two_factor::ops`] call.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::account::render_account;
use crate::app::AppState;
use crate::users::UserError;
use crate::users::two_factor::ops::{self, Status};
use crate::web::error::WebError;
use crate::web::layout::{
    self, FormErrors, Nav, PageError, Viewer, csrf_field, field_error, invalid, no_store, page,
};
use crate::web::request::ClientAddr;

/// The "Two-factor authentication" section of the account page.
pub fn section(v: &Viewer, st: &Status, has_password: bool, errors: &FormErrors) -> Markup {
    html! {
        article id="two-factor" {
            header { h3 { "Two-factor authentication" } }
            @if let Some(e) = errors.get("tfa") { p.notice.error role="alert" { (e) } }
            @if st.enabled {
                p data-testid="2fa-status" {
                    "On: signing in with your password also asks for a code from your authenticator app. "
                    strong { (st.recovery_left) } " unused recovery code(s) left."
                }
                form method="post" action="/account/2fa/recovery" {
                    (csrf_field(&v.csrf))
                    label { "A current code from your app"
                        input name="code" inputmode="numeric" autocomplete="one-time-code" required
                            aria-invalid=[invalid(errors, "tfa_code")];
                    }
                    (field_error(errors, "tfa_code"))
                    button.secondary.outline type="submit" { "New recovery codes" }
                    small.muted { " The old codes stop working." }
                }
                form method="post" action="/account/2fa/disable" {
                    (csrf_field(&v.csrf))
                    label { "Current password"
                        input type="password" name="password" autocomplete="current-password" required
                            aria-invalid=[invalid(errors, "tfa_password")];
                    }
                    (field_error(errors, "tfa_password"))
                    label { "A current code or a recovery code"
                        input name="code" autocomplete="one-time-code" required
                            aria-invalid=[invalid(errors, "tfa_disable_code")];
                    }
                    (field_error(errors, "tfa_disable_code"))
                    button.secondary.outline type="submit" { "Turn two-factor off" }
                }
            } @else if !has_password {
                p.muted { "Two-factor protects password sign-in; this account signs in with GitHub, which does its own." }
            } @else {
                p data-testid="2fa-status" {
                    "Off. With it on, signing in needs your password and a code from an authenticator app "
                    "(any TOTP app: FreeOTP, Aegis, Google Authenticator, 1Password…)."
                }
                @if st.pending {
                    p { a href="/account/2fa" { "Continue setting it up →" } }
                }
                form method="post" action="/account/2fa/start" {
                    (csrf_field(&v.csrf))
                    button type="submit" { (if st.pending { "Start again" } else { "Set up two-factor" }) }
                }
            }
        }
    }
}

/// The enrolment page: the QR code, the secret as text, a code to confirm.
pub async fn enrol_page(State(state): State<AppState>, v: Viewer) -> Result<Response, PageError> {
    enrol(&state, &v, StatusCode::OK, &FormErrors::default()).await
}

async fn enrol(
    state: &AppState,
    v: &Viewer,
    status: StatusCode,
    errors: &FormErrors,
) -> Result<Response, PageError> {
    let Some(e) = ops::pending(state, &v.who).await? else {
        return Ok(layout::see_other("/account"));
    };
    let body = html! {
        div.page-head { h1 { "Set up two-factor authentication" } }
        article {
            ol {
                li { "Scan this QR code with your authenticator app." }
                li { "Or type the key by hand: " code data-testid="totp-secret" { (e.secret.as_str()) } " (time-based, 6 digits, 30 s)." }
                li { "Enter the code the app shows now." }
            }
            img.qr src=(e.qr_data_url) alt="QR code of the two-factor key" width="240" height="240";
            form method="post" action="/account/2fa/confirm" {
                (csrf_field(&v.csrf))
                label { "Code"
                    input name="code" inputmode="numeric" autocomplete="one-time-code" required autofocus
                        aria-invalid=[invalid(errors, "code")];
                }
                (field_error(errors, "code"))
                button type="submit" { "Turn two-factor on" }
            }
            p { a href="/account" { "Not now" } }
        }
    };
    Ok((status, no_store(), page(v, "Two-factor", Nav::Account, body)).into_response())
}

/// The recovery codes, shown once.
fn codes_page(v: &Viewer, codes: &[Zeroizing<String>], first: bool) -> Response {
    let body = html! {
        div.page-head { h1 { (if first { "Two-factor authentication is on" } else { "New recovery codes" }) } }
        article {
            p.notice.warn role="status" {
                strong { "Store these recovery codes now." }
                " Each signs you in once when you do not have your phone. They are not shown again."
            }
            ul.recovery-codes data-testid="recovery-codes" {
                @for c in codes { li { code { (c.as_str()) } } }
            }
            p { a href="/account" role="button" { "I have stored them" } }
        }
    };
    (no_store(), page(v, "Recovery codes", Nav::Account, body)).into_response()
}

pub async fn start(State(state): State<AppState>, v: Viewer) -> Result<Response, PageError> {
    match ops::start(&state, &v.who).await {
        Ok(()) => Ok(layout::see_other("/account/2fa")),
        Err(e @ UserError::TwoFactorState(_)) => {
            render_account(
                &state,
                &v,
                StatusCode::CONFLICT,
                &FormErrors::one("tfa", e.to_string()),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// The code is wiped from memory when the form is dropped.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
pub struct CodeForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    password: String,
}

pub async fn confirm(
    State(state): State<AppState>,
    v: Viewer,
    Form(form): Form<CodeForm>,
) -> Result<Response, PageError> {
    match ops::confirm(&state, &v.who, &form.code).await {
        Ok(codes) => Ok(codes_page(&v, &codes, true)),
        Err(e @ UserError::WrongCode) => {
            enrol(
                &state,
                &v,
                StatusCode::UNPROCESSABLE_ENTITY,
                &FormErrors::one("code", e.to_string()),
            )
            .await
        }
        Err(e @ UserError::RateLimited { retry_after_secs }) => {
            let r = enrol(
                &state,
                &v,
                StatusCode::OK,
                &FormErrors::one("code", e.to_string()),
            )
            .await?;
            Ok(layout::too_many_requests(r, retry_after_secs))
        }
        Err(e @ UserError::TwoFactorState(_)) => {
            render_account(
                &state,
                &v,
                StatusCode::CONFLICT,
                &FormErrors::one("tfa", e.to_string()),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// Answer a failed account-page form: the account page again with the error by its field.
async fn account_error(
    state: &AppState,
    v: &Viewer,
    e: UserError,
    code_field: &'static str,
) -> Result<Response, PageError> {
    let (status, field) = match &e {
        UserError::WrongCode => (StatusCode::UNPROCESSABLE_ENTITY, code_field),
        UserError::WrongPassword => (StatusCode::UNPROCESSABLE_ENTITY, "tfa_password"),
        UserError::TwoFactorState(_) | UserError::NoPassword => (StatusCode::CONFLICT, "tfa"),
        UserError::RateLimited { .. } | UserError::Busy => (StatusCode::TOO_MANY_REQUESTS, "tfa"),
        _ => return Err(PageError(WebError::from(e))),
    };
    let r = render_account(state, v, status, &FormErrors::one(field, e.to_string()), None).await?;
    Ok(match e {
        UserError::RateLimited { retry_after_secs } => layout::too_many_requests(r, retry_after_secs),
        _ => r,
    })
}

pub async fn regenerate(
    State(state): State<AppState>,
    v: Viewer,
    Form(form): Form<CodeForm>,
) -> Result<Response, PageError> {
    match ops::regenerate(&state, &v.who, &form.code).await {
        Ok(codes) => Ok(codes_page(&v, &codes, false)),
        Err(e) => account_error(&state, &v, e, "tfa_code").await,
    }
}

pub async fn disable(
    State(state): State<AppState>,
    v: Viewer,
    client: ClientAddr,
    Form(form): Form<CodeForm>,
) -> Result<Response, PageError> {
    let ip = client.to_string();
    let password = Zeroizing::new(form.password.clone());
    match ops::disable(&state, &v.who, &ip, password, &form.code).await {
        Ok(()) => Ok(layout::see_other("/account?done=2fa-off")),
        Err(e) => account_error(&state, &v, e, "tfa_disable_code").await,
    }
}

/// An admin resets someone's two-factor (a lost phone), from the Users page.
pub async fn admin_reset(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    ops::reset(&state, &v.who, id).await?;
    Ok(layout::see_other("/users?done=2fa-reset"))
}
