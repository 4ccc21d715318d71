-- Stagely schema v19: OpenID Connect identities (issue 16).
--
-- A person signed in through an [[oidc]] provider is bound to the provider's (issuer, subject)
-- pair, never to an e-mail or a name: the same e-mail under another `sub` is another identity.
-- `provider` is the config entry's name (for display and the oidc:<name> project-role source);
-- `email` is the last verified e-mail the provider sent, for display only.

CREATE TABLE oidc_identities (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    provider        TEXT NOT NULL,
    issuer          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    email           TEXT,
    created_at      INTEGER NOT NULL,
    last_sign_in_at INTEGER NOT NULL,
    UNIQUE (issuer, subject)
) STRICT;
CREATE INDEX oidc_identities_user ON oidc_identities(user_id);
