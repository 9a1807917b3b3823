//! `ilo`: HPE ProLiant iLO 4/5/6 over Redfish (`ilo_*` driver_info), with
//! HPE's documented differences (`bmc::redfish::Vendor::Hpe`).

use crate::boot::{netboot, virtual_media};
use crate::driver::InterfaceKind as K;
use crate::hardware::{HardwareType, Supported, generic_kinds};

pub const HARDWARE_TYPE: &str = "ilo";

pub fn hardware_type() -> HardwareType {
    let mut interfaces = generic_kinds(false);
    interfaces.insert(
        K::Boot,
        Supported::new(virtual_media::ILO, &[virtual_media::ILO, netboot::ILO_PXE, netboot::ILO_IPXE]),
    );
    interfaces.insert(K::Deploy, Supported::new("direct", &["direct", "iscsi", "ramdisk", "fake"]));
    interfaces.insert(K::Management, Supported::new("ilo", &["ilo"]));
    interfaces.insert(K::Power, Supported::new("ilo", &["ilo"]));
    interfaces.insert(K::Vendor, Supported::new("no-vendor", &["no-vendor"]));
    HardwareType { name: HARDWARE_TYPE, interfaces }
}
