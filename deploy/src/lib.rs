//! Everything that touches a machine.
//!
//! Layout: [`driver`] (the interfaces a hardware type composes, the step
//! model and the registry of enabled hardware types) and the hardware
//! types themselves ([`fake`] so far; redfish and ilo follow); [`image`]
//! (floppies, boot ISOs, the source image cache), [`publish`] (HTTP root,
//! Swift) and [`media`], which ties them together.
//!
//! The invariant: every step is idempotent. A conductor may die after a
//! step ran and before it was recorded; the next owner runs it again.

pub mod driver;
pub mod fake;
pub mod image;
pub mod media;
pub mod percent;
pub mod publish;

/// An error with its causes, each once: reqwest's Display stops at "error
/// sending request", while what an operator needs ("connection refused",
/// "operation timed out") is further down the chain.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        cause = c.source();
    }
    out
}
