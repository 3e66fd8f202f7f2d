//! Address classes: the partition of address space that the `FW_ADDR4` /
//! `FW_ADDR6` tries encode.
//!
//! An LPM trie returns only the longest matching CIDR, but every rule whose
//! CIDR contains the address applies. So each CIDR's entry must carry the
//! rules of every CIDR containing it: its *rule set*. Distinct rule sets are
//! interned as classes, numbered densely from 0 in the order first met while
//! walking (direction, family, CIDR) in sorted order, so the numbering is
//! deterministic. IPv4 and IPv6 CIDRs with the same rule set share a class.
//!
//! Why containment suffices: two CIDRs are either nested or disjoint. If the
//! longest CIDR matching an address is C, every other CIDR containing the
//! address is shorter, so it contains C, and its rules are in C's set.

use std::collections::{BTreeMap, HashMap};

use fw_common::Direction;
use ipnet::IpNet;

use crate::policy::ir::Rule;

/// One address-trie entry before it is split by family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddrClassEntry {
    pub direction: Direction,
    pub net: IpNet,
    pub class: u32,
}

#[derive(Debug, Default)]
pub(crate) struct AddressPartition {
    pub entries: Vec<AddrClassEntry>,
    /// Rule ids of each class (index = class id), sorted = file order.
    pub class_rules: Vec<Vec<u32>>,
}

/// Partitions the peer addresses of `rules` (the rules of one phase).
pub(crate) fn partition(rules: &[&Rule]) -> AddressPartition {
    let mut partition = AddressPartition::default();
    let mut class_of_set: HashMap<Vec<u32>, u32> = HashMap::new();

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

        // The CIDRs containing the current one, outermost first, with their
        // full rule sets.
        let mut enclosing: Vec<(IpNet, Vec<u32>)> = Vec::new();
        for (net, own) in own_rules {
            while enclosing.last().is_some_and(|(outer, _)| !outer.contains(&net)) {
                enclosing.pop();
            }
            let inherited: &[u32] = enclosing.last().map_or(&[], |(_, set)| set.as_slice());
            let set = sorted_union(inherited, &own);
            if set == inherited {
                // The enclosing entry already yields this rule set; an entry
                // here would only cost trie space.
                continue;
            }
            let next_id = partition.class_rules.len() as u32;
            let class = *class_of_set.entry(set.clone()).or_insert_with(|| {
                partition.class_rules.push(set.clone());
                next_id
            });
            partition.entries.push(AddrClassEntry { direction, net, class });
            enclosing.push((net, set));
        }
    }
    partition
}

/// Union of a sorted, duplicate-free slice and an ascending list (rule ids
/// are pushed in file order, possibly repeated if a rule names a CIDR twice).
fn sorted_union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out.sort_unstable();
    out.dedup();
    out
}
