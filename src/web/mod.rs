//! The HTTP surface: one router for the JSON API, the agent WebSocket and (later) the pages,
//! all behind one authorization choke point ([`auth`]) and one security-headers layer.

pub mod auth;
pub mod error;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::users::Role;
use crate::{agents, deploys, projects, secrets};
use auth::{Access, Routes};
use error::WebError;

const VIEWER: Access = Access::Role(Role::Viewer);
const MEMBER: Access = Access::Role(Role::Member);
const ADMIN: Access = Access::Role(Role::Admin);

/// Every route of the appliance, each with the access it requires.
pub fn routes() -> Routes {
    use Method as M;
    Routes::default()
        .add(M::GET, "/healthz", Access::Public, healthz)
        .add(M::GET, "/readyz", Access::Public, readyz)
        .add(M::GET, "/ws/agent", Access::Agent, agents::socket::upgrade)
        .add(
            M::GET,
            "/agent/install.sh",
            Access::Public,
            agents::download::install_script,
        )
        .add(
            M::GET,
            "/agent/download/{target}",
            Access::Public,
            agents::download::binary,
        )
        .add(
            M::GET,
            "/agent/download/{target}/sha256",
            Access::Public,
            agents::download::checksum,
        )
        .add(M::GET, "/api/projects", VIEWER, projects::api::list)
        .add(M::POST, "/api/projects", MEMBER, projects::api::create)
        .add(M::GET, "/api/projects/{id}", VIEWER, projects::api::get)
        .add(M::PATCH, "/api/projects/{id}", MEMBER, projects::api::patch)
        .add(M::DELETE, "/api/projects/{id}", ADMIN, projects::api::delete)
        .add(
            M::POST,
            "/api/projects/{id}/environments",
            MEMBER,
            projects::api::add_environment,
        )
        .add(
            M::DELETE,
            "/api/environments/{id}",
            ADMIN,
            projects::api::delete_environment,
        )
        .add(M::GET, "/api/projects/{id}/secrets", VIEWER, secrets::api::list)
        .add(
            M::POST,
            "/api/projects/{id}/secrets",
            MEMBER,
            secrets::api::create,
        )
        .add(M::PUT, "/api/secrets/{id}", MEMBER, secrets::api::update)
        .add(M::DELETE, "/api/secrets/{id}", MEMBER, secrets::api::delete)
        .add(
            M::POST,
            "/api/environments/{id}/agents",
            ADMIN,
            agents::api::create,
        )
        .add(M::GET, "/api/agents", VIEWER, agents::api::list)
        .add(M::DELETE, "/api/agents/{id}", ADMIN, agents::api::delete)
        .add(M::POST, "/api/deploy/{project_id}", MEMBER, deploys::api::deploy)
        .add(M::GET, "/api/deployments", VIEWER, deploys::api::list)
        .add(M::GET, "/api/deployments/{id}", VIEWER, deploys::api::get)
        .add(M::GET, "/api/deployments/{id}/logs", VIEWER, deploys::api::logs)
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    routes()
        .into_router(state.clone())
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn not_found() -> Response {
    WebError::NotFound("page").into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.db.ping().await {
        Ok(migrations) if migrations > 0 => (StatusCode::OK, "ready\n").into_response(),
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, "migrations not applied\n").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

/// No inline script, no framing, no sniffing, no referrer leaks: on every response.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: &'static str, value: &'static str| {
        h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "same-origin");
    set(headers, "x-frame-options", "DENY");
    response
}
