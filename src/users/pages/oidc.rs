//! OpenID Connect sign-in pages: `GET /auth/oidc/{name}` sends the browser to the provider,
//! `GET /auth/oidc/{name}/callback` brings it back. The pending sign-in (state → nonce, PKCE
//! verifier, provider, where to go next) is kept server-side, bound to a flow cookie, and taken
//! by the first callback: a replayed state or code fails. Verification is in
//! [`crate::users::oidc::client`], the account rules in [`crate::users::oidc::ops`].

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use openidconnect::{Nonce, PkceCodeVerifier};
use serde::Deserialize;

use super::github::{http, refused};
use super::safe_next;
use crate::app::AppState;
use crate::config::OidcProvider;
use crate::db::now_ms;
use crate::users::oidc::client::{self, Failure};
use crate::users::oidc::ops::{self, Outcome};
use crate::web::error::WebError;
use crate::web::layout::{self, PageError, bare_page, no_store};
use crate::web::request::ClientAddr;
use crate::web::session;

const FLOW_COOKIE: &str = "stagely_oidc";

pub struct Pending {
    provider: String,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    next: String,
}

/// OpenID Connect sign-ins between the redirect to the provider and the callback.
pub type PendingLogins = crate::users::pending::PendingLogins<Pending>;

fn provider<'a>(state: &'a AppState, name: &str) -> Result<&'a OidcProvider, PageError> {
    state
        .config
        .oidc
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| WebError::NotFound("page").into())
}

fn redirect_uri(state: &AppState, name: &str) -> String {
    format!("{}/auth/oidc/{name}/callback", state.config.public_url)
}

/// The provider could not be reached: say so, and that other ways in still work.
fn unavailable(p: &OidcProvider, error: &Failure) -> Response {
    tracing::warn!(provider = %p.name, error = %error, "OIDC provider unavailable");
    let title = format!("{} is not answering", p.label());
    let body = bare_page(
        &title,
        html! {
            article.error-page {
                p.status-code { "503" }
                h1 { (title) }
                p { "Stagely cannot reach " (p.label()) " right now. Try again in a moment, or sign in another way." }
                p { a href="/login" role="button" { "Back to sign-in" } }
            }
        },
    );
    (StatusCode::SERVICE_UNAVAILABLE, no_store(), body).into_response()
}

#[derive(Deserialize)]
pub struct StartQuery {
    next: Option<String>,
}

/// `GET /auth/oidc/{name}`: off to the provider (its discovery fetched now if not cached).
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<StartQuery>,
) -> Result<Response, PageError> {
    let p = provider(&state, &name)?;
    let http = http()?;
    let now = now_ms();
    let meta = match state.auth.oidc_discovery.metadata(p, &http, now).await {
        Ok(meta) => meta,
        Err(e) => return Ok(unavailable(p, &e)),
    };
    let started = match client::start(p, &meta, &redirect_uri(&state, &p.name)) {
        Ok(s) => s,
        Err(e) => return Ok(unavailable(p, &e)),
    };
    state.auth.oidc.insert(
        started.state.clone(),
        now,
        Pending {
            provider: p.name.clone(),
            nonce: started.nonce,
            verifier: started.verifier,
            next: safe_next(q.next.as_deref()),
        },
    );
    let mut response = layout::see_other(&started.url);
    response.headers_mut().append(
        header::SET_COOKIE,
        session::set_flow_cookie(&state.config, FLOW_COOKIE, &started.state),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /auth/oidc/{name}/callback`: the provider sends the browser back here with a code.
pub async fn callback(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, PageError> {
    let p = provider(&state, &name)?;
    let mut response = finish(&state, p, client, &headers, q).await?;
    response.headers_mut().append(
        header::SET_COOKIE,
        session::clear_flow_cookie(&state.config, FLOW_COOKIE),
    );
    Ok(response)
}

async fn finish(
    state: &AppState,
    p: &OidcProvider,
    client: ClientAddr,
    headers: &HeaderMap,
    q: CallbackQuery,
) -> Result<Response, PageError> {
    let label = p.label();
    if let Some(error) = q.error {
        tracing::info!(provider = %p.name, error = %error, "OIDC sign-in was cancelled or refused at the provider");
        return Ok(refused(
            &format!("{label} sign-in did not complete"),
            format!("{label} did not authorise the sign-in. Try again, or sign in another way."),
        ));
    }
    let (Some(code), Some(oauth_state)) = (q.code, q.state) else {
        return Err(WebError::invalid("code", "missing from the callback").into());
    };
    // The state must be the one this browser was given (login CSRF), still pending, and for
    // this provider. Taking it consumes it: a replayed callback finds nothing.
    let cookie_ok = session::read_cookie(headers, FLOW_COOKIE)
        .is_some_and(|c| crate::crypto::ct_eq(c.as_bytes(), oauth_state.as_bytes()));
    let pending = state.auth.oidc.take(&oauth_state, now_ms());
    let Some(pending) = pending.filter(|pe| cookie_ok && pe.provider == p.name) else {
        return Ok(refused(
            &format!("{label} sign-in expired"),
            "This sign-in attempt is unknown, was already used or is older than 10 minutes. Start again \
             from the sign-in page."
                .into(),
        ));
    };
    let http = http()?;
    let redirect = redirect_uri(state, &p.name);
    let discovery = &state.auth.oidc_discovery;
    let verified = client::finish(
        discovery,
        p,
        &redirect,
        code,
        pending.verifier,
        &pending.nonce,
        &http,
    )
    .await;
    let claims = match verified {
        Ok(claims) => claims,
        Err(e @ Failure::Unavailable(_)) => return Ok(unavailable(p, &e)),
        Err(Failure::Rejected(why)) => {
            tracing::warn!(provider = %p.name, %client, error = %why, "OIDC sign-in rejected");
            return Ok(refused(
                &format!("{label} sign-in could not be verified"),
                format!(
                    "The answer from {label} did not pass Stagely's checks. Start again from the sign-in page."
                ),
            ));
        }
    };
    match ops::sign_in(state, p, claims, &client.to_string()).await? {
        Outcome::SignedIn(user) => {
            let via = format!("oidc:{}", p.name);
            let from = client.to_string();
            let cookie = crate::users::ops::start_session_via(
                state,
                user.id,
                &user.username,
                "user.sign_in",
                &from,
                Some(&via),
            )
            .await?;
            let mut response = layout::see_other(&safe_next(Some(&pending.next)));
            response
                .headers_mut()
                .append(header::SET_COOKIE, session::set_cookie(&state.config, &cookie));
            Ok(response)
        }
        Outcome::NotAllowed { .. } => Ok(refused(
            "Not allowed to sign in",
            format!("Your account at {label} is not allowed here: ask an admin."),
        )),
        Outcome::Disabled => Ok(refused(
            "Account disabled",
            "Your Stagely account is disabled. Ask an admin.".into(),
        )),
    }
}
