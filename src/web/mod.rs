//! The HTTP surface: one router for the JSON API, the agent WebSocket and the web pages, all
//! behind one authorization choke point ([`auth`]) and one security-headers layer.

pub mod assets;
pub mod auth;
pub mod csrf;
pub mod dashboard;
pub mod error;
pub mod layout;
pub mod openapi;
pub mod request;
pub mod serve;
pub mod session;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::access::ProjectRole;
use crate::app::AppState;
use crate::users::Role;
use crate::users::pages::{account, github, oidc, people, two_factor};
use crate::{access, agents, audit, deploys, hooks, notify, operate, projects, secrets, users};
use auth::{Access, Routes, Scope};
use error::WebError;

const VIEWER: Access = Access::Role(Role::Viewer);
const MEMBER: Access = Access::Role(Role::Member);
const ADMIN: Access = Access::Role(Role::Admin);

/// A role on the project a route acts on (issue 16), by what the route's `{id}` names.
const fn on(role: ProjectRole, scope: Scope) -> Access {
    Access::Project(role, scope)
}
const P_VIEW: Access = on(ProjectRole::Viewer, Scope::Project);
const P_DEPLOY: Access = on(ProjectRole::Deployer, Scope::Project);
const P_MAINTAIN: Access = on(ProjectRole::Maintainer, Scope::Project);
const E_VIEW: Access = on(ProjectRole::Viewer, Scope::Environment);
const E_DEPLOY: Access = on(ProjectRole::Deployer, Scope::Environment);
const E_MAINTAIN: Access = on(ProjectRole::Maintainer, Scope::Environment);
const D_VIEW: Access = on(ProjectRole::Viewer, Scope::Deployment);
const D_DEPLOY: Access = on(ProjectRole::Deployer, Scope::Deployment);
const S_VIEW: Access = on(ProjectRole::Viewer, Scope::Secret);
const S_MAINTAIN: Access = on(ProjectRole::Maintainer, Scope::Secret);
const N_VIEW: Access = on(ProjectRole::Viewer, Scope::Notification);
const N_MAINTAIN: Access = on(ProjectRole::Maintainer, Scope::Notification);

/// Every route of the appliance, each with the access it requires.
pub fn routes() -> Routes {
    use Method as M;
    Routes::default()
        .add(M::GET, "/healthz", Access::Public, healthz)
        .add(M::GET, "/readyz", Access::Public, readyz)
        // Its own bearer token (metrics.token_file), checked by the handler; 404 when it is
        // served on metrics.listen instead, or not configured (src/metrics).
        .add(M::GET, "/metrics", Access::Public, crate::metrics::serve_main)
        .add(M::GET, "/ws/agent", Access::Agent, agents::api::upgrade)
        .add(
            M::GET,
            "/agent/install.sh",
            Access::Public,
            agents::api::install_script,
        )
        .add(
            M::GET,
            "/agent/download/{target}",
            Access::Public,
            agents::api::binary,
        )
        .add(
            M::GET,
            "/agent/download/{target}/sha256",
            Access::Public,
            agents::api::checksum,
        )
        .add(
            M::GET,
            "/agent/download/{target}/sig",
            Access::Public,
            agents::api::signature,
        )
        .add(
            M::GET,
            "/agent/signing-key",
            Access::Public,
            agents::api::signing_key,
        )
        .add(M::GET, "/api/openapi.json", Access::Public, openapi::serve)
        .add(M::GET, "/api/projects", VIEWER, projects::api::list)
        .add(M::POST, "/api/projects", MEMBER, projects::api::create)
        .add(M::GET, "/api/projects/{id}", P_VIEW, projects::api::get)
        .add(M::PATCH, "/api/projects/{id}", P_MAINTAIN, projects::api::patch)
        .add(M::DELETE, "/api/projects/{id}", ADMIN, projects::api::delete)
        .add(
            M::POST,
            "/api/projects/{id}/environments",
            P_MAINTAIN,
            projects::api::add_environment,
        )
        .add(
            M::GET,
            "/api/environments/{id}",
            E_VIEW,
            projects::api::get_environment,
        )
        .add(
            M::PATCH,
            "/api/environments/{id}",
            E_MAINTAIN,
            projects::api::patch_environment,
        )
        .add(
            M::DELETE,
            "/api/environments/{id}",
            ADMIN,
            projects::api::delete_environment,
        )
        .add(
            M::GET,
            "/api/environments/{id}/runtime",
            E_VIEW,
            crate::runtime::api::get,
        )
        .add(
            M::GET,
            "/api/environments/{id}/services/{service}/logs",
            E_DEPLOY,
            crate::operate::logs_api::get,
        )
        // Issue 15: lifecycle actions through the environment's agents (src/operate).
        .add(
            M::POST,
            "/api/environments/{id}/services/{service}/restart",
            E_DEPLOY,
            operate::actions_api::restart,
        )
        .add(
            M::POST,
            "/api/environments/{id}/services/{service}/stop",
            E_DEPLOY,
            operate::actions_api::stop,
        )
        .add(
            M::POST,
            "/api/environments/{id}/services/{service}/start",
            E_DEPLOY,
            operate::actions_api::start,
        )
        .add(
            M::POST,
            "/api/environments/{id}/down",
            E_MAINTAIN,
            operate::actions_api::down,
        )
        .add(M::GET, "/api/projects/{id}/secrets", P_VIEW, secrets::api::list)
        .add(
            M::POST,
            "/api/projects/{id}/secrets",
            P_MAINTAIN,
            secrets::api::create,
        )
        .add(M::PUT, "/api/secrets/{id}", S_MAINTAIN, secrets::api::update)
        .add(M::DELETE, "/api/secrets/{id}", S_MAINTAIN, secrets::api::delete)
        .add(
            M::GET,
            "/api/secrets/{id}/versions",
            S_VIEW,
            secrets::api::versions,
        )
        .add(
            M::POST,
            "/api/environments/{id}/agents",
            ADMIN,
            agents::api::create,
        )
        .add(M::GET, "/api/agents", VIEWER, agents::api::list)
        .add(M::DELETE, "/api/agents/{id}", ADMIN, agents::api::delete)
        .add(
            M::POST,
            "/api/agents/{id}/identity/reset",
            ADMIN,
            agents::api::reset_identity,
        )
        .add(
            M::GET,
            "/api/projects/{id}/notifications",
            P_VIEW,
            notify::api::list,
        )
        .add(
            M::POST,
            "/api/projects/{id}/notifications",
            P_MAINTAIN,
            notify::api::create,
        )
        .add(
            M::DELETE,
            "/api/notifications/{id}",
            N_MAINTAIN,
            notify::api::delete,
        )
        .add(
            M::GET,
            "/api/notifications/{id}/deliveries",
            N_VIEW,
            notify::api::deliveries,
        )
        .add(
            M::POST,
            "/api/notifications/{id}/test",
            N_MAINTAIN,
            notify::api::test,
        )
        // Push webhooks: public, authenticated by the signature over the body (src/hooks).
        // Rotating the secret is for the project's maintainers.
        // Issue 16: a project's members (src/access).
        .add(M::GET, "/api/projects/{id}/members", P_VIEW, access::api::list)
        .add(
            M::PUT,
            "/api/projects/{id}/members/{user_id}",
            P_MAINTAIN,
            access::api::put,
        )
        .add(
            M::DELETE,
            "/api/projects/{id}/members/{user_id}",
            P_MAINTAIN,
            access::api::delete,
        )
        .add(M::GET, "/api/projects/{id}/webhook", P_VIEW, hooks::api::get)
        .add(
            M::POST,
            "/api/projects/{id}/webhook",
            P_MAINTAIN,
            hooks::api::rotate,
        )
        .add(
            M::POST,
            "/api/hooks/github/{project_id}",
            Access::Public,
            hooks::api::github,
        )
        .add(
            M::POST,
            "/api/hooks/gitlab/{project_id}",
            Access::Public,
            hooks::api::gitlab,
        )
        .add(
            M::POST,
            "/api/hooks/gitea/{project_id}",
            Access::Public,
            hooks::api::gitea,
        )
        .add(
            M::POST,
            "/api/deploy/{project_id}",
            P_DEPLOY,
            deploys::api::deploy,
        )
        .add(M::GET, "/api/deployments", VIEWER, deploys::api::list)
        .add(M::GET, "/api/deployments/{id}", D_VIEW, deploys::api::get)
        .add(M::GET, "/api/deployments/{id}/logs", D_VIEW, deploys::api::logs)
        .add(
            M::POST,
            "/api/deployments/{id}/cancel",
            D_DEPLOY,
            deploys::api::cancel,
        )
        .add(
            M::POST,
            "/api/account/password",
            VIEWER,
            users::api::change_password,
        )
        .add(
            M::POST,
            "/api/deployments/{id}/redeploy",
            D_DEPLOY,
            deploys::api::redeploy,
        )
        // Deployers of the project pass the gate; who may approve (protection, not the author)
        // is checked in src/deploys/approval.
        .add(
            M::POST,
            "/api/deployments/{id}/approve",
            D_DEPLOY,
            deploys::api::approve,
        )
        .add(
            M::POST,
            "/api/deployments/{id}/reject",
            D_DEPLOY,
            deploys::api::reject,
        )
        // --- web UI: signing in -----------------------------------------------------------------
        .add(M::GET, "/assets/{*path}", Access::Public, assets::serve)
        .add(M::GET, "/login", Access::Public, users::pages::login_page)
        .add(M::POST, "/login", Access::Public, users::pages::login_submit)
        // The second sign-in step: the challenge cookie is checked by the handler.
        .add(
            M::GET,
            "/login/2fa",
            Access::Public,
            users::pages::second_step::page,
        )
        .add(
            M::POST,
            "/login/2fa",
            Access::Public,
            users::pages::second_step::submit,
        )
        .add(M::GET, "/setup", Access::Public, users::pages::setup_page)
        .add(M::POST, "/setup", Access::Public, users::pages::setup_submit)
        .add(M::GET, "/invite", Access::Public, users::pages::invite_page)
        .add(M::POST, "/invite", Access::Public, users::pages::invite_submit)
        .add(M::GET, "/reset", Access::Public, users::pages::reset_page)
        .add(M::POST, "/reset", Access::Public, users::pages::reset_submit)
        .add(M::GET, "/auth/github", Access::Public, github::start)
        .add(M::GET, "/auth/github/callback", Access::Public, github::callback)
        .add(M::GET, "/auth/oidc/{name}", Access::Public, oidc::start)
        .add(
            M::GET,
            "/auth/oidc/{name}/callback",
            Access::Public,
            oidc::callback,
        )
        .add(M::POST, "/logout", VIEWER, users::pages::logout)
        .add(M::GET, "/account", VIEWER, account::account_page)
        .add(M::POST, "/account/github", VIEWER, github::start_link)
        .add(M::POST, "/account/github/unlink", VIEWER, account::unlink_github)
        .add(M::POST, "/account/password", VIEWER, account::change_password)
        .add(M::GET, "/account/2fa", VIEWER, two_factor::enrol_page)
        .add(M::POST, "/account/2fa/start", VIEWER, two_factor::start)
        .add(M::POST, "/account/2fa/confirm", VIEWER, two_factor::confirm)
        .add(M::POST, "/account/2fa/recovery", VIEWER, two_factor::regenerate)
        .add(M::POST, "/account/2fa/disable", VIEWER, two_factor::disable)
        .add(
            M::POST,
            "/account/sessions/end",
            VIEWER,
            account::sign_out_everywhere,
        )
        .add(M::GET, "/tokens", VIEWER, account::tokens_page)
        .add(M::POST, "/tokens", VIEWER, account::create_token)
        .add(M::POST, "/tokens/{id}/revoke", VIEWER, account::revoke_token)
        // --- web UI: pages ----------------------------------------------------------------------
        .add(M::GET, "/", VIEWER, dashboard::dashboard_page)
        .add(M::GET, "/ws/dashboard", VIEWER, dashboard::dashboard_socket)
        .add(M::GET, "/projects", VIEWER, projects::pages::list_page)
        .add(M::POST, "/projects", MEMBER, projects::pages::create)
        .add(M::GET, "/projects/{id}", P_VIEW, projects::tabs::overview_page)
        .add(
            M::GET,
            "/projects/{id}/deployments",
            P_VIEW,
            projects::tabs::deployments_page,
        )
        .add(
            M::GET,
            "/projects/{id}/secrets",
            P_VIEW,
            projects::tabs::secrets_page,
        )
        .add(
            M::GET,
            "/projects/{id}/agents",
            P_VIEW,
            projects::tabs::agents_page,
        )
        .add(
            M::GET,
            "/projects/{id}/settings",
            P_VIEW,
            projects::tabs::settings_page,
        )
        .add(M::POST, "/projects/{id}", P_MAINTAIN, projects::pages::update)
        .add(
            M::POST,
            "/projects/{id}/environments",
            P_MAINTAIN,
            projects::pages::add_environment,
        )
        .add(
            M::POST,
            "/environments/{id}/retention",
            E_MAINTAIN,
            projects::pages::set_retention,
        )
        .add(
            M::POST,
            "/environments/{id}/triggers",
            E_MAINTAIN,
            projects::pages::set_triggers,
        )
        .add(
            M::POST,
            "/environments/{id}/rollback",
            E_MAINTAIN,
            projects::pages::set_auto_rollback,
        )
        .add(
            M::POST,
            "/environments/{id}/services/{service}/{action}",
            E_DEPLOY,
            operate::actions_pages::service_action,
        )
        .add(
            M::POST,
            "/environments/{id}/protection",
            ADMIN,
            crate::protect::pages::save,
        )
        .add(
            M::POST,
            "/environments/{id}/down",
            E_MAINTAIN,
            operate::actions_pages::down,
        )
        .add(
            M::POST,
            "/environments/{id}/delete",
            ADMIN,
            operate::delete_pages::delete_environment,
        )
        .add(
            M::POST,
            "/projects/{id}/delete",
            ADMIN,
            operate::delete_pages::delete_project,
        )
        .add(
            M::POST,
            "/projects/{id}/webhook",
            P_MAINTAIN,
            hooks::pages::rotate,
        )
        .add(M::POST, "/projects/{id}/members", P_MAINTAIN, access::pages::add)
        .add(
            M::POST,
            "/projects/{id}/members/{user_id}",
            P_MAINTAIN,
            access::pages::change,
        )
        .add(
            M::POST,
            "/projects/{id}/members/{user_id}/delete",
            P_MAINTAIN,
            access::pages::remove,
        )
        .add(
            M::POST,
            "/projects/{id}/secrets",
            P_MAINTAIN,
            secrets::pages::create,
        )
        .add(M::POST, "/secrets/{id}", S_MAINTAIN, secrets::pages::update)
        .add(
            M::POST,
            "/secrets/{id}/delete",
            S_MAINTAIN,
            secrets::pages::delete,
        )
        .add(
            M::GET,
            "/projects/{id}/notifications",
            P_VIEW,
            notify::pages::notifications_page,
        )
        .add(
            M::POST,
            "/projects/{id}/notifications",
            P_MAINTAIN,
            notify::pages::create,
        )
        .add(
            M::POST,
            "/notifications/{id}/delete",
            N_MAINTAIN,
            notify::pages::delete,
        )
        .add(
            M::POST,
            "/notifications/{id}/test",
            N_MAINTAIN,
            notify::pages::test,
        )
        .add(M::POST, "/projects/{id}/deploy", P_DEPLOY, deploys::pages::deploy)
        .add(
            M::POST,
            "/deployments/{id}/cancel",
            D_DEPLOY,
            deploys::pages::cancel,
        )
        .add(
            M::POST,
            "/deployments/{id}/redeploy",
            D_DEPLOY,
            deploys::pages::redeploy,
        )
        .add(
            M::POST,
            "/deployments/{id}/approve",
            D_DEPLOY,
            deploys::pages::approval::approve,
        )
        .add(
            M::POST,
            "/deployments/{id}/reject",
            D_DEPLOY,
            deploys::pages::approval::reject,
        )
        .add(
            M::GET,
            "/deployments/{id}",
            D_VIEW,
            deploys::pages::deployment_page,
        )
        .add(
            M::GET,
            "/ws/deployments/{id}",
            D_VIEW,
            deploys::pages::live::live_socket,
        )
        .add(
            M::GET,
            "/environments/{id}/services/{service}/logs",
            E_DEPLOY,
            crate::operate::logs_pages::logs_page,
        )
        .add(
            M::GET,
            "/ws/environments/{id}/services/{service}/logs",
            E_DEPLOY,
            crate::operate::logs_api::socket,
        )
        .add(M::GET, "/agents", VIEWER, agents::pages::agents_page)
        .add(M::POST, "/agents", ADMIN, agents::pages::create)
        .add(M::GET, "/agents/{id}", VIEWER, agents::pages::agent_page)
        .add(M::GET, "/agents/{id}/created", ADMIN, agents::pages::created_page)
        .add(M::POST, "/agents/{id}/revoke", ADMIN, agents::pages::revoke)
        .add(M::POST, "/agents/{id}/delete", ADMIN, agents::pages::delete)
        .add(
            M::POST,
            "/agents/{id}/identity/reset",
            ADMIN,
            agents::pages::reset_identity,
        )
        .add(M::GET, "/users", ADMIN, people::users_page)
        .add(M::POST, "/users/invite", ADMIN, people::invite)
        .add(M::POST, "/users/{id}/role", ADMIN, people::change_role)
        .add(M::POST, "/users/{id}/disable", ADMIN, people::set_disabled)
        .add(M::POST, "/users/{id}/github", ADMIN, people::link_github)
        .add(M::POST, "/users/{id}/sessions/end", ADMIN, people::end_sessions)
        .add(M::POST, "/invites/{id}/revoke", ADMIN, people::revoke_invite)
        .add(M::POST, "/users/{id}/reset", ADMIN, people::issue_reset)
        .add(M::POST, "/users/{id}/2fa/reset", ADMIN, two_factor::admin_reset)
        .add(M::POST, "/resets/{id}/revoke", ADMIN, people::revoke_reset)
        .add(M::GET, "/audit", ADMIN, audit::pages::audit_page)
        .add(M::GET, "/api/audit", ADMIN, audit::api::list)
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    routes()
        .into_router(state.clone())
        .fallback(not_found)
        // Router::layer wraps each route (and the fallback), so the route is matched by the time
        // the request context reads it; it is outside the authorization gate (route_layer).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request::context,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Serve the router on `listener` until `shutdown` resolves, then let in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Client addresses (ConnectInfo) are needed for the per-address limits and trusted proxies;
    // serve::serve adds them, with the connection timeouts and the per-address cap.
    // A reverse proxy is capped like anyone (loopback is trusted by default, and an uncapped
    // local client could exhaust the descriptors): docs/operations.md says to keep the cap above
    // the proxy's connection pool.
    let limits = state.config.http.clone();
    serve::serve(listener, router(state), &limits, shutdown).await
}

/// Unknown paths: JSON under `/api/`, a styled page everywhere else.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        WebError::NotFound("page").into_response()
    } else {
        layout::error_page(WebError::NotFound("page"))
    }
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
