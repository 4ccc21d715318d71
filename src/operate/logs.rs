//! Container logs (issue 15): the rules. A member asks for a service's last lines (and may
//! follow them); the environment's online agent that offers `CAP_OPERATE` is sent one LOGS with
//! the environment's secrets sealed to it (what a deploy would send, so it can mask every value
//! the containers were given), and its lines are masked again here with the same values before
//! anyone sees them. Nothing of the lines is stored: not in the DB, not in the appliance log.
//! Who viewed which service's logs is audited (`service.logs`), never what they saw.

use std::time::Duration;

use zeroize::Zeroizing;

use crate::agents::hub::Outbound;
use crate::agents::requests::{Reply, Ticket};
use crate::agents::store as agent_store;
use crate::app::AppState;
use crate::audit;
use crate::db::{DbError, now_ms};
use crate::projects::{ProjectError, store as project_store};
use crate::secrets::store as secret_store;
use crate::users::Principal;
use stagely_protocol::mask::Masker;
use stagely_protocol::operate::{
    CAP_OPERATE, ContainerLogLine, LogEnd, MAX_FOLLOW_SECS, MAX_LOG_TAIL, SealedLogSecrets, is_service_name,
};
use stagely_protocol::{self as protocol, SecretEntry, ServerMessage};

/// Lines answered when `tail` is not given.
pub const DEFAULT_TAIL: u32 = 100;
/// How long `GET …/logs` waits for the agent's CONTAINER_LOG_END.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Most log requests open to one agent at once (the agent refuses more anyway).
pub const MAX_OPEN_PER_AGENT: usize = 8;
/// Answers buffered per request before the registry drops some (a viewer far behind).
const BUFFER: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("environment not found")]
    NotFound,
    #[error("tail: {0}")]
    InvalidTail(String),
    #[error(
        "service: not a compose service name (letters, digits, '_', '.', '-', starting with a letter or digit)"
    )]
    InvalidService,
    #[error("no agent of {0} is online")]
    NoAgent(String),
    /// 409: its agent is connected to another replica; container logs are not routed between
    /// replicas (issue 17): ask that one.
    #[error(
        "the agent of {environment} is connected to replica {replica}: container logs go only through the \
         replica holding the agent; retry there (or when the agent reconnects here)"
    )]
    Elsewhere { environment: String, replica: String },
    #[error(
        "the online agent of {0} does not offer container logs: upgrade it (stagely-agent) and restart it"
    )]
    NotOffered(String),
    #[error(
        "the agent of {0} already sends {MAX_OPEN_PER_AGENT} container logs, its most at once: close one and retry"
    )]
    Busy(String),
    #[error("the agent could not send the log: {0}")]
    Agent(String),
    #[error("the agent went away before the log ended")]
    AgentGone,
    #[error("the agent did not answer within {} s", ANSWER_TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Internal(String),
}

impl From<DbError> for LogsError {
    fn from(e: DbError) -> Self {
        LogsError::Internal(e.to_string())
    }
}

/// The `tail` query parameter: absent means [`DEFAULT_TAIL`]; 1 to [`MAX_LOG_TAIL`].
pub fn parse_tail(raw: Option<&str>) -> Result<u32, LogsError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_TAIL);
    };
    match raw.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LOG_TAIL).contains(&n) => Ok(n),
        _ => Err(LogsError::InvalidTail(format!(
            "must be a whole number of lines from 1 to {MAX_LOG_TAIL}"
        ))),
    }
}

/// What a log request is about, for its page and its answer.
#[derive(Debug, Clone)]
pub struct Target {
    pub environment_id: i64,
    pub environment: String,
    pub project_id: i64,
    pub project: String,
    pub service: String,
}

/// The environment and names a logs page shows (404 for an unknown environment).
pub async fn target(state: &AppState, environment_id: i64, service: &str) -> Result<Target, LogsError> {
    if !is_service_name(service) {
        return Err(LogsError::InvalidService);
    }
    let service = service.to_owned();
    state
        .db
        .read(move |c| {
            let env = match project_store::get_environment(c, environment_id) {
                Ok(env) => env,
                Err(ProjectError::Db(e)) => return Err(LogsError::from(e)),
                Err(_) => return Err(LogsError::NotFound),
            };
            let project = project_store::get(c, env.project_id).map_err(|e| match e {
                ProjectError::Db(e) => LogsError::from(e),
                _ => LogsError::NotFound,
            })?;
            Ok(Target {
                environment_id,
                environment: env.name,
                project_id: project.id,
                project: project.name,
                service,
            })
        })
        .await
}

/// One open container log: its answers, masked again here. Dropping it before the end sends
/// the agent LOGS_STOP (the viewer left), so its `docker compose logs` is ended.
pub struct LogStream {
    pub target: Target,
    ticket: Ticket,
    masker: Masker,
    agent_id: i64,
    state: AppState,
    ended: bool,
}

/// What the agent sent, masked.
pub enum Event {
    Lines {
        lines: Vec<ContainerLogLine>,
        dropped: u64,
    },
    End(LogEnd),
}

impl LogStream {
    /// The next answer; `Err` when the agent failed it or went away.
    pub async fn next(&mut self) -> Result<Event, LogsError> {
        if self.ended {
            return Err(LogsError::AgentGone);
        }
        let reply = self.ticket.rx.recv().await;
        match reply {
            Some(Reply::Log { lines, dropped }) => Ok(Event::Lines {
                lines: lines.into_iter().map(|l| self.mask(l)).collect(),
                dropped,
            }),
            Some(Reply::LogEnd { reason, error }) => {
                self.ended = true;
                match reason {
                    LogEnd::Failed => {
                        let error = error.unwrap_or_else(|| "no reason given".into());
                        Err(LogsError::Agent(self.masker.mask(&error)))
                    }
                    other => Ok(Event::End(other)),
                }
            }
            Some(Reply::Action { .. }) => {
                self.ended = true;
                Err(LogsError::Agent(
                    "answered a log request with an action result".into(),
                ))
            }
            None => {
                self.ended = true;
                Err(LogsError::AgentGone)
            }
        }
    }

    fn mask(&self, l: ContainerLogLine) -> ContainerLogLine {
        ContainerLogLine {
            container: self.masker.mask(&l.container),
            at: l.at.map(|a| self.masker.mask(&a)),
            line: self.masker.mask(&l.line),
        }
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let stop = protocol::encode(&ServerMessage::LogsStop {
            request_id: self.ticket.id,
        });
        // An agent already gone has nothing to stop.
        let _ = self.state.hub.send_to(
            self.agent_id,
            self.target.environment_id,
            Outbound::Text(Zeroizing::new(stop)),
        );
    }
}

/// Which agent serves the environment's logs: an online one offering `CAP_OPERATE` (as deploys
/// pick an online agent of the environment), with its pinned recipient.
fn pick_agent(
    c: &crate::db::Conn<'_>,
    state: &AppState,
    environment_id: i64,
    environment: &str,
) -> Result<(i64, age::x25519::Recipient), LogsError> {
    let online: Vec<i64> = agent_store::ids_for_environment(c, environment_id)?
        .into_iter()
        .filter(|id| state.hub.is_online(*id))
        .collect();
    if online.is_empty() {
        let now = crate::db::now_ms();
        for id in agent_store::ids_for_environment(c, environment_id)? {
            if let Some(replica) = agent_store::presence(c, id, now)?.replica {
                return Err(LogsError::Elsewhere {
                    environment: environment.to_owned(),
                    replica,
                });
            }
        }
        return Err(LogsError::NoAgent(environment.to_owned()));
    }
    for id in online {
        if !agent_store::has_capability(c, id, CAP_OPERATE)? {
            continue;
        }
        if let Some(r) = agent_store::recipient(c, id)?.and_then(|r| r.parse::<age::x25519::Recipient>().ok())
        {
            return Ok((id, r));
        }
    }
    Err(LogsError::NotOffered(environment.to_owned()))
}

/// Open a container log of `service` in environment `environment_id`: the last `tail` lines,
/// then (with `follow`) new lines for at most [`MAX_FOLLOW_SECS`]. Audited as `service.logs`.
pub async fn open(
    state: &AppState,
    who: &Principal,
    environment_id: i64,
    service: &str,
    tail: u32,
    follow: bool,
) -> Result<LogStream, LogsError> {
    if tail == 0 || tail > MAX_LOG_TAIL {
        return Err(LogsError::InvalidTail(format!(
            "must be 1 to {MAX_LOG_TAIL} lines"
        )));
    }
    let target = target(state, environment_id, service).await?;
    let (st, name) = (state.clone(), target.environment.clone());
    let (agent_id, recipient) = state
        .db
        .lookup(move |c| pick_agent(c, &st, environment_id, &name))
        .await?;
    if state.requests.open_for(agent_id) >= MAX_OPEN_PER_AGENT {
        return Err(LogsError::Busy(target.environment.clone()));
    }
    let (actor, t) = (who.actor.clone(), target.clone());
    let detail = format!(
        "{}/{}: service {}, tail {tail}{}",
        t.project,
        t.environment,
        t.service,
        if follow { ", follow" } else { "" }
    );
    // The values a deploy of the environment would send, read in the audit's transaction.
    let sealed = state
        .db
        .write(move |tx| {
            let sealed = secret_store::for_environment(tx, t.project_id, t.environment_id)?;
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "service.logs", "environment", Some(t.environment_id))
                    .project(t.project_id)
                    .detail(&detail),
            )?;
            Ok::<_, LogsError>(sealed)
        })
        .await?;
    let vault = state.vault.clone();
    let secrets = tokio::task::spawn_blocking(move || {
        sealed
            .iter()
            .map(|s| {
                let value = vault.decrypt(&s.ciphertext)?;
                Ok(SecretEntry {
                    key: s.key.clone(),
                    value: value.as_str().to_owned(),
                    scope: s.scope,
                    service: s.service.clone(),
                })
            })
            .collect::<Result<Vec<_>, crate::secrets::vault::VaultError>>()
    })
    .await
    .map_err(|e| LogsError::Internal(e.to_string()))?
    .map_err(|e| LogsError::Internal(format!("cannot decrypt the secrets: {e}")))?;
    let masker = Masker::new(secrets.iter().map(|s| s.value.as_str()));
    let compose_project = state
        .db
        .read(move |c| {
            project_store::get_environment(c, environment_id)
                .map(|e| e.compose_project)
                .map_err(|e| LogsError::Internal(e.to_string()))
        })
        .await?;
    let ticket = state.requests.open(agent_id, BUFFER);
    let payload = SealedLogSecrets {
        request_id: ticket.id,
        project: compose_project.clone(),
        secrets,
    };
    let sealed_secrets = tokio::task::spawn_blocking(move || {
        use base64::Engine as _;
        let ciphertext = age::encrypt(&recipient, &payload.to_plaintext()).ok()?;
        Some(base64::engine::general_purpose::STANDARD.encode(ciphertext))
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| LogsError::Internal("cannot seal the secrets to the agent's identity".into()))?;
    let frame = Zeroizing::new(protocol::encode(&ServerMessage::Logs {
        request_id: ticket.id,
        project: compose_project,
        service: target.service.clone(),
        tail,
        follow,
        follow_secs: if follow { MAX_FOLLOW_SECS } else { 0 },
        sealed_secrets,
    }));
    if state
        .hub
        .send_to(agent_id, environment_id, Outbound::Text(frame))
        .is_err()
    {
        return Err(LogsError::NoAgent(target.environment.clone()));
    }
    tracing::info!(
        request_id = ticket.id,
        agent_id,
        environment_id,
        service = %target.service,
        tail,
        follow,
        "container log requested"
    );
    Ok(LogStream {
        target,
        ticket,
        masker,
        agent_id,
        state: state.clone(),
        ended: false,
    })
}

/// The whole answer of a log without follow: every line until the agent's end, within
/// [`ANSWER_TIMEOUT`]. `dropped` counts lines the agent left out (a flood beyond its rate).
pub async fn collect(mut stream: LogStream) -> Result<(Vec<ContainerLogLine>, u64), LogsError> {
    let mut lines = Vec::new();
    let mut dropped = 0;
    let gather = async {
        loop {
            match stream.next().await? {
                Event::Lines { lines: l, dropped: d } => {
                    lines.extend(l);
                    dropped += d;
                }
                Event::End(_) => return Ok::<_, LogsError>(()),
            }
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, gather).await {
        Ok(Ok(())) => Ok((lines, dropped)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LogsError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_a_number_of_lines_within_the_limit() {
        assert_eq!(parse_tail(None).unwrap(), DEFAULT_TAIL);
        assert_eq!(parse_tail(Some("5000")).unwrap(), 5000);
        for bad in ["0", "-1", "5001", "ten", "", "1.5"] {
            let e = parse_tail(Some(bad)).unwrap_err();
            assert!(e.to_string().contains("5000"), "{bad}: {e}");
        }
    }
}
