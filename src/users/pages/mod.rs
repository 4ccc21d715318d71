//! The users domain's HTTP pages (its one JSON route is in [`super::api`]). This file: signing in
//! and out (the sign-in page for local accounts), the one-time first-admin setup link, accepting an
//! invitation, using a password-reset link. [`account`]: the signed-in user's account and API tokens; [`github`]: GitHub
//! sign-in and linking; [`people`]: the admin's Users page. Every rule and write is a
//! [`super::ops`] call; these handlers translate forms to calls and results to pages.

pub mod account;
pub mod github;
pub mod oidc;
pub mod people;
pub mod second_step;
pub mod two_factor;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::store::LinkKind;
use super::{Role, UserError, ops};
use crate::app::AppState;
use crate::db::now_ms;
use crate::web::error::WebError;
use crate::web::layout::{
    self, FormErrors, PageError, bare_page, field_error, form_banner, invalid, no_store,
};
use crate::web::request::ClientAddr;
use crate::web::session::{self, Session};

/// Only local paths: an attacker's link must not turn sign-in into an open redirect.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(char::is_control)
                && !n.starts_with("/login") =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The sign-in page body (also what the choke point shows, with 401, to someone not signed in).
pub fn sign_in_form(state: &AppState, next: &str, error: Option<&str>, username: &str) -> Markup {
    sign_in_form_with(state, next, error, username, false)
}

/// The hint on a fresh install (no user at all): where the setup link is.
pub const NO_ADMIN_HINT: &str = "No admin yet: the one-time setup link is in the appliance's log.";

/// True while no user exists (a fresh install before its setup link is used).
pub async fn no_user_yet(state: &AppState) -> Result<bool, PageError> {
    Ok(state.db.read(crate::users::store::count).await? == 0)
}

/// The sign-in form; `no_user` adds [`NO_ADMIN_HINT`].
pub fn sign_in_form_with(
    state: &AppState,
    next: &str,
    error: Option<&str>,
    username: &str,
    no_user: bool,
) -> Markup {
    let next = safe_next(Some(next));
    bare_page(
        "Sign in",
        html! {
            article {
                header { h2 { "Sign in to Stagely" } }
                @if let Some(e) = error { p.notice.error role="alert" { (e) } }
                @if no_user { p.notice.warn role="status" data-testid="no-admin" { (NO_ADMIN_HINT) } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label { "Username"
                        input name="username" value=(username) autocomplete="username" required autofocus;
                    }
                    label { "Password"
                        input type="password" name="password" autocomplete="current-password" required;
                    }
                    button type="submit" { "Sign in" }
                }
                @if state.config.github.enabled() || !state.config.oidc.is_empty() {
                    hr;
                }
                @if state.config.github.enabled() {
                    a.secondary.outline.full role="button" href=(format!("/auth/github?next={}", urlencode(&next))) {
                        "Sign in with GitHub"
                    }
                }
                @for p in &state.config.oidc {
                    a.secondary.outline.full role="button" data-testid=(format!("oidc-{}", p.name))
                        href=(format!("/auth/oidc/{}?next={}", p.name, urlencode(&next))) {
                        "Sign in with " (p.label())
                    }
                }
            }
        },
    )
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_page(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<NextQuery>,
) -> Result<Response, PageError> {
    let next = safe_next(q.next.as_deref());
    // Already signed in: nothing to do here.
    if session::resolve(&state, &headers).await?.is_some() {
        return Ok(layout::see_other(&next));
    }
    let no_user = no_user_yet(&state).await?;
    Ok((no_store(), sign_in_form_with(&state, &next, None, "", no_user)).into_response())
}

impl From<UserError> for WebError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::NotFound => WebError::NotFound("user"),
            UserError::TokenNotFound => WebError::NotFound("token"),
            UserError::InviteNotFound => WebError::NotFound("invitation"),
            UserError::Invalid { field, message } => WebError::invalid(field, message),
            e @ (UserError::UsernameTaken(_) | UserError::GithubTaken(_)) => WebError::Conflict {
                code: "name_taken",
                message: e.to_string(),
            },
            e @ UserError::GithubIdMismatch { .. } => WebError::ForbiddenBecause(e.to_string()),
            e @ UserError::LastAdmin => WebError::Conflict {
                code: "last_admin",
                message: e.to_string(),
            },
            e @ UserError::LinkInvalid => WebError::Conflict {
                code: "link_invalid",
                message: e.to_string(),
            },
            UserError::SignInRefused | UserError::Disabled => WebError::Unauthorized,
            UserError::WrongPassword => {
                WebError::invalid("current_password", UserError::WrongPassword.to_string())
            }
            e @ UserError::NoPassword => WebError::Conflict {
                code: "no_password",
                message: e.to_string(),
            },
            UserError::RateLimited { retry_after_secs } => WebError::TooMany { retry_after_secs },
            UserError::Busy => WebError::TooMany {
                retry_after_secs: BUSY_RETRY_SECS,
            },
            UserError::RoleTooHigh => WebError::Forbidden,
            e @ UserError::TokenCannotMint => WebError::ForbiddenBecause(e.to_string()),
            UserError::WrongCode => WebError::invalid("code", UserError::WrongCode.to_string()),
            UserError::TwoFactorState(m) => WebError::Conflict {
                code: "two_factor",
                message: m.to_owned(),
            },
            UserError::Internal(e) => WebError::Internal(e),
            UserError::Db(e) => e.into(),
        }
    }
}

/// The password is wiped from memory when the form is dropped.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
pub struct LoginForm {
    #[serde(default)]
    #[zeroize(skip)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    #[zeroize(skip)]
    next: Option<String>,
}

/// What a client refused because every password thread is busy is told to wait.
const BUSY_RETRY_SECS: u64 = 1;

/// The sign-in form again with a 429 and `Retry-After`.
fn too_many(state: &AppState, next: &str, username: &str, msg: &str, retry_after_secs: u64) -> Response {
    let body = sign_in_form(state, next, Some(msg), username);
    layout::too_many_requests((no_store(), body).into_response(), retry_after_secs)
}

pub async fn login_submit(
    State(state): State<AppState>,
    client: ClientAddr,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let username = form.username.trim().to_owned();
    let next = safe_next(form.next.as_deref());
    let ip = client.to_string();
    let checked = ops::check_sign_in(&state, &ip, &username, Zeroizing::new(form.password.clone())).await;
    let user = match checked {
        Ok(user) => user,
        Err(UserError::RateLimited { retry_after_secs }) => {
            let wait = if retry_after_secs < 60 {
                format!("{retry_after_secs} second(s)")
            } else {
                format!("{} minute(s)", retry_after_secs.div_ceil(60))
            };
            let msg = format!("Too many failed sign-in attempts. Try again in {wait}.");
            return Ok(too_many(&state, &next, &username, &msg, retry_after_secs));
        }
        Err(UserError::Busy) => {
            let msg = "Too many sign-ins at once. Try again in a moment.";
            return Ok(too_many(&state, &next, &username, msg, BUSY_RETRY_SECS));
        }
        Err(e @ UserError::SignInRefused) => {
            let body = sign_in_form(&state, &next, Some(&e.to_string()), &username);
            return Ok((StatusCode::UNAUTHORIZED, no_store(), body).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    // A correct password: the session, or the second step when two-factor is on (decided only
    // now, so a wrong password is answered the same either way).
    second_step::password_passed(&state, client, user.id, &user.username, &next).await
}

/// Create a session for a user and answer with its cookie and a redirect to `next`.
pub async fn start_session(
    state: &AppState,
    client: ClientAddr,
    user_id: i64,
    username: &str,
    action: &'static str,
    next: &str,
) -> Result<Response, PageError> {
    let cookie = ops::start_session(state, user_id, username, action, &client.to_string()).await?;
    let mut response = layout::see_other(&safe_next(Some(next)));
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::set_cookie(&state.config, &cookie));
    Ok(response)
}

pub async fn logout(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> Result<Response, PageError> {
    if let Some(s) = req.extensions().get::<Session>().cloned() {
        ops::end_session(&state, s.id_hash.clone(), s.user_id, &s.username).await?;
    }
    let mut response = layout::see_other("/login");
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::clear_cookie(&state.config));
    Ok(response)
}

// --- first admin and invitations -----------------------------------------------------------------

#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    token: String,
}

fn link_invalid_page(kind: LinkKind) -> Response {
    let what = match kind {
        LinkKind::Setup => "setup link",
        LinkKind::Invite => "invitation link",
    };
    let hint = match kind {
        LinkKind::Setup => {
            "Setup links work once and for one hour. Restart Stagely while it has no users to print a new one to its log."
        }
        LinkKind::Invite => "Ask an admin for a new invitation.",
    };
    let body = bare_page(
        "Link not valid",
        html! {
            article.error-page {
                h1 { "This " (what) " is not valid" }
                p { "It was used already, has expired, or was never issued." }
                p.muted { (hint) }
                p { a href="/login" role="button" { "Go to sign-in" } }
            }
        },
    );
    (StatusCode::NOT_FOUND, no_store(), body).into_response()
}

fn new_account_form(kind: LinkKind, token: &str, role: Role, errors: &FormErrors, username: &str) -> Markup {
    let (title, action, intro) = match kind {
        LinkKind::Setup => (
            "Create the first admin",
            "/setup",
            "This one-time link creates Stagely's first administrator. It stops working once used.",
        ),
        LinkKind::Invite => (
            "Accept your invitation",
            "/invite",
            "Choose a username and password for your Stagely account.",
        ),
    };
    bare_page(
        title,
        html! {
            article {
                header {
                    h2 { (title) }
                    p.muted { (intro) " Role: " strong { (role.as_str()) } "." }
                }
                (form_banner(errors))
                form method="post" action=(action) {
                    input type="hidden" name="token" value=(token);
                    label { "Username"
                        input name="username" value=(username) autocomplete="username" required
                            pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,38}" aria-invalid=[invalid(errors, "username")];
                    }
                    (field_error(errors, "username"))
                    label { "Password"
                        input type="password" name="password" autocomplete="new-password" required
                            minlength=(super::MIN_PASSWORD_CHARS) aria-invalid=[invalid(errors, "password")];
                    }
                    (field_error(errors, "password"))
                    label { "Repeat the password"
                        input type="password" name="confirm" autocomplete="new-password" required
                            aria-invalid=[invalid(errors, "confirm")];
                    }
                    (field_error(errors, "confirm"))
                    button type="submit" { "Create account and sign in" }
                }
            }
        },
    )
}

async fn show_link_form(state: &AppState, kind: LinkKind, token: String) -> Result<Response, PageError> {
    let t = token.clone();
    let role = state
        .db
        .read(move |c| ops::live_link(c, kind, &t, now_ms()))
        .await?
        .map(|l| l.role);
    Ok(match role {
        Some(role) => (
            no_store(),
            new_account_form(kind, &token, role, &FormErrors::default(), ""),
        )
            .into_response(),
        None => link_invalid_page(kind),
    })
}

pub async fn setup_page(
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, PageError> {
    show_link_form(&state, LinkKind::Setup, q.token).await
}

pub async fn invite_page(
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, PageError> {
    show_link_form(&state, LinkKind::Invite, q.token).await
}

/// The passwords are wiped from memory when the form is dropped.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
pub struct NewAccountForm {
    #[serde(default)]
    #[zeroize(skip)]
    token: String,
    #[serde(default)]
    #[zeroize(skip)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

pub async fn setup_submit(
    State(state): State<AppState>,
    client: ClientAddr,
    Form(form): Form<NewAccountForm>,
) -> Result<Response, PageError> {
    create_from_link(&state, client, LinkKind::Setup, form).await
}

pub async fn invite_submit(
    State(state): State<AppState>,
    client: ClientAddr,
    Form(form): Form<NewAccountForm>,
) -> Result<Response, PageError> {
    create_from_link(&state, client, LinkKind::Invite, form).await
}

async fn create_from_link(
    state: &AppState,
    client: ClientAddr,
    kind: LinkKind,
    form: NewAccountForm,
) -> Result<Response, PageError> {
    let token = form.token.clone();
    let peek = token.clone();
    let Some(role) = state
        .db
        .read(move |c| ops::live_link(c, kind, &peek, now_ms()))
        .await?
        .map(|l| l.role)
    else {
        return Ok(link_invalid_page(kind));
    };
    let account = ops::NewAccount {
        username: form.username.clone(),
        password: Zeroizing::new(form.password.clone()),
        confirm: Zeroizing::new(form.confirm.clone()),
    };
    match ops::create_from_link(state, kind, &token, account).await {
        Ok((id, username)) => start_session(state, client, id, &username, "user.sign_in", "/").await,
        Err(UserError::LinkInvalid) => Ok(link_invalid_page(kind)),
        Err(e) => rerender(kind, &form.token, role, e, &form.username),
    }
}

fn rerender(
    kind: LinkKind,
    token: &str,
    role: Role,
    err: UserError,
    username: &str,
) -> Result<Response, PageError> {
    let errors = match err {
        UserError::Invalid { field, message } => FormErrors::one(field, message),
        e @ UserError::UsernameTaken(_) => FormErrors::one("username", e.to_string()),
        other => return Err(other.into()),
    };
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        no_store(),
        new_account_form(kind, token, role, &errors, username),
    )
        .into_response())
}

// --- password-reset links ------------------------------------------------------------------------

fn reset_invalid_page() -> Response {
    let body = bare_page(
        "Link not valid",
        html! {
            article.error-page {
                h1 { "This password-reset link is not valid" }
                p { "It was used already, was withdrawn, has expired, or was never issued." }
                p.muted { "Ask an admin for a new one." }
                p { a href="/login" role="button" { "Go to sign-in" } }
            }
        },
    );
    (StatusCode::NOT_FOUND, no_store(), body).into_response()
}

fn reset_form(token: &str, username: &str, errors: &FormErrors) -> Markup {
    bare_page(
        "Set a new password",
        html! {
            article {
                header {
                    h2 { "Set a new password" }
                    p.muted {
                        "For " strong { (username) } ". This one-time link stops working once used; "
                        "setting the password signs this account out everywhere."
                    }
                }
                (form_banner(errors))
                form method="post" action="/reset" {
                    input type="hidden" name="token" value=(token);
                    label { "New password"
                        input type="password" name="password" autocomplete="new-password" required
                            minlength=(super::MIN_PASSWORD_CHARS) aria-invalid=[invalid(errors, "password")];
                    }
                    (field_error(errors, "password"))
                    label { "Repeat the password"
                        input type="password" name="confirm" autocomplete="new-password" required
                            aria-invalid=[invalid(errors, "confirm")];
                    }
                    (field_error(errors, "confirm"))
                    button type="submit" { "Set password and sign in" }
                }
            }
        },
    )
}

pub async fn reset_page(
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, PageError> {
    let token = q.token.clone();
    let found = state
        .db
        .read(move |c| ops::live_reset(c, &token, now_ms()))
        .await?;
    Ok(match found {
        Some(link) => (
            no_store(),
            reset_form(&q.token, &link.user.username, &FormErrors::default()),
        )
            .into_response(),
        None => reset_invalid_page(),
    })
}

/// The passwords are wiped from memory when the form is dropped.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
pub struct ResetForm {
    #[serde(default)]
    #[zeroize(skip)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

pub async fn reset_submit(
    State(state): State<AppState>,
    client: ClientAddr,
    Form(form): Form<ResetForm>,
) -> Result<Response, PageError> {
    let new = Zeroizing::new(form.password.clone());
    let confirm = Zeroizing::new(form.confirm.clone());
    match ops::use_reset(&state, &form.token, new, confirm).await {
        // A reset link does not skip two-factor: with it on, the second step follows.
        Ok((id, username)) => second_step::password_passed(&state, client, id, &username, "/").await,
        Err(UserError::LinkInvalid) => Ok(reset_invalid_page()),
        Err(UserError::Invalid { field, message }) => {
            let token = form.token.clone();
            let Some(link) = state
                .db
                .read(move |c| ops::live_reset(c, &token, now_ms()))
                .await?
            else {
                return Ok(reset_invalid_page());
            };
            let errors = FormErrors::one(field, message);
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                no_store(),
                reset_form(&form.token, &link.user.username, &errors),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/projects/1")), "/projects/1");
        for bad in ["https://evil.example", "//evil.example", "/\\evil", "/login", "x"] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
