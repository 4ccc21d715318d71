//! The signed-in user's own pages: account (GitHub link) and API tokens (create: shown once;
//! list; revoke). Admins see and may revoke every token, including the CLI's.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Role, store, tokens};
use crate::app::AppState;
use crate::audit;
use crate::db::{DbError, now_ms};
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
                p { "Linked to GitHub account " strong { "@" (login) } ". You can sign in with GitHub." }
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
    let Some(user_id) = v.who.user_id else {
        return Err(WebError::NotFound("account").into());
    };
    let actor = v.who.actor.clone();
    state
        .db
        .write(move |tx| {
            let user = store::get(tx, user_id)?;
            if !user.has_password {
                return Err(super::UserError::Invalid {
                    field: "github",
                    message: "this account has no password; unlinking GitHub would lock you out".into(),
                });
            }
            store::unlink_github(tx, user_id)?;
            audit::record(
                tx,
                now_ms(),
                &actor,
                "user.unlink_github",
                "user",
                Some(user_id),
                "",
            )?;
            Ok(())
        })
        .await?;
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

/// Admins see every token; others their own.
fn scope_of(v: &Viewer) -> Option<i64> {
    if v.can(Role::Admin) {
        None
    } else {
        Some(v.who.user_id.unwrap_or(-1))
    }
}

async fn token_list(state: &AppState, v: &Viewer) -> Result<Vec<tokens::ApiTokenInfo>, DbError> {
    let scope = scope_of(v);
    state.db.read(move |c| tokens::list(c, scope)).await
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
    let name = form.name.trim().to_owned();
    let role = Role::parse(&form.role);
    let error = if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        Some(FormErrors::one("name", "must be 1 to 64 printable characters"))
    } else if role.is_none_or(|r| r > v.who.role) {
        Some(FormErrors::one(
            "form",
            "a token cannot have a higher role than yours",
        ))
    } else {
        None
    };
    if let Some(errors) = error {
        let list = token_list(&state, &v).await?;
        let body = tokens_body(&v, &list, &errors, &form.name, None, None);
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            no_store(),
            page(&v, "API tokens", Nav::Account, body),
        )
            .into_response());
    }
    let role = role.unwrap_or(Role::Viewer);
    let (actor, user_id, token_name) = (v.who.actor.clone(), v.who.user_id, name.clone());
    let token = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let (id, token) = tokens::create(tx, &token_name, role, user_id, now)?;
            audit::record(
                tx,
                now,
                &actor,
                "token.create",
                "api_token",
                Some(id),
                &token_name,
            )?;
            Ok::<_, DbError>(token)
        })
        .await?;
    let list = token_list(&state, &v).await?;
    let body = tokens_body(&v, &list, &FormErrors::default(), "", Some((&name, &token)), None);
    Ok((
        StatusCode::CREATED,
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
    let scope = scope_of(&v);
    let actor = v.who.actor.clone();
    let revoked = state
        .db
        .write(move |tx| {
            let mine = tokens::list(tx, scope)?.iter().any(|t| t.id == id);
            if !mine {
                return Ok(false);
            }
            let done = tokens::revoke(tx, id, now_ms())?;
            if done {
                audit::record(tx, now_ms(), &actor, "token.revoke", "api_token", Some(id), "")?;
            }
            Ok::<_, DbError>(done)
        })
        .await?;
    if !revoked {
        return Err(WebError::NotFound("token").into());
    }
    Ok(layout::see_other("/tokens?done=token-revoked"))
}
