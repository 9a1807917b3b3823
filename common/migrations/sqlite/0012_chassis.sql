-- Chassis: racks or enclosures nodes name (nodes.chassis_uuid). One that
-- nodes name is not deleted.
CREATE TABLE chassis (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    description TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT
);
CREATE INDEX nodes_chassis_uuid ON nodes (chassis_uuid);
