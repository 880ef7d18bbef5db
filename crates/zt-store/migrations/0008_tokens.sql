-- zt datastore, version 8: what zt server's OpenID Provider issues. A session
-- now records how the person signed in (auth_time, amr, acr, source address)
-- and the hash of its browser cookie; authorization codes and refresh tokens
-- are stored only as SHA-256 hashes of 256 random bits; an access token
-- revoked before its expiry is remembered by `jti` until then. A password
-- (argon2id PHC string) is an optional, weaker factor, off unless enabled.

ALTER TABLE users ADD COLUMN password_hash TEXT;

ALTER TABLE sessions ADD COLUMN secret_sha256 TEXT;
ALTER TABLE sessions ADD COLUMN auth_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN amr TEXT NOT NULL DEFAULT '[]';
ALTER TABLE sessions ADD COLUMN acr TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN source_ip TEXT NOT NULL DEFAULT '';

CREATE UNIQUE INDEX sessions_by_secret ON sessions (secret_sha256);

ALTER TABLE refresh_families ADD COLUMN scope TEXT NOT NULL DEFAULT '';

CREATE TABLE authorization_codes (
    code_sha256     TEXT PRIMARY KEY,
    client_id       TEXT NOT NULL,
    session_id      TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    redirect_uri    TEXT NOT NULL,
    code_challenge  TEXT NOT NULL,     -- S256 only
    scope           TEXT NOT NULL,
    nonce           TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT,
    family_id       TEXT               -- what redeeming it issued: revoked if it comes back
);

CREATE INDEX authorization_codes_by_session ON authorization_codes (session_id);

CREATE TABLE refresh_tokens (
    token_sha256  TEXT PRIMARY KEY,
    family_id     TEXT NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    used_at       BIGINT,
    retries       BIGINT NOT NULL DEFAULT 0   -- redemptions inside the concurrent-retry grace
);

CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);

CREATE TABLE revoked_access_tokens (
    jti         TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);
