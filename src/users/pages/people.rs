//! The Users page (admin): invite by a one-time link bound to a role, change roles, disable and
//! enable, end someone's sessions, issue (and withdraw) one-time password-reset links. Disabling
//! ends every session of that user at once.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::app::AppState;
use crate::db::{now_ms, rfc3339};
use crate::users::{Role, User, UserError, ops, store};
use crate::web::layout::{
    self, FormErrors, Nav, PageError, Viewer, ago, badge, csrf_field, form_banner, no_store, page,
};

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

struct UsersView {
    users: Vec<User>,
    invites: Vec<store::Invite>,
    resets: Vec<store::OpenReset>,
    sessions: HashMap<i64, i64>,
    /// OpenID Connect identities by user id.
    oidc: HashMap<i64, Vec<crate::users::oidc::store::Identity>>,
    /// Each person's project roles (issue 16).
    project_roles: HashMap<i64, Vec<(String, crate::access::store::Membership)>>,
    /// People with two-factor on (an admin may reset it: a lost phone).
    two_factor: std::collections::HashSet<i64>,
}

async fn load(state: &AppState) -> Result<UsersView, PageError> {
    Ok(state
        .db
        .read(|c| {
            let now = now_ms();
            Ok::<_, crate::db::DbError>(UsersView {
                users: store::list(c)?,
                invites: store::open_invites(c, now)?,
                resets: store::open_resets(c, now)?,
                sessions: store::session_counts(c, now)?.into_iter().collect(),
                oidc: crate::users::oidc::store::all(c)?.into_iter().fold(
                    HashMap::new(),
                    |mut by_user: HashMap<i64, Vec<_>>, i| {
                        by_user.entry(i.user_id).or_default().push(i);
                        by_user
                    },
                ),
                project_roles: {
                    let mut roles = HashMap::new();
                    for u in store::list(c)? {
                        roles.insert(u.id, crate::access::ops::roles_of(c, u.id)?);
                    }
                    roles
                },
                two_factor: crate::users::two_factor::store::enabled_users(c)?
                    .into_iter()
                    .collect(),
            })
        })
        .await?)
}

fn role_select(name: &str, current: Role) -> Markup {
    html! {
        select name=(name) aria-label="Role" {
            @for role in Role::ALL {
                option value=(role.as_str()) selected[role == current] { (role.as_str()) }
            }
        }
    }
}

fn users_body(
    v: &Viewer,
    view: &UsersView,
    errors: &FormErrors,
    invite_link: Option<(&str, Role)>,
    reset_link: Option<(&str, &str)>,
    done: Option<&str>,
) -> Markup {
    let now = now_ms();
    html! {
        (layout::notice(done))
        div.page-head { h1 { "Users" } }
        (form_banner(errors))
        @if let Some((link, role)) = invite_link {
            article.secret-once {
                header { strong { "Invitation for a new " (role.as_str()) } }
                p { "Send this link to the person you invite. It works once and is shown only now." }
                pre.token-box id="invite-link" { (link) }
                button.small.secondary type="button" data-copy="invite-link" { "Copy" }
            }
        }
        @if let Some((link, username)) = reset_link {
            article.secret-once {
                header { strong { "Password-reset link for " (username) } }
                p {
                    "Give this link to " (username) " only. It works once, for 24 hours, and is shown only now; "
                    "using it ends every session of the account."
                }
                pre.token-box id="reset-link" { (link) }
                button.small.secondary type="button" data-copy="reset-link" { "Copy" }
            }
        }
        figure {
            table {
                thead { tr { th { "User" } th { "Sign-in" } th { "Role" } th { "State" } th { "Sessions" } th { "Actions" } } }
                tbody {
                    @for u in &view.users {
                        tr {
                            td { strong { (u.username) } br; small.muted { "since " (ago(&u.created_at, now)) } }
                            td {
                                @if u.has_password { "password" } @else { span.muted { "no password" } }
                                form.row-actions method="post" action=(format!("/users/{}/github", u.id)) {
                                    (csrf_field(&v.csrf))
                                    input.compact name="github_login" value=(u.github_login.as_deref().unwrap_or(""))
                                        placeholder="GitHub login" aria-label=(format!("GitHub login of {}", u.username));
                                    button.small.secondary.outline type="submit" { "Link" }
                                }
                                @if u.github_login.is_some() {
                                    small.muted {
                                        @if let Some(gid) = u.github_id { "GitHub id " (gid) }
                                        @else { "id bound at the next GitHub sign-in" }
                                    }
                                }
                                @for i in view.oidc.get(&u.id).into_iter().flatten() {
                                    br;
                                    small.muted data-testid="oidc-identity" title=(format!("{} sub {}", i.issuer, i.subject)) {
                                        (i.provider) ": " (i.email.as_deref().unwrap_or(&i.subject))
                                        " (last sign-in " (ago(&i.last_sign_in_at, now)) ")"
                                    }
                                }
                            }
                            td {
                                form.row-actions method="post" action=(format!("/users/{}/role", u.id)) {
                                    (csrf_field(&v.csrf))
                                    (role_select("role", u.role))
                                    button.small.secondary.outline type="submit" { "Save" }
                                }
                                small.project-roles { "Projects: " (crate::access::pages::roles_line(
                                    view.project_roles.get(&u.id).map_or(&[][..], |r| r.as_slice()))) }
                            }
                            td {
                                @if u.disabled { (badge("disabled", "disabled")) } @else { (badge("enabled", "enabled")) }
                            }
                            td { (view.sessions.get(&u.id).copied().unwrap_or(0)) }
                            td { div.row-actions {
                                form method="post" action=(format!("/users/{}/disable", u.id)) {
                                    (csrf_field(&v.csrf))
                                    input type="hidden" name="disabled" value=(if u.disabled { "false" } else { "true" });
                                    button.small.secondary.outline type="submit" { (if u.disabled { "Enable" } else { "Disable" }) }
                                }
                                form method="post" action=(format!("/users/{}/sessions/end", u.id)) {
                                    (csrf_field(&v.csrf))
                                    button.small.secondary.outline type="submit" { "End sessions" }
                                }
                                @if view.two_factor.contains(&u.id) {
                                    form method="post" action=(format!("/users/{}/2fa/reset", u.id)) {
                                        (csrf_field(&v.csrf))
                                        button.small.secondary.outline type="submit"
                                            title="Lost phone: turn their two-factor off; they sign in with the password and may enrol again" {
                                            "Reset two-factor"
                                        }
                                    }
                                }
                                @if !u.disabled {
                                    form method="post" action=(format!("/users/{}/reset", u.id)) {
                                        (csrf_field(&v.csrf))
                                        @if !u.has_password {
                                            label.compact {
                                                input type="checkbox" name="add_password" value="true";
                                                " give it a password"
                                            }
                                        }
                                        button.small.secondary.outline type="submit" { "Reset password" }
                                    }
                                }
                            } }
                        }
                    }
                }
            }
        }
        @if !view.resets.is_empty() {
            article {
                header { h3 { "Open password-reset links" } }
                table {
                    thead { tr { th { "For" } th { "Issued by" } th { "Expires" } th {} } }
                    tbody {
                        @for r in &view.resets {
                            tr {
                                td { (r.username) }
                                td { (r.created_by) }
                                td { (rfc3339(r.expires_at).replace('T', " ").replace('Z', " UTC")) }
                                td {
                                    form method="post" action=(format!("/resets/{}/revoke", r.id)) {
                                        (csrf_field(&v.csrf))
                                        button.small.secondary.outline type="submit" { "Withdraw" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        article {
            header { h3 { "Invite someone" } }
            form.grid-form method="post" action="/users/invite" {
                (csrf_field(&v.csrf))
                label { "Role" (role_select("role", Role::Member)) }
                button type="submit" { "Create invitation link" }
            }
            @if !view.invites.is_empty() {
                h4 { "Open invitations" }
                table {
                    thead { tr { th { "Role" } th { "Invited by" } th { "Created" } th { "Expires" } th {} } }
                    tbody {
                        @for i in &view.invites {
                            tr {
                                td { (i.role.as_str()) }
                                td { (i.created_by) }
                                td { (ago(&i.created_at, now)) }
                                td { (rfc3339(i.expires_at).replace('T', " ").replace('Z', " UTC")) }
                                td {
                                    form method="post" action=(format!("/invites/{}/revoke", i.id)) {
                                        (csrf_field(&v.csrf))
                                        button.small.secondary.outline type="submit" { "Withdraw" }
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

pub async fn users_page(
    State(state): State<AppState>,
    v: Viewer,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let view = load(&state).await?;
    let body = users_body(&v, &view, &FormErrors::default(), None, None, q.done.as_deref());
    Ok((no_store(), page(&v, "Users", Nav::Users, body)).into_response())
}

#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    role: String,
}

pub async fn invite(
    State(state): State<AppState>,
    v: Viewer,
    Form(form): Form<RoleForm>,
) -> Result<Response, PageError> {
    let role = match ops::parse_role(&form.role) {
        Ok(role) => role,
        Err(e) => return users_error(&state, &v, e).await,
    };
    let link = ops::invite(&state, &v.who, role).await?;
    let view = load(&state).await?;
    let body = users_body(&v, &view, &FormErrors::default(), Some((&link, role)), None, None);
    Ok((
        StatusCode::CREATED,
        no_store(),
        page(&v, "Users", Nav::Users, body),
    )
        .into_response())
}

async fn users_error(state: &AppState, v: &Viewer, err: UserError) -> Result<Response, PageError> {
    let (status, errors) = match err {
        UserError::NotFound => return Err(err.into()),
        e @ (UserError::LastAdmin | UserError::Invalid { .. }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            FormErrors::one("form", e.to_string()),
        ),
        other => return Err(other.into()),
    };
    let view = load(state).await?;
    let body = users_body(v, &view, &errors, None, None, None);
    Ok((status, no_store(), page(v, "Users", Nav::Users, body)).into_response())
}

/// Where a change lands: back on the Users page, or the page again with the reason.
async fn after_change(
    state: &AppState,
    v: &Viewer,
    result: Result<(), UserError>,
) -> Result<Response, PageError> {
    match result {
        Ok(()) => Ok(layout::see_other("/users?done=user-updated")),
        Err(e) => users_error(state, v, e).await,
    }
}

pub async fn change_role(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<RoleForm>,
) -> Result<Response, PageError> {
    let result = match ops::parse_role(&form.role) {
        Ok(role) => ops::change_role(&state, &v.who, id, role).await,
        Err(e) => Err(e),
    };
    after_change(&state, &v, result).await
}

#[derive(Deserialize)]
pub struct DisableForm {
    #[serde(default)]
    disabled: String,
}

pub async fn set_disabled(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<DisableForm>,
) -> Result<Response, PageError> {
    let result = ops::set_disabled(&state, &v.who, id, form.disabled == "true").await;
    after_change(&state, &v, result).await
}

pub async fn end_sessions(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    ops::end_sessions(&state, &v.who, id).await?;
    Ok(layout::see_other("/users?done=sessions-ended"))
}

pub async fn revoke_invite(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    ops::revoke_invite(&state, &v.who, id).await?;
    Ok(layout::see_other("/users?done=invite-revoked"))
}

#[derive(Deserialize)]
pub struct GithubForm {
    #[serde(default)]
    github_login: String,
}

/// An admin links (or, with an empty login, unlinks) a GitHub login to a user.
pub async fn link_github(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<GithubForm>,
) -> Result<Response, PageError> {
    let result = match ops::set_github_login(&state, &v.who, id, &form.github_login).await {
        // Shown beside the field, as the form's own error.
        Err(e @ UserError::GithubTaken(_)) => Err(UserError::Invalid {
            field: "github_login",
            message: e.to_string(),
        }),
        other => other,
    };
    after_change(&state, &v, result).await
}

#[derive(Deserialize)]
pub struct ResetForm {
    #[serde(default)]
    add_password: Option<String>,
}

/// Issue a one-time password-reset link for a user (shown once, on this answer only).
pub async fn issue_reset(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<ResetForm>,
) -> Result<Response, PageError> {
    let add_password = form.add_password.as_deref() == Some("true");
    let link = match ops::issue_reset(&state, &v.who, id, add_password).await {
        Ok(link) => link,
        Err(e) => return users_error(&state, &v, e).await,
    };
    let username = state.db.read(move |c| store::get(c, id)).await?.username;
    let view = load(&state).await?;
    let body = users_body(
        &v,
        &view,
        &FormErrors::default(),
        None,
        Some((&link, &username)),
        None,
    );
    Ok((
        StatusCode::CREATED,
        no_store(),
        page(&v, "Users", Nav::Users, body),
    )
        .into_response())
}

pub async fn revoke_reset(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    match ops::revoke_reset(&state, &v.who, id).await {
        Ok(()) => Ok(layout::see_other("/users?done=reset-revoked")),
        Err(UserError::LinkInvalid) => Err(crate::web::error::WebError::NotFound("reset link").into()),
        Err(e) => Err(e.into()),
    }
}
