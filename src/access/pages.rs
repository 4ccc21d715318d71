//! The Members section of a project's Settings tab, and its forms: add a person by username,
//! change a role, remove a grant. Maintainers (and admins) see the forms; everyone else the
//! list, read-only. OIDC-sourced grants are listed but not editable (rewritten at sign-in).

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::ProjectRole;
use super::ops::{self, Member};
use crate::app::AppState;
use crate::projects::pages::Forms;
use crate::projects::tabs::with_errors;
use crate::users::{Principal, Role};
use crate::web::error::WebError;
use crate::web::layout::{
    self, FormErrors, PageError, Viewer, csrf_field, field_error, form_banner, invalid,
};

const FIELDS: &[&str] = &["username", "role"];

/// The add form as submitted (kept when it comes back with errors).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct MemberForm {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub role: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    pub role: String,
}

fn role_select(name: &str, selected: &str, errors: Option<&FormErrors>) -> Markup {
    let aria = errors.and_then(|e| invalid(e, name));
    html! {
        select name=(name) aria-invalid=[aria] {
            @for r in ProjectRole::ALL {
                option value=(r.as_str()) selected[r.as_str() == selected] { (r.as_str()) }
            }
        }
    }
}

/// May the viewer change this grant: maintainers (and admins) on manual grants of others.
fn can_edit(v: &Viewer, m: &Member) -> bool {
    m.editable
        && v.may(ProjectRole::Maintainer)
        && (v.who.user_id != Some(m.grant.user_id) || v.can(Role::Admin))
}

pub fn members_section(
    v: &Viewer,
    project_id: i64,
    members: &[Member],
    form: Option<&(MemberForm, FormErrors)>,
) -> Markup {
    let (form, errors) = form.cloned().unwrap_or_default();
    let manage = v.may(ProjectRole::Maintainer);
    html! {
        section id="members" {
            h2 { "Members" }
            p { small.muted {
                "Project roles, besides each person's global role: a viewer reads, a deployer also deploys, rolls back and cancels, "
                "a maintainer also changes settings, secrets and members. Global members and admins are maintainers of every project."
            } }
            @if members.is_empty() {
                p.muted { "Nobody holds a role on this project beyond their global role." }
            } @else {
                table data-testid="members" {
                    thead { tr { th { "Person" } th { "Role" } th { "Effective" } th { "Source" } th { "Granted by" } th {} } }
                    tbody {
                        @for m in members {
                            tr id=(format!("member-{}-{}", m.grant.user_id, m.grant.source)) {
                                td { (m.grant.username) }
                                td {
                                    @if can_edit(v, m) {
                                        form.inline method="post" action=(format!("/projects/{project_id}/members/{}", m.grant.user_id)) {
                                            (csrf_field(&v.csrf))
                                            (role_select("role", m.grant.role.as_str(), None))
                                            button.small type="submit" { "Change" }
                                        }
                                    } @else {
                                        (m.grant.role.as_str())
                                    }
                                }
                                td { (m.effective_role.as_str()) }
                                td { code { (m.grant.source) } }
                                td { small { (m.grant.granted_by) } }
                                td {
                                    @if can_edit(v, m) {
                                        form.inline method="post" action=(format!("/projects/{project_id}/members/{}/delete", m.grant.user_id)) {
                                            (csrf_field(&v.csrf))
                                            button.small.secondary.outline type="submit" { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if manage {
                details open[!errors.is_empty()] {
                    summary { "Add a member" }
                    (form_banner(&errors))
                    form.grid-form method="post" action=(format!("/projects/{project_id}/members")) {
                        (csrf_field(&v.csrf))
                        label { "Username"
                            input type="text" name="username" value=(form.username) required
                                aria-invalid=[invalid(&errors, "username")]
                                aria-describedby=[errors.get("username").map(|_| "username-error")];
                            (field_error(&errors, "username"))
                        }
                        label { "Role"
                            (role_select("role", if form.role.is_empty() { "deployer" } else { &form.role }, Some(&errors)))
                            (field_error(&errors, "role"))
                        }
                        button type="submit" { "Add member" }
                    }
                }
            }
        }
    }
}

fn saved(project_id: i64, done: &str) -> Response {
    layout::see_other(&format!("/projects/{project_id}/settings?done={done}#members"))
}

async fn or_errors(
    state: &AppState,
    v: &Viewer,
    project_id: i64,
    form: MemberForm,
    e: ops::AccessError,
) -> Result<Response, PageError> {
    let errors = FormErrors::from_web(e.into(), FIELDS)?;
    let forms = Forms {
        members: Some((form, errors)),
        ..Forms::default()
    };
    with_errors(state, v, project_id, forms).await
}

/// `POST /projects/{id}/members`: grant a role to a person by username.
pub async fn add(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    axum::Form(form): axum::Form<MemberForm>,
) -> Result<Response, PageError> {
    match ops::put_by_name(&state, &who, project_id, &form.username, &form.role).await {
        Ok(_) => Ok(saved(project_id, "member-saved")),
        Err(e) => or_errors(&state, &v, project_id, form, e).await,
    }
}

/// `POST /projects/{id}/members/{user_id}`: change a person's manual role.
pub async fn change(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path((project_id, user_id)): Path<(i64, i64)>,
    axum::Form(form): axum::Form<RoleForm>,
) -> Result<Response, PageError> {
    match ops::put(&state, &who, project_id, user_id, &form.role).await {
        Ok(_) => Ok(saved(project_id, "member-saved")),
        Err(e) => {
            let form = MemberForm {
                username: String::new(),
                role: form.role,
            };
            or_errors(&state, &v, project_id, form, e).await
        }
    }
}

/// `POST /projects/{id}/members/{user_id}/delete`: remove a person's manual role.
pub async fn remove(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((project_id, user_id)): Path<(i64, i64)>,
) -> Result<Response, PageError> {
    ops::delete(&state, &who, project_id, user_id)
        .await
        .map_err(WebError::from)?;
    Ok(saved(project_id, "member-removed"))
}

/// A person's project roles, for `/users` and `/account`: "shop: deployer, api: maintainer".
pub fn roles_line(roles: &[(String, super::store::Membership)]) -> Markup {
    html! {
        @if roles.is_empty() {
            span.muted { "none" }
        } @else {
            @for (i, (project, m)) in roles.iter().enumerate() {
                @if i > 0 { ", " }
                a href=(format!("/projects/{}/settings#members", m.project_id)) { (project) } ": " (m.role.as_str()) @if m.source != super::store::SOURCE_MANUAL { " (" (m.source) ")" }
            }
        }
    }
}
