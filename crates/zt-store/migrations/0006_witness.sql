-- zt datastore, version 6: zt server as the witness of shipped decision logs.
-- One witness key per datastore (every replica cosigns with it), created once:
-- the first server to insert row 1 decides it.
CREATE TABLE witness_keys (
    id          BIGINT PRIMARY KEY,  -- always 1
    signer_key  TEXT NOT NULL,       -- a note signer key of type 0x04; protected by the database's own access control
    created_at  BIGINT NOT NULL
);

-- Per source (a workload's SPIFFE ID): the log verifier key pinned on first
-- use, and the largest checkpoint size cosigned, which never goes back.
CREATE TABLE witnessed_logs (
    source          TEXT PRIMARY KEY,
    verifier_key    TEXT NOT NULL,
    pinned_at       BIGINT NOT NULL,
    witnessed_size  BIGINT NOT NULL,
    witnessed_at    BIGINT
);
