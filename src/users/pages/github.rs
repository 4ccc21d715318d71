//! GitHub (or GitHub Enterprise) sign-in with the oauth2 crate: authorization code + PKCE.
//!
//! Only logins or numeric user ids in `github.allowed_logins`, or members of `github.allowed_orgs`
//! (by organisation login or numeric id), get in; anyone else is refused with a page that says
//! why, however valid their GitHub account. Accounts are matched by GitHub's numeric user id
//! ([`ops::github_sign_in`]), never by the login alone. A first sign-in creates an account with
//! `github.default_role`; a signed-in user can instead link their GitHub identity to their
//! existing account (Account page).

use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use serde::Deserialize;

use super::{safe_next, start_session};
use crate::app::AppState;
use crate::db::now_ms;
use crate::users::ops::GithubIdentity;
use crate::users::{Principal, UserError, ops};
use crate::web::error::WebError;
use crate::web::layout::{self, PageError, bare_page, no_store};
use crate::web::request::ClientAddr;
use crate::web::session;

const FLOW_COOKIE: &str = "stagely_oauth";

type GithubClient = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

pub struct Pending {
    verifier: PkceCodeVerifier,
    /// Linking to this signed-in user rather than signing in.
    link_user: Option<i64>,
    next: String,
}

/// GitHub sign-ins between the redirect to GitHub and the callback, keyed by OAuth `state`.
pub type PendingLogins = crate::users::pending::PendingLogins<Pending>;

fn client(state: &AppState) -> Result<GithubClient, WebError> {
    let gh = &state.config.github;
    let bad = |what: &str| WebError::Internal(format!("github.{what} is not a valid URL"));
    Ok(BasicClient::new(ClientId::new(gh.client_id.clone()))
        .set_client_secret(ClientSecret::new(gh.client_secret.expose().to_owned()))
        .set_auth_uri(AuthUrl::new(gh.auth_url.to_string()).map_err(|_| bad("auth_url"))?)
        .set_token_uri(TokenUrl::new(gh.token_url.to_string()).map_err(|_| bad("token_url"))?)
        .set_redirect_uri(
            RedirectUrl::new(format!("{}/auth/github/callback", state.config.public_url))
                .map_err(|_| bad("public_url"))?,
        )
        // GitHub takes the client credentials in the form body.
        .set_auth_type(AuthType::RequestBody))
}

pub(super) fn http() -> Result<reqwest::Client, WebError> {
    reqwest::Client::builder()
        // A provider's endpoints must not redirect us elsewhere (SSRF); GitHub never does.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("stagely/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| WebError::Internal(format!("cannot build the HTTP client: {e}")))
}

fn redirect_to_github(state: &AppState, link_user: Option<i64>, next: String) -> Result<Response, PageError> {
    if !state.config.github.enabled() {
        return Err(WebError::NotFound("page").into());
    }
    let client = client(state)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read:user".into()))
        .set_pkce_challenge(challenge);
    if !state.config.github.allowed_orgs.is_empty() {
        request = request.add_scope(Scope::new("read:org".into()));
    }
    let (url, csrf) = request.url();
    state.auth.github.insert(
        csrf.secret().clone(),
        now_ms(),
        Pending {
            verifier,
            link_user,
            next,
        },
    );
    let mut response = layout::see_other(url.as_str());
    response.headers_mut().append(
        header::SET_COOKIE,
        session::set_flow_cookie(&state.config, FLOW_COOKIE, csrf.secret()),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct StartQuery {
    next: Option<String>,
}

/// `GET /auth/github`: off to GitHub.
pub async fn start(
    State(state): State<AppState>,
    Query(q): Query<StartQuery>,
) -> Result<Response, PageError> {
    redirect_to_github(&state, None, safe_next(q.next.as_deref()))
}

/// `POST /account/github`: link GitHub to the signed-in user.
pub async fn start_link(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, PageError> {
    let Some(user_id) = who.user_id else {
        return Err(WebError::invalid("user", "API tokens cannot link a GitHub account").into());
    };
    redirect_to_github(&state, Some(user_id), "/account".into())
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

pub(super) fn refused(title: &str, text: String) -> Response {
    let body = bare_page(
        title,
        html! {
            article.error-page {
                p.status-code { "403" }
                h1 { (title) }
                p { (text) }
                p { a href="/login" role="button" { "Back to sign-in" } }
            }
        },
    );
    (StatusCode::FORBIDDEN, no_store(), body).into_response()
}

/// `GET /auth/github/callback`: GitHub sends the browser back here with a code.
pub async fn callback(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, PageError> {
    if !state.config.github.enabled() {
        return Err(WebError::NotFound("page").into());
    }
    if let Some(error) = q.error {
        tracing::info!(error = %error, "GitHub sign-in was cancelled or refused at GitHub");
        return Ok(refused(
            "GitHub sign-in did not complete",
            "GitHub did not authorise the sign-in. Try again, or sign in with a password.".into(),
        ));
    }
    let (Some(code), Some(oauth_state)) = (q.code, q.state) else {
        return Err(WebError::invalid("code", "missing from the callback").into());
    };
    // The state must be the one this browser was given (login CSRF), and still pending.
    let cookie_ok = session::read_cookie(&headers, FLOW_COOKIE)
        .is_some_and(|c| crate::crypto::ct_eq(c.as_bytes(), oauth_state.as_bytes()));
    let pending = state.auth.github.take(&oauth_state, now_ms());
    let Some(pending) = pending.filter(|_| cookie_ok) else {
        return Ok(refused(
            "GitHub sign-in expired",
            "This sign-in attempt is unknown or older than 10 minutes. Start again from the sign-in page."
                .into(),
        ));
    };
    let identity = identify(&state, code, pending.verifier).await?;
    let mut response = match pending.link_user {
        Some(user_id) => link(&state, &headers, user_id, &identity.user).await?,
        None => sign_in(&state, client, &identity, &pending.next).await?,
    };
    response.headers_mut().append(
        header::SET_COOKIE,
        session::clear_flow_cookie(&state.config, FLOW_COOKIE),
    );
    Ok(response)
}

struct Identity {
    user: GithubIdentity,
    /// Organisation logins (lowercased) and numeric ids (as text).
    orgs: Vec<String>,
}

#[derive(Deserialize)]
struct GithubUser {
    login: String,
    id: i64,
}

#[derive(Deserialize)]
struct GithubOrg {
    login: String,
    #[serde(default)]
    id: Option<i64>,
}

/// Exchange the code for a token and ask the API who this is (and their organisations).
async fn identify(state: &AppState, code: String, verifier: PkceCodeVerifier) -> Result<Identity, WebError> {
    let http = http()?;
    let token = client(state)?
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "GitHub token exchange failed");
            WebError::Unavailable("GitHub did not accept the sign-in code; try again".into())
        })?;
    let api = &state.config.github.api_url;
    let get = |path: &str| {
        http.get(format!("{api}{path}"))
            .bearer_auth(token.access_token().secret())
            .header(header::ACCEPT, "application/vnd.github+json")
    };
    let unavailable = |e: reqwest::Error| {
        tracing::warn!(error = %e, "GitHub API call failed");
        WebError::Unavailable("cannot reach the GitHub API; try again".into())
    };
    let user: GithubUser = get("/user")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(unavailable)?
        .json()
        .await
        .map_err(unavailable)?;
    let orgs = if state.config.github.allowed_orgs.is_empty() {
        Vec::new()
    } else {
        let orgs: Vec<GithubOrg> = get("/user/orgs?per_page=100")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        orgs.into_iter()
            .flat_map(|o| {
                let id = o.id.map(|id| id.to_string());
                std::iter::once(o.login.to_ascii_lowercase()).chain(id)
            })
            .collect()
    };
    Ok(Identity {
        user: GithubIdentity {
            id: user.id,
            login: user.login.to_ascii_lowercase(),
        },
        orgs,
    })
}

/// True when config lets this GitHub identity sign in. An all-digit entry of an allow list is a
/// numeric id and matches only the id (a login of digits is listed by its id), so an entry by id
/// survives a rename and cannot be taken over by whoever registers the login next.
fn allowed(state: &AppState, id: &Identity) -> bool {
    let gh = &state.config.github;
    let numeric = |e: &String| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit());
    let user_id = id.user.id.to_string();
    let by_user = gh.allowed_logins.iter().any(|e| {
        if numeric(e) {
            *e == user_id
        } else {
            *e == id.user.login
        }
    });
    // Organisation ids only match numeric entries; logins only the others.
    let by_org = id
        .orgs
        .iter()
        .any(|o| gh.allowed_orgs.iter().any(|e| numeric(e) == numeric(o) && e == o));
    by_user || by_org
}

async fn sign_in(
    state: &AppState,
    client: ClientAddr,
    id: &Identity,
    next: &str,
) -> Result<Response, PageError> {
    let login = &id.user.login;
    if !allowed(state, id) {
        tracing::warn!(%login, github_id = id.user.id, "GitHub login not on the allow list: refused");
        return Ok(refused(
            "Not allowed to sign in",
            format!(
                "The GitHub account @{} is not allowed to sign in to this Stagely. An admin can add the \
                 login or its numeric id (github.allowed_logins) or one of its organisations \
                 (github.allowed_orgs).",
                login
            ),
        ));
    }
    // Typed at load: an unknown `github.default_role` stops the start.
    let default_role = state.config.github.default_role;
    match ops::github_sign_in(state, &id.user, default_role, &client.to_string()).await {
        Ok(user) => {
            start_session(
                state,
                client,
                user.id,
                &user.username,
                "user.sign_in_github",
                next,
            )
            .await
        }
        Err(UserError::GithubIdMismatch { login }) => Ok(refused(
            "This GitHub login belongs to someone else now",
            format!(
                "The Stagely account linked to @{login} was linked to a different GitHub account (GitHub \
                 matches people by their numeric id, and this is not the same one: the login may have been \
                 renamed and registered again). The attempt was recorded. If this is your account, ask an \
                 admin to relink it."
            ),
        )),
        Err(UserError::Disabled) => Ok(refused(
            "Account disabled",
            "Your Stagely account is disabled. Ask an admin.".into(),
        )),
        Err(UserError::UsernameTaken(name)) => Ok(refused(
            "Link your account first",
            format!(
                "A Stagely user named {name:?} already exists. Sign in with its password and link GitHub \
                 from the Account page."
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn link(
    state: &AppState,
    headers: &HeaderMap,
    user_id: i64,
    identity: &GithubIdentity,
) -> Result<Response, PageError> {
    // Only the very session that started linking may finish it.
    let current = session::resolve(state, headers).await?;
    let Some((who, _)) = current.filter(|(p, _)| p.user_id == Some(user_id)) else {
        return Err(WebError::Unauthorized.into());
    };
    let result = ops::link_own_github(state, &who, identity).await;
    match result {
        Ok(()) => Ok(layout::see_other("/account?done=github-linked")),
        Err(e @ UserError::GithubTaken(_)) => Ok(refused("Cannot link", e.to_string())),
        Err(e) => Err(e.into()),
    }
}
