//! SQL for agents.

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{AGENT_TOKEN_PREFIX, AgentError, AgentIdentity, AgentInfo, HelloInfo, PinCheck, Sighting};
use crate::crypto::{ct_eq, hash_token, random_token};
use crate::db::{DbError, rfc3339};

/// Create an agent bound to one environment; returns its id and the token (shown once).
pub fn create(tx: &Tx<'_>, environment_id: i64, name: &str, now: i64) -> Result<(i64, String), AgentError> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM environments WHERE id = ?1)",
        [environment_id],
        |r| r.get(0),
    )?;
    if !exists {
        return Err(AgentError::EnvironmentNotFound);
    }
    // Writes are serialised (BEGIN IMMEDIATE), so this check and the insert see the same rows;
    // the unique index (environment_id, name) backs it up.
    let taken: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM agents WHERE environment_id = ?1 AND name = ?2)",
        params![environment_id, name],
        |r| r.get(0),
    )?;
    if taken {
        return Err(AgentError::NameTaken(name.to_owned()));
    }
    let token = random_token(AGENT_TOKEN_PREFIX);
    let id = tx.query_row(
        "INSERT INTO agents (environment_id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
        params![environment_id, name, hash_token(&token), now],
        |r| r.get(0),
    )?;
    Ok((id, token))
}

/// The live (not revoked) agent a token belongs to.
pub fn authenticate(c: &Conn<'_>, token: &str) -> Result<Option<AgentIdentity>, DbError> {
    if !token.starts_with(AGENT_TOKEN_PREFIX) {
        return Ok(None);
    }
    // A token made since issue 11 carries the signing key's fingerprint after a `.`: only the
    // part before it is the secret (and what was hashed at creation).
    let (secret, _fingerprint) = stagely_protocol::signing::split_token(token);
    let hash = hash_token(secret);
    let row = c
        .query_row(
            "SELECT id, name, environment_id, token_hash FROM agents WHERE token_hash = ?1 AND revoked_at IS NULL",
            [&hash],
            |r| {
                let agent = AgentIdentity { id: r.get(0)?, name: r.get(1)?, environment_id: r.get(2)?, tag: [0; 8] };
                Ok((agent, r.get::<_, Vec<u8>>(3)?))
            },
        )
        .optional()?;
    Ok(row
        .filter(|(_, stored)| ct_eq(stored, &hash))
        .map(|(mut agent, _)| {
            for (t, h) in agent.tag.iter_mut().zip(&hash) {
                *t = *h;
            }
            agent
        }))
}

/// The token hashes of every live agent (the handshake admission's "known" set at start).
pub fn live_token_hashes(c: &Conn<'_>) -> Result<Vec<Vec<u8>>, DbError> {
    let mut stmt = c.prepare("SELECT token_hash FROM agents WHERE revoked_at IS NULL")?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const INFO_SELECT: &str = "SELECT a.id, a.name, a.environment_id, e.name, p.id, p.name, a.online, a.last_heartbeat,
        a.agent_version, a.hostname, a.docker_version, a.compose_version, a.created_at, a.revoked_at IS NOT NULL,
        a.recipient, a.recipient_pinned_at, a.last_address, a.identity_mismatch_at, a.identity_mismatch,
        a.second_connection_at, a.second_connection, a.lease_until
     FROM agents a JOIN environments e ON e.id = a.environment_id JOIN projects p ON p.id = e.project_id";

fn info_from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<AgentInfo> {
    Ok(AgentInfo {
        id: r.get(0)?,
        name: r.get(1)?,
        environment_id: r.get(2)?,
        environment: r.get(3)?,
        project_id: r.get(4)?,
        project: r.get(5)?,
        // Online means a live lease (issue 17): a dead replica's agents read offline once
        // their leases run out.
        online: r.get::<_, bool>(6)?
            && r.get::<_, Option<i64>>(21)?
                .is_some_and(|l| l > crate::db::now_ms()),
        last_heartbeat: r.get::<_, Option<i64>>(7)?.map(rfc3339),
        version: r.get(8)?,
        hostname: r.get(9)?,
        docker_version: r.get(10)?,
        compose_version: r.get(11)?,
        created_at: rfc3339(r.get(12)?),
        revoked: r.get(13)?,
        recipient: r.get(14)?,
        recipient_pinned_at: r.get::<_, Option<i64>>(15)?.map(rfc3339),
        address: r.get(16)?,
        identity_mismatch: sighting(r.get(17)?, r.get(18)?),
        second_connection: sighting(r.get(19)?, r.get(20)?),
    })
}

fn sighting(at: Option<i64>, detail: Option<String>) -> Option<Sighting> {
    Some(Sighting {
        at: rfc3339(at?),
        detail: detail.unwrap_or_default(),
    })
}

pub fn list(c: &Conn<'_>) -> Result<Vec<AgentInfo>, AgentError> {
    let mut stmt = c.prepare(&format!("{INFO_SELECT} ORDER BY p.name, e.name, a.id"))?;
    Ok(stmt.query_map([], info_from_row)?.collect::<Result<_, _>>()?)
}

pub fn get(c: &Conn<'_>, id: i64) -> Result<AgentInfo, AgentError> {
    c.query_row(&format!("{INFO_SELECT} WHERE a.id = ?1"), [id], info_from_row)
        .optional()?
        .ok_or(AgentError::NotFound)
}

/// Live agents of an environment, oldest first.
pub fn ids_for_environment(c: &Conn<'_>, environment_id: i64) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id FROM agents WHERE environment_id = ?1 AND revoked_at IS NULL ORDER BY id",
    )?;
    Ok(stmt
        .query_map([environment_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Agents a project's deletion would remove (their connections must be closed).
pub fn ids_for_project(c: &Conn<'_>, project_id: i64) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare(
        "SELECT a.id FROM agents a JOIN environments e ON e.id = a.environment_id WHERE e.project_id = ?1",
    )?;
    Ok(stmt
        .query_map([project_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Last heartbeat stored for an agent (ms), for `agent_offline` errors.
pub fn last_heartbeat(c: &Conn<'_>, id: i64) -> Result<Option<i64>, DbError> {
    Ok(
        c.query_row("SELECT last_heartbeat FROM agents WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .flatten(),
    )
}

pub fn revoke(tx: &Tx<'_>, id: i64, now: i64) -> Result<AgentInfo, AgentError> {
    let before = get(tx, id)?;
    tx.execute(
        "UPDATE agents SET revoked_at = ?2, online = 0 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )?;
    Ok(before)
}

/// Remove a revoked agent's record (its deployments keep their history, their agent unset).
pub fn remove_revoked(tx: &Tx<'_>, id: i64) -> Result<AgentInfo, AgentError> {
    let before = get(tx, id)?;
    if !before.revoked {
        return Err(AgentError::NotRevoked);
    }
    tx.execute(
        "DELETE FROM agents WHERE id = ?1 AND revoked_at IS NOT NULL",
        [id],
    )?;
    Ok(before)
}

/// The agent is connected to replica `replica` now: online, its lease held until
/// `now + LEASE_MS` (renewed by [`renew_leases`] while it stays).
pub fn mark_online(
    tx: &Tx<'_>,
    id: i64,
    hello: &HelloInfo,
    address: &str,
    replica: &str,
    now: i64,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE agents SET online = 1, last_heartbeat = ?2, agent_version = ?3, hostname = ?4, docker_version = ?5,
             compose_version = ?6, last_address = ?7, capabilities = ?8, replica_id = ?9, lease_until = ?10 WHERE id = ?1",
        params![id, now, hello.agent_version, hello.hostname, hello.docker_version, hello.compose_version, address,
            hello.capabilities.join(","), replica, now + crate::cluster::LEASE_MS],
    )?;
    Ok(())
}

/// Whether the agent offered `capability` in its last HELLO.
pub fn has_capability(c: &Conn<'_>, id: i64, capability: &str) -> Result<bool, DbError> {
    let offered: String = c
        .query_row("SELECT capabilities FROM agents WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or_default();
    Ok(offered.split(',').any(|c| c == capability))
}

/// Compare a HELLO's recipient with the pinned one, pinning it if none is.
pub fn check_pin(tx: &Tx<'_>, id: i64, offered: Option<&str>, now: i64) -> Result<PinCheck, DbError> {
    let pinned: Option<String> =
        tx.query_row("SELECT recipient FROM agents WHERE id = ?1", [id], |r| r.get(0))?;
    Ok(match (pinned, offered) {
        (None, None) => PinCheck::NoneOffered,
        (None, Some(offered)) => {
            tx.execute(
                "UPDATE agents SET recipient = ?2, recipient_pinned_at = ?3 WHERE id = ?1",
                params![id, offered, now],
            )?;
            PinCheck::Pinned
        }
        (Some(pinned), Some(offered)) if pinned == offered => PinCheck::Matches,
        (Some(pinned), _) => PinCheck::Mismatch { pinned },
    })
}

pub fn record_identity_mismatch(tx: &Tx<'_>, id: i64, detail: &str, now: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE agents SET identity_mismatch_at = ?2, identity_mismatch = ?3 WHERE id = ?1",
        params![id, now, detail],
    )?;
    Ok(())
}

pub fn record_second_connection(tx: &Tx<'_>, id: i64, detail: &str, now: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE agents SET second_connection_at = ?2, second_connection = ?3 WHERE id = ?1",
        params![id, now, detail],
    )?;
    Ok(())
}

/// Forget the pinned recipient (and the mismatch it caused): the next connection pins again.
/// Returns the agent as it was.
pub fn reset_identity(tx: &Tx<'_>, id: i64) -> Result<AgentInfo, AgentError> {
    let before = get(tx, id)?;
    if before.recipient.is_none() {
        return Err(AgentError::NotPinned);
    }
    tx.execute(
        "UPDATE agents SET recipient = NULL, recipient_pinned_at = NULL, identity_mismatch_at = NULL,
             identity_mismatch = NULL WHERE id = ?1",
        [id],
    )?;
    Ok(before)
}

/// The recipient a DEPLOY to this agent is sealed to.
pub fn recipient(c: &Conn<'_>, id: i64) -> Result<Option<String>, DbError> {
    Ok(
        c.query_row("SELECT recipient FROM agents WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .flatten(),
    )
}

/// Where and from which host the last accepted connection came, and when it was last seen.
#[derive(Debug, Default)]
pub struct LastConnection {
    pub address: Option<String>,
    pub hostname: Option<String>,
    pub seen: Option<i64>,
}

pub fn last_connection(c: &Conn<'_>, id: i64) -> Result<LastConnection, DbError> {
    Ok(c.query_row(
        "SELECT last_address, hostname, last_heartbeat FROM agents WHERE id = ?1",
        [id],
        |r| {
            Ok(LastConnection {
                address: r.get(0)?,
                hostname: r.get(1)?,
                seen: r.get(2)?,
            })
        },
    )
    .optional()?
    .unwrap_or_default())
}

/// The agent's connection to replica `replica` ended. Nothing changes when another replica
/// holds it by now (it reconnected there before this one noticed).
pub fn mark_offline(tx: &Tx<'_>, id: i64, replica: &str, last_seen: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE agents SET online = 0, lease_until = ?2,
             last_heartbeat = CASE WHEN COALESCE(last_heartbeat, 0) > ?2 THEN last_heartbeat ELSE ?2 END
         WHERE id = ?1 AND (replica_id IS NULL OR replica_id = ?3)",
        params![id, last_seen, replica],
    )?;
    Ok(())
}

/// At start on SQLite no agent is connected to this process, whatever the last run left behind.
pub fn mark_all_offline(tx: &Tx<'_>) -> Result<(), DbError> {
    tx.execute(
        "UPDATE agents SET online = 0, lease_until = NULL WHERE online = 1",
        [],
    )?;
    Ok(())
}

/// On PostgreSQL other replicas may hold agents: only those whose lease ran out are offline (a
/// previous life of this replica had another id, so its leases run out too). Also the leader's
/// periodic tidy-up. Answers how many it marked.
pub fn mark_expired_offline(tx: &Tx<'_>, now: i64) -> Result<usize, DbError> {
    Ok(tx.execute(
        "UPDATE agents SET online = 0 WHERE online = 1 AND COALESCE(lease_until, 0) <= ?1",
        [now],
    )?)
}

/// Renew, in one statement, the leases of every agent replica `replica` holds.
pub fn renew_leases(tx: &Tx<'_>, replica: &str, now: i64) -> Result<usize, DbError> {
    Ok(tx.execute(
        "UPDATE agents SET lease_until = ?2 WHERE replica_id = ?1 AND online = 1",
        params![replica, now + crate::cluster::LEASE_MS],
    )?)
}

/// Revoked agents replica `replica` still holds (revoked through another replica): their
/// connections here must close.
pub fn revoked_held_by(c: &Conn<'_>, replica: &str) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id FROM agents WHERE replica_id = ?1 AND revoked_at IS NOT NULL ORDER BY id",
    )?;
    Ok(stmt
        .query_map([replica], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// An agent's presence as the database has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// The replica holding it, while its lease is live.
    pub replica: Option<String>,
    /// Until when its last lease held (ms), if it ever had one.
    pub lease_until: Option<i64>,
}

pub fn presence(c: &Conn<'_>, id: i64, now: i64) -> Result<Presence, DbError> {
    let row: Option<(bool, Option<String>, Option<i64>)> = c
        .query_row(
            "SELECT online = 1, replica_id, lease_until FROM agents WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        Some((online, replica, lease_until)) => Presence {
            replica: replica.filter(|_| online && lease_until.is_some_and(|l| l > now)),
            lease_until,
        },
        None => Presence::default(),
    })
}

/// Persist many heartbeats in one statement batch.
pub fn record_heartbeats(tx: &Tx<'_>, beats: &[(i64, i64)]) -> Result<(), DbError> {
    let mut stmt = tx.prepare_cached("UPDATE agents SET last_heartbeat = ?2 WHERE id = ?1")?;
    for (id, at) in beats {
        stmt.execute(params![id, at])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: [&str; 2] = [
        include_str!("../../migrations/V1__initial.sql"),
        include_str!("../../migrations/V2__web_sign_in.sql"),
    ];
    const V3: &str = include_str!("../../migrations/V3__agent_names.sql");

    fn names(c: &Conn<'_>) -> Vec<(i64, i64, String)> {
        let mut stmt = c
            .prepare("SELECT id, environment_id, name FROM agents ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn v3_renames_old_duplicates_deterministically_then_enforces_unique_names() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for sql in SCHEMA {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(
            "INSERT INTO projects (id, name, git_ref, compose_path, pull, created_at, updated_at)
                 VALUES (1, 'p', 'main', '/c.yml', 'always', 0, 0);
             INSERT INTO environments (id, project_id, name, created_at) VALUES (1, 1, 'a', 0), (2, 1, 'b', 0);
             INSERT INTO agents (id, environment_id, name, token_hash, created_at, revoked_at) VALUES
                 (1, 1, 'web', x'01', 0, 5),       -- revoked: gives the name up to the live one
                 (2, 1, 'web', x'02', 0, NULL),
                 (3, 1, 'web', x'03', 0, NULL),
                 (4, 2, 'web', x'04', 0, NULL),    -- another environment: untouched
                 (5, 1, '<script>', x'05', 0, NULL), -- breaks the new rule: kept readable
                 (6, 1, 'db', x'06', 0, NULL),
                 (7, 1, 'db', x'07', 0, NULL),
                 (8, 1, 'db-7', x'08', 0, NULL);   -- already holds the name 7 would get",
        )
        .unwrap();
        c.execute_batch(V3).unwrap();
        let got = names(&Conn::sqlite(&c));
        let want = [
            (1, 1, "web-1"),
            (2, 1, "web"),
            (3, 1, "web-3"),
            (4, 2, "web"),
            (5, 1, "<script>"),
            (6, 1, "db"),
            (7, 1, "db-7-7"),
            (8, 1, "db-7"),
        ];
        assert_eq!(got, want.map(|(i, e, n)| (i, e, n.to_owned())).to_vec());
        let dup = c.execute(
            "INSERT INTO agents (environment_id, name, token_hash, created_at) VALUES (1, 'web', x'09', 0)",
            [],
        );
        assert!(DbError::from(dup.unwrap_err()).is_constraint());
    }

    #[test]
    fn a_duplicate_name_in_one_environment_is_name_taken() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("s.db")).unwrap();
        db.write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO projects (id, name, git_ref, compose_path, pull, created_at, updated_at)
                     VALUES (1, 'p', 'main', '/c.yml', 'always', 0, 0);
                 INSERT INTO environments (id, project_id, name, created_at) VALUES (1, 1, 'a', 0), (2, 1, 'b', 0);",
            )?;
            create(tx, 1, "web-1", 0)?;
            assert!(matches!(create(tx, 1, "web-1", 0), Err(AgentError::NameTaken(n)) if n == "web-1"));
            create(tx, 2, "web-1", 0)?;
            Ok::<_, AgentError>(())
        })
        .unwrap();
    }
}
