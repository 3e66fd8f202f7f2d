//! The class of an IPv4 address in the table of `fw_common::dir4`: the
//! one lookup `fw_egress` and `fw_ingress` make, and the one the lookup
//! benchmark (`fw-lookup-bench`) times, over the maps each object holds.

use aya_ebpf::maps::{lpm_trie::Key, Array, HashMap, LpmTrie};
use fw_common::{
    dir4::{self, Chunk, Top, CHUNK, HOSTS, INDEX, TRIE},
    policy::ADDR_KEY_FIXED_BITS,
    AddrKey4, Direction,
};

/// The maps of one table: its two array levels, its hosts, and the trie of
/// the same entries that answers for a /16 the table left to it.
pub struct Maps {
    pub top: &'static Array<Top>,
    pub mid: &'static Array<Chunk>,
    pub hosts: &'static HashMap<AddrKey4, u32>,
    pub trie: &'static LpmTrie<AddrKey4, u32>,
}

/// The class of `a`: two array reads (inlined by the verifier), a hash
/// lookup under a /24 that holds hosts, the trie for a /16 left to it.
#[inline(always)]
pub fn class(maps: &Maps, generation: u32, direction: Direction, a: [u8; 4]) -> Option<u32> {
    let top = maps.top.get(dir4::top_index(generation, direction as u8))?;
    let entry = top[usize::from(a[0]) << 8 | usize::from(a[1])];
    if entry & (CHUNK | TRIE) == 0 {
        return dir4::class_of(entry);
    }
    if entry & TRIE != 0 {
        let key = Key::new(ADDR_KEY_FIXED_BITS + 32, AddrKey4::new(generation, direction, a));
        return maps.trie.get(&key).copied();
    }
    let entry = maps.mid.get(entry & INDEX)?[usize::from(a[2])];
    if entry & HOSTS != 0 {
        // SAFETY: the value is read at once.
        if let Some(&host) = unsafe { maps.hosts.get(&AddrKey4::new(generation, direction, a)) } {
            return dir4::class_of(host);
        }
    }
    dir4::class_of(entry & !HOSTS)
}
