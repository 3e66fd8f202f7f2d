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

use std::collections::{BTreeMap, HashMap};

use fw_common::{Action, Direction};
use ipnet::IpNet;

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
    pub specific: Vec<u32>,
}

impl ClassRules {
    /// These rules plus `own` (ids into `all_rules`, file order, possibly
    /// repeated), without the rules that can no longer decide.
    pub fn with(&self, own: &[u32], all_rules: &[Rule]) -> ClassRules {
        let mut next = self.clone();
        for &id in own {
            let rule = &all_rules[id as usize];
            match (&rule.protocols, rule.action) {
                (Protocols::Any, Action::Deny) => next.any_deny = Some(next.any_deny.map_or(id, |d| d.min(id))),
                (Protocols::Any, Action::Allow) => next.any_allow = Some(next.any_allow.map_or(id, |a| a.min(id))),
                (Protocols::Only(_), _) => next.specific.push(id),
            }
        }
        next.specific.sort_unstable();
        next.specific.dedup();
        let (any_deny, any_allow) = (next.any_deny, next.any_allow);
        next.specific.retain(|&id| match all_rules[id as usize].action {
            // A deny after the first any-deny never comes first.
            Action::Deny => any_deny.is_none_or(|d| id < d),
            // An allow never decides under an any-deny, nor after the
            // first any-allow.
            Action::Allow => any_deny.is_none() && any_allow.is_none_or(|a| id < a),
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
/// into `all_rules`).
pub(crate) fn partition(rules: &[&Rule], all_rules: &[Rule]) -> AddressPartition {
    let mut entries = Vec::new();
    let mut class_of: HashMap<ClassRules, u32> = HashMap::new();
    let none = ClassRules::default();

    for direction in Direction::ALL {
        // CIDR -> ids of the rules naming it. `IpNet` orders IPv4 before
        // IPv6, then by network address, then by prefix length, so a CIDR
        // comes after every CIDR that contains it.
        let mut own_rules: BTreeMap<IpNet, Vec<u32>> = BTreeMap::new();
        for rule in rules.iter().filter(|r| r.direction == direction) {
            for net in &rule.peers {
                own_rules.entry(*net).or_default().push(rule.id);
            }
        }

        // The CIDRs containing the current one, outermost first, with the
        // rules deciding in them.
        let mut enclosing: Vec<(IpNet, ClassRules)> = Vec::new();
        for (net, own) in own_rules {
            while enclosing.last().is_some_and(|(outer, _)| !outer.contains(&net)) {
                enclosing.pop();
            }
            let inherited = enclosing.last().map_or(&none, |(_, rules)| rules);
            let here = inherited.with(&own, all_rules);
            if here == *inherited {
                // The enclosing entry already decides the same; an entry
                // here would only cost trie space.
                continue;
            }
            let next_id = class_of.len() as u32;
            let class = *class_of.entry(here.clone()).or_insert(next_id);
            entries.push(AddrClassEntry { direction, net, class });
            enclosing.push((net, here));
        }
    }
    let mut class_rules: Vec<ClassRules> = vec![ClassRules::default(); class_of.len()];
    for (rules, class) in class_of {
        class_rules[class as usize] = rules;
    }
    AddressPartition { entries, class_rules }
}
