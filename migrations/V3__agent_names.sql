-- Stagely schema v3: an agent's name is unique within its environment.
--
-- Older versions accepted duplicates. Before the index is built, every duplicate but one is
-- renamed deterministically by appending `-<id>`: within one (environment, name), a live agent
-- keeps the name before a revoked one, then the oldest (lowest id) keeps it. Names are otherwise
-- left exactly as they were, even those the new character rule would refuse (pages escape them),
-- so an operator still recognises every agent.
UPDATE agents SET name = name || '-' || id
WHERE EXISTS (
    SELECT 1 FROM agents o
    WHERE o.environment_id = agents.environment_id
      AND o.name = agents.name
      AND o.id <> agents.id
      AND ((o.revoked_at IS NULL) > (agents.revoked_at IS NULL)
           OR ((o.revoked_at IS NULL) = (agents.revoked_at IS NULL) AND o.id < agents.id))
);

-- A renamed agent can (rarely) meet another agent already called `<name>-<id>`: the renamed one
-- (which carries its own id as the suffix) gets the suffix once more. Ids are unique, so what
-- remains cannot collide unless someone named agents after future ids twice over; then the
-- index below fails and the migration stops with an error rather than guessing.
UPDATE agents SET name = name || '-' || id
WHERE name LIKE '%-' || id
  AND EXISTS (
    SELECT 1 FROM agents o
    WHERE o.environment_id = agents.environment_id AND o.name = agents.name AND o.id <> agents.id
);

CREATE UNIQUE INDEX agents_environment_name ON agents(environment_id, name);
