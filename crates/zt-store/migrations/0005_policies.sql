-- zt datastore, version 5: authorization policy versions. Every `zt policy apply`
-- stores the whole set (its files, as JSON) as a new version; versions are never
-- changed or deleted, so any decision's policy version can be looked up.

CREATE TABLE policy_versions (
    version     BIGINT PRIMARY KEY,
    digest      TEXT NOT NULL,
    files       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
