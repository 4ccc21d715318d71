//! The second sign-in step (`/login/2fa`): after a correct password on an account with
//! two-factor on, no session yet: a short-lived challenge (server-side, bound to its own cookie,
//! at most [`MAX_WRONG_PER_CHALLENGE`] wrong codes) waits for a TOTP code or a recovery code.
//! Only then is the session created.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{sign_in_form, start_session};
use crate::app::AppState;
use crate::db::now_ms;
use crate::users::UserError;
use crate::users::two_factor::{Challenge, MAX_WRONG_PER_CHALLENGE, ops, store};
use crate::web::layout::{self, PageError, bare_page, no_store};
use crate::web::request::ClientAddr;
use crate::web::session;

const COOKIE_PLAIN: &str = "stagely_2fa";
const COOKIE_SECURE: &str = "__Host-stagely_2fa";

fn cookie_name(state: &AppState) -> &'static str {
    if state.config.is_https() {
        COOKIE_SECURE
    } else {
        COOKIE_PLAIN
    }
}

fn ttl_ms(state: &AppState) -> i64 {
    i64::try_from(
        state
            .config
            .auth
            .second_factor_challenge_secs
            .saturating_mul(1000),
    )
    .unwrap_or(i64::MAX)
}

/// A correct password (and an enabled account): a session at once, or, with two-factor on,
/// the second step. Called by the sign-in form and a used password-reset link.
pub async fn password_passed(
    state: &AppState,
    client: ClientAddr,
    user_id: i64,
    username: &str,
    next: &str,
) -> Result<Response, PageError> {
    if !state.db.read(move |c| store::is_enabled(c, user_id)).await? {
        return start_session(state, client, user_id, username, "user.sign_in", next).await;
    }
    let challenge = Challenge {
        user_id,
        username: username.to_owned(),
        next: super::safe_next(Some(next)),
        created: now_ms(),
        attempts: 0,
    };
    let cookie = state.auth.challenges.open(challenge, ttl_ms(state));
    let mut r = layout::see_other("/login/2fa");
    r.headers_mut().append(
        header::SET_COOKIE,
        session::set_flow_cookie(&state.config, cookie_name(state), &cookie),
    );
    Ok(r)
}

fn code_form(error: Option<&str>) -> Markup {
    bare_page(
        "Two-factor authentication",
        html! {
            article {
                header { h2 { "Two-factor authentication" } }
                @if let Some(e) = error { p.notice.error role="alert" { (e) } }
                form method="post" action="/login/2fa" {
                    label { "The code from your authenticator app, or a recovery code"
                        input name="code" autocomplete="one-time-code" required autofocus;
                    }
                    button type="submit" { "Sign in" }
                }
                p { a href="/login" { "Start over" } }
            }
        },
    )
}

/// Back to the password: the challenge is unknown, expired or void.
fn start_over(state: &AppState, status: StatusCode, msg: &str) -> Response {
    let mut r = (status, no_store(), sign_in_form(state, "/", Some(msg), "")).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        session::clear_flow_cookie(&state.config, cookie_name(state)),
    );
    r
}

const EXPIRED: &str = "Your sign-in timed out. Enter your password again.";

pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let live = session::read_cookie(&headers, cookie_name(&state))
        .and_then(|c| state.auth.challenges.peek(c, now_ms(), ttl_ms(&state)));
    match live {
        Some(_) => (no_store(), code_form(None)).into_response(),
        None => layout::see_other("/login"),
    }
}

/// The code is wiped from memory when the form is dropped.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
pub struct SecondStepForm {
    #[serde(default)]
    code: String,
}

pub async fn submit(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<SecondStepForm>,
) -> Result<Response, PageError> {
    let Some(cookie) = session::read_cookie(&headers, cookie_name(&state)).map(str::to_owned) else {
        return Ok(start_over(&state, StatusCode::UNAUTHORIZED, EXPIRED));
    };
    let Some(c) = state.auth.challenges.attempt(&cookie, now_ms(), ttl_ms(&state)) else {
        return Ok(start_over(&state, StatusCode::UNAUTHORIZED, EXPIRED));
    };
    let actor = format!("user:{}", c.username);
    match ops::verify(&state, c.user_id, &actor, &form.code, true).await {
        Ok(_) => {
            state.auth.challenges.close(&cookie);
            let mut r =
                start_session(&state, client, c.user_id, &c.username, "user.sign_in", &c.next).await?;
            r.headers_mut().append(
                header::SET_COOKIE,
                session::clear_flow_cookie(&state.config, cookie_name(&state)),
            );
            Ok(r)
        }
        Err(UserError::WrongCode) => {
            tracing::info!(ip = %client, "wrong two-factor code at sign-in");
            ops::wrong_code(&state, &c, &client.to_string()).await?;
            if c.attempts >= MAX_WRONG_PER_CHALLENGE {
                state.auth.challenges.close(&cookie);
                let msg = "Too many wrong codes. Enter your password again.";
                return Ok(start_over(&state, StatusCode::UNAUTHORIZED, msg));
            }
            let msg = "Wrong code, or a code used already. Try the next one your app shows.";
            Ok((StatusCode::UNAUTHORIZED, no_store(), code_form(Some(msg))).into_response())
        }
        Err(UserError::RateLimited { retry_after_secs }) => {
            let msg = format!("Too many wrong codes for this account. Try again in {retry_after_secs} s.");
            let r = (no_store(), code_form(Some(&msg))).into_response();
            Ok(layout::too_many_requests(r, retry_after_secs))
        }
        // Two-factor was reset or turned off meanwhile: start over with the password.
        Err(UserError::TwoFactorState(_)) => {
            state.auth.challenges.close(&cookie);
            Ok(start_over(&state, StatusCode::UNAUTHORIZED, EXPIRED))
        }
        Err(e) => Err(e.into()),
    }
}
