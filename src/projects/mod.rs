//! Projects (a compose project in a repository or at a path) and their environments.
//!
//! Types and validation live here, the operations (the writes, their rules and audit entries)
//! in `ops`, the SQL in `store`; `api` (JSON) and `pages` (HTML) only translate HTTP to `ops`.

pub mod api;
pub mod ops;
pub mod pages;
pub mod store;
pub mod tabs;

use serde::{Deserialize, Deserializer, Serialize};

use crate::db::DbError;
use crate::names::{self, NameKind};
use stagely_protocol::PullPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("project not found")]
    NotFound,
    #[error("environment not found")]
    EnvironmentNotFound,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("a project named {0:?} already exists")]
    NameTaken(String),
    #[error("this project already has an environment named {0:?}")]
    EnvironmentTaken(String),
    /// Deleting would orphan a stack that may be running on a target (issue 12).
    #[error(
        "environment {environment:?} has a stack on its target (compose project {compose_project:?}, \
         deployment #{deployment_id} succeeded): deleting it here would leave that stack running \
         with no one tracking it. Take it down on the target first \
         (`docker compose -p {compose_project} down`), then delete again with `?stack_removed=true`"
    )]
    StackRunning {
        environment: String,
        compose_project: String,
        deployment_id: i64,
    },
    /// A rule refused the change (the message says which).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for ProjectError {
    fn from(e: crate::db::SqlError) -> Self {
        ProjectError::Db(e.into())
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub repo_url: Option<String>,
    pub git_ref: String,
    pub compose_path: String,
    /// `always`, `missing` or `never`.
    #[schema(value_type = String)]
    pub pull: PullPolicy,
    pub created_at: String,
    pub updated_at: String,
    pub environments: Vec<Environment>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Environment {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    /// Overrides the project's ref for this environment.
    pub git_ref: Option<String>,
    /// The compose project name its stack runs under on the target: chosen when the environment
    /// is made, unique across the appliance, kept across renames (see `store::insert_environment`).
    pub compose_project: String,
    /// Log retention of this environment; `null` = the appliance's default
    /// (`deploys.log_keep_deployments`).
    pub log_keep_deployments: Option<u32>,
    /// `null` = `deploys.log_keep_days`.
    pub log_keep_days: Option<u32>,
    /// A push webhook for this environment's branch (its `git_ref`, else the project's)
    /// deploys the pushed commit (src/hooks).
    pub deploy_on_push: bool,
    /// A pushed tag matching this glob (`*`, `?`) deploys the tag's commit; `null` = never.
    pub deploy_on_tag: Option<String>,
    /// A deployment that fails after `docker compose up` ran is answered by a redeploy of the
    /// environment's last successful release (`rollback_of` names the failed one).
    pub auto_rollback: bool,
    /// Only admins and `deployers` may deploy it (src/protect).
    pub protected: bool,
    /// A deploy waits `awaiting_approval` until another person who may deploy it approves.
    pub require_approval: bool,
    /// Who may deploy it when protected: `{"role": "maintainer"}` (that project role or
    /// higher) and `{"user_id": 3, "username": "ada"}` entries.
    pub deployers: Vec<crate::protect::Deployer>,
}

/// When push webhooks deploy an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushTriggers {
    pub on_push: bool,
    pub on_tag: Option<String>,
}

/// Longest `deploy_on_tag` glob.
pub const MAX_TAG_GLOB_BYTES: usize = 100;

/// A `deploy_on_tag` glob: the characters of a tag name plus `*` and `?`, at most 100 bytes.
pub fn validate_tag_glob(field: &'static str, value: &str) -> Result<String, ProjectError> {
    let v = value.trim();
    let ok = !v.is_empty()
        && v.len() <= MAX_TAG_GLOB_BYTES
        && !v.starts_with(['-', '/'])
        && !v.contains("..")
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-+*?".contains(c));
    if !ok {
        return invalid(
            field,
            "must be a tag name or a glob of one (`*` any run of characters, `?` one), at most 100 \
             bytes of letters, digits and . _ / - +, e.g. v* or release-?.*",
        );
    }
    Ok(v.to_owned())
}

/// Per-environment log retention overrides (`None` = the configured default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_deployments: Option<u32>,
    pub keep_days: Option<u32>,
}

/// The most deployments' logs an environment may keep by count, and the longest it may keep them.
pub const MAX_KEEP_DEPLOYMENTS: u32 = 1_000_000;
pub const MAX_KEEP_DAYS: u32 = 36_500;

/// A retention field as given in JSON: `null` (or absent) = the default, else a whole number in
/// `0..=max`. Taken as a raw value so a wrong type is a 422 naming the field, not a body error.
pub fn validate_keep(
    field: &'static str,
    value: &serde_json::Value,
    max: u32,
) -> Result<Option<u32>, ProjectError> {
    if value.is_null() {
        return Ok(None);
    }
    match value.as_u64() {
        Some(n) if n <= u64::from(max) => Ok(Some(u32::try_from(n).unwrap_or(max))),
        _ => invalid(
            field,
            format!("must be a whole number from 0 to {max}, or null for the appliance's default"),
        ),
    }
}

/// A retention field from a form: empty = the default.
pub fn parse_keep_form(field: &'static str, value: &str, max: u32) -> Result<Option<u32>, ProjectError> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<u64>() {
        Ok(n) => validate_keep(field, &serde_json::Value::from(n), max),
        Err(_) => invalid(
            field,
            format!("must be a whole number from 0 to {max}, or empty for the appliance's default"),
        ),
    }
}

/// A partial update of an environment's settings: absent fields stay, `null` returns a
/// retention field to the appliance's default.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentPatch {
    #[serde(default, deserialize_with = "double_value")]
    pub log_keep_deployments: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "double_value")]
    pub log_keep_days: Option<serde_json::Value>,
    /// `true`/`false`.
    #[serde(default, deserialize_with = "double_value")]
    pub deploy_on_push: Option<serde_json::Value>,
    /// A tag glob, or `null`/`""` for none.
    #[serde(default, deserialize_with = "double_value")]
    pub deploy_on_tag: Option<serde_json::Value>,
    /// `true`/`false`.
    #[serde(default, deserialize_with = "double_value")]
    pub auto_rollback: Option<serde_json::Value>,
    /// `true`/`false` (global admins only).
    #[serde(default, deserialize_with = "double_value")]
    pub protected: Option<serde_json::Value>,
    /// Roles (`"deployer"`, `"maintainer"`) and people (a user id, `"user:<username>"`, a
    /// username) who may deploy it when protected (global admins only).
    #[serde(default, deserialize_with = "double_value")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub deployers: Option<serde_json::Value>,
    /// `true`/`false` (global admins only).
    #[serde(default, deserialize_with = "double_value")]
    pub require_approval: Option<serde_json::Value>,
}

/// Present (even as `null`) → `Some(value)`; absent → `None` (via `default`).
fn double_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl EnvironmentPatch {
    /// The retention this patch leaves when applied to `current`, validated.
    pub fn apply(&self, current: Retention) -> Result<Retention, ProjectError> {
        Ok(Retention {
            keep_deployments: match &self.log_keep_deployments {
                None => current.keep_deployments,
                Some(v) => validate_keep("log_keep_deployments", v, MAX_KEEP_DEPLOYMENTS)?,
            },
            keep_days: match &self.log_keep_days {
                None => current.keep_days,
                Some(v) => validate_keep("log_keep_days", v, MAX_KEEP_DAYS)?,
            },
        })
    }
}

impl EnvironmentPatch {
    /// The push triggers this patch leaves when applied to `current`, validated.
    pub fn apply_triggers(&self, current: &PushTriggers) -> Result<PushTriggers, ProjectError> {
        let on_push = match &self.deploy_on_push {
            None => current.on_push,
            Some(v) => match v.as_bool() {
                Some(b) => b,
                None => return invalid("deploy_on_push", "must be true or false"),
            },
        };
        let on_tag = match &self.deploy_on_tag {
            None => current.on_tag.clone(),
            Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
            Some(serde_json::Value::String(s)) => Some(validate_tag_glob("deploy_on_tag", s)?),
            Some(_) => return invalid("deploy_on_tag", "must be a tag glob such as v*, or null"),
        };
        Ok(PushTriggers { on_push, on_tag })
    }
}

impl EnvironmentPatch {
    /// The `auto_rollback` this patch leaves when applied to `current`, validated.
    pub fn apply_auto_rollback(&self, current: bool) -> Result<bool, ProjectError> {
        match &self.auto_rollback {
            None => Ok(current),
            Some(v) => match v.as_bool() {
                Some(b) => Ok(b),
                None => invalid("auto_rollback", "must be true or false"),
            },
        }
    }
}

impl EnvironmentPatch {
    /// Whether this patch touches the protection fields (a global admin's business).
    pub fn touches_protection(&self) -> bool {
        self.protected.is_some() || self.deployers.is_some() || self.require_approval.is_some()
    }

    /// The protection this patch leaves when applied to `current`, validated (people resolved).
    pub fn apply_protection(
        &self,
        c: &crate::db::Conn<'_>,
        current: &crate::protect::Protection,
    ) -> Result<crate::protect::Protection, ProjectError> {
        let flag = |field: &'static str, v: &Option<serde_json::Value>, was: bool| match v {
            None => Ok(was),
            Some(v) => v
                .as_bool()
                .map_or_else(|| invalid(field, "must be true or false"), Ok),
        };
        Ok(crate::protect::Protection {
            protected: flag("protected", &self.protected, current.protected)?,
            require_approval: flag(
                "require_approval",
                &self.require_approval,
                current.require_approval,
            )?,
            deployers: match &self.deployers {
                None => current.deployers.clone(),
                Some(v) => crate::protect::parse_deployers(c, v)?,
            },
        })
    }
}

impl Environment {
    pub fn protection(&self) -> crate::protect::Protection {
        crate::protect::Protection {
            protected: self.protected,
            require_approval: self.require_approval,
            deployers: self.deployers.clone(),
        }
    }

    pub fn triggers(&self) -> PushTriggers {
        PushTriggers {
            on_push: self.deploy_on_push,
            on_tag: self.deploy_on_tag.clone(),
        }
    }

    pub fn retention(&self) -> Retention {
        Retention {
            keep_deployments: self.log_keep_deployments,
            keep_days: self.log_keep_days,
        }
    }
}

/// Fields of a project, as given by a create request or after applying a patch.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    pub name: String,
    #[serde(default)]
    pub repo_url: Option<String>,
    #[serde(default)]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub compose_path: Option<String>,
    #[serde(default)]
    pub pull: Option<String>,
}

/// A partial update: absent fields stay; `"repo_url": null` clears the repository.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub repo_url: Option<Option<String>>,
    pub git_ref: Option<String>,
    pub compose_path: Option<String>,
    pub pull: Option<String>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A new environment of a project.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentInput {
    pub name: String,
    #[serde(default)]
    pub git_ref: Option<String>,
    /// Log retention overrides (`null` or absent = the appliance's default).
    #[serde(default)]
    pub log_keep_deployments: serde_json::Value,
    #[serde(default)]
    pub log_keep_days: serde_json::Value,
}

/// A validated environment, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEnvironment {
    pub name: String,
    pub git_ref: Option<String>,
    pub retention: Retention,
}

impl EnvironmentInput {
    pub fn validate(&self) -> Result<ValidEnvironment, ProjectError> {
        let name = validate_slug("name", NameKind::Environment, &self.name)?;
        let git_ref = match self.git_ref.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) => Some(validate_git_ref("git_ref", r)?),
        };
        let retention = Retention {
            keep_deployments: validate_keep(
                "log_keep_deployments",
                &self.log_keep_deployments,
                MAX_KEEP_DEPLOYMENTS,
            )?,
            keep_days: validate_keep("log_keep_days", &self.log_keep_days, MAX_KEEP_DAYS)?,
        };
        Ok(ValidEnvironment {
            name,
            git_ref,
            retention,
        })
    }
}

/// A validated project, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidProject {
    pub name: String,
    pub repo_url: Option<String>,
    pub git_ref: String,
    pub compose_path: String,
    pub pull: PullPolicy,
}

fn invalid<T>(field: &'static str, message: impl Into<String>) -> Result<T, ProjectError> {
    Err(ProjectError::Invalid {
        field,
        message: message.into(),
    })
}

/// A project or environment name ([`NameKind::Project`] / [`NameKind::Environment`]: the one rule
/// per kind of name), with the form or JSON field it came from named in the error.
pub fn validate_slug(field: &'static str, kind: NameKind, value: &str) -> Result<String, ProjectError> {
    names::validate(kind, value).map_err(|e| ProjectError::Invalid {
        field,
        message: e.message,
    })
}

/// A branch, tag or commit. Never starts with `-` (it goes to git as an argument).
pub fn validate_git_ref(field: &'static str, value: &str) -> Result<String, ProjectError> {
    let v = value.trim();
    let ok = !v.is_empty()
        && v.len() <= 200
        && !v.starts_with(['-', '/'])
        && !v.ends_with(['/', '.'])
        && !v.contains("..")
        && !v.contains("@{")
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-+".contains(c));
    if !ok {
        return invalid(
            field,
            "must be a branch, tag or commit such as main, v1.2.0 or release/2026-11",
        );
    }
    Ok(v.to_owned())
}

fn validate_repo_url(value: &str) -> Result<String, ProjectError> {
    let v = value.trim();
    let scheme_ok = ["https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|s| v.starts_with(s))
        || (v.contains('@') && v.contains(':') && !v.contains("://"));
    if v.is_empty()
        || v.len() > 2000
        || v.starts_with('-')
        || v.chars().any(char::is_whitespace)
        || !scheme_ok
    {
        return invalid(
            "repo_url",
            "must be a git URL (https://, ssh://, git@host:path or file://)",
        );
    }
    if let Some(rest) = v.split_once("://").map(|(_, r)| r) {
        let authority = rest.split('/').next().unwrap_or("");
        if authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        {
            return invalid(
                "repo_url",
                "must not contain a password or token; store it as the secret STAGELY_GIT_TOKEN instead",
            );
        }
    }
    Ok(v.to_owned())
}

fn validate_compose_path(value: &str, has_repo: bool) -> Result<String, ProjectError> {
    let v = value.trim();
    if v.is_empty() || v.len() > 1000 || v.contains('\0') || v.starts_with('-') {
        return invalid("compose_path", "must be a path to a compose file");
    }
    if v.split('/').any(|part| part == "..") {
        return invalid("compose_path", "must not contain '..'");
    }
    match (has_repo, v.starts_with('/')) {
        (true, true) => invalid(
            "compose_path",
            "must be relative to the repository root when repo_url is set",
        ),
        (false, false) => invalid(
            "compose_path",
            "must be an absolute path on the target server when there is no repo_url",
        ),
        _ => Ok(v.to_owned()),
    }
}

impl ProjectInput {
    pub fn validate(&self) -> Result<ValidProject, ProjectError> {
        let name = validate_slug("name", NameKind::Project, &self.name)?;
        let repo_url = match self.repo_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => Some(validate_repo_url(url)?),
        };
        let git_ref = validate_git_ref("git_ref", self.git_ref.as_deref().unwrap_or("main"))?;
        let compose_path = match (self.compose_path.as_deref(), repo_url.is_some()) {
            (Some(p), has_repo) => validate_compose_path(p, has_repo)?,
            (None, true) => "docker-compose.yml".to_owned(),
            (None, false) => {
                return invalid(
                    "compose_path",
                    "is required (an absolute path on the target server) when there is no repo_url",
                );
            }
        };
        let pull = match self.pull.as_deref() {
            None => PullPolicy::Always,
            Some(p) => match PullPolicy::parse(p) {
                Some(p) => p,
                None => return invalid("pull", "allowed values are \"always\", \"missing\" and \"never\""),
            },
        };
        Ok(ValidProject {
            name,
            repo_url,
            git_ref,
            compose_path,
            pull,
        })
    }
}

impl ProjectPatch {
    /// The full input this patch produces when applied to `current`.
    pub fn apply(self, current: &Project) -> ProjectInput {
        ProjectInput {
            name: self.name.unwrap_or_else(|| current.name.clone()),
            repo_url: self.repo_url.unwrap_or_else(|| current.repo_url.clone()),
            git_ref: Some(self.git_ref.unwrap_or_else(|| current.git_ref.clone())),
            compose_path: Some(self.compose_path.unwrap_or_else(|| current.compose_path.clone())),
            pull: Some(self.pull.unwrap_or_else(|| current.pull.as_str().to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, repo: Option<&str>, path: Option<&str>) -> ProjectInput {
        ProjectInput {
            name: name.into(),
            repo_url: repo.map(Into::into),
            git_ref: None,
            compose_path: path.map(Into::into),
            pull: None,
        }
    }

    #[test]
    fn defaults_and_rules() {
        let p = input("shop", Some("https://github.com/acme/shop.git"), None)
            .validate()
            .unwrap();
        assert_eq!(
            (p.git_ref.as_str(), p.compose_path.as_str(), p.pull),
            ("main", "docker-compose.yml", PullPolicy::Always)
        );
        assert!(
            input("shop", None, Some("/srv/shop/compose.yaml"))
                .validate()
                .is_ok()
        );
        for (bad, field) in [
            (input("Shop!", None, Some("/x")), "name"),
            (input("", None, Some("/x")), "name"),
            (input("shop", None, None), "compose_path"),
            (input("shop", None, Some("relative.yml")), "compose_path"),
            (
                input("shop", Some("https://x/y"), Some("/abs.yml")),
                "compose_path",
            ),
            (
                input("shop", Some("https://x/y"), Some("../up.yml")),
                "compose_path",
            ),
            (input("shop", Some("--upload-pack=evil"), None), "repo_url"),
            (
                input("shop", Some("https://bob:hunter2@github.com/a/b"), None),
                "repo_url",
            ),
        ] {
            match bad.validate() {
                Err(ProjectError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad:?}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let mut p = input("shop", None, Some("/x"));
        p.git_ref = Some("-c core.sshCommand=evil".into());
        assert!(p.validate().is_err());
        p.git_ref = Some("release/2026.11".into());
        assert!(p.validate().is_ok());
        for (name, ok) in [("staging", true), ("Staging", false), (&*"e".repeat(33), false)] {
            let env = EnvironmentInput {
                name: name.into(),
                git_ref: None,
                log_keep_deployments: serde_json::Value::Null,
                log_keep_days: serde_json::Value::Null,
            };
            match env.validate() {
                Ok(_) => assert!(ok, "{name}"),
                Err(ProjectError::Invalid { field, .. }) => assert!(!ok && field == "name", "{name}"),
                Err(e) => panic!("{name}: {e}"),
            }
        }
        for (v, ok) in [
            (serde_json::json!(null), Some(None)),
            (serde_json::json!(0), Some(Some(0))),
            (serde_json::json!(36_500), Some(Some(36_500))),
            (serde_json::json!(36_501), None),
            (serde_json::json!(-1), None),
            (serde_json::json!(1.5), None),
            (serde_json::json!("7"), None),
        ] {
            match validate_keep("log_keep_days", &v, MAX_KEEP_DAYS) {
                Ok(got) => assert_eq!(Some(got), ok, "{v}"),
                Err(ProjectError::Invalid { field, .. }) => {
                    assert!(ok.is_none() && field == "log_keep_days", "{v}")
                }
                Err(e) => panic!("{v}: {e}"),
            }
        }
        assert!(matches!(
            parse_keep_form("log_keep_days", " ", MAX_KEEP_DAYS),
            Ok(None)
        ));
        assert!(matches!(
            parse_keep_form("log_keep_days", "7", MAX_KEEP_DAYS),
            Ok(Some(7))
        ));
        assert!(parse_keep_form("log_keep_days", "-7", MAX_KEEP_DAYS).is_err());
        p.pull = Some("sometimes".into());
        assert!(matches!(
            p.validate(),
            Err(ProjectError::Invalid { field: "pull", .. })
        ));
    }
}
