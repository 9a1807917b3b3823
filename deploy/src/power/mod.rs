//! Power interfaces: `fake` and Redfish (`redfish`, `ilo`).

pub mod fake;
pub mod redfish;
