-- Stagely schema v12: push webhooks (issue 13).
--
-- An environment opts in to deploys on a push to its branch (`deploy_on_push`) and/or on a tag
-- matching a glob (`deploy_on_tag`, e.g. `v*`).
ALTER TABLE environments ADD COLUMN deploy_on_push INTEGER NOT NULL DEFAULT 0
    CHECK (deploy_on_push IN (0, 1));
ALTER TABLE environments ADD COLUMN deploy_on_tag TEXT
    CHECK (deploy_on_tag IS NULL OR length(deploy_on_tag) BETWEEN 1 AND 100);

-- One webhook secret per project, encrypted with the vault like every secret value (the key
-- rotation re-encrypts it too).
CREATE TABLE webhooks (
    project_id       INTEGER PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    encrypted_secret BLOB NOT NULL,
    created_at       INTEGER NOT NULL,
    created_by       TEXT NOT NULL
);

-- What each delivery came to. Never its body or a header's value. `delivery_id` is set only
-- once the signature verified (so nobody can pre-poison ids); the unique index makes a
-- redelivery lose the race to the first one. Kept to the last `hooks.keep_deliveries` rows
-- per project, pruned on insert.
CREATE TABLE webhook_deliveries (
    id             INTEGER PRIMARY KEY,
    project_id     INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    provider       TEXT NOT NULL CHECK (provider IN ('github', 'gitlab', 'gitea')),
    delivery_id    TEXT,
    event          TEXT NOT NULL,
    result         TEXT NOT NULL
        CHECK (result IN ('processing', 'deployed', 'ignored', 'duplicate', 'rejected', 'error')),
    detail         TEXT NOT NULL DEFAULT '',
    deployment_ids TEXT NOT NULL DEFAULT '[]',
    at             INTEGER NOT NULL
);
CREATE UNIQUE INDEX webhook_deliveries_once
    ON webhook_deliveries (project_id, provider, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (project_id, id);
