//! The hash of /64s packets look IPv6 peers up in (`fw_common::addr6`),
//! built from a phase's IPv6 entries: the same prefix -> class map as
//! `FW_ADDR6`'s longest match, for a phase with many IPv6 entries.
//!
//! Each /64 that is a prefix of the phase or holds longer ones gets the
//! longest prefix up to /64 that covers it: only the lengths the phase
//! uses are tried, longest first, so the build is linear in the entries
//! times the distinct lengths (a handful in real policies).

use std::collections::HashMap;

use fw_common::{
    dir4::{found, HOSTS, MISS, TRIE},
    Direction,
};

use super::tables::AddrEntry6;

/// A phase's hash: what `FW_ADDR6_NETS` and `FW_ADDR6_HOSTS` hold for it,
/// and its miss entries (`PhaseConfig::addr6_miss`).
#[derive(Debug, Default)]
pub struct Table6 {
    /// ((direction, /64), entry), sorted.
    pub nets: Vec<((Direction, u64), u32)>,
    /// ((direction, address), `found(class)`), sorted.
    pub hosts: Vec<((Direction, u128), u32)>,
    /// Per direction (`Direction as usize`): the entry of a /64 the hash
    /// does not hold.
    pub miss: [u32; 2],
}

impl Table6 {
    /// The hash a phase with these IPv6 entries is looked up through, when
    /// its maps hold `room` entries each for it: only from `from` entries
    /// (`fw_common::addr6::HASH_FROM_ENTRIES`, where the hash was measured
    /// faster than the trie), and when it fits. `None`: the trie alone.
    pub fn for_phase(entries: &[AddrEntry6], from: usize, room: usize) -> Option<Table6> {
        if entries.len() < from {
            return None;
        }
        let table = Table6::build(entries);
        (table.nets.len() <= room && table.hosts.len() <= room).then_some(table)
    }

    pub fn build(entries: &[AddrEntry6]) -> Table6 {
        let mut table = Table6::default();
        for d in Direction::ALL {
            let of_d = || entries.iter().filter(move |e| e.direction == d);
            // Prefixes up to /64 by (length, network), and their lengths,
            // longest first.
            let mut short: HashMap<(u8, u128), u32> = HashMap::new();
            let mut lengths: Vec<u8> = Vec::new();
            for e in of_d().filter(|e| e.prefix_len <= 64) {
                short.insert((e.prefix_len, u128::from(e.addr) & mask(e.prefix_len)), e.class);
                lengths.push(e.prefix_len);
            }
            lengths.sort_unstable_by(|a, b| b.cmp(a));
            lengths.dedup();
            let best = |net: u128| {
                lengths.iter().find_map(|&len| short.get(&(len, net & mask(len))).map(|&c| found(c))).unwrap_or(MISS)
            };
            table.miss[d as usize] = if lengths.iter().any(|&len| (1..64).contains(&len)) { TRIE } else { best(0) };
            let mut nets: HashMap<u64, u32> = HashMap::new();
            for e in of_d().filter(|e| e.prefix_len >= 64) {
                let addr = u128::from(e.addr);
                let net = (addr >> 64) as u64;
                let entry = nets.entry(net).or_insert_with(|| best(u128::from(net) << 64));
                match e.prefix_len {
                    64 => {}
                    128 => {
                        *entry |= HOSTS;
                        table.hosts.push(((d, addr), found(e.class)));
                    }
                    _ => *entry |= TRIE,
                }
            }
            table.nets.extend(nets.into_iter().map(|(net, entry)| ((d, net), entry)));
        }
        table.nets.sort_unstable();
        table.hosts.sort_unstable();
        table
    }

    /// What the kernel answers for `addr` (`fw_ebpf::addr6::class`), as a
    /// `dir4` entry; `trie` answers where the table leaves it to the trie.
    pub fn lookup(&self, d: Direction, addr: u128, trie: impl FnOnce() -> u32) -> u32 {
        let net = (addr >> 64) as u64;
        let entry = match self.nets.binary_search_by_key(&(d, net), |&(k, _)| k) {
            Ok(i) => self.nets[i].1,
            Err(_) => self.miss[d as usize],
        };
        if entry & TRIE != 0 {
            return trie();
        }
        if entry & HOSTS != 0 {
            if let Ok(i) = self.hosts.binary_search_by_key(&(d, addr), |&(k, _)| k) {
                return self.hosts[i].1;
            }
        }
        entry & !HOSTS
    }
}

fn mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    /// The longest of `entries` of direction `d` containing `addr`: what
    /// the trie answers.
    fn longest_match(entries: &[AddrEntry6], d: Direction, addr: u128) -> u32 {
        entries
            .iter()
            .filter(|e| e.direction == d && addr & mask(e.prefix_len) == u128::from(e.addr) & mask(e.prefix_len))
            .max_by_key(|e| e.prefix_len)
            .map_or(MISS, |e| found(e.class))
    }

    fn entry(d: Direction, addr: u128, len: u8, class: u32) -> AddrEntry6 {
        AddrEntry6 { direction: d, addr: Ipv6Addr::from(addr & mask(len)), prefix_len: len, class }
    }

    const BASE: u128 = 0x2001_0db8 << 96;

    /// Prefixes of both directions in 2001:db8::/32, with the lengths that
    /// take each of the table's paths (shorter than /64, the miss entry;
    /// /64; between /64 and /128, the trie; hosts), crowded into a few
    /// /64s so that they nest.
    fn prefixes() -> impl Strategy<Value = Vec<AddrEntry6>> {
        let one = (
            any::<bool>(),
            0u128..4,
            any::<u16>(),
            prop::sample::select(vec![0u8, 32, 48, 63, 64, 64, 65, 96, 120, 127, 128, 128, 128]),
        );
        prop::collection::vec(one, 1..40).prop_map(|raw| {
            let mut out: Vec<AddrEntry6> = Vec::new();
            for (class, (inbound, net, low, len)) in raw.into_iter().enumerate() {
                let d = if inbound { Direction::Inbound } else { Direction::Egress };
                let e = entry(d, BASE | net << 64 | u128::from(low), len, class as u32);
                if !out.iter().any(|o| o.direction == d && o.prefix_len == len && o.addr == e.addr) {
                    out.push(e);
                }
            }
            out
        })
    }

    proptest! {
        #[test]
        fn the_table_answers_the_longest_prefix_match(
            entries in prefixes(),
            random in prop::collection::vec((0u128..6, any::<u16>()), 50),
        ) {
            let table = Table6::build(&entries);
            let mut probes: Vec<u128> = random.iter().map(|&(net, low)| BASE | net << 64 | u128::from(low)).collect();
            probes.push(0);
            for e in &entries {
                let first = u128::from(e.addr);
                let last = first | !mask(e.prefix_len);
                probes.extend([first, last, last.wrapping_add(1), first.wrapping_sub(1)]);
            }
            for d in Direction::ALL {
                for &p in &probes {
                    let want = longest_match(&entries, d, p);
                    prop_assert_eq!(table.lookup(d, p, || want), want, "{:?} {}", d, Ipv6Addr::from(p));
                }
            }
        }
    }

    #[test]
    fn a_slash_64_not_in_the_hash_needs_the_trie_only_under_shorter_prefixes() {
        let (eg, inb) = (Direction::Egress, Direction::Inbound);
        let no_trie = || -> u32 { panic!("nothing is left to the trie") };
        let host = BASE | 7;
        // Egress: hosts and ::/0, no prefix between /1 and /63.
        let table = Table6::build(&[entry(eg, host, 128, 1), entry(eg, 0, 0, 2), entry(inb, BASE, 48, 3)]);
        assert_eq!(table.miss, [found(2), TRIE], "egress: ::/0 answers a miss; inbound: the /48 needs the trie");
        assert_eq!(table.nets, [((eg, (BASE >> 64) as u64), found(2) | HOSTS)]);
        assert_eq!(table.lookup(eg, host, no_trie), found(1));
        assert_eq!(table.lookup(eg, host + 1, no_trie), found(2));
        assert_eq!(table.lookup(eg, 1 << 64, no_trie), found(2), "another /64: ::/0 without the trie");
        assert_eq!(table.lookup(inb, host, || 99), 99);
        // No prefix shorter than /64 at all: a miss is no prefix.
        let table = Table6::build(&[entry(eg, BASE, 64, 4), entry(eg, BASE | 1 << 64 | 0x100, 120, 5)]);
        assert_eq!(table.miss, [MISS, MISS]);
        assert_eq!(table.lookup(eg, BASE | 5, no_trie), found(4));
        assert_eq!(table.lookup(eg, BASE | 2 << 64, no_trie), MISS);
        assert_eq!(table.lookup(eg, BASE | 1 << 64 | 0x1ff, || 77), 77, "a /120 inside: the trie");
    }

    #[test]
    fn the_threshold_and_the_room_decide() {
        let entries = [entry(Direction::Egress, BASE | 1, 128, 1), entry(Direction::Egress, BASE, 64, 2)];
        let table = Table6::for_phase(&entries, 2, 1).expect("at the threshold, and it fits");
        assert_eq!((table.nets.len(), table.hosts.len()), (1, 1));
        assert!(Table6::for_phase(&entries, 3, 1).is_none(), "below the threshold");
        assert!(Table6::for_phase(&entries, 2, 0).is_none(), "no room");
    }
}
