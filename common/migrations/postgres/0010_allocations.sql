-- Allocations (Ironic's allocation API, with which metalsmith reserves a
-- node): a request for a node of a resource class, processed by a
-- conductor, which marks the node it picks as the allocation's
-- (nodes.allocation_uuid and nodes.instance_uuid = the allocation's uuid)
-- in the same transaction as it activates the allocation. One allocation
-- per node; deleted with its node.
CREATE TABLE allocations (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT UNIQUE,
    node_uuid TEXT UNIQUE REFERENCES nodes (uuid) ON DELETE CASCADE,
    state TEXT NOT NULL,
    last_error TEXT,
    resource_class TEXT,
    traits TEXT NOT NULL DEFAULT '[]',
    candidate_nodes TEXT NOT NULL DEFAULT '[]',
    extra TEXT NOT NULL DEFAULT '{}',
    owner TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ
);
-- conductors look for the allocations still being processed every pass
CREATE INDEX allocations_state ON allocations (state);
ALTER TABLE nodes ADD COLUMN allocation_uuid TEXT;
CREATE UNIQUE INDEX nodes_allocation_uuid ON nodes (allocation_uuid);
