//! What runs in each environment (issue 14): the containers of its compose project as its agent
//! reports them (RUNTIME, after the appliance sent WATCH to an agent offering
//! `stagely_protocol::release::CAP_RUNTIME`), and the drift between that and the environment's
//! last successful release.
//!
//! [`drift`] compares (pure), [`store`] holds the SQL (`environment_runtime`), [`ops`] takes a
//! report (bounds it, stores it only when something changed, audits and notifies drift
//! transitions, publishes `HubEvent::RuntimeChanged`) and rechecks an environment when a
//! deployment changed; [`api`] answers `GET /api/environments/{id}/runtime`, [`pages`] renders
//! the environment's runtime panel and the dashboard's drift badge.

pub mod api;
pub mod drift;
pub mod ops;
pub mod pages;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// Why what runs is not what the last release put there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriftReason {
    /// The compose service it concerns.
    pub service: String,
    /// `missing`, `stopped`, `extra`, `image` or `config`.
    pub kind: String,
    /// For people: which containers, which images or hashes.
    pub detail: String,
}

/// One compose service as `GET /api/environments/{id}/runtime` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RuntimeService {
    pub name: String,
    /// Docker's state (`running` only when every container of the service runs; else the state
    /// of the first one that does not), or `missing` for a release service with no container.
    pub state: String,
    /// `unhealthy` if any container is, else `starting` if any is, else `healthy` when all are;
    /// empty without a healthcheck.
    pub health: String,
    /// Restarts of its containers, summed.
    pub restarts: u64,
    /// The image as the (first) container was created with it.
    pub image: String,
    /// The registry digest when the image has one, else its image id.
    pub digest: String,
    /// When the (first) container last started (RFC 3339), if it did.
    pub started_at: Option<String>,
    /// How many containers the service has.
    pub containers: usize,
}

/// An environment's runtime, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Runtime {
    pub environment_id: i64,
    /// When the agent last reported something that changed (RFC 3339); `null` when it never
    /// reported.
    pub reported_at: Option<String>,
    pub services: Vec<RuntimeService>,
    /// `null` when what runs matches the last successful release (or there is none), else why
    /// it does not.
    pub drift: Option<Vec<DriftReason>>,
    /// Since when it drifts (RFC 3339).
    pub drift_since: Option<String>,
    /// The deployment whose release it is compared with (the one "Re-converge" redeploys).
    pub release_deployment_id: Option<i64>,
    /// The agent reported only the first `MAX_RUNTIME_CONTAINERS` containers.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("environment not found")]
    EnvironmentNotFound,
    /// A RUNTIME for a compose project other than the agent's environment's.
    #[error("this agent's environment runs compose project {expected:?}, not {got:?}")]
    WrongProject { expected: String, got: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for RuntimeError {
    fn from(e: crate::db::SqlError) -> Self {
        RuntimeError::Db(e.into())
    }
}

impl From<RuntimeError> for crate::web::error::WebError {
    fn from(e: RuntimeError) -> Self {
        use crate::web::error::WebError;
        match e {
            RuntimeError::EnvironmentNotFound => WebError::NotFound("environment"),
            RuntimeError::WrongProject { .. } => WebError::Forbidden,
            RuntimeError::Db(e) => e.into(),
        }
    }
}
