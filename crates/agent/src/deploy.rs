//! One deployment, start to finish (steps 4–7 of docs/design.md): checkout, override, pull, up,
//! verify, and the override deleted on every path. Output goes to a [`LogSink`] as it happens;
//! the result is what the agent reports in STATUS.
//!
//! Refusals (bad secret key, unknown service, invalid compose file) happen before anything runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use zeroize::Zeroize;

use super::checkout::{CheckoutError, Git, GitCredential, compose_file_in};
use super::compose::{Compose, ComposeError, project_name_for};
use super::ephemeral::{EphemeralError, RuntimeDir};
use super::override_file::{self, OVERRIDE_FILE_NAME, OverrideError};
use super::policy::{self, PolicyConfig, Refused};
use super::results::DeployResult;
use super::sources::{self, SourceError};
use super::verify::{Target, Verdict, VerifyError};
use super::{LogSink, agent_line, engine, process};
use stagely_protocol::mask::Masker;
use stagely_protocol::{DeployOutcome, ProjectSpec, PullPolicy, Release, SecretEntry};

/// Longest error text sent in a STATUS.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Output lines of a failed command quoted in the error.
const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Override(#[from] OverrideError),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error("checkout failed: {0}")]
    Checkout(#[from] CheckoutError),
    #[error(transparent)]
    Private(#[from] EphemeralError),
    #[error("verification failed: {0}")]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    BadProject(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Sources(#[from] SourceError),
    #[error("the deployment did not finish within {0:?}; it was stopped")]
    Timeout(Duration),
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    /// Compose's own output stays in the log; the error is the one line that explains it.
    #[error("pulling images failed ({exit}): {explanation}")]
    Pull { exit: String, explanation: String },
    #[error("{step} failed ({exit}):\n{tail}")]
    Step {
        step: &'static str,
        exit: String,
        tail: String,
    },
}

/// What a run has got to, for its result whichever way it ends: the commit checked out, and
/// whether `up` was started.
struct Progress<'a> {
    commit: Option<String>,
    applied: &'a AtomicBool,
}

/// What every deployment shares: the agent's settings.
#[derive(Debug, Clone)]
pub struct Deployer {
    pub compose: Compose,
    pub work_dir: PathBuf,
    pub runtime: RuntimeDir,
    /// Wait between `up` and the first look at the containers (default 5 s).
    pub verify_wait: Duration,
    /// How long to keep asking while healthchecks are still `starting`.
    pub health_timeout: Duration,
    /// A deployment still running after this long is stopped (its commands killed, its
    /// override deleted) and failed, so one hung `compose up` cannot block the agent forever.
    pub deploy_timeout: Duration,
    /// The compose policy (agent.toml `[policy]`): never from the DEPLOY.
    pub policy: PolicyConfig,
}

impl Deployer {
    /// Run one deployment. Never fails: every error becomes a FAIL result with a masked message.
    pub async fn run(
        &self,
        deployment_id: i64,
        project: &ProjectSpec,
        secrets: &[SecretEntry],
        log: &LogSink,
    ) -> DeployResult {
        self.run_tracked(deployment_id, project, secrets, log, &AtomicBool::new(false))
            .await
    }

    /// [`Deployer::run`], setting `applied` as `docker compose up` starts, so whoever drops
    /// the run (a CANCEL) still knows whether the stack may have changed.
    pub async fn run_tracked(
        &self,
        deployment_id: i64,
        project: &ProjectSpec,
        secrets: &[SecretEntry],
        log: &LogSink,
        applied: &AtomicBool,
    ) -> DeployResult {
        let masker = Masker::new(secrets.iter().map(|s| s.value.as_str()));
        let mut progress = Progress {
            commit: None,
            applied,
        };
        // Every command of this deployment is recorded (its process group) in the runtime dir
        // while it runs, so an agent restarted after a crash can end it (crate::groups).
        let outcome = tokio::time::timeout(
            self.deploy_timeout,
            super::groups::scope(
                self.runtime.path(),
                deployment_id,
                self.run_inner(deployment_id, project, secrets, &masker, log, &mut progress),
            ),
        )
        .await
        .unwrap_or(Err(DeployError::Timeout(self.deploy_timeout)));
        match outcome {
            Ok(result) => result,
            Err(e) => {
                let message = process::truncate(&masker.mask(&e.to_string()), MAX_ERROR_BYTES);
                if super::cancel::requested() {
                    // A command ended by the cancel's SIGTERM: the deployment did not fail, it
                    // was stopped (its result is CANCELLED, crate::cancel); one line says how.
                    let first = message.lines().next().unwrap_or_default();
                    agent_line(log, format!("stopped by the cancel: {first}"));
                } else {
                    agent_line(log, format!("deployment failed: {message}"));
                }
                DeployResult {
                    status: DeployOutcome::Fail,
                    services: Vec::new(),
                    error: Some(message),
                    commit: progress.commit,
                    applied: applied.load(Ordering::Relaxed),
                    release: None,
                }
            }
        }
    }

    async fn run_inner(
        &self,
        deployment_id: i64,
        project: &ProjectSpec,
        secrets: &[SecretEntry],
        masker: &Masker,
        log: &LogSink,
        progress: &mut Progress<'_>,
    ) -> Result<DeployResult, DeployError> {
        override_file::validate(secrets)?;
        // A redeployed release's image pins: their shape before anything runs; that each names
        // a service of the compose file, as the override is rendered.
        override_file::validate_pins(&project.images)?;
        let pinned = !project.images.is_empty();
        // Dropped on every path out of this function (and on cancellation or panic): the
        // override and the askpass helper go with it.
        let private = self.runtime.deployment_dir(deployment_id)?;

        let agent_state = [
            policy::resolve(&self.work_dir),
            policy::resolve(self.runtime.path()),
        ];
        let (compose_file, checkout) = match project
            .repo_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            Some(url) => {
                let credential = GitCredential::from_secrets(secrets);
                let git = Git {
                    work_dir: &self.work_dir,
                    private: &private,
                    credential: credential.as_ref(),
                    masker,
                    log,
                };
                let co = git.checkout(project, url).await?;
                progress.commit = Some(co.commit.clone());
                let file = compose_file_in(&co.dir, &project.compose_path)?;
                (file, policy::resolve(&co.dir))
            }
            None => {
                let p = PathBuf::from(&project.compose_path);
                if !p.is_absolute() {
                    return Err(DeployError::BadProject(format!(
                        "compose_path {:?} must be absolute when the project has no repository",
                        project.compose_path
                    )));
                }
                // A compose file already on the target: its directory is the checkout.
                let checkout = sources::checkout_of_local_file(&p).map_err(DeployError::BadProject)?;
                (p, checkout)
            }
        };
        if !compose_file.is_file() {
            return Err(DeployError::BadProject(format!(
                "compose file {} does not exist",
                compose_file.display()
            )));
        }

        // Before compose reads anything: every file it would read is inside the checkout.
        let allow = self.policy.for_project(&project.name, &project.environment);
        sources::check(&compose_file, &checkout, &agent_state, &allow)?;

        agent_line(log, format!("reading {}", compose_file.display()));
        // Every service, profiled ones too, gets the override; which of them are active matters
        // only for verification, so that second question runs beside `up` (BENCHMARKS.md).
        let all_services = self.compose.all_services(&compose_file).await?;
        let mut text = override_file::render_with_pins(&all_services, secrets, &project.images)?;
        let written = private.write(OVERRIDE_FILE_NAME, &text, 0o600);
        text.zeroize();
        let override_path = written?;
        agent_line(
            log,
            format!(
                "injecting {} secret(s) into {} service(s)",
                secrets
                    .iter()
                    .filter(|s| !override_file::is_agent_only(&s.key))
                    .count(),
                all_services.len()
            ),
        );

        let name = project_name_for(project);
        // Compose's own model of what `up` would run, override included, checked before
        // anything is pulled, built or started. It holds the secret values: checked in memory,
        // dropped here, never logged.
        agent_line(log, "checking the compose model against the agent's policy");
        let model = self
            .compose
            .model(&name, &[&compose_file, &override_path])
            .await?;
        let verdict = policy::check(
            &model,
            &policy::Context {
                allow: &allow,
                checkout: &checkout,
                agent_state: &agent_state,
            },
        );
        drop(model);
        verdict?;

        let v1 = self.compose.is_v1();
        if pinned {
            // Pinned images are never pulled by tag: an image id cannot be pulled at all, and a
            // digest is pulled by `up --pull missing` only when absent.
            agent_line(
                log,
                format!(
                    "pinned to the release's images: {} service(s)",
                    project.images.len()
                ),
            );
        } else if project.pull == PullPolicy::Always {
            agent_line(log, "pulling images");
            let mut cmd = self.compose.project_command(&name, &[&compose_file]);
            cmd.arg("pull");
            if !v1 {
                cmd.arg("--ignore-buildable");
            }
            match self.step("pulling images", cmd, masker, log).await {
                Ok(()) => {}
                Err(DeployError::Step { exit, tail, .. }) => {
                    let images = self.failed_images(&compose_file, &tail).await;
                    let explanation = pull_explanation(&images);
                    agent_line(log, explanation.clone());
                    return Err(DeployError::Pull { exit, explanation });
                }
                Err(e) => return Err(e),
            }
        }

        agent_line(log, format!("starting project {name}"));
        let mut cmd = self
            .compose
            .project_command(&name, &[&compose_file, &override_path]);
        cmd.args(["up", "-d"]);
        if !pinned {
            // A pinned service runs its release's image, never a fresh build.
            cmd.arg("--build");
        }
        cmd.arg("--remove-orphans");
        if !v1 {
            // Already pulled for `always`; otherwise the policy is compose's own flag.
            cmd.args([
                "--pull",
                match project.pull {
                    _ if pinned => "missing",
                    PullPolicy::Never => "never",
                    PullPolicy::Always | PullPolicy::Missing => "missing",
                },
            ]);
        }
        progress.applied.store(true, Ordering::Relaxed);
        // The release's compose hash is of the project's own file (no override): asked beside
        // `up`, like the active services.
        let (up, active_services, compose_hash) = tokio::join!(
            self.step("docker compose up", cmd, masker, log),
            self.compose.services(&compose_file, false),
            self.compose.model_hash(&name, &compose_file)
        );
        // Compose has read the override: it goes now, not after verification.
        drop(private);
        up?;
        let active_services = active_services?;

        agent_line(log, format!("verifying in {} s", self.verify_wait.as_secs_f32()));
        tokio::time::sleep(self.verify_wait).await;
        let target = Target {
            compose: &self.compose,
            project: &name,
            compose_file: &compose_file,
        };
        let verdicts = target.settle(&active_services, self.health_timeout).await?;
        let mut problems = Vec::new();
        for (state, verdict) in &verdicts {
            if *verdict == Verdict::Good {
                continue;
            }
            let mut what = format!("service {}: {}", state.name, state.state);
            if !state.health.is_empty() {
                what.push_str(&format!(" ({})", state.health));
            }
            if let Some(code) = state.exit_code.filter(|_| state.state != "running") {
                what.push_str(&format!(", exit code {code}"));
            }
            agent_line(log, what.clone());
            let tail = target.log_tail(&state.name, masker).await;
            if !tail.is_empty() {
                what.push_str(&format!("\n  last {} log lines:", tail.len()));
                for line in &tail {
                    what.push_str("\n  ");
                    what.push_str(line);
                }
            }
            problems.push(what);
        }
        let services = verdicts.into_iter().map(|(s, _)| s).collect();
        if problems.is_empty() {
            // The release lines come first: "all services are up" is a success's last line.
            let release = self.release(&name, compose_hash, log).await;
            agent_line(log, "all services are up");
            Ok(DeployResult {
                status: DeployOutcome::Success,
                services,
                error: None,
                commit: progress.commit.clone(),
                applied: true,
                release,
            })
        } else {
            let error = process::truncate(
                &masker.mask(&format!(
                    "{} service(s) not running:\n{}",
                    problems.len(),
                    problems.join("\n")
                )),
                MAX_ERROR_BYTES,
            );
            Ok(DeployResult {
                status: DeployOutcome::Fail,
                services,
                error: Some(error),
                commit: progress.commit.clone(),
                applied: true,
                release: None,
            })
        }
    }

    /// The release of a verified deployment, read from the engine. Not reading it does not
    /// fail the deployment (its containers run): the STATUS then carries no release, and the
    /// log says why.
    async fn release(
        &self,
        project: &str,
        compose_hash: Result<String, ComposeError>,
        log: &LogSink,
    ) -> Option<Release> {
        let compose_hash = match compose_hash {
            Ok(hash) => hash,
            Err(e) => {
                agent_line(log, format!("cannot hash the compose model for the release: {e}"));
                return None;
            }
        };
        match engine::project_containers(project).await {
            Ok(containers) => {
                let release = engine::release_of(compose_hash, &containers);
                for s in &release.services {
                    agent_line(
                        log,
                        format!("release: service {} runs {} ({})", s.name, s.image, s.pin()),
                    );
                }
                Some(release)
            }
            Err(e) => {
                agent_line(log, format!("cannot read the release from the engine: {e}"));
                None
            }
        }
    }

    /// The images a failed pull was about: those of services compose reported an error for,
    /// else every image of the project.
    async fn failed_images(&self, compose_file: &std::path::Path, tail: &str) -> Vec<String> {
        let images = self
            .compose
            .service_images(compose_file)
            .await
            // Only enriches a failure message: without the image list it names no image.
            .unwrap_or_default();
        let failed: Vec<String> = images
            .iter()
            .filter(|(svc, _)| {
                tail.lines().any(|l| {
                    let l = l.trim_start();
                    l.starts_with(&format!("{svc} ")) && l.contains("Error")
                })
            })
            .map(|(svc, image)| format!("image {image} (service {svc})"))
            .collect();
        if !failed.is_empty() {
            failed
        } else {
            images.values().map(|image| format!("image {image}")).collect()
        }
    }

    /// Run one compose step, streamed; a non-zero exit is an error quoting its last lines.
    async fn step(
        &self,
        step: &'static str,
        cmd: tokio::process::Command,
        masker: &Masker,
        log: &LogSink,
    ) -> Result<(), DeployError> {
        let out = process::run_streamed(cmd, masker, log, TAIL_LINES)
            .await
            .map_err(|source| DeployError::Spawn {
                program: self.compose.display(),
                source,
            })?;
        if out.success() {
            Ok(())
        } else {
            Err(DeployError::Step {
                step,
                exit: out.describe_exit(),
                tail: out.tail.join("\n"),
            })
        }
    }
}

/// The one line a failed `pull` (the default policy `always`) gets instead of Docker's wall of
/// text: most often the image exists only on this server (built or `docker load`ed), which
/// `always` cannot pull. Names the setting that changes it.
pub fn pull_explanation(images: &[String]) -> String {
    let (what, verb) = match images {
        [] => ("the project's images".to_owned(), "are"),
        [one] => (one.clone(), "is"),
        many => (many.join(", "), "are"),
    };
    format!(
        "{what} {verb} not in a registry this server can pull from; if it is built or loaded on this server, \
         set the project's Pull policy to \"missing\" or \"never\""
    )
}

#[cfg(test)]
mod pull_explanation_tests {
    use super::pull_explanation;

    #[test]
    fn a_failed_pull_is_explained_in_one_line_naming_the_setting() {
        let one = pull_explanation(&["image stagely-test-busybox:latest (service web)".into()]);
        assert_eq!(
            one,
            "image stagely-test-busybox:latest (service web) is not in a registry this server can pull from; \
             if it is built or loaded on this server, set the project's Pull policy to \"missing\" or \"never\""
        );
        assert!(!one.contains('\n'));
        let two = pull_explanation(&["image a:1 (service a)".into(), "image b:2 (service b)".into()]);
        assert!(
            two.starts_with("image a:1 (service a), image b:2 (service b) are not in a registry"),
            "{two}"
        );
        assert!(pull_explanation(&[]).starts_with("the project's images are not"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagely_protocol::Scope;

    #[tokio::test]
    async fn a_hung_deployment_is_stopped_failed_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        // A "compose" that hangs while the override exists... or before: either way it must end.
        let slow = dir.path().join("hang.sh");
        std::fs::write(&slow, "exec sleep 30\n").unwrap();
        // In a directory of its own: the work dir itself is never a project's checkout.
        std::fs::create_dir(dir.path().join("project")).unwrap();
        let compose_file = dir.path().join("project/compose.yml");
        std::fs::write(&compose_file, "services: {}\n").unwrap();
        let deployer = Deployer {
            compose: Compose::new(&format!("sh {}", slow.display())).unwrap(),
            work_dir: dir.path().to_owned(),
            runtime: RuntimeDir::prepare(dir.path(), Some(base.path())).unwrap(),
            verify_wait: Duration::ZERO,
            health_timeout: Duration::ZERO,
            deploy_timeout: Duration::from_millis(500),
            policy: PolicyConfig::default(),
        };
        let project = ProjectSpec {
            name: "p".into(),
            environment: "e".into(),
            repo_url: None,
            git_ref: "main".into(),
            compose_path: compose_file.to_string_lossy().into_owned(),
            pull: PullPolicy::Never,
            compose_project: None,
            images: Default::default(),
        };
        let secrets = vec![SecretEntry {
            key: "K".into(),
            value: "hung-canary".into(),
            scope: Scope::Global,
            service: None,
        }];
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let started = std::time::Instant::now();
        let result = deployer.run(1, &project, &secrets, &tx).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}: {:?}",
            started.elapsed(),
            result.error
        );
        assert_eq!(result.status, DeployOutcome::Fail);
        assert!(result.error.unwrap().contains("did not finish"));
        assert_eq!(std::fs::read_dir(deployer.runtime.path()).unwrap().count(), 0);
    }
}
