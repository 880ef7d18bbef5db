-- zt datastore, version 11: the clients that exchanged a session's tokens
-- (RFC 8693: a gateway, a service calling on a person's behalf). They hold
-- tokens of the session as much as the client it signed in to, so a session
-- that ends is announced to them too (back-channel logout).

CREATE TABLE session_exchanges (
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    client_id   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (session_id, client_id)
);
