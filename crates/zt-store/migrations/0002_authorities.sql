-- zt datastore, version 2: the signing authorities of the trust domain. Each
-- holds an X.509 CA certificate and key and a JWT-SVID signing key, rotated
-- together. At most one is prepared (not yet activated) at a time.

CREATE TABLE authorities (
    id            TEXT PRIMARY KEY,
    ca_cert_pem   TEXT NOT NULL,
    ca_key_pem    TEXT NOT NULL,     -- PKCS#8; protected by the database's own access control
    jwt_key_pem   TEXT NOT NULL,
    not_before    BIGINT NOT NULL,
    not_after     BIGINT NOT NULL,
    activated_at  BIGINT,            -- NULL while prepared
    activation    BIGINT,            -- 1, 2, 3…: the order of activations (times can tie)
    created_at    BIGINT NOT NULL
);
