//! The port hash packets look up before the `FW_PORTS` trie
//! (`fw_common::port_hash`), built from a phase's port entries: per class,
//! its any-protocol answer, a head per protocol, and the exact ports of the
//! protocols whose longer entries do not all agree with the head.
//!
//! A class is hashed whole or not at all (a lookup that finds neither its
//! head nor its class entry asks the trie), in class order while it fits
//! the budget; the trie holds every entry, so nothing is refused.

use fw_common::{
    port_hash::{kind, then, PortHashKey, PortHashValue},
    PolicyValue,
};

use super::tables::PortEntry;

/// A key without its generation: (class, protocol, kind, port).
pub type Slot = (u32, u8, u8, u16);

/// A phase's port hash.
#[derive(Debug, Default)]
pub struct PortHash {
    /// One per key, in key order.
    pub entries: Vec<(Slot, PortHashValue)>,
    /// Classes hashed, and classes left to the trie.
    pub classes: usize,
    pub to_trie: usize,
}

impl PortHash {
    /// `entries` in any order (the compiler sorts them by class, protocol,
    /// port); at most `budget` hash entries.
    pub fn build(entries: &[PortEntry], budget: usize) -> PortHash {
        let mut sorted;
        let entries = if entries.is_sorted() {
            entries
        } else {
            sorted = entries.to_vec();
            sorted.sort_unstable();
            &sorted
        };
        let mut out = PortHash::default();
        for class in entries.chunk_by(|a, b| a.class == b.class) {
            let slots = class_slots(class);
            if out.entries.len() + slots.len() > budget {
                out.to_trie += 1;
                continue;
            }
            out.classes += 1;
            out.entries.extend(slots);
        }
        out
    }

    /// The entries as the map holds them, under `generation`.
    pub fn keyed(&self, generation: u32) -> (Vec<PortHashKey>, Vec<PortHashValue>) {
        self.entries
            .iter()
            .map(|&((class, proto, kind, port), value)| (PortHashKey::new(generation, class, proto, kind, port), value))
            .unzip()
    }

    /// What the kernel's lookup (`fw_ebpf::ports::rule`) answers from this
    /// table, `trie` standing for the `FW_PORTS` lookup.
    #[cfg(test)]
    pub fn lookup(
        &self,
        class: u32,
        proto: u8,
        port: u16,
        trie: impl Fn() -> Option<PolicyValue>,
    ) -> Option<PolicyValue> {
        let get = |slot: Slot| self.entries.binary_search_by_key(&slot, |e| e.0).ok().map(|i| self.entries[i].1);
        match get((class, proto, kind::PROTO, 0)) {
            Some(head) => {
                if head.then & then::EXACT != 0 {
                    if let Some(v) = get((class, proto, kind::PORT, port)) {
                        return v.answer();
                    }
                }
                if head.then & then::RANGES == 0 {
                    return head.answer();
                }
            }
            None => {
                if let Some(any) = get((class, 0, kind::CLASS, 0)) {
                    return any.answer();
                }
            }
        }
        trie()
    }
}

/// The hash entries of one class (`class`: its port entries, sorted), in
/// key order.
fn class_slots(class: &[PortEntry]) -> Vec<(Slot, PortHashValue)> {
    let id = class[0].class;
    // The any-protocol entry sorts first (`proto: None`).
    let any = class.iter().find(|e| e.proto.is_none()).map(|e| e.value);
    let mut slots = vec![((id, 0, kind::CLASS, 0), PortHashValue::new(any, 0))];
    let with_proto = class.iter().filter(|e| e.proto.is_some());
    let protos: Vec<&PortEntry> = with_proto.collect();
    for proto in protos.chunk_by(|a, b| a.proto == b.proto) {
        let p = proto[0].proto.unwrap_or_default();
        let answer: Option<PolicyValue> = proto.iter().find(|e| e.port_prefix_len == 0).map(|e| e.value).or(any);
        let longer = proto.iter().filter(|e| e.port_prefix_len > 0);
        let mut flags = 0;
        let mut exact = Vec::new();
        if !longer.clone().all(|e| Some(e.value) == answer) {
            for e in longer {
                if e.port_prefix_len == 16 {
                    flags |= then::EXACT;
                    exact.push(((id, p, kind::PORT, e.port), PortHashValue::new(Some(e.value), 0)));
                } else {
                    flags |= then::RANGES;
                }
            }
        }
        slots.push(((id, p, kind::PROTO, 0), PortHashValue::new(answer, flags)));
        slots.extend(exact);
    }
    slots.sort_unstable_by_key(|s| s.0);
    slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use fw_common::Action;
    use proptest::prelude::*;

    fn e(class: u32, proto: Option<u8>, port: u16, len: u8, rule: u32) -> PortEntry {
        let mask = if len == 0 { 0 } else { u16::MAX << (16 - len) };
        let action = if rule % 3 == 0 { Action::Deny } else { Action::Allow };
        PortEntry { class, proto, port: port & mask, port_prefix_len: len, value: PolicyValue::new(rule, action) }
    }

    /// What the trie answers: the longest entry of (class, proto) covering
    /// `port`, else the class's any-protocol one.
    fn longest_match(entries: &[PortEntry], class: u32, proto: u8, port: u16) -> Option<PolicyValue> {
        let covers = |x: &PortEntry| {
            x.class == class
                && match x.proto {
                    None => true,
                    Some(p) => {
                        let mask = if x.port_prefix_len == 0 { 0 } else { u16::MAX << (16 - x.port_prefix_len) };
                        p == proto && port & mask == x.port
                    }
                }
        };
        let bits = |x: &PortEntry| if x.proto.is_none() { 0 } else { 8 + u32::from(x.port_prefix_len) };
        entries.iter().filter(|x| covers(x)).max_by_key(|x| bits(x)).map(|x| x.value)
    }

    /// Entries of a few classes and protocols: any-protocol ones, whole
    /// protocols, exact ports and ranges, with values that often agree
    /// (so that heads without exact ports are built too); one per key.
    fn entries() -> impl Strategy<Value = Vec<PortEntry>> {
        let one = (
            0u32..4,
            prop::sample::select(vec![None, Some(1u8), Some(6), Some(17)]),
            0u16..64,
            prop::sample::select(vec![0u8, 0, 10, 12, 14, 15, 16, 16, 16]),
            0u32..4,
        );
        prop::collection::vec(one, 0..40).prop_map(|raw| {
            let mut out: Vec<PortEntry> = Vec::new();
            for (class, proto, port, len, rule) in raw {
                let len = if proto.is_none() { 0 } else { len };
                let x = e(class, proto, if len == 0 { 0 } else { port }, len, rule);
                if !out.iter().any(|o| {
                    (o.class, o.proto, o.port, o.port_prefix_len) == (x.class, x.proto, x.port, x.port_prefix_len)
                }) {
                    out.push(x);
                }
            }
            out
        })
    }

    proptest! {
        #[test]
        fn the_hash_and_the_trie_answer_the_longest_match(
            entries in entries(),
            budget in prop::option::of(0usize..12),
            probes in prop::collection::vec((0u32..5, prop::sample::select(vec![0u8, 1, 6, 17, 58]), 0u16..80), 60),
        ) {
            let budget = budget.unwrap_or(usize::MAX);
            let table = PortHash::build(&entries, budget);
            prop_assert!(table.entries.len() <= budget);
            prop_assert!(table.entries.windows(2).all(|w| w[0].0 < w[1].0), "sorted, one per key");
            let classes: std::collections::BTreeSet<u32> = entries.iter().map(|x| x.class).collect();
            prop_assert_eq!(table.classes + table.to_trie, classes.len());
            let mut all = probes.clone();
            for x in &entries {
                let p = x.proto.unwrap_or(6);
                let last = x.port | u16::MAX.checked_shr(u32::from(x.port_prefix_len)).unwrap_or(0);
                all.extend([(x.class, p, x.port), (x.class, p, last), (x.class, p, last.wrapping_add(1))]);
            }
            for (class, proto, port) in all {
                let want = longest_match(&entries, class, proto, port);
                prop_assert_eq!(table.lookup(class, proto, port, || want), want, "class {} proto {} port {}", class, proto, port);
            }
        }
    }

    #[test]
    fn agreeing_entries_need_one_lookup_and_ranges_the_trie() {
        let no_trie = || -> Option<PolicyValue> { panic!("the hash answers") };
        // bench-icmp: a whole protocol; an any-protocol class beside it.
        let icmp = [e(0, None, 0, 0, 1), e(0, Some(1), 0, 0, 2)];
        let table = PortHash::build(&icmp, usize::MAX);
        assert_eq!(table.entries.len(), 2);
        assert_eq!(table.lookup(0, 1, 0, no_trie), Some(icmp[1].value));
        assert_eq!(table.lookup(0, 6, 443, no_trie), Some(icmp[0].value), "any protocol");
        // An exact port that agrees with its protocol's rule adds nothing.
        let same = [e(0, Some(6), 0, 0, 2), e(0, Some(6), 443, 16, 2)];
        let table = PortHash::build(&same, usize::MAX);
        assert_eq!(table.entries.len(), 2);
        assert_eq!(table.entries[1].1.then, 0);
        // Exact ports and a range: exact first, the trie for the rest.
        let mixed = [e(0, Some(6), 25, 16, 3), e(0, Some(6), 1024, 6, 4)];
        let table = PortHash::build(&mixed, usize::MAX);
        assert_eq!(table.entries.len(), 3);
        assert_eq!(table.lookup(0, 6, 25, no_trie), Some(mixed[0].value));
        assert_eq!(table.lookup(0, 6, 1025, || Some(mixed[1].value)), Some(mixed[1].value));
        assert_eq!(table.lookup(0, 17, 25, no_trie), None, "no rule for UDP");
    }

    #[test]
    fn a_class_beyond_the_budget_is_left_to_the_trie() {
        let entries = [e(0, Some(6), 25, 16, 3), e(0, Some(6), 26, 16, 1), e(1, Some(17), 53, 16, 1)];
        let table = PortHash::build(&entries, 3);
        assert_eq!((table.classes, table.to_trie), (1, 1), "class 0 takes 4 entries, class 1 takes 3");
        assert!(table.entries.iter().all(|e| e.0 .0 == 1));
        assert_eq!(table.lookup(0, 6, 25, || Some(entries[0].value)), Some(entries[0].value));
    }
}
