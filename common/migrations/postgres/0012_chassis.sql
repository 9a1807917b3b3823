-- Chassis: racks or enclosures nodes name (nodes.chassis_uuid). One that
-- nodes name is not deleted.
CREATE TABLE chassis (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    description TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ
);
CREATE INDEX nodes_chassis_uuid ON nodes (chassis_uuid);
