//! The policy lookup: the active generation, then address -> class, then
//! {class, protocol, port} -> deciding rule. Precedence is settled by the
//! compiler (see `fw_common::policy`), so the kernel only takes the longest
//! match:
//!
//! 1. ICMPv6 neighbour discovery and MLD pass: without them IPv6 stops working.
//! 2. Address not in any rule's CIDRs -> the phase default.
//! 3. {class, proto, port} entry -> its rule and action; otherwise
//!    {class, proto} (any port), then {class} (any protocol).
//! 4. No entry -> the phase default.
//! 5. A deny in an audit-mode phase is counted as "would drop" and passes.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie},
};
use fw_common::{
    maps::{DEFAULT_ADDR_ENTRIES, DEFAULT_PORT_ENTRIES},
    policy::{proto, ADDR_KEY_FIXED_BITS, PORT_KEY_FULL_BITS},
    Action, AddrKey4, AddrKey6, Config, Direction, PhaseConfig, PolicyValue, PortKey, Reason,
};

use crate::{
    parse::{Addrs, Packet},
    verdict::Verdict,
};

#[map(name = "FW_CONFIG")]
static FW_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "FW_PHASES")]
static FW_PHASES: Array<PhaseConfig> = Array::with_max_entries(2, 0);

#[map(name = "FW_ADDR4")]
static FW_ADDR4: LpmTrie<AddrKey4, u32> = LpmTrie::with_max_entries(DEFAULT_ADDR_ENTRIES, 0);

#[map(name = "FW_ADDR6")]
static FW_ADDR6: LpmTrie<AddrKey6, u32> = LpmTrie::with_max_entries(DEFAULT_ADDR_ENTRIES, 0);

#[map(name = "FW_PORTS")]
static FW_PORTS: LpmTrie<PortKey, PolicyValue> = LpmTrie::with_max_entries(DEFAULT_PORT_ENTRIES, 0);

/// ICMPv6 types 130-137 (MLD query/report/done, router and neighbour
/// solicitation/advertisement, redirect) and 143 (MLDv2 report).
#[inline(always)]
fn is_icmpv6_control(pkt: &Packet) -> bool {
    if pkt.proto != proto::ICMPV6 {
        return false;
    }
    let ty = (pkt.dport >> 8) as u8;
    (130..=137).contains(&ty) || ty == 143
}

#[inline(always)]
pub fn decide(direction: Direction, pkt: &Packet) -> Verdict {
    if is_icmpv6_control(pkt) {
        return Verdict::new(Reason::PassIcmpControl, crate::verdict::NO_RULE);
    }
    // Fail closed: without configuration nothing is allowed.
    let Some(config) = FW_CONFIG.get(0) else { return Verdict::drop(Reason::DropDefault) };
    let generation = config.generation;
    let Some(phase) = FW_PHASES.get(generation & 1) else {
        return Verdict::drop(Reason::DropDefault);
    };
    let audit = phase.audit != 0;
    let default = match direction {
        Direction::Egress => phase.egress_default(),
        Direction::Inbound => phase.inbound_default(),
    };
    let value = match lookup_class(generation, direction, pkt) {
        Some(class) => {
            let key = Key::new(PORT_KEY_FULL_BITS, PortKey::new(generation, class, pkt.proto, pkt.dport));
            FW_PORTS.get(&key).copied()
        }
        None => None,
    };
    let verdict = match value {
        Some(v) => match v.action() {
            Action::Allow => Verdict::new(Reason::PassRule, v.rule),
            Action::Deny => Verdict::new(Reason::DropRule, v.rule),
        },
        None => match default {
            Action::Allow => Verdict::new(Reason::PassDefault, crate::verdict::NO_RULE),
            Action::Deny => Verdict::drop(Reason::DropDefault),
        },
    };
    if audit && verdict.reason.is_drop() {
        return Verdict::new(Reason::PassAudit, verdict.rule);
    }
    verdict
}

/// The address class of the peer: the destination on egress, the source on
/// inbound.
#[inline(always)]
fn lookup_class(generation: u32, direction: Direction, pkt: &Packet) -> Option<u32> {
    match pkt.addrs {
        Addrs::V4 { src, dst } => {
            let addr = if direction == Direction::Egress { dst } else { src };
            let key = Key::new(ADDR_KEY_FIXED_BITS + 32, AddrKey4::new(generation, direction, addr));
            FW_ADDR4.get(&key).copied()
        }
        Addrs::V6 { src, dst } => {
            let addr = if direction == Direction::Egress { dst } else { src };
            let key = Key::new(ADDR_KEY_FIXED_BITS + 128, AddrKey6::new(generation, direction, addr));
            FW_ADDR6.get(&key).copied()
        }
    }
}
