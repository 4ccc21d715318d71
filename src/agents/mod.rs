//! Agents: the processes on target servers that dial in over WebSocket and run deploys.
//!
//! `ops` holds the operations (create, list, revoke) that both `api` (JSON, the agent download
//! and the `/ws/agent` upgrade) and `pages` call, `store` their records, `hub` the live
//! connections (agent id → socket) that deploys are dispatched through, `socket` one
//! connection's life after the upgrade, and `download` finding the agent binaries to serve.

pub mod admission;
pub mod api;
pub mod download;
pub mod hub;
pub mod mailbox;
pub mod ops;
pub mod pages;
pub mod requests;
pub mod shown_once;
pub mod store;

use serde::Serialize;

use crate::db::DbError;

/// Agent tokens carry their own prefix so an API token is never mistaken for one.
pub const AGENT_TOKEN_PREFIX: &str = "stga";

/// Close reason for a HELLO whose recipient is not the pinned one.
pub const CLOSE_IDENTITY_MISMATCH: &str = "agent identity does not match the pinned one";
/// Close reason after an admin reset the pin: reconnect, and the next HELLO pins again.
pub const CLOSE_IDENTITY_RESET: &str = "agent identity pin reset: reconnect";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent not found")]
    NotFound,
    #[error("environment not found")]
    EnvironmentNotFound,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("this agent has no pinned identity to reset")]
    NotPinned,
    /// Only a revoked agent can be removed for good (issue 15).
    #[error("revoke this agent first: only a revoked agent can be deleted")]
    NotRevoked,
    /// The name is already used by an agent of this environment (revoked ones included).
    #[error("name: this environment already has an agent named {0:?} (revoked agents keep their names)")]
    NameTaken(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for AgentError {
    fn from(e: crate::db::SqlError) -> Self {
        AgentError::Db(e.into())
    }
}

/// An agent as the API shows it. `online` and `last_heartbeat` come from the hub when live.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// The pinned age recipient DEPLOY secrets are sealed to; `None` until the agent's first
    /// connection that offers one (or after an admin reset it).
    pub recipient: Option<String>,
    pub recipient_pinned_at: Option<String>,
    /// Where the last accepted connection came from.
    pub address: Option<String>,
    /// The last HELLO refused because it offered another identity than the pinned one.
    pub identity_mismatch: Option<Sighting>,
    /// The last time this agent's token connected while already connected (or from another
    /// address or host right after a connection ended).
    pub second_connection: Option<Sighting>,
}

/// Something seen once, the last time: when, and what (addresses, hosts, recipients; never a
/// token).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Sighting {
    pub at: String,
    pub detail: String,
}

/// What the hub needs to know about an authenticated agent.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub id: i64,
    pub name: String,
    pub environment_id: i64,
    /// The first 8 bytes of the token's hash: every frame sent to this agent is signed for it
    /// (`stagely_protocol::signing::recipient_tag`), so it cannot be replayed to another agent.
    pub tag: [u8; 8],
}

impl AgentIdentity {
    /// The recipient tag signed into this agent's frames (16 hex characters).
    pub fn recipient_tag(&self) -> String {
        hex::encode(self.tag)
    }
}

/// Versions and host the agent reported in its HELLO.
#[derive(Debug, Clone, Default)]
pub struct HelloInfo {
    pub agent_version: String,
    pub hostname: String,
    pub docker_version: String,
    pub compose_version: String,
    /// The age recipient the agent offered (`None`: an agent too old to have one).
    pub recipient: Option<String>,
    /// What the agent can do beyond protocol 1's core (`stagely_protocol::release::CAP_*`).
    pub capabilities: Vec<String>,
}

/// What the appliance makes of the recipient in a HELLO (see [`store::check_pin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// First recipient seen for this agent: pinned now.
    Pinned,
    /// The pinned one.
    Matches,
    /// No recipient offered and none pinned: an old agent; it connects but is sent no DEPLOY.
    NoneOffered,
    /// Another recipient (or none) than the pinned one: refused.
    Mismatch { pinned: String },
}
