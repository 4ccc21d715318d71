//! `GET /api/openapi.json`: the API contract, an OpenAPI 3.1 document.
//!
//! The paths and their auth requirements come from the route table itself ([`super::routes`]),
//! so a route cannot exist without being listed; the request and response schemas come from the
//! handlers' own types (`#[derive(utoipa::ToSchema)]` next to `Serialize`/`Deserialize`), named
//! per route in [`contract`]. A test checks that every `/api/` route has a contract entry and
//! that the document states its access.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::{Access, RouteSpec};
use super::error::ErrorBody;
use crate::access::api::{MemberInfo, MemberInput, MemberList};
use crate::agents::AgentInfo;
use crate::agents::api::NewAgent;
use crate::agents::ops::CreatedAgent;
use crate::deploys::api::{DeployAccepted, DeployRequest, RedeployAccepted};
use crate::deploys::{Deployment, LogLine};
use crate::hooks::WebhookInfo;
use crate::hooks::api::NewWebhook;
use crate::hooks::ops::Handled;
use crate::notify::api::TestQueued;
use crate::notify::{ChannelInfo, ChannelInput, Created, Delivery};
use crate::projects::{Environment, EnvironmentInput, EnvironmentPatch, Project, ProjectInput, ProjectPatch};
use crate::secrets::store::VersionInfo;
use crate::secrets::{NewValue, SecretInfo, SecretInput};
use crate::users::api::{PasswordChanged, PasswordInput};

/// A JSON body: a named schema, or an array of one.
#[derive(Debug, Clone)]
pub struct Body {
    schema: Cow<'static, str>,
    array: bool,
}

/// What one API route takes and answers.
#[derive(Debug, Clone)]
pub struct Contract {
    pub summary: &'static str,
    pub request: Option<Body>,
    /// The success status and its body (`None`: no body).
    pub ok: (u16, Option<Body>),
    /// Query parameters: name, type (`integer`, `string`, `boolean`), description.
    pub query: Vec<(&'static str, &'static str, &'static str)>,
}

/// Collects the schemas the contracts name.
#[derive(Default)]
pub struct Schemas(BTreeMap<String, Value>);

impl Schemas {
    fn one<T: ToSchema>(&mut self) -> Body {
        self.add::<T>();
        Body {
            schema: T::name(),
            array: false,
        }
    }

    fn many<T: ToSchema>(&mut self) -> Body {
        Body {
            array: true,
            ..self.one::<T>()
        }
    }

    fn add<T: ToSchema>(&mut self) {
        let mut nested = Vec::new();
        T::schemas(&mut nested);
        for (name, schema) in nested {
            self.0.insert(name, to_json(&schema));
        }
        self.0.insert(T::name().into_owned(), to_json(&T::schema()));
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn op(summary: &'static str, status: u16, body: Option<Body>) -> Contract {
    Contract {
        summary,
        request: None,
        ok: (status, body),
        query: Vec::new(),
    }
}

impl Contract {
    fn takes(mut self, body: Body) -> Self {
        self.request = Some(body);
        self
    }

    fn query(mut self, name: &'static str, kind: &'static str, about: &'static str) -> Self {
        self.query.push((name, kind, about));
        self
    }
}

/// The contract of one `/api/` route, by the types its handler takes and returns. `None` for a
/// route nobody described (the test refuses that).
pub fn contract(method: &Method, path: &str, s: &mut Schemas) -> Option<Contract> {
    let c = match (method.as_str(), path) {
        ("GET", "/api/openapi.json") => op("This document", 200, None),
        ("GET", "/api/projects") => op(
            "List projects with their environments",
            200,
            Some(s.many::<Project>()),
        ),
        ("POST", "/api/projects") => {
            op("Create a project", 201, Some(s.one::<Project>())).takes(s.one::<ProjectInput>())
        }
        ("GET", "/api/projects/{id}") => op("A project", 200, Some(s.one::<Project>())),
        ("PATCH", "/api/projects/{id}") => {
            op("Change a project", 200, Some(s.one::<Project>())).takes(s.one::<ProjectPatch>())
        }
        ("DELETE", "/api/projects/{id}") => op(
            "Delete a project; each environment's stack is taken down through its agents first",
            204,
            None,
        )
        .query(
            "stack_removed",
            "boolean",
            "the stack was taken down on the target by hand",
        )
        .query(
            "force",
            "boolean",
            "admin: delete even though an agent is offline (its stack is left running)",
        ),
        ("POST", "/api/projects/{id}/environments") => {
            op("Add an environment", 201, Some(s.one::<Environment>())).takes(s.one::<EnvironmentInput>())
        }
        ("GET", "/api/environments/{id}") => op("An environment", 200, Some(s.one::<Environment>())),
        ("PATCH", "/api/environments/{id}") => {
            op("Change an environment", 200, Some(s.one::<Environment>())).takes(s.one::<EnvironmentPatch>())
        }
        ("DELETE", "/api/environments/{id}") => op(
            "Delete an environment; its stack is taken down through its agents first",
            204,
            None,
        )
        .query(
            "stack_removed",
            "boolean",
            "the stack was taken down on the target by hand",
        )
        .query(
            "force",
            "boolean",
            "admin: delete even though an agent is offline (its stack is left running)",
        ),
        ("POST", "/api/environments/{id}/services/{service}/restart") => op(
            "Restart a service through the environment's agents",
            200,
            Some(s.one::<crate::operate::actions::ActionOutcome>()),
        ),
        ("POST", "/api/environments/{id}/services/{service}/stop") => op(
            "Stop a service through the environment's agents",
            200,
            Some(s.one::<crate::operate::actions::ActionOutcome>()),
        ),
        ("POST", "/api/environments/{id}/services/{service}/start") => op(
            "Start a stopped service through the environment's agents",
            200,
            Some(s.one::<crate::operate::actions::ActionOutcome>()),
        ),
        ("POST", "/api/environments/{id}/down") => op(
            "Take an environment down (compose down, volumes kept) through its agents",
            200,
            Some(s.one::<crate::operate::actions::ActionOutcome>()),
        ),
        ("GET", "/api/environments/{id}/runtime") => op(
            "What runs in an environment and its drift from the last release",
            200,
            Some(s.one::<crate::runtime::Runtime>()),
        ),
        ("GET", "/api/environments/{id}/services/{service}/logs") => op(
            "A service's last container log lines, from its agent, masked (never stored)",
            200,
            Some(s.one::<crate::operate::logs_api::ContainerLog>()),
        )
        .query("tail", "integer", "lines, 1 to 5000 (default 100)"),
        ("GET", "/api/projects/{id}/secrets") => op(
            "A project's secrets (never a value)",
            200,
            Some(s.many::<SecretInfo>()),
        ),
        ("POST", "/api/projects/{id}/secrets") => {
            op("Create a secret", 201, Some(s.one::<SecretInfo>())).takes(s.one::<SecretInput>())
        }
        ("PUT", "/api/secrets/{id}") => {
            op("Replace a secret's value", 200, Some(s.one::<SecretInfo>())).takes(s.one::<NewValue>())
        }
        ("DELETE", "/api/secrets/{id}") => op("Delete a secret", 204, None),
        ("GET", "/api/secrets/{id}/versions") => op(
            "A secret's kept versions, newest first (who and when, never a value)",
            200,
            Some(s.many::<VersionInfo>()),
        ),
        ("POST", "/api/environments/{id}/agents") => op(
            "Create an agent (its token is shown once)",
            201,
            Some(s.one::<CreatedAgent>()),
        )
        .takes(s.one::<NewAgent>()),
        ("GET", "/api/agents") => op("List agents", 200, Some(s.many::<AgentInfo>())),
        ("GET", "/api/audit") => op(
            "The audit log, newest first (admin)",
            200,
            Some(s.many::<crate::audit::AuditEntry>()),
        )
        .query("project", "integer", "only entries about this project (by id; kept after it is deleted)")
        .query("actor", "string", "only entries by this actor (`token:ci`, `cli`; a bare name also matches `user:<name>`)")
        .query("before", "integer", "entries older than this id (paging)")
        .query("limit", "integer", "at most this many entries (1 to 500, default 100)"),
        ("DELETE", "/api/agents/{id}") => op(
            "Revoke an agent; an agent already revoked is deleted",
            204,
            None,
        ),
        ("POST", "/api/agents/{id}/identity/reset") => op("Forget an agent's pinned identity", 204, None),
        ("POST", "/api/deploy/{project_id}") => {
            op("Deploy an environment", 202, Some(s.one::<DeployAccepted>())).takes(s.one::<DeployRequest>())
        }
        ("GET", "/api/deployments") => op("Deployments, newest first", 200, Some(s.many::<Deployment>()))
            .query("environment_id", "integer", "only this environment's")
            .query("limit", "integer", "at most this many (1-500, default 50)"),
        ("POST", "/api/deployments/{id}/cancel") => op(
            "Cancel a deployment (waiting: at once; running: the agent is told to stop)",
            202,
            Some(s.one::<DeployAccepted>()),
        ),
        ("POST", "/api/deployments/{id}/redeploy") => op(
            "Redeploy a deployment's release: its commit, secret versions and pinned images",
            201,
            Some(s.one::<RedeployAccepted>()),
        ),
        ("POST", "/api/deployments/{id}/approve") => op(
            "Approve a deployment awaiting approval (not your own): it joins the environment's queue",
            200,
            Some(s.one::<DeployAccepted>()),
        ),
        ("POST", "/api/deployments/{id}/reject") => op(
            "Reject a deployment awaiting approval: it ends cancelled",
            200,
            Some(s.one::<DeployAccepted>()),
        ),
        ("GET", "/api/deployments/{id}") => op(
            "A deployment, with its approval and the approver's diff (never a value)",
            200,
            Some(s.one::<Deployment>()),
        ),
        ("GET", "/api/deployments/{id}/logs") => op(
            "One page of a deployment's log, masked",
            200,
            Some(s.many::<LogLine>()),
        )
        .query("after_seq", "integer", "only lines after this seq")
        .query("after", "integer", "the older name of after_seq")
        .query("limit", "integer", "lines per page (1-5,000, default 1,000)"),
        ("GET", "/api/projects/{id}/notifications") => op(
            "A project's notification channels (never a URL or password)",
            200,
            Some(s.many::<ChannelInfo>()),
        ),
        ("POST", "/api/projects/{id}/notifications") => op(
            "Add a channel (a webhook's signing secret is shown once)",
            201,
            Some(s.one::<Created>()),
        )
        .takes(s.one::<ChannelInput>()),
        ("DELETE", "/api/notifications/{id}") => op("Delete a channel", 204, None),
        ("GET", "/api/notifications/{id}/deliveries") => op(
            "A channel's delivery log, newest first",
            200,
            Some(s.many::<Delivery>()),
        ),
        ("POST", "/api/notifications/{id}/test") => {
            op("Send a test notice", 202, Some(s.one::<TestQueued>()))
        }
        ("GET", "/api/projects/{id}/webhook") => op(
            "The project's push webhook: URLs and the last deliveries (never the secret)",
            200,
            Some(s.one::<WebhookInfo>()),
        ),
        ("POST", "/api/projects/{id}/webhook") => op(
            "Create or rotate the webhook secret (shown once)",
            201,
            Some(s.one::<NewWebhook>()),
        ),
        ("GET", "/api/projects/{id}/members") => op(
            "The project's members: every project role granted on it, with each person's effective role",
            200,
            Some(s.one::<MemberList>()),
        ),
        ("PUT", "/api/projects/{id}/members/{user_id}") => op(
            "Grant or change a person's manual role on the project (admins and the project's maintainers; not on oneself)",
            200,
            Some(s.one::<MemberInfo>()),
        )
        .takes(s.one::<MemberInput>()),
        ("DELETE", "/api/projects/{id}/members/{user_id}") => op(
            "Remove a person's manual role on the project",
            204,
            None,
        ),
        ("POST", "/api/account/password") => op(
            "Change your own password (the current one required); your other sessions end",
            200,
            Some(s.one::<PasswordChanged>()),
        )
        .takes(s.one::<PasswordInput>()),
        ("POST", "/api/hooks/github/{project_id}") => op(
            "GitHub push receiver: X-Hub-Signature-256 over the raw body, X-GitHub-Event, X-GitHub-Delivery",
            202,
            Some(s.one::<Handled>()),
        )
        .takes(s.one::<Value>()),
        ("POST", "/api/hooks/gitlab/{project_id}") => op(
            "GitLab push receiver: X-Gitlab-Token, X-Gitlab-Event, X-Gitlab-Event-UUID",
            202,
            Some(s.one::<Handled>()),
        )
        .takes(s.one::<Value>()),
        ("POST", "/api/hooks/gitea/{project_id}") => op(
            "Gitea/Forgejo push receiver: X-Gitea-Signature (hex HMAC-SHA256), X-Gitea-Event, X-Gitea-Delivery",
            202,
            Some(s.one::<Handled>()),
        )
        .takes(s.one::<Value>()),
        _ => return None,
    };
    Some(c)
}

/// Who may call a route, as the document says it (`x-stagely-access`): `viewer`, `member`,
/// `admin`, or `project:<role>` for a role on the project the route acts on.
pub fn access_name(access: Access) -> String {
    access.name()
}

fn body_schema(body: &Body) -> Value {
    let one = json!({ "$ref": format!("#/components/schemas/{}", body.schema) });
    if body.array {
        json!({ "type": "array", "items": one })
    } else {
        one
    }
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let kind = if name == "id" || name.ends_with("_id") {
                "integer"
            } else {
                "string"
            };
            json!({ "name": name, "in": "path", "required": true, "schema": { "type": kind } })
        })
        .collect()
}

fn operation(spec: &RouteSpec, contract: Option<Contract>) -> Value {
    let access = access_name(spec.access);
    let mut parameters = path_parameters(spec.path);
    let mut responses = serde_json::Map::new();
    let mut op = serde_json::Map::new();
    op.insert(
        "operationId".into(),
        json!(format!(
            "{}_{}",
            spec.method.as_str().to_ascii_lowercase(),
            spec.path
                .trim_start_matches("/api/")
                .replace(['/', '{', '}', '.'], "_")
        )),
    );
    op.insert("x-stagely-access".into(), json!(access));
    op.insert(
        "security".into(),
        if spec.access.authenticated() {
            json!([{ "token": [] }, { "session": [] }])
        } else {
            json!([{}])
        },
    );
    if let Some(c) = contract {
        op.insert("summary".into(), json!(c.summary));
        for (name, kind, about) in &c.query {
            parameters.push(json!({
                "name": name, "in": "query", "required": false,
                "description": about, "schema": { "type": kind },
            }));
        }
        if let Some(body) = &c.request {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": body_schema(body) } } }),
            );
        }
        let (status, body) = &c.ok;
        let mut ok = serde_json::Map::new();
        ok.insert("description".into(), json!("success"));
        if let Some(body) = body {
            ok.insert(
                "content".into(),
                json!({ "application/json": { "schema": body_schema(body) } }),
            );
        }
        responses.insert(status.to_string(), Value::Object(ok));
    }
    let error = json!({
        "description": "an error (docs/api.md lists the codes)",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    });
    if spec.access.authenticated() {
        responses.insert(
            "401".into(),
            json!({ "$ref": "#/components/responses/Unauthenticated" }),
        );
        responses.insert(
            "403".into(),
            json!({ "$ref": "#/components/responses/Forbidden" }),
        );
    }
    responses.insert("default".into(), error);
    op.insert("parameters".into(), Value::Array(parameters));
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// The whole document for a route table.
pub fn document(table: &[RouteSpec]) -> Value {
    let mut schemas = Schemas::default();
    schemas.add::<ErrorBody>();
    let mut paths: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for spec in table.iter().filter(|r| r.path.starts_with("/api/")) {
        let contract = contract(&spec.method, spec.path, &mut schemas);
        paths.entry(spec.path).or_default().insert(
            spec.method.as_str().to_ascii_lowercase(),
            operation(spec, contract),
        );
    }
    let error = |what: &str| {
        json!({
            "description": what,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Stagely API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The appliance's JSON API (docs/api.md). Each operation's `x-stagely-access` \
                names the least role it needs (viewer < member < admin), or `public`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.0,
            "securitySchemes": {
                "token": { "type": "http", "scheme": "bearer", "description": "an API token (`stagely admin create-token`, or /tokens)" },
                "session": { "type": "apiKey", "in": "cookie", "name": "stagely_session",
                             "description": "the web session (`__Host-stagely_session` over HTTPS); state-changing calls also need the CSRF header" },
            },
            "responses": {
                "Unauthenticated": error("no valid token or session"),
                "Forbidden": error("the caller's role may not do this"),
            },
        },
    })
}

/// `GET /api/openapi.json` (public: the contract is no secret, and tools fetch it unsigned).
pub async fn serve() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| document(super::routes().table()).to_string());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_route_is_described_with_its_access() {
        let routes = super::super::routes();
        let doc = document(routes.table());
        let mut schemas = Schemas::default();
        let mut undescribed = Vec::new();
        let mut count = 0;
        for spec in routes.table().iter().filter(|r| r.path.starts_with("/api/")) {
            count += 1;
            if contract(&spec.method, spec.path, &mut schemas).is_none() {
                undescribed.push(format!("{} {}", spec.method, spec.path));
            }
            let op = &doc["paths"][spec.path][spec.method.as_str().to_ascii_lowercase()];
            assert_eq!(
                op["x-stagely-access"],
                json!(access_name(spec.access)),
                "{} {}",
                spec.method,
                spec.path
            );
            let secured = op["security"] != json!([{}]);
            assert_eq!(
                secured,
                spec.access.authenticated(),
                "{} {}",
                spec.method,
                spec.path
            );
        }
        assert!(
            undescribed.is_empty(),
            "routes without a contract: {undescribed:?}"
        );
        let listed: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(listed, count, "the document lists exactly the /api/ routes");
        // Every schema a path names is in the components.
        let text = doc.to_string();
        for name in text.split("#/components/schemas/").skip(1) {
            let name = name.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "schema {name} missing"
            );
        }
    }
}
