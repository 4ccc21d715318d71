-- Several replicas on one PostgreSQL (issue 17). Presence with a lease: the replica holding an
-- agent's connection (its random id, new at every start) and until when that holds unless it
-- renews it. "Online" means `online = 1 AND lease_until > now`; a replica that dies stops
-- renewing, so its agents read as offline once their leases run out.
ALTER TABLE agents ADD COLUMN replica_id TEXT;
ALTER TABLE agents ADD COLUMN lease_until INTEGER;

-- Commands for an agent connected to another replica (a CANCEL): the replica holding the agent
-- sends and deletes them, when told by NOTIFY and at its periodic sweep, and at the agent's HELLO.
CREATE TABLE agent_commands (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id       INTEGER NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    deployment_id  INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('cancel')),
    created_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX agent_commands_agent ON agent_commands(agent_id, id);
