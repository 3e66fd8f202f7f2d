//! The class of an IPv6 address through the hash of /64s of
//! `fw_common::addr6`: what `fw_egress`, `fw_ingress` and the socket hooks
//! look a peer up in when the phase has the hash, and what the lookup
//! benchmark (`fw-lookup-bench`) times against the trie.

use aya_ebpf::maps::{lpm_trie::Key, HashMap, LpmTrie};
use fw_common::{
    addr6::NetKey,
    dir4::{self, HOSTS, TRIE},
    policy::ADDR_KEY_FIXED_BITS,
    AddrKey6, Direction,
};

/// The hash's two maps, and the trie of the same entries that answers for
/// a /64 they leave to it.
pub struct Maps {
    pub nets: &'static HashMap<NetKey, u32>,
    pub hosts: &'static HashMap<AddrKey6, u32>,
    pub trie: &'static LpmTrie<AddrKey6, u32>,
}

/// The class of `a` from the trie alone.
#[inline(always)]
pub fn trie_class(trie: &LpmTrie<AddrKey6, u32>, generation: u32, direction: Direction, a: &[u8; 16]) -> Option<u32> {
    let key = Key::new(ADDR_KEY_FIXED_BITS + 128, AddrKey6::new(generation, direction, *a));
    trie.get(&key).copied()
}

/// The class of `a`: one hash lookup of its /64 (`miss`, the phase's entry
/// for a /64 the hash does not hold, when absent), a second under a /64
/// that holds hosts, the trie where the entry says so. One key on the
/// stack serves all three (`NetKey::of`).
#[inline(always)]
pub fn class(maps: &Maps, generation: u32, direction: Direction, a: &[u8; 16], miss: u32) -> Option<u32> {
    let key = Key::new(ADDR_KEY_FIXED_BITS + 128, AddrKey6::new(generation, direction, *a));
    // SAFETY: `Key` is packed, but `AddrKey6` is all bytes (alignment 1),
    // so a reference to its field is aligned.
    let data: &AddrKey6 = unsafe { &*core::ptr::addr_of!(key.data) };
    // SAFETY (each `get`): the value is copied at once.
    let entry = match unsafe { maps.nets.get(NetKey::of(data)) } {
        Some(&entry) => entry,
        None => miss,
    };
    if entry & TRIE != 0 {
        return maps.trie.get(&key).copied();
    }
    if entry & HOSTS != 0 {
        if let Some(&host) = unsafe { maps.hosts.get(data) } {
            return dir4::class_of(host);
        }
    }
    dir4::class_of(entry & !HOSTS)
}
