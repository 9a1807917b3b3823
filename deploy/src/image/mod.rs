//! Boot images built in-process and checked by the standard tools in tests.
//! So far: the virtual-media parameters floppy ([`floppy`]).

pub mod cache;
pub mod configdrive;
pub mod floppy;
pub mod iso;
