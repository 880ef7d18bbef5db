-- zt datastore, version 1: portable SQL for SQLite and PostgreSQL, where {serial}
-- stands for the auto-incrementing key type of each.

CREATE TABLE entries (
    id          TEXT PRIMARY KEY,
    spiffe_id   TEXT NOT NULL,
    parent_id   TEXT NOT NULL,
    selectors   TEXT NOT NULL,      -- sorted "type:value" lines: part of the uniqueness key
    spec        TEXT NOT NULL,      -- the whole EntrySpec as JSON
    revision    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (spiffe_id, parent_id, selectors)
);
CREATE INDEX entries_by_parent ON entries (parent_id);

CREATE TABLE join_tokens (
    token_sha256 TEXT PRIMARY KEY,  -- never the token itself
    spiffe_id    TEXT,              -- the agent ID to give, if fixed at creation
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);

-- Every change, in order; servers follow it to update caches and agents.
CREATE TABLE changes (
    seq         {serial} PRIMARY KEY,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    at          BIGINT NOT NULL
);
