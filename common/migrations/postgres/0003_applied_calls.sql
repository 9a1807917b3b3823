-- The API's calls to conductors that changed something, by the id the API
-- gives each call: written in the same transaction as the change, so a
-- call the API retries (its reply was lost, its conductor died after
-- applying it) is answered as applied instead of being applied twice or
-- refused. Kept for conductor.applied_call_retention_secs.
CREATE TABLE applied_calls (
    id TEXT PRIMARY KEY,
    node_uuid TEXT NOT NULL,
    kind TEXT NOT NULL,
    conductor TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX applied_calls_created ON applied_calls (created_at);
