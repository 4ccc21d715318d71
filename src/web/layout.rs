//! The page shell every HTML page shares, the context pages render with, and HTML errors.
//!
//! No inline script or style anywhere (the CSP forbids both): behaviour comes from htmx
//! attributes and `assets/app.js`, looks from Pico CSS and `assets/app.css`.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::access::{ProjectAccess, ProjectRole};
use crate::app::AppState;
use crate::users::{Principal, Role};
use crate::web::assets;
use crate::web::error::{WebError, request_id};
use crate::web::session::Session;

/// Who is looking at a page, as the choke point established it.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub who: Principal,
    /// Display name for the header.
    pub name: String,
    /// The session's CSRF token (empty for bearer-token callers, who need none).
    pub csrf: String,
    pub github_enabled: bool,
    /// On a project-scoped route: the project and the caller's role there (the choke point's).
    pub project: Option<ProjectAccess>,
}

impl Viewer {
    /// Whether the global role is at least `role` (agents, users, the audit log, deleting).
    pub fn can(&self, role: Role) -> bool {
        self.who.role >= role
    }

    /// Whether the caller holds at least `role` on the project the page is about (buttons and
    /// forms are shown by this); off a project-scoped route, what the global role gives.
    pub fn may(&self, role: ProjectRole) -> bool {
        match self.project {
            Some(p) => p.role >= role,
            None => crate::access::least(&self.who) >= role,
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(who) = parts.extensions.get::<Principal>().cloned() else {
            return Err(WebError::Unauthorized.into_response());
        };
        let session = parts.extensions.get::<Session>().cloned();
        Ok(Viewer {
            name: session
                .as_ref()
                .map(|s| s.username.clone())
                .unwrap_or_else(|| who.actor.clone()),
            csrf: session.map(|s| s.csrf).unwrap_or_default(),
            who,
            github_enabled: state.config.github.enabled(),
            project: parts.extensions.get::<ProjectAccess>().copied(),
        })
    }
}

/// Navigation sections, to mark the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Dashboard,
    Projects,
    Agents,
    Users,
    Audit,
    Account,
    None,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            // htmx would otherwise inject an inline <style>, which the CSP refuses.
            meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false}"#;
            title { (title) " · Stagely" }
            link rel="icon" href=(assets::url("favicon.svg")) type="image/svg+xml";
            link rel="stylesheet" href=(assets::url("vendor/pico/pico-2.1.1.min.css"));
            link rel="stylesheet" href=(assets::url("app.css"));
            script src=(assets::url("vendor/htmx/htmx-2.0.11.min.js")) defer {}
            script src=(assets::url("vendor/htmx/ext-ws-2.0.4.min.js")) defer {}
            script src=(assets::url("app.js")) defer {}
        }
    }
}

fn brand() -> Markup {
    html! {
        a.brand href="/" {
            img src=(assets::url("favicon.svg")) alt="" width="24" height="24";
            strong { "Stagely" }
        }
    }
}

/// A full page for a signed-in viewer.
pub fn page(v: &Viewer, title: &str, nav: Nav, body: Markup) -> Markup {
    let hx_headers = format!(r#"{{"X-CSRF-Token":"{}"}}"#, v.csrf);
    let item = |target: Nav, href: &str, label: &str| {
        html! {
            li { a href=(href) aria-current=[(nav == target).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body hx-headers=(hx_headers) {
                header.topbar {
                    nav.container {
                        ul { li { (brand()) } }
                        ul {
                            (item(Nav::Dashboard, "/", "Dashboard"))
                            (item(Nav::Projects, "/projects", "Projects"))
                            (item(Nav::Agents, "/agents", "Agents"))
                            @if v.can(Role::Admin) {
                                (item(Nav::Users, "/users", "Users"))
                                (item(Nav::Audit, "/audit", "Audit log"))
                            }
                        }
                        ul {
                            li {
                                a href="/account" aria-current=[(nav == Nav::Account).then_some("page")] {
                                    (v.name) " " span.role-tag { (v.who.role.as_str()) }
                                }
                            }
                            @if !v.csrf.is_empty() {
                                li {
                                    form.inline method="post" action="/logout" {
                                        (csrf_field(&v.csrf))
                                        button.link type="submit" { "Sign out" }
                                    }
                                }
                            }
                        }
                    }
                }
                main.container { (body) }
                (footer())
            }
        }
    }
}

/// A page for someone not signed in (sign-in, setup, invitation, errors).
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.topbar { nav.container { ul { li { (brand()) } } } }
                main.container.narrow { (body) }
                (footer())
            }
        }
    }
}

fn footer() -> Markup {
    html! {
        footer.container.muted {
            small { "Stagely " (env!("CARGO_PKG_VERSION")) " · self-hosted deploys" }
        }
    }
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(crate::web::csrf::FIELD) value=(token); }
}

/// An input's error text (and the attributes that mark it invalid).
pub fn field_error(errors: &FormErrors, field: &str) -> Markup {
    html! {
        @if let Some(msg) = errors.get(field) {
            small.field-error id=(format!("{field}-error")) { (sentence(msg)) }
        }
    }
}

/// `aria-invalid` for an input: "true" with an error, absent otherwise.
pub fn invalid(errors: &FormErrors, field: &str) -> Option<&'static str> {
    errors.get(field).map(|_| "true")
}

/// Errors of a submitted form, by field (`form` for the form as a whole).
#[derive(Debug, Default, Clone)]
pub struct FormErrors(Vec<(String, String)>);

impl FormErrors {
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> FormErrors {
        FormErrors(vec![(field.into(), message.into())])
    }
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|(f, _)| f == field).map(|(_, m)| m.as_str())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The error of a domain function, placed at its field when the form has that field.
    pub fn from_web(err: WebError, fields: &[&str]) -> Result<FormErrors, WebError> {
        match err {
            WebError::Invalid { field, message } if fields.contains(&field.as_str()) => {
                Ok(FormErrors::one(field, message))
            }
            WebError::Invalid { field, message } => {
                Ok(FormErrors::one("form", format!("{field}: {message}")))
            }
            WebError::NameTaken { field, message } if fields.contains(&field.as_str()) => {
                Ok(FormErrors::one(field, message))
            }
            e @ WebError::NameTaken { .. } => Ok(FormErrors::one("form", e.to_string())),
            e @ (WebError::Conflict { .. } | WebError::AgentOffline { .. }) => {
                Ok(FormErrors::one("form", e.to_string()))
            }
            other => Err(other),
        }
    }
}

/// Domain messages are lower-case fragments ("must be …"); on a page they start a sentence.
fn sentence(msg: &str) -> String {
    let mut chars = msg.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A banner for the form as a whole.
pub fn form_banner(errors: &FormErrors) -> Markup {
    html! {
        @if let Some(msg) = errors.get("form") {
            p.notice.error role="alert" { (sentence(msg)) }
        }
    }
}

/// Short success notices carried across a redirect as `?done=<code>` (fixed texts only).
pub fn notice(code: Option<&str>) -> Markup {
    let text = match code {
        Some("project-created") => "Project created.",
        Some("project-saved") => "Settings saved.",
        Some("environment-added") => "Environment added.",
        Some("retention-saved") => "Log retention saved.",
        Some("triggers-saved") => "Push triggers saved.",
        Some("rollback-saved") => "Automatic rollback saved.",
        Some("secret-added") => "Secret added. Its value is stored encrypted and will not be shown again.",
        Some("secret-updated") => "Secret value replaced.",
        Some("secret-deleted") => "Secret deleted.",
        Some("agent-token-gone") => {
            "This agent's token was shown once and is not kept. If it was not copied, revoke the agent and create another."
        }
        Some("agent-revoked") => "Agent revoked; its connection was closed.",
        Some("agent-deleted") => "Revoked agent deleted.",
        Some("action-done") => "Done. The runtime table shows what runs now.",
        Some("environment-down") => {
            "Environment taken down: its containers and networks are removed (volumes kept)."
        }
        Some("project-deleted") => "Project deleted (the audit log says what became of its stacks).",
        Some("environment-deleted") => "Environment deleted (the audit log says what became of its stack).",
        Some("identity-reset") => {
            "Identity pin reset; the agent was disconnected and its next connection pins the identity it offers."
        }
        Some("member-saved") => "Project role saved.",
        Some("member-removed") => "Project role removed.",
        Some("user-updated") => "User updated.",
        Some("sessions-ended") => "Sessions ended.",
        Some("token-revoked") => "Token revoked.",
        Some("invite-revoked") => "Invitation withdrawn.",
        Some("github-linked") => "GitHub account linked.",
        Some("github-unlinked") => "GitHub account unlinked.",
        Some("password-changed") => "Password changed. Your other sessions were signed out.",
        Some("reset-revoked") => "Password-reset link withdrawn.",
        Some("2fa-required") => {
            "This appliance requires two-factor authentication for admins: set it up below before anything else."
        }
        Some("2fa-off") => "Two-factor authentication is off.",
        Some("2fa-reset") => {
            "Two-factor authentication reset: the person signs in with their password alone."
        }
        _ => return html! {},
    };
    html! { p.notice.ok role="status" { (text) } }
}

/// 303 to `to` (after a successful POST).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The status badge of a deployment or agent state.
pub fn badge(kind: &str, text: &str) -> Markup {
    html! { span class=(format!("badge {kind}")) { (text) } }
}

/// `3 min ago` for an RFC 3339 time, with the exact time as a tooltip.
pub fn ago(rfc3339: &str, now_ms: i64) -> Markup {
    let parsed = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339);
    let Ok(t) = parsed else {
        return html! { (rfc3339) };
    };
    let then_ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let secs = (now_ms - then_ms).max(0) / 1000;
    let text = match secs {
        0..=9 => "just now".to_owned(),
        10..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    };
    let exact = rfc3339.replace('T', " ").replace('Z', " UTC");
    html! { time datetime=(rfc3339) title=(exact) { (text) } }
}

/// A page handler's error: rendered as a styled HTML page with the right status.
#[derive(Debug)]
pub struct PageError(pub WebError);

impl<E: Into<WebError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0)
    }
}

/// A styled error page. Internal details go to the log with a request id, never to the page.
pub fn error_page(err: WebError) -> Response {
    let id = request_id();
    if let WebError::Internal(detail) = &err {
        tracing::error!(request_id = %id, error = %detail, "internal error");
    }
    let status = err.status();
    let (title, text) = match &err {
        WebError::NotFound(what) => (
            "Not found",
            format!("This {what} does not exist (or no longer does)."),
        ),
        WebError::Forbidden => (
            "Forbidden",
            "Your role does not allow this. Ask an admin if you need it.".to_owned(),
        ),
        WebError::ForbiddenBecause(why) => ("Forbidden", why.clone()),
        WebError::Unauthorized => ("Sign-in required", "Please sign in.".to_owned()),
        other => ("Something went wrong", other.public_message(&id)),
    };
    let body = bare_page(
        title,
        html! {
            article.error-page {
                p.status-code { (status.as_u16()) }
                h1 { (title) }
                p { (text) }
                p { a href="/" role="button" { "Back to the dashboard" } }
                p.request-id { small { "Request id " code { (id) } } }
            }
        },
    );
    let response = (status, no_store(), body).into_response();
    match err {
        WebError::TooMany { retry_after_secs } => too_many_requests(response, retry_after_secs),
        _ => response,
    }
}

/// `response` as a 429 that says when to try again (`Retry-After`, seconds).
pub fn too_many_requests(mut response: Response, retry_after_secs: u64) -> Response {
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// What the choke point answers a page request it refuses: the sign-in form (401) for someone
/// not signed in, a styled 403 otherwise. htmx requests are told to go to the sign-in page.
pub fn refusal(state: &AppState, err: WebError, req: &Request) -> Response {
    if matches!(err, WebError::Unauthorized) {
        let next = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let next = if req.method() == axum::http::Method::GET && !next.starts_with("/ws/") {
            next
        } else {
            "/"
        };
        let mut response = (
            StatusCode::UNAUTHORIZED,
            no_store(),
            crate::users::pages::sign_in_form(state, next, None, ""),
        )
            .into_response();
        if req.headers().contains_key("hx-request") {
            response
                .headers_mut()
                .insert("hx-redirect", HeaderValue::from_static("/login"));
        }
        return response;
    }
    error_page(err)
}

/// Pages show per-user data: never cache them.
pub fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// Raw HTML known to be safe (fixed markup only; never user input).
pub fn raw(s: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(s)
}
