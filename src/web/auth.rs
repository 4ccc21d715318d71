//! The one authorization choke point.
//!
//! Every route is registered through [`Routes::add`] together with the access it requires, so a
//! route cannot exist without an entry in the access table. One middleware looks the matched
//! route up in that table, establishes the [`Principal`] and refuses what the role may not do.
//! A route missing from the table is refused (fail closed). Tests walk the whole table.
//!
//! Project-scoped routes ([`Access::Project`]) name the least role on the project they act on
//! and how to find that project from the route's first path parameter ([`Scope`]). The
//! middleware resolves the project with one lookup, computes [`access::project_role`], refuses
//! below the minimum and hands the handler a [`ProjectAccess`] extension. When the object does
//! not exist the handler answers its 404 only to a caller whose baseline ([`access::least`])
//! meets the minimum anyway; anyone else gets the same 403 as for an existing object, so a
//! refusal never tells which ids exist.
//!
//! A principal is an API token (`Authorization: Bearer`) or a web session cookie. Requests
//! authenticated by the cookie must also come from this appliance's origin and, when they change
//! state, carry the session's CSRF token ([`csrf`]); bearer-token calls are exempt (a browser
//! never attaches a token by itself).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use axum::{RequestExt, Router};

pub use crate::access::Scope;
use crate::access::{self, ProjectAccess, ProjectRole};
use crate::app::AppState;
use crate::db::now_ms;
use crate::users::{Principal, Role, tokens};
use crate::web::csrf;
use crate::web::error::WebError;
use crate::web::session::{self, Session};

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not (health checks, sign-in pages, static assets).
    Public,
    /// An agent token, checked by the agent WebSocket handler itself.
    Agent,
    /// A signed-in user or API token with at least this role.
    Role(Role),
    /// A signed-in user or API token with at least this role on the project the route acts on,
    /// found through its first path parameter as the [`Scope`] says.
    Project(ProjectRole, Scope),
}

impl Access {
    /// As the route table test and the API document (`x-stagely-access`) spell it:
    /// `public`, `agent`, `viewer`/`member`/`admin`, `project:deployer`.
    pub fn name(self) -> String {
        match self {
            Access::Public => "public".into(),
            Access::Agent => "agent".into(),
            Access::Role(r) => r.as_str().into(),
            Access::Project(r, _) => format!("project:{}", r.as_str()),
        }
    }

    /// Whether a principal is needed (and the API document lists the security schemes).
    pub fn authenticated(self) -> bool {
        matches!(self, Access::Role(_) | Access::Project(..))
    }
}

/// One row of the access table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// A router under construction together with its access table.
pub struct Routes {
    router: Router<AppState>,
    table: Vec<RouteSpec>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }
}

impl Routes {
    /// Register `handler` for `method path`, requiring `access`.
    pub fn add<H, T>(mut self, method: Method, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        self.router = self.router.route(path, on(filter, handler));
        self.table.push(RouteSpec { method, path, access });
        self
    }

    pub fn table(&self) -> &[RouteSpec] {
        &self.table
    }

    /// The router with the choke point in front of every route.
    pub fn into_router(self, state: AppState) -> Router<AppState> {
        let table = Arc::new(
            self.table
                .into_iter()
                .map(|r| ((r.method, r.path), r.access))
                .collect(),
        );
        self.router.route_layer(axum::middleware::from_fn_with_state(
            Gate { state, table },
            authorize,
        ))
    }
}

#[derive(Clone)]
struct Gate {
    state: AppState,
    table: Arc<HashMap<(Method, &'static str), Access>>,
}

async fn authorize(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    let page = is_page(&path);
    let Some(access) = gate.table.get(&(method, path.as_str())).copied() else {
        tracing::error!(path = %path, method = %req.method(), "route is missing from the access table: refused");
        return refuse(&gate.state, WebError::Forbidden, page, &req);
    };
    let state_changing = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    match access {
        Access::Agent => next.run(req).await,
        Access::Public => {
            // Sign-in forms: a cross-site page must not sign a browser in (login CSRF).
            if state_changing && !session::same_origin(&gate.state.config, req.headers()) {
                return refuse(&gate.state, WebError::Forbidden, page, &req);
            }
            next.run(req).await
        }
        Access::Role(_) | Access::Project(..) => {
            let (principal, session) = match principal(&gate.state, req.headers()).await {
                Ok(Some(found)) => found,
                Ok(None) => return refuse(&gate.state, WebError::Unauthorized, page, &req),
                Err(e) => return refuse(&gate.state, e, page, &req),
            };
            let mut project = None;
            match access {
                Access::Role(min) if principal.role < min => {
                    return refuse(&gate.state, WebError::Forbidden, page, &req);
                }
                Access::Project(min, scope) => {
                    match project_access(&gate.state, &mut req, &principal, min, scope).await {
                        Ok(found) => project = found,
                        Err(e) => return refuse(&gate.state, e, page, &req),
                    }
                }
                _ => {}
            }
            if session.as_ref().is_some_and(|s| s.confined)
                && !session::CONFINED_PATHS.contains(&path.as_str())
            {
                // auth.require_admin_2fa: an admin signed in with a password and no two-factor
                // reaches only the enrolment pages until they enrol.
                return if page {
                    crate::web::layout::see_other("/account?done=2fa-required")
                } else {
                    WebError::ForbiddenBecause(session::CONFINED_REASON.to_owned()).into_response()
                };
            }
            if let Some(session) = &session {
                // A cookie rides along on cross-site requests; a bearer token never does. So only
                // cookie-authenticated requests need the origin and CSRF checks.
                let upgrade = req.headers().contains_key(header::UPGRADE);
                if (state_changing || upgrade) && !session::same_origin(&gate.state.config, req.headers()) {
                    tracing::warn!(path = %path, "cross-origin request with a session cookie refused");
                    return refuse(&gate.state, WebError::Forbidden, page, &req);
                }
                if state_changing {
                    req = match csrf::check(req, &session.csrf).await {
                        Ok(req) => req,
                        Err(req) => {
                            tracing::warn!(path = %path, "request without a valid CSRF token refused");
                            return refuse(&gate.state, WebError::Forbidden, page, &req);
                        }
                    };
                }
            }
            req.extensions_mut().insert(principal);
            if let Some(project) = project {
                req.extensions_mut().insert(project);
            }
            if let Some(session) = session {
                req.extensions_mut().insert(session);
            }
            next.run(req).await
        }
    }
}

/// The caller's access to the project a project-scoped route acts on: `Ok(Some)` when the
/// object exists and the caller's role there meets `min`; `Ok(None)` when it does not exist but
/// the caller's baseline meets `min` (the handler answers its 404); 403 otherwise.
async fn project_access(
    state: &AppState,
    req: &mut Request,
    principal: &Principal,
    min: ProjectRole,
    scope: Scope,
) -> Result<Option<ProjectAccess>, WebError> {
    let id = match req.extract_parts::<RawPathParams>().await {
        Ok(params) => params.iter().next().and_then(|(_, v)| v.parse::<i64>().ok()),
        Err(_) => None,
    };
    let found = match id {
        Some(id) => {
            let who = principal.clone();
            state
                .db
                .lookup(move |c| {
                    let Some(project_id) = access::store::project_of(c, scope, id)? else {
                        return Ok::<_, crate::db::DbError>(None);
                    };
                    let role = access::project_role(c, &who, project_id)?;
                    Ok(Some(ProjectAccess { project_id, role }))
                })
                .await?
        }
        None => None,
    };
    let refused = || {
        WebError::ForbiddenBecause(format!(
            "this needs the {} role on the project (or a global role that gives it)",
            min.as_str()
        ))
    };
    match found {
        Some(found) if found.role >= min => Ok(Some(found)),
        Some(_) => Err(refused()),
        None if access::least(principal) >= min => Ok(None),
        None => Err(refused()),
    }
}

/// Pages (and their WebSockets) answer refusals in HTML; the JSON API and agents in JSON.
fn is_page(path: &str) -> bool {
    !(path.starts_with("/api/") || path == "/ws/agent" || path == "/healthz" || path == "/readyz")
}

fn refuse(state: &AppState, err: WebError, page: bool, req: &Request) -> Response {
    if page {
        crate::web::layout::refusal(state, err, req)
    } else {
        err.into_response()
    }
}

/// Who is calling: an API token in `Authorization: Bearer`, or a web session cookie.
async fn principal(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(Principal, Option<Session>)>, WebError> {
    if let Some(token) = crate::agents::api::bearer(headers) {
        return Ok(tokens::authenticate(&state.db, token, now_ms())
            .await?
            .map(|p| (p, None)));
    }
    Ok(session::resolve(state, headers).await?.map(|(p, s)| (p, Some(s))))
}
