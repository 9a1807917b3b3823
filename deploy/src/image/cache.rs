//! Source image cache (being written).
