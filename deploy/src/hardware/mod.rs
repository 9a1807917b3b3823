//! Hardware types and the factory of interface implementations.
//!
//! A hardware type only *lists* what it supports: for every
//! [`InterfaceKind`], a default implementation name and the names it
//! accepts ([`fake`], [`redfish`], [`ilo`]). The implementations are built
//! in one place, [`implementation`], by (kind, name): `redfish-virtual-media`
//! is written once in `boot::virtual_media` and shared by every hardware
//! type that offers it. A [`Registry`] builds each implementation its
//! enabled hardware types name exactly once and composes a node's
//! [`Driver`] from them.

pub mod fake;
pub mod ilo;
pub mod redfish;

use std::collections::BTreeMap;
use std::sync::Arc;

use ferric_common::model::Node;

use crate::bmc::redfish::Vendor;
use crate::driver::*;

/// What a hardware type offers for one interface kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Supported {
    pub default: &'static str,
    pub names: Vec<&'static str>,
}

impl Supported {
    pub fn new(default: &'static str, names: &[&'static str]) -> Supported {
        debug_assert!(names.contains(&default), "the default {default} must be among {names:?}");
        Supported { default, names: names.to_vec() }
    }
}

/// A hardware type: which implementation of each interface it supports and
/// which is the default.
#[derive(Debug, Clone)]
pub struct HardwareType {
    pub name: &'static str,
    pub interfaces: BTreeMap<InterfaceKind, Supported>,
}

impl HardwareType {
    /// `(default, names)` per kind name, as the API reports them.
    pub fn interface_table(&self) -> impl Iterator<Item = (&'static str, &Supported)> {
        self.interfaces.iter().map(|(k, s)| (k.as_str(), s))
    }
}

/// Every hardware type Ferric has.
pub const HARDWARE_TYPES: [&str; 3] = [fake::HARDWARE_TYPE, redfish::HARDWARE_TYPE, ilo::HARDWARE_TYPE];

fn hardware_type(name: &str) -> Option<HardwareType> {
    match name {
        fake::HARDWARE_TYPE => Some(fake::hardware_type()),
        redfish::HARDWARE_TYPE => Some(redfish::hardware_type()),
        ilo::HARDWARE_TYPE => Some(ilo::hardware_type()),
        _ => None,
    }
}

/// A built implementation of one interface kind.
#[derive(Clone)]
pub enum Implementation {
    Power(Arc<dyn PowerInterface>),
    Management(Arc<dyn ManagementInterface>),
    Boot(Arc<dyn BootInterface>),
    Deploy(Arc<dyn DeployInterface>),
    Vendor(Arc<dyn VendorInterface>),
    Generic(Arc<dyn GenericInterface>),
}

/// The implementation called `name` of interface `kind`, if there is one.
pub fn implementation(kind: InterfaceKind, name: &str) -> Option<Implementation> {
    use Implementation as I;
    use InterfaceKind as K;
    Some(match (kind, name) {
        (K::Power, "fake") => I::Power(Arc::new(crate::power::fake::FakePower)),
        (K::Power, "redfish") => I::Power(Arc::new(crate::power::redfish::RedfishPower::new(Vendor::Generic))),
        (K::Power, "ilo") => I::Power(Arc::new(crate::power::redfish::RedfishPower::new(Vendor::Hpe))),
        (K::Management, "fake") => I::Management(Arc::new(crate::management::fake::FakeManagement)),
        (K::Management, "redfish") => {
            I::Management(Arc::new(crate::management::redfish::RedfishManagement::new(Vendor::Generic)))
        }
        (K::Management, "ilo") => {
            I::Management(Arc::new(crate::management::redfish::RedfishManagement::new(Vendor::Hpe)))
        }
        (K::Boot, "fake") => I::Boot(Arc::new(crate::boot::fake::FakeBoot)),
        (K::Boot, crate::boot::virtual_media::REDFISH) => {
            I::Boot(Arc::new(crate::boot::virtual_media::VirtualMediaBoot::new(Vendor::Generic)))
        }
        (K::Boot, crate::boot::virtual_media::ILO) => {
            I::Boot(Arc::new(crate::boot::virtual_media::VirtualMediaBoot::new(Vendor::Hpe)))
        }
        (
            K::Boot,
            crate::boot::netboot::PXE
            | crate::boot::netboot::IPXE
            | crate::boot::netboot::ILO_PXE
            | crate::boot::netboot::ILO_IPXE,
        ) => {
            use crate::boot::netboot::{Flavor, NetBoot};
            let flavor = if name.ends_with("ipxe") { Flavor::Ipxe } else { Flavor::Pxe };
            I::Boot(Arc::new(NetBoot::new(flavor, name.starts_with("ilo-"))))
        }
        (K::Deploy, "fake") => I::Deploy(Arc::new(crate::deploy::fake::FakeDeploy)),
        (K::Deploy, "ramdisk") => I::Deploy(Arc::new(crate::deploy::ramdisk::RamdiskDeploy)),
        (K::Deploy, "direct") => I::Deploy(Arc::new(crate::deploy::direct::DirectDeploy)),
        (K::Deploy, "iscsi") => I::Deploy(Arc::new(crate::deploy::iscsi::IscsiDeploy)),
        (K::Vendor, "fake") => I::Vendor(Arc::new(crate::vendor::FakeVendor)),
        (K::Vendor, "no-vendor") => I::Vendor(Arc::new(crate::vendor::NoVendor)),
        (k, name) if k.is_generic() => I::Generic(Arc::new(crate::generic::GenericImpl::new(k, name)?)),
        _ => return None,
    })
}

/// The hardware types a conductor enables, with their implementations
/// built once.
pub struct Registry {
    types: BTreeMap<&'static str, HardwareType>,
    built: BTreeMap<(InterfaceKind, &'static str), Implementation>,
}

impl Registry {
    /// The hardware types named in `enabled` (`[conductor]
    /// enabled_hardware_types`).
    pub fn new(enabled: &[String]) -> Result<Registry, DriverError> {
        let mut types = BTreeMap::new();
        let mut built = BTreeMap::new();
        for name in enabled {
            let ht = hardware_type(name).ok_or_else(|| {
                DriverError::Invalid(format!(
                    "unknown hardware type {name:?} in conductor.enabled_hardware_types (known: {})",
                    HARDWARE_TYPES.join(", ")
                ))
            })?;
            for (kind, supported) in &ht.interfaces {
                for n in &supported.names {
                    if built.contains_key(&(*kind, *n)) {
                        continue;
                    }
                    let imp = implementation(*kind, n).ok_or_else(|| {
                        DriverError::Invalid(format!(
                            "hardware type {} lists {kind} interface {n}, which does not exist",
                            ht.name
                        ))
                    })?;
                    built.insert((*kind, *n), imp);
                }
            }
            types.insert(ht.name, ht);
        }
        Ok(Registry { types, built })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.types.keys().copied().collect()
    }

    pub fn get(&self, name: &str) -> Option<&HardwareType> {
        self.types.get(name)
    }

    /// Resolve a node's interface names (defaults for unset ones) and
    /// check each is enabled for its hardware type.
    pub fn resolve(&self, node: &Node) -> DriverResult<BTreeMap<InterfaceKind, &'static str>> {
        let ht = self
            .types
            .get(node.driver.as_str())
            .ok_or_else(|| DriverError::Invalid(format!("hardware type {} is not enabled", node.driver)))?;
        let mut out = BTreeMap::new();
        for (kind, supported) in &ht.interfaces {
            let chosen = node.interfaces.get(kind.as_str()).cloned().flatten();
            let name = match chosen.as_deref() {
                None => supported.default,
                Some(c) => supported.names.iter().copied().find(|n| *n == c).ok_or_else(|| {
                    DriverError::Invalid(format!(
                        "Could not find the following interface in the 'ironic.hardware.interfaces.{kind}' entrypoint: {c}. Valid interfaces are {}.",
                        supported.names.join(", ")
                    ))
                })?,
            };
            out.insert(*kind, name);
        }
        Ok(out)
    }

    pub fn driver_for(&self, node: &Node) -> DriverResult<Driver> {
        let names = self.resolve(node)?;
        let ht = self.types.get(node.driver.as_str()).expect("resolve checked it");
        let get = |kind: InterfaceKind| -> DriverResult<Implementation> {
            let name = names
                .get(&kind)
                .ok_or_else(|| DriverError::Invalid(format!("hardware type {} has no {kind} interface", ht.name)))?;
            Ok(self.built.get(&(kind, *name)).expect("built at start").clone())
        };
        let mismatch = |kind: InterfaceKind| DriverError::Invalid(format!("the {kind} interface is of the wrong kind"));
        let Implementation::Power(power) = get(InterfaceKind::Power)? else {
            return Err(mismatch(InterfaceKind::Power));
        };
        let Implementation::Management(management) = get(InterfaceKind::Management)? else {
            return Err(mismatch(InterfaceKind::Management));
        };
        let Implementation::Boot(boot) = get(InterfaceKind::Boot)? else { return Err(mismatch(InterfaceKind::Boot)) };
        let Implementation::Deploy(deploy) = get(InterfaceKind::Deploy)? else {
            return Err(mismatch(InterfaceKind::Deploy));
        };
        let Implementation::Vendor(vendor) = get(InterfaceKind::Vendor)? else {
            return Err(mismatch(InterfaceKind::Vendor));
        };
        let mut others = BTreeMap::new();
        for kind in InterfaceKind::ALL.into_iter().filter(|k| k.is_generic()) {
            if !names.contains_key(&kind) {
                continue;
            }
            let Implementation::Generic(g) = get(kind)? else { return Err(mismatch(kind)) };
            others.insert(kind, g);
        }
        Ok(Driver { hardware_type: ht.name, power, management, boot, deploy, vendor, others })
    }
}

/// The generic kinds every hardware type lists the same way apart from
/// whether `fake` is offered.
pub(crate) fn generic_kinds(with_fake: bool) -> BTreeMap<InterfaceKind, Supported> {
    use InterfaceKind as K;
    let mut m = BTreeMap::new();
    for (kind, none) in [
        (K::Bios, "no-bios"),
        (K::Console, "no-console"),
        (K::Firmware, "no-firmware"),
        (K::Inspect, "no-inspect"),
        (K::Raid, "no-raid"),
        (K::Rescue, "no-rescue"),
    ] {
        let s = if with_fake { Supported::new("fake", &["fake", none]) } else { Supported::new(none, &[none]) };
        m.insert(kind, s);
    }
    m.insert(K::Network, Supported::new("noop", &["noop"]));
    m.insert(K::Storage, Supported::new("noop", &["noop"]));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_common::states::ProvisionState;
    use uuid::Uuid;

    #[test]
    fn every_listed_implementation_exists_and_defaults_are_listed() {
        let all: Vec<String> = HARDWARE_TYPES.iter().map(|s| s.to_string()).collect();
        let reg = Registry::new(&all).expect("every hardware type builds");
        for name in HARDWARE_TYPES {
            let ht = reg.get(name).unwrap();
            assert_eq!(ht.interfaces.len(), InterfaceKind::ALL.len(), "{name} lists every kind");
            for (kind, s) in &ht.interfaces {
                assert!(s.names.contains(&s.default), "{name} {kind}");
            }
            let node = Node::new(Uuid::new_v4(), name, ProvisionState::Enroll);
            let d = reg.driver_for(&node).unwrap();
            assert_eq!(d.hardware_type, name);
        }
    }

    #[test]
    fn one_boot_interface_is_shared_by_every_type_that_offers_it() {
        let reg = Registry::new(&["redfish".into(), "ilo".into()]).unwrap();
        let mut a = Node::new(Uuid::new_v4(), "redfish", ProvisionState::Enroll);
        let b = Node::new(Uuid::new_v4(), "redfish", ProvisionState::Enroll);
        let da = reg.driver_for(&a).unwrap();
        let db = reg.driver_for(&b).unwrap();
        assert!(Arc::ptr_eq(&da.boot, &db.boot), "built once per registry");
        assert_eq!(da.boot.name(), "redfish-virtual-media");
        let ilo = Node::new(Uuid::new_v4(), "ilo", ProvisionState::Enroll);
        assert_eq!(reg.driver_for(&ilo).unwrap().boot.name(), "ilo-virtual-media");
        a.interfaces.deploy = Some("anaconda".into());
        let e = reg.driver_for(&a).unwrap_err().to_string();
        assert!(e.contains("ironic.hardware.interfaces.deploy") && e.contains("Valid interfaces are"), "{e}");
    }

    #[test]
    fn unknown_hardware_types_are_named() {
        let e = Registry::new(&["idrac".into()]).err().unwrap().to_string();
        assert!(e.contains("\"idrac\"") && e.contains("fake-hardware, redfish, ilo"), "{e}");
    }
}
