-- Portgroups: ports of a node bonded together. Deleted with their node;
-- one with member ports (ports.portgroup_uuid) is not deleted.
CREATE TABLE portgroups (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT UNIQUE,
    node_uuid TEXT NOT NULL REFERENCES nodes (uuid) ON DELETE CASCADE,
    address TEXT UNIQUE,
    mode TEXT,
    properties TEXT NOT NULL DEFAULT '{}',
    standalone_ports_supported BOOLEAN NOT NULL DEFAULT TRUE,
    physical_network TEXT,
    category TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    internal_info TEXT NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ
);
CREATE INDEX portgroups_node_uuid ON portgroups (node_uuid);
CREATE INDEX ports_portgroup_uuid ON ports (portgroup_uuid);
