//! Protected environments (issue 16): who may deploy an environment, and whether a deploy waits
//! for another person's approval.
//!
//! An environment is either open (anyone whose role on its project is deployer or higher may
//! deploy it) or protected: then only global admins, the people it names and the people whose
//! [`crate::access::project_role`] is at or above a role it names may deploy it ([`rules`]).
//! With `require_approval` a permitted deploy waits `awaiting_approval` until another permitted
//! person approves it ([`crate::deploys::approval`]). A push webhook (no person behind it) never
//! deploys a protected environment directly: its deploy awaits approval.
//!
//! Environments whose name looks like production ([`crate::projects::pages::is_production`])
//! are protected with `["maintainer"]` when they are made (and by V18 for existing ones). Only
//! a global admin changes the protection. The SQL is in [`store`].

pub mod pages;
pub mod rules;
pub mod store;

use crate::db::Conn;
use serde::Serialize;

use crate::access::ProjectRole;
use crate::projects::ProjectError;

/// One entry of an environment's `deployers`, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Deployer {
    /// That project role or higher: `{"role": "maintainer"}`.
    Role {
        #[schema(value_type = String)]
        role: ProjectRole,
    },
    /// One person: `{"user_id": 3, "username": "ada"}`.
    User { user_id: i64, username: String },
}

/// An entry as stored: a role, or a user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployerRef {
    Role(ProjectRole),
    User(i64),
}

impl Deployer {
    pub fn as_ref(&self) -> DeployerRef {
        match self {
            Deployer::Role { role } => DeployerRef::Role(*role),
            Deployer::User { user_id, .. } => DeployerRef::User(*user_id),
        }
    }

    /// For people and the audit log: `maintainer+` or `user:ada`.
    pub fn describe(&self) -> String {
        match self {
            Deployer::Role { role } => format!("{}+", role.as_str()),
            Deployer::User { username, .. } => format!("user:{username}"),
        }
    }
}

/// A whole list for people: `maintainer+, user:ada`; `admins only` when empty.
pub fn describe(deployers: &[Deployer]) -> String {
    if deployers.is_empty() {
        "admins only".to_owned()
    } else {
        deployers
            .iter()
            .map(Deployer::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An environment's protection settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    pub protected: bool,
    pub require_approval: bool,
    pub deployers: Vec<Deployer>,
}

impl Protection {
    /// What a new environment named `name` gets: production-like names are protected with
    /// `["maintainer"]` (every global member is a maintainer on every project, so today's
    /// members keep deploying) and no approval.
    pub fn default_for(name: &str) -> Protection {
        if crate::projects::pages::is_production(name) {
            Protection {
                protected: true,
                require_approval: false,
                deployers: vec![Deployer::Role {
                    role: ProjectRole::Maintainer,
                }],
            }
        } else {
            Protection::default()
        }
    }

    /// For the audit log.
    pub fn summary(&self) -> String {
        format!(
            "protected {}, require_approval {}, deployers [{}]",
            self.protected,
            self.require_approval,
            describe(&self.deployers)
        )
    }
}

fn invalid<T>(field: &'static str, message: impl Into<String>) -> Result<T, ProjectError> {
    Err(ProjectError::Invalid {
        field,
        message: message.into(),
    })
}

/// A `deployers` list from JSON, resolved and normalised: roles (`"deployer"`, `"maintainer"`),
/// people by id (a number), by `"user:<username>"`, or by a bare username that is not a role
/// name; also the normalised objects the API answers (`{"role": …}`, `{"user_id": …}`).
/// Duplicates are dropped, order kept. An unknown person or a bad entry is a 422 naming it.
pub fn parse_deployers(c: &Conn<'_>, value: &serde_json::Value) -> Result<Vec<Deployer>, ProjectError> {
    let Some(entries) = value.as_array() else {
        return invalid(
            "deployers",
            "must be a list of roles (\"deployer\", \"maintainer\") and people (a user id, \"user:<username>\" or a username)",
        );
    };
    let mut out: Vec<Deployer> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let d = parse_entry(c, entry).map_err(|e| match e {
            ProjectError::Invalid { message, .. } => ProjectError::Invalid {
                field: "deployers",
                message: format!("entry {i} ({entry}): {message}"),
            },
            other => other,
        })?;
        if !out.iter().any(|o| o.as_ref() == d.as_ref()) {
            out.push(d);
        }
    }
    Ok(out)
}

fn parse_entry(c: &Conn<'_>, entry: &serde_json::Value) -> Result<Deployer, ProjectError> {
    use serde_json::Value;
    match entry {
        Value::Number(n) => match n.as_i64() {
            Some(id) => user_by_id(c, id),
            None => invalid("deployers", "a user id must be a whole number"),
        },
        Value::String(s) => {
            let s = s.trim();
            if let Some(name) = s.strip_prefix("user:") {
                return user_by_name(c, name);
            }
            match ProjectRole::parse(s) {
                Some(ProjectRole::Viewer) => invalid(
                    "deployers",
                    "viewer cannot be a deployer role (use \"deployer\" or \"maintainer\"; for a person named viewer, \"user:viewer\")",
                ),
                Some(role) => Ok(Deployer::Role { role }),
                None => user_by_name(c, s),
            }
        }
        Value::Object(o) => match (o.get("role"), o.get("user_id")) {
            (Some(Value::String(r)), None) => {
                parse_entry(c, &Value::String(r.clone())).and_then(|d| match d {
                    Deployer::Role { .. } => Ok(d),
                    Deployer::User { .. } => invalid("deployers", "\"role\" must be deployer or maintainer"),
                })
            }
            (None, Some(Value::Number(n))) => parse_entry(c, &Value::Number(n.clone())),
            _ => invalid("deployers", "an object must be {\"role\": …} or {\"user_id\": …}"),
        },
        _ => invalid(
            "deployers",
            "must be a role name, a user id or \"user:<username>\"",
        ),
    }
}

fn user_by_id(c: &Conn<'_>, id: i64) -> Result<Deployer, ProjectError> {
    match store::username(c, id)? {
        Some(username) => Ok(Deployer::User {
            user_id: id,
            username,
        }),
        None => invalid("deployers", format!("no user with id {id}")),
    }
}

fn user_by_name(c: &Conn<'_>, name: &str) -> Result<Deployer, ProjectError> {
    match store::user_id(c, name)? {
        Some(user_id) => Ok(Deployer::User {
            user_id,
            username: name.to_owned(),
        }),
        None => invalid("deployers", format!("no user named {name:?}")),
    }
}
