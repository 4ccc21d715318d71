-- Notifications (issue 13): channels per project and an outbox of deliveries.
-- A channel's target (its URL, or its SMTP settings with the password) is age ciphertext, like
-- a secret value; `target_hint` is what may be shown (a URL's host, an SMTP host and recipients).
CREATE TABLE notify_channels (
    id                 INTEGER PRIMARY KEY,
    project_id         INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind               TEXT NOT NULL CHECK (kind IN ('webhook', 'slack', 'discord', 'email')),
    name               TEXT NOT NULL,
    -- Comma-separated event names (deploy.succeeded, deploy.failed, agent.offline, webhook.rejected).
    events             TEXT NOT NULL,
    offline_minutes    REAL NOT NULL DEFAULT 5,
    target_hint        TEXT NOT NULL,
    encrypted_target   BLOB NOT NULL,
    -- Generic webhooks only: the HMAC key of X-Stagely-Signature.
    encrypted_signing  BLOB,
    created_by         TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    UNIQUE (project_id, name)
) STRICT;

-- One row per (channel, event, subject): the UNIQUE key makes a repeated event or a restart
-- enqueue nothing twice. Pending rows are retried by the worker until sent or failed.
CREATE TABLE notify_outbox (
    id               INTEGER PRIMARY KEY,
    channel_id       INTEGER NOT NULL REFERENCES notify_channels(id) ON DELETE CASCADE,
    event            TEXT NOT NULL,
    subject          TEXT NOT NULL,
    -- The notice as JSON (already masked; never a secret value).
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (channel_id, event, subject)
) STRICT;
CREATE INDEX notify_outbox_due ON notify_outbox(next_attempt_at) WHERE status = 'pending';
CREATE INDEX notify_outbox_channel ON notify_outbox(channel_id, id);
