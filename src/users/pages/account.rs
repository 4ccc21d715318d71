//! The signed-in user's own pages: account (password change, two-factor ([`super::two_factor`]),
//! sign out everywhere, GitHub link)
//! and API tokens (create: shown once;
//! list; revoke). Admins see and may revoke every token, including the CLI's.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use crate::app::AppState;
use crate::db::{DbError, now_ms};
use crate::users::{Role, User, UserError, ops, store, tokens};
use crate::web::error::WebError;
use crate::web::layout::{
    self, FormErrors, Nav, PageError, Viewer, ago, badge, csrf_field, field_error, form_banner, invalid,
    no_store, page,
};
use crate::web::request::ClientAddr;
use crate::web::session::Session;
use zeroize::Zeroizing;

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

/// The account page: who you are, your password, your sessions, GitHub.
fn account_body(
    v: &Viewer,
    user: &User,
    sessions: i64,
    roles: &[(String, crate::access::store::Membership)],
    tfa: &crate::users::two_factor::ops::Status,
    errors: &FormErrors,
    done: Option<&str>,
) -> Markup {
    html! {
        (layout::notice(done))
        div.page-head { h1 { "Your account" } }
        article {
            div.stat {
                div { small { "Username" } strong { (user.username) } }
                div { small { "Role" } (user.role.as_str()) }
                div.project-roles { small { "Project roles" } (crate::access::pages::roles_line(roles)) }
                div { small { "Member since" } (ago(&user.created_at, now_ms())) }
                div { small { "Password" } (if user.has_password { "set" } else { "none (GitHub only)" }) }
            }
        }
        article id="password" {
            header { h3 { "Password" } }
            @if user.has_password {
                (form_banner(errors))
                form method="post" action="/account/password" {
                    (csrf_field(&v.csrf))
                    label { "Current password"
                        input type="password" name="current_password" autocomplete="current-password" required
                            aria-invalid=[invalid(errors, "current_password")];
                    }
                    (field_error(errors, "current_password"))
                    label { "New password"
                        input type="password" name="password" autocomplete="new-password" required
                            minlength=(crate::users::MIN_PASSWORD_CHARS) aria-invalid=[invalid(errors, "password")];
                    }
                    (field_error(errors, "password"))
                    label { "Repeat the new password"
                        input type="password" name="confirm" autocomplete="new-password" required
                            aria-invalid=[invalid(errors, "confirm")];
                    }
                    (field_error(errors, "confirm"))
                    small.muted { "Changing it signs you out everywhere else; this browser stays signed in." }
                    button type="submit" { "Change password" }
                }
            } @else {
                p.muted {
                    "This account has no password: you sign in with GitHub. "
                    "To add one, ask an admin for a password-reset link."
                }
            }
        }
        (super::two_factor::section(v, tfa, user.has_password, errors))
        article id="sessions" {
            header { h3 { "Sessions" } }
            p { "You are signed in in " strong { (sessions) } " place(s), this browser included." }
            form method="post" action="/account/sessions/end" {
                (csrf_field(&v.csrf))
                button.secondary.outline type="submit" { "Sign out everywhere" }
            }
            small.muted { "Ends every session of yours, this one too, and closes their live pages." }
        }
        article {
            header { h3 { "GitHub" } }
            @if let Some(login) = &user.github_login {
                p {
                    "Linked to GitHub account " strong { "@" (login) }
                    @if let Some(gid) = user.github_id { " (id " (gid) ")" }
                    ". You can sign in with GitHub."
                }
                form method="post" action="/account/github/unlink" {
                    (csrf_field(&v.csrf))
                    button.secondary.outline.small type="submit" { "Unlink GitHub" }
                }
            } @else if v.github_enabled {
                p { "Link your GitHub account to sign in with GitHub instead of a password." }
                form method="post" action="/account/github" {
                    (csrf_field(&v.csrf))
                    button.small type="submit" { "Link GitHub account" }
                }
            } @else {
                p.muted { "GitHub sign-in is not configured on this appliance." }
            }
        }
        p { a href="/tokens" { "Manage your API tokens →" } }
    }
}

pub(crate) async fn render_account(
    state: &AppState,
    v: &Viewer,
    status: StatusCode,
    errors: &FormErrors,
    done: Option<&str>,
) -> Result<Response, PageError> {
    let Some(user_id) = v.who.user_id else {
        return Err(WebError::NotFound("account").into());
    };
    let (user, sessions, roles) = state
        .db
        .read(move |c| {
            let user = store::get(c, user_id)?;
            let roles = crate::access::ops::roles_of(c, user_id)?;
            let sessions = store::session_counts(c, now_ms())?
                .into_iter()
                .find(|(id, _)| *id == user_id)
                .map_or(0, |(_, n)| n);
            Ok::<_, UserError>((user, sessions, roles))
        })
        .await?;
    let tfa = crate::users::two_factor::ops::status(state, user_id).await?;
    let body = account_body(v, &user, sessions, &roles, &tfa, errors, done);
    Ok((status, no_store(), page(v, "Account", Nav::Account, body)).into_response())
}

pub async fn account_page(
    State(state): State<AppState>,
    v: Viewer,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    render_account(
        &state,
        &v,
        StatusCode::OK,
        &FormErrors::default(),
        q.done.as_deref(),
    )
    .await
}

/// The passwords are wiped from memory when the form is dropped.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
pub struct PasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

impl PasswordForm {
    fn change(&self) -> ops::PasswordChange {
        ops::PasswordChange {
            current: Zeroizing::new(self.current_password.clone()),
            new: Zeroizing::new(self.password.clone()),
            confirm: Zeroizing::new(self.confirm.clone()),
        }
    }
}

/// Change your own password; every other session ends, this one stays.
pub async fn change_password(
    State(state): State<AppState>,
    v: Viewer,
    client: ClientAddr,
    session: Option<Extension<Session>>,
    Form(form): Form<PasswordForm>,
) -> Result<Response, PageError> {
    if v.who.user_id.is_none() {
        return Err(WebError::NotFound("account").into());
    }
    let keep = session.map(|Extension(s)| s.id_hash);
    let ip = client.to_string();
    let errors = match ops::change_password(&state, &v.who, keep, &ip, form.change()).await {
        Ok(_) => return Ok(layout::see_other("/account?done=password-changed")),
        Err(UserError::Invalid { field, message }) => FormErrors::one(field, message),
        Err(e @ UserError::WrongPassword) => FormErrors::one("current_password", e.to_string()),
        Err(e @ (UserError::NoPassword | UserError::RateLimited { .. } | UserError::Busy)) => {
            let status = if matches!(e, UserError::NoPassword) {
                StatusCode::CONFLICT
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            let errors = FormErrors::one("form", e.to_string());
            return render_account(&state, &v, status, &errors, None).await;
        }
        Err(e) => return Err(e.into()),
    };
    render_account(&state, &v, StatusCode::UNPROCESSABLE_ENTITY, &errors, None).await
}

/// "Sign out everywhere": every session of yours ends, this one too.
pub async fn sign_out_everywhere(State(state): State<AppState>, v: Viewer) -> Result<Response, PageError> {
    if v.who.user_id.is_none() {
        return Err(WebError::NotFound("account").into());
    }
    ops::sign_out_everywhere(&state, &v.who).await?;
    let mut response = layout::see_other("/login");
    response.headers_mut().append(
        axum::http::header::SET_COOKIE,
        crate::web::session::clear_cookie(&state.config),
    );
    Ok(response)
}

pub async fn unlink_github(State(state): State<AppState>, v: Viewer) -> Result<Response, PageError> {
    if v.who.user_id.is_none() {
        return Err(WebError::NotFound("account").into());
    }
    ops::unlink_own_github(&state, &v.who).await?;
    Ok(layout::see_other("/account?done=github-unlinked"))
}

// --- API tokens ---------------------------------------------------------------------------------

fn tokens_body(
    v: &Viewer,
    list: &[tokens::ApiTokenInfo],
    errors: &FormErrors,
    name: &str,
    created: Option<(&str, &str)>,
    done: Option<&str>,
) -> Markup {
    let now = now_ms();
    html! {
        (layout::notice(done))
        div.page-head {
            h1 { "API tokens" }
            span.muted { "For CI and scripts: " code { "Authorization: Bearer <token>" } }
        }
        @if let Some((token_name, token)) = created {
            article.secret-once {
                header { strong { "Token " (token_name) " created" } }
                p { "Copy it now: it is shown only this once, and Stagely keeps only its hash." }
                pre.token-box id="new-token" { (token) }
                button.small.secondary type="button" data-copy="new-token" { "Copy" }
            }
        }
        article {
            header { h3 { "New token" } }
            (form_banner(errors))
            form.grid-form method="post" action="/tokens" {
                (csrf_field(&v.csrf))
                label { "Name"
                    input name="name" value=(name) required maxlength="64" placeholder="ci" aria-invalid=[invalid(errors, "name")];
                    (field_error(errors, "name"))
                }
                label { "Role"
                    select name="role" {
                        @for role in Role::ALL.iter().rev().filter(|r| **r <= v.who.role) {
                            option value=(role.as_str()) selected[*role == Role::Member.min(v.who.role)] { (role.as_str()) }
                        }
                    }
                }
                button type="submit" { "Create token" }
            }
        }
        @if list.is_empty() {
            p.empty { "No API tokens yet." }
        } @else {
            figure {
                table {
                    thead { tr { th { "Name" } th { "Role" } th { "Created" } th { "Last used" } th { "State" } th {} } }
                    tbody {
                        @for t in list {
                            tr {
                                td { (t.name) }
                                td { (t.role.as_str()) }
                                td { (ago(&t.created_at, now)) }
                                td { @if let Some(u) = &t.last_used_at { (ago(u, now)) } @else { span.muted { "never" } } }
                                td { @if t.revoked { (badge("revoked", "revoked")) } @else { (badge("enabled", "active")) } }
                                td {
                                    @if !t.revoked {
                                        form method="post" action=(format!("/tokens/{}/revoke", t.id)) {
                                            (csrf_field(&v.csrf))
                                            button.small.secondary.outline type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn token_list(state: &AppState, v: &Viewer) -> Result<Vec<tokens::ApiTokenInfo>, DbError> {
    let scope = ops::token_scope(&v.who);
    state.db.read(move |c| store::list_tokens(c, scope)).await
}

pub async fn tokens_page(
    State(state): State<AppState>,
    v: Viewer,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let list = token_list(&state, &v).await?;
    let body = tokens_body(&v, &list, &FormErrors::default(), "", None, q.done.as_deref());
    Ok((no_store(), page(&v, "API tokens", Nav::Account, body)).into_response())
}

#[derive(Deserialize)]
pub struct NewTokenForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

pub async fn create_token(
    State(state): State<AppState>,
    v: Viewer,
    Form(form): Form<NewTokenForm>,
) -> Result<Response, PageError> {
    let created = match ops::parse_role(&form.role) {
        Ok(role) => ops::create_token(&state, &v.who, &form.name, role).await,
        Err(e) => Err(e),
    };
    let errors = match created {
        Ok(created) => {
            let list = token_list(&state, &v).await?;
            let shown = Some((created.name.as_str(), created.token.as_str()));
            let body = tokens_body(&v, &list, &FormErrors::default(), "", shown, None);
            return Ok((
                StatusCode::CREATED,
                no_store(),
                page(&v, "API tokens", Nav::Account, body),
            )
                .into_response());
        }
        // The role select has no error slot of its own: its message goes in the banner.
        Err(UserError::Invalid {
            field: "role",
            message,
        }) => FormErrors::one("form", message),
        Err(UserError::Invalid { field, message }) => FormErrors::one(field, message),
        Err(e @ UserError::RoleTooHigh) => FormErrors::one("form", e.to_string()),
        Err(e) => return Err(e.into()),
    };
    let list = token_list(&state, &v).await?;
    let body = tokens_body(&v, &list, &errors, &form.name, None, None);
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        no_store(),
        page(&v, "API tokens", Nav::Account, body),
    )
        .into_response())
}

pub async fn revoke_token(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    ops::revoke_token(&state, &v.who, id).await?;
    Ok(layout::see_other("/tokens?done=token-revoked"))
}
