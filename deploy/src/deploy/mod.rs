//! Deploy interfaces: `fake`, `ramdisk`, `direct` (the agent writes the
//! image) and `iscsi` (the conductor writes it into the ramdisk's target).
//!
//! A deploy drives the node's other interfaces (boot the ramdisk, reboot
//! into the instance) through the [`crate::driver::Driver`] it is given.

pub mod direct;
pub mod fake;
pub mod iscsi;
pub mod ramdisk;

use ferric_common::model::Node;
use serde_json::Value;

/// How the instance boots, as Ironic's `get_boot_option`: what the deploy
/// interface recorded (`driver_internal_info.boot_option`: `ramdisk` for
/// the ramdisk deploy), else `instance_info.capabilities.boot_option`
/// (an object or Ironic's `"k1:v1,k2:v2"` string), else `local`.
pub fn boot_option(node: &Node) -> String {
    if let Some(s) = node.driver_internal_info.get("boot_option").and_then(Value::as_str) {
        return s.to_string();
    }
    capability(&node.instance_info, "boot_option").unwrap_or_else(|| "local".into())
}

/// A non-blank string field of `obj` (instance_info, a request body),
/// trimmed.
pub fn text(obj: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(String::from)
}

/// A capability from `capabilities` in `obj` (object or `"k:v,k:v"`).
pub fn capability(obj: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    match obj.get("capabilities")? {
        Value::Object(m) => m.get(key).and_then(|v| v.as_str().map(String::from).or_else(|| Some(v.to_string()))),
        Value::String(s) => {
            // Ironic also stores them as a JSON string of an object
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(s) {
                return m.get(key).and_then(Value::as_str).map(String::from);
            }
            s.split(',')
                .filter_map(|kv| kv.split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_common::states::ProvisionState;
    use serde_json::json;

    #[test]
    fn boot_option_precedence() {
        let mut n = Node::new(uuid::Uuid::new_v4(), "redfish", ProvisionState::Available);
        assert_eq!(boot_option(&n), "local");
        n.instance_info.insert("capabilities".into(), json!("boot_mode:uefi,boot_option:ramdisk"));
        assert_eq!(boot_option(&n), "ramdisk");
        n.instance_info.insert("capabilities".into(), json!({"boot_option": "netboot"}));
        assert_eq!(boot_option(&n), "netboot");
        n.instance_info.insert("capabilities".into(), json!("{\"boot_option\": \"local\"}"));
        assert_eq!(boot_option(&n), "local");
        n.driver_internal_info.insert("boot_option".into(), json!("ramdisk"));
        assert_eq!(boot_option(&n), "ramdisk");
    }
}
