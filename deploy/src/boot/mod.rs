//! Boot interfaces: `fake`, and virtual media (`redfish-virtual-media`,
//! `ilo-virtual-media`), written once and shared by the hardware types
//! that offer them.

pub mod fake;
pub mod virtual_media;
