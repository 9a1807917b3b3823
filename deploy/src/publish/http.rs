//! HTTP root publisher (being written).
