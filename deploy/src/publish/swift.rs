//! Swift publisher (being written).
