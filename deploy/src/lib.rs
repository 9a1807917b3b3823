//! Everything that touches a machine.
//!
//! Layout: [`driver`] (the interfaces a hardware type composes, the step
//! model and the registry of enabled hardware types) and the hardware
//! types themselves ([`fake`] so far; redfish and ilo follow).
//!
//! The invariant: every step is idempotent. A conductor may die after a
//! step ran and before it was recorded; the next owner runs it again.

pub mod driver;
pub mod fake;
pub mod image;
pub mod media;
pub mod publish;
