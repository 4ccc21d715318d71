//! Verify (step 6): after the deploy, every service must have a running container (healthy where
//! it has a healthcheck; a one-shot service that exited 0 is fine).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::compose::Compose;
use super::process;
use stagely_protocol::ServiceState;
use stagely_protocol::mask::Masker;

/// Log lines shown for each bad service.
pub const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} failed: {message}")]
    Failed { program: String, message: String },
    #[error("cannot read the container list: {0}")]
    Parse(String),
}

/// One container as `docker compose ps --all --format json` shows it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Container {
    #[serde(rename = "Service", default)]
    pub service: String,
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "Health", default)]
    pub health: String,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: Option<i64>,
}

/// Parse `ps --format json`: one JSON array (older v2) or one object per line (v2.21+).
pub fn parse_compose_ps(text: &str) -> Result<Vec<Container>, VerifyError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if t.starts_with('[') {
        return serde_json::from_str(t).map_err(|e| VerifyError::Parse(e.to_string()));
    }
    t.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| VerifyError::Parse(e.to_string())))
        .collect()
}

/// Parse `docker ps -a --format '{{json .}}'` (compose v1 has no JSON ps).
pub fn parse_docker_ps(text: &str) -> Result<Vec<Container>, VerifyError> {
    #[derive(Deserialize)]
    struct Row {
        #[serde(rename = "Labels", default)]
        labels: String,
        #[serde(rename = "State", default)]
        state: String,
        #[serde(rename = "Status", default)]
        status: String,
    }
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let row: Row = serde_json::from_str(line).map_err(|e| VerifyError::Parse(e.to_string()))?;
        let service = row
            .labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("com.docker.compose.service="))
            .unwrap_or_default()
            .to_owned();
        let health = if row.status.contains("(healthy)") {
            "healthy"
        } else if row.status.contains("(unhealthy)") {
            "unhealthy"
        } else if row.status.contains("health: starting") {
            "starting"
        } else {
            ""
        };
        // "Exited (1) 3 seconds ago"
        let exit_code = row
            .status
            .strip_prefix("Exited (")
            .and_then(|r| r.split(')').next())
            .and_then(|c| c.parse().ok());
        out.push(Container {
            service,
            state: row.state,
            health: health.into(),
            exit_code,
        });
    }
    Ok(out)
}

/// How one container stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Good,
    /// Its healthcheck has not decided yet: worth asking again.
    Pending,
    Bad,
}

pub fn container_verdict(c: &Container) -> Verdict {
    match (c.state.as_str(), c.health.as_str()) {
        ("running", "" | "healthy") => Verdict::Good,
        ("running", "starting") | ("created", _) => Verdict::Pending,
        ("exited", _) if c.exit_code == Some(0) => Verdict::Good,
        _ => Verdict::Bad,
    }
}

/// Each expected service's state and verdict (the worst of its containers; `missing` if none).
pub fn judge(expected: &[String], containers: &[Container]) -> Vec<(ServiceState, Verdict)> {
    expected
        .iter()
        .map(|name| {
            let mine: Vec<&Container> = containers.iter().filter(|c| &c.service == name).collect();
            let worst = mine
                .iter()
                .map(|c| (*c, container_verdict(c)))
                .max_by_key(|(_, v)| match v {
                    Verdict::Good => 0,
                    Verdict::Pending => 1,
                    Verdict::Bad => 2,
                });
            match worst {
                None => (
                    ServiceState {
                        name: name.clone(),
                        state: "missing".into(),
                        health: String::new(),
                        exit_code: None,
                    },
                    Verdict::Bad,
                ),
                Some((c, v)) => (
                    ServiceState {
                        name: name.clone(),
                        state: c.state.clone(),
                        health: c.health.clone(),
                        exit_code: c.exit_code,
                    },
                    v,
                ),
            }
        })
        .collect()
}

/// What verification needs to know about the deployed project.
pub struct Target<'a> {
    pub compose: &'a Compose,
    pub project: &'a str,
    pub compose_file: &'a Path,
}

impl Target<'_> {
    /// The project's containers, stopped ones included.
    pub async fn containers(&self) -> Result<Vec<Container>, VerifyError> {
        let (cmd, program) = if self.compose.is_v1() {
            let mut cmd = process::command("docker");
            cmd.args(["ps", "-a", "--no-trunc", "--format", "{{json .}}", "--filter"])
                .arg(format!("label=com.docker.compose.project={}", self.project));
            (cmd, "docker ps".to_owned())
        } else {
            let mut cmd = self.compose.project_command(self.project, &[self.compose_file]);
            cmd.args(["ps", "--all", "--format", "json"]);
            (cmd, format!("{} ps", self.compose.display()))
        };
        let out = process::output(cmd).await.map_err(|source| VerifyError::Spawn {
            program: program.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(VerifyError::Failed {
                program,
                // Cut generously: deploy.rs masks the message, then cuts it to the FAIL's limit.
                message: process::truncate(
                    String::from_utf8_lossy(&out.stderr).trim(),
                    process::MAX_READ_LINE_BYTES,
                ),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if self.compose.is_v1() {
            parse_docker_ps(&text)
        } else {
            parse_compose_ps(&text)
        }
    }

    /// Ask until no healthcheck is still deciding, or `patience` runs out.
    pub async fn settle(
        &self,
        expected: &[String],
        patience: Duration,
    ) -> Result<Vec<(ServiceState, Verdict)>, VerifyError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let verdicts = judge(expected, &self.containers().await?);
            let pending = verdicts.iter().any(|(_, v)| *v == Verdict::Pending);
            if !pending || tokio::time::Instant::now() >= deadline {
                return Ok(verdicts);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The service's last log lines, masked. Best effort: an error becomes one explaining line.
    pub async fn log_tail(&self, service: &str, masker: &Masker) -> Vec<String> {
        let mut cmd = self.compose.project_command(self.project, &[self.compose_file]);
        cmd.args(["logs", "--no-color", "--tail"])
            .arg(LOG_TAIL_LINES.to_string())
            .arg(service);
        match process::output(cmd).await {
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let lines: Vec<String> = text
                    .lines()
                    // Masked before it is cut: a secret across the cut is recognised whole.
                    .map(|l| masker.mask_and_cut(l, 2048, l.len()))
                    .collect();
                let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
                lines.into_iter().skip(skip).collect()
            }
            Err(e) => vec![format!("(cannot read logs: {e})")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(service: &str, state: &str, health: &str, exit_code: Option<i64>) -> Container {
        Container {
            service: service.into(),
            state: state.into(),
            health: health.into(),
            exit_code,
        }
    }

    #[test]
    fn parses_array_and_line_forms() {
        let lines = r#"{"Service":"web","State":"running","Health":"","ExitCode":0,"Name":"p-web-1"}
{"Service":"db","State":"exited","Health":"","ExitCode":3}
"#;
        let array = r#"[{"Service":"web","State":"running","Health":"","ExitCode":0},
            {"Service":"db","State":"exited","Health":"","ExitCode":3}]"#;
        let a = parse_compose_ps(lines).unwrap();
        let b = parse_compose_ps(array).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[1], c("db", "exited", "", Some(3)));
        assert!(parse_compose_ps("").unwrap().is_empty());
        assert!(parse_compose_ps("garbage").is_err());
    }

    #[test]
    fn parses_docker_ps_for_compose_v1() {
        let t = r#"{"Labels":"a=b,com.docker.compose.service=web","State":"running","Status":"Up 3 seconds (healthy)"}
{"Labels":"com.docker.compose.service=job","State":"exited","Status":"Exited (2) 1 second ago"}"#;
        let v = parse_docker_ps(t).unwrap();
        assert_eq!(v[0], c("web", "running", "healthy", None));
        assert_eq!(v[1], c("job", "exited", "", Some(2)));
    }

    #[test]
    fn verdicts() {
        assert_eq!(container_verdict(&c("a", "running", "", None)), Verdict::Good);
        assert_eq!(
            container_verdict(&c("a", "running", "healthy", None)),
            Verdict::Good
        );
        assert_eq!(
            container_verdict(&c("a", "running", "starting", None)),
            Verdict::Pending
        );
        assert_eq!(
            container_verdict(&c("a", "running", "unhealthy", None)),
            Verdict::Bad
        );
        assert_eq!(container_verdict(&c("a", "exited", "", Some(0))), Verdict::Good);
        assert_eq!(container_verdict(&c("a", "exited", "", Some(1))), Verdict::Bad);
        // A crash loop is a failure, not something to wait for.
        assert_eq!(
            container_verdict(&c("a", "restarting", "", Some(1))),
            Verdict::Bad
        );
        assert_eq!(container_verdict(&c("a", "dead", "", None)), Verdict::Bad);
    }

    #[test]
    fn judge_reports_missing_and_worst_container() {
        let expected = vec!["web".to_string(), "db".to_string(), "gone".to_string()];
        let v = judge(
            &expected,
            &[
                c("web", "running", "", Some(0)),
                c("web", "exited", "", Some(137)),
                c("db", "running", "", Some(0)),
            ],
        );
        assert_eq!(v[0].1, Verdict::Bad);
        assert_eq!(v[0].0.exit_code, Some(137));
        assert_eq!(v[1].1, Verdict::Good);
        assert_eq!((v[2].0.state.as_str(), v[2].1), ("missing", Verdict::Bad));
    }
}
