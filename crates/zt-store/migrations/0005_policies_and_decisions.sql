-- zt datastore, version 5: authorization policy versions and shipped decisions.
-- Every `zt policy apply` stores the whole set (its files, as JSON) as a new
-- version; versions are never changed or deleted, so any decision's policy
-- version can be looked up.

CREATE TABLE policy_versions (
    version     BIGINT PRIMARY KEY,
    digest      TEXT NOT NULL,
    files       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Decision records shipped by proxies: each source (a workload's SPIFFE ID) is
-- one hash chain, stored only in order and only if every record continues it.
CREATE TABLE decisions (
    source   TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    hash     TEXT NOT NULL,
    time_ms  BIGINT NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (source, seq)
);
