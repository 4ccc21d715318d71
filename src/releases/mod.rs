//! Releases (issue 14): what each successful deployment put on the server — its commit, the hash
//! of compose's model, the image each service runs (by id and registry digest), the secret
//! versions it used (its deployment's `deployment_secrets` rows) and the agent that applied it —
//! and the redeploy of one, exactly (`ops`), by hand, by `stagely rollback` or by
//! `auto_rollback`.
//!
//! [`store`]: the SQL.

pub mod store;

use serde::Serialize;

use crate::db::DbError;
use stagely_protocol::ReleaseService;

/// A release as stored: one per successful deployment of an agent that reports releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Release {
    /// The deployment that applied it (a release is named by its deployment).
    pub deployment_id: i64,
    pub environment_id: i64,
    /// The agent that applied it; `None` once that agent was deleted (`agent_name` stays).
    pub agent_id: Option<i64>,
    pub agent_name: String,
    pub commit: Option<String>,
    /// Hex SHA-256 of compose's normalised model of the project's files (no secret in it).
    pub compose_hash: String,
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<ReleaseService>,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no such release")]
    NotFound,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for ReleaseError {
    fn from(e: crate::db::SqlError) -> Self {
        ReleaseError::Db(e.into())
    }
}

/// Most services one release may name (as many as one RUNTIME may carry).
pub const MAX_SERVICES: usize = stagely_protocol::release::MAX_RUNTIME_CONTAINERS;
/// Longest image reference (or digest reference) accepted.
pub const MAX_IMAGE_LEN: usize = 512;

fn is_hex(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `sha256:<64 hex>`.
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| is_hex(h, 64..=64))
}

/// Whether `s` can be written into compose's `image:` and handed to the engine as it is: no
/// whitespace or control character, no leading `-`, bounded.
fn is_image_ref(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IMAGE_LEN
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// What an agent reported, checked before it is stored: bounded counts and lengths, hex hashes,
/// image ids `sha256:<hex>`, digests `name@sha256:<hex>`, service names unique. The error says
/// which part is wrong (never echoing what was sent).
pub fn validate(release: &stagely_protocol::Release) -> Result<(), String> {
    if !is_hex(&release.compose_hash, 64..=64) {
        return Err("compose_hash is not 64 hex digits".into());
    }
    if release.services.len() > MAX_SERVICES {
        return Err(format!("more than {MAX_SERVICES} services"));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in release.services.iter().enumerate() {
        if crate::secrets::validate_service(&s.name).is_err() {
            return Err(format!("service {i}: the name is not a compose service name"));
        }
        if !names.insert(s.name.as_str()) {
            return Err(format!("service {i}: a second entry for the same service"));
        }
        if !is_image_ref(&s.image) {
            return Err(format!("service {}: image is not an image reference", s.name));
        }
        if !is_image_id(&s.image_id) {
            return Err(format!("service {}: image_id is not sha256:<64 hex>", s.name));
        }
        if let Some(d) = &s.repo_digest {
            let ok = is_image_ref(d)
                && d.split_once('@')
                    .is_some_and(|(name, id)| !name.is_empty() && is_image_id(id));
            if !ok {
                return Err(format!(
                    "service {}: repo_digest is not name@sha256:<64 hex>",
                    s.name
                ));
            }
        }
        if !s.config_hash.is_empty() && !is_hex(&s.config_hash, 1..=128) {
            return Err(format!("service {}: config_hash is not hex", s.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagely_protocol::Release as Wire;

    fn service(name: &str) -> ReleaseService {
        ReleaseService {
            name: name.into(),
            image: "shop/web:1.2".into(),
            image_id: format!("sha256:{}", "a".repeat(64)),
            repo_digest: Some(format!("shop/web@sha256:{}", "b".repeat(64))),
            config_hash: "c".repeat(64),
        }
    }

    #[test]
    fn a_release_is_checked_before_it_is_stored() {
        let good = Wire {
            compose_hash: "d".repeat(64),
            services: vec![service("db"), service("web")],
        };
        assert_eq!(validate(&good), Ok(()));
        let mut bad = Vec::new();
        let mut r = good.clone();
        r.compose_hash = "xyz".into();
        bad.push(r);
        let mut r = good.clone();
        r.services[0].image_id = "sha256:short".into();
        bad.push(r);
        let mut r = good.clone();
        r.services[0].repo_digest = Some("shop/web:latest".into());
        bad.push(r);
        let mut r = good.clone();
        r.services[1].name = "db".into();
        bad.push(r);
        let mut r = good.clone();
        r.services[0].image = "a b".into();
        bad.push(r);
        let mut r = good.clone();
        r.services[0].name = "-x".into();
        bad.push(r);
        let mut r = good.clone();
        r.services = (0..=MAX_SERVICES).map(|i| service(&format!("s{i}"))).collect();
        bad.push(r);
        for r in bad {
            assert!(validate(&r).is_err(), "{r:?}");
        }
        // A built image has no digest; its pin is the image id.
        let mut built = service("web");
        built.repo_digest = None;
        assert!(is_image_id(built.pin()));
    }
}
