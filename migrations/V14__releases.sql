-- Stagely schema v14: releases, secret history, rollback and what is running (issue 14).

-- Secret ids are never reused from now on (a release names secret versions by secret id): the
-- table is rebuilt with AUTOINCREMENT, every row and id kept. Nothing references `secrets` by a
-- foreign key, so the rebuild cascades nowhere. The sequence starts past every id a deployment
-- ever recorded, so a secret deleted before this migration cannot have its id handed out again.
CREATE TABLE secrets_v14 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id       INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id   INTEGER REFERENCES environments(id) ON DELETE CASCADE,
    key              TEXT NOT NULL,
    scope            TEXT NOT NULL CHECK (scope IN ('global', 'service')),
    service          TEXT,
    encrypted_value  BLOB NOT NULL,
    version          INTEGER NOT NULL DEFAULT 1,
    updated_by       TEXT NOT NULL,
    updated_at       INTEGER NOT NULL,
    CHECK ((scope = 'service') = (service IS NOT NULL))
) STRICT;
INSERT INTO secrets_v14 (id, project_id, environment_id, key, scope, service, encrypted_value,
        version, updated_by, updated_at)
    SELECT id, project_id, environment_id, key, scope, service, encrypted_value,
        version, updated_by, updated_at FROM secrets;
DROP TABLE secrets;
ALTER TABLE secrets_v14 RENAME TO secrets;
CREATE UNIQUE INDEX secrets_unique
    ON secrets(project_id, IFNULL(environment_id, 0), scope, IFNULL(service, ''), key);
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'secrets', MAX(IFNULL((SELECT MAX(id) FROM secrets), 0),
                          IFNULL((SELECT MAX(secret_id) FROM deployment_secrets), 0))
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'secrets');

-- Every version of every secret, the current one included, as age ciphertext. A secret's
-- newest `secrets.keep_versions` versions are kept; a deleted secret's versions (`deleted_at`)
-- stay while a release that can still be redeployed uses them. No foreign key to `secrets`:
-- they outlive it.
CREATE TABLE secret_versions (
    secret_id        INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    project_id       INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id   INTEGER REFERENCES environments(id) ON DELETE CASCADE,
    key              TEXT NOT NULL,
    scope            TEXT NOT NULL CHECK (scope IN ('global', 'service')),
    service          TEXT,
    encrypted_value  BLOB NOT NULL,
    created_by       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    deleted_at       INTEGER,
    PRIMARY KEY (secret_id, version)
) STRICT;
INSERT INTO secret_versions (secret_id, version, project_id, environment_id, key, scope, service,
        encrypted_value, created_by, created_at)
    SELECT id, version, project_id, environment_id, key, scope, service, encrypted_value,
        updated_by, updated_at FROM secrets;
CREATE INDEX secret_versions_project ON secret_versions(project_id);

-- What a successful deployment put on the server (one row per successful deployment of an
-- agent that reports releases). `services` is JSON: [{name, image, image_id, repo_digest?,
-- config_hash}], ordered by name. The secret versions it used are its deployment's
-- `deployment_secrets` rows.
CREATE TABLE releases (
    deployment_id   INTEGER PRIMARY KEY REFERENCES deployments(id) ON DELETE CASCADE,
    environment_id  INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    agent_id        INTEGER REFERENCES agents(id) ON DELETE SET NULL,
    agent_name      TEXT NOT NULL,
    commit_sha      TEXT,
    compose_hash    TEXT NOT NULL,
    services        TEXT NOT NULL,
    created_at      INTEGER NOT NULL
) STRICT;
CREATE INDEX releases_environment ON releases(environment_id, deployment_id);

-- A redeploy of a release names the deployment whose release it restores; an automatic
-- rollback also names the failed deployment it answers.
ALTER TABLE deployments ADD COLUMN redeploy_of INTEGER REFERENCES deployments(id) ON DELETE SET NULL;
ALTER TABLE deployments ADD COLUMN rollback_of INTEGER REFERENCES deployments(id) ON DELETE SET NULL;

ALTER TABLE environments ADD COLUMN auto_rollback INTEGER NOT NULL DEFAULT 0 CHECK (auto_rollback IN (0, 1));

-- The capabilities the agent offered in its last HELLO, comma-separated.
ALTER TABLE agents ADD COLUMN capabilities TEXT NOT NULL DEFAULT '';

-- What runs in each environment, as its agent last reported it (RUNTIME), and the drift from
-- the last successful release: `containers` JSON as reported, `drift` JSON
-- [{service, kind, detail}] or NULL when what runs matches (or there is no release to compare).
CREATE TABLE environment_runtime (
    environment_id  INTEGER PRIMARY KEY REFERENCES environments(id) ON DELETE CASCADE,
    agent_id        INTEGER REFERENCES agents(id) ON DELETE SET NULL,
    reported_at     INTEGER NOT NULL,
    containers      TEXT NOT NULL,
    truncated       INTEGER NOT NULL DEFAULT 0,
    drift           TEXT,
    drift_since     INTEGER
) STRICT;
