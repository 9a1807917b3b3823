//! The persisted resources: nodes, ports, portgroups, chassis,
//! allocations and the conductors' view of themselves. These are the
//! database rows; the REST rendering (links, microversion-gated fields,
//! secret masking) lives in the API crate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::ids::{ConductorId, LockHolder};
use crate::states::ProvisionState;

/// JSON object columns (driver_info, properties, ...). Stored as JSON text
/// in both databases so SQLite and PostgreSQL behave the same.
pub type JsonObject = Map<String, Value>;

/// The interface fields a node row carries (`<name>_interface`).
pub const NODE_INTERFACES: [&str; 13] = [
    "bios",
    "boot",
    "console",
    "deploy",
    "firmware",
    "inspect",
    "management",
    "network",
    "power",
    "raid",
    "rescue",
    "storage",
    "vendor",
];

/// A bare-metal machine. Its `Debug` output masks secrets (see
/// [`Node::masked`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub uuid: Uuid,
    pub name: Option<String>,
    pub driver: String,
    /// `<iface>_interface` values, one per entry of [`NODE_INTERFACES`].
    pub interfaces: Interfaces,
    pub provision_state: ProvisionState,
    pub target_provision_state: Option<ProvisionState>,
    pub provision_updated_at: Option<DateTime<Utc>>,
    pub power_state: Option<String>,
    pub target_power_state: Option<String>,
    pub maintenance: bool,
    pub maintenance_reason: Option<String>,
    pub fault: Option<String>,
    /// The node lock: the holder's incarnation, or None.
    pub reservation: Option<LockHolder>,
    /// The conductor whose HTTP root holds the node's boot artefacts.
    pub conductor_affinity: Option<ConductorId>,
    pub conductor_group: String,
    /// SHA-256 of the UUID bytes reduced to the ring's partition space;
    /// indexed so "my nodes" is an index scan. As stored: `Db::create_node`
    /// computes it with the exponent the database records (0 in a node not
    /// yet created), and only a recompute changes it (`crate::partitions`).
    pub ring_partition: i64,
    pub driver_info: JsonObject,
    pub driver_internal_info: JsonObject,
    pub instance_info: JsonObject,
    pub properties: JsonObject,
    pub extra: JsonObject,
    pub network_data: JsonObject,
    pub instance_uuid: Option<String>,
    /// The allocation that reserved the node (its UUID is then the node's
    /// `instance_uuid` too); set and cleared with the allocation, never by
    /// a client.
    #[serde(default)]
    pub allocation_uuid: Option<String>,
    pub instance_name: Option<String>,
    pub last_error: Option<String>,
    pub resource_class: Option<String>,
    pub owner: Option<String>,
    pub lessee: Option<String>,
    pub description: Option<String>,
    pub shard: Option<String>,
    pub parent_node: Option<String>,
    pub chassis_uuid: Option<String>,
    pub automated_clean: Option<bool>,
    pub protected: bool,
    pub protected_reason: Option<String>,
    pub retired: bool,
    pub retired_reason: Option<String>,
    pub disable_power_off: bool,
    pub console_enabled: bool,
    pub boot_mode: Option<String>,
    pub secure_boot: Option<bool>,
    pub traits: Vec<String>,
    /// The step a running operation is in (deploy, clean, service), as
    /// Ironic shows it: `{}` when none.
    pub deploy_step: JsonObject,
    pub clean_step: JsonObject,
    pub service_step: JsonObject,
    pub raid_config: JsonObject,
    pub target_raid_config: JsonObject,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Node {
    /// A copy with the secrets of `driver_info` (BMC passwords),
    /// `instance_info` (image URLs, config drive) and
    /// `driver_internal_info` (agent session) replaced by `******`: what
    /// leaves a conductor in a gRPC reply, and what `Debug` prints.
    pub fn masked(&self) -> Node {
        use crate::secrets::{DRIVER_INFO_SECRET_KEYS, INSTANCE_INFO_SECRET_KEYS, mask};
        let mut n = self.clone();
        n.driver_info = mask(&self.driver_info, DRIVER_INFO_SECRET_KEYS);
        n.instance_info = mask(&self.instance_info, INSTANCE_INFO_SECRET_KEYS);
        n.driver_internal_info = mask(&self.driver_internal_info, &[]);
        n
    }
}

impl std::fmt::Debug for Node {
    /// The masked node as JSON: a node logged with `{:?}` shows no secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self.masked()).map_err(|_| std::fmt::Error)?;
        write!(f, "Node {v}")
    }
}

/// The interface implementations of a node; `None` means "the hardware
/// type's default", resolved when the node is created or its driver changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interfaces {
    pub bios: Option<String>,
    pub boot: Option<String>,
    pub console: Option<String>,
    pub deploy: Option<String>,
    pub firmware: Option<String>,
    pub inspect: Option<String>,
    pub management: Option<String>,
    pub network: Option<String>,
    pub power: Option<String>,
    pub raid: Option<String>,
    pub rescue: Option<String>,
    pub storage: Option<String>,
    pub vendor: Option<String>,
}

impl Interfaces {
    pub fn get(&self, name: &str) -> Option<&Option<String>> {
        Some(match name {
            "bios" => &self.bios,
            "boot" => &self.boot,
            "console" => &self.console,
            "deploy" => &self.deploy,
            "firmware" => &self.firmware,
            "inspect" => &self.inspect,
            "management" => &self.management,
            "network" => &self.network,
            "power" => &self.power,
            "raid" => &self.raid,
            "rescue" => &self.rescue,
            "storage" => &self.storage,
            "vendor" => &self.vendor,
            _ => return None,
        })
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "bios" => &mut self.bios,
            "boot" => &mut self.boot,
            "console" => &mut self.console,
            "deploy" => &mut self.deploy,
            "firmware" => &mut self.firmware,
            "inspect" => &mut self.inspect,
            "management" => &mut self.management,
            "network" => &mut self.network,
            "power" => &mut self.power,
            "raid" => &mut self.raid,
            "rescue" => &mut self.rescue,
            "storage" => &mut self.storage,
            "vendor" => &mut self.vendor,
            _ => return None,
        })
    }
}

impl Node {
    /// A new node in `state` with every optional field empty.
    pub fn new(uuid: Uuid, driver: &str, state: ProvisionState) -> Node {
        Node {
            uuid,
            name: None,
            driver: driver.to_string(),
            interfaces: Interfaces::default(),
            provision_state: state,
            target_provision_state: None,
            provision_updated_at: None,
            power_state: None,
            target_power_state: None,
            maintenance: false,
            maintenance_reason: None,
            fault: None,
            reservation: None,
            conductor_affinity: None,
            conductor_group: String::new(),
            ring_partition: 0,
            driver_info: JsonObject::new(),
            driver_internal_info: JsonObject::new(),
            instance_info: JsonObject::new(),
            properties: JsonObject::new(),
            extra: JsonObject::new(),
            network_data: JsonObject::new(),
            instance_uuid: None,
            allocation_uuid: None,
            instance_name: None,
            last_error: None,
            resource_class: None,
            owner: None,
            lessee: None,
            description: None,
            shard: None,
            parent_node: None,
            chassis_uuid: None,
            automated_clean: None,
            protected: false,
            protected_reason: None,
            retired: false,
            retired_reason: None,
            disable_power_off: false,
            console_enabled: false,
            boot_mode: None,
            secure_boot: None,
            traits: Vec::new(),
            deploy_step: JsonObject::new(),
            clean_step: JsonObject::new(),
            service_step: JsonObject::new(),
            raid_config: JsonObject::new(),
            target_raid_config: JsonObject::new(),
            created_at: Utc::now(),
            updated_at: None,
        }
    }

    /// The hardware type the ring places this node by.
    pub fn hardware_type(&self) -> &str {
        &self.driver
    }

    /// The size of this node's JSON document, as it travels between the
    /// API and its conductor (`[api] max_node_document_bytes` bounds it);
    /// counted, not built.
    pub fn document_bytes(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        serde_json::to_writer(&mut count, self).expect("nodes serialise");
        count.0
    }

    /// Refuse this node when its document is larger than `limit` (`[api]
    /// max_node_document_bytes`).
    pub fn check_document_size(&self, limit: usize) -> Result<(), DocumentTooLarge> {
        DocumentTooLarge::check(self, self.document_bytes(), limit)
    }
}

/// A node whose JSON document would pass `[api] max_node_document_bytes`:
/// the client's error (413), never written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "Node {node} would be {bytes} bytes of JSON, more than the {limit} bytes api.max_node_document_bytes allows; \
     remove or shrink values of its extra, instance_info, properties or driver_info."
)]
pub struct DocumentTooLarge {
    /// `name (uuid)`, or the UUID of a node without a name.
    pub node: String,
    pub bytes: usize,
    pub limit: usize,
}

impl DocumentTooLarge {
    /// Refuse `node`, whose document is `bytes` long, when that is more than `limit`.
    pub fn check(node: &Node, bytes: usize, limit: usize) -> Result<(), DocumentTooLarge> {
        if bytes <= limit {
            return Ok(());
        }
        let node = match &node.name {
            Some(name) => format!("{name} ({})", node.uuid),
            None => node.uuid.to_string(),
        };
        Err(DocumentTooLarge { node, bytes, limit })
    }
}

/// A NIC of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub uuid: Uuid,
    /// Lower-case colon-separated MAC address; unique.
    pub address: String,
    pub node_uuid: Uuid,
    pub name: Option<String>,
    pub pxe_enabled: bool,
    pub local_link_connection: JsonObject,
    pub physical_network: Option<String>,
    pub extra: JsonObject,
    pub internal_info: JsonObject,
    pub is_smartnic: bool,
    pub portgroup_uuid: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Port {
    pub fn new(uuid: Uuid, address: &str, node_uuid: Uuid) -> Port {
        Port {
            uuid,
            address: address.to_string(),
            node_uuid,
            name: None,
            pxe_enabled: true,
            local_link_connection: JsonObject::new(),
            physical_network: None,
            extra: JsonObject::new(),
            internal_info: JsonObject::new(),
            is_smartnic: false,
            portgroup_uuid: None,
            created_at: Utc::now(),
            updated_at: None,
        }
    }
}

/// Where an allocation is: being processed, holding a node, or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocationState {
    Allocating,
    Active,
    Error,
}

impl AllocationState {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocationState::Allocating => "allocating",
            AllocationState::Active => "active",
            AllocationState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<AllocationState> {
        match s {
            "allocating" => Some(AllocationState::Allocating),
            "active" => Some(AllocationState::Active),
            "error" => Some(AllocationState::Error),
            _ => None,
        }
    }
}

/// A request for a node of a resource class (Ironic's allocation, what
/// metalsmith reserves a node with). A conductor picks a matching node and
/// marks it as the allocation's: the node's `instance_uuid` and
/// `allocation_uuid` become the allocation's UUID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub uuid: Uuid,
    /// Unique; metalsmith's hostname.
    pub name: Option<String>,
    /// The node it holds (`active`), or the node a backfill names.
    pub node_uuid: Option<Uuid>,
    pub state: AllocationState,
    pub last_error: Option<String>,
    pub resource_class: Option<String>,
    /// The node must have every one of these.
    pub traits: Vec<String>,
    /// The node must be one of these (UUIDs; empty: any).
    pub candidate_nodes: Vec<Uuid>,
    pub extra: JsonObject,
    /// The project it is for: only nodes it owns or leases match.
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Allocation {
    pub fn new(uuid: Uuid, resource_class: Option<String>) -> Allocation {
        Allocation {
            uuid,
            name: None,
            node_uuid: None,
            state: AllocationState::Allocating,
            last_error: None,
            resource_class,
            traits: Vec::new(),
            candidate_nodes: Vec::new(),
            extra: JsonObject::new(),
            owner: None,
            created_at: Utc::now(),
            updated_at: None,
        }
    }
}

/// Ports of a node bonded together (Ironic's portgroup).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Portgroup {
    pub uuid: Uuid,
    pub name: Option<String>,
    pub node_uuid: Uuid,
    /// Lower-case MAC address; unique when set.
    pub address: Option<String>,
    /// The bonding mode (`active-backup`, `802.3ad`, ...).
    pub mode: Option<String>,
    pub properties: JsonObject,
    pub standalone_ports_supported: bool,
    pub physical_network: Option<String>,
    pub category: Option<String>,
    pub extra: JsonObject,
    pub internal_info: JsonObject,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Portgroup {
    pub fn new(uuid: Uuid, node_uuid: Uuid) -> Portgroup {
        Portgroup {
            uuid,
            name: None,
            node_uuid,
            address: None,
            mode: None,
            properties: JsonObject::new(),
            standalone_ports_supported: true,
            physical_network: None,
            category: None,
            extra: JsonObject::new(),
            internal_info: JsonObject::new(),
            created_at: Utc::now(),
            updated_at: None,
        }
    }
}

/// A rack or enclosure nodes may name (`chassis_uuid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chassis {
    pub uuid: Uuid,
    pub description: Option<String>,
    pub extra: JsonObject,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Normalise a MAC address to lower-case `aa:bb:cc:dd:ee:ff`, or None if it
/// is not one.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit())) {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_bytes_is_the_length_of_the_json() {
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Enroll);
        n.extra.insert("k".into(), Value::String("é\"\n".repeat(100)));
        assert_eq!(n.document_bytes(), serde_json::to_string(&n).unwrap().len());
        let size = n.document_bytes();
        assert_eq!(n.check_document_size(size), Ok(()));
        let e = n.check_document_size(size - 1).unwrap_err();
        assert_eq!((e.bytes, e.limit), (size, size - 1));
        let text = e.to_string();
        assert!(text.contains(&n.uuid.to_string()) && text.contains("api.max_node_document_bytes"), "{text}");
    }

    #[test]
    fn mac_normalisation() {
        assert_eq!(normalize_mac("52:54:00:AB:cd:01").as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(normalize_mac("52-54-00-ab-cd-01").as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("52:54:00:ab:cd:zz"), None);
        assert_eq!(normalize_mac("525400abcd01"), None);
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_of_a_node_masks_its_secrets() {
        let mut n = Node::new(Uuid::new_v4(), "redfish", crate::states::ProvisionState::Available);
        n.driver_info = serde_json::from_value(serde_json::json!({
            "redfish_password": "bmc-pass-1", "redfish_username": "admin",
            "extra_bmcs": [{"password": "bmc-pass-2"}], "snmp_priv_key": "snmp-3"
        }))
        .unwrap();
        n.instance_info =
            serde_json::from_value(serde_json::json!({"image_url": "http://x/?temp_url_sig=sig-4"})).unwrap();
        n.driver_internal_info = serde_json::from_value(serde_json::json!({"agent_token_nonce": "nonce-5"})).unwrap();
        let shown = format!("{n:?}");
        for secret in ["bmc-pass-1", "bmc-pass-2", "snmp-3", "sig-4", "nonce-5"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("admin") && shown.contains(&n.uuid.to_string()), "{shown}");
        assert_eq!(n.masked().driver_info["redfish_password"], crate::secrets::MASK);
        assert_eq!(n.driver_info["redfish_password"], "bmc-pass-1", "masking copies");
    }
}
