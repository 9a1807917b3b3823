//! Management interfaces (boot device): `fake` and Redfish (`redfish`, `ilo`).

pub mod fake;
pub mod redfish;
