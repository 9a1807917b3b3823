// TEMPORARY stand-in with the ring module's interface; replaced by the real placement.
use serde::{Deserialize, Serialize};
pub type RingEpoch = u64;
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub incarnation: String,
    pub grpc_url: String,
    pub http_url: String,
    pub conductor_group: String,
    pub hardware_types: Vec<String>,
    pub state: MemberState,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Active,
    Draining,
}
#[derive(Debug, Clone, PartialEq)]
pub struct RingSettings {
    pub partition_exponent: u8,
    pub load_epsilon: f64,
    pub replicas: usize,
}
impl Default for RingSettings {
    fn default() -> Self {
        RingSettings {
            partition_exponent: 16,
            load_epsilon: 0.05,
            replicas: 0,
        }
    }
}
pub fn partition_of(node_uuid: &[u8; 16], partition_exponent: u8) -> u32 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(node_uuid);
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]) >> (32 - u32::from(partition_exponent))
}
#[derive(Clone, Debug)]
pub struct Ring {
    epoch: RingEpoch,
    members: Vec<Member>,
    settings: RingSettings,
}
impl Ring {
    pub fn new(epoch: RingEpoch, mut members: Vec<Member>, settings: RingSettings) -> Ring {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ring {
            epoch,
            members,
            settings,
        }
    }
    pub fn empty(settings: RingSettings) -> Ring {
        Ring::new(0, vec![], settings)
    }
    pub fn epoch(&self) -> RingEpoch {
        self.epoch
    }
    pub fn members(&self) -> &[Member] {
        &self.members
    }
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
    pub fn settings(&self) -> &RingSettings {
        &self.settings
    }
    pub fn owner(&self, _node_uuid: &[u8; 16], g: &str, hw: &str) -> Option<&Member> {
        self.members.iter().find(|m| {
            m.state == MemberState::Active
                && m.conductor_group == g
                && m.hardware_types.iter().any(|h| h == hw)
        })
    }
    pub fn serves(&self, g: &str, hw: &str) -> bool {
        self.owner(&[0; 16], g, hw).is_some()
    }
}
