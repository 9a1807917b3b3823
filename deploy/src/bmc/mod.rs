//! Clients of baseboard management controllers. Only Redfish (DMTF) so
//! far, with the documented differences of HPE's iLO ([`redfish::Vendor`]).
//!
//! Why a client of our own rather than a crate: neither Rust Redfish
//! library (`libredfish`, `nv-redfish`) has InsertMedia/EjectMedia, which
//! is what virtual-media boot is made of (docs/drivers.md).

pub mod redfish;
