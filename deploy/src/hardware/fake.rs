//! `fake-hardware`: interfaces that touch no machine but behave like real
//! ones toward the conductor (see `boot::fake`, `deploy::fake`, ...).

use crate::driver::InterfaceKind as K;
use crate::hardware::{HardwareType, Supported, generic_kinds};

pub const HARDWARE_TYPE: &str = "fake-hardware";

pub fn hardware_type() -> HardwareType {
    let mut interfaces = generic_kinds(true);
    interfaces.insert(K::Boot, Supported::new("fake", &["fake", "pxe", "ipxe"]));
    interfaces.insert(K::Deploy, Supported::new("fake", &["fake", "ramdisk", "direct", "iscsi"]));
    interfaces.insert(K::Management, Supported::new("fake", &["fake"]));
    interfaces.insert(K::Power, Supported::new("fake", &["fake"]));
    interfaces.insert(K::Vendor, Supported::new("fake", &["fake", "no-vendor"]));
    HardwareType { name: HARDWARE_TYPE, interfaces }
}
