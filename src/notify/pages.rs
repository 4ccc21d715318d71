//! The notifications page of a project (`/projects/{id}/notifications`): its channels, their
//! last deliveries, the add form, delete and "send a test". URLs and passwords are write-only:
//! no page shows one, not even the one just typed into a form that came back with an error.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use super::{ChannelInfo, ChannelInput, Delivery, EVENTS, EmailInput, NotifyError, ops, store};
use crate::access::ProjectRole;
use crate::app::AppState;
use crate::db::now_ms;
use crate::users::Principal;
use crate::web::layout::{
    self, FormErrors, Nav, PageError, Viewer, ago, badge, csrf_field, field_error, form_banner, invalid,
    no_store, page,
};

/// Deliveries shown per channel.
const SHOWN: i64 = 5;

/// The add form as submitted; the URL and password are wiped on drop and never rendered back.
#[derive(Default, Clone, Deserialize, zeroize::ZeroizeOnDrop)]
pub struct ChannelForm {
    #[serde(default)]
    #[zeroize(skip)]
    kind: String,
    #[serde(default)]
    #[zeroize(skip)]
    name: String,
    #[serde(default)]
    url: String,
    #[serde(default, rename = "deploy.succeeded")]
    #[zeroize(skip)]
    ev_succeeded: Option<String>,
    #[serde(default, rename = "deploy.failed")]
    #[zeroize(skip)]
    ev_failed: Option<String>,
    #[serde(default, rename = "deploy.rollback")]
    #[zeroize(skip)]
    ev_rollback: Option<String>,
    #[serde(default, rename = "agent.offline")]
    #[zeroize(skip)]
    ev_offline: Option<String>,
    #[serde(default, rename = "webhook.rejected")]
    #[zeroize(skip)]
    ev_rejected: Option<String>,
    #[serde(default, rename = "drift.started")]
    #[zeroize(skip)]
    ev_drift_started: Option<String>,
    #[serde(default, rename = "drift.ended")]
    #[zeroize(skip)]
    ev_drift_ended: Option<String>,
    #[serde(default)]
    #[zeroize(skip)]
    offline_minutes: String,
    #[serde(default)]
    #[zeroize(skip)]
    smtp_host: String,
    #[serde(default)]
    #[zeroize(skip)]
    smtp_port: String,
    #[serde(default)]
    #[zeroize(skip)]
    smtp_username: String,
    #[serde(default)]
    smtp_password: String,
    #[serde(default)]
    #[zeroize(skip)]
    smtp_from: String,
    #[serde(default)]
    #[zeroize(skip)]
    smtp_to: String,
    #[serde(default)]
    #[zeroize(skip)]
    starttls: String,
}

impl ChannelForm {
    fn wants(&self, event: &str) -> bool {
        match event {
            "deploy.succeeded" => self.ev_succeeded.is_some(),
            "deploy.failed" => self.ev_failed.is_some(),
            "deploy.rollback" => self.ev_rollback.is_some(),
            "agent.offline" => self.ev_offline.is_some(),
            "webhook.rejected" => self.ev_rejected.is_some(),
            "drift.started" => self.ev_drift_started.is_some(),
            "drift.ended" => self.ev_drift_ended.is_some(),
            _ => false,
        }
    }

    fn to_input(&self) -> Result<ChannelInput, NotifyError> {
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let offline_minutes = match text(&self.offline_minutes) {
            None => None,
            Some(m) => Some(m.parse::<f64>().map_err(|_| NotifyError::Invalid {
                field: "offline_minutes",
                message: "must be a number of minutes".into(),
            })?),
        };
        let email = (self.kind == "email").then(|| -> Result<EmailInput, NotifyError> {
            Ok(EmailInput {
                host: self.smtp_host.clone(),
                port: match text(&self.smtp_port) {
                    None => None,
                    Some(p) => Some(p.parse::<u16>().map_err(|_| NotifyError::Invalid {
                        field: "email.port",
                        message: "must be 1 to 65535".into(),
                    })?),
                },
                username: text(&self.smtp_username),
                password: Some(self.smtp_password.clone()).filter(|p| !p.is_empty()),
                from: self.smtp_from.clone(),
                to: self
                    .smtp_to
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                starttls: Some(self.starttls != "off"),
            })
        });
        Ok(ChannelInput {
            kind: self.kind.clone(),
            name: self.name.clone(),
            events: EVENTS
                .iter()
                .filter(|e| self.wants(e))
                .map(|e| (*e).to_owned())
                .collect(),
            url: (self.kind != "email").then(|| self.url.clone()),
            email: email.transpose()?,
            offline_minutes,
        })
    }
}

const FIELDS: &[&str] = &[
    "kind",
    "name",
    "url",
    "events",
    "offline_minutes",
    "email.host",
    "email.port",
    "email.from",
    "email.to",
    "email.password",
    "email.starttls",
];

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

fn done_notice(code: Option<&str>) -> Markup {
    let text = match code {
        Some("channel-added") => {
            "Channel added. Its URL or password is stored encrypted and will not be shown again."
        }
        Some("channel-deleted") => "Channel deleted.",
        Some("test-sent") => "Test notification queued; its delivery appears below.",
        _ => return html! {},
    };
    html! { p.notice.ok role="status" { (text) } }
}

struct View {
    project_id: i64,
    project: String,
    channels: Vec<(ChannelInfo, Vec<Delivery>)>,
}

async fn load(state: &AppState, project_id: i64) -> Result<View, PageError> {
    let view = state
        .db
        .read(move |c| {
            let project = store::project_name(c, project_id)?.ok_or(NotifyError::ProjectNotFound)?;
            let mut channels = Vec::new();
            for ch in store::list_channels(c, project_id)? {
                let recent = store::deliveries(c, ch.id, SHOWN)?;
                channels.push((ch, recent));
            }
            Ok::<_, NotifyError>(View {
                project_id,
                project,
                channels,
            })
        })
        .await
        .map_err(crate::web::error::WebError::from)?;
    Ok(view)
}

fn render(
    v: &Viewer,
    view: &View,
    failed: Option<(&ChannelForm, &FormErrors)>,
    done: Option<&str>,
    secret: Option<&str>,
) -> Markup {
    let now = now_ms();
    let editable = v.may(ProjectRole::Maintainer);
    let empty = (ChannelForm::default(), FormErrors::default());
    let (form, errors) = failed.unwrap_or((&empty.0, &empty.1));
    let fresh = failed.is_none();
    let body = html! {
        (done_notice(done))
        @if let Some(s) = secret {
            p.notice.ok role="status" {
                "Channel added. Its signing secret, shown only now: " code { (s) }
                " — receivers check " code { "X-Stagely-Signature: sha256=HMAC-SHA256(secret, body)" } "."
            }
        }
        div.page-head {
            h1 { "Notifications" }
            span.muted { a href=(format!("/projects/{}", view.project_id)) { (view.project) } }
        }
        // Notifications are part of the project's settings (issue 15's tabs).
        (crate::projects::tabs::tab_bar(view.project_id, crate::projects::tabs::Tab::Settings))
        section id="channels" {
            @if view.channels.is_empty() {
                p.empty { "No channel yet. Add a webhook, Slack, Discord or email channel to hear about deploys." }
            }
            @for (ch, recent) in &view.channels {
                article id=(format!("channel-{}", ch.id)) {
                    header {
                        strong { (ch.name) } " " (badge("muted", kind_label(ch))) " "
                        span.muted { (ch.target) }
                    }
                    p { "Events: " @for (i, e) in ch.events.iter().enumerate() { @if i > 0 { ", " } code { (e) } }
                        @if ch.events.iter().any(|e| e == "agent.offline") { " (after " (ch.offline_minutes) " min offline)" } }
                    @if recent.is_empty() {
                        p.muted { "No deliveries yet." }
                    } @else {
                        figure { table {
                            thead { tr { th { "Event" } th { "Status" } th { "Attempts" } th { "Last error" } th { "When" } } }
                            tbody { @for d in recent { tr {
                                td { code { (d.event) } }
                                td { (badge(status_class(d), status_label(d))) }
                                td { (d.attempts) }
                                td { (d.last_error.as_deref().unwrap_or("")) }
                                td { (ago(&d.updated_at, now)) }
                            } } }
                        } }
                    }
                    @if editable {
                        footer.actions {
                            form method="post" action=(format!("/notifications/{}/test", ch.id)) {
                                (csrf_field(&v.csrf))
                                button.small.secondary type="submit" { "Send a test" }
                            }
                            form method="post" action=(format!("/notifications/{}/delete", ch.id)) {
                                (csrf_field(&v.csrf))
                                button.small.secondary.outline type="submit" { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        @if editable {
            article id="new-channel" {
                header { h3 { "Add a channel" } }
                (form_banner(errors))
                form method="post" action=(format!("/projects/{}/notifications", view.project_id)) {
                    (csrf_field(&v.csrf))
                    div.grid {
                        label { "Kind"
                            select name="kind" aria-invalid=[invalid(errors, "kind")] {
                                @for (value, label) in [("webhook", "Generic webhook (signed JSON)"), ("slack", "Slack incoming webhook"), ("discord", "Discord webhook"), ("email", "Email (SMTP)")] {
                                    option value=(value) selected[form.kind == value] { (label) }
                                }
                            }
                            (field_error(errors, "kind"))
                        }
                        label { "Name"
                            input name="name" value=(form.name) required placeholder="ops-alerts" aria-invalid=[invalid(errors, "name")];
                            (field_error(errors, "name"))
                        }
                    }
                    fieldset {
                        legend { "Events" }
                        @for e in EVENTS {
                            label { input type="checkbox" name=(e) checked[if fresh { *e == "deploy.failed" } else { form.wants(e) }]; " " code { (e) } }
                        }
                        (field_error(errors, "events"))
                        label { "Offline after (minutes)"
                            input name="offline_minutes" value=(form.offline_minutes) placeholder="5" inputmode="decimal" aria-invalid=[invalid(errors, "offline_minutes")];
                            (field_error(errors, "offline_minutes"))
                        }
                    }
                    label { "URL " span.muted { "(webhook, Slack, Discord; stored encrypted, never shown again)" }
                        input name="url" type="url" placeholder="https://hooks.slack.com/services/…" aria-invalid=[invalid(errors, "url")];
                        @if !errors.is_empty() { small.muted { "For your safety the URL was not kept: enter it again." } }
                        (field_error(errors, "url"))
                    }
                    details open[form.kind == "email"] {
                        summary { "Email (SMTP) settings" }
                        div.grid {
                            label { "SMTP host" input name="smtp_host" value=(form.smtp_host) placeholder="smtp.example.com" aria-invalid=[invalid(errors, "email.host")]; (field_error(errors, "email.host")) }
                            label { "Port" input name="smtp_port" value=(form.smtp_port) placeholder="587" inputmode="numeric" aria-invalid=[invalid(errors, "email.port")]; (field_error(errors, "email.port")) }
                            label { "STARTTLS"
                                select name="starttls" aria-invalid=[invalid(errors, "email.starttls")] {
                                    option value="required" selected[form.starttls != "off"] { "required" }
                                    option value="off" selected[form.starttls == "off"] { "off (no password allowed)" }
                                }
                                (field_error(errors, "email.starttls"))
                            }
                        }
                        div.grid {
                            label { "Username" input name="smtp_username" value=(form.smtp_username) autocomplete="off"; }
                            label { "Password " span.muted { "(stored encrypted)" } input name="smtp_password" type="password" autocomplete="new-password" aria-invalid=[invalid(errors, "email.password")]; (field_error(errors, "email.password")) }
                        }
                        div.grid {
                            label { "From" input name="smtp_from" value=(form.smtp_from) placeholder="stagely@example.com" aria-invalid=[invalid(errors, "email.from")]; (field_error(errors, "email.from")) }
                            label { "To " span.muted { "(comma-separated)" } input name="smtp_to" value=(form.smtp_to) placeholder="ops@example.com" aria-invalid=[invalid(errors, "email.to")]; (field_error(errors, "email.to")) }
                        }
                    }
                    button type="submit" { "Add channel" }
                }
            }
        }
    };
    page(v, &format!("{} notifications", view.project), Nav::Projects, body)
}

fn kind_label(ch: &ChannelInfo) -> &'static str {
    match ch.kind {
        super::Kind::Webhook => "webhook",
        super::Kind::Slack => "Slack",
        super::Kind::Discord => "Discord",
        super::Kind::Email => "email",
    }
}

fn status_label(d: &Delivery) -> &'static str {
    match d.status {
        super::DeliveryStatus::Pending => "pending",
        super::DeliveryStatus::Sent => "sent",
        super::DeliveryStatus::Failed => "failed",
    }
}

fn status_class(d: &Delivery) -> &'static str {
    match d.status {
        super::DeliveryStatus::Pending => "running",
        super::DeliveryStatus::Sent => "success",
        super::DeliveryStatus::Failed => "failed",
    }
}

pub async fn notifications_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let view = load(&state, id).await?;
    Ok((no_store(), render(&v, &view, None, q.done.as_deref(), None)).into_response())
}

pub async fn create(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    Form(form): Form<ChannelForm>,
) -> Result<Response, PageError> {
    let result = match form.to_input() {
        Ok(input) => ops::create_channel(&state, &who, project_id, input).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(created) => match created.signing_secret {
            // Shown once, on this answer (not across a redirect, which would put it in a URL).
            Some(secret) => {
                let view = load(&state, project_id).await?;
                Ok((no_store(), render(&v, &view, None, None, Some(&secret))).into_response())
            }
            None => Ok(layout::see_other(&format!(
                "/projects/{project_id}/notifications?done=channel-added"
            ))),
        },
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), FIELDS)?;
            let view = load(&state, project_id).await?;
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                no_store(),
                render(&v, &view, Some((&form, &errors)), None, None),
            )
                .into_response())
        }
    }
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let ch = ops::delete_channel(&state, &who, id)
        .await
        .map_err(crate::web::error::WebError::from)?;
    Ok(layout::see_other(&format!(
        "/projects/{}/notifications?done=channel-deleted",
        ch.project_id
    )))
}

pub async fn test(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Response, PageError> {
    let project_id = state
        .db
        .read(move |c| store::get_channel(c, id).map(|ch| ch.project_id))
        .await
        .map_err(crate::web::error::WebError::from)?;
    ops::send_test(&state, id)
        .await
        .map_err(crate::web::error::WebError::from)?;
    Ok(layout::see_other(&format!(
        "/projects/{project_id}/notifications?done=test-sent#channel-{id}"
    )))
}
