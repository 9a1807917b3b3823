//! Boot interfaces: `fake`, virtual media (`redfish-virtual-media`,
//! `ilo-virtual-media`) and network boot (`pxe`, `ipxe`, `ilo-pxe`,
//! `ilo-ipxe`), written once and shared by the hardware types that offer
//! them.

pub mod fake;
pub mod ipxe_script;
pub mod netboot;
pub mod virtual_media;
