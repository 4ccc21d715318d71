//! Agents: the processes on target servers that dial in over WebSocket and run deploys.
//!
//! `store` holds their records, `api` the JSON surface, `hub` the live connections (agent id →
//! socket) that deploys are dispatched through, and `socket` one connection's life.

pub mod api;
pub mod download;
pub mod hub;
pub mod mailbox;
pub mod pages;
pub mod socket;
pub mod store;

use serde::Serialize;

use crate::db::DbError;

/// Agent tokens carry their own prefix so an API token is never mistaken for one.
pub const AGENT_TOKEN_PREFIX: &str = "stga";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent not found")]
    NotFound,
    #[error("environment not found")]
    EnvironmentNotFound,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for AgentError {
    fn from(e: rusqlite::Error) -> Self {
        AgentError::Db(e.into())
    }
}

/// An agent as the API shows it. `online` and `last_heartbeat` come from the hub when live.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub id: i64,
    pub name: String,
    pub environment_id: i64,
    pub environment: String,
    pub project_id: i64,
    pub project: String,
    pub online: bool,
    pub last_heartbeat: Option<String>,
    pub version: Option<String>,
    pub hostname: Option<String>,
    pub docker_version: Option<String>,
    pub compose_version: Option<String>,
    pub created_at: String,
    pub revoked: bool,
}

/// What the hub needs to know about an authenticated agent.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub id: i64,
    pub name: String,
    pub environment_id: i64,
}

/// Versions and host the agent reported in its HELLO.
#[derive(Debug, Clone, Default)]
pub struct HelloInfo {
    pub agent_version: String,
    pub hostname: String,
    pub docker_version: String,
    pub compose_version: String,
}
