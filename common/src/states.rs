//! Ironic's provision state machine, as a pure module.
//!
//! States are the API strings (`wait call-back`, `clean failed`, ...);
//! events are the API verbs (`manage`, `provide`, `deploy`, ...) plus the
//! internal events a conductor raises while it works (`done`, `fail`,
//! `wait`, `resume`, `hold`). [`transition`] is the whole table; it also
//! says what `target_provision_state` becomes: the stable goal while a
//! transition runs, `None` in stable and failed states.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProvisionState {
    Enroll,
    Verifying,
    Manageable,
    Available,
    Active,
    Deploying,
    /// `wait call-back`
    DeployWait,
    DeployFailed,
    DeployHold,
    Deleting,
    Cleaning,
    CleanWait,
    CleanFailed,
    CleanHold,
    Inspecting,
    InspectWait,
    InspectFailed,
    Adopting,
    AdoptFailed,
    Rescuing,
    RescueWait,
    RescueFailed,
    Rescue,
    Unrescuing,
    UnrescueFailed,
    Servicing,
    ServiceWait,
    ServiceFailed,
    ServiceHold,
    Error,
}

use ProvisionState as S;

impl ProvisionState {
    pub const ALL: [ProvisionState; 30] = [
        S::Enroll,
        S::Verifying,
        S::Manageable,
        S::Available,
        S::Active,
        S::Deploying,
        S::DeployWait,
        S::DeployFailed,
        S::DeployHold,
        S::Deleting,
        S::Cleaning,
        S::CleanWait,
        S::CleanFailed,
        S::CleanHold,
        S::Inspecting,
        S::InspectWait,
        S::InspectFailed,
        S::Adopting,
        S::AdoptFailed,
        S::Rescuing,
        S::RescueWait,
        S::RescueFailed,
        S::Rescue,
        S::Unrescuing,
        S::UnrescueFailed,
        S::Servicing,
        S::ServiceWait,
        S::ServiceFailed,
        S::ServiceHold,
        S::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            S::Enroll => "enroll",
            S::Verifying => "verifying",
            S::Manageable => "manageable",
            S::Available => "available",
            S::Active => "active",
            S::Deploying => "deploying",
            S::DeployWait => "wait call-back",
            S::DeployFailed => "deploy failed",
            S::DeployHold => "deploy hold",
            S::Deleting => "deleting",
            S::Cleaning => "cleaning",
            S::CleanWait => "clean wait",
            S::CleanFailed => "clean failed",
            S::CleanHold => "clean hold",
            S::Inspecting => "inspecting",
            S::InspectWait => "inspect wait",
            S::InspectFailed => "inspect failed",
            S::Adopting => "adopting",
            S::AdoptFailed => "adopt failed",
            S::Rescuing => "rescuing",
            S::RescueWait => "rescue wait",
            S::RescueFailed => "rescue failed",
            S::Rescue => "rescue",
            S::Unrescuing => "unrescuing",
            S::UnrescueFailed => "unrescue failed",
            S::Servicing => "servicing",
            S::ServiceWait => "service wait",
            S::ServiceFailed => "service failed",
            S::ServiceHold => "service hold",
            S::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<ProvisionState> {
        S::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// `enroll`, `manageable`, `available`, `active`, `error`, `rescue`.
    pub fn is_stable(self) -> bool {
        matches!(self, S::Enroll | S::Manageable | S::Available | S::Active | S::Error | S::Rescue)
    }

    /// `* failed` and `error`.
    pub fn is_failed(self) -> bool {
        matches!(
            self,
            S::DeployFailed
                | S::CleanFailed
                | S::InspectFailed
                | S::AdoptFailed
                | S::RescueFailed
                | S::UnrescueFailed
                | S::ServiceFailed
                | S::Error
        )
    }

    /// Waiting for a ramdisk callback.
    pub fn is_wait(self) -> bool {
        matches!(self, S::DeployWait | S::CleanWait | S::InspectWait | S::RescueWait | S::ServiceWait)
    }

    pub fn is_hold(self) -> bool {
        matches!(self, S::DeployHold | S::CleanHold | S::ServiceHold)
    }

    /// A conductor is working on the node (`*ING`).
    pub fn is_in_progress(self) -> bool {
        matches!(
            self,
            S::Verifying
                | S::Deploying
                | S::Deleting
                | S::Cleaning
                | S::Inspecting
                | S::Adopting
                | S::Rescuing
                | S::Unrescuing
                | S::Servicing
        )
    }

    /// How the state is rendered at API version 1.`minor`: `available` is
    /// null ("NOSTATE") below 1.2, `inspect wait` is `inspecting` below 1.39.
    pub fn render(self, minor: u32) -> Option<&'static str> {
        match self {
            S::Available if minor < 2 => None,
            S::InspectWait if minor < 39 => Some("inspecting"),
            s => Some(s.as_str()),
        }
    }
}

impl fmt::Display for ProvisionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProvisionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProvisionState::parse(s).ok_or_else(|| format!("unknown provision state {s:?}"))
    }
}

impl Serialize for ProvisionState {
    fn serialize<Se: Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProvisionState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ProvisionState::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown provision state {s:?}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Manage,
    Provide,
    Deploy,
    Rebuild,
    Delete,
    Inspect,
    Clean,
    Abort,
    Adopt,
    Rescue,
    Unrescue,
    Unhold,
    Service,
    Done,
    Fail,
    Wait,
    Resume,
    Hold,
}

impl Event {
    pub const ALL: [Event; 18] = [
        Event::Manage,
        Event::Provide,
        Event::Deploy,
        Event::Rebuild,
        Event::Delete,
        Event::Inspect,
        Event::Clean,
        Event::Abort,
        Event::Adopt,
        Event::Rescue,
        Event::Unrescue,
        Event::Unhold,
        Event::Service,
        Event::Done,
        Event::Fail,
        Event::Wait,
        Event::Resume,
        Event::Hold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Manage => "manage",
            Event::Provide => "provide",
            Event::Deploy => "deploy",
            Event::Rebuild => "rebuild",
            Event::Delete => "delete",
            Event::Inspect => "inspect",
            Event::Clean => "clean",
            Event::Abort => "abort",
            Event::Adopt => "adopt",
            Event::Rescue => "rescue",
            Event::Unrescue => "unrescue",
            Event::Unhold => "unhold",
            Event::Service => "service",
            Event::Done => "done",
            Event::Fail => "fail",
            Event::Wait => "wait",
            Event::Resume => "resume",
            Event::Hold => "hold",
        }
    }

    pub fn is_api_verb(self) -> bool {
        !matches!(self, Event::Done | Event::Fail | Event::Wait | Event::Resume | Event::Hold)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API verb: `PUT /v1/nodes/<n>/states/provision {"target": ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Manage,
    Provide,
    Active,
    Deploy,
    Rebuild,
    Deleted,
    Undeploy,
    Inspect,
    Clean,
    Abort,
    Adopt,
    Rescue,
    Unrescue,
    Unhold,
    Service,
}

impl Verb {
    pub const ALL: [Verb; 15] = [
        Verb::Manage,
        Verb::Provide,
        Verb::Active,
        Verb::Deploy,
        Verb::Rebuild,
        Verb::Deleted,
        Verb::Undeploy,
        Verb::Inspect,
        Verb::Clean,
        Verb::Abort,
        Verb::Adopt,
        Verb::Rescue,
        Verb::Unrescue,
        Verb::Unhold,
        Verb::Service,
    ];

    pub fn parse(target: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == target)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Manage => "manage",
            Verb::Provide => "provide",
            Verb::Active => "active",
            Verb::Deploy => "deploy",
            Verb::Rebuild => "rebuild",
            Verb::Deleted => "deleted",
            Verb::Undeploy => "undeploy",
            Verb::Inspect => "inspect",
            Verb::Clean => "clean",
            Verb::Abort => "abort",
            Verb::Adopt => "adopt",
            Verb::Rescue => "rescue",
            Verb::Unrescue => "unrescue",
            Verb::Unhold => "unhold",
            Verb::Service => "service",
        }
    }

    pub fn event(self) -> Event {
        match self {
            Verb::Manage => Event::Manage,
            Verb::Provide => Event::Provide,
            Verb::Active | Verb::Deploy => Event::Deploy,
            Verb::Rebuild => Event::Rebuild,
            Verb::Deleted | Verb::Undeploy => Event::Delete,
            Verb::Inspect => Event::Inspect,
            Verb::Clean => Event::Clean,
            Verb::Abort => Event::Abort,
            Verb::Adopt => Event::Adopt,
            Verb::Rescue => Event::Rescue,
            Verb::Unrescue => Event::Unrescue,
            Verb::Unhold => Event::Unhold,
            Verb::Service => Event::Service,
        }
    }

    /// The first API version (1.N) that accepts the verb.
    pub fn min_minor(self) -> u32 {
        match self {
            Verb::Active | Verb::Rebuild | Verb::Deleted => 1,
            Verb::Manage | Verb::Provide => 4,
            Verb::Inspect => 6,
            Verb::Abort => 13,
            Verb::Clean => 15,
            Verb::Adopt => 17,
            Verb::Rescue | Verb::Unrescue => 38,
            Verb::Deploy | Verb::Undeploy => 73,
            Verb::Unhold => 85,
            Verb::Service => 87,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: ProvisionState,
    pub event: Event,
    pub to: ProvisionState,
    /// The new `target_provision_state`.
    pub target: Option<ProvisionState>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event \"{event}\" can not be performed on a node in state \"{state}\"")]
pub struct InvalidTransition {
    pub state: ProvisionState,
    pub event: &'static str,
}

/// The goal a transient state works toward (its `target_provision_state`).
/// `cleaning` and its wait/hold states need the current target to know
/// whether the clean is automated (→ available) or manual (→ manageable).
pub fn goal_of(state: ProvisionState, target: Option<ProvisionState>) -> Option<ProvisionState> {
    match state {
        S::Deploying | S::DeployWait | S::DeployHold | S::Adopting | S::Unrescuing => Some(S::Active),
        S::Servicing | S::ServiceWait | S::ServiceHold => Some(S::Active),
        S::Deleting => Some(S::Available),
        S::Cleaning | S::CleanWait | S::CleanHold => match target {
            Some(S::Manageable) => Some(S::Manageable),
            _ => Some(S::Available),
        },
        S::Verifying | S::Inspecting | S::InspectWait => Some(S::Manageable),
        S::Rescuing | S::RescueWait => Some(S::Rescue),
        _ => None,
    }
}

/// The state machine. `target` is the node's current
/// `target_provision_state`.
pub fn transition(
    from: ProvisionState,
    target: Option<ProvisionState>,
    event: Event,
) -> Result<Transition, InvalidTransition> {
    use Event as E;
    let to = match (from, event) {
        // manage
        (S::Enroll, E::Manage) => S::Verifying,
        (S::Available | S::CleanFailed | S::InspectFailed | S::AdoptFailed, E::Manage) => S::Manageable,
        (S::Verifying, E::Done) => S::Manageable,
        (S::Verifying, E::Fail) => S::Enroll,
        // provide / clean
        (S::Manageable, E::Provide) => S::Cleaning,
        (S::Manageable, E::Clean) => S::Cleaning,
        (S::Cleaning, E::Done) => goal_of(S::Cleaning, target).expect("cleaning has a goal"),
        (S::Cleaning | S::CleanWait | S::CleanHold, E::Fail) => S::CleanFailed,
        (S::Cleaning, E::Wait) => S::CleanWait,
        (S::CleanWait, E::Resume) => S::Cleaning,
        (S::Cleaning | S::CleanWait, E::Hold) => S::CleanHold,
        (S::CleanHold, E::Unhold) => S::CleanWait,
        (S::CleanWait | S::CleanHold, E::Abort) => S::CleanFailed,
        // deploy
        (S::Available | S::DeployFailed, E::Deploy) => S::Deploying,
        (S::Active | S::DeployFailed | S::Error, E::Rebuild) => S::Deploying,
        (S::Deploying, E::Done) => S::Active,
        (S::Deploying | S::DeployWait | S::DeployHold, E::Fail) => S::DeployFailed,
        (S::Deploying, E::Wait) => S::DeployWait,
        (S::DeployWait, E::Resume) => S::Deploying,
        (S::Deploying | S::DeployWait, E::Hold) => S::DeployHold,
        (S::DeployHold, E::Unhold) => S::DeployWait,
        (S::DeployWait | S::DeployHold, E::Abort) => S::DeployFailed,
        // undeploy
        (
            S::Active
            | S::DeployWait
            | S::DeployFailed
            | S::Error
            | S::Rescue
            | S::RescueWait
            | S::RescueFailed
            | S::UnrescueFailed
            | S::ServiceWait
            | S::ServiceFailed,
            E::Delete,
        ) => S::Deleting,
        (S::Deleting, E::Done) => S::Cleaning,
        (S::Deleting, E::Fail) => S::Error,
        // inspect
        (S::Manageable | S::InspectFailed, E::Inspect) => S::Inspecting,
        (S::Inspecting, E::Done) => S::Manageable,
        (S::Inspecting | S::InspectWait, E::Fail) => S::InspectFailed,
        (S::Inspecting, E::Wait) => S::InspectWait,
        (S::InspectWait, E::Resume) => S::Inspecting,
        (S::InspectWait, E::Abort) => S::InspectFailed,
        // adopt
        (S::Manageable | S::AdoptFailed, E::Adopt) => S::Adopting,
        (S::Adopting, E::Done) => S::Active,
        (S::Adopting, E::Fail) => S::AdoptFailed,
        // rescue
        (S::Active | S::Rescue | S::RescueFailed | S::UnrescueFailed | S::ServiceFailed, E::Rescue) => S::Rescuing,
        (S::Rescuing, E::Done) => S::Rescue,
        (S::Rescuing | S::RescueWait, E::Fail) => S::RescueFailed,
        (S::Rescuing, E::Wait) => S::RescueWait,
        (S::RescueWait, E::Resume) => S::Rescuing,
        (S::RescueWait, E::Abort) => S::RescueFailed,
        (S::Rescue | S::RescueFailed | S::UnrescueFailed, E::Unrescue) => S::Unrescuing,
        (S::Unrescuing, E::Done) => S::Active,
        (S::Unrescuing, E::Fail) => S::UnrescueFailed,
        // service
        (S::Active | S::ServiceHold | S::ServiceFailed, E::Service) => S::Servicing,
        (S::Servicing, E::Done) => S::Active,
        (S::Servicing | S::ServiceWait | S::ServiceHold, E::Fail) => S::ServiceFailed,
        (S::Servicing, E::Wait) => S::ServiceWait,
        (S::ServiceWait, E::Resume) => S::Servicing,
        (S::Servicing | S::ServiceWait, E::Hold) => S::ServiceHold,
        (S::ServiceHold, E::Unhold) => S::ServiceWait,
        (S::ServiceWait | S::ServiceHold, E::Abort) => S::ServiceFailed,
        (S::ServiceFailed, E::Abort) => S::Active,
        _ => {
            return Err(InvalidTransition { state: from, event: event.as_str() });
        }
    };
    // a manual clean (clean verb) works toward manageable, everything else
    // toward the goal of the state it enters
    let new_target = match (from, event) {
        (S::Manageable, E::Clean) => Some(S::Manageable),
        _ if to.is_stable() || to.is_failed() => None,
        _ => goal_of(to, target),
    };
    Ok(Transition { from, event, to, target: new_target })
}

/// The API verbs' events that are valid from `state`.
pub fn api_events_from(state: ProvisionState) -> Vec<Event> {
    Event::ALL.into_iter().filter(|e| e.is_api_verb() && transition(state, None, *e).is_ok()).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerbError {
    /// Needs a newer microversion (406).
    NotAcceptable { min_minor: u32 },
    /// Not actionable from the node's state (400, or 409 if locked).
    InvalidState,
}

/// Check a verb at API version 1.`minor` against the node's state.
pub fn verb_check(verb: Verb, minor: u32, state: ProvisionState) -> Result<Event, VerbError> {
    if minor < verb.min_minor() {
        return Err(VerbError::NotAcceptable { min_minor: verb.min_minor() });
    }
    if verb == Verb::Abort && state == S::DeployWait && minor < 110 {
        return Err(VerbError::NotAcceptable { min_minor: 110 });
    }
    let event = verb.event();
    transition(state, goal_of(state, None), event).map(|_| event).map_err(|_| VerbError::InvalidState)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, VecDeque};

    fn t(from: S, target: Option<S>, e: Event) -> (S, Option<S>) {
        let t = transition(from, target, e).unwrap_or_else(|err| panic!("{err}"));
        (t.to, t.target)
    }

    #[test]
    fn api_table() {
        use Event as E;
        // manage
        assert_eq!(t(S::Enroll, None, E::Manage), (S::Verifying, Some(S::Manageable)));
        assert_eq!(t(S::Verifying, Some(S::Manageable), E::Done), (S::Manageable, None));
        assert_eq!(t(S::Verifying, Some(S::Manageable), E::Fail), (S::Enroll, None));
        for s in [S::Available, S::CleanFailed, S::InspectFailed, S::AdoptFailed] {
            assert_eq!(t(s, None, E::Manage), (S::Manageable, None));
        }
        // provide
        assert_eq!(t(S::Manageable, None, E::Provide), (S::Cleaning, Some(S::Available)));
        assert_eq!(t(S::Cleaning, Some(S::Available), E::Done), (S::Available, None));
        assert_eq!(t(S::Cleaning, Some(S::Available), E::Wait), (S::CleanWait, Some(S::Available)));
        assert_eq!(t(S::CleanWait, Some(S::Available), E::Resume), (S::Cleaning, Some(S::Available)));
        assert_eq!(t(S::Cleaning, Some(S::Available), E::Fail), (S::CleanFailed, None));
        // deploy
        for s in [S::Available, S::DeployFailed] {
            assert_eq!(t(s, None, E::Deploy), (S::Deploying, Some(S::Active)));
        }
        assert_eq!(t(S::Deploying, Some(S::Active), E::Wait), (S::DeployWait, Some(S::Active)));
        assert_eq!(t(S::DeployWait, Some(S::Active), E::Resume), (S::Deploying, Some(S::Active)));
        assert_eq!(t(S::Deploying, Some(S::Active), E::Done), (S::Active, None));
        assert_eq!(t(S::Deploying, Some(S::Active), E::Fail), (S::DeployFailed, None));
        assert_eq!(t(S::Deploying, Some(S::Active), E::Hold), (S::DeployHold, Some(S::Active)));
        assert_eq!(t(S::DeployHold, Some(S::Active), E::Unhold), (S::DeployWait, Some(S::Active)));
        // rebuild
        for s in [S::Active, S::DeployFailed, S::Error] {
            assert_eq!(t(s, None, E::Rebuild), (S::Deploying, Some(S::Active)));
        }
        // undeploy
        for s in [
            S::Active,
            S::DeployWait,
            S::DeployFailed,
            S::Error,
            S::Rescue,
            S::RescueWait,
            S::RescueFailed,
            S::UnrescueFailed,
            S::ServiceWait,
            S::ServiceFailed,
        ] {
            assert_eq!(t(s, None, E::Delete), (S::Deleting, Some(S::Available)), "{s}");
        }
        assert_eq!(t(S::Deleting, Some(S::Available), E::Done), (S::Cleaning, Some(S::Available)));
        assert_eq!(t(S::Deleting, Some(S::Available), E::Fail), (S::Error, None));
        // inspect
        for s in [S::Manageable, S::InspectFailed] {
            assert_eq!(t(s, None, E::Inspect), (S::Inspecting, Some(S::Manageable)));
        }
        assert_eq!(t(S::Inspecting, Some(S::Manageable), E::Wait), (S::InspectWait, Some(S::Manageable)));
        assert_eq!(t(S::Inspecting, Some(S::Manageable), E::Done), (S::Manageable, None));
        assert_eq!(t(S::Inspecting, Some(S::Manageable), E::Fail), (S::InspectFailed, None));
        // manual clean
        assert_eq!(t(S::Manageable, None, E::Clean), (S::Cleaning, Some(S::Manageable)));
        assert_eq!(t(S::Cleaning, Some(S::Manageable), E::Done), (S::Manageable, None));
        assert_eq!(t(S::Cleaning, Some(S::Manageable), E::Wait), (S::CleanWait, Some(S::Manageable)));
        // abort
        assert_eq!(t(S::DeployWait, Some(S::Active), E::Abort), (S::DeployFailed, None));
        assert_eq!(t(S::DeployHold, Some(S::Active), E::Abort), (S::DeployFailed, None));
        assert_eq!(t(S::CleanWait, Some(S::Available), E::Abort), (S::CleanFailed, None));
        assert_eq!(t(S::CleanHold, Some(S::Available), E::Abort), (S::CleanFailed, None));
        assert_eq!(t(S::InspectWait, Some(S::Manageable), E::Abort), (S::InspectFailed, None));
        assert_eq!(t(S::RescueWait, Some(S::Rescue), E::Abort), (S::RescueFailed, None));
        assert_eq!(t(S::ServiceWait, Some(S::Active), E::Abort), (S::ServiceFailed, None));
        assert_eq!(t(S::ServiceHold, Some(S::Active), E::Abort), (S::ServiceFailed, None));
        assert_eq!(t(S::ServiceFailed, None, E::Abort), (S::Active, None));
        // adopt
        for s in [S::Manageable, S::AdoptFailed] {
            assert_eq!(t(s, None, E::Adopt), (S::Adopting, Some(S::Active)));
        }
        assert_eq!(t(S::Adopting, Some(S::Active), E::Done), (S::Active, None));
        assert_eq!(t(S::Adopting, Some(S::Active), E::Fail), (S::AdoptFailed, None));
        // rescue / unrescue
        for s in [S::Active, S::Rescue, S::RescueFailed, S::UnrescueFailed, S::ServiceFailed] {
            assert_eq!(t(s, None, E::Rescue), (S::Rescuing, Some(S::Rescue)), "{s}");
        }
        assert_eq!(t(S::Rescuing, Some(S::Rescue), E::Wait), (S::RescueWait, Some(S::Rescue)));
        assert_eq!(t(S::Rescuing, Some(S::Rescue), E::Done), (S::Rescue, None));
        assert_eq!(t(S::Rescuing, Some(S::Rescue), E::Fail), (S::RescueFailed, None));
        for s in [S::Rescue, S::RescueFailed, S::UnrescueFailed] {
            assert_eq!(t(s, None, E::Unrescue), (S::Unrescuing, Some(S::Active)));
        }
        assert_eq!(t(S::Unrescuing, Some(S::Active), E::Done), (S::Active, None));
        assert_eq!(t(S::Unrescuing, Some(S::Active), E::Fail), (S::UnrescueFailed, None));
        // unhold
        assert_eq!(t(S::CleanHold, Some(S::Available), E::Unhold), (S::CleanWait, Some(S::Available)));
        assert_eq!(t(S::ServiceHold, Some(S::Active), E::Unhold), (S::ServiceWait, Some(S::Active)));
        // service
        for s in [S::Active, S::ServiceHold, S::ServiceFailed] {
            assert_eq!(t(s, None, E::Service), (S::Servicing, Some(S::Active)));
        }
        assert_eq!(t(S::Servicing, Some(S::Active), E::Done), (S::Active, None));
        assert_eq!(t(S::Servicing, Some(S::Active), E::Fail), (S::ServiceFailed, None));
    }

    #[test]
    fn refused_transitions() {
        use Event as E;
        for (s, e) in [
            (S::Enroll, E::Provide),
            (S::Manageable, E::Deploy),
            (S::Active, E::Manage),
            (S::Enroll, E::Deploy),
            (S::Available, E::Delete),
            (S::Deploying, E::Deploy),
            (S::Active, E::Abort),
            (S::Available, E::Unrescue),
            (S::Enroll, E::Done),
        ] {
            assert!(transition(s, None, e).is_err(), "{s} {e}");
        }
    }

    #[test]
    fn verb_versions() {
        assert_eq!(verb_check(Verb::Manage, 3, S::Enroll), Err(VerbError::NotAcceptable { min_minor: 4 }));
        assert_eq!(verb_check(Verb::Manage, 4, S::Enroll), Ok(Event::Manage));
        assert_eq!(verb_check(Verb::Deploy, 72, S::Available), Err(VerbError::NotAcceptable { min_minor: 73 }));
        assert_eq!(verb_check(Verb::Active, 1, S::Available), Ok(Event::Deploy));
        assert_eq!(verb_check(Verb::Abort, 109, S::DeployWait), Err(VerbError::NotAcceptable { min_minor: 110 }));
        assert_eq!(verb_check(Verb::Abort, 109, S::CleanWait), Ok(Event::Abort));
        assert_eq!(verb_check(Verb::Provide, 115, S::Enroll), Err(VerbError::InvalidState));
        assert_eq!(S::Available.render(1), None);
        assert_eq!(S::InspectWait.render(38), Some("inspecting"));
        assert_eq!(S::InspectWait.render(39), Some("inspect wait"));
    }

    fn reachable_from_enroll() -> BTreeSet<S> {
        let mut seen = BTreeSet::from([S::Enroll]);
        let mut queue = VecDeque::from([(S::Enroll, None)]);
        while let Some((s, target)) = queue.pop_front() {
            for e in Event::ALL {
                if let Ok(t) = transition(s, target, e)
                    && seen.insert(t.to)
                {
                    queue.push_back((t.to, t.target));
                }
            }
        }
        seen
    }

    #[test]
    fn every_state_is_reachable_from_enroll() {
        assert_eq!(reachable_from_enroll().len(), S::ALL.len());
    }

    #[test]
    fn no_trap_states() {
        // from every non-stable state, internal events and abort lead to a
        // stable or failed state
        for s in S::ALL {
            if s.is_stable() || s.is_failed() {
                continue;
            }
            let target = goal_of(s, None);
            let mut seen = BTreeSet::new();
            let mut queue = VecDeque::from([(s, target)]);
            let mut escapes = false;
            while let Some((x, tg)) = queue.pop_front() {
                if x.is_stable() || x.is_failed() {
                    escapes = true;
                    break;
                }
                for e in [Event::Done, Event::Fail, Event::Resume, Event::Abort, Event::Unhold] {
                    if let Ok(t) = transition(x, tg, e)
                        && seen.insert(t.to)
                    {
                        queue.push_back((t.to, t.target));
                    }
                }
            }
            assert!(escapes, "{s} is a trap");
        }
    }

    #[test]
    fn verbs_match_api_events() {
        for s in S::ALL {
            let by_verb: BTreeSet<&str> =
                Verb::ALL.into_iter().filter(|v| verb_check(*v, 115, s).is_ok()).map(|v| v.event().as_str()).collect();
            let by_table: BTreeSet<&str> = api_events_from(s).into_iter().map(|e| e.as_str()).collect();
            assert_eq!(by_verb, by_table, "{s}");
        }
    }

    proptest! {
        #[test]
        fn random_walks_keep_the_target_invariant(events in proptest::collection::vec(0usize..Event::ALL.len(), 1..200)) {
            let (mut s, mut target) = (S::Enroll, None);
            for i in events {
                if let Ok(t) = transition(s, target, Event::ALL[i]) {
                    prop_assert!(S::ALL.contains(&t.to));
                    prop_assert_eq!(t.target.is_none(), t.to.is_stable() || t.to.is_failed(), "{} -> {}", s, t.to);
                    s = t.to;
                    target = t.target;
                }
            }
        }

        #[test]
        fn names_round_trip(i in 0usize..30) {
            let s = S::ALL[i];
            prop_assert_eq!(S::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(serde_json::from_str::<S>(&json).unwrap(), s);
        }
    }
}
