//! Shared boot ISOs and floppies (being written).
