//! The compiler's output: the map contents of one phase, independent of the
//! generation number (the loader stamps the generation into every key).
//!
//! Invariant the compiler guarantees and the kernel relies on: for every
//! (direction, address, protocol, port) the longest matching address entry and
//! then the longest matching port entry of its class give the deciding rule of
//! the policy semantics, or no entry when the phase default decides.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fw_common::{
    policy::{ADDR_KEY_FIXED_BITS, PORT_KEY_CLASS_BITS, PORT_KEY_PROTO_BITS},
    Action, AddrKey4, AddrKey6, Direction, FlowTimeouts, PolicyValue, PortKey,
};

/// Per-phase switches that live in `FW_PHASES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhaseSettings {
    pub egress_default: Action,
    pub inbound_default: Action,
    pub audit: bool,
    /// The cgroup socket hooks refuse denied connect()/sendmsg() with EPERM
    /// (`reject: false` in the phase keeps silent drops).
    pub reject: bool,
    /// Idle timeouts of the flows, in seconds, every one set (`timeouts:`
    /// in the phase, else the defaults).
    pub timeouts: FlowTimeouts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct AddrEntry4 {
    pub direction: Direction,
    pub addr: Ipv4Addr,
    /// CIDR length, 0..=32.
    pub prefix_len: u8,
    pub class: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct AddrEntry6 {
    pub direction: Direction,
    pub addr: Ipv6Addr,
    /// CIDR length, 0..=128.
    pub prefix_len: u8,
    pub class: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortEntry {
    pub class: u32,
    /// `None`: any protocol (then `port` and `port_prefix_len` are 0).
    pub proto: Option<u8>,
    /// First port of the aligned block (ICMP: `type << 8 | code`).
    pub port: u16,
    /// 0..=16 leading bits of `port` that must match.
    pub port_prefix_len: u8,
    pub value: PolicyValue,
}

/// One rule of the policy file, in file order: `id` is its index, the rule id
/// in [`PolicyValue::rule`] and the index into `FW_RULE_STATS`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleInfo {
    pub id: u32,
    pub name: String,
    #[serde(with = "words::direction")]
    pub direction: Direction,
    #[serde(with = "words::action")]
    pub action: Action,
    /// Phase the rule is written in.
    pub phase: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompiledPhase {
    pub phase: String,
    pub settings: PhaseSettings,
    /// Sorted; deterministic for a given policy.
    pub addr4: Vec<AddrEntry4>,
    pub addr6: Vec<AddrEntry6>,
    pub ports: Vec<PortEntry>,
    /// Every rule of the policy file (all phases), indexed by rule id.
    pub rules: Vec<RuleInfo>,
    /// `dns.resolvers` of the phase (`None`: the phase has no `dns:`, DNS
    /// is judged by the rules like any traffic).
    pub dns: Option<Vec<crate::policy::ir::Resolver>>,
}

impl AddrEntry4 {
    /// LPM key (prefix length in bits, key bytes) for `generation`.
    pub fn key(&self, generation: u32) -> (u32, AddrKey4) {
        (
            ADDR_KEY_FIXED_BITS + u32::from(self.prefix_len),
            AddrKey4::new(generation, self.direction, self.addr.octets()),
        )
    }
}

impl AddrEntry6 {
    pub fn key(&self, generation: u32) -> (u32, AddrKey6) {
        (
            ADDR_KEY_FIXED_BITS + u32::from(self.prefix_len),
            AddrKey6::new(generation, self.direction, self.addr.octets()),
        )
    }
}

impl PortEntry {
    pub fn key(&self, generation: u32) -> (u32, PortKey) {
        match self.proto {
            None => (PORT_KEY_CLASS_BITS, PortKey::new(generation, self.class, 0, 0)),
            Some(p) => (
                PORT_KEY_PROTO_BITS + u32::from(self.port_prefix_len),
                PortKey::new(generation, self.class, p, self.port),
            ),
        }
    }
}

/// What a lookup in the compiled tables says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableVerdict {
    /// A rule decided.
    Rule(PolicyValue),
    /// No entry: the phase default decides.
    Default(Action),
}

impl TableVerdict {
    pub fn action(&self) -> Action {
        match self {
            TableVerdict::Rule(v) => v.action(),
            TableVerdict::Default(a) => *a,
        }
    }
    pub fn rule(&self) -> Option<u32> {
        match self {
            TableVerdict::Rule(v) => Some(v.rule),
            TableVerdict::Default(_) => None,
        }
    }
}

fn prefix_match(a: &[u8], b: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = bits % 8;
    rem == 0 || (a[full] ^ b[full]) >> (8 - rem) == 0
}

impl CompiledPhase {
    /// Reference lookup over the compiled entries, done the way the kernel's
    /// LPM tries do it (longest prefix wins), written plainly for `explain`
    /// and for the differential tests. `port` is `type << 8 | code` for ICMP
    /// and 0 for protocols without ports.
    pub fn lookup(&self, direction: Direction, addr: IpAddr, proto: u8, port: u16) -> TableVerdict {
        let default = match direction {
            Direction::Egress => self.settings.egress_default,
            Direction::Inbound => self.settings.inbound_default,
        };
        let class = match addr {
            IpAddr::V4(a) => self
                .addr4
                .iter()
                .filter(|e| {
                    e.direction == direction && prefix_match(&e.addr.octets(), &a.octets(), e.prefix_len.into())
                })
                .max_by_key(|e| e.prefix_len)
                .map(|e| e.class),
            IpAddr::V6(a) => self
                .addr6
                .iter()
                .filter(|e| {
                    e.direction == direction && prefix_match(&e.addr.octets(), &a.octets(), e.prefix_len.into())
                })
                .max_by_key(|e| e.prefix_len)
                .map(|e| e.class),
        };
        let Some(class) = class else { return TableVerdict::Default(default) };
        match self.lookup_class(class, proto, port) {
            Some(value) => TableVerdict::Rule(value),
            None => TableVerdict::Default(default),
        }
    }

    /// The port table's entry for (`class`, `proto`, `port`), most specific
    /// first, as the kernel's port trie finds it. A name rule's class is
    /// [`fw_common::names::name_class`] of its id.
    pub fn lookup_class(&self, class: u32, proto: u8, port: u16) -> Option<PolicyValue> {
        let port_bytes = port.to_be_bytes();
        self.ports
            .iter()
            .filter(|e| e.class == class)
            .filter(|e| match e.proto {
                None => true,
                Some(p) => p == proto && prefix_match(&e.port.to_be_bytes(), &port_bytes, e.port_prefix_len.into()),
            })
            .max_by_key(|e| e.proto.map_or(0, |_| 1 + u32::from(e.port_prefix_len)))
            .map(|e| e.value)
    }
}

/// [`RuleInfo`]'s direction and action as the words the state files have
/// always held (`"egress"`, `"allow"`...), so that an instance started by
/// an earlier fw is read the same.
mod words {
    macro_rules! word {
        ($module:ident, $type:ty, $all:expr) => {
            pub mod $module {
                use serde::{de::Error as _, Deserialize as _, Deserializer, Serializer};

                pub fn serialize<S: Serializer>(value: &$type, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str(value.as_str())
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$type, D::Error> {
                    let word = String::deserialize(d)?;
                    $all.into_iter()
                        .find(|v: &$type| v.as_str() == word)
                        .ok_or_else(|| D::Error::custom(format!("unknown {}: {word}", stringify!($module))))
                }
            }
        };
    }
    word!(direction, fw_common::Direction, fw_common::Direction::ALL);
    word!(action, fw_common::Action, [fw_common::Action::Allow, fw_common::Action::Deny]);
}

#[cfg(test)]
mod rule_info_tests {
    use super::*;

    #[test]
    fn rule_info_keeps_the_words_of_earlier_state_files() {
        // As an instance started by an earlier fw saved it.
        let saved = r#"{"id":3,"name":"web","direction":"egress","action":"deny","phase":"runtime"}"#;
        let rule: RuleInfo = serde_json::from_str(saved).unwrap();
        assert_eq!((rule.direction, rule.action), (Direction::Egress, Action::Deny));
        assert_eq!(serde_json::to_string(&rule).unwrap(), saved);
        let bad = saved.replace("egress", "sideways");
        let error = serde_json::from_str::<RuleInfo>(&bad).unwrap_err().to_string();
        assert!(error.contains("unknown direction: sideways"), "{error}");
    }
}
