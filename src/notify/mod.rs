//! Notifications: per-project channels (a generic signed webhook, Slack, Discord, email) told
//! about deploys that finished, agents that went offline and push webhooks that were rejected.
//!
//! How a notice travels:
//! 1. Something happens. Deploys are not touched: [`worker::listen`] follows the hub's
//!    broadcast (`HubEvent::DeploymentChanged`) and reads the deployment; a finished `success`
//!    or `failed` one is a `deploy.succeeded` / `deploy.failed` notice. [`worker::watch_agents`]
//!    checks, every `notify.offline_check_secs`, for agents offline longer than a channel's
//!    `offline_minutes` (one notice per offline episode). Other domains call [`ops::emit`]:
//!    the push webhook receivers call `notify::ops::emit(&state, project_id,
//!    Event::WebhookRejected { provider, reason, delivery })` when a delivery fails its signature.
//! 2. [`ops::enqueue`] writes one outbox row per channel that wants the event, keyed
//!    `UNIQUE (channel, event, subject)` (the subject is `deployment:<id>`, `agent:<id>:<since>`…),
//!    so a repeated event or a restart enqueues nothing twice. The notice is stored masked.
//! 3. [`worker::deliver`] sends due rows, retrying with exponential backoff
//!    (`notify.retry_base_secs`, `notify.max_attempts`); pending rows survive a restart. A row
//!    is marked sent only after the receiver answered 2xx, so a crash in between may send it
//!    again: receivers dedupe on `X-Stagely-Delivery`.
//!
//! A channel's URL (Slack and Discord URLs are credentials) and its SMTP password are stored
//! encrypted with the vault and never shown again; no log line names them.

pub mod api;
pub mod email;
pub mod http;
pub mod ops;
pub mod pages;
pub mod store;
pub mod worker;

use serde::{Deserialize, Serialize};

use crate::db::{DbError, StoredEnum};
use crate::secrets::vault::VaultError;

/// The events a channel may want (`test` is sent only on request, to one channel).
pub const EVENTS: &[&str] = &[
    "deploy.succeeded",
    "deploy.failed",
    "deploy.rollback",
    "deploy.awaiting_approval",
    "agent.offline",
    "webhook.rejected",
    "drift.started",
    "drift.ended",
];
pub const TEST_EVENT: &str = "test";
pub const DEFAULT_OFFLINE_MINUTES: f64 = 5.0;
/// A week: longer is surely a typo.
pub const MAX_OFFLINE_MINUTES: f64 = 7.0 * 24.0 * 60.0;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification channel not found")]
    NotFound,
    #[error("project not found")]
    ProjectNotFound,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("name: a channel named {0:?} already exists in this project")]
    NameTaken(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for NotifyError {
    fn from(e: crate::db::SqlError) -> Self {
        NotifyError::Db(e.into())
    }
}

pub(crate) fn invalid<T>(field: &'static str, message: impl Into<String>) -> Result<T, NotifyError> {
    Err(NotifyError::Invalid {
        field,
        message: message.into(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A generic JSON webhook, signed with the channel's signing secret.
    Webhook,
    Slack,
    Discord,
    Email,
}

impl StoredEnum for Kind {
    const WHAT: &'static str = "notification channel kind";
    fn from_stored(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(Kind::Webhook),
            "slack" => Some(Kind::Slack),
            "discord" => Some(Kind::Discord),
            "email" => Some(Kind::Email),
            _ => None,
        }
    }
    fn as_stored(&self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Slack => "slack",
            Kind::Discord => "discord",
            Kind::Email => "email",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Sent,
    Failed,
}

impl StoredEnum for DeliveryStatus {
    const WHAT: &'static str = "notification delivery status";
    fn from_stored(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "sent" => Some(DeliveryStatus::Sent),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
    fn as_stored(&self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// A create request. `Debug` is hand-written and the URL and password are wiped on drop: they
/// are credentials.
#[derive(Clone, Default, Deserialize, zeroize::ZeroizeOnDrop, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    #[zeroize(skip)]
    pub kind: String,
    #[zeroize(skip)]
    pub name: String,
    #[zeroize(skip)]
    pub events: Vec<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub email: Option<EmailInput>,
    #[serde(default)]
    #[zeroize(skip)]
    pub offline_minutes: Option<f64>,
}

impl std::fmt::Debug for ChannelInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelInput")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// An email channel's SMTP settings as submitted.
#[derive(Clone, Default, Deserialize, zeroize::ZeroizeOnDrop, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailInput {
    #[zeroize(skip)]
    pub host: String,
    #[serde(default)]
    #[zeroize(skip)]
    pub port: Option<u16>,
    #[serde(default)]
    #[zeroize(skip)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[zeroize(skip)]
    pub from: String,
    #[zeroize(skip)]
    pub to: Vec<String>,
    /// STARTTLS is required unless this is `false` (then no password is accepted).
    #[serde(default)]
    #[zeroize(skip)]
    pub starttls: Option<bool>,
}

/// Where a channel sends: the encrypted part of a channel (stored as age ciphertext of its JSON).
#[derive(Clone, Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Target {
    Url {
        url: String,
    },
    Smtp {
        #[zeroize(skip)]
        host: String,
        #[zeroize(skip)]
        port: u16,
        #[zeroize(skip)]
        username: Option<String>,
        password: Option<String>,
        #[zeroize(skip)]
        from: String,
        #[zeroize(skip)]
        to: Vec<String>,
        #[zeroize(skip)]
        starttls: bool,
    },
}

impl Target {
    /// The credential values in this target, for masking error texts.
    pub fn credentials(&self) -> Vec<&str> {
        match self {
            Target::Url { url } => vec![url.as_str()],
            Target::Smtp { password, .. } => password.iter().map(String::as_str).collect(),
        }
    }
}

/// What anyone may see of a channel: never its URL, password or signing secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChannelInfo {
    pub id: i64,
    pub project_id: i64,
    pub kind: Kind,
    pub name: String,
    pub events: Vec<String>,
    pub offline_minutes: f64,
    /// The URL's host, or the SMTP server and recipients.
    pub target: String,
    pub created_by: String,
    pub created_at: String,
}

/// The answer to a create: the channel, and for a generic webhook its signing secret (once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    pub channel: ChannelInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

/// One row of a channel's delivery log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub channel_id: i64,
    pub event: String,
    pub subject: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    /// A short, safe text (an HTTP status, "timed out", an SMTP reply code); never a body or URL.
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub next_attempt_at: Option<String>,
}

/// The facts of a notice, as stored in the outbox and sent (masked; never a secret value).
/// The generic webhook's body is this JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Notice {
    pub event: String,
    pub project: String,
    pub environment: Option<String>,
    pub deployment_id: Option<i64>,
    pub status: Option<String>,
    pub commit: Option<String>,
    pub error: Option<String>,
    /// A link back: the deployment's page, or the agent's, or the project's.
    pub url: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Free text for events without a deployment (why a webhook was rejected, a test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Events other domains raise through [`ops::emit`].
#[derive(Debug, Clone)]
pub enum Event {
    /// A push webhook delivery failed its check (bad or missing signature, oversized…).
    WebhookRejected {
        /// `github`, `gitlab`, `gitea`.
        provider: String,
        /// A short safe reason ("bad signature"); never the body or a header value.
        reason: String,
        /// The provider's delivery id when it sent one: the same delivery notifies once.
        delivery: Option<String>,
    },
    /// What runs in an environment started or stopped differing from its last release
    /// (src/runtime), once per transition.
    Drift {
        /// `drift.started` when true, else `drift.ended`.
        started: bool,
        environment_id: i64,
        environment: String,
        at: i64,
        /// When the transition happened (ms): with the event, it keys the notice, so each
        /// transition notifies once.
        episode: i64,
        /// The reasons, for people (service names, kinds, container names; never a value).
        detail: String,
    },
}
