//! The small on-disk record of deployments (`<work_dir>/deployments.json`): which one is
//! running, and the results of finished ones, whether the server acknowledged them yet.
//!
//! It lets the agent resend an unacknowledged STATUS after a restart, answer a repeated DEPLOY
//! with the stored result instead of running it again, and report a deployment interrupted by
//! a crash as failed. It holds no secret values (errors and log lines in it are masked).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use stagely_protocol::{AgentMessage, DeployOutcome, Release, ServiceState};

/// Finished records kept; older acknowledged ones are dropped.
pub const KEEP_FINISHED: usize = 200;

pub const FILE_NAME: &str = "deployments.json";

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid deployments record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// A deployment's final result, as sent in STATUS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResult {
    pub status: DeployOutcome,
    #[serde(default)]
    pub services: Vec<ServiceState>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
    /// Whether `docker compose up` was started (the stack may have changed). A record from an
    /// older agent has none: false.
    #[serde(default)]
    pub applied: bool,
    /// What a successful deployment put on the server (image ids, digests, config hashes: no
    /// secret), kept so a STATUS resent after a restart still carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
}

impl DeployResult {
    pub fn fail(error: impl Into<String>) -> Self {
        Self {
            status: DeployOutcome::Fail,
            services: Vec::new(),
            error: Some(error.into()),
            commit: None,
            applied: false,
            release: None,
        }
    }

    pub fn to_status(&self, deployment_id: i64) -> AgentMessage {
        AgentMessage::Status {
            deployment_id,
            status: self.status,
            services: self.services.clone(),
            error: self.error.clone(),
            commit: self.commit.clone(),
            lines: None,
            applied: Some(self.applied),
            release: self
                .release
                .clone()
                .filter(|_| self.status == DeployOutcome::Success),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub deployment_id: i64,
    /// `None` while running.
    pub result: Option<DeployResult>,
    pub acked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileShape {
    version: u32,
    records: Vec<Record>,
}

/// The record, loaded once and rewritten (atomically) on every change.
#[derive(Debug)]
pub struct Results {
    path: PathBuf,
    records: Vec<Record>,
}

impl Results {
    /// Load `<work_dir>/deployments.json`. A deployment still marked running was interrupted
    /// (the agent died): it becomes a FAIL, to be reported to the server.
    pub fn open(work_dir: &Path) -> Result<Self, ResultsError> {
        let path = work_dir.join(FILE_NAME);
        let records = match fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<FileShape>(&text) {
                Ok(shape) => shape.records,
                Err(e) => {
                    // Never written torn (write + rename), so this is outside damage. Keep it
                    // for a human and start afresh rather than refuse to run.
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(
                        file = %path.display(),
                        moved_to = %aside.display(),
                        error = %e,
                        "the deployments record is unreadable; starting a new one"
                    );
                    fs::rename(&path, &aside).map_err(|source| ResultsError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(ResultsError::Io { path, source }),
        };
        let mut me = Self { path, records };
        let mut changed = false;
        for r in me.records.iter_mut().filter(|r| r.result.is_none()) {
            tracing::warn!(
                deployment_id = r.deployment_id,
                "the agent stopped during this deployment"
            );
            // It may have got as far as `up`: say so, so a rollback answers it.
            r.result = Some(DeployResult {
                applied: true,
                ..DeployResult::fail(
                    "the agent stopped during this deployment (it was restarted); the project may be half-deployed",
                )
            });
            changed = true;
        }
        if changed {
            me.save()?;
        }
        Ok(me)
    }

    pub fn get(&self, deployment_id: i64) -> Option<&Record> {
        self.records.iter().find(|r| r.deployment_id == deployment_id)
    }

    pub fn mark_running(&mut self, deployment_id: i64) -> Result<(), ResultsError> {
        self.records.retain(|r| r.deployment_id != deployment_id);
        self.records.push(Record {
            deployment_id,
            result: None,
            acked: false,
        });
        self.save()
    }

    pub fn finish(&mut self, deployment_id: i64, result: DeployResult) -> Result<(), ResultsError> {
        self.records.retain(|r| r.deployment_id != deployment_id);
        self.records.push(Record {
            deployment_id,
            result: Some(result),
            acked: false,
        });
        self.prune();
        self.save()
    }

    /// The server stored the STATUS: stop resending it. Unknown ids are ignored.
    pub fn ack(&mut self, deployment_id: i64) -> Result<(), ResultsError> {
        let mut changed = false;
        for r in self.records.iter_mut() {
            if r.deployment_id == deployment_id && r.result.is_some() && !r.acked {
                r.acked = true;
                changed = true;
            }
        }
        if changed { self.save() } else { Ok(()) }
    }

    /// A repeated DEPLOY for this id should get its result again: it is unacknowledged anew.
    pub fn reopen(&mut self, deployment_id: i64) -> Result<(), ResultsError> {
        let mut changed = false;
        for r in self.records.iter_mut() {
            if r.deployment_id == deployment_id && r.acked {
                r.acked = false;
                changed = true;
            }
        }
        if changed { self.save() } else { Ok(()) }
    }

    /// Finished results the server has not acknowledged, oldest first.
    pub fn unacked(&self) -> Vec<(i64, DeployResult)> {
        self.records
            .iter()
            .filter(|r| !r.acked)
            .filter_map(|r| r.result.clone().map(|res| (r.deployment_id, res)))
            .collect()
    }

    fn prune(&mut self) {
        let finished = self
            .records
            .iter()
            .filter(|r| r.result.is_some() && r.acked)
            .count();
        let mut drop = finished.saturating_sub(KEEP_FINISHED);
        self.records.retain(|r| {
            if drop > 0 && r.result.is_some() && r.acked {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }

    fn save(&self) -> Result<(), ResultsError> {
        let io = |source| ResultsError::Io {
            path: self.path.clone(),
            source,
        };
        let shape = FileShape {
            version: 1,
            records: self.records.clone(),
        };
        let text = serde_json::to_string_pretty(&shape).map_err(|e| ResultsError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        // Write aside and rename: a crash mid-write never leaves a torn record.
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_restart_and_turns_running_into_fail() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Results::open(dir.path()).unwrap();
        r.mark_running(1).unwrap();
        r.finish(
            2,
            DeployResult {
                status: DeployOutcome::Success,
                services: vec![],
                error: None,
                commit: Some("abc".into()),
                applied: true,
                release: Some(Release {
                    compose_hash: "h".into(),
                    services: vec![stagely_protocol::ReleaseService {
                        name: "web".into(),
                        image: "shop/web:1".into(),
                        image_id: "sha256:1".into(),
                        repo_digest: None,
                        config_hash: "c".into(),
                    }],
                }),
            },
        )
        .unwrap();
        r.mark_running(3).unwrap();
        r.ack(2).unwrap();
        drop(r);

        let r = Results::open(dir.path()).unwrap();
        assert_eq!(
            r.get(2).unwrap().result.as_ref().unwrap().status,
            DeployOutcome::Success
        );
        assert!(r.get(2).unwrap().acked);
        // What a resent STATUS needs survives the restart.
        let AgentMessage::Status { applied, release, .. } =
            r.get(2).unwrap().result.as_ref().unwrap().to_status(2)
        else {
            unreachable!()
        };
        assert_eq!(applied, Some(true));
        assert_eq!(release.unwrap().services[0].name, "web");
        // An interrupted deployment may have run `up`.
        let AgentMessage::Status { applied, release, .. } =
            r.get(3).unwrap().result.as_ref().unwrap().to_status(3)
        else {
            unreachable!()
        };
        assert_eq!((applied, release), (Some(true), None));
        let unacked: Vec<i64> = r.unacked().into_iter().map(|(id, _)| id).collect();
        assert_eq!(unacked, vec![1, 3]);
        assert_eq!(
            r.get(3).unwrap().result.as_ref().unwrap().status,
            DeployOutcome::Fail
        );
    }

    #[test]
    fn a_damaged_record_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let r = Results::open(dir.path()).unwrap();
        assert!(r.unacked().is_empty());
        assert!(dir.path().join("deployments.json.corrupt").exists());
    }

    #[test]
    fn prunes_only_acknowledged_results() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Results::open(dir.path()).unwrap();
        for id in 0..(KEEP_FINISHED as i64 + 10) {
            r.finish(id, DeployResult::fail("x")).unwrap();
            if id != 0 {
                r.ack(id).unwrap();
            }
        }
        r.finish(9999, DeployResult::fail("y")).unwrap();
        assert!(r.get(0).is_some(), "unacked kept");
        assert!(r.get(1).is_none(), "oldest acked dropped");
        assert!(r.records.len() <= KEEP_FINISHED + 2);
    }
}
