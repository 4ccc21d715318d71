-- Stagely schema v4: an invitation remembers the user who made it, so it can be capped by the
-- inviter's *current* role and die when the inviter is disabled (issue 11).
--
-- NULL: made without a person (the setup link; an invite through a CLI-made token, which has no
-- owner). Existing invites are bound to their inviter through the actor they recorded:
-- `user:<name>`, or `user:<name> (token <token name>)` when made with that person's API token;
-- one whose inviter no longer exists by that name stays NULL and keeps its role, as before.
ALTER TABLE signup_links ADD COLUMN created_by_user INTEGER REFERENCES users(id) ON DELETE SET NULL;

UPDATE signup_links SET created_by_user = (
    SELECT u.id FROM users u
    WHERE signup_links.created_by = 'user:' || u.username
       OR substr(signup_links.created_by, 1, length(u.username) + 13) = 'user:' || u.username || ' (token '
)
WHERE kind = 'invite' AND created_by LIKE 'user:%';
