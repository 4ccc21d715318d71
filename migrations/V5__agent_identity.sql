-- Stagely schema v5: each agent's age identity is pinned, and a token used from two places is
-- recorded (issue 11, the wire).
--
-- recipient: the agent's age X25519 recipient (age1…, public), pinned at its first connection
-- that offers one; every DEPLOY's secrets are sealed to it. NULL: not pinned yet (a new agent,
-- one whose pin an admin reset, or an agent too old to offer one: it is sent no DEPLOY).
-- identity_mismatch_*: the last HELLO refused for offering another recipient (or none).
-- second_connection_*: the last time the token connected while it was already connected, or
-- from another address or host right after a connection ended.
-- last_address: where the last accepted connection came from.
ALTER TABLE agents ADD COLUMN recipient TEXT;
ALTER TABLE agents ADD COLUMN recipient_pinned_at INTEGER;
ALTER TABLE agents ADD COLUMN identity_mismatch_at INTEGER;
ALTER TABLE agents ADD COLUMN identity_mismatch TEXT;
ALTER TABLE agents ADD COLUMN second_connection_at INTEGER;
ALTER TABLE agents ADD COLUMN second_connection TEXT;
ALTER TABLE agents ADD COLUMN last_address TEXT;
