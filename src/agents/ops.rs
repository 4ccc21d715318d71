//! Agent operations, shared by the JSON API and the agents page: create (the token is shown
//! once), list with live state, revoke. Each write records its audit entry in its transaction.

use serde::Serialize;

use super::{AgentError, AgentIdentity, AgentInfo, HelloInfo, PinCheck, store};
use crate::app::AppState;
use crate::audit;
use crate::db::{DbError, now_ms, rfc3339};
use crate::names::{self, NameKind};
use crate::users::Principal;

/// A new agent; its token exists only here, once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedAgent {
    pub id: i64,
    pub name: String,
    pub environment_id: i64,
    /// Shown only in this response; only its hash is stored. It ends with `.` and the
    /// appliance signing key's fingerprint, which the agent pins at its first connection.
    pub token: String,
    /// The signing key's fingerprint, as carried in the token.
    pub fingerprint: String,
}

/// The agent name rule ([`NameKind::Agent`]), with the field named.
pub fn validate_name(name: &str) -> Result<String, AgentError> {
    names::validate(NameKind::Agent, name).map_err(|e| AgentError::Invalid {
        field: "name",
        message: e.message,
    })
}

/// Create an agent for an environment. The name follows the agent rule and is unique within
/// the environment (a revoked agent keeps its name).
pub async fn create_agent(
    state: &AppState,
    who: &Principal,
    environment_id: i64,
    name: &str,
) -> Result<CreatedAgent, AgentError> {
    let name = validate_name(name)?;
    let actor = who.actor.clone();
    let (id, token) = state
        .db
        .write({
            let name = name.clone();
            move |tx| {
                let now = now_ms();
                let (id, token) = store::create(tx, environment_id, &name, now)?;
                audit::record(
                    tx,
                    now,
                    &audit::Entry::new(&actor, "agent.create", "agent", Some(id)).detail(&name),
                )?;
                Ok::<_, AgentError>((id, token))
            }
        })
        .await?;
    // Its first handshake passes the per-address failure limit even from a busy address.
    state.hub.admission.remember(crate::crypto::hash_token(&token));
    let fingerprint = state.signer.fingerprint().to_owned();
    Ok(CreatedAgent {
        id,
        name,
        environment_id,
        token: stagely_protocol::signing::token_with_fingerprint(&token, &fingerprint),
        fingerprint,
    })
}

/// Every agent, with live status from the hub where connected (and online when another replica
/// holds it: a live lease).
pub async fn list_agents(state: &AppState) -> Result<Vec<AgentInfo>, AgentError> {
    let mut agents = state.db.read(store::list).await?;
    for a in &mut agents {
        a.online = a.online || state.hub.is_online(a.id);
        if let Some(seen) = state.hub.last_seen(a.id) {
            a.last_heartbeat = Some(rfc3339(seen));
        }
    }
    Ok(agents)
}

/// One agent, with live status from the hub where connected.
pub async fn get_agent(state: &AppState, id: i64) -> Result<AgentInfo, AgentError> {
    let mut a = state.db.read(move |c| store::get(c, id)).await?;
    a.online = a.online || state.hub.is_online(a.id);
    if let Some(seen) = state.hub.last_seen(a.id) {
        a.last_heartbeat = Some(rfc3339(seen));
    }
    Ok(a)
}

/// Revoke an agent and close its live connection at once.
pub async fn revoke_agent(state: &AppState, who: &Principal, id: i64) -> Result<(), AgentError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let agent = store::revoke(tx, id, now)?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "agent.revoke", "agent", Some(id)).detail(&agent.name),
            )?;
            Ok::<_, AgentError>(())
        })
        .await?;
    state.hub.disconnect(id, 1008, stagely_protocol::CLOSE_REVOKED);
    Ok(())
}

/// Delete a revoked agent for good (its name becomes free; its deployments stay, without it).
pub async fn delete_revoked_agent(state: &AppState, who: &Principal, id: i64) -> Result<(), AgentError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let agent = store::remove_revoked(tx, id)?;
            let detail = format!("{} ({}/{})", agent.name, agent.project, agent.environment);
            let entry = audit::Entry::new(&actor, "agent.delete", "agent", Some(id))
                .name(&agent.name)
                .project(agent.project_id)
                .detail(&detail);
            audit::record(tx, now_ms(), &entry)?;
            Ok::<_, AgentError>(())
        })
        .await
}

/// Forget an agent's pinned identity (after its target was reinstalled, say) and close its
/// connection, so it reconnects at once and its next HELLO pins the recipient it offers.
pub async fn reset_identity(state: &AppState, who: &Principal, id: i64) -> Result<(), AgentError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let agent = store::reset_identity(tx, id)?;
            let detail = format!(
                "{}: forgot {}",
                agent.name,
                agent.recipient.as_deref().unwrap_or_default()
            );
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "agent.identity_reset", "agent", Some(id)).detail(&detail),
            )?;
            Ok::<_, AgentError>(())
        })
        .await?;
    state.hub.disconnect(id, 1012, super::CLOSE_IDENTITY_RESET);
    Ok(())
}

/// Whether a connection that said HELLO may go on.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Accepted,
    /// Refused: this is why (for the agent's ERROR frame and log).
    IdentityMismatch(String),
}

/// The rules for a connection that said HELLO, in one transaction with their records:
/// - its recipient is pinned if none is, and must be the pinned one if one is (a HELLO without
///   one, from an old agent, is let in only while nothing is pinned: it is sent no DEPLOY);
///   a mismatch is refused, recorded on the agent and audited `agent.identity_mismatch`;
/// - a token that connects while its agent is connected, or from another address or host within
///   the offline window of the last connection, is recorded on the agent and audited
///   `agent.second_connection`. The newcomer still replaces the old connection (a reconnect after
///   a network blip must work before the server notices the old one is dead), never silently.
///
/// `live` says whether the hub holds a connection of this agent right now.
pub async fn admit(
    state: &AppState,
    agent: &AgentIdentity,
    hello: &HelloInfo,
    address: &str,
    live: bool,
) -> Result<Admission, DbError> {
    let (id, actor) = (agent.id, format!("agent:{}", agent.name));
    let (hello, address) = (hello.clone(), address.to_owned());
    let window_ms =
        i64::try_from(state.config.agents.offline_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let replica = state.cluster.replica_id.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let host = &hello.hostname;
            match store::check_pin(tx, id, hello.recipient.as_deref(), now)? {
                PinCheck::Mismatch { pinned } => {
                    let offered = hello.recipient.as_deref().unwrap_or("no recipient (an old agent)");
                    let detail = format!(
                        "refused a connection from {address} (host {host}) offering {offered}; pinned: {pinned}"
                    );
                    store::record_identity_mismatch(tx, id, &detail, now)?;
                    audit::record(tx, now, &audit::Entry::new(&actor, "agent.identity_mismatch", "agent", Some(id)).detail(&detail))?;
                    return Ok(Admission::IdentityMismatch(format!(
                        "this agent token is pinned to another identity ({pinned}); if the target was \
                         reinstalled, an admin can reset the agent's identity on the appliance"
                    )));
                }
                PinCheck::Pinned => {
                    let detail = hello.recipient.clone().unwrap_or_default();
                    audit::record(tx, now, &audit::Entry::new(&actor, "agent.identity_pinned", "agent", Some(id)).detail(&detail))?;
                }
                PinCheck::Matches | PinCheck::NoneOffered => {}
            }
            let prev = store::last_connection(tx, id)?;
            let prev_address = prev.address.unwrap_or_else(|| "an unknown address".into());
            let prev_host = prev.hostname.unwrap_or_default();
            let prev_seen = prev.seen;
            let elsewhere = prev_address != address || prev_host != *host;
            let recent = prev_seen.is_some_and(|seen| now - seen <= window_ms);
            let detail = if live {
                Some(format!(
                    "{address} (host {host}) connected while {prev_address} (host {prev_host}) was \
                     connected; the newer connection replaced it"
                ))
            } else if recent && elsewhere {
                Some(format!(
                    "{address} (host {host}) connected {} s after {prev_address} (host {prev_host}) was last seen",
                    (now - prev_seen.unwrap_or(now)) / 1000
                ))
            } else {
                None
            };
            if let Some(detail) = detail {
                store::record_second_connection(tx, id, &detail, now)?;
                audit::record(tx, now, &audit::Entry::new(&actor, "agent.second_connection", "agent", Some(id)).detail(&detail))?;
            }
            store::mark_online(tx, id, &hello, &address, &replica, now)?;
            Ok(Admission::Accepted)
        })
        .await
}

/// Close the live sockets of agents whose records are gone (their project or environment was
/// deleted).
pub fn close_agents(state: &AppState, agents: Vec<i64>) {
    for id in agents {
        state.hub.disconnect(id, 1008, stagely_protocol::CLOSE_REVOKED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_agent_rule_and_name_the_field() {
        assert_eq!(validate_name(" web-1 ").unwrap(), "web-1");
        for bad in ["<script>", "../../x", "", "a b"] {
            assert!(
                matches!(validate_name(bad), Err(AgentError::Invalid { field: "name", .. })),
                "{bad:?}"
            );
        }
    }
}
