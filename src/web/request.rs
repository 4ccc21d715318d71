//! Every request has a context: an id, and one tracing span with its method, matched route,
//! status and latency.
//!
//! The id is a trusted proxy's `X-Request-Id` when the peer is one of `trusted_proxies` and the
//! value is a plain token (letters, digits, `-`, `_`, `.`, `:`; at most 64), else 12 random hex
//! digits. It is answered in the `X-Request-Id` header, put in every JSON error and error page
//! ([`current_id`]), and carried by the span, so every log line the request causes names it.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::app::AppState;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
const MAX_ID_CHARS: usize = 64;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served on this task; a fresh one outside any request (so an
/// error rendered by a background task still has an id to log and show).
pub fn current_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| new_id())
}

fn new_id() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
}

/// A proxy's id is kept only when it cannot forge a log line or a header.
fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Routes that are polled (health checks) or fetched by the dozen (assets) log at debug.
fn quiet(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/assets/{*path}")
}

pub async fn context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let from_proxy = peer
        .is_some_and(|ip| state.config.trusted_proxies.contains(&ip))
        .then(|| req.headers().get(&HEADER).and_then(|v| v.to_str().ok()))
        .flatten()
        .filter(|id| acceptable(id))
        .map(str::to_owned);
    let id = from_proxy.unwrap_or_else(new_id);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<no route>".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    req.headers_mut().remove(&HEADER);
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let status = response.status().as_u16();
    let latency_ms = format!("{:.2}", started.elapsed().as_secs_f64() * 1000.0);
    span.in_scope(|| {
        if quiet(&route) {
            tracing::debug!(status, %latency_ms, "served");
        } else {
            tracing::info!(status, %latency_ms, "served");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_tokens_are_kept() {
        assert!(acceptable("req-123_abc.def:1"));
        assert!(acceptable(&"a".repeat(64)));
        for bad in ["", " ", "a b", "x\nforged=1", "\"quoted\"", &"a".repeat(65), "é"] {
            assert!(!acceptable(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_id_is_the_tasks_inside_a_request_and_fresh_outside() {
        let inside = REQUEST_ID.scope("abc".to_owned(), async { current_id() }).await;
        assert_eq!(inside, "abc");
        let (a, b) = (current_id(), current_id());
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
    }
}
