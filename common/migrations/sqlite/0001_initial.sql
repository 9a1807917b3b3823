-- Ferric schema v1 (SQLite). Keep in step with ../postgres/0001_initial.sql:
-- same tables, columns, constraints and indexes; JSON is stored as text in both.
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT UNIQUE,
    driver TEXT NOT NULL,
    bios_interface TEXT, boot_interface TEXT, console_interface TEXT, deploy_interface TEXT,
    firmware_interface TEXT, inspect_interface TEXT, management_interface TEXT, network_interface TEXT,
    power_interface TEXT, raid_interface TEXT, rescue_interface TEXT, storage_interface TEXT,
    vendor_interface TEXT,
    provision_state TEXT NOT NULL,
    target_provision_state TEXT,
    provision_updated_at TEXT,
    power_state TEXT,
    target_power_state TEXT,
    maintenance BOOLEAN NOT NULL DEFAULT FALSE,
    maintenance_reason TEXT,
    fault TEXT,
    reservation TEXT,
    conductor_affinity TEXT,
    conductor_group TEXT NOT NULL DEFAULT '',
    ring_partition BIGINT NOT NULL,
    driver_info TEXT NOT NULL DEFAULT '{}',
    driver_internal_info TEXT NOT NULL DEFAULT '{}',
    instance_info TEXT NOT NULL DEFAULT '{}',
    properties TEXT NOT NULL DEFAULT '{}',
    extra TEXT NOT NULL DEFAULT '{}',
    network_data TEXT NOT NULL DEFAULT '{}',
    instance_uuid TEXT UNIQUE,
    instance_name TEXT,
    last_error TEXT,
    resource_class TEXT,
    owner TEXT,
    lessee TEXT,
    description TEXT,
    shard TEXT,
    parent_node TEXT,
    chassis_uuid TEXT,
    automated_clean BOOLEAN,
    protected BOOLEAN NOT NULL DEFAULT FALSE,
    protected_reason TEXT,
    retired BOOLEAN NOT NULL DEFAULT FALSE,
    retired_reason TEXT,
    disable_power_off BOOLEAN NOT NULL DEFAULT FALSE,
    console_enabled BOOLEAN NOT NULL DEFAULT FALSE,
    boot_mode TEXT,
    secure_boot BOOLEAN,
    traits TEXT NOT NULL DEFAULT '[]',
    deploy_step TEXT NOT NULL DEFAULT '{}',
    clean_step TEXT NOT NULL DEFAULT '{}',
    service_step TEXT NOT NULL DEFAULT '{}',
    raid_config TEXT NOT NULL DEFAULT '{}',
    target_raid_config TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT
);
CREATE INDEX nodes_ring_partition ON nodes (conductor_group, ring_partition);
CREATE INDEX nodes_reservation ON nodes (reservation);
CREATE INDEX nodes_provision_state ON nodes (provision_state);

CREATE TABLE ports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL UNIQUE,
    node_uuid TEXT NOT NULL REFERENCES nodes (uuid) ON DELETE CASCADE,
    name TEXT UNIQUE,
    pxe_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    local_link_connection TEXT NOT NULL DEFAULT '{}',
    physical_network TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    internal_info TEXT NOT NULL DEFAULT '{}',
    is_smartnic BOOLEAN NOT NULL DEFAULT FALSE,
    portgroup_uuid TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT
);
CREATE INDEX ports_node_uuid ON ports (node_uuid);

-- Every state change and step of a node, in order: the operation log that
-- resumption and the "acted on by two conductors" checks read.
CREATE TABLE node_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_uuid TEXT NOT NULL,
    conductor TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX node_history_node ON node_history (node_uuid, id);
