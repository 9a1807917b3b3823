//! The iPXE scripts of the dynamic-config spec: made by the API at each
//! `ipxe_config` request from the node's row alone (its provision state and
//! `driver_internal_info.netboot`, see [`super::netboot`]), so any API
//! process answers and no conductor keeps a script on disk.
//!
//! | node                                              | script            |
//! |---------------------------------------------------|-------------------|
//! | deploying, cleaning, rescuing, inspecting, servicing (and their waits), files placed | deploy/rescue kernel + ramdisk |
//! | the same, files not placed yet                    | "not ready", ask again after `retry_delay` |
//! | active, netbooted instance                        | instance kernel + ramdisk |
//! | active, local boot                                | leave iPXE: `sanboot` the first disk (BIOS), `exit` (UEFI) |
//! | unknown node or MAC, any other state              | an explanation on the console, then `exit` |
//!
//! A script names only what the booting node needs: its UUID, its state,
//! the URLs of its kernel and ramdisk and its kernel command line (which
//! holds no secret: network-booted ramdisks get their agent token at
//! lookup).

use std::time::Duration;

use ferric_common::model::Node;
use ferric_common::states::ProvisionState as S;

use super::netboot::{NetImages, NetPhase, NetbootRecord};
use crate::publish::swift::TempUrlSigner;

/// What the script does, as the metric label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    Ramdisk,
    Instance,
    Local,
    NotReady,
    Error,
    Unknown,
}

impl ScriptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptKind::Ramdisk => "ramdisk",
            ScriptKind::Instance => "instance",
            ScriptKind::Local => "local",
            ScriptKind::NotReady => "not_ready",
            ScriptKind::Error => "error",
            ScriptKind::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub kind: ScriptKind,
    pub body: String,
}

pub struct ScriptContext<'a> {
    /// The URL this script was fetched from (a "not ready" script asks it
    /// again).
    pub self_url: &'a str,
    pub retry_delay: Duration,
    /// Signs `swift://` images (`[ipxe] use_swift`); `None` when the API
    /// cannot (no Swift settings, or Swift unreachable for tempauth).
    pub swift: Option<&'a TempUrlSigner>,
    /// How long a signed URL stays valid.
    pub swift_validity: Duration,
}

/// `swift://<container>/<object>` → (container, object).
pub fn swift_object(url: &str) -> Result<(&str, &str), String> {
    let rest = url.strip_prefix("swift://").ok_or_else(|| format!("{url:?} does not start with swift://"))?;
    let (container, object) = rest.split_once('/').ok_or_else(|| format!("{url:?} names no object"))?;
    if container.is_empty() || object.is_empty() || object.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("{url:?} is not swift://<container>/<object>"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{url:?} holds whitespace or control characters"));
    }
    Ok((container, object))
}

/// Nothing but printable text on an `echo` line.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn header() -> String {
    "#!ipxe\n".to_string()
}

/// An explanation on the console, then back to the firmware.
pub fn error_script(kind: ScriptKind, message: &str) -> Script {
    Script {
        kind,
        body: format!(
            "{}echo Ferric: {}\necho Ferric: nothing to boot from the network; trying the next boot device in 10 s\n\
             sleep 10\nexit 1\n",
            header(),
            clean(message)
        ),
    }
}

fn not_ready(node: &Node, ctx: &ScriptContext<'_>) -> Script {
    let delay = ctx.retry_delay.as_secs().max(1);
    Script {
        kind: ScriptKind::NotReady,
        body: format!(
            "{}echo Ferric: node {} is {}: its boot files are not ready yet; asking again in {delay} s\nsleep {delay}\n\
             chain --replace {} || exit 1\n",
            header(),
            node.uuid,
            node.provision_state.as_str(),
            ctx.self_url
        ),
    }
}

fn image_url(url: &str, placed: &str, ctx: &ScriptContext<'_>) -> Result<String, String> {
    if !placed.is_empty() {
        return Ok(placed.to_string());
    }
    let (container, object) = swift_object(url)?;
    let signer = ctx.swift.ok_or_else(|| {
        "the images are Swift objects, and this API process cannot sign their URLs now (its [swift] settings, or \
         Swift unreachable: see its log)"
            .to_string()
    })?;
    signer.sign(container, object, ctx.swift_validity).map_err(|e| e.to_string())
}

fn boot_script(node: &Node, what: &str, names: (&str, &str), images: &NetImages, ctx: &ScriptContext<'_>) -> Script {
    let kind = if what == "instance" { ScriptKind::Instance } else { ScriptKind::Ramdisk };
    let urls = image_url(&images.kernel.url, &images.kernel_url, ctx)
        .and_then(|k| Ok((k, image_url(&images.ramdisk.url, &images.ramdisk_url, ctx)?)));
    let (kernel, ramdisk) = match urls {
        Ok(u) => u,
        Err(e) => return error_script(ScriptKind::Error, &format!("node {}: {e}", node.uuid)),
    };
    let delay = ctx.retry_delay.as_secs().max(1);
    let (_, rname) = names;
    Script {
        kind,
        body: format!(
            "{h}echo Ferric: node {u} is {s}: booting its {what}\n:boot\n\
             kernel {kernel} initrd={rname} {params} BOOTIF=${{mac}} || goto retry\n\
             initrd --name {rname} {ramdisk} || goto retry\nboot || goto retry\n\
             :retry\necho Ferric: downloading or booting failed; trying again in {delay} s\nsleep {delay}\ngoto boot\n",
            h = header(),
            u = node.uuid,
            s = node.provision_state.as_str(),
            params = images.params,
        ),
    }
}

fn local_script(node: &Node, uefi: bool) -> Script {
    let leave = if uefi { "exit" } else { "sanboot --no-describe --drive 0x80 || exit" };
    Script {
        kind: ScriptKind::Local,
        body: format!(
            "{}echo Ferric: node {} is {}: booting from its local disk\n{leave}\n",
            header(),
            node.uuid,
            node.provision_state.as_str()
        ),
    }
}

/// Whether the node's ramdisk is what it should boot now.
fn boots_ramdisk(state: S) -> bool {
    matches!(
        state,
        S::Deploying
            | S::DeployWait
            | S::Cleaning
            | S::CleanWait
            | S::Rescuing
            | S::RescueWait
            | S::Rescue
            | S::Inspecting
            | S::InspectWait
            | S::Servicing
            | S::ServiceWait
    )
}

/// The script for `node` (see the module doc).
pub fn for_node(node: &Node, ctx: &ScriptContext<'_>) -> Script {
    let rec = NetbootRecord::load(node);
    let boots_by_ipxe = node.interfaces.boot.as_deref().is_some_and(|b| b.ends_with("ipxe"))
        || rec.as_ref().is_some_and(|r| r.flavor == super::netboot::Flavor::Ipxe);
    if !boots_by_ipxe {
        return error_script(
            ScriptKind::Error,
            &format!(
                "node {} does not boot by iPXE (its boot interface is {})",
                node.uuid,
                node.interfaces.boot.as_deref().unwrap_or("its hardware type's default")
            ),
        );
    }
    let state = node.provision_state;
    match (state, rec) {
        (s, Some(rec)) if boots_ramdisk(s) && rec.phase == NetPhase::Ramdisk => match &rec.images {
            Some(images) => boot_script(node, "ramdisk", rec.file_names(), images, ctx),
            None => not_ready(node, ctx),
        },
        (s, _) if boots_ramdisk(s) && s != S::Rescue => not_ready(node, ctx),
        (S::Active, Some(rec)) if rec.phase == NetPhase::Instance => match &rec.images {
            Some(images) => boot_script(node, "instance", rec.file_names(), images, ctx),
            None => not_ready(node, ctx),
        },
        (S::Active, Some(rec)) if rec.phase == NetPhase::Local => local_script(node, rec.uefi),
        (S::Active, None) if crate::deploy::boot_option(node) == "local" => {
            local_script(node, crate::deploy::capability(&node.properties, "boot_mode").as_deref() == Some("uefi"))
        }
        (S::Active, _) => not_ready(node, ctx),
        (s, _) => error_script(
            ScriptKind::Error,
            &format!("node {} is {}: no boot configuration is served in this state", node.uuid, s.as_str()),
        ),
    }
}

/// `boot.ipxe`: chains to the node's dynamic script by the booting NIC's
/// MAC, retrying while the API cannot be reached.
pub fn entry_script(api_base: &str) -> String {
    format!(
        "#!ipxe\necho Ferric: fetching the boot script of ${{mac}}\n:chain\n\
         chain {api_base}/v1/drivers/redfish/vendor_passthru/ipxe_config?port_address=${{mac}} || goto retry\n\
         :retry\necho Ferric: the API did not answer; trying again in 5 s\nsleep 5\ngoto chain\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::virtual_media::Source;
    use uuid::Uuid;

    fn node(state: S, rec: Option<NetbootRecord>) -> Node {
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", state);
        n.interfaces.boot = Some("ipxe".into());
        if let Some(r) = rec {
            n.driver_internal_info.insert("netboot".into(), serde_json::to_value(r).unwrap());
        }
        n
    }

    fn rec(phase: NetPhase, placed: bool) -> NetbootRecord {
        let url = |u: &str| if placed { format!("http://c1/httpboot/ipxe/n/{u}") } else { String::new() };
        NetbootRecord {
            flavor: super::super::netboot::Flavor::Ipxe,
            phase,
            uefi: false,
            by: "c1".into(),
            images: (phase != NetPhase::Local).then(|| NetImages {
                kernel: Source { url: "swift://images/deploy.kernel".into(), checksum: None },
                ramdisk: Source { url: "swift://images/deploy.initramfs".into(), checksum: None },
                params: "ipa-api-url=http://api:6385 boot_method=ipxe".into(),
                kernel_url: url("deploy_kernel"),
                ramdisk_url: url("deploy_ramdisk"),
            }),
            macs: vec![],
        }
    }

    fn ctx() -> ScriptContext<'static> {
        ScriptContext {
            self_url: "http://api:6385/v1/drivers/fake-hardware/vendor_passthru/ipxe_config?node_uuid=x",
            retry_delay: Duration::from_secs(5),
            swift: None,
            swift_validity: Duration::from_secs(600),
        }
    }

    #[test]
    fn every_provision_state_gets_the_script_of_the_table() {
        for state in S::ALL {
            let placed = node(state, Some(rec(NetPhase::Ramdisk, true)));
            let s = for_node(&placed, &ctx());
            let expected = match state {
                S::Deploying
                | S::DeployWait
                | S::Cleaning
                | S::CleanWait
                | S::Rescuing
                | S::RescueWait
                | S::Rescue
                | S::Inspecting
                | S::InspectWait
                | S::Servicing
                | S::ServiceWait => ScriptKind::Ramdisk,
                S::Active => ScriptKind::NotReady,
                _ => ScriptKind::Error,
            };
            assert_eq!(s.kind, expected, "{state:?}: {}", s.body);
            assert!(s.body.starts_with("#!ipxe\n"), "{}", s.body);
        }
        let s = for_node(&node(S::DeployWait, Some(rec(NetPhase::Ramdisk, true))), &ctx());
        assert!(s.body.contains("kernel http://c1/httpboot/ipxe/n/deploy_kernel initrd=deploy_ramdisk ipa-api-url="));
        assert!(s.body.contains("BOOTIF=${mac}") && s.body.contains("initrd --name deploy_ramdisk http://c1/"));
        let s = for_node(&node(S::Deploying, None), &ctx());
        assert_eq!(s.kind, ScriptKind::NotReady);
        assert!(s.body.contains("chain --replace http://api:6385/") && s.body.contains("sleep 5"), "{}", s.body);
        let s = for_node(&node(S::Active, Some(rec(NetPhase::Instance, true))), &ctx());
        assert_eq!(s.kind, ScriptKind::Instance);
        assert!(s.body.contains(" initrd=ramdisk ") && s.body.contains("initrd --name ramdisk "), "{}", s.body);
        let s = for_node(&node(S::Active, Some(rec(NetPhase::Local, true))), &ctx());
        assert_eq!(s.kind, ScriptKind::Local);
        assert!(s.body.contains("sanboot --no-describe --drive 0x80 || exit"), "{}", s.body);
        let mut uefi = rec(NetPhase::Local, true);
        uefi.uefi = true;
        assert!(for_node(&node(S::Active, Some(uefi)), &ctx()).body.ends_with("\nexit\n"));
    }

    #[test]
    fn swift_images_are_signed_per_request_or_explained() {
        let n = node(S::DeployWait, Some(rec(NetPhase::Ramdisk, false)));
        let s = for_node(&n, &ctx());
        assert_eq!(s.kind, ScriptKind::Error);
        assert!(s.body.contains("cannot sign their URLs"), "{}", s.body);
        assert_eq!(swift_object("swift://c/a/b.img"), Ok(("c", "a/b.img")));
        assert!(swift_object("swift://c").is_err() && swift_object("swift:///o").is_err());
        assert!(swift_object("swift://c/../o").is_err() && swift_object("http://x/o").is_err());
        assert!(swift_object("swift://c/o\nshell").is_err());
    }

    #[test]
    fn nodes_that_do_not_boot_by_ipxe_and_odd_messages_are_explained_on_one_line() {
        let mut n = node(S::DeployWait, None);
        n.interfaces.boot = Some("redfish-virtual-media".into());
        let s = for_node(&n, &ctx());
        assert_eq!(s.kind, ScriptKind::Error);
        assert!(s.body.contains("does not boot by iPXE"), "{}", s.body);
        let s = error_script(ScriptKind::Unknown, "line\nkernel http://evil");
        assert!(!s.body.contains("\nkernel"), "{}", s.body);
    }
}
