//! DIR-16-8-8: the O(1) alternative to the IPv4 address trie that issue 16
//! asks to measure against `FW_ADDR4` (`cargo xtask bench`, part 1b). Not
//! in the enforcer: the lookup benchmark object (`fw-ebpf`'s `fw-lookup-bench`
//! binary) and its builder in `fw-bench` share this layout.
//!
//! Three array levels indexed by the address bytes, as in Gupta, Lin and
//! McKeown's DIR-24-8 (INFOCOM 1998) with a 16-bit first level, so the
//! first level is 256 KiB instead of 64 MiB and the longer prefixes cost a
//! 1 KiB chunk each:
//!
//! ```text
//! TOP[a0 << 8 | a1] -> entry; if CHUNK: CHUNKS[(entry & INDEX) * 256 + a2]
//!                              -> entry; if CHUNK: CHUNKS[(entry & INDEX) * 256 + a3]
//! entry: 0 = no prefix covers the address; CHUNK | index; or class + 1
//! ```
//!
//! A lookup is at most three array reads, which the verifier inlines (no
//! helper call), whatever the number or nesting of the prefixes.

/// First-level entries: one per /16.
pub const TOP_ENTRIES: u32 = 1 << 16;
/// Entries of a second- or third-level chunk: one per value of a byte.
pub const CHUNK_ENTRIES: u32 = 256;
/// Set in an entry that points to a chunk.
pub const CHUNK: u32 = 1 << 31;
/// The chunk index of an entry with [`CHUNK`] set.
pub const INDEX: u32 = CHUNK - 1;
/// No prefix covers the address.
pub const MISS: u32 = 0;

/// Maps and programs of the lookup benchmark object.
pub const MAP_TRIE4: &str = "BENCH_ADDR4";
pub const MAP_PORTS: &str = "BENCH_PORTS";
pub const MAP_TOP: &str = "BENCH_DIR4_TOP";
pub const MAP_CHUNKS: &str = "BENCH_DIR4_CHUNKS";
/// Reads the destination address and returns: the floor.
pub const PROG_FLOOR: &str = "bench_floor";
/// The address class from the trie, as `fw_egress` looks it up.
pub const PROG_TRIE4: &str = "bench_trie4";
/// The address class from the DIR-16-8-8 arrays.
pub const PROG_DIR4: &str = "bench_dir4";
/// The trie's class, then the port trie: a new flow's two policy lookups.
pub const PROG_TRIE4_PORTS: &str = "bench_trie4_ports";
/// The arrays' class, then the port trie.
pub const PROG_DIR4_PORTS: &str = "bench_dir4_ports";

/// What the address programs return for a class (0 is a miss).
#[inline(always)]
pub const fn found(class: u32) -> u32 {
    class + 1
}

/// The hybrid variant ("DIR-16-8 + hosts"): prefixes up to /24 in the
/// first two levels; longer ones expanded to their addresses in a hash map,
/// looked up only under a /24 whose second-level entry has [`HOSTS`] set.
/// Memory stays proportional to the hosts instead of 1 KiB per /24 that
/// holds one.
pub const HOSTS: u32 = 1 << 30;
pub const MAP_HOSTS: &str = "BENCH_DIR4_HOSTS";
pub const PROG_HYBRID4: &str = "bench_hybrid4";
pub const MAP_HYB_TOP: &str = "BENCH_HYB4_TOP";
pub const MAP_HYB_CHUNKS: &str = "BENCH_HYB4_CHUNKS";
