//! One error type for every HTTP surface, each variant mapped to its status on purpose.
//!
//! JSON callers get `{"error":{"code","message","request_id"}}`. Internal errors are logged once
//! with the request id and shown only as that id: their text may name files or SQL, never a secret
//! (no error type in this crate carries a secret value).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("you are not allowed to do this")]
    Forbidden,
    /// 403 `forbidden` with the reason the caller is told.
    #[error("{0}")]
    ForbiddenBecause(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 409 `name_taken`: a name already in use, naming the field it came in.
    #[error("{field}: {message}")]
    NameTaken { field: String, message: String },
    /// 409 `agent_offline`, carrying when the agent was last seen.
    #[error("{message}")]
    AgentOffline {
        message: String,
        last_seen: Option<String>,
    },
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooMany { retry_after_secs: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
    /// Another status a domain chose on purpose (400 `invalid_service`, 502 `agent_failed`,
    /// 504 `agent_timeout` for the lifecycle actions of src/operate).
    #[error("{message}")]
    Status {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

impl WebError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        WebError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Forbidden | WebError::ForbiddenBecause(_) => StatusCode::FORBIDDEN,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            WebError::Conflict { .. } | WebError::NameTaken { .. } | WebError::AgentOffline { .. } => {
                StatusCode::CONFLICT
            }
            WebError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            WebError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WebError::Status { status, .. } => *status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            WebError::Unauthorized => "unauthorized",
            WebError::Forbidden | WebError::ForbiddenBecause(_) => "forbidden",
            WebError::NotFound(_) => "not_found",
            WebError::Invalid { .. } => "invalid_field",
            WebError::Conflict { code, .. } => code,
            WebError::NameTaken { .. } => "name_taken",
            WebError::AgentOffline { .. } => "agent_offline",
            WebError::TooMany { .. } => "rate_limited",
            WebError::Unavailable(_) => "unavailable",
            WebError::Internal(_) => "internal",
            WebError::Status { code, .. } => code,
        }
    }

    /// What the caller may see. Internal details are replaced by a request id.
    pub fn public_message(&self, request_id: &str) -> String {
        match self {
            WebError::Internal(_) => format!("internal error (request id {request_id}); see the server log"),
            other => other.to_string(),
        }
    }
}

impl From<DbError> for WebError {
    fn from(e: DbError) -> Self {
        WebError::Internal(e.to_string())
    }
}

impl From<crate::secrets::vault::VaultError> for WebError {
    fn from(e: crate::secrets::vault::VaultError) -> Self {
        WebError::Internal(e.to_string())
    }
}

/// The id tying a logged error to what the user saw: the current request's ([`super::request`]).
pub fn request_id() -> String {
    super::request::current_id()
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let id = request_id();
        if let WebError::Internal(detail) = &self {
            tracing::error!(request_id = %id, error = %detail, "internal error");
        }
        let mut detail = ErrorDetail {
            code: self.code().to_owned(),
            message: self.public_message(&id),
            request_id: id,
            field: None,
            last_seen: None,
        };
        match &self {
            WebError::Invalid { field, .. } | WebError::NameTaken { field, .. } => {
                detail.field = Some(field.to_string());
            }
            WebError::AgentOffline { last_seen, .. } => detail.last_seen = Some(last_seen.clone()),
            _ => {}
        }
        let body = ErrorBody { error: detail };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let WebError::TooMany { retry_after_secs } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// Every API error's body: `{"error": {code, message, request_id, field?, last_seen?}}`.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable (docs/api.md lists them).
    pub code: String,
    /// For people; never holds a secret value.
    pub message: String,
    /// Ties the answer to the server's log line.
    pub request_id: String,
    /// The input field at fault (`invalid_field`, `name_taken`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `agent_offline`: when the environment's agent was last seen (RFC 3339, or null if never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Option<String>>,
}

/// A JSON body extractor whose rejections use the same error shape (and name the field).
pub struct Json<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = WebError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(WebError::invalid(
                "body",
                stagely_protocol::redact::serde_message(&rejection.body_text()),
            )),
        }
    }
}
