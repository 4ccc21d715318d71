//! Access to one project: a person's role on it, besides their global role (issue 16).
//!
//! Roles on a project, ordered: [`ProjectRole::Viewer`] reads, [`ProjectRole::Deployer`] also
//! deploys, rolls back and cancels, [`ProjectRole::Maintainer`] also changes the project's
//! settings, environments and secrets. A person's role on a project is the higher of
//!
//! - what their global role gives on every project ([`baseline`]: viewer → viewer, member and
//!   admin → maintainer, so a global member keeps what they could do before project roles), and
//! - the project roles they were granted on it ([`store`]: by an admin, or by an OIDC group
//!   mapping), the highest one counting.
//!
//! An API token acts with its owner's roles capped by its own role ([`cap`]). The SQL is in
//! [`store`]; [`project_role`] is the one function that answers "what may this principal do on
//! this project".

pub mod api;
pub mod ops;
pub mod pages;
pub mod store;

use crate::db::Conn;
use serde::{Deserialize, Serialize};

use crate::db::DbError;
use crate::db::stored::StoredEnum;
use crate::users::{Principal, Role};

/// A role on one project. Ordered: every role can do what the ones below it can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProjectRole {
    /// Reads the project, its environments, deployments and logs.
    Viewer,
    /// Also deploys, redeploys, rolls back and cancels.
    Deployer,
    /// Also changes the project's settings, environments, secrets and webhook.
    Maintainer,
}

impl ProjectRole {
    pub const ALL: [ProjectRole; 3] = [
        ProjectRole::Viewer,
        ProjectRole::Deployer,
        ProjectRole::Maintainer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProjectRole::Viewer => "viewer",
            ProjectRole::Deployer => "deployer",
            ProjectRole::Maintainer => "maintainer",
        }
    }

    pub fn parse(s: &str) -> Option<ProjectRole> {
        match s {
            "viewer" => Some(ProjectRole::Viewer),
            "deployer" => Some(ProjectRole::Deployer),
            "maintainer" => Some(ProjectRole::Maintainer),
            _ => None,
        }
    }
}

impl StoredEnum for ProjectRole {
    const WHAT: &'static str = "project role";
    fn from_stored(s: &str) -> Option<Self> {
        ProjectRole::parse(s)
    }
    fn as_stored(&self) -> &'static str {
        self.as_str()
    }
}

/// How the choke point finds the project a route acts on, from the route's first path parameter
/// (`src/web/auth.rs`): the parameter is the id of a project, or of an object of one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `{id}` / `{project_id}` is a project id.
    Project,
    /// `{id}` is an environment id.
    Environment,
    /// `{id}` is a deployment id.
    Deployment,
    /// `{id}` is a secret id.
    Secret,
    /// `{id}` is a notification channel id.
    Notification,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Project => "project",
            Scope::Environment => "environment",
            Scope::Deployment => "deployment",
            Scope::Secret => "secret",
            Scope::Notification => "notification",
        }
    }
}

/// What the choke point established for a project-scoped route: the project the route acts on
/// and the caller's role there (a request extension; pages show their buttons by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectAccess {
    pub project_id: i64,
    pub role: ProjectRole,
}

/// What a global role gives on every project.
pub fn baseline(global: Role) -> ProjectRole {
    match global {
        Role::Viewer => ProjectRole::Viewer,
        Role::Member | Role::Admin => ProjectRole::Maintainer,
    }
}

/// The most a principal authenticated with a token of role `token_role` may do on any project,
/// whatever its owner's project roles: a viewer token only reads.
pub fn cap(token_role: Role) -> ProjectRole {
    baseline(token_role)
}

/// What `principal` may do on every project whatever it was granted: its baseline, capped by its
/// token's role. The choke point compares this with a route's minimum when the route's object
/// does not exist (so a 404 is answered only to someone who could act on such an object anyway).
pub fn least(principal: &Principal) -> ProjectRole {
    let role = baseline(principal.role);
    match principal.token_role {
        Some(token_role) => role.min(cap(token_role)),
        None => role,
    }
}

/// What `principal` may do on project `project_id`: the higher of its global role's
/// [`baseline`] and its granted project roles, capped by its token's role when it is a token.
/// A principal with no person (the server CLI, a CLI token) has its baseline only.
pub fn project_role(c: &Conn<'_>, principal: &Principal, project_id: i64) -> Result<ProjectRole, DbError> {
    let mut role = baseline(principal.role);
    if let Some(user_id) = principal.user_id
        && let Some(granted) = store::highest(c, project_id, user_id)?
    {
        role = role.max(granted);
    }
    if let Some(token_role) = principal.token_role {
        role = role.min(cap(token_role));
    }
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(ProjectRole::Viewer < ProjectRole::Deployer);
        assert!(ProjectRole::Deployer < ProjectRole::Maintainer);
        for r in ProjectRole::ALL {
            assert_eq!(ProjectRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(ProjectRole::parse("admin"), None);
        assert_eq!(ProjectRole::parse("Maintainer"), None);
    }

    #[test]
    fn the_global_role_gives_a_baseline_and_a_token_caps_it() {
        assert_eq!(baseline(Role::Viewer), ProjectRole::Viewer);
        assert_eq!(baseline(Role::Member), ProjectRole::Maintainer);
        assert_eq!(baseline(Role::Admin), ProjectRole::Maintainer);
        assert_eq!(cap(Role::Viewer), ProjectRole::Viewer);
    }
}
