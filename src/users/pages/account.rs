//! The signed-in user's own pages: account (GitHub link) and API tokens (create: shown once;
//! list; revoke). Admins see and may revoke every token, including the CLI's.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::app::AppState;
use crate::db::{DbError, now_ms};
use crate::users::{Role, UserError, ops, store, tokens};
use crate::web::error::WebError;
use crate::web::layout::{
    self, FormErrors, Nav, PageError, Viewer, ago, badge, csrf_field, field_error, form_banner, invalid,
    no_store, page,
};

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

pub async fn account_page(
    State(state): State<AppState>,
    v: Viewer,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let Some(user_id) = v.who.user_id else {
        return Err(WebError::NotFound("account").into());
    };
    let user = state.db.read(move |c| store::get(c, user_id)).await?;
    let body = html! {
        (layout::notice(q.done.as_deref()))
        div.page-head { h1 { "Your account" } }
        article {
            div.stat {
                div { small { "Username" } strong { (user.username) } }
                div { small { "Role" } (user.role.as_str()) }
                div { small { "Member since" } (ago(&user.created_at, now_ms())) }
                div { small { "Password" } (if user.has_password { "set" } else { "none (GitHub only)" }) }
            }
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
    };
    Ok((no_store(), page(&v, "Account", Nav::Account, body)).into_response())
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
