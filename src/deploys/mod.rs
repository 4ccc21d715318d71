//! Deployments: the server half of the deploy sequence (trigger, lookup, dispatch), the log
//! lines agents stream back, and their end.

//!
//! [`ops`]: the deploy trigger and the server's own writes; [`queue`]: one deployment at a time
//! per environment, the newest waiting one next, and cancel; [`service`]: what agents report
//! (masked, or withheld when it cannot be masked); [`store`]: the SQL; [`api`] and [`pages`]
//! (with the live log socket, [`live`]) only translate HTTP.

pub mod api;
pub mod approval;
pub mod limits;
pub mod logs;
pub mod ops;
pub mod pages;
pub mod queue;
pub mod reaper;
pub mod retention;
pub mod rollback;
pub mod service;
pub mod store;

use serde::Serialize;

use crate::db::DbError;
use crate::secrets::vault::VaultError;
use stagely_protocol::ServiceState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Recorded, not queued: the environment requires an approval by another person who may
    /// deploy it (`POST /api/deployments/{id}/approve`). It neither supersedes nor blocks the
    /// queue; approved, it becomes `waiting`.
    AwaitingApproval,
    /// Recorded, not sent: another deployment of the environment is queued or running (or its
    /// agent is offline). Only the newest waiting one of an environment ever runs.
    Waiting,
    /// Recorded and sent to the agent, which has not reported anything yet.
    Queued,
    /// The agent has started reporting.
    Running,
    Success,
    Failed,
    /// Never ran: a newer waiting deployment of the environment replaced it (`superseded_by`).
    Superseded,
    /// Cancelled by a person (`POST /api/deployments/{id}/cancel`), or rejected while it
    /// awaited approval (`POST /api/deployments/{id}/reject`).
    Cancelled,
    /// Awaited approval longer than `deploys.approval_ttl_secs`: never ran.
    Expired,
}

impl DeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::AwaitingApproval => "awaiting_approval",
            DeployStatus::Waiting => "waiting",
            DeployStatus::Queued => "queued",
            DeployStatus::Running => "running",
            DeployStatus::Success => "success",
            DeployStatus::Failed => "failed",
            DeployStatus::Superseded => "superseded",
            DeployStatus::Cancelled => "cancelled",
            DeployStatus::Expired => "expired",
        }
    }

    /// `None` for a value this binary does not know (never a default: see [`crate::db::stored`]).
    pub fn parse(s: &str) -> Option<DeployStatus> {
        match s {
            "awaiting_approval" => Some(DeployStatus::AwaitingApproval),
            "waiting" => Some(DeployStatus::Waiting),
            "queued" => Some(DeployStatus::Queued),
            "running" => Some(DeployStatus::Running),
            "success" => Some(DeployStatus::Success),
            "failed" => Some(DeployStatus::Failed),
            "superseded" => Some(DeployStatus::Superseded),
            "cancelled" => Some(DeployStatus::Cancelled),
            "expired" => Some(DeployStatus::Expired),
            _ => None,
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            DeployStatus::Success
                | DeployStatus::Failed
                | DeployStatus::Superseded
                | DeployStatus::Cancelled
                | DeployStatus::Expired
        )
    }
}

impl crate::db::stored::StoredEnum for DeployStatus {
    const WHAT: &'static str = "deployment status";
    fn from_stored(s: &str) -> Option<Self> {
        DeployStatus::parse(s)
    }
    fn as_stored(&self) -> &'static str {
        self.as_str()
    }
}

/// Which version of which secret a deployment used (never the value).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecretVersion {
    pub secret_id: i64,
    pub key: String,
    pub scope: String,
    pub service: Option<String>,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Deployment {
    pub id: i64,
    pub project_id: i64,
    pub project: String,
    pub environment_id: i64,
    pub environment: String,
    pub agent_id: Option<i64>,
    pub status: DeployStatus,
    pub git_ref: String,
    pub commit: Option<String>,
    pub error: Option<String>,
    /// Per service: `{name, state, health, exit_code}`.
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<ServiceState>,
    pub triggered_by: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// A superseded deployment: the newer one of its environment that replaced it.
    pub superseded_by: Option<i64>,
    /// When the retention pruner deleted this deployment's log lines (the row stays).
    pub log_pruned_at: Option<String>,
    /// A redeploy: the deployment whose release this one restores.
    pub redeploy_of: Option<i64>,
    /// An automatic rollback: the failed deployment this one answers (`redeploy_of` names the
    /// release it restores).
    pub rollback_of: Option<i64>,
    /// What this deployment put on the server, once it succeeded with an agent that reports
    /// releases; its secret versions are `secrets`.
    pub release: Option<crate::releases::Release>,
    pub secrets: Vec<SecretVersion>,
    /// The approval of a deployment that needed one (`GET /api/deployments/{id}` only; lists
    /// leave it `null`).
    pub approval: Option<approval::Approval>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    pub seq: i64,
    pub stream: String,
    pub line: String,
    pub at: String,
}

/// What live viewers of a deployment receive.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    Line(LogLine),
    Finished {
        status: DeployStatus,
        error: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deployment not found")]
    NotFound,
    #[error("project not found")]
    ProjectNotFound,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// The message names the real route (with the environment's id); pages say it in their own
    /// words with a link to the Agents page.
    #[error(
        "environment {environment:?} has no agent; create one with POST /api/environments/{environment_id}/agents"
    )]
    NoAgent {
        environment: String,
        environment_id: i64,
    },
    #[error("the agent for environment {environment:?} is offline (last seen {last_seen})")]
    AgentOffline {
        environment: String,
        last_seen: String,
        last_seen_ms: Option<i64>,
    },
    /// The environment's online agent offers no age recipient (it predates end-to-end secrets).
    #[error(
        "agent too old: no age recipient. The agent of environment {0:?} cannot receive sealed secrets; \
         upgrade it (download it from this appliance)"
    )]
    AgentTooOld(String),
    #[error("cannot seal the secrets to the agent's identity")]
    Seal,
    /// A redeploy of a deployment that recorded no release (it did not succeed, or its agent
    /// predates releases).
    #[error(
        "deployment {0} has no release to redeploy (only a successful deployment by an agent that reports releases has one)"
    )]
    NoRelease(i64),
    /// A redeploy whose release used secret versions that were pruned: never half-restored.
    #[error(
        "the release of deployment {id} cannot be restored exactly: the versions it used of {} were pruned",
        keys.join(", ")
    )]
    ReleaseIncomplete { id: i64, keys: Vec<String> },
    /// A redeploy sent to an agent that does not offer `releases` (it would ignore the pins).
    #[error(
        "agent too old: the agent of environment {0:?} does not pin images (no \"releases\" capability), \
         so it cannot restore a release exactly; upgrade it (download it from this appliance)"
    )]
    AgentWithoutReleases(String),
    #[error("a deploy of environment {0:?} is already in progress")]
    InProgress(String),
    /// A cancel of a deployment that has ended.
    #[error("deployment {id} has already finished ({})", status.as_str())]
    AlreadyFinished { id: i64, status: DeployStatus },
    /// A protected environment's rule, or a missing project role (the message names the
    /// environment and who may).
    #[error("{0}")]
    Forbidden(String),
    /// An approval or rejection of a deployment that does not await one, or whose approval
    /// expired.
    #[error("{0}")]
    NotAwaiting(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for DeployError {
    fn from(e: crate::db::SqlError) -> Self {
        DeployError::Db(e.into())
    }
}
