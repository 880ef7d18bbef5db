-- zt datastore, version 9: the device authorization grant (RFC 8628). A
-- device code is 256 random bits, stored only as SHA-256; the user code a
-- person types is short and stored as typed (normalized, without its dash)
-- so that the verification page can find it. A request waits until a person
-- signed in approves it (session_id) or denies it; a device polls no faster
-- than interval_secs, which grows when it does.

CREATE TABLE device_codes (
    device_code_sha256  TEXT PRIMARY KEY,
    user_code           TEXT NOT NULL UNIQUE,
    client_id           TEXT NOT NULL,
    scope               TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    interval_secs       BIGINT NOT NULL,
    last_poll_at        BIGINT,
    session_id          TEXT REFERENCES sessions (id) ON DELETE CASCADE,
    denied_at           BIGINT,
    redeemed_at         BIGINT
);
