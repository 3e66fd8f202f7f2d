//! IPv6 address classes through a hash of /64s: what `fw_egress` and the
//! socket hooks look a peer's IPv6 address up in when a phase has many
//! IPv6 entries (issue 16, item 2: "a hash of the /64 for IPv6"). Below
//! [`HASH_FROM_ENTRIES`] the `FW_ADDR6` trie answers alone: part 1b of
//! BENCHMARKS.md times both on the same entries, and the trie wins there.
//!
//! ```text
//! NETS[{generation, direction, /64}] -> entry, else the phase's miss entry
//!   TRIE set: the FW_ADDR6 trie answers
//!   HOSTS set: HOSTS[{generation, direction, address}] -> entry, if present
//! entry: MISS or found(class), encoded as `crate::dir4`'s
//! ```
//!
//! The hash holds an entry for every /64 that is a prefix of the phase or
//! holds longer ones: the longest prefix up to /64 that covers it, with
//! HOSTS when /128 hosts lie under it, or TRIE when a prefix between /65
//! and /127 does (those the hash does not expand). A /64 the hash does not
//! hold meets no prefix of /64 or longer, so the longest prefix shorter
//! than /64 decides: the phase's miss entry (`PhaseConfig::addr6_miss`) is
//! that answer when the direction has no prefix between /1 and /63 (::/0's
//! class, or MISS), and TRIE when it has. Keys carry their generation, as
//! the trie's do, and are collected with it; the phase's flag and miss
//! entries are in its `FW_PHASES` slot, published with the generation.

use crate::{AddrKey6, Direction};

/// The IPv6 entries (both directions) from which a phase is looked up
/// through the hash. `fw-bench lookup` (part 1b of BENCHMARKS.md) times
/// both on the same entries of the bench's policy, ns above the floor,
/// trie against hash (2026-12-01, a noisy window): at 963 entries hosts
/// 126/113, networks 105/129; at 6,338 hosts 149/112, networks 116/97; at
/// 65,932 hosts 180/120, networks 141/64. Addresses under none of the
/// phase's /64s cost the hash one miss more than the trie when the phase
/// also has prefixes shorter than /64, as the bench's does (111/161 and
/// 144/187). So the hash is used where it clearly wins on the addresses
/// the rules list, above the second size.
pub const HASH_FROM_ENTRIES: usize = 16_384;

/// The key of a /64 in `FW_ADDR6_NETS`: the first 13 bytes of the
/// address's `AddrKey6` (generation, direction, the /64), so that the
/// kernel looks up the /64, the host and the trie with one key on its
/// stack (a BPF-to-BPF call has 32 bytes of stack left there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct NetKey {
    /// Big-endian, as the tries' keys.
    pub generation: [u8; 4],
    pub direction: u8,
    /// The address's first 64 bits, as on the wire.
    pub net: [u8; 8],
}

impl NetKey {
    #[inline(always)]
    pub const fn new(generation: u32, direction: Direction, net: [u8; 8]) -> NetKey {
        NetKey { generation: generation.to_be_bytes(), direction: direction as u8, net }
    }

    /// The /64 of an address's key: its first 13 bytes, in place.
    #[inline(always)]
    pub fn of(key: &AddrKey6) -> &NetKey {
        const _: () = assert!(core::mem::size_of::<NetKey>() == 13 && core::mem::align_of::<AddrKey6>() == 1);
        // SAFETY: both are `repr(C)` byte arrays (alignment 1), and
        // `NetKey`'s fields are the first 13 bytes of `AddrKey6`'s, in
        // the same order.
        unsafe { &*(key as *const AddrKey6).cast::<NetKey>() }
    }

    pub fn generation(&self) -> u32 {
        u32::from_be_bytes(self.generation)
    }
}
