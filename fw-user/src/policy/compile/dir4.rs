//! The IPv4 address table packets look up (`fw_common::dir4`), built from a
//! phase's IPv4 entries: the same prefix -> class map as `FW_ADDR4`'s
//! longest match, in a DIR-16-8 table and a hash of the addresses of
//! prefixes longer than /24.
//!
//! Prefixes are painted shortest first, so that a longer one overwrites
//! what it nests in; distinct prefixes of one length never overlap, so a
//! paint never meets a chunk it would have to descend into. A chunk starts
//! as a copy of the first-level entry it replaces. A /16 whose chunk or
//! hosts do not fit the maps is marked for the trie (`FW_ADDR4`), which
//! holds every entry.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use fw_common::{
    dir4::{found, Chunk, Top, CHUNK, CHUNK_ENTRIES, HOSTS, INDEX, MISS, TOP_ENTRIES, TRIE},
    maps::{DEFAULT_ADDR_ENTRIES, DEFAULT_MID_CHUNKS},
    Direction,
};

use super::tables::AddrEntry4;

/// A phase's table: per direction a first level, the chunks of both
/// directions (numbered from the slot's first chunk, `base`), and the hosts.
pub struct Table4 {
    /// Indexed by `Direction as usize`.
    pub top: [Box<Top>; 2],
    pub chunks: Vec<Chunk>,
    /// (direction, address) -> entry, sorted, one per address.
    pub hosts: Vec<((Direction, u32), u32)>,
    /// How many (direction, /16) pairs are left to the trie.
    pub to_trie: usize,
}

/// How much of `FW_ADDR4_MID` and `FW_ADDR4_HOSTS` one phase may take.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub chunks: usize,
    pub hosts: usize,
}

impl Budget {
    /// What the maps hold by default, half of each per phase.
    pub const DEFAULT: Budget =
        Budget { chunks: DEFAULT_MID_CHUNKS as usize, hosts: DEFAULT_ADDR_ENTRIES as usize / 2 };
    pub const UNLIMITED: Budget = Budget { chunks: usize::MAX, hosts: usize::MAX };
}

/// Which /16s get a chunk: every (direction, /16) that holds a prefix
/// longer than /16, in address order, while the chunks and the hosts its
/// prefixes longer than /24 expand to fit the budget; the rest are left to
/// the trie. Returns the admitted ones, with the chunks and hosts they
/// take, and how many pairs wanted a chunk.
fn plan(entries: &[AddrEntry4], budget: Budget) -> (BTreeSet<(Direction, u32)>, usize, usize, usize) {
    // (direction, /16) -> its hosts: those of the outermost prefixes longer
    // than /24 (sorted by address then length, nested ones follow theirs).
    let mut long: Vec<(Direction, u32, u8)> = entries
        .iter()
        .filter(|e| e.prefix_len > 16)
        .map(|e| (e.direction, u32::from(e.addr) & mask(e.prefix_len), e.prefix_len))
        .collect();
    long.sort_unstable();
    let mut per16: BTreeMap<(Direction, u32), usize> = BTreeMap::new();
    let mut outer: Option<(Direction, u32, u32)> = None;
    for (d, a, len) in long {
        let hosts = per16.entry((d, a >> 16)).or_default();
        if len <= 24 {
            continue;
        }
        let last = a | !mask(len);
        match outer {
            Some((od, first, olast)) if od == d && first <= a && last <= olast => {}
            _ => {
                *hosts += (last - a) as usize + 1;
                outer = Some((d, a, last));
            }
        }
    }
    let wanted = per16.len();
    let (mut chunks, mut hosts) = (0, 0);
    let mut admitted = BTreeSet::new();
    for (key, h) in per16 {
        if chunks < budget.chunks && hosts + h <= budget.hosts {
            chunks += 1;
            hosts += h;
            admitted.insert(key);
        }
    }
    (admitted, chunks, hosts, wanted)
}

/// What a phase's table takes within `budget`: second-level chunks, hosts,
/// and the /16s left to the trie.
pub fn needs(entries: &[AddrEntry4], budget: Budget) -> (usize, usize, usize) {
    let (_, chunks, hosts, wanted) = plan(entries, budget);
    (chunks, hosts, wanted - chunks)
}

impl Table4 {
    /// The table of `entries` within `budget`, its chunks numbered from
    /// `base`.
    pub fn build(entries: &[AddrEntry4], base: u32, budget: Budget) -> Table4 {
        let (admitted, ..) = plan(entries, budget);
        let mut table = Table4 { top: [empty_top(), empty_top()], chunks: Vec::new(), hosts: Vec::new(), to_trie: 0 };
        let mut sorted: Vec<&AddrEntry4> = entries.iter().collect();
        sorted.sort_by_key(|e| e.prefix_len);
        let mut left_to_trie = BTreeSet::new();
        for e in sorted {
            let (d, len, value) = (e.direction, e.prefix_len, found(e.class));
            let a = u32::from(e.addr) & mask(len);
            if len <= 16 {
                let first = (a >> 16) as usize;
                table.top[d as usize][first..first + (1 << (16 - len))].fill(value);
                continue;
            }
            // Every prefix up to /16 is painted by now (shortest first).
            if !admitted.contains(&(d, a >> 16)) {
                if left_to_trie.insert((d, a >> 16)) {
                    table.top[d as usize][(a >> 16) as usize] = TRIE;
                }
                continue;
            }
            let chunk = table.chunk_of(d, a >> 16, base);
            let second = (a >> 8 & 0xff) as usize;
            if len <= 24 {
                table.chunks[chunk][second..second + (1 << (24 - len))].fill(value);
                continue;
            }
            table.hosts.extend((a..=a | !mask(len)).map(|host| ((d, host), value)));
            table.chunks[chunk][second] |= HOSTS;
        }
        table.to_trie = left_to_trie.len();
        // Painted shortest first: of an address's entries, the last pushed
        // is its longest prefix's. A stable sort keeps that order.
        table.hosts.sort_by_key(|&(key, _)| key);
        table.hosts.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = later.1;
            }
            same
        });
        table
    }

    /// The index in `chunks` of the chunk under the /16 `hi`, made from
    /// the first-level entry if there is none yet.
    fn chunk_of(&mut self, d: Direction, hi: u32, base: u32) -> usize {
        let entry = &mut self.top[d as usize][hi as usize];
        if *entry & CHUNK != 0 {
            return ((*entry & INDEX) - base) as usize;
        }
        let index = self.chunks.len();
        self.chunks.push([*entry; CHUNK_ENTRIES as usize]);
        *entry = CHUNK | (base + index as u32);
        index
    }

    /// What the kernel finds for `addr` (the same steps as `fw_egress`;
    /// `trie` answers for a /16 left to it).
    pub fn lookup(&self, d: Direction, addr: Ipv4Addr, base: u32, trie: impl Fn() -> u32) -> u32 {
        let [a0, a1, a2, _] = addr.octets();
        let entry = self.top[d as usize][usize::from(a0) << 8 | usize::from(a1)];
        if entry & TRIE != 0 {
            return trie();
        }
        if entry & CHUNK == 0 {
            return entry;
        }
        let entry = self.chunks[((entry & INDEX) - base) as usize][usize::from(a2)];
        if entry & HOSTS != 0 {
            if let Ok(i) = self.hosts.binary_search_by_key(&(d, u32::from(addr)), |&(key, _)| key) {
                return self.hosts[i].1;
            }
        }
        entry & !HOSTS
    }
}

/// A first level with no prefix, made on the heap (256 KiB).
fn empty_top() -> Box<Top> {
    vec![MISS; TOP_ENTRIES as usize].into_boxed_slice().try_into().expect("TOP_ENTRIES entries")
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The longest of `entries` of direction `d` containing `addr`: what
    /// the trie answers.
    fn longest_match(entries: &[AddrEntry4], d: Direction, addr: u32) -> u32 {
        entries
            .iter()
            .filter(|e| e.direction == d && addr & mask(e.prefix_len) == u32::from(e.addr) & mask(e.prefix_len))
            .max_by_key(|e| e.prefix_len)
            .map_or(MISS, |e| found(e.class))
    }

    fn entry(d: Direction, addr: u32, len: u8, class: u32) -> AddrEntry4 {
        AddrEntry4 { direction: d, addr: Ipv4Addr::from(addr & mask(len)), prefix_len: len, class }
    }

    /// Nested prefixes of both directions inside a /15 (one class each,
    /// as the compiler emits them), probed at every prefix's edges, just
    /// outside them, and at random.
    fn prefixes() -> impl Strategy<Value = Vec<AddrEntry4>> {
        let one = (
            any::<bool>(),
            any::<u32>(),
            prop::sample::select(vec![0u8, 8, 12, 15, 16, 17, 20, 23, 24, 25, 28, 31, 32]),
        );
        prop::collection::vec(one, 1..40).prop_map(|raw| {
            let mut out: Vec<AddrEntry4> = Vec::new();
            for (class, (inbound, bits, len)) in raw.into_iter().enumerate() {
                let d = if inbound { Direction::Inbound } else { Direction::Egress };
                let e = entry(d, 0xc612_0000 | (bits & 0x1_ffff), len, class as u32);
                if !out.iter().any(|o| o.direction == d && o.prefix_len == len && o.addr == e.addr) {
                    out.push(e);
                }
            }
            out
        })
    }

    /// Budgets from none to more than a phase takes: whatever does not fit
    /// is left to the trie, and the answers stay the longest match.
    fn budget() -> impl Strategy<Value = Budget> {
        (prop::option::of(0usize..4), prop::option::of(0usize..80)).prop_map(|(chunks, hosts)| Budget {
            chunks: chunks.unwrap_or(usize::MAX),
            hosts: hosts.unwrap_or(usize::MAX),
        })
    }

    proptest! {
        #[test]
        fn the_table_answers_the_longest_prefix_match(
            entries in prefixes(),
            base in 0u32..4096,
            budget in budget(),
            random in prop::collection::vec(any::<u32>(), 50),
        ) {
            let table = Table4::build(&entries, base, budget);
            let (chunks, hosts, to_trie) = needs(&entries, budget);
            prop_assert_eq!(table.chunks.len(), chunks);
            prop_assert_eq!(table.hosts.len(), hosts);
            prop_assert_eq!(table.to_trie, to_trie);
            prop_assert!(chunks <= budget.chunks && hosts <= budget.hosts);
            let mut probes: Vec<u32> = random.iter().map(|r| 0xc612_0000 | (r & 0x1_ffff)).collect();
            for e in &entries {
                let first = u32::from(e.addr);
                let last = first | !mask(e.prefix_len);
                probes.extend([first, last, last.wrapping_add(1), first.wrapping_sub(1)]);
            }
            for d in [Direction::Egress, Direction::Inbound] {
                for &p in &probes {
                    let want = longest_match(&entries, d, p);
                    prop_assert_eq!(table.lookup(d, p.into(), base, || want), want, "{:?} {}", d, Ipv4Addr::from(p));
                }
            }
        }
    }

    #[test]
    fn chunks_only_under_longer_prefixes_and_hosts_only_past_slash_24() {
        let eg = Direction::Egress;
        let all = Budget::UNLIMITED;
        let no_trie = || -> u32 { panic!("nothing is left to the trie") };
        let table = Table4::build(&[entry(eg, 0x0a00_0000, 8, 1), entry(eg, 0x0a01_0000, 16, 2)], 0, all);
        assert!(table.chunks.is_empty() && table.hosts.is_empty());
        let table = Table4::build(&[entry(eg, 0x0a00_0000, 8, 1), entry(eg, 0x0a01_0200, 24, 2)], 7, all);
        assert_eq!(table.chunks.len(), 1);
        assert_eq!(table.top[0][0x0a01], CHUNK | 7, "numbered from the slot's first chunk");
        let table = Table4::build(&[entry(eg, 0x0a00_0000, 8, 1), entry(eg, 0x0a01_0203, 32, 2)], 0, all);
        assert_eq!((table.chunks.len(), table.hosts.len()), (1, 1));
        assert_eq!(table.lookup(eg, Ipv4Addr::new(10, 1, 2, 3), 0, no_trie), found(2));
        assert_eq!(table.lookup(eg, Ipv4Addr::new(10, 1, 2, 4), 0, no_trie), found(1));
        assert_eq!(table.lookup(eg, Ipv4Addr::new(11, 1, 2, 3), 0, no_trie), MISS);
        assert_eq!(table.lookup(Direction::Inbound, Ipv4Addr::new(10, 1, 2, 3), 0, no_trie), MISS);
    }

    #[test]
    fn a_slash_16_beyond_the_budget_is_left_to_the_trie() {
        let eg = Direction::Egress;
        let entries = [entry(eg, 0x0a00_0000, 8, 1), entry(eg, 0x0a01_0200, 24, 2), entry(eg, 0x0a02_0300, 28, 3)];
        let table = Table4::build(&entries, 0, Budget { chunks: 1, hosts: usize::MAX });
        assert_eq!((table.chunks.len(), table.to_trie), (1, 1));
        assert_eq!(table.top[0][0x0a01], CHUNK, "the first /16 in address order has the chunk");
        assert_eq!(table.top[0][0x0a02], TRIE);
        assert_eq!(table.top[0][0x0a03], found(1), "the /8 around them is still in the table");
        // Hosts count too: the /28's 16 do not fit in 15.
        let table = Table4::build(&entries, 0, Budget { chunks: 9, hosts: 15 });
        assert_eq!((table.chunks.len(), table.hosts.len(), table.top[0][0x0a02]), (1, 0, TRIE));
        assert_eq!(needs(&entries, Budget { chunks: 9, hosts: 15 }), (1, 0, 1));
    }
}
