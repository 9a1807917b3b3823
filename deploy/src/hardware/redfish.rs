//! `redfish`: any DMTF Redfish BMC (`redfish_*` driver_info).
//!
//! Deploy interfaces: `ramdisk` (the default until the agent deploy
//! lands: boots the instance from a boot ISO, writes no disk) and `fake`
//! (drives the real BMC and virtual media through a deploy's boot and
//! reboot steps but writes no image: for labs and tests, never the
//! default).

use crate::boot::{netboot, virtual_media};
use crate::driver::InterfaceKind as K;
use crate::hardware::{HardwareType, Supported, generic_kinds};

pub const HARDWARE_TYPE: &str = "redfish";

pub fn hardware_type() -> HardwareType {
    let mut interfaces = generic_kinds(false);
    interfaces.insert(
        K::Boot,
        Supported::new(virtual_media::REDFISH, &[virtual_media::REDFISH, netboot::PXE, netboot::IPXE]),
    );
    interfaces.insert(K::Deploy, Supported::new("direct", &["direct", "iscsi", "ramdisk", "fake"]));
    interfaces.insert(K::Management, Supported::new("redfish", &["redfish"]));
    interfaces.insert(K::Power, Supported::new("redfish", &["redfish"]));
    interfaces.insert(K::Vendor, Supported::new("no-vendor", &["no-vendor"]));
    HardwareType { name: HARDWARE_TYPE, interfaces }
}
