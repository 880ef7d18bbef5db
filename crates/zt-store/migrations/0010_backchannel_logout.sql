-- zt datastore, version 10: OpenID Connect Back-Channel Logout 1.0. A client
-- may register the URI where zt server's OpenID Provider posts a logout token
-- when a session it holds tokens from ends. Each notice is claimed once, in
-- `backchannel_logouts`, by the server that sends it: of several replicas
-- following the change feed, only one posts it.

ALTER TABLE oauth_clients ADD COLUMN backchannel_logout_uri TEXT;
ALTER TABLE oauth_clients ADD COLUMN backchannel_logout_session_required BIGINT NOT NULL DEFAULT 0;

CREATE TABLE backchannel_logouts (
    notice      TEXT PRIMARY KEY,   -- 'session SESSION CLIENT' or 'family FAMILY'
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    client_id   TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE INDEX backchannel_logouts_by_session ON backchannel_logouts (session_id)
