//! Address classes: the partition of address space that the `FW_ADDR4` /
//! `FW_ADDR6` tries encode.
//!
//! An LPM trie returns only the longest matching CIDR, but every rule whose
//! CIDR contains the address applies. So each CIDR's entry must carry what
//! the rules of every CIDR containing it decide: its [`ClassRules`]. Distinct
//! ones are interned as classes, numbered densely from 0 in the order first
//! met while walking (direction, family, CIDR) in sorted order, so the
//! numbering is deterministic. IPv4 and IPv6 CIDRs with the same rules
//! share a class.
//!
//! Why containment suffices: two CIDRs are either nested or disjoint. If the
//! longest CIDR matching an address is C, every other CIDR containing the
//! address is shorter, so it contains C, and its rules are in C's set.
//!
//! Why it scales: a class keeps only the rules that can still decide
//! something in it, not every rule around it. The first `proto: any` deny
//! decides every port it reaches, so no later deny and no allow can decide
//! under it; the first `proto: any` allow leaves no port to a later allow.
//! Those rules are dropped where the `any` rule joins, and stay dropped in
//! every CIDR nested inside (the set of `any` rules only grows inward). A
//! wide CIDR with thousands of rules around a narrow one then costs the
//! narrow one only the few rules that still matter, and the compiler's work
//! follows the size of its output, not rules times nesting depth.

use std::net::{Ipv4Addr, Ipv6Addr};

use foldhash::fast::FixedState;
use fw_common::{Action, Direction};
use indexmap::IndexSet;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smallvec::SmallVec;

use crate::policy::ir::{Protocols, Rule};

/// One address-trie entry before it is split by family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddrClassEntry {
    pub direction: Direction,
    pub net: IpNet,
    pub class: u32,
}

/// The rules that decide in one class: the decision for (protocol, port) is
/// the first matching deny, else the first matching allow, over these
/// exactly as over every rule containing the class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct ClassRules {
    /// The first `proto: any` deny and allow rule (ids = file order).
    pub any_deny: Option<u32>,
    pub any_allow: Option<u32>,
    /// The rules naming protocols that can still decide some port here,
    /// ascending.
    pub specific: SmallVec<[u32; 4]>,
}

/// What the partition needs to know of a rule: one byte, so that the
/// partition's random reads by rule id stay in cache (a [`Rule`] is about
/// 150 bytes; at 100,000 rules their reads missed the cache and made the
/// partition's time grow faster than the rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RuleKind {
    AnyDeny,
    AnyAllow,
    SpecificDeny,
    SpecificAllow,
}

/// The kind of every rule, indexed by rule id.
pub(crate) fn rule_kinds(all_rules: &[Rule]) -> Vec<RuleKind> {
    all_rules
        .iter()
        .map(|rule| match (&rule.protocols, rule.action) {
            (Protocols::Any, Action::Deny) => RuleKind::AnyDeny,
            (Protocols::Any, Action::Allow) => RuleKind::AnyAllow,
            (Protocols::Only(_), Action::Deny) => RuleKind::SpecificDeny,
            (Protocols::Only(_), Action::Allow) => RuleKind::SpecificAllow,
        })
        .collect()
}

impl ClassRules {
    /// These rules plus `own` (rule ids, file order, possibly repeated),
    /// without the rules that can no longer decide. `kinds` is
    /// [`rule_kinds`] of every rule.
    pub fn with(&self, own: &[u32], kinds: &[RuleKind]) -> ClassRules {
        let mut next = self.clone();
        for &id in own {
            match kinds[id as usize] {
                RuleKind::AnyDeny => next.any_deny = Some(next.any_deny.map_or(id, |d| d.min(id))),
                RuleKind::AnyAllow => next.any_allow = Some(next.any_allow.map_or(id, |a| a.min(id))),
                RuleKind::SpecificDeny | RuleKind::SpecificAllow => next.specific.push(id),
            }
        }
        next.specific.sort_unstable();
        next.specific.dedup();
        let (any_deny, any_allow) = (next.any_deny, next.any_allow);
        next.specific.retain(|id| match kinds[*id as usize] {
            // A deny after the first any-deny never comes first.
            RuleKind::SpecificDeny => any_deny.is_none_or(|d| *id < d),
            // An allow never decides under an any-deny, nor after the
            // first any-allow.
            _ => any_deny.is_none() && any_allow.is_none_or(|a| *id < a),
        });
        next
    }
}

#[derive(Debug, Default)]
pub(crate) struct AddressPartition {
    pub entries: Vec<AddrClassEntry>,
    /// The rules of each class (index = class id).
    pub class_rules: Vec<ClassRules>,
}

/// Partitions the peer addresses of `rules` (the rules of one phase, ids
/// into `kinds`, the [`rule_kinds`] of every rule).
pub(crate) fn partition(rules: &[&Rule], kinds: &[RuleKind]) -> AddressPartition {
    let mut entries = Vec::with_capacity(rules.len());
    // Interned in an index set: a class's number is its index, in walk
    // order whatever the hash. Its table holds indices, small enough to
    // stay in cache at 100,000 rules where a map of the class contents
    // missed it on every probe. A fixed-seed fast hash: the keys are the
    // policy's own rule ids.
    let mut classes: IndexSet<ClassRules, FixedState> =
        IndexSet::with_capacity_and_hasher(rules.len(), FixedState::default());
    let none = ClassRules::default();

    for direction in Direction::ALL {
        // (CIDR, id of a rule naming it) per family, sorted: a CIDR comes
        // after every CIDR that contains it, its rules in file order. IPv4
        // first, so classes are numbered in `IpNet`'s order.
        let (mut named4, mut named6) = (Vec::with_capacity(rules.len()), Vec::with_capacity(rules.len()));
        for rule in rules.iter().filter(|r| r.direction == direction) {
            for net in &rule.peers {
                match net {
                    IpNet::V4(_) => named4.push(Named::new(*net, rule.id)),
                    IpNet::V6(_) => named6.push(Named::new(*net, rule.id)),
                }
            }
        }
        for (mut named, bits) in [(named4, 32), (named6, 128)] {
            named.sort_unstable();
            let mut own: Vec<u32> = Vec::new();
            // The CIDRs containing the current one, outermost first, with
            // the rules deciding in them.
            let mut enclosing: Vec<(Named, ClassRules)> = Vec::new();
            for group in named.chunk_by(|a, b| a.same_cidr(b)) {
                let cidr = group[0];
                own.clear();
                own.extend(group.iter().map(|n| n.rule));
                while enclosing.last().is_some_and(|(outer, _)| !outer.contains(&cidr, bits)) {
                    enclosing.pop();
                }
                let inherited = enclosing.last().map_or(&none, |(_, rules)| rules);
                let here = inherited.with(&own, kinds);
                if here == *inherited {
                    // The enclosing entry already decides the same; an
                    // entry here would only cost trie space.
                    continue;
                }
                // Cloned only for a class not seen before.
                let class = match classes.get_index_of(&here) {
                    Some(class) => class as u32,
                    None => classes.insert_full(here.clone()).0 as u32,
                };
                entries.push(AddrClassEntry { direction, net: cidr.net(bits), class });
                enclosing.push((cidr, here));
            }
        }
    }
    AddressPartition { entries, class_rules: classes.into_iter().collect() }
}

/// A CIDR named by a rule, as integers. Sorting and containment tests on
/// `IpNet` (an enum; IPv6 addresses compared as bytes) were nearly half of
/// the partition's time at 100,000 rules. The derived order is the address,
/// then the prefix length, then the rule: within one family, `IpNet`'s
/// order, with a CIDR's rules in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Named {
    /// The network address (peers are canonical), IPv4 in the low 32 bits.
    addr: u128,
    len: u8,
    rule: u32,
}

impl Named {
    fn new(net: IpNet, rule: u32) -> Named {
        let addr = match net {
            IpNet::V4(v4) => u128::from(v4.network().to_bits()),
            IpNet::V6(v6) => v6.network().to_bits(),
        };
        Named { addr, len: net.prefix_len(), rule }
    }

    fn same_cidr(&self, other: &Named) -> bool {
        (self.addr, self.len) == (other.addr, other.len)
    }

    /// Does this CIDR contain `inner`'s (of the same family, `bits` wide)?
    fn contains(&self, inner: &Named, bits: u32) -> bool {
        self.len <= inner.len && (self.len == 0 || (self.addr ^ inner.addr) >> (bits - u32::from(self.len)) == 0)
    }

    fn net(&self, bits: u32) -> IpNet {
        let net = if bits == 32 {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from_bits(self.addr as u32), self.len).expect("prefix of a parsed CIDR"))
        } else {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from_bits(self.addr), self.len).expect("prefix of a parsed CIDR"))
        };
        debug_assert_eq!(net, net.trunc());
        net
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A canonical CIDR of either family. Addresses are drawn from a few
    /// values so that nesting and equal networks are common.
    fn cidr() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (prop::sample::select(vec![0u32, 0xC612_0000, 0xC612_0100, 0xC613_FFFF, u32::MAX]), 0u8..=32)
                .prop_map(|(a, len)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from_bits(a), len).unwrap()).trunc()),
            (prop::sample::select(vec![0u128, 0x2001_0db8 << 96, (0x2001_0db8 << 96) | 1, u128::MAX]), 0u8..=128)
                .prop_map(|(a, len)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from_bits(a), len).unwrap()).trunc()),
        ]
    }

    proptest! {
        /// The integer form sorts, compares and contains exactly as `IpNet`
        /// does within a family, and converts back unchanged.
        #[test]
        fn named_cidrs_behave_as_ipnet(a in cidr(), b in cidr()) {
            let bits = |n: &IpNet| if matches!(n, IpNet::V4(_)) { 32 } else { 128 };
            let (na, nb) = (Named::new(a, 1), Named::new(b, 2));
            prop_assert_eq!(na.net(bits(&a)), a);
            if bits(&a) == bits(&b) {
                prop_assert_eq!(na.contains(&nb, bits(&a)), a.contains(&b));
                prop_assert_eq!((na.addr, na.len).cmp(&(nb.addr, nb.len)), a.cmp(&b));
                prop_assert_eq!(na.same_cidr(&nb), a == b);
            }
        }
    }
}
