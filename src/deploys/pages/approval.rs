//! The approval block of a deployment page: the diff the approver decides on (commit range,
//! which secret versions change, never a value) above the Approve and Reject buttons.

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};

use crate::app::AppState;
use crate::deploys::approval::{self, Approval};
use crate::users::Principal;
use crate::web::error::WebError;
use crate::web::layout::{self, PageError, csrf_field};

/// The block; the buttons only while the deployment awaits approval (the server decides who
/// may press them). Its author (`mine`) gets no Approve button, only Reject (withdraw).
pub fn block(id: i64, a: &Approval, awaiting: bool, mine: bool, csrf: &str) -> Markup {
    html! {
        section.approval data-testid="approval" {
            h3 { @if awaiting { "Awaiting approval" } @else { "Approval" } }
            @if let Some(by) = &a.approved_by {
                p { "Approved by " strong { (by) } @if let Some(at) = &a.approved_at { " at " (at) } "." }
            }
            @if awaiting {
                @if let Some(at) = &a.expires_at { p.muted { "Expires at " (at) " unless another person who may deploy this environment approves it." } }
            }
            @if let Some(d) = &a.diff {
                p {
                    "Commits: " code { (d.from_commit.as_deref().unwrap_or("(no release yet)")) } " → "
                    code { (d.to_commit.as_deref().unwrap_or(&d.to_ref)) }
                    @if let Some(url) = &d.commits_url { " (" a href=(url) rel="noopener noreferrer" { "compare" } ")" }
                }
                @if d.secrets.is_empty() {
                    p.muted { "No secret version changes." }
                } @else {
                    table data-testid="approval-secrets" {
                        thead { tr { th { "Secret" } th { "Scope" } th { "Change" } th { "Version" } } }
                        tbody {
                            @for s in &d.secrets {
                                tr {
                                    td { code { (s.key) } }
                                    td { (s.scope) @if let Some(svc) = &s.service { " (" (svc) ")" } }
                                    td { (s.change) }
                                    td {
                                        (s.from_version.map_or_else(|| "–".to_owned(), |v| format!("v{v}")))
                                        " → "
                                        (s.to_version.map_or_else(|| "–".to_owned(), |v| format!("v{v}")))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if awaiting {
                @if mine {
                    p data-testid="approval-own" { "You started this deployment: another person who may deploy this environment approves it. You can withdraw it." }
                } @else {
                    form.inline method="post" action=(format!("/deployments/{id}/approve")) {
                        (csrf_field(csrf))
                        button type="submit" data-testid="approve" { "Approve" }
                    }
                    " "
                }
                form.inline method="post" action=(format!("/deployments/{id}/reject")) {
                    (csrf_field(csrf))
                    button.secondary.outline type="submit" { (if mine { "Withdraw" } else { "Reject" }) }
                }
            }
        }
    }
}

/// `POST /deployments/{id}/approve` (the rules in src/deploys/approval).
pub async fn approve(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    approval::approve(&state, &who, id)
        .await
        .map_err(WebError::from)?;
    Ok(layout::see_other(&format!("/deployments/{id}")))
}

/// `POST /deployments/{id}/reject`.
pub async fn reject(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    approval::reject(&state, &who, id).await.map_err(WebError::from)?;
    Ok(layout::see_other(&format!("/deployments/{id}")))
}
