//! `GET /metrics`: the appliance's state in the Prometheus text exposition format (0.0.4),
//! written here (a few dozen lines; no crate needed for a fixed set of series).
//!
//! Access: behind `Authorization: Bearer <token>` from `metrics.token_file` on the main listener,
//! or, when `metrics.listen` is set, only on that address (the main listener then answers 404).
//! Neither set: 404. The token is compared in constant time.
//!
//! Cheap to scrape: nothing counts a big table. The database series come from the few rows of
//! `metric_counts` and `metric_deploy_duration`, kept by triggers (migration V15); the live ones
//! from memory (the hub, the sign-in state, the handshake admission); the database size from the
//! files' lengths. The SQL is in [`store`].

pub mod store;

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::crypto::ct_eq;
use crate::db::DbError;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every deployment status, so each series is there from the first scrape (at 0).
const DEPLOYMENT_STATUSES: [&str; 9] = [
    "awaiting_approval",
    "waiting",
    "queued",
    "running",
    "success",
    "failed",
    "superseded",
    "cancelled",
    "expired",
];
/// Every final push-webhook delivery result.
const WEBHOOK_RESULTS: [&str; 5] = ["deployed", "ignored", "duplicate", "rejected", "error"];

/// What one scrape reports (read from the database and memory, then [`render`]ed).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub deployments: Vec<(String, i64)>,
    /// Cumulative (upper bound in seconds, count); the last bound is +Inf.
    pub duration_buckets: Vec<(f64, i64)>,
    pub duration_sum_ms: i64,
    pub log_lines: i64,
    pub webhook_deliveries: Vec<(String, i64)>,
    pub agents_online: usize,
    pub browser_sockets: i64,
    pub db_bytes: u64,
    pub handshake_rejections: Vec<(&'static str, u64)>,
}

/// Read the current values.
pub async fn snapshot(state: &AppState) -> Result<Snapshot, DbError> {
    let counts = state.db.read(store::read).await?;
    let db_bytes = state.db.size_bytes().await?;
    let get = |metric: &str, label: &str| {
        counts
            .counts
            .iter()
            .find(|(m, l, _)| m == metric && l == label)
            .map_or(0, |(_, _, v)| *v)
    };
    Ok(Snapshot {
        deployments: DEPLOYMENT_STATUSES
            .iter()
            .map(|s| ((*s).to_owned(), get("deployments", s)))
            .collect(),
        duration_buckets: counts.buckets,
        duration_sum_ms: get("deploy_duration_sum_ms", ""),
        log_lines: get("log_lines", ""),
        webhook_deliveries: WEBHOOK_RESULTS
            .iter()
            .map(|r| ((*r).to_owned(), get("webhook_deliveries", r)))
            .collect(),
        agents_online: state.hub.online_count(),
        browser_sockets: state.auth.browser_sockets(),
        db_bytes,
        handshake_rejections: state
            .hub
            .admission
            .rejections()
            .iter()
            .map(|(r, n)| (r.as_str(), *n))
            .collect(),
    })
}

/// A label value, escaped as the format wants (`\`, `"` and newlines).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A bucket bound as Prometheus writes it: `+Inf` for the last.
fn bound(le: f64) -> String {
    if le >= 1e300 {
        "+Inf".into()
    } else {
        format!("{le}")
    }
}

/// The exposition text of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    head(
        &mut out,
        "stagely_deployments",
        "gauge",
        "Deployments stored, by status.",
    );
    for (status, n) in &s.deployments {
        let _ = writeln!(out, "stagely_deployments{{status=\"{}\"}} {n}", label(status));
    }
    let name = "stagely_deploy_duration_seconds";
    head(
        &mut out,
        name,
        "histogram",
        "How long finished deployments (success or failed) took, from queued to finished.",
    );
    let mut total = 0;
    for (le, n) in &s.duration_buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", bound(*le));
        total = *n;
    }
    // Milliseconds to seconds without losing the fraction.
    let sum = s.duration_sum_ms as f64 / 1000.0;
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {total}");
    head(
        &mut out,
        "stagely_agents_online",
        "gauge",
        "Agents connected now.",
    );
    let _ = writeln!(out, "stagely_agents_online {}", s.agents_online);
    head(
        &mut out,
        "stagely_websocket_connections",
        "gauge",
        "WebSocket connections open now: agents, and browsers (dashboards, live deployments).",
    );
    let _ = writeln!(
        out,
        "stagely_websocket_connections{{kind=\"agent\"}} {}",
        s.agents_online
    );
    let _ = writeln!(
        out,
        "stagely_websocket_connections{{kind=\"browser\"}} {}",
        s.browser_sockets
    );
    head(
        &mut out,
        "stagely_log_lines_stored",
        "gauge",
        "Deployment log lines stored now (retention removes old ones).",
    );
    let _ = writeln!(out, "stagely_log_lines_stored {}", s.log_lines);
    head(
        &mut out,
        "stagely_webhook_deliveries_total",
        "counter",
        "Push-webhook deliveries received, by result (pruning the delivery log does not lower it).",
    );
    for (result, n) in &s.webhook_deliveries {
        let _ = writeln!(
            out,
            "stagely_webhook_deliveries_total{{result=\"{}\"}} {n}",
            label(result)
        );
    }
    head(
        &mut out,
        "stagely_db_size_bytes",
        "gauge",
        "Size of the SQLite database on disk (the file and its write-ahead log).",
    );
    let _ = writeln!(out, "stagely_db_size_bytes {}", s.db_bytes);
    head(
        &mut out,
        "stagely_agent_handshake_rejections_total",
        "counter",
        "Agent handshakes refused since start, by reason.",
    );
    for (reason, n) in &s.handshake_rejections {
        let _ = writeln!(
            out,
            "stagely_agent_handshake_rejections_total{{reason=\"{}\"}} {n}",
            label(reason)
        );
    }
    out
}

async fn answer(state: &AppState) -> Response {
    match snapshot(state).await {
        Ok(s) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            render(&s),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the metrics");
            (StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable\n").into_response()
        }
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// True when the request carries the configured token (constant time), or none is configured.
fn token_ok(state: &AppState, headers: &HeaderMap) -> bool {
    let expected = state.config.metrics.token.expose();
    if expected.is_empty() {
        return true;
    }
    let sent = crate::agents::api::bearer(headers).unwrap_or("");
    ct_eq(sent.as_bytes(), expected.as_bytes())
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        "missing or wrong metrics token\n",
    )
        .into_response()
}

/// `GET /metrics` on the main listener: 404 unless a token is configured and no separate
/// listener is; then the bearer token is required.
pub async fn serve_main(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let m = &state.config.metrics;
    if m.listen_addr.is_some() || m.token.is_empty() {
        return not_found();
    }
    if !token_ok(&state, &headers) {
        return unauthorized();
    }
    answer(&state).await
}

/// `GET /metrics` on `metrics.listen`: open, unless a token is configured too.
async fn serve_separate(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !token_ok(&state, &headers) {
        return unauthorized();
    }
    answer(&state).await
}

/// The router of the separate metrics listener: `/metrics` and nothing else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(serve_separate))
        .fallback(|| async { not_found() })
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_has_help_and_type_and_buckets_end_at_inf() {
        let s = Snapshot {
            deployments: vec![("success".into(), 2)],
            duration_buckets: vec![(1.0, 0), (5.0, 1), (1e308, 2)],
            duration_sum_ms: 7_500,
            handshake_rejections: vec![("no_token", 3)],
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(
            text.contains("stagely_deploy_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("stagely_deploy_duration_seconds_sum 7.5\n"),
            "{text}"
        );
        assert!(
            text.contains("stagely_deploy_duration_seconds_count 2\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
            assert!(text.contains(&format!("# HELP {family} ")), "{line}");
        }
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
