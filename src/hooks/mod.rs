//! Push webhooks (issue 13): a per-project secret, receivers for GitHub, GitLab and
//! Gitea/Forgejo, and the delivery log. A verified push to an environment's branch (or a tag
//! matching its glob) deploys exactly the pushed commit through [`crate::deploys::ops::trigger`].
//!
//! [`verify`]: signatures (constant time); [`push`]: payload parsing; [`ops`]: the rules;
//! [`store`]: the SQL; [`api`] only translates HTTP.

pub mod api;
pub mod ops;
pub mod pages;
pub mod push;
pub mod store;
pub mod verify;

use serde::Serialize;

use crate::db::DbError;
use crate::db::StoredEnum;
use crate::secrets::vault::VaultError;

/// Who sends the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Gitlab,
    /// Gitea and Forgejo (same payloads and signature, their own header names).
    Gitea,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Github, Provider::Gitlab, Provider::Gitea];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }
}

impl StoredEnum for Provider {
    const WHAT: &'static str = "webhook provider";
    fn from_stored(s: &str) -> Option<Self> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }
    fn as_stored(&self) -> &'static str {
        self.as_str()
    }
}

/// What a delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Verified, being handled (a row only has it for the few milliseconds of a trigger).
    Processing,
    Deployed,
    Ignored,
    Duplicate,
    Rejected,
    /// Verified, but no matching environment could be deployed (agent offline, …).
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Processing,
        Outcome::Deployed,
        Outcome::Ignored,
        Outcome::Duplicate,
        Outcome::Rejected,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Processing => "processing",
            Outcome::Deployed => "deployed",
            Outcome::Ignored => "ignored",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
        }
    }
}

impl StoredEnum for Outcome {
    const WHAT: &'static str = "webhook delivery result";
    fn from_stored(s: &str) -> Option<Self> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
    fn as_stored(&self) -> &'static str {
        self.as_str()
    }
}

/// One row of the delivery log (never the body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub provider: Provider,
    pub delivery_id: Option<String>,
    pub event: String,
    pub result: Outcome,
    pub detail: String,
    pub deployment_ids: Vec<i64>,
    pub at: String,
}

/// The receiver URLs of a project, one per provider.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Urls {
    pub github: String,
    pub gitlab: String,
    pub gitea: String,
}

impl Urls {
    pub fn new(public_url: &str, project_id: i64) -> Urls {
        let base = public_url.trim_end_matches('/');
        let url = |p: Provider| format!("{base}/api/hooks/{}/{project_id}", p.as_str());
        Urls {
            github: url(Provider::Github),
            gitlab: url(Provider::Gitlab),
            gitea: url(Provider::Gitea),
        }
    }
}

/// A project's webhook as anyone may see it: no secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookInfo {
    pub configured: bool,
    pub urls: Urls,
    pub created_at: Option<String>,
    pub created_by: Option<String>,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("project not found")]
    ProjectNotFound,
    /// Bad, missing or unknown credential. Unknown projects and projects without a webhook
    /// answer the same, so a caller cannot tell which projects exist.
    #[error("bad or missing webhook signature")]
    BadSignature,
    #[error("the webhook body is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for HookError {
    fn from(e: crate::db::SqlError) -> Self {
        HookError::Db(e.into())
    }
}
