//! The compose CLI, v2 (`docker compose`) or v1 (`docker-compose`): the only way the agent
//! touches Docker. It never exposes the Docker API.

use std::path::Path;

use tokio::process::Command;

use super::process;

/// Longest compose error message carried in a FAIL (compose's own words, cut).
const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("the compose command is empty")]
    EmptyCommand,
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// Compose refused the file; the text is compose's own stderr.
    #[error("the compose file is invalid: {0}")]
    Invalid(String),
}

/// How to invoke compose, e.g. `["docker", "compose"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    argv: Vec<String>,
}

impl Compose {
    /// From a configured command such as `docker compose` (split on whitespace, no shell quoting).
    pub fn new(spec: &str) -> Result<Self, ComposeError> {
        let argv: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
        if argv.is_empty() {
            return Err(ComposeError::EmptyCommand);
        }
        Ok(Self { argv })
    }

    /// `docker compose` when the v2 plugin answers, else `docker-compose`.
    pub async fn detect() -> Self {
        let v2 = Self {
            argv: vec!["docker".into(), "compose".into()],
        };
        let mut cmd = v2.command();
        cmd.arg("version");
        match process::output(cmd).await {
            Ok(out) if out.status.success() => v2,
            _ => Self {
                argv: vec!["docker-compose".into()],
            },
        }
    }

    /// Compose v1 (the Python `docker-compose`) lacks `ps --format json`, `--profile '*'`, `--pull`.
    pub fn is_v1(&self) -> bool {
        self.argv.len() == 1 && self.argv[0].ends_with("docker-compose")
    }

    pub fn display(&self) -> String {
        self.argv.join(" ")
    }

    /// The bare compose command.
    pub fn command(&self) -> Command {
        let mut cmd = process::command(&self.argv[0]);
        cmd.args(&self.argv[1..]);
        cmd
    }

    /// `compose -p <project> -f <file>…`, run from the first file's directory.
    pub fn project_command(&self, project: &str, files: &[&Path]) -> Command {
        let mut cmd = self.command();
        cmd.arg("-p").arg(project);
        for f in files {
            cmd.arg("-f").arg(f);
        }
        if let Some(dir) = files
            .first()
            .and_then(|f| f.parent())
            .filter(|d| !d.as_os_str().is_empty())
        {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// `compose version --short`, for HELLO.
    pub async fn version(&self) -> Option<String> {
        let mut cmd = self.command();
        cmd.args(["version", "--short"]);
        first_line(cmd).await
    }

    /// The services the file defines, as compose counts them (`include`, `extends`, anchors).
    /// With `all_profiles`, services behind a profile count too.
    pub async fn services(&self, file: &Path, all_profiles: bool) -> Result<Vec<String>, ComposeError> {
        let mut cmd = self.command();
        cmd.arg("-f").arg(file);
        if all_profiles && !self.is_v1() {
            cmd.args(["--profile", "*"]);
        }
        cmd.args(["config", "--services"]);
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            cmd.current_dir(dir);
        }
        let out = process::output(cmd).await.map_err(|source| ComposeError::Spawn {
            program: self.display(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg = stderr.trim();
            let msg = if msg.is_empty() {
                format!("{} config exited with {}", self.display(), out.status)
            } else {
                process::truncate(msg, MAX_MESSAGE_BYTES)
            };
            return Err(ComposeError::Invalid(msg));
        }
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

impl Compose {
    /// Each active service's `image:` (services that only `build:` have none), for naming the
    /// image in a failed pull.
    pub async fn service_images(
        &self,
        file: &Path,
    ) -> Result<std::collections::BTreeMap<String, String>, ComposeError> {
        let mut cmd = self.command();
        cmd.arg("-f").arg(file).arg("config");
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            cmd.current_dir(dir);
        }
        let out = process::output(cmd).await.map_err(|source| ComposeError::Spawn {
            program: self.display(),
            source,
        })?;
        if !out.status.success() {
            return Err(ComposeError::Invalid(process::truncate(
                String::from_utf8_lossy(&out.stderr).trim(),
                MAX_MESSAGE_BYTES,
            )));
        }
        let model: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout)
            .map_err(|e| ComposeError::Invalid(format!("unreadable `config` output: {e}")))?;
        let mut images = std::collections::BTreeMap::new();
        if let Some(services) = model.get("services").and_then(|s| s.as_mapping()) {
            for (name, svc) in services {
                if let (Some(name), Some(image)) = (name.as_str(), svc.get("image").and_then(|i| i.as_str()))
                {
                    images.insert(name.to_owned(), image.to_owned());
                }
            }
        }
        Ok(images)
    }
}

/// The Docker engine's version, for HELLO.
pub async fn docker_version() -> Option<String> {
    let mut cmd = process::command("docker");
    cmd.args(["version", "--format", "{{.Server.Version}}"]);
    first_line(cmd).await
}

async fn first_line(cmd: Command) -> Option<String> {
    let out = process::output(cmd).await.ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.chars().take(100).collect())
}

/// A compose project name for one environment of one project, by compose's rules: lowercase
/// letters, digits, `-` and `_`, starting with a letter or digit. So staging and production of
/// the same project can share a server.
pub fn project_name(project: &str, environment: &str) -> String {
    let raw = format!("{project}-{environment}").to_lowercase();
    let kept: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    let trimmed = kept.trim_start_matches(['-', '_']);
    if trimmed.is_empty() {
        "stagely".into()
    } else {
        trimmed.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_compose_rules() {
        assert_eq!(project_name("Shop", "Staging"), "shop-staging");
        assert_eq!(project_name("my.app", "prod eu"), "my_app-prod_eu");
        assert_eq!(project_name("_x", "é"), "x-_");
        assert_eq!(project_name("", ""), "stagely");
    }

    #[test]
    fn command_spec_is_split_without_a_shell() {
        assert!(Compose::new("  ").is_err());
        let c = Compose::new("docker compose").unwrap();
        assert!(!c.is_v1());
        assert!(Compose::new("/usr/bin/docker-compose").unwrap().is_v1());
    }
}
