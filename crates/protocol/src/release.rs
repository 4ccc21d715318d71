//! What a deployment put on the server and what runs there now (issue 14): the release an agent
//! reports in a successful STATUS, and the containers of its compose project it reports in
//! RUNTIME. Neither carries a secret: no environment value, no command line, no label but
//! compose's own config hash.

use serde::{Deserialize, Serialize};

/// HELLO capability: the agent reports a [`Release`] in STATUS and honours
/// [`crate::ProjectSpec::images`] (image pins) in a DEPLOY. The appliance sends a redeploy of a
/// release only to an agent offering it, so an older agent cannot half-restore one.
pub const CAP_RELEASES: &str = "releases";
/// HELLO capability: the agent watches the compose project named in WATCH and sends RUNTIME.
pub const CAP_RUNTIME: &str = "runtime";

/// Longest list of containers one RUNTIME may carry; the agent reports the first ones (by
/// service, then name) and sets `truncated`.
pub const MAX_RUNTIME_CONTAINERS: usize = 500;

/// Everything a successful deployment put on the server, read from the engine after `up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Release {
    /// Lower-case hex SHA-256 of compose's normalised model of the project's own files
    /// (`docker compose config --format json` without the secrets override: no value is in it).
    pub compose_hash: String,
    /// One entry per service with a container, ordered by name.
    pub services: Vec<ReleaseService>,
}

/// One service of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReleaseService {
    pub name: String,
    /// The image as the container was created with it (`shop/web:1.2`, or compose's name for a
    /// built one).
    pub image: String,
    /// The local image id the container runs (`sha256:…`).
    pub image_id: String,
    /// The registry digest of that image (`shop/web@sha256:…`) when it came from a registry;
    /// absent for an image built or loaded on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
    /// Compose's `com.docker.compose.config-hash` label on the container.
    #[serde(default)]
    pub config_hash: String,
}

impl ReleaseService {
    /// The reference a redeploy pins the service's image to: the registry digest when there is
    /// one (a moved tag cannot change it), else the image id, which the engine accepts as an
    /// image reference for an image present on the target.
    pub fn pin(&self) -> &str {
        self.repo_digest.as_deref().unwrap_or(&self.image_id)
    }
}

/// One container of the environment's compose project, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RuntimeContainer {
    /// The compose service (`com.docker.compose.service`).
    pub service: String,
    /// The container's name.
    pub name: String,
    /// Docker's state: `running`, `exited`, `restarting`, `paused`, `created`, `dead`…
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or empty without a healthcheck.
    #[serde(default)]
    pub health: String,
    /// The engine's restart count for the container.
    #[serde(default)]
    pub restarts: u64,
    /// The image as the container was created with it.
    #[serde(default)]
    pub image: String,
    /// The local image id (`sha256:…`).
    #[serde(default)]
    pub image_id: String,
    /// The image's registry digest (`name@sha256:…`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
    /// When the container last started (RFC 3339, as the engine says it); absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Compose's `com.docker.compose.config-hash` label.
    #[serde(default)]
    pub config_hash: String,
}
