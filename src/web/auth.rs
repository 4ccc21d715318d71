//! The one authorization choke point.
//!
//! Every route is registered through [`Routes::add`] together with the access it requires, so a
//! route cannot exist without an entry in the access table. One middleware looks the matched
//! route up in that table, establishes the [`Principal`] and refuses what the role may not do.
//! A route missing from the table is refused (fail closed). Tests walk the whole table.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};

use crate::app::AppState;
use crate::db::now_ms;
use crate::users::{Principal, Role, tokens};
use crate::web::error::WebError;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not (health checks, sign-in pages, static assets).
    Public,
    /// An agent token, checked by the agent WebSocket handler itself.
    Agent,
    /// A signed-in user or API token with at least this role.
    Role(Role),
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
    let Some(access) = gate.table.get(&(method, path.as_str())).copied() else {
        tracing::error!(path = %path, method = %req.method(), "route is missing from the access table: refused");
        return WebError::Forbidden.into_response();
    };
    match access {
        Access::Public | Access::Agent => next.run(req).await,
        Access::Role(min) => match principal(&gate.state, req.headers()).await {
            Ok(Some(p)) if p.role >= min => {
                req.extensions_mut().insert(p);
                next.run(req).await
            }
            Ok(Some(_)) => WebError::Forbidden.into_response(),
            Ok(None) => WebError::Unauthorized.into_response(),
            Err(e) => e.into_response(),
        },
    }
}

/// Who is calling: an API token in `Authorization: Bearer`.
async fn principal(state: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, WebError> {
    if let Some(token) = crate::agents::socket::bearer(headers) {
        return Ok(tokens::authenticate(&state.db, token, now_ms()).await?);
    }
    Ok(None)
}
