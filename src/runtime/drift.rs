//! Comparing what runs with what the last release put there (pure: no I/O), bounding a report,
//! and aggregating containers per compose service for the API.
//!
//! Drift kinds (the shared plan of issue 14), one reason per service and kind:
//! - `missing`: a release service has no container;
//! - `stopped`: a container of the service is not `running` (exited, dead, created, paused,
//!   restarting);
//! - `extra`: containers of a service the release does not have;
//! - `image`: a container runs another image id than the release's;
//! - `config`: a container's compose config-hash label differs from the release's.

use std::collections::BTreeMap;

use stagely_protocol::release::{MAX_RUNTIME_CONTAINERS, ReleaseService, RuntimeContainer};

use super::{DriftReason, RuntimeService};

/// Longest kept text of a reported field (names, images, states…), in characters.
pub const MAX_FIELD_CHARS: usize = 200;
/// Containers named in one reason's detail before "and N more".
const NAMED_IN_DETAIL: usize = 3;

fn clip(s: &mut String, max: usize) {
    if s.chars().count() > max {
        *s = s.chars().take(max).collect();
    }
}

/// Bound a report as received: at most [`MAX_RUNTIME_CONTAINERS`] containers (the rest dropped,
/// `truncated` set), every text clipped, ordered by service then name so that the same
/// containers always compare (and store) the same.
pub fn bound(mut containers: Vec<RuntimeContainer>, truncated: bool) -> (Vec<RuntimeContainer>, bool) {
    let truncated = truncated || containers.len() > MAX_RUNTIME_CONTAINERS;
    containers.truncate(MAX_RUNTIME_CONTAINERS);
    for c in &mut containers {
        for s in [
            &mut c.service,
            &mut c.name,
            &mut c.state,
            &mut c.health,
            &mut c.image,
            &mut c.image_id,
            &mut c.config_hash,
        ] {
            clip(s, MAX_FIELD_CHARS);
        }
        for s in [&mut c.repo_digest, &mut c.started_at].into_iter().flatten() {
            clip(s, MAX_FIELD_CHARS);
        }
    }
    containers.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    (containers, truncated)
}

/// `sha256:0123456789ab` (the first 12 hex digits of an image id or digest), for details.
pub fn short(id: &str) -> String {
    match id.rsplit_once("sha256:") {
        Some((name, hex)) => format!("{name}sha256:{}", hex.chars().take(12).collect::<String>()),
        None => id.chars().take(24).collect(),
    }
}

fn names(list: &[&RuntimeContainer]) -> String {
    let mut out: Vec<String> = list
        .iter()
        .take(NAMED_IN_DETAIL)
        .map(|c| c.name.clone())
        .collect();
    if list.len() > NAMED_IN_DETAIL {
        out.push(format!("and {} more", list.len() - NAMED_IN_DETAIL));
    }
    out.join(", ")
}

/// The drift of `containers` from `release`: `None` when they match or there is no release.
/// With a `truncated` report, a release service after the last reported one is not called
/// missing (its containers may be among those left out).
pub fn compute(
    release: Option<&[ReleaseService]>,
    containers: &[RuntimeContainer],
    truncated: bool,
) -> Option<Vec<DriftReason>> {
    let release = release?;
    let mut by_service: BTreeMap<&str, Vec<&RuntimeContainer>> = BTreeMap::new();
    for c in containers {
        by_service.entry(c.service.as_str()).or_default().push(c);
    }
    let last_reported = containers.last().map(|c| c.service.as_str());
    let mut reasons = Vec::new();
    let reason = |service: &str, kind: &str, detail: String| DriftReason {
        service: service.to_owned(),
        kind: kind.to_owned(),
        detail,
    };
    for s in release {
        let Some(list) = by_service.get(s.name.as_str()) else {
            let beyond = truncated && last_reported.is_none_or(|last| s.name.as_str() > last);
            if !beyond {
                reasons.push(reason(&s.name, "missing", "no container of this service".into()));
            }
            continue;
        };
        let stopped: Vec<&RuntimeContainer> = list.iter().copied().filter(|c| c.state != "running").collect();
        if !stopped.is_empty() {
            let states: Vec<&str> = stopped.iter().map(|c| c.state.as_str()).collect();
            let mut states_once = states.clone();
            states_once.dedup();
            reasons.push(reason(
                &s.name,
                "stopped",
                format!("{} not running ({})", names(&stopped), states_once.join(", ")),
            ));
        }
        if !s.image_id.is_empty() {
            let other: Vec<&RuntimeContainer> = list
                .iter()
                .copied()
                .filter(|c| c.image_id != s.image_id)
                .collect();
            if let Some(first) = other.first() {
                reasons.push(reason(
                    &s.name,
                    "image",
                    format!(
                        "{} runs {} ({}); the release has {} ({})",
                        names(&other),
                        short(&first.image_id),
                        first.image,
                        short(&s.image_id),
                        s.image
                    ),
                ));
            }
        }
        if !s.config_hash.is_empty() {
            let other: Vec<&RuntimeContainer> = list
                .iter()
                .copied()
                .filter(|c| c.config_hash != s.config_hash)
                .collect();
            if let Some(first) = other.first() {
                reasons.push(reason(
                    &s.name,
                    "config",
                    format!(
                        "{} has config hash {}; the release has {}",
                        names(&other),
                        first.config_hash.chars().take(12).collect::<String>(),
                        s.config_hash.chars().take(12).collect::<String>()
                    ),
                ));
            }
        }
    }
    for (service, list) in &by_service {
        if !release.iter().any(|s| s.name == *service) {
            let n = list.len();
            reasons.push(reason(
                service,
                "extra",
                format!(
                    "{n} container{} not in the release: {}",
                    if n == 1 { "" } else { "s" },
                    names(list)
                ),
            ));
        }
    }
    reasons.sort_by(|a, b| (&a.service, &a.kind).cmp(&(&b.service, &b.kind)));
    (!reasons.is_empty()).then_some(reasons)
}

/// One line naming every reason (`web: stopped (web-1 not running (exited)); db: missing`), for
/// audit details and notices.
pub fn describe(reasons: &[DriftReason]) -> String {
    reasons
        .iter()
        .map(|r| format!("{}: {} ({})", r.service, r.kind, r.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The containers per compose service, plus each release service without a container as
/// `missing`; ordered by name.
pub fn services(containers: &[RuntimeContainer], release: Option<&[ReleaseService]>) -> Vec<RuntimeService> {
    let mut by_service: BTreeMap<&str, Vec<&RuntimeContainer>> = BTreeMap::new();
    for c in containers {
        by_service.entry(c.service.as_str()).or_default().push(c);
    }
    let mut out: Vec<RuntimeService> = by_service
        .iter()
        .map(|(name, list)| {
            let first = list[0];
            let state = list
                .iter()
                .find(|c| c.state != "running")
                .map_or("running", |c| c.state.as_str());
            let health = if list.iter().any(|c| c.health == "unhealthy") {
                "unhealthy"
            } else if list.iter().any(|c| c.health == "starting") {
                "starting"
            } else if list.iter().all(|c| c.health == "healthy") {
                "healthy"
            } else {
                ""
            };
            RuntimeService {
                name: (*name).to_owned(),
                state: state.to_owned(),
                health: health.to_owned(),
                restarts: list.iter().map(|c| c.restarts).fold(0u64, u64::saturating_add),
                image: first.image.clone(),
                digest: first
                    .repo_digest
                    .clone()
                    .unwrap_or_else(|| first.image_id.clone()),
                started_at: first.started_at.clone(),
                containers: list.len(),
            }
        })
        .collect();
    for s in release.unwrap_or_default() {
        if !by_service.contains_key(s.name.as_str()) {
            out.push(RuntimeService {
                name: s.name.clone(),
                state: "missing".into(),
                health: String::new(),
                restarts: 0,
                image: s.image.clone(),
                digest: s.repo_digest.clone().unwrap_or_else(|| s.image_id.clone()),
                started_at: None,
                containers: 0,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ReleaseService {
        ReleaseService {
            name: name.into(),
            image: format!("shop/{name}:1"),
            image_id: format!("sha256:{name}aaaaaaaaaaaaaaaa"),
            repo_digest: None,
            config_hash: format!("cfg-{name}"),
        }
    }

    fn running(release: &ReleaseService, n: usize) -> RuntimeContainer {
        RuntimeContainer {
            service: release.name.clone(),
            name: format!("shop-{}-{n}", release.name),
            state: "running".into(),
            health: String::new(),
            restarts: 0,
            image: release.image.clone(),
            image_id: release.image_id.clone(),
            repo_digest: None,
            started_at: Some("2026-01-01T00:00:00Z".into()),
            config_hash: release.config_hash.clone(),
        }
    }

    fn kinds(d: Option<Vec<DriftReason>>) -> Vec<(String, String)> {
        d.unwrap_or_default()
            .into_iter()
            .map(|r| (r.service, r.kind))
            .collect()
    }

    #[test]
    fn matching_containers_or_no_release_is_no_drift() {
        let release = vec![svc("db"), svc("web")];
        let cs = vec![
            running(&release[0], 1),
            running(&release[1], 1),
            running(&release[1], 2),
        ];
        assert_eq!(compute(Some(&release), &cs, false), None);
        assert_eq!(compute(None, &[], false), None);
        assert_eq!(compute(None, &cs, false), None);
    }

    #[test]
    fn each_kind_is_named_with_its_service() {
        let release = vec![svc("db"), svc("web"), svc("worker")];
        let mut stopped = running(&release[1], 1);
        stopped.state = "exited".into();
        let mut other_image = running(&release[1], 2);
        other_image.image_id = "sha256:bbbbbbbbbbbbbbbbbbbb".into();
        let mut edited = running(&release[0], 1);
        edited.config_hash = "changed".into();
        let mut extra = running(&svc("adminer"), 1);
        extra.service = "adminer".into();
        let cs = vec![edited, stopped, other_image, extra];
        let d = compute(Some(&release), &cs, false);
        assert_eq!(
            kinds(d.clone()),
            [
                ("adminer", "extra"),
                ("db", "config"),
                ("web", "image"),
                ("web", "stopped"),
                ("worker", "missing")
            ]
            .map(|(s, k)| (s.to_owned(), k.to_owned()))
        );
        let text = describe(&d.unwrap());
        assert!(text.contains("shop-web-1 not running (exited)"), "{text}");
        assert!(text.contains("runs sha256:bbbbbbbbbbbb"), "{text}");
    }

    #[test]
    fn every_state_but_running_is_stopped() {
        let release = vec![svc("web")];
        for state in ["exited", "dead", "created", "paused", "restarting"] {
            let mut c = running(&release[0], 1);
            c.state = state.into();
            assert_eq!(
                kinds(compute(Some(&release), &[c], false)),
                [("web".into(), "stopped".into())]
            );
        }
    }

    #[test]
    fn a_truncated_report_does_not_call_unreported_services_missing() {
        let release = vec![svc("a"), svc("b"), svc("z")];
        let cs = vec![running(&release[1], 1)];
        assert_eq!(
            kinds(compute(Some(&release), &cs, true)),
            [("a".into(), "missing".into())]
        );
        assert_eq!(kinds(compute(Some(&release), &cs, false)).len(), 2);
    }

    #[test]
    fn reports_are_bounded_and_ordered() {
        let release = svc("web");
        let mut cs: Vec<RuntimeContainer> = (0..MAX_RUNTIME_CONTAINERS + 5)
            .rev()
            .map(|n| running(&release, n))
            .collect();
        cs[0].image = "x".repeat(10_000);
        let (bounded, truncated) = bound(cs, false);
        assert!(truncated);
        assert_eq!(bounded.len(), MAX_RUNTIME_CONTAINERS);
        assert!(bounded.iter().all(|c| c.image.chars().count() <= MAX_FIELD_CHARS));
        assert!(bounded.windows(2).all(|w| w[0].name <= w[1].name));
    }

    #[test]
    fn services_aggregate_their_containers_and_list_missing_ones() {
        let release = vec![svc("db"), svc("web")];
        let mut a = running(&release[1], 1);
        a.restarts = 2;
        a.health = "healthy".into();
        let mut b = running(&release[1], 2);
        b.restarts = 3;
        b.state = "restarting".into();
        b.health = "unhealthy".into();
        let list = services(&[a, b], Some(&release));
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].name.as_str(), list[0].state.as_str()), ("db", "missing"));
        let web = &list[1];
        assert_eq!(
            (
                web.state.as_str(),
                web.health.as_str(),
                web.restarts,
                web.containers
            ),
            ("restarting", "unhealthy", 5, 2)
        );
        assert_eq!(web.digest, release[1].image_id);
    }
}
