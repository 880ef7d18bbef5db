-- zt datastore, version 7: people. Users (keyed by `sub`, a random 128-bit
-- hex string that never changes and is never the e-mail), groups, WebAuthn
-- credentials, sign-in sessions and their refresh-token families, enrollment
-- invites and OAuth clients. Secrets are stored only as hashes: invites as
-- SHA-256 (they are 256 random bits), client secrets as argon2id PHC strings.
-- Times are Unix seconds; a NULL `*_at` means "not (yet)".

CREATE TABLE users (
    sub           TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    email         TEXT NOT NULL,
    disabled_at   BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE user_groups (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_name  TEXT NOT NULL REFERENCES user_groups (name) ON DELETE CASCADE,
    sub         TEXT NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (group_name, sub)
);

CREATE INDEX group_members_by_sub ON group_members (sub);

CREATE TABLE credentials (
    id               TEXT PRIMARY KEY,   -- the WebAuthn credential ID, base64url
    sub              TEXT NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    public_key       TEXT NOT NULL,      -- the stored credential (COSE key and state), JSON
    aaguid           TEXT NOT NULL,
    sign_count       BIGINT NOT NULL,
    backup_eligible  BIGINT NOT NULL,    -- 0 or 1
    backed_up        BIGINT NOT NULL,    -- 0 or 1
    created_at       BIGINT NOT NULL,
    last_used_at     BIGINT,
    revoked_at       BIGINT
);

CREATE INDEX credentials_by_sub ON credentials (sub);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    sub            TEXT NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,    -- absolute: no refresh outlives it
    revoked_at     BIGINT,
    revoke_reason  TEXT
);

CREATE INDEX sessions_by_sub ON sessions (sub);

CREATE TABLE refresh_families (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    client_id   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    reason      TEXT
);

CREATE INDEX refresh_families_by_session ON refresh_families (session_id);

CREATE TABLE invites (
    token_sha256  TEXT PRIMARY KEY,
    sub           TEXT NOT NULL REFERENCES users (sub) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT
);

CREATE TABLE oauth_clients (
    client_id      TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,    -- 'secret', 'private_key_jwt' or 'public'
    secret_hash    TEXT,             -- argon2id PHC string, kind 'secret' only
    jwks           TEXT,             -- JWK Set (public keys), kind 'private_key_jwt' only
    redirect_uris  TEXT NOT NULL,    -- JSON array, each stored verbatim for exact matching
    grant_types    TEXT NOT NULL,    -- JSON array of RFC grant type names
    created_at     BIGINT NOT NULL
);
