//! Ironic's default policy (secure RBAC, `ironic/common/policy.py`), as
//! pure functions of who calls and, for a node, its `owner` and `lessee`.
//!
//! The personas, with Keystone's implied roles (admin ⊃ manager ⊃ member ⊃
//! reader, as `keystone-manage bootstrap` sets them up, so a token lists
//! them all):
//!
//! | persona | check |
//! |---|---|
//! | system admin | role admin, system scope `all` |
//! | system member | role member, system scope; or `service_role` |
//! | system reader | role reader or service, system scope; or `service_role` |
//! | `service_role` | role service in the project `auth.rbac_service_project_name` |
//! | project X of a node | `project_id` = the node's owner (X = owner) or lessee |
//!
//! | rule (Ironic's name) | who |
//! |---|---|
//! | `node:create` | system admin, system service; a project admin or service creates a node its project owns (`create:self_owned_node`) |
//! | `node:list` | any reader or service; only system readers see all nodes, others their project's (owner or lessee) |
//! | `node:get`, `get_states`, `port:get` | system reader; reader of the owner or lessee; service of the owner |
//! | `node:get:{last_error,reservation,driver_info,driver_internal_info}` | system reader; reader or service of the owner (a lessee sees them redacted) |
//! | `node:update` (generic fields), `update_extra`, `set_power_state` | system member; member of the owner or lessee; system service |
//! | `update_instance_info`, `set_provision_state`, `validate`, `*_maintenance` | system member or service; owner member; lessee admin or manager; owner service |
//! | `update:{driver_info,properties,instance_uuid,lessee,name,network_data,retired}` | system member or service; owner member or service |
//! | `update:driver_interfaces`, `port:update` | system member or service; owner admin, manager or service |
//! | `update:owner`, `update:conductor_group`, `update:parent_node` | system member |
//! | `update:chassis_uuid`, `update:shard`, `disable_cleaning` | system admin |
//! | `node:delete` | system admin; owner admin (`delete:self_owned_node`) |
//! | `port:create`, `port:delete` | system admin or service; owner admin, manager or service |
//! | `driver:get*`, `conductor:get` | system reader |
//! | `node:vendor_passthru`, `driver:vendor_passthru` | system admin |
//! | `node:traits:list`, `portgroup:get` | as `node:get` (of the portgroup's node) |
//! | `node:traits:set`, `node:traits:delete`, `portgroup:update` | as `port:update` |
//! | `node:history:get` | system reader or service; reader or service of the owner (not the lessee) |
//! | `portgroup:create`, `portgroup:delete` | as `port:create` |
//! | `portgroup:list`, `allocation:list` | any reader or service; only system readers see all (`*:list_all`), others their project's |
//! | `chassis:get` | system reader |
//! | `chassis:create`, `chassis:delete` | system admin |
//! | `chassis:update`, `allocation:create_restricted` (an owner other than the caller's project) | system member |
//! | `allocation:get` | system reader; reader of the allocation's owner |
//! | `allocation:create` | system member; any member (the allocation is its project's) |
//! | `allocation:update`, `allocation:delete` | system member; member of the allocation's owner |
//!
//! A node a caller may not even read answers 404, as if it did not exist
//! (Ironic's `conceal_node`); one it may read but not change answers 403.

use std::collections::HashSet;
use std::sync::Arc;

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A public route: nobody was asked for credentials.
    Public,
    /// `noauth`, or a user of the htpasswd file: may do anything.
    Admin,
    Keystone(Arc<Credentials>),
}

/// What a validated Keystone token says of its bearer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credentials {
    pub user_id: String,
    pub user_name: String,
    /// The token's project, for a project-scoped token.
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    /// A system-scoped token (`"system": {"all": true}`).
    pub system_all: bool,
    pub roles: HashSet<String>,
    /// `auth.rbac_service_project_name`, for the `service_role` rule.
    pub service_project_name: String,
}

/// A node's project fields, the target of node-scoped rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub owner: Option<&'a str>,
    pub lessee: Option<&'a str>,
}

/// The rules of Ironic's policy that Ferric's routes use (see the module
/// doc for who passes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    NodeCreate,
    NodeCreateSelfOwned,
    NodeList,
    NodeListAll,
    NodeGet,
    NodeGetRestricted,
    NodeUpdate,
    NodeUpdateInstanceInfo,
    NodeUpdateOwnerMember,
    NodeUpdateOwnerAdmin,
    NodeUpdateSystemMember,
    NodeUpdateSystemAdmin,
    NodeDelete,
    NodeDeleteSelfOwned,
    NodeAction,
    NodeVendorPassthru,
    PortCreateDelete,
    PortUpdate,
    SystemReader,
    DriverVendorPassthru,
    NodeTraitsList,
    NodeTraitsSet,
    NodeTraitsDelete,
    NodeHistoryGet,
    PortgroupGet,
    PortgroupList,
    PortgroupListAll,
    PortgroupCreate,
    PortgroupDelete,
    PortgroupUpdate,
    ChassisGet,
    ChassisCreate,
    ChassisDelete,
    ChassisUpdate,
    /// Allocation rules: the target's `owner` is the allocation's owner.
    AllocationGet,
    AllocationList,
    AllocationListAll,
    AllocationCreate,
    AllocationCreateRestricted,
    AllocationUpdate,
    AllocationDelete,
}

impl Rule {
    /// Ironic's name of the rule, for the 403's message.
    pub fn name(self) -> &'static str {
        match self {
            Rule::NodeCreate => "baremetal:node:create",
            Rule::NodeCreateSelfOwned => "baremetal:node:create:self_owned_node",
            Rule::NodeList => "baremetal:node:list",
            Rule::NodeListAll => "baremetal:node:list_all",
            Rule::NodeGet => "baremetal:node:get",
            Rule::NodeGetRestricted => "baremetal:node:get:filter_threshold",
            Rule::NodeUpdate => "baremetal:node:update",
            Rule::NodeUpdateInstanceInfo => "baremetal:node:update_instance_info",
            Rule::NodeUpdateOwnerMember => "baremetal:node:update:driver_info",
            Rule::NodeUpdateOwnerAdmin => "baremetal:node:update:driver_interfaces",
            Rule::NodeUpdateSystemMember => "baremetal:node:update:owner",
            Rule::NodeUpdateSystemAdmin => "baremetal:node:update:chassis_uuid",
            Rule::NodeDelete => "baremetal:node:delete",
            Rule::NodeDeleteSelfOwned => "baremetal:node:delete:self_owned_node",
            Rule::NodeAction => "baremetal:node:set_provision_state",
            Rule::NodeVendorPassthru => "baremetal:node:vendor_passthru",
            Rule::PortCreateDelete => "baremetal:port:create",
            Rule::PortUpdate => "baremetal:port:update",
            Rule::SystemReader => "baremetal:driver:get",
            Rule::DriverVendorPassthru => "baremetal:driver:vendor_passthru",
            Rule::NodeTraitsList => "baremetal:node:traits:list",
            Rule::NodeTraitsSet => "baremetal:node:traits:set",
            Rule::NodeTraitsDelete => "baremetal:node:traits:delete",
            Rule::NodeHistoryGet => "baremetal:node:history:get",
            Rule::PortgroupGet => "baremetal:portgroup:get",
            Rule::PortgroupList => "baremetal:portgroup:list",
            Rule::PortgroupListAll => "baremetal:portgroup:list_all",
            Rule::PortgroupCreate => "baremetal:portgroup:create",
            Rule::PortgroupDelete => "baremetal:portgroup:delete",
            Rule::PortgroupUpdate => "baremetal:portgroup:update",
            Rule::ChassisGet => "baremetal:chassis:get",
            Rule::ChassisCreate => "baremetal:chassis:create",
            Rule::ChassisDelete => "baremetal:chassis:delete",
            Rule::ChassisUpdate => "baremetal:chassis:update",
            Rule::AllocationGet => "baremetal:allocation:get",
            Rule::AllocationList => "baremetal:allocation:list",
            Rule::AllocationListAll => "baremetal:allocation:list_all",
            Rule::AllocationCreate => "baremetal:allocation:create",
            Rule::AllocationCreateRestricted => "baremetal:allocation:create_restricted",
            Rule::AllocationUpdate => "baremetal:allocation:update",
            Rule::AllocationDelete => "baremetal:allocation:delete",
        }
    }
}

impl Credentials {
    fn role(&self, r: &str) -> bool {
        self.roles.contains(r)
    }
    fn service_role(&self) -> bool {
        self.role("service") && self.project_name.as_deref() == Some(self.service_project_name.as_str())
    }
    fn system_admin(&self) -> bool {
        self.role("admin") && self.system_all
    }
    fn system_member(&self) -> bool {
        (self.role("member") && self.system_all) || self.service_role()
    }
    fn system_reader(&self) -> bool {
        ((self.role("reader") || self.role("service")) && self.system_all) || self.service_role()
    }
    fn system_service(&self) -> bool {
        self.role("service") && self.system_all
    }
    fn project_is(&self, p: Option<&str>) -> bool {
        matches!((self.project_id.as_deref(), p), (Some(a), Some(b)) if a == b)
    }

    /// Whether this caller passes `rule` on `t`.
    pub fn allows(&self, rule: Rule, t: Target) -> bool {
        let owner = self.project_is(t.owner);
        let lessee = self.project_is(t.lessee);
        let either = owner || lessee;
        let r = |x: &str| self.role(x);
        let owner_service = r("service") && owner;
        match rule {
            // the new resources' rules share their check strings with the
            // node and port rules above (Ironic's SYSTEM_OR_PROJECT_READER,
            // SYSTEM_MEMBER_OR_OWNER_ADMIN, SYSTEM_ADMIN_OR_OWNER_ADMIN, ...)
            Rule::NodeTraitsList | Rule::PortgroupGet => self.allows(Rule::NodeGet, t),
            Rule::NodeTraitsSet | Rule::NodeTraitsDelete | Rule::PortgroupUpdate => {
                self.allows(Rule::NodeUpdateOwnerAdmin, t)
            }
            Rule::NodeHistoryGet => self.allows(Rule::NodeGetRestricted, t),
            Rule::PortgroupList | Rule::AllocationList => self.allows(Rule::NodeList, t),
            Rule::PortgroupListAll | Rule::ChassisGet | Rule::AllocationListAll => self.system_reader(),
            Rule::PortgroupCreate | Rule::PortgroupDelete => self.allows(Rule::PortCreateDelete, t),
            Rule::ChassisCreate | Rule::ChassisDelete => self.system_admin(),
            Rule::ChassisUpdate | Rule::AllocationCreateRestricted => self.system_member(),
            // ALLOCATION_READER, ALLOCATION_CREATOR, ALLOCATION_MEMBER
            Rule::AllocationGet => self.system_reader() || (r("reader") && owner),
            Rule::AllocationCreate => self.system_member() || r("member"),
            Rule::AllocationUpdate | Rule::AllocationDelete => self.system_member() || (r("member") && owner),
            Rule::NodeCreate => self.system_admin() || self.system_service(),
            Rule::NodeCreateSelfOwned => r("admin") || r("service"),
            Rule::NodeList => r("reader") || r("service"),
            Rule::NodeListAll | Rule::SystemReader => self.system_reader(),
            Rule::NodeGet => self.system_reader() || (r("reader") && either) || owner_service,
            Rule::NodeGetRestricted => {
                self.system_reader() || self.system_service() || (r("reader") && owner) || owner_service
            }
            Rule::NodeUpdate => self.system_member() || (r("member") && either) || self.system_service(),
            Rule::NodeUpdateInstanceInfo | Rule::NodeAction => {
                self.system_member()
                    || self.system_service()
                    || (r("member") && owner)
                    || ((r("admin") || r("manager")) && lessee)
                    || owner_service
            }
            Rule::NodeUpdateOwnerMember => {
                self.system_member() || self.system_service() || (r("member") && owner) || owner_service
            }
            Rule::NodeUpdateOwnerAdmin | Rule::PortUpdate => {
                self.system_member()
                    || self.system_service()
                    || ((r("admin") || r("manager")) && owner)
                    || owner_service
            }
            Rule::PortCreateDelete => {
                self.system_admin() || self.system_service() || ((r("admin") || r("manager")) && owner) || owner_service
            }
            Rule::NodeUpdateSystemMember => self.system_member(),
            Rule::NodeUpdateSystemAdmin | Rule::NodeDelete | Rule::NodeVendorPassthru | Rule::DriverVendorPassthru => {
                self.system_admin()
            }
            Rule::NodeDeleteSelfOwned => r("admin") && owner,
        }
    }
}

impl Caller {
    /// Whether this caller passes `rule` on `t`. A public route's caller
    /// passes nothing: a handler that checks a rule is not public.
    pub fn allows(&self, rule: Rule, t: Target) -> bool {
        match self {
            Caller::Public => false,
            Caller::Admin => true,
            Caller::Keystone(c) => c.allows(rule, t),
        }
    }

    /// The project a project-scoped caller's lists are limited to, when it
    /// may not list everything (`None`: no limit).
    pub fn list_scope(&self) -> Option<String> {
        match self {
            Caller::Keystone(c) if !c.allows(Rule::NodeListAll, Target::default()) => {
                // a token without a project sees nothing: an impossible id
                Some(c.project_id.clone().unwrap_or_else(|| "\u{1}no project".into()))
            }
            _ => None,
        }
    }

    /// The project a project-scoped caller is in.
    pub fn project(&self) -> Option<&str> {
        match self {
            Caller::Keystone(c) => c.project_id.as_deref(),
            _ => None,
        }
    }
}

/// The rule each top-level node field's change needs (Ironic's
/// `_authorize_patch_and_get_node`): `None` for the generic
/// `baremetal:node:update`.
pub fn patch_rule(path: &str, value: Option<&serde_json::Value>) -> Option<Rule> {
    let field = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let interface = field.ends_with("_interface") || field == "driver";
    Some(match field {
        "instance_info" => Rule::NodeUpdateInstanceInfo,
        "extra" => Rule::NodeUpdate,
        "automated_clean" if value.is_some_and(|v| v == &serde_json::Value::Bool(false) || v == "false") => {
            Rule::NodeUpdateSystemAdmin
        }
        "driver_info" | "properties" | "instance_uuid" | "lessee" | "network_data" | "name" | "retired"
        | "retired_reason" => Rule::NodeUpdateOwnerMember,
        _ if interface => Rule::NodeUpdateOwnerAdmin,
        "owner" | "conductor_group" | "parent_node" => Rule::NodeUpdateSystemMember,
        "chassis_uuid" | "shard" => Rule::NodeUpdateSystemAdmin,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(roles: &[&str], project: Option<&str>, system: bool) -> Credentials {
        let mut all: HashSet<String> = roles.iter().map(|r| r.to_string()).collect();
        // Keystone's implied roles
        if all.contains("admin") {
            all.insert("manager".into());
        }
        if all.contains("manager") {
            all.insert("member".into());
        }
        if all.contains("member") {
            all.insert("reader".into());
        }
        Credentials {
            project_id: project.map(String::from),
            project_name: project.map(String::from),
            system_all: system,
            roles: all,
            service_project_name: "service".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ironic_defaults_row_by_row() {
        let node = Target { owner: Some("p1"), lessee: Some("p2") };
        let sys_admin = creds(&["admin"], None, true);
        let sys_reader = creds(&["reader"], None, true);
        let owner_admin = creds(&["admin"], Some("p1"), false);
        let owner_member = creds(&["member"], Some("p1"), false);
        let owner_reader = creds(&["reader"], Some("p1"), false);
        let lessee_member = creds(&["member"], Some("p2"), false);
        let lessee_admin = creds(&["admin"], Some("p2"), false);
        let stranger_admin = creds(&["admin"], Some("p3"), false);
        let service = creds(&["service"], Some("service"), false);

        // reading
        for c in [&sys_admin, &sys_reader, &owner_reader, &lessee_member, &service] {
            assert!(c.allows(Rule::NodeGet, node), "{c:?}");
        }
        assert!(!stranger_admin.allows(Rule::NodeGet, node), "another project's admin does not see the node");
        assert!(owner_reader.allows(Rule::NodeGetRestricted, node));
        assert!(!lessee_admin.allows(Rule::NodeGetRestricted, node), "a lessee sees driver_info redacted");
        assert!(!owner_admin.allows(Rule::NodeListAll, node) && owner_admin.allows(Rule::NodeList, node));
        assert!(sys_reader.allows(Rule::NodeListAll, node));
        // changing
        assert!(!sys_reader.allows(Rule::NodeUpdate, node), "a system reader only reads");
        assert!(owner_member.allows(Rule::NodeUpdate, node) && lessee_member.allows(Rule::NodeUpdate, node));
        assert!(!owner_reader.allows(Rule::NodeUpdate, node));
        assert!(owner_member.allows(Rule::NodeAction, node));
        assert!(!lessee_member.allows(Rule::NodeAction, node), "a lessee needs admin or manager to provision");
        assert!(lessee_admin.allows(Rule::NodeAction, node));
        assert!(owner_member.allows(Rule::NodeUpdateOwnerMember, node));
        assert!(!lessee_admin.allows(Rule::NodeUpdateOwnerMember, node), "a lessee may not touch driver_info");
        assert!(
            !owner_member.allows(Rule::NodeUpdateOwnerAdmin, node)
                && owner_admin.allows(Rule::NodeUpdateOwnerAdmin, node)
        );
        assert!(!owner_admin.allows(Rule::NodeUpdateSystemMember, node), "only the system changes a node's owner");
        assert!(
            service.allows(Rule::NodeUpdateSystemMember, node),
            "the service project's service role is a system member"
        );
        // creating and deleting
        assert!(sys_admin.allows(Rule::NodeCreate, node) && !owner_admin.allows(Rule::NodeCreate, node));
        assert!(
            owner_admin.allows(Rule::NodeCreateSelfOwned, node)
                && !owner_member.allows(Rule::NodeCreateSelfOwned, node)
        );
        assert!(!owner_admin.allows(Rule::NodeDelete, node) && owner_admin.allows(Rule::NodeDeleteSelfOwned, node));
        assert!(!lessee_admin.allows(Rule::NodeDeleteSelfOwned, node));
        // system-wide things
        assert!(sys_reader.allows(Rule::SystemReader, Target::default()));
        assert!(!owner_admin.allows(Rule::SystemReader, Target::default()), "drivers and conductors are the system's");
        assert!(
            !owner_admin.allows(Rule::NodeVendorPassthru, node) && sys_admin.allows(Rule::NodeVendorPassthru, node)
        );
        // a token of no project matches no node's empty owner
        let nobody = creds(&["admin"], None, false);
        assert!(!nobody.allows(Rule::NodeGet, Target::default()));
        assert!(Caller::Keystone(Arc::new(nobody)).list_scope().is_some());
        assert_eq!(Caller::Admin.list_scope(), None);
        assert!(!Caller::Public.allows(Rule::NodeGet, node));
    }

    #[test]
    fn patch_paths_pick_ironics_field_rules() {
        assert_eq!(patch_rule("/instance_info/image_source", None), Some(Rule::NodeUpdateInstanceInfo));
        assert_eq!(patch_rule("/driver_info/redfish_address", None), Some(Rule::NodeUpdateOwnerMember));
        assert_eq!(patch_rule("/deploy_interface", None), Some(Rule::NodeUpdateOwnerAdmin));
        assert_eq!(patch_rule("/driver", None), Some(Rule::NodeUpdateOwnerAdmin));
        assert_eq!(patch_rule("/owner", None), Some(Rule::NodeUpdateSystemMember));
        assert_eq!(patch_rule("/automated_clean", Some(&serde_json::json!(false))), Some(Rule::NodeUpdateSystemAdmin));
        assert_eq!(patch_rule("/automated_clean", Some(&serde_json::json!(true))), None);
        assert_eq!(patch_rule("/description", None), None);
    }
}
