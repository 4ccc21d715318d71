//! Agent operations, shared by the JSON API and the agents page: create (the token is shown
//! once), list with live state, revoke. Each write records its audit entry in its transaction.

use serde::Serialize;

use super::{AgentError, AgentInfo, store};
use crate::app::AppState;
use crate::audit;
use crate::db::{now_ms, rfc3339};
use crate::names::{self, NameKind};
use crate::users::Principal;

/// A new agent; its token exists only here, once.
#[derive(Serialize)]
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
                audit::record(tx, now, &actor, "agent.create", "agent", Some(id), &name)?;
                Ok::<_, AgentError>((id, token))
            }
        })
        .await?;
    let fingerprint = state.signer.fingerprint().to_owned();
    Ok(CreatedAgent {
        id,
        name,
        environment_id,
        token: stagely_protocol::signing::token_with_fingerprint(&token, &fingerprint),
        fingerprint,
    })
}

/// Every agent, with live status from the hub where connected.
pub async fn list_agents(state: &AppState) -> Result<Vec<AgentInfo>, AgentError> {
    let mut agents = state.db.read(store::list).await?;
    for a in &mut agents {
        a.online = state.hub.is_online(a.id);
        if let Some(seen) = state.hub.last_seen(a.id) {
            a.last_heartbeat = Some(rfc3339(seen));
        }
    }
    Ok(agents)
}

/// Revoke an agent and close its live connection at once.
pub async fn revoke_agent(state: &AppState, who: &Principal, id: i64) -> Result<(), AgentError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let agent = store::revoke(tx, id, now)?;
            audit::record(tx, now, &actor, "agent.revoke", "agent", Some(id), &agent.name)?;
            Ok::<_, AgentError>(())
        })
        .await?;
    state.hub.disconnect(id, 1008, stagely_protocol::CLOSE_REVOKED);
    Ok(())
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
