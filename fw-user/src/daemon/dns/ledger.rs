//! What the DNS proxy has taught the kernel, kept beside the learned-address
//! maps so that their size stays bounded and `fw names` can say which name
//! an address was answered for.
//!
//! The kernel map holds, per address, the rules that allow it and until
//! when ([`Learned`]); this ledger adds the names it was answered for and
//! when it was last answered, and decides what to evict:
//! - at most `max_per_name` addresses per name (a CDN name rotating through
//!   ever new edges), the least recently answered of that name first;
//! - at most `max_total` addresses in all (a flood of random subdomains
//!   under an allowed wildcard, cilium#47128), the least recently answered
//!   first;
//! - never an address a live connection uses (it is skipped; when every
//!   candidate is in use the new address is not learned: the bound holds
//!   and the new connection fails closed, counted in `over_cap`).
//!
//! Changes come back as [`Change`]s for the proxy to write to the maps, so
//! this stays a pure data structure with unit and property tests.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use fw_common::names::{Learned, EMPTY_SLOT, NAME_SLOTS};

/// Names remembered per address (for `fw names`; the rules live in the
/// kernel value). A wildcard flood answering one address for ever new
/// names must not grow the ledger: the oldest name goes.
pub const NAMES_PER_ADDRESS: usize = 4;

/// The phase's bounds (`dns.max_addresses_per_name`, `dns.max_addresses`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub per_name: usize,
    pub total: usize,
}

/// A write the proxy owes the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Write(IpAddr, Learned),
    Remove(IpAddr),
}

/// One learned address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What the kernel holds for it.
    pub value: Learned,
    /// The names it was answered for, the most recent last.
    pub names: Vec<String>,
    /// When it was last answered ([`Ledger`]'s answer sequence).
    seq: u64,
}

#[derive(Debug)]
pub struct Ledger {
    caps: Caps,
    entries: HashMap<IpAddr, Entry>,
    by_name: HashMap<String, HashSet<IpAddr>>,
    /// Answer sequence -> address: the least recently answered first.
    lru: BTreeMap<u64, IpAddr>,
    seq: u64,
    /// Addresses removed to make room.
    pub evicted: u64,
    /// Answered addresses not learned because every candidate for eviction
    /// carried a live connection.
    pub over_cap: u64,
}

impl Ledger {
    pub fn new(caps: Caps) -> Self {
        Ledger {
            caps,
            entries: HashMap::new(),
            by_name: HashMap::new(),
            lru: BTreeMap::new(),
            seq: 0,
            evicted: 0,
            over_cap: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The learned addresses, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (&IpAddr, &Entry)> {
        self.entries.iter()
    }

    /// How many names have addresses.
    pub fn names(&self) -> usize {
        self.by_name.len()
    }

    /// New bounds (a phase switch): evicts down to them at once.
    pub fn set_caps(&mut self, caps: Caps, in_use: &mut dyn FnMut(IpAddr) -> bool) -> Vec<Change> {
        self.caps = caps;
        let mut changes = Vec::new();
        let names: Vec<String> =
            self.by_name.iter().filter(|(_, a)| a.len() > caps.per_name).map(|(n, _)| n.clone()).collect();
        for name in names {
            while self.by_name.get(&name).is_some_and(|a| a.len() > caps.per_name) {
                if !self.evict_from_name(&name, None, in_use, &mut changes) {
                    break;
                }
            }
        }
        while self.entries.len() > caps.total {
            if !self.evict_oldest(None, in_use, &mut changes) {
                break;
            }
        }
        changes
    }

    /// An answer for `name`, which `rules` match: each address is allowed
    /// for those rules until its `expires_ns`.
    pub fn learn(
        &mut self,
        name: &str,
        rules: &[u32],
        answers: &[(IpAddr, u64)],
        now: u64,
        in_use: &mut dyn FnMut(IpAddr) -> bool,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let answered: HashSet<IpAddr> = answers.iter().map(|(a, _)| *a).collect();
        for &(addr, expires) in answers {
            if !self.make_room(name, addr, &answered, in_use, &mut changes) {
                self.over_cap += 1;
                continue;
            }
            self.seq += 1;
            let seq = self.seq;
            let entry =
                self.entries.entry(addr).or_insert_with(|| Entry { value: Learned::EMPTY, names: Vec::new(), seq });
            self.lru.remove(&entry.seq);
            entry.seq = seq;
            self.lru.insert(seq, addr);
            for &rule in rules {
                merge(&mut entry.value, rule, expires, now);
            }
            entry.names.retain(|n| n != name);
            entry.names.push(name.to_string());
            let forgotten: Vec<String> = if entry.names.len() > NAMES_PER_ADDRESS {
                entry.names.drain(..entry.names.len() - NAMES_PER_ADDRESS).collect()
            } else {
                Vec::new()
            };
            let value = entry.value;
            for old in forgotten {
                self.unlink(&old, addr);
            }
            self.by_name.entry(name.to_string()).or_default().insert(addr);
            changes.push(Change::Write(addr, value));
        }
        changes
    }

    /// Room for `addr` as an address of `name`: under both caps, evicting
    /// what must go (never one of `answered`, never one in use). False
    /// when there is none to evict.
    fn make_room(
        &mut self,
        name: &str,
        addr: IpAddr,
        answered: &HashSet<IpAddr>,
        in_use: &mut dyn FnMut(IpAddr) -> bool,
        changes: &mut Vec<Change>,
    ) -> bool {
        if self.by_name.get(name).is_some_and(|a| a.contains(&addr)) {
            return true;
        }
        while self.by_name.get(name).is_some_and(|a| a.len() >= self.caps.per_name) {
            if !self.evict_from_name(name, Some(answered), in_use, changes) {
                return false;
            }
        }
        while !self.entries.contains_key(&addr) && self.entries.len() >= self.caps.total {
            if !self.evict_oldest(Some(answered), in_use, changes) {
                return false;
            }
        }
        true
    }

    /// Takes `name`'s least recently answered evictable address from it;
    /// the address goes too unless another name still holds it.
    fn evict_from_name(
        &mut self,
        name: &str,
        keep: Option<&HashSet<IpAddr>>,
        in_use: &mut dyn FnMut(IpAddr) -> bool,
        changes: &mut Vec<Change>,
    ) -> bool {
        let Some(addrs) = self.by_name.get(name) else { return false };
        let mut candidates: Vec<(u64, IpAddr)> =
            addrs.iter().filter(|a| !keep.is_some_and(|k| k.contains(a))).map(|a| (self.entries[a].seq, *a)).collect();
        candidates.sort_unstable();
        let Some(victim) = candidates.into_iter().map(|(_, a)| a).find(|a| !in_use(*a)) else { return false };
        self.unlink(name, victim);
        let entry = self.entries.get_mut(&victim).expect("linked addresses have entries");
        entry.names.retain(|n| n != name);
        if entry.names.is_empty() {
            self.remove(victim, changes);
            self.evicted += 1;
        }
        true
    }

    /// Removes the least recently answered evictable address.
    fn evict_oldest(
        &mut self,
        keep: Option<&HashSet<IpAddr>>,
        in_use: &mut dyn FnMut(IpAddr) -> bool,
        changes: &mut Vec<Change>,
    ) -> bool {
        let victim = self.lru.values().copied().filter(|a| !keep.is_some_and(|k| k.contains(a))).find(|a| !in_use(*a));
        match victim {
            Some(addr) => {
                self.remove(addr, changes);
                self.evicted += 1;
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, addr: IpAddr, changes: &mut Vec<Change>) {
        if let Some(entry) = self.entries.remove(&addr) {
            self.lru.remove(&entry.seq);
            for name in &entry.names {
                self.unlink(name, addr);
            }
            changes.push(Change::Remove(addr));
        }
    }

    fn unlink(&mut self, name: &str, addr: IpAddr) {
        if let Some(addrs) = self.by_name.get_mut(name) {
            addrs.remove(&addr);
            if addrs.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// Removes the addresses whose every rule has expired (not evictions).
    pub fn expire(&mut self, now: u64) -> Vec<Change> {
        let dead: Vec<IpAddr> = self.entries.iter().filter(|(_, e)| !live(&e.value, now)).map(|(a, _)| *a).collect();
        let mut changes = Vec::new();
        for addr in dead {
            self.remove(addr, &mut changes);
        }
        changes
    }

    /// Keeps only `rules` (a phase switch: what the new phase no longer has
    /// is forgotten; addresses left with no rule go).
    pub fn retain_rules(&mut self, rules: &HashSet<u32>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut emptied = Vec::new();
        for (addr, entry) in &mut self.entries {
            let before = entry.value;
            for i in 0..NAME_SLOTS {
                if entry.value.rule[i] != EMPTY_SLOT && !rules.contains(&entry.value.rule[i]) {
                    entry.value.rule[i] = EMPTY_SLOT;
                    entry.value.expires_ns[i] = 0;
                }
            }
            if entry.value.rule.iter().all(|r| *r == EMPTY_SLOT) {
                emptied.push(*addr);
            } else if entry.value != before {
                changes.push(Change::Write(*addr, entry.value));
            }
        }
        for addr in emptied {
            self.remove(addr, &mut changes);
        }
        changes
    }

    /// An address the kernel map already holds (learned before this daemon
    /// started), with the names saved for it, as if answered now. Nothing
    /// to write back.
    pub fn adopt(&mut self, addr: IpAddr, value: Learned, names: Vec<String>) {
        self.seq += 1;
        let seq = self.seq;
        for name in &names {
            self.by_name.entry(name.clone()).or_default().insert(addr);
        }
        if let Some(old) = self.entries.insert(addr, Entry { value, names, seq }) {
            self.lru.remove(&old.seq);
        }
        self.lru.insert(seq, addr);
    }
}

/// Does any rule still allow the address?
pub fn live(value: &Learned, now: u64) -> bool {
    (0..NAME_SLOTS).any(|i| value.rule[i] != EMPTY_SLOT && value.expires_ns[i] > now)
}

/// Puts `rule` with `expires` into `value`: its own slot (the later expiry
/// wins), else a free or expired one, else the one that expires first.
pub fn merge(value: &mut Learned, rule: u32, expires: u64, now: u64) {
    if let Some(i) = (0..NAME_SLOTS).find(|&i| value.rule[i] == rule) {
        value.expires_ns[i] = value.expires_ns[i].max(expires);
        return;
    }
    let i = (0..NAME_SLOTS)
        .find(|&i| value.rule[i] == EMPTY_SLOT || value.expires_ns[i] <= now)
        .unwrap_or_else(|| (0..NAME_SLOTS).min_by_key(|&i| value.expires_ns[i]).expect("NAME_SLOTS > 0"));
    value.rule[i] = rule;
    value.expires_ns[i] = expires;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xC612_0000 | n))
    }

    fn none_in_use() -> impl FnMut(IpAddr) -> bool {
        |_| false
    }

    #[test]
    fn merge_keeps_one_slot_per_rule_and_replaces_the_first_to_expire() {
        let mut v = Learned::EMPTY;
        merge(&mut v, 7, 100, 0);
        merge(&mut v, 7, 50, 0);
        assert_eq!((v.rule[0], v.expires_ns[0]), (7, 100), "the later expiry wins");
        for (rule, expires) in [(1, 10), (2, 20), (3, 30)] {
            merge(&mut v, rule, expires, 0);
        }
        merge(&mut v, 4, 40, 0);
        assert!(!v.rule.contains(&1) && v.rule.contains(&4), "{v:?}");
        // An expired slot is reused before a live one is evicted.
        merge(&mut v, 5, 60, 25);
        assert!(v.rule.contains(&3) && v.rule.contains(&5) && !v.rule.contains(&2), "{v:?}");
    }

    #[test]
    fn a_name_keeps_its_most_recently_answered_addresses() {
        let mut l = Ledger::new(Caps { per_name: 2, total: 100 });
        for n in 1..=3 {
            l.learn("cdn.test", &[1], &[(ip(n), 1000)], 0, &mut none_in_use());
        }
        let kept: HashSet<IpAddr> = l.entries().map(|(a, _)| *a).collect();
        assert_eq!(kept, HashSet::from([ip(2), ip(3)]));
        assert_eq!(l.evicted, 1);
        // Answered again, 2 becomes the newest: 3 goes next.
        let changes = l.learn("cdn.test", &[1], &[(ip(2), 1000), (ip(4), 1000)], 0, &mut none_in_use());
        assert!(changes.contains(&Change::Remove(ip(3))), "{changes:?}");
    }

    #[test]
    fn the_total_evicts_the_least_recently_answered_but_never_a_live_connection() {
        let mut l = Ledger::new(Caps { per_name: 100, total: 3 });
        for n in 1..=3 {
            l.learn(&format!("n{n}.flood.test"), &[1], &[(ip(n), 1000)], 0, &mut none_in_use());
        }
        // ip(1) is the oldest, but a connection uses it.
        let changes = l.learn("n4.flood.test", &[1], &[(ip(4), 1000)], 0, &mut |a| a == ip(1));
        assert_eq!(changes, vec![Change::Remove(ip(2)), Change::Write(ip(4), l.entries[&ip(4)].value)]);
        // Every candidate in use: the new address is not learned.
        let changes = l.learn("n5.flood.test", &[1], &[(ip(5), 1000)], 0, &mut |_| true);
        assert!(changes.is_empty());
        assert_eq!((l.len(), l.over_cap), (3, 1));
    }

    #[test]
    fn expiry_and_a_switch_forget_what_no_rule_allows() {
        let mut l = Ledger::new(Caps { per_name: 10, total: 10 });
        l.learn("a.test", &[1], &[(ip(1), 100)], 0, &mut none_in_use());
        l.learn("b.test", &[1, 2], &[(ip(2), 500)], 0, &mut none_in_use());
        assert_eq!(l.expire(200), vec![Change::Remove(ip(1))]);
        let changes = l.retain_rules(&HashSet::from([2]));
        assert!(
            matches!(changes.as_slice(), [Change::Write(a, v)] if *a == ip(2) && !v.rule.contains(&1)),
            "{changes:?}"
        );
        assert_eq!(l.retain_rules(&HashSet::new()), vec![Change::Remove(ip(2))]);
        assert_eq!((l.len(), l.names(), l.evicted), (0, 0, 0), "expiry is not eviction");
    }

    proptest! {
        /// Whatever is answered, the ledger stays within its caps, the
        /// per-name index agrees with the entries, every address in use
        /// stays, and the changes replayed on a map give the ledger's view.
        #[test]
        fn caps_hold_and_changes_mirror_the_ledger(
            per_name in 1usize..6,
            total in 1usize..12,
            answers in prop::collection::vec((0u8..8, prop::collection::vec(0u32..24, 1..4)), 1..60),
            in_use in prop::collection::hash_set(0u32..24, 0..4),
        ) {
            let mut l = Ledger::new(Caps { per_name, total });
            let mut kernel: HashMap<IpAddr, Learned> = HashMap::new();
            let used: HashSet<IpAddr> = in_use.iter().map(|n| ip(*n)).collect();
            for (i, (name, addrs)) in answers.iter().enumerate() {
                let name = format!("n{name}.test");
                let answers: Vec<(IpAddr, u64)> = addrs.iter().map(|n| (ip(*n), 1_000 + i as u64)).collect();
                let before: HashSet<IpAddr> = l.entries().map(|(a, _)| *a).filter(|a| used.contains(a)).collect();
                for change in l.learn(&name, &[1], &answers, 0, &mut |a| used.contains(&a)) {
                    match change {
                        Change::Write(a, v) => { kernel.insert(a, v); }
                        Change::Remove(a) => { kernel.remove(&a); }
                    }
                }
                prop_assert!(l.len() <= total);
                prop_assert!(l.by_name.values().all(|a| a.len() <= per_name));
                for a in before {
                    prop_assert!(l.entries.contains_key(&a), "an address in use was evicted");
                }
            }
            let view: HashMap<IpAddr, Learned> = l.entries().map(|(a, e)| (*a, e.value)).collect();
            prop_assert_eq!(kernel, view);
            for (name, addrs) in &l.by_name {
                for a in addrs {
                    prop_assert!(l.entries[a].names.contains(name));
                }
            }
            prop_assert_eq!(l.lru.len(), l.entries.len());
        }
    }
}
