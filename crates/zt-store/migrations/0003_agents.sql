-- zt datastore, version 3: attested node agents.

CREATE TABLE agents (
    spiffe_id    TEXT PRIMARY KEY,
    serial       TEXT NOT NULL,      -- hex serial of the agent's current SVID: older ones are refused
    not_after    BIGINT NOT NULL,
    selectors    TEXT NOT NULL,      -- JSON array of "type:value", what attestation proved
    attested_at  BIGINT NOT NULL,
    renewed_at   BIGINT NOT NULL,
    banned       BIGINT NOT NULL     -- 1: may not attest again
);
