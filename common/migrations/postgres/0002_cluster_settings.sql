-- Settings the whole cluster shares, written once at the cluster's first
-- start (the agent-token secret when none is configured, its fingerprint).
CREATE TABLE cluster_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
