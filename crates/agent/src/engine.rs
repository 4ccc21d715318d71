//! What runs in a compose project, read from the engine (issue 14): the containers of one
//! project (`docker ps -aq --filter label=com.docker.compose.project=<p>`, then `docker inspect`
//! of those ids and `docker image inspect` of their images), as [`RuntimeContainer`]s for RUNTIME
//! and as the [`Release`] a successful deployment reports.
//!
//! Only the fields the protocol names are read: no environment, no command line, no label but
//! compose's service, one-off marker and config hash. One-off containers (`docker compose run`)
//! are left out. Every command is an argument list ([`crate::process`]), its output capped.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::process;
use stagely_protocol::{Release, ReleaseService, RuntimeContainer};

/// Compose's labels the agent reads.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
pub const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";

/// Most bytes read from one `docker inspect` / `docker image inspect`.
const MAX_INSPECT_BYTES: usize = 16 * 1024 * 1024;
/// Most container ids inspected at once (far over [`stagely_protocol::release::MAX_RUNTIME_CONTAINERS`],
/// so the ones reported are chosen by service and name, not by the engine's order).
const MAX_INSPECTED: usize = 4 * stagely_protocol::release::MAX_RUNTIME_CONTAINERS;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot run docker: {0}")]
    Spawn(#[from] std::io::Error),
    /// The docker CLI's own words (no argument of ours is secret).
    #[error("docker {what} failed: {message}")]
    Failed { what: &'static str, message: String },
    #[error("docker {0} printed more than the agent reads")]
    TooLarge(&'static str),
    #[error("cannot read docker {what}'s output: {reason}")]
    Parse { what: &'static str, reason: String },
}

/// The few fields of one `docker inspect` entry the agent reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Inspected {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Image", default)]
    pub image_id: String,
    #[serde(rename = "RestartCount", default)]
    pub restart_count: u64,
    #[serde(rename = "State", default)]
    pub state: InspectedState,
    #[serde(rename = "Config", default)]
    pub config: InspectedConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InspectedState {
    #[serde(rename = "Status", default)]
    pub status: String,
    #[serde(rename = "StartedAt", default)]
    pub started_at: String,
    #[serde(rename = "Health", default)]
    pub health: Option<InspectedHealth>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InspectedHealth {
    #[serde(rename = "Status", default)]
    pub status: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InspectedConfig {
    #[serde(rename = "Image", default)]
    pub image: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The fields of one `docker image inspect` entry the agent reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InspectedImage {
    #[serde(rename = "Id", default)]
    pub id: String,
    #[serde(rename = "RepoDigests", default)]
    pub repo_digests: Option<Vec<String>>,
}

/// Parse `docker inspect` output (a JSON array) into the project's containers, one-offs left
/// out, without digests yet ([`with_digests`]), ordered by service then name.
pub fn parse_inspect(text: &[u8]) -> Result<Vec<RuntimeContainer>, EngineError> {
    let entries: Vec<Inspected> = parse_array(text, "inspect")?;
    let mut out: Vec<RuntimeContainer> = entries
        .into_iter()
        .filter_map(|c| {
            let labels = c.config.labels.unwrap_or_default();
            if labels
                .get(LABEL_ONEOFF)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                return None;
            }
            let started_at = Some(c.state.started_at).filter(|s| !s.is_empty() && !s.starts_with("0001-"));
            Some(RuntimeContainer {
                service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                name: c.name.trim_start_matches('/').to_owned(),
                state: c.state.status,
                health: c.state.health.map(|h| h.status).unwrap_or_default(),
                restarts: c.restart_count,
                image: c.config.image,
                image_id: c.image_id,
                repo_digest: None,
                started_at,
                config_hash: labels.get(LABEL_CONFIG_HASH).cloned().unwrap_or_default(),
            })
        })
        .collect();
    sort(&mut out);
    Ok(out)
}

/// Parse `docker image inspect` output: image id → its registry digests.
pub fn parse_image_inspect(text: &[u8]) -> Result<BTreeMap<String, Vec<String>>, EngineError> {
    let entries: Vec<InspectedImage> = parse_array(text, "image inspect")?;
    Ok(entries
        .into_iter()
        .map(|i| (i.id, i.repo_digests.unwrap_or_default()))
        .collect())
}

fn parse_array<T: serde::de::DeserializeOwned>(
    text: &[u8],
    what: &'static str,
) -> Result<Vec<T>, EngineError> {
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(trimmed).map_err(|e| EngineError::Parse {
        what,
        reason: stagely_protocol::redact::serde_message(&e.to_string()),
    })
}

fn sort(containers: &mut [RuntimeContainer]) {
    containers.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
}

/// The repository of an image reference: `shop/web:1.2` → `shop/web`, `reg:5000/x@sha256:…` →
/// `reg:5000/x`, Docker Hub's `docker.io/` and `library/` dropped so familiar and full names
/// compare alike. `None` for a bare image id.
pub fn repository_of(reference: &str) -> Option<String> {
    let r = reference.trim();
    if r.is_empty() || is_image_id(r) {
        return None;
    }
    let r = r.split('@').next().unwrap_or(r);
    let r = match r.rfind(':') {
        Some(colon) if !r[colon..].contains('/') => &r[..colon],
        _ => r,
    };
    let r = r.strip_prefix("docker.io/").unwrap_or(r);
    let r = r.strip_prefix("index.docker.io/").unwrap_or(r);
    let r = r.strip_prefix("library/").unwrap_or(r);
    (!r.is_empty()).then(|| r.to_owned())
}

/// The registry digest to report for an image created as `image`: the digest whose repository
/// is the image's, else the first, else none (an image built or loaded on the target).
pub fn choose_digest(image: &str, digests: &[String]) -> Option<String> {
    let wanted = repository_of(image);
    digests
        .iter()
        .find(|d| wanted.is_some() && repository_of(d) == wanted)
        .or_else(|| digests.first())
        .cloned()
}

/// `sha256:` and 64 lower-case hex digits: an image id (or a digest's hex part).
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Fill in each container's registry digest from `images` (image id → RepoDigests).
pub fn with_digests(
    mut containers: Vec<RuntimeContainer>,
    images: &BTreeMap<String, Vec<String>>,
) -> Vec<RuntimeContainer> {
    for c in &mut containers {
        c.repo_digest = images
            .get(&c.image_id)
            .and_then(|digests| choose_digest(&c.image, digests));
    }
    containers
}

/// The release of a project whose containers are `containers`: per service, its first
/// container (by name).
pub fn release_of(compose_hash: String, containers: &[RuntimeContainer]) -> Release {
    let mut services: Vec<ReleaseService> = Vec::new();
    for c in containers.iter().filter(|c| !c.service.is_empty()) {
        if services.last().is_some_and(|s| s.name == c.service) {
            continue;
        }
        services.push(ReleaseService {
            name: c.service.clone(),
            image: c.image.clone(),
            image_id: c.image_id.clone(),
            repo_digest: c.repo_digest.clone(),
            config_hash: c.config_hash.clone(),
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    services.dedup_by(|a, b| a.name == b.name);
    Release {
        compose_hash,
        services,
    }
}

/// Every container of compose project `project` (one-offs left out), with digests, ordered by
/// service then name.
pub async fn project_containers(project: &str) -> Result<Vec<RuntimeContainer>, EngineError> {
    let mut ps = process::command("docker");
    ps.args(["ps", "-a", "-q", "--no-trunc", "--filter"])
        .arg(format!("label={LABEL_PROJECT}={project}"));
    let out = run(ps, "ps").await?;
    if !out.status.success() {
        return Err(failed("ps", &out.stderr));
    }
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(MAX_INSPECTED)
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut inspect = process::command("docker");
    inspect.arg("inspect").arg("--type").arg("container").args(&ids);
    let out = run(inspect, "inspect").await?;
    // A container removed between `ps` and `inspect` makes inspect fail while it still prints
    // the others: what it printed counts.
    if !out.status.success() && out.stdout.trim_ascii().is_empty() {
        return Err(failed("inspect", &out.stderr));
    }
    let containers = parse_inspect(&out.stdout)?;
    let image_ids: BTreeSet<&str> = containers
        .iter()
        .map(|c| c.image_id.as_str())
        .filter(|i| !i.is_empty())
        .collect();
    if image_ids.is_empty() {
        return Ok(containers);
    }
    let mut images = process::command("docker");
    images.args(["image", "inspect"]).args(&image_ids);
    let out = run(images, "image inspect").await?;
    if !out.status.success() && out.stdout.trim_ascii().is_empty() {
        return Err(failed("image inspect", &out.stderr));
    }
    let digests = parse_image_inspect(&out.stdout)?;
    Ok(with_digests(containers, &digests))
}

async fn run(cmd: tokio::process::Command, what: &'static str) -> Result<std::process::Output, EngineError> {
    process::output_capped(cmd, MAX_INSPECT_BYTES)
        .await?
        .ok_or(EngineError::TooLarge(what))
}

fn failed(what: &'static str, stderr: &[u8]) -> EngineError {
    EngineError::Failed {
        what,
        message: process::truncate(String::from_utf8_lossy(stderr).trim(), 2048),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "sha256:8d9db4ae45eeb435475b8bdf87aa9b9ce65ff829d8bf2988faf10553bc192796";
    const ID_B: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    /// Trimmed from a real `docker inspect` (engine 20.10, compose 2.40): two services, a
    /// one-off, a healthcheck, a never-started container; fields the agent must not read kept in.
    fn inspect_json() -> String {
        format!(
            r#"[
 {{"Id":"c1","Name":"/shop-web-2","Image":"{ID_A}","RestartCount":3,
   "State":{{"Status":"running","StartedAt":"2025-01-02T03:04:05.123Z","Health":{{"Status":"healthy","Log":[]}}}},
   "Config":{{"Image":"shop/web:1.2","Env":["DB_PASSWORD=canary-env"],"Cmd":["sleep","1"],
     "Labels":{{"com.docker.compose.service":"web","com.docker.compose.oneoff":"False",
               "com.docker.compose.config-hash":"h-web","other":"x"}}}}}},
 {{"Id":"c0","Name":"/shop-web-1","Image":"{ID_A}","RestartCount":0,
   "State":{{"Status":"exited","StartedAt":"2025-01-01T00:00:00Z"}},
   "Config":{{"Image":"shop/web:1.2","Labels":{{"com.docker.compose.service":"web","com.docker.compose.config-hash":"h-web"}}}}}},
 {{"Id":"c2","Name":"/shop-db-1","Image":"{ID_B}","RestartCount":0,
   "State":{{"Status":"created","StartedAt":"0001-01-01T00:00:00Z"}},
   "Config":{{"Image":"postgres","Labels":{{"com.docker.compose.service":"db","com.docker.compose.config-hash":"h-db"}}}}}},
 {{"Id":"c3","Name":"/shop-web-run-abc","Image":"{ID_A}",
   "State":{{"Status":"running"}},
   "Config":{{"Image":"shop/web:1.2","Labels":{{"com.docker.compose.service":"web","com.docker.compose.oneoff":"True"}}}}}}
]"#
        )
    }

    #[test]
    fn inspect_output_becomes_containers_without_one_offs_or_secrets() {
        let containers = parse_inspect(inspect_json().as_bytes()).unwrap();
        let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["shop-db-1", "shop-web-1", "shop-web-2"]);
        let web = &containers[2];
        assert_eq!(
            (
                web.service.as_str(),
                web.state.as_str(),
                web.health.as_str(),
                web.restarts
            ),
            ("web", "running", "healthy", 3)
        );
        assert_eq!(
            (web.image.as_str(), web.image_id.as_str()),
            ("shop/web:1.2", ID_A)
        );
        assert_eq!(web.started_at.as_deref(), Some("2025-01-02T03:04:05.123Z"));
        assert_eq!(web.config_hash, "h-web");
        assert_eq!(containers[0].started_at, None, "never started");
        assert_eq!(containers[0].health, "");
        let all = serde_json::to_string(&containers).unwrap();
        assert!(!all.contains("canary-env") && !all.contains("sleep"), "{all}");
        assert!(parse_inspect(b"").unwrap().is_empty());
        assert!(parse_inspect(b"[]").unwrap().is_empty());
        assert!(matches!(
            parse_inspect(b"{not json"),
            Err(EngineError::Parse { .. })
        ));
    }

    #[test]
    fn the_digest_of_the_images_own_repository_is_chosen() {
        let digests = vec![
            "mirror.example/shop/web@sha256:aaa".to_owned(),
            "shop/web@sha256:bbb".to_owned(),
        ];
        assert_eq!(
            choose_digest("shop/web:1.2", &digests).as_deref(),
            Some("shop/web@sha256:bbb")
        );
        assert_eq!(
            choose_digest("mirror.example/shop/web", &digests).as_deref(),
            Some("mirror.example/shop/web@sha256:aaa")
        );
        // No match, or a pin by image id: the first; no digests: none.
        assert_eq!(
            choose_digest("other:1", &digests).as_deref(),
            Some("mirror.example/shop/web@sha256:aaa")
        );
        assert_eq!(
            choose_digest(ID_A, &digests).as_deref(),
            Some("mirror.example/shop/web@sha256:aaa")
        );
        assert_eq!(choose_digest("shop/web", &[]), None);
        // Docker Hub's familiar and full names are one repository.
        let hub = vec![
            "quay.io/busybox@sha256:q".to_owned(),
            "busybox@sha256:h".to_owned(),
        ];
        assert_eq!(
            choose_digest("docker.io/library/busybox:1.36", &hub).as_deref(),
            Some("busybox@sha256:h")
        );
        assert_eq!(repository_of("reg:5000/x:tag").as_deref(), Some("reg:5000/x"));
        assert_eq!(repository_of("reg:5000/x").as_deref(), Some("reg:5000/x"));
        assert_eq!(repository_of("x@sha256:abc").as_deref(), Some("x"));
        assert_eq!(repository_of(ID_A), None);
    }

    #[test]
    fn image_inspect_gives_digests_and_the_release_takes_one_container_per_service() {
        let images = parse_image_inspect(
            format!(r#"[{{"Id":"{ID_A}","RepoDigests":["shop/web@sha256:bbb"]}},{{"Id":"{ID_B}","RepoDigests":null}}]"#)
                .as_bytes(),
        )
        .unwrap();
        let containers = with_digests(parse_inspect(inspect_json().as_bytes()).unwrap(), &images);
        assert_eq!(containers[2].repo_digest.as_deref(), Some("shop/web@sha256:bbb"));
        assert_eq!(containers[0].repo_digest, None);
        let release = release_of("hash".into(), &containers);
        let names: Vec<&str> = release.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert_eq!(release.services[1].pin(), "shop/web@sha256:bbb");
        assert_eq!(release.services[0].pin(), ID_B);
        assert_eq!(release.services[0].config_hash, "h-db");
    }

    #[test]
    fn image_ids_are_recognised() {
        assert!(is_image_id(ID_A));
        assert!(!is_image_id("sha256:ABC"));
        assert!(!is_image_id(&ID_A.to_uppercase()));
        assert!(!is_image_id(&ID_A[..70]));
    }
}
