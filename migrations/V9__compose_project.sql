-- Stagely schema v9: each environment keeps the compose project name its stack runs under,
-- chosen once and unique across the appliance (issue 12).
--
-- Before, the agent derived it from the names as `<project>-<environment>`, so `a-b`/`c` and
-- `a`/`b-c` shared one compose project (and `--remove-orphans` removed the other's containers),
-- and renaming a project moved its stack to a new name, orphaning the running one.
--
-- Existing environments keep the name their stack runs under today, so upgrading orphans
-- nothing. Where two already shared one, the later gets its id appended (its next deploy starts
-- a stack of its own; the shared one stays with the first environment).
ALTER TABLE environments ADD COLUMN compose_project TEXT;

UPDATE environments SET compose_project =
    (SELECT p.name FROM projects p WHERE p.id = environments.project_id) || '-' || name;

UPDATE environments SET compose_project = compose_project || '-' || id
WHERE EXISTS (
    SELECT 1 FROM environments e2
    WHERE e2.compose_project = environments.compose_project AND e2.id < environments.id
);

CREATE UNIQUE INDEX environments_compose_project ON environments (compose_project);
