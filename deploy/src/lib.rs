//! Everything that touches a machine.
//!
//! Layout:
//! * [`driver`]: the interfaces a hardware type composes ([`driver::InterfaceKind`]),
//!   the [`driver::Task`] they act on, the step model;
//! * [`hardware`]: the hardware types (`fake-hardware`, `redfish`, `ilo`),
//!   the factory that builds each interface implementation once per
//!   (kind, name), and the [`hardware::Registry`] of enabled types;
//! * the implementations by kind: [`boot`] (`fake`, virtual media, PXE
//!   and iPXE with the iPXE scripts the API serves), [`deploy`] (`fake`,
//!   `ramdisk`, `direct`, `iscsi`), [`power`], [`management`], [`vendor`],
//!   [`generic`] (kinds without behaviour yet);
//! * [`bmc`]: BMC clients (Redfish, with HPE iLO's differences);
//! * [`image`] (floppies, boot ISOs, the source image cache), [`publish`]
//!   (HTTP root, Swift) and [`media`], which ties them together;
//! * [`tftp`]: the conductor's embedded TFTP server;
//! * [`token`]: agent tokens derived from the cluster secret;
//!   [`services`]: what the conductor lends every task.
//!
//! The invariant: every step is idempotent. A conductor may die after a
//! step ran and before it was recorded; the next owner runs it again.

pub mod agent;
pub mod bmc;
pub mod boot;
pub mod deploy;
pub mod driver;
pub mod fake_hooks;
pub mod generic;
pub mod hardware;
pub mod image;
pub mod management;
pub mod media;
pub mod percent;
pub mod power;
pub mod publish;
pub mod services;
pub mod tftp;
pub mod token;
pub mod vendor;

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

/// A URL as spans show it: without user info or query (neither is
/// needed to follow a request, and either could carry a credential).
pub fn traced_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traced_urls_carry_no_credentials() {
        assert_eq!(
            traced_url("https://admin:s3cret@bmc:8443/redfish/v1/Systems/1?$expand=.#x"),
            "https://bmc:8443/redfish/v1/Systems/1"
        );
        assert_eq!(
            traced_url("https://10.0.0.9:9999/v1/commands/?wait=true&agent_token=t0k3n"),
            "https://10.0.0.9:9999/v1/commands/"
        );
        assert_eq!(traced_url("not a url?agent_token=t0k3n"), "not a url");
    }
}
