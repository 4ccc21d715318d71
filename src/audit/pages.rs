//! The audit log page (admin): who did what, when. Entries never hold values.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{AuditEntry, Filter};
use crate::app::AppState;
use crate::db::now_ms;
use crate::web::layout::{Nav, PageError, Viewer, ago, no_store, page};

const PAGE_SIZE: i64 = 100;

/// `?project=<id>&actor=<name>&before=<id>`; empty values mean "any" (the filter form sends them).
#[derive(Deserialize, Default)]
pub struct AuditQuery {
    pub before: Option<i64>,
    pub project: Option<String>,
    pub actor: Option<String>,
}

impl AuditQuery {
    /// The filter, or the name of the parameter that is not a valid one.
    pub fn filter(&self) -> Result<Filter, &'static str> {
        let project_id = match self.project.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(p.parse::<i64>().map_err(|_| "project")?),
        };
        let actor = self
            .actor
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        if actor.as_ref().is_some_and(|a| a.len() > 200) {
            return Err("actor");
        }
        Ok(Filter { project_id, actor })
    }
}

/// The query string of a page of `filter`'s entries (before `before`), for links that keep it.
fn href(filter: &Filter, before: Option<i64>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(p) = filter.project_id {
        query.append_pair("project", &p.to_string());
    }
    if let Some(a) = &filter.actor {
        query.append_pair("actor", a);
    }
    if let Some(b) = before {
        query.append_pair("before", &b.to_string());
    }
    let query = query.finish();
    if query.is_empty() {
        "/audit".to_owned()
    } else {
        format!("/audit?{query}")
    }
}

/// The object column: its name as it was (when recorded) with its type and id.
pub fn object(e: &AuditEntry) -> Markup {
    html! {
        (e.target_type)
        @if let Some(id) = e.target_id { " #" (id) }
        @if let Some(name) = &e.target_name { " " strong { (name) } }
    }
}

pub async fn audit_page(
    State(state): State<AppState>,
    v: Viewer,
    Query(q): Query<AuditQuery>,
) -> Result<Response, PageError> {
    let before = q.before;
    // An unusable filter value shows everything rather than an error page (the form cannot send one).
    let filter = q.filter().unwrap_or_default();
    let f = filter.clone();
    let (entries, projects) = state
        .db
        .read(move |c| {
            let entries = super::list(c, &f, before, PAGE_SIZE)?;
            let projects = crate::projects::store::list(c).map_err(|e| match e {
                crate::projects::ProjectError::Db(e) => e,
                other => crate::db::DbError::Task(other.to_string()),
            })?;
            Ok::<_, crate::db::DbError>((entries, projects))
        })
        .await?;
    let now = now_ms();
    let older = (entries.len() == usize::try_from(PAGE_SIZE).unwrap_or(0))
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let filtered = filter.project_id.is_some() || filter.actor.is_some();
    let body = html! {
        div.page-head {
            h1 { "Audit log" }
            span.muted { "Every change, who made it and when. Values are never recorded." }
        }
        form #audit-filter .inline method="get" action="/audit" {
            label {
                "Project "
                select name="project" {
                    option value="" { "All projects" }
                    @for p in &projects {
                        option value=(p.id) selected[filter.project_id == Some(p.id)] { (p.name) }
                    }
                }
            }
            label {
                "Who "
                input type="text" name="actor" placeholder="ada, user:ada, token:ci, cli"
                    value=[filter.actor.as_deref()];
            }
            button type="submit" { "Filter" }
            @if filtered { " " a href="/audit" { "Show all" } }
        }
        @if entries.is_empty() {
            p.empty { @if filtered { "No entries match." } @else { "Nothing recorded yet." } }
        } @else {
            figure {
                table.striped #audit {
                    thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Object" } th { "Detail" } } }
                    tbody {
                        @for e in &entries {
                            tr {
                                td { (ago(&e.at, now)) }
                                td { (e.actor) }
                                td { code { (e.action) } }
                                td { (object(e)) }
                                td { (e.detail) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(id) = older {
            p { a #older href=(href(&filter, Some(id))) { "Older entries →" } }
        }
    };
    Ok((no_store(), page(&v, "Audit log", Nav::Audit, body)).into_response())
}
