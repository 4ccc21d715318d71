//! What a deployment awaiting approval would change: the commit range from the environment's
//! last successful release, and which secret versions differ (keys and versions, never values).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::deploys::{DeployError, Deployment};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Diff {
    /// The commit of the environment's last successful release; `null` when it has none.
    pub from_commit: Option<String>,
    pub to_ref: String,
    /// The pinned commit (a push's sha, a redeploy's release); `null` when the agent resolves
    /// `to_ref` at dispatch.
    pub to_commit: Option<String>,
    /// A compare page at the forge, for a GitHub/GitLab/Gitea https repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commits_url: Option<String>,
    pub secrets: Vec<SecretChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SecretChange {
    pub key: String,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    /// `added`, `changed` or `removed`.
    pub change: &'static str,
}

type Versions = BTreeMap<(String, String, Option<String>), i64>;

/// Compare `d` with its environment's last successful release: the secret versions it would
/// be sent now (a redeploy: those of the release it restores) against the release's.
pub fn diff(c: &crate::db::Conn<'_>, d: &Deployment) -> Result<Diff, DeployError> {
    let last = crate::releases::store::latest(c, d.environment_id)?;
    let from: Versions = match &last {
        Some(r) => crate::deploys::store::get(c, r.deployment_id)?
            .secrets
            .into_iter()
            .map(|s| ((s.key, s.scope, s.service), s.version))
            .collect(),
        None => Versions::new(),
    };
    let to: Versions = match d.redeploy_of {
        Some(of) => crate::secrets::store::versions_of_deployment(c, of)?.0,
        None => crate::secrets::store::for_environment(c, d.project_id, d.environment_id)?,
    }
    .into_iter()
    .map(|s| ((s.key, s.scope.as_str().to_owned(), s.service), s.version))
    .collect();
    let mut secrets = Vec::new();
    for (k, v) in &to {
        match from.get(k) {
            None => secrets.push(change(k, None, Some(*v), "added")),
            Some(old) if old != v => secrets.push(change(k, Some(*old), Some(*v), "changed")),
            Some(_) => {}
        }
    }
    for (k, v) in &from {
        if !to.contains_key(k) {
            secrets.push(change(k, Some(*v), None, "removed"));
        }
    }
    let from_commit = last.and_then(|r| r.commit);
    let repo = crate::projects::store::get(c, d.project_id)
        .ok()
        .and_then(|p| p.repo_url);
    let to_commit = d.commit.clone();
    let commits_url = match (&repo, &from_commit) {
        (Some(repo), Some(from)) => compare_url(repo, from, to_commit.as_deref().unwrap_or(&d.git_ref)),
        _ => None,
    };
    Ok(Diff {
        from_commit,
        to_ref: d.git_ref.clone(),
        to_commit,
        commits_url,
        secrets,
    })
}

fn change(
    k: &(String, String, Option<String>),
    from: Option<i64>,
    to: Option<i64>,
    what: &'static str,
) -> SecretChange {
    SecretChange {
        key: k.0.clone(),
        scope: k.1.clone(),
        service: k.2.clone(),
        from_version: from,
        to_version: to,
        change: what,
    }
}

/// `https://github.com/o/r/compare/a...b` for an https repository URL without credentials.
fn compare_url(repo: &str, from: &str, to: &str) -> Option<String> {
    let base = repo
        .strip_prefix("https://")?
        .trim_end_matches('/')
        .trim_end_matches(".git");
    if base.contains('@') || !base.contains('/') {
        return None;
    }
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
    if !ok(from) || !ok(to) {
        return None;
    }
    Some(format!("https://{base}/compare/{from}...{to}"))
}

#[cfg(test)]
mod tests {
    use super::compare_url;

    #[test]
    fn a_compare_url_only_for_plain_https_repositories() {
        assert_eq!(
            compare_url("https://github.com/o/r.git", "abc", "def").as_deref(),
            Some("https://github.com/o/r/compare/abc...def")
        );
        assert_eq!(compare_url("git@github.com:o/r.git", "a", "b"), None);
        assert_eq!(compare_url("https://u@github.com/o/r", "a", "b"), None);
        assert_eq!(compare_url("https://github.com/o/r", "a", "b c"), None);
    }
}
