//! People and credentials: roles, the authenticated principal, API tokens.

pub mod tokens;

use serde::{Deserialize, Serialize};

/// What a principal may do. Ordered: every role can do what the ones below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Deploy, edit secrets and projects.
    Member,
    /// Everything, including people, agents and tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Member, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who is making a request, as established by the authorization choke point.
#[derive(Debug, Clone)]
pub struct Principal {
    /// For the audit log: `token:<name>` or `user:<username>`.
    pub actor: String,
    pub role: Role,
    pub user_id: Option<i64>,
}

impl Principal {
    /// The principal for admin CLI commands run on the server itself.
    pub fn cli() -> Principal {
        Principal {
            actor: "cli".into(),
            role: Role::Admin,
            user_id: None,
        }
    }
}
