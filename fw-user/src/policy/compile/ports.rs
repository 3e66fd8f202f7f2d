//! Port entries of one address class: the contents of `FW_PORTS`.
//!
//! For a class, the deciding rule of a (protocol, port) is the first matching
//! deny rule in file order, else the first matching allow rule, else none
//! (phase default). The entries encode that with longest-prefix match:
//!
//! * one class-level "any protocol" entry holds the decision of the rules
//!   with `proto: any` (which is what a protocol that no rule names gets);
//! * for each protocol that a rule of the class names, the port space is cut
//!   into maximal segments of constant decision, and each segment whose
//!   decision differs from the any-protocol one is written as its minimal
//!   cover of aligned prefixes. Segments with the same decision need no
//!   entry: the lookup falls back to the shorter any-protocol entry.
//!
//! A segment can never be undecided while the any-protocol decision exists:
//! a `proto: any` rule matches every port of every protocol.

use std::collections::{BTreeSet, HashSet};

use fw_common::{Action, PolicyValue};

use crate::{
    policy::compile::{classes::ClassRules, tables::PortEntry},
    policy::ir::{PortRange, Protocols, Rule},
};

/// The minimal cover of `lo..=hi` by aligned power-of-two blocks, as
/// (first port, prefix length in bits of the 16-bit port). Empty if `lo > hi`.
pub fn range_to_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut blocks = Vec::new();
    let mut start = u32::from(lo);
    let end = u32::from(hi) + 1; // exclusive; may be 65536
    while start < end {
        // The largest block that starts aligned at `start` and fits before
        // `end`. `start == 0` is aligned to everything.
        let mut size_log2 = if start == 0 { 16 } else { start.trailing_zeros().min(16) };
        while start + (1 << size_log2) > end {
            size_log2 -= 1;
        }
        blocks.push((start as u16, (16 - size_log2) as u8));
        start += 1 << size_log2;
    }
    blocks
}

/// The protocols, ports and action of every rule, flat and indexed by rule
/// id. The port step reads them by rule id for every class; a [`Rule`] is
/// about 150 bytes with its protocol list and each protocol's ports behind
/// two more pointers, and at 100,000 nested rules those reads missed the
/// cache (`PortWriter::class` was 15% of the compile's samples). With this
/// table the 100,000-rule nested compile's fastest of 31 went from
/// 60-64 ms to 50-55 ms, the 10,000-rule one's from 4.1 to 3.9-4.1 ms.
struct FlatPorts {
    actions: Vec<Action>,
    /// Per rule id: its protocols' range in `protos` (empty: `proto: any`).
    by_rule: Vec<(u32, u32)>,
    /// (protocol, its ports' range in `ranges`), sorted by protocol per rule.
    protos: Vec<(u8, u32, u32)>,
    /// Every rule's port ranges, after [`ALL_PORTS`].
    ranges: Vec<PortRange>,
}

/// `ranges[0..1]` of [`FlatPorts`]: every port, what a `proto: any` rule
/// matches of each protocol.
const ALL_PORTS: (u32, u32) = (0, 1);

impl FlatPorts {
    fn new(all_rules: &[Rule]) -> FlatPorts {
        let mut flat = FlatPorts {
            actions: Vec::with_capacity(all_rules.len()),
            by_rule: Vec::with_capacity(all_rules.len()),
            protos: Vec::new(),
            ranges: vec![PortRange::ALL],
        };
        for (id, rule) in all_rules.iter().enumerate() {
            debug_assert_eq!(rule.id as usize, id, "rules are indexed by id");
            flat.actions.push(rule.action);
            let first = flat.protos.len() as u32;
            if let Protocols::Only(list) = &rule.protocols {
                for p in list {
                    let start = flat.ranges.len() as u32;
                    flat.ranges.extend_from_slice(&p.ports);
                    flat.protos.push((p.proto, start, flat.ranges.len() as u32));
                }
            }
            flat.by_rule.push((first, flat.protos.len() as u32));
        }
        flat
    }

    /// The protocols of rule `id` (none for `proto: any`).
    fn protos(&self, id: u32) -> &[(u8, u32, u32)] {
        let (first, end) = self.by_rule[id as usize];
        &self.protos[first as usize..end as usize]
    }

    /// The range in `ranges` of the ports rule `id` matches for `proto`, if
    /// it names it.
    fn ports(&self, id: u32, proto: u8) -> Option<(u32, u32)> {
        self.protos(id).iter().find(|p| p.0 == proto).map(|&(_, start, end)| (start, end))
    }
}

/// Writes the port entries of one class after another into one vector,
/// reusing its working vectors from class to class: a handful of
/// allocations per class (and a vector of entries per class, copied into
/// the output) were most of this step's time at 100,000 rules.
pub(crate) struct PortWriter {
    rules: FlatPorts,
    protocols: Vec<u8>,
    covering: Vec<Covering>,
    events: Vec<Event>,
    segments: Vec<Segment>,
}

/// A deciding rule of a class for one protocol: (rule id, action, the
/// range in [`FlatPorts::ranges`] of the ports it matches).
type Covering = (u32, Action, (u32, u32));

impl PortWriter {
    pub fn new(all_rules: &[Rule]) -> PortWriter {
        PortWriter {
            rules: FlatPorts::new(all_rules),
            protocols: Vec::new(),
            covering: Vec::new(),
            events: Vec::new(),
            segments: Vec::new(),
        }
    }

    /// Appends the entries of `class`, whose deciding rules are
    /// `class_rules`, to `entries`.
    pub fn class(&mut self, class: u32, class_rules: &ClassRules, entries: &mut Vec<PortEntry>) {
        let rules = &self.rules;
        let value_of = |id: u32| PolicyValue::new(id, rules.actions[id as usize]);

        // The first any-protocol deny, else the first any-protocol allow.
        let any_protocol_decision = class_rules.any_deny.or(class_rules.any_allow);
        if let Some(id) = any_protocol_decision {
            entries.push(PortEntry { class, proto: None, port: 0, port_prefix_len: 0, value: value_of(id) });
        }

        self.protocols.clear();
        for &id in &class_rules.specific {
            self.protocols.extend(rules.protos(id).iter().map(|p| p.0));
        }
        self.protocols.sort_unstable();
        self.protocols.dedup();

        for &proto in &self.protocols {
            // Every deciding rule of the class that matches some port of
            // `proto`, with the ports it matches there: the any-protocol
            // rules that matter on every port, then the specific ones.
            self.covering.clear();
            for id in [class_rules.any_deny, class_rules.any_allow].into_iter().flatten() {
                self.covering.push((id, rules.actions[id as usize], ALL_PORTS));
            }
            for &id in &class_rules.specific {
                if let Some(ports) = rules.ports(id, proto) {
                    self.covering.push((id, rules.actions[id as usize], ports));
                }
            }
            constant_decision_segments(&self.covering, &rules.ranges, &mut self.events, &mut self.segments);
            for segment in &self.segments {
                // Undecided segments cannot occur when an any-protocol
                // decision exists (see the module docs), and need no entry
                // otherwise.
                let Some(id) = segment.decision else { continue };
                if Some(id) == any_protocol_decision {
                    continue;
                }
                for (port, port_prefix_len) in range_to_prefixes(segment.first, segment.last) {
                    entries.push(PortEntry { class, proto: Some(proto), port, port_prefix_len, value: value_of(id) });
                }
            }
        }
    }
}

/// (position, rule id, action, starts here?) - positions are u32 so that the
/// end of a range reaching 65535 can be written as 65536.
type Event = (u32, u32, Action, bool);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    first: u16,
    last: u16,
    /// Deciding rule id, `None`: no rule matches.
    decision: Option<u32>,
}

/// Cuts 0..=65535 into maximal segments of constant decision (into
/// `segments`, cleared first) with one sweep over the range boundaries
/// (`events`: working space), keeping the active deny and allow rules in
/// ordered sets (the smallest id is the first in file order).
fn constant_decision_segments(
    covering: &[Covering],
    ranges: &[PortRange],
    events: &mut Vec<Event>,
    segments: &mut Vec<Segment>,
) {
    const END: u32 = 1 << 16;
    events.clear();
    segments.clear();
    for &(id, action, (start, end)) in covering {
        for range in &ranges[start as usize..end as usize] {
            events.push((u32::from(range.first), id, action, true));
            events.push((u32::from(range.last) + 1, id, action, false));
        }
    }
    events.sort_unstable_by_key(|&(pos, id, _, starts)| (pos, starts, id));

    let mut active_deny: BTreeSet<u32> = BTreeSet::new();
    let mut active_allow: BTreeSet<u32> = BTreeSet::new();
    let mut pos = 0u32;
    let mut next_event = 0usize;
    while pos < END {
        while next_event < events.len() && events[next_event].0 == pos {
            let (_, id, action, starts) = events[next_event];
            let set = if action == Action::Deny { &mut active_deny } else { &mut active_allow };
            if starts {
                set.insert(id);
            } else {
                set.remove(&id);
            }
            next_event += 1;
        }
        let until = events.get(next_event).map_or(END, |e| e.0); // exclusive
        let decision = active_deny.first().or(active_allow.first()).copied();
        match segments.last_mut() {
            Some(prev) if prev.decision == decision => prev.last = (until - 1) as u16,
            _ => segments.push(Segment { first: pos as u16, last: (until - 1) as u16, decision }),
        }
        pos = until;
    }
    debug_assert!(segments.iter().map(|s| s.first).collect::<HashSet<_>>().len() == segments.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: the ports each block covers, checked against the range,
    /// plus minimality against the greedy bound (no two blocks merge).
    fn covered(blocks: &[(u16, u8)]) -> Vec<u32> {
        let mut ports: Vec<u32> = blocks
            .iter()
            .flat_map(|&(start, len)| {
                let size = 1u32 << (16 - u32::from(len));
                assert_eq!(u32::from(start) % size, 0, "block {start}/{len} is not aligned");
                u32::from(start)..u32::from(start) + size
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The minimal number of aligned blocks covering lo..=hi, by dynamic
    /// programming over every aligned block (independent of the greedy code).
    fn minimal_block_count(lo: u32, hi: u32) -> usize {
        let mut best = vec![usize::MAX; (hi - lo + 2) as usize];
        best[0] = 0;
        for start in lo..=hi {
            let here = best[(start - lo) as usize];
            if here == usize::MAX {
                continue;
            }
            for log2 in 0..=16u32 {
                let size = 1u32 << log2;
                if start % size != 0 || start + size - 1 > hi {
                    continue;
                }
                let next = (start + size - lo) as usize;
                best[next] = best[next].min(here + 1);
            }
        }
        best[(hi - lo + 1) as usize]
    }

    #[test]
    fn documented_cover_sizes() {
        assert_eq!(range_to_prefixes(40000, 65535).len(), 6);
        assert_eq!(range_to_prefixes(10000, 50000).len(), 13);
        assert_eq!(range_to_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(443, 443), vec![(443, 16)]);
        assert_eq!(range_to_prefixes(65535, 65535), vec![(65535, 16)]);
        assert_eq!(range_to_prefixes(5, 4), vec![]);
    }

    #[test]
    fn cover_is_exact_and_minimal_for_every_small_range() {
        for lo in 0..=70u16 {
            for hi in lo..=70u16 {
                let blocks = range_to_prefixes(lo, hi);
                assert_eq!(covered(&blocks), (u32::from(lo)..=u32::from(hi)).collect::<Vec<_>>(), "{lo}-{hi}");
                assert_eq!(blocks.len(), minimal_block_count(lo.into(), hi.into()), "{lo}-{hi}");
            }
        }
    }

    #[test]
    fn cover_is_exact_and_minimal_near_the_top_and_at_random_spots() {
        let mut spots: Vec<(u16, u16)> = Vec::new();
        for lo in 65480..=65535u16 {
            for hi in lo..=65535u16 {
                spots.push((lo, hi));
            }
        }
        // A fixed pseudo-random walk (no rand crate needed) over wide ranges.
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..40 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let a = (x >> 16) as u16;
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let b = (x >> 16) as u16;
            spots.push((a.min(b), a.max(b)));
        }
        for (lo, hi) in spots {
            let blocks = range_to_prefixes(lo, hi);
            assert_eq!(covered(&blocks), (u32::from(lo)..=u32::from(hi)).collect::<Vec<_>>(), "{lo}-{hi}");
            assert_eq!(blocks.len(), minimal_block_count(lo.into(), hi.into()), "{lo}-{hi}");
        }
    }
}
