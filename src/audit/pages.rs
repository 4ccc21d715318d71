//! The audit log page (admin): who did what, when. Entries never hold values.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use crate::app::AppState;
use crate::db::now_ms;
use crate::web::layout::{Nav, PageError, Viewer, ago, no_store, page};

const PAGE_SIZE: i64 = 100;

#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

pub async fn audit_page(
    State(state): State<AppState>,
    v: Viewer,
    Query(q): Query<AuditQuery>,
) -> Result<Response, PageError> {
    let before = q.before;
    let entries = state.db.read(move |c| super::list(c, before, PAGE_SIZE)).await?;
    let now = now_ms();
    let older = (entries.len() == usize::try_from(PAGE_SIZE).unwrap_or(0))
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let body = html! {
        div.page-head {
            h1 { "Audit log" }
            span.muted { "Every change, who made it and when. Values are never recorded." }
        }
        @if entries.is_empty() {
            p.empty { "Nothing recorded yet." }
        } @else {
            figure {
                table.striped {
                    thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Object" } th { "Detail" } } }
                    tbody {
                        @for e in &entries {
                            tr {
                                td { (ago(&e.at, now)) }
                                td { (e.actor) }
                                td { code { (e.action) } }
                                td { (e.target_type) @if let Some(id) = e.target_id { " #" (id) } }
                                td { (e.detail) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(id) = older {
            p { a href=(format!("/audit?before={id}")) { "Older entries →" } }
        }
    };
    Ok((no_store(), page(&v, "Audit log", Nav::Audit, body)).into_response())
}
