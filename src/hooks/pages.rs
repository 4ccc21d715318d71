//! The Webhook section of the project page, and its rotate button (the new secret is shown
//! once, on the page the form answers).

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::WebhookInfo;
use super::ops::{self, NewSecret};
use crate::access::ProjectRole;
use crate::app::AppState;
use crate::db::now_ms;
use crate::projects::pages::{Forms, Tab, render_project};
use crate::users::Principal;
use crate::web::error::WebError;
use crate::web::layout::{PageError, Viewer, ago, badge, csrf_field, no_store};

fn result_badge(result: super::Outcome) -> Markup {
    use super::Outcome as O;
    let kind = match result {
        O::Deployed => "success",
        O::Rejected | O::Error => "failed",
        O::Processing => "running",
        O::Ignored | O::Duplicate => "none",
    };
    badge(kind, result.as_str())
}

/// The section: URLs, the rotate button, a test hint and the last deliveries.
pub fn webhook_section(v: &Viewer, project_id: i64, info: &WebhookInfo, new: Option<&NewSecret>) -> Markup {
    let now = now_ms();
    html! {
        section id="webhook" {
            h2 { "Webhook" }
            article {
                @if let Some(new) = new {
                    div.notice.ok role="status" {
                        p { "New webhook secret (shown once; the old one no longer works):" }
                        p { code data-testid="webhook-secret" { (new.secret.as_str()) } }
                    }
                }
                p {
                    @if info.configured {
                        "Configured" @if let Some(at) = &info.created_at { " " (ago(at, now)) }
                        @if let Some(by) = &info.created_by { " by " (by) } "."
                    } @else {
                        "No webhook secret yet: make one, then add the URL and the secret to your repository's webhooks."
                    }
                }
                table {
                    tbody {
                        tr { th { "GitHub" } td { code { (info.urls.github) } } td { small.muted { "content type application/json, push events" } } }
                        tr { th { "GitLab" } td { code { (info.urls.gitlab) } } td { small.muted { "secret token = the secret; push and tag push events" } } }
                        tr { th { "Gitea / Forgejo" } td { code { (info.urls.gitea) } } td { small.muted { "POST, application/json, push events" } } }
                    }
                }
                @if v.may(ProjectRole::Maintainer) {
                    form.inline method="post" action=(format!("/projects/{project_id}/webhook")) {
                        (csrf_field(&v.csrf))
                        button.small type="submit" data-testid="webhook-rotate" {
                            @if info.configured { "Rotate the secret" } @else { "Create the webhook secret" }
                        }
                    }
                }
                details {
                    summary { "Send a test" }
                    p { "On GitHub, a new webhook sends a " code { "ping" } " (answered 200, nothing deployed); "
                        "\"Redeliver\" on a past push sends it again (answered as a duplicate). By hand:" }
                    pre { code { (format!(
                        "BODY='{{\"ref\":\"refs/heads/main\",\"after\":\"<40-hex commit>\",\"pusher\":{{\"name\":\"me\"}}}}'\n\
                         SIG=$(printf '%s' \"$BODY\" | openssl dgst -sha256 -hmac \"$SECRET\" | sed 's/^.* //')\n\
                         curl -X POST {} -H 'X-GitHub-Event: push' \\\n  -H \"X-GitHub-Delivery: $(uuidgen)\" \
                         -H \"X-Hub-Signature-256: sha256=$SIG\" -d \"$BODY\"",
                        info.urls.github
                    )) } }
                }
                h3 { "Last deliveries" }
                @if info.deliveries.is_empty() {
                    p.muted { "None yet." }
                } @else {
                    table data-testid="webhook-deliveries" {
                        thead { tr { th { "Event" } th { "Result" } th { "Detail" } th { "When" } } }
                        tbody {
                            @for d in &info.deliveries {
                                tr {
                                    td { (d.provider.as_str()) " " code { (d.event) } }
                                    td { (result_badge(d.result)) }
                                    td {
                                        small { (d.detail) }
                                        @for id in &d.deployment_ids {
                                            " " a href=(format!("/deployments/{id}")) { "#" (id) }
                                        }
                                    }
                                    td { (ago(&d.at, now)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /projects/{id}/webhook`: rotate, then show the project's Settings tab with the secret, once.
pub async fn rotate(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let new = ops::rotate(&state, &who, id).await.map_err(WebError::from)?;
    let forms = Forms {
        new_webhook: Some(new),
        ..Forms::default()
    };
    let markup = render_project(&state, &v, id, Tab::Settings, forms, None).await?;
    Ok((no_store(), markup).into_response())
}
