//! Releases (issue 14): what each successful deployment put on the server — its commit, the hash
//! of compose's model, the image each service runs (by id and registry digest), the secret
//! versions it used (its deployment's `deployment_secrets` rows) and the agent that applied it —
//! and the redeploy of one, exactly (`ops`), by hand, by `stagely rollback` or by
//! `auto_rollback`.
//!
//! [`store`]: the SQL.

pub mod store;

use serde::Serialize;

use crate::db::DbError;
use stagely_protocol::ReleaseService;

/// A release as stored: one per successful deployment of an agent that reports releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Release {
    /// The deployment that applied it (a release is named by its deployment).
    pub deployment_id: i64,
    pub environment_id: i64,
    /// The agent that applied it; `None` once that agent was deleted (`agent_name` stays).
    pub agent_id: Option<i64>,
    pub agent_name: String,
    pub commit: Option<String>,
    /// Hex SHA-256 of compose's normalised model of the project's files (no secret in it).
    pub compose_hash: String,
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<ReleaseService>,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no such release")]
    NotFound,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for ReleaseError {
    fn from(e: rusqlite::Error) -> Self {
        ReleaseError::Db(e.into())
    }
}
