//! The environment's runtime panel (on the project page, one per environment card) and the
//! dashboard's drift badge. Both are re-rendered over the dashboard's WebSocket
//! (`/ws/dashboard`, `?project=<id>` for a project page's panels) on `HubEvent::RuntimeChanged`.

use maud::{Markup, html};

use super::store::Summary;
use super::{Runtime, drift::short};
use crate::access::ProjectRole;
use crate::db::now_ms;
use crate::web::layout::{Viewer, ago, badge, csrf_field};

/// The badge class for a Docker state.
fn state_class(state: &str) -> &'static str {
    match state {
        "running" => "success",
        "missing" | "exited" | "dead" => "failed",
        _ => "waiting",
    }
}

/// What runs in one environment, separate from its last deployment's outcome: a drift badge
/// with its reasons, the services table, and "Re-converge" (member) when it drifted.
pub fn panel(v: &Viewer, rt: &Runtime) -> Markup {
    panel_for(v.may(ProjectRole::Deployer), &v.csrf, rt)
}

/// [`panel`] for a socket, which keeps only what it needs of the viewer.
pub fn panel_for(can_member: bool, csrf: &str, rt: &Runtime) -> Markup {
    let now = now_ms();
    html! {
        div.runtime id=(format!("runtime-{}", rt.environment_id)) hx-swap-oob="true"
            data-testid=(format!("runtime-{}", rt.environment_id)) {
            h5 {
                "Running now "
                @match (&rt.reported_at, &rt.drift) {
                    (None, _) => { (badge("never", "not reported")) }
                    (Some(_), None) => {
                        @if rt.release_deployment_id.is_some() { (badge("in-sync", "matches release")) }
                        @else { (badge("none", "no release")) }
                    }
                    (Some(_), Some(_)) => { (badge("drift", "drift")) }
                }
                @if let Some(at) = &rt.reported_at { " " small.muted { "reported " (ago(at, now)) } }
            }
            @if let Some(reasons) = &rt.drift {
                div.drift role="status" {
                    @if let Some(since) = &rt.drift_since { p { small { "Drifting since " (ago(since, now)) } } }
                    ul {
                        @for r in reasons {
                            li { strong { (r.service) } " " code { (r.kind) } " — " (r.detail) }
                        }
                    }
                    @if let Some(id) = rt.release_deployment_id && can_member {
                        form.inline method="post" action=(format!("/deployments/{id}/redeploy")) {
                            (csrf_field(csrf))
                            button.small type="submit" data-testid=(format!("reconverge-{}", rt.environment_id)) {
                                "Re-converge (redeploy #" (id) ")"
                            }
                        }
                    }
                }
            }
            @if rt.reported_at.is_none() {
                p.muted { small { "The agent has not reported what runs (it needs the runtime capability)." } }
            } @else if rt.services.is_empty() {
                p.muted { "No container of this environment's compose project." }
            } @else {
                table.runtime-services {
                    thead { tr { th { "Service" } th { "State" } th { "Health" } th { "Restarts" } th { "Image" } th { "Digest" } th { "Started" } @if can_member { th { "Actions" } } } }
                    tbody {
                        @for s in &rt.services {
                            tr {
                                td { (s.name) @if s.containers > 1 { " " small.muted { "×" (s.containers) } } (crate::operate::logs_pages::service_link(can_member, rt.environment_id, &s.name)) }
                                td { (badge(state_class(&s.state), &s.state)) }
                                td { (s.health) }
                                td { (s.restarts) }
                                td { code { (s.image) } }
                                td { code title=(s.digest) { (short(&s.digest)) } }
                                td { @if let Some(at) = &s.started_at { (ago(at, now)) } }
                                @if can_member { td { (crate::operate::actions_pages::service_buttons(can_member, csrf, rt.environment_id, &s.name)) } }
                            }
                        }
                    }
                }
                @if rt.truncated { p.muted { small { "Only the first containers were reported." } } }
            }
        }
    }
}

/// The dashboard's badge for one environment: drift (its reasons as the tooltip), in sync, or
/// nothing reported.
pub fn drift_badge(summary: Option<&Summary>) -> Markup {
    match summary {
        None => html! { span.muted { small { "not reported" } } },
        Some(Summary { drift: None, .. }) => html! { (badge("in-sync", "in sync")) },
        Some(Summary {
            drift: Some(reasons), ..
        }) => {
            let title = super::drift::describe(reasons);
            html! { span title=(title) data-testid="drift" { (badge("drift", "drift")) " " small { (reasons.len()) " " (if reasons.len() == 1 { "reason" } else { "reasons" }) } } }
        }
    }
}
