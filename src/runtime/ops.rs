//! The runtime rules: take an agent's RUNTIME report, keep the environment's row current (only
//! when something changed), and turn drift transitions into audit entries, notices and a hub
//! event; recheck an environment when its release may have changed.

use stagely_protocol::release::RuntimeContainer;
use tokio::sync::broadcast::error::RecvError;

use super::drift::{self, describe};
use super::store::{self, Row};
use super::{DriftReason, Runtime, RuntimeError};
use crate::agents::AgentIdentity;
use crate::agents::hub::HubEvent;
use crate::app::AppState;
use crate::db::{DbError, now_ms, rfc3339};
use crate::notify;

/// The actor drift entries are audited as.
pub const ACTOR: &str = "stagely";

/// A drift transition, once per transition (not per report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Started {
        reasons: Vec<DriftReason>,
    },
    Ended {
        was: Vec<DriftReason>,
        release: Option<i64>,
    },
}

/// What changed in one environment's row, to write.
struct Plan {
    row: Row,
    transition: Option<Transition>,
    target: store::Target,
}

/// What one stored change did, after it committed.
#[derive(Debug, Clone)]
pub struct Change {
    pub environment_id: i64,
    pub transition: Option<Transition>,
    pub drift_since: Option<i64>,
}

/// A report as received, bounded.
struct Report {
    agent_id: i64,
    containers: Vec<RuntimeContainer>,
    json: String,
    truncated: bool,
}

/// Compare a report (or, for `None`, the stored containers) with the last release: `None` when
/// nothing would change.
fn evaluate(
    c: &crate::db::Conn<'_>,
    environment_id: i64,
    report: Option<&Report>,
    now: i64,
) -> Result<Option<Plan>, RuntimeError> {
    let target = store::target(c, environment_id)?.ok_or(RuntimeError::EnvironmentNotFound)?;
    let old = store::get(c, environment_id)?;
    let release = crate::releases::store::latest(c, environment_id)?;
    let services = release.as_ref().map(|r| r.services.as_slice());
    let (containers, json, truncated, agent_id, reported_at) = match (report, &old) {
        (Some(r), _) => (None, r.json.clone(), r.truncated, Some(r.agent_id), now),
        (None, Some(o)) => {
            let parsed: Vec<RuntimeContainer> = serde_json::from_str(&o.containers).unwrap_or_default();
            (
                Some(parsed),
                o.containers.clone(),
                o.truncated,
                o.agent_id,
                o.reported_at,
            )
        }
        (None, None) => return Ok(None),
    };
    let list: &[RuntimeContainer] = match (report, &containers) {
        (Some(r), _) => &r.containers,
        (None, Some(p)) => p,
        (None, None) => &[],
    };
    let old_drift = old.as_ref().and_then(|o| o.drift.clone());
    // While a deployment runs, compose renames, creates and replaces containers: the report is
    // stored (the page shows it) but the drift stays as it was, so a deploy is not audited and
    // notified as drift. Its end rechecks the environment (`watch`) with the containers then.
    let new_drift = if store::deploying(c, environment_id)? {
        old_drift.clone()
    } else {
        drift::compute(services, list, truncated)
    };
    if let Some(o) = &old
        && o.containers == json
        && o.truncated == truncated
        && o.drift == new_drift
    {
        return Ok(None);
    }
    let (transition, drift_since) = match (old_drift, &new_drift) {
        (None, Some(reasons)) => (
            Some(Transition::Started {
                reasons: reasons.clone(),
            }),
            Some(now),
        ),
        (Some(was), None) => (
            Some(Transition::Ended {
                was,
                release: release.as_ref().map(|r| r.deployment_id),
            }),
            None,
        ),
        (Some(_), Some(_)) => (None, old.as_ref().and_then(|o| o.drift_since).or(Some(now))),
        (None, None) => (None, None),
    };
    Ok(Some(Plan {
        row: Row {
            agent_id,
            reported_at,
            containers: json,
            truncated,
            drift: new_drift,
            drift_since,
        },
        transition,
        target,
    }))
}

fn audit(
    tx: &crate::db::Tx<'_>,
    now: i64,
    environment_id: i64,
    target: &store::Target,
    t: &Transition,
) -> Result<(), DbError> {
    let (action, detail) = match t {
        Transition::Started { reasons } => (
            "drift.started",
            format!(
                "{}/{}: what runs differs from the last release: {}",
                target.project,
                target.environment,
                describe(reasons)
            ),
        ),
        Transition::Ended { was, release } => (
            "drift.ended",
            format!(
                "{}/{}: {} (was: {})",
                target.project,
                target.environment,
                match release {
                    Some(id) => format!("what runs matches the release of deployment #{id}"),
                    None => "no release to compare with".to_owned(),
                },
                describe(was)
            ),
        ),
    };
    crate::audit::record(
        tx,
        now,
        &crate::audit::Entry::new(ACTOR, action, "environment", Some(environment_id)).detail(&detail),
    )
}

/// Store a plan (recomputed inside the write, so two reports cannot interleave), audit its
/// transition, then tell the pages and the notification channels.
async fn apply(
    state: &AppState,
    environment_id: i64,
    report: Option<Report>,
) -> Result<Option<Change>, RuntimeError> {
    let now = now_ms();
    let done = state
        .db
        .write(move |tx| {
            let Some(plan) = evaluate(tx, environment_id, report.as_ref(), now)? else {
                return Ok::<_, RuntimeError>(None);
            };
            store::upsert(tx, environment_id, &plan.row)?;
            if let Some(t) = &plan.transition {
                audit(tx, now, environment_id, &plan.target, t)?;
            }
            Ok(Some((plan, now)))
        })
        .await?;
    let Some((plan, now)) = done else {
        return Ok(None);
    };
    state.hub.publish(HubEvent::RuntimeChanged { environment_id });
    if let Some(t) = &plan.transition {
        notify_transition(state, environment_id, &plan.target, t, plan.row.drift_since, now).await;
    }
    Ok(Some(Change {
        environment_id,
        transition: plan.transition,
        drift_since: plan.row.drift_since,
    }))
}

async fn notify_transition(
    state: &AppState,
    environment_id: i64,
    target: &store::Target,
    t: &Transition,
    drift_since: Option<i64>,
    now: i64,
) {
    let (started, detail) = match t {
        Transition::Started { reasons } => (true, format!("Drift: {}", describe(reasons))),
        Transition::Ended { was, .. } => (false, format!("Drift ended (was: {})", describe(was))),
    };
    let event = notify::Event::Drift {
        started,
        environment_id,
        environment: target.environment.clone(),
        at: now,
        // One notice per transition: a start is keyed by when it started, an end by when it
        // ended (a new episode starts later than the last one ended).
        episode: drift_since.unwrap_or(now),
        detail,
    };
    if let Err(e) = notify::ops::emit(state, target.project_id, event).await {
        tracing::error!(environment_id, error = %e, "cannot enqueue a drift notification");
    }
}

/// An agent's RUNTIME: refused when it names another compose project than its environment's;
/// stored (and compared with the last release) only when something changed. `Ok(None)`: nothing
/// changed, nothing written.
pub async fn on_runtime(
    state: &AppState,
    agent: &AgentIdentity,
    project: String,
    containers: Vec<RuntimeContainer>,
    truncated: bool,
) -> Result<Option<Change>, RuntimeError> {
    let environment_id = agent.environment_id;
    let (containers, truncated) = drift::bound(containers, truncated);
    let json = serde_json::to_string(&containers).map_err(|e| DbError::Task(e.to_string()))?;
    let report = Report {
        agent_id: agent.id,
        containers,
        json,
        truncated,
    };
    // Read first: a repeated report (the usual case) costs no write at all.
    let (report, changed) = state
        .db
        .read(move |c| {
            let target = store::target(c, environment_id)?.ok_or(RuntimeError::EnvironmentNotFound)?;
            if target.compose_project != project {
                return Err(RuntimeError::WrongProject {
                    expected: target.compose_project,
                    got: project.chars().take(80).collect(),
                });
            }
            let changed = evaluate(c, environment_id, Some(&report), now_ms())?.is_some();
            Ok((report, changed))
        })
        .await?;
    if !changed {
        return Ok(None);
    }
    apply(state, environment_id, Some(report)).await
}

/// Recompute an environment's drift from its stored containers (a new release was recorded, a
/// deployment ended): a deploy that fixes the drift ends it even if the agent reports the same
/// containers. Safe to call any number of times; `Ok(None)` when nothing changed.
pub async fn recheck(state: &AppState, environment_id: i64) -> Result<Option<Change>, RuntimeError> {
    let changed = state
        .db
        .read(move |c| match evaluate(c, environment_id, None, now_ms()) {
            Ok(plan) => Ok(plan.is_some()),
            Err(RuntimeError::EnvironmentNotFound) => Ok(false),
            Err(e) => Err(e),
        })
        .await?;
    if !changed {
        return Ok(None);
    }
    apply(state, environment_id, None).await
}

/// The WATCH frame for an agent that offered `CAP_RUNTIME`: its environment's compose project.
pub async fn watch_frame(state: &AppState, environment_id: i64) -> Result<Option<String>, RuntimeError> {
    let target = state.db.read(move |c| store::target(c, environment_id)).await?;
    Ok(target.map(|t| {
        stagely_protocol::encode(&stagely_protocol::ServerMessage::Watch {
            project: t.compose_project,
        })
    }))
}

/// Follow the hub: every deployment change may have recorded a release, so its environment is
/// rechecked (a read when nothing changed). After missed events, every environment is.
pub async fn watch(state: AppState) {
    let mut events = state.hub.events();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            () = state.shutdown.cancelled() => break,
        };
        let ids = match event {
            Ok(HubEvent::DeploymentChanged { environment_id, .. }) => vec![environment_id],
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => match state.db.read(store::environments).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list environments to recheck their drift");
                    continue;
                }
            },
            Err(RecvError::Closed) => break,
        };
        for id in ids {
            if let Err(e) = recheck(&state, id).await {
                tracing::error!(environment_id = id, error = %e, "cannot recheck an environment's drift");
            }
        }
    }
}

/// An environment's runtime for the API and the pages.
pub async fn get(state: &AppState, environment_id: i64) -> Result<Runtime, RuntimeError> {
    state.db.read(move |c| read(c, environment_id)).await
}

/// The same, on a connection already open (the project page reads every environment's at once).
pub fn read(c: &crate::db::Conn<'_>, environment_id: i64) -> Result<Runtime, RuntimeError> {
    store::target(c, environment_id)?.ok_or(RuntimeError::EnvironmentNotFound)?;
    let row = store::get(c, environment_id)?;
    let release = crate::releases::store::latest(c, environment_id)?;
    let Some(row) = row else {
        return Ok(Runtime {
            environment_id,
            reported_at: None,
            services: Vec::new(),
            drift: None,
            drift_since: None,
            release_deployment_id: release.map(|r| r.deployment_id),
            truncated: false,
        });
    };
    let containers: Vec<RuntimeContainer> = serde_json::from_str(&row.containers).unwrap_or_default();
    Ok(Runtime {
        environment_id,
        reported_at: Some(rfc3339(row.reported_at)),
        services: drift::services(&containers, release.as_ref().map(|r| r.services.as_slice())),
        drift: row.drift,
        drift_since: row.drift_since.map(rfc3339),
        release_deployment_id: release.map(|r| r.deployment_id),
        truncated: row.truncated,
    })
}
