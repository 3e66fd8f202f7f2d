//! Reference evaluator: the policy semantics written as plainly as possible,
//! straight over the normalized policy ([`crate::policy::ir`]).
//!
//! It shares no code with the compiler or with the table lookup on purpose:
//! the property tests compare the two, and a comparison between two copies
//! of the same code would prove nothing. Speed does not matter here.
//!
//! The semantics, as in `docs/policy.md`:
//! 1. The rules of a phase are its own plus those of the phases it extends.
//! 2. A rule matches when the peer address is in one of its CIDRs and the
//!    protocol and port are among its protocols and ports.
//! 3. If any matching rule denies, the packet is denied and the reported rule
//!    is the first such deny rule in file order.
//! 4. Otherwise, if any matching rule allows, it is allowed, reported rule the
//!    first such allow rule in file order.
//! 5. Otherwise the phase default for the direction decides, with no rule.

use std::net::IpAddr;

use fw_common::{Action, Direction};

use crate::policy::ir::{Policy, Protocols, Rule};

/// What the policy says about one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalVerdict {
    pub action: Action,
    /// The deciding rule's id, `None` when the phase default decided.
    pub rule: Option<u32>,
}

/// Evaluates one packet. `peer` is the destination on egress and the source
/// on inbound; `port` is the local/destination port (`type << 8 | code` for
/// ICMP, 0 for protocols without ports). `None` if `phase` does not exist.
pub fn evaluate(
    policy: &Policy,
    phase: &str,
    direction: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> Option<EvalVerdict> {
    let settings = policy.phases.iter().find(|p| p.name == phase)?.settings;

    // Step 1: the phase and its ancestors, walked here rather than through
    // `Policy::rules_of_phase`, which the compiler uses.
    let mut phases_in_effect: Vec<&str> = vec![phase];
    let mut current = phase;
    while let Some(parent) = policy.phases.iter().find(|p| p.name == current).and_then(|p| p.extends.as_deref()) {
        if phases_in_effect.contains(&parent) {
            break;
        }
        phases_in_effect.push(parent);
        current = parent;
    }

    let matching: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|rule| phases_in_effect.contains(&rule.phase.as_str()))
        .filter(|rule| rule.direction == direction)
        .filter(|rule| rule_matches(rule, peer, proto, port))
        .collect();

    // `policy.rules` is in file order, so `find` returns the first one.
    if let Some(rule) = matching.iter().find(|rule| rule.action == Action::Deny) {
        return Some(EvalVerdict { action: Action::Deny, rule: Some(rule.id) });
    }
    if let Some(rule) = matching.iter().find(|rule| rule.action == Action::Allow) {
        return Some(EvalVerdict { action: Action::Allow, rule: Some(rule.id) });
    }
    let default = match direction {
        Direction::Egress => settings.egress_default,
        Direction::Inbound => settings.inbound_default,
    };
    Some(EvalVerdict { action: default, rule: None })
}

/// Step 2.
fn rule_matches(rule: &Rule, peer: IpAddr, proto: u8, port: u16) -> bool {
    let address_matches = rule.peers.iter().any(|net| net.contains(&peer));
    let protocol_and_port_match = match &rule.protocols {
        Protocols::Any => true,
        Protocols::Only(list) => list.iter().any(|entry| {
            entry.proto == proto && entry.ports.iter().any(|range| range.first <= port && port <= range.last)
        }),
    };
    address_matches && protocol_and_port_match
}
