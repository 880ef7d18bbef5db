-- zt datastore, version 12: device trust. Enrollment tokens are one-time and
-- short-lived, stored only as SHA-256. A device holds one key (in a TPM or in
-- software) for life: its certificates are renewed by proving possession of
-- it. Its last accepted report (sequence number, facts) and its tier are kept
-- here; every tier change and every refused report is a device event.

CREATE TABLE device_tokens (
    token_sha256  TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,       -- the person the device is issued to
    approval      BIGINT NOT NULL,     -- 1: a device enrolled with it waits for zt device approve
    test_mode     BIGINT NOT NULL,     -- 1: the device may report facts from an override file (tests only)
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT
);

CREATE TABLE devices (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    status           TEXT NOT NULL,    -- pending | active | revoked
    key_type         TEXT NOT NULL,    -- tpm | software
    public_key       TEXT NOT NULL,    -- SubjectPublicKeyInfo, DER, standard base64
    hardware         TEXT NOT NULL,    -- JSON object: host name, model, architecture, CPU
    test_mode        BIGINT NOT NULL,
    enrolled_at      BIGINT NOT NULL,
    last_seen        BIGINT,           -- the last accepted report, Unix seconds
    report_seq       BIGINT NOT NULL,  -- its sequence number: a report must carry a higher one
    facts            TEXT NOT NULL,    -- JSON: the facts of that report
    tier             TEXT NOT NULL,
    tier_reasons     TEXT NOT NULL,    -- JSON array of strings
    tier_changed_at  BIGINT NOT NULL,
    cert_serial      TEXT,             -- the last certificate issued
    cert_not_after   BIGINT
);

CREATE TABLE device_events (
    seq        {serial} PRIMARY KEY,
    device_id  TEXT NOT NULL,
    at_ms      BIGINT NOT NULL,
    kind       TEXT NOT NULL,          -- enrolled | approved | revoked | tier | refused | certificate
    detail     TEXT NOT NULL           -- JSON
);
CREATE INDEX device_events_by_device ON device_events (device_id, seq)
