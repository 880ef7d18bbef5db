-- zt datastore, version 4: revocations. A serial revokes one SVID; a SPIFFE ID
-- revokes every SVID of that ID issued before `issued_before`. Rows are kept
-- until `expires_at`, when every SVID they could match has expired anyway.

CREATE TABLE revocations (
    id             TEXT PRIMARY KEY,   -- "serial:<hex>" or "id:<spiffe id>"
    serial         TEXT,
    spiffe_id      TEXT,
    issued_before  BIGINT,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT NOT NULL,
    reason         TEXT NOT NULL
);
