//! Routing between replicas (issue 17): a deployment triggered on one replica whose agent is
//! connected to another, and a CANCEL for such an agent.
//!
//! The waiting deployment row is the outbox, and `agent_commands` (V21) holds the CANCELs: the
//! replica that records one NOTIFYs ([`DISPATCH`] with the environment id, [`COMMAND`] with the
//! agent id), and every replica LISTENs on a connection of its own, acting on what concerns an
//! agent it holds. A missed notification (a reconnecting listener, a replica that died between
//! its write and its NOTIFY) is covered by every replica's sweep every [`SWEEP`]: its agents'
//! waiting deployments, pending commands, and revoked agents (their connections close here).
//! On SQLite nothing is routed: one process holds every agent.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::db::{Backend, DbError, params};

/// Payload: an environment id whose queue may have something to send.
pub const DISPATCH: &str = "stagely_dispatch";
/// Payload: an agent id with pending commands.
pub const COMMAND: &str = "stagely_command";
/// How often every replica looks for work of its agents it was not told about.
pub const SWEEP: Duration = Duration::from_secs(3);

enum Wake {
    Dispatch(i64),
    Command(i64),
}

/// NOTIFY the other replicas (delivered when the write commits). Nothing on SQLite.
pub async fn notify(state: &AppState, channel: &'static str, id: i64) {
    if state.db.backend() != Backend::Postgres {
        return;
    }
    let sent = state
        .db
        .write(move |tx| {
            tx.execute("SELECT pg_notify(?1, ?2)", params![channel, id.to_string()])?;
            Ok::<_, DbError>(())
        })
        .await;
    if let Err(e) = sent {
        tracing::warn!(channel, id, error = %e, "cannot NOTIFY the other replicas (their sweep catches up)");
    }
}

/// On PostgreSQL: the listener thread and the task acting on what it hears and on the sweep.
pub fn start(state: &AppState) -> Option<JoinHandle<()>> {
    if state.db.backend() != Backend::Postgres {
        return None;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (db, shutdown) = (state.db.clone(), state.shutdown.clone());
    let spawned = std::thread::Builder::new()
        .name("stagely-listen".into())
        .spawn(move || listen(&db, &tx, &shutdown));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the LISTEN thread: only the sweep routes to this replica");
    }
    Some(tokio::spawn(act(state.clone(), rx)))
}

/// LISTEN on both channels until shutdown, reconnecting after a failure.
fn listen(
    db: &crate::db::Db,
    tx: &mpsc::UnboundedSender<Wake>,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let mut client = match db.dedicated_connection() {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "LISTEN: cannot connect to PostgreSQL");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            None => return,
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {DISPATCH}; LISTEN {COMMAND}")) {
            tracing::warn!(error = %e, "LISTEN failed");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let failed = {
                let mut notes = client.notifications();
                let mut iter = notes.timeout_iter(Duration::from_millis(500));
                loop {
                    match iter.next() {
                        Ok(Some(n)) => {
                            let Ok(id) = n.payload().parse::<i64>() else {
                                continue;
                            };
                            let wake = if n.channel() == COMMAND {
                                Wake::Command(id)
                            } else {
                                Wake::Dispatch(id)
                            };
                            if tx.send(wake).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break false,
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection failed: reconnecting");
                            break true;
                        }
                    }
                }
            };
            if failed || client.is_closed() {
                break;
            }
        }
    }
}

async fn act(state: AppState, mut rx: mpsc::UnboundedReceiver<Wake>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            wake = rx.recv() => match wake {
                Some(Wake::Dispatch(environment_id)) => {
                    if state.hub.environments().contains(&environment_id) {
                        crate::deploys::queue::dispatch_local(&state, environment_id).await;
                    }
                }
                Some(Wake::Command(agent_id)) => {
                    if state.hub.is_online(agent_id) {
                        crate::deploys::queue::deliver_commands(&state, agent_id).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => sweep(&state).await,
            () = state.shutdown.cancelled() => break,
        }
    }
}

/// Waiting deployments and pending commands of the agents connected here.
pub async fn sweep(state: &AppState) {
    let local = state.hub.environments();
    if local.is_empty() {
        return;
    }
    let me = state.cluster.replica_id.clone();
    let found = state
        .db
        .read(move |c| {
            let waiting = crate::deploys::store::waiting(c)?;
            let commands = crate::deploys::store::agents_with_commands(c)?;
            let revoked = crate::agents::store::revoked_held_by(c, &me)?;
            Ok::<_, DbError>((waiting, commands, revoked))
        })
        .await;
    let (waiting, commands, revoked) = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "routing sweep cannot read the queue");
            return;
        }
    };
    // Revoked through another replica: the connection here closes (within one sweep).
    for agent_id in revoked {
        if state.hub.is_online(agent_id) {
            tracing::info!(
                agent_id,
                "agent revoked through another replica: closing its connection"
            );
            state
                .hub
                .disconnect(agent_id, 1008, stagely_protocol::CLOSE_REVOKED);
        }
    }
    let mut envs: Vec<i64> = waiting
        .into_iter()
        .map(|(_, env, _)| env)
        .filter(|env| local.contains(env))
        .collect();
    envs.dedup();
    for env in envs {
        crate::deploys::queue::dispatch_local(state, env).await;
    }
    for agent_id in commands {
        if state.hub.is_online(agent_id) {
            crate::deploys::queue::deliver_commands(state, agent_id).await;
        }
    }
}
