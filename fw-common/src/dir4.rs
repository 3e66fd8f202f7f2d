//! IPv4 address classes without a trie: the layout `fw_egress` looks a
//! peer's IPv4 address up in (issue 16, item 2), and the variants the
//! lookup benchmark weighs against the LPM trie (`cargo xtask bench`, 1b).
//!
//! A DIR-16-8 table with a hash of hosts ("hybrid"), after Gupta, Lin and
//! McKeown's DIR-24-8 (INFOCOM 1998) with a 16-bit first level, so that
//! the first level is 256 KiB instead of 64 MiB, and with the prefixes
//! longer than /24 expanded to their addresses in a hash instead of a
//! 1 KiB third-level chunk per /24 (the pure DIR-16-8-8 costs 71 MiB for
//! the bench's 100,000 rules, most of it for sparse hosts):
//!
//! ```text
//! TOP[slot * 2 + direction][a0 << 8 | a1] -> entry
//!   TRIE set: the FW_ADDR4 trie answers
//!   CHUNK set: MID[entry & INDEX][a2] -> entry
//!     HOSTS set: HOSTS[{generation, direction, a}] -> entry, if present
//! entry: MISS (no prefix covers the address) or found(class)
//! ```
//!
//! The chunks and hosts are bounded (`FW_ADDR4_MID`, `FW_ADDR4_HOSTS`):
//! a /16 whose chunk or hosts would not fit is left to the trie, which
//! holds every entry anyway, so no policy the trie can hold is refused.
//!
//! At most two array reads, which the verifier inlines (no helper call),
//! and one hash lookup under a /24 that holds a prefix longer than /24.
//! The arrays are per phase slot (`generation & 1`, as `FW_PHASES`): a new
//! generation is written into the slot no packet reads, then published by
//! the one `FW_CONFIG` write. Host keys carry their generation, as the
//! tries' keys do, and are collected with them.

/// First-level entries: one per /16.
pub const TOP_ENTRIES: u32 = 1 << 16;
/// Entries of a second-level chunk: one per /24 of its /16.
pub const CHUNK_ENTRIES: u32 = 256;
/// Set in a first-level entry that points to a chunk.
pub const CHUNK: u32 = 1 << 31;
/// Set in a second-level entry whose /24 holds prefixes longer than /24:
/// look the address up in the hosts first.
pub const HOSTS: u32 = 1 << 30;
/// Set in a first-level entry whose /16 is left to the `FW_ADDR4` trie.
pub const TRIE: u32 = 1 << 29;
/// The chunk index of an entry with [`CHUNK`] set.
pub const INDEX: u32 = TRIE - 1;
/// No prefix covers the address.
pub const MISS: u32 = 0;

/// One first-level table (one slot, one direction).
pub type Top = [u32; TOP_ENTRIES as usize];
/// One second-level chunk.
pub type Chunk = [u32; CHUNK_ENTRIES as usize];

/// The entry for an address of `class`.
#[inline(always)]
pub const fn found(class: u32) -> u32 {
    class + 1
}

/// The class of an entry with neither flag, `None` for [`MISS`].
#[inline(always)]
pub const fn class_of(entry: u32) -> Option<u32> {
    if entry == MISS {
        None
    } else {
        Some(entry - 1)
    }
}

/// The `FW_ADDR4_TOP` index of a slot's table for a direction.
#[inline(always)]
pub const fn top_index(generation: u32, direction: u8) -> u32 {
    (generation & 1) * 2 + direction as u32
}

/// Maps and programs of the lookup benchmark object (fw-ebpf's
/// `fw-lookup-bench`): the trie, the pure DIR-16-8-8 (a third level of
/// chunks instead of the hosts) and the hybrid, in maps of its own.
pub mod bench {
    pub const MAP_TRIE4: &str = "BENCH_ADDR4";
    pub const MAP_PORTS: &str = "BENCH_PORTS";
    pub const MAP_TOP: &str = "BENCH_DIR4_TOP";
    pub const MAP_CHUNKS: &str = "BENCH_DIR4_CHUNKS";
    pub const MAP_HYB_TOP: &str = "BENCH_HYB4_TOP";
    pub const MAP_HYB_CHUNKS: &str = "BENCH_HYB4_CHUNKS";
    pub const MAP_HOSTS: &str = "BENCH_HYB4_HOSTS";
    pub const MAP_PORTS_HASH: &str = "BENCH_PORTS_HASH";
    pub const MAP_FLOWS4: &str = "BENCH_FLOWS4";
    pub const MAP_FLOWS6: &str = "BENCH_FLOWS6";
    pub const MAP_TRIE6: &str = "BENCH_ADDR6";
    pub const MAP_NET64: &str = "BENCH_NET64";
    pub const MAP_HOSTS6: &str = "BENCH_HOSTS6";
    /// One entry: the phase's egress miss entry (`crate::addr6`).
    pub const MAP_MISS6: &str = "BENCH_MISS6";
    /// Reads the destination of an IPv6 frame and returns: the IPv6 floor.
    pub const PROG_FLOOR6: &str = "bench_floor6";
    /// The IPv6 address class from the trie, as `fw_egress` looks it up.
    pub const PROG_TRIE6: &str = "bench_trie6";
    /// The IPv6 class from the hash of /64s and of the hosts under them
    /// (`crate::addr6`), as `fw_egress` looks it up in a phase that has it.
    pub const PROG_HASH6: &str = "bench_hash6";

    /// Reads the destination address and returns: the floor.
    pub const PROG_FLOOR: &str = "bench_floor";
    /// The address class from the trie, as `fw_egress` looked it up before.
    pub const PROG_TRIE4: &str = "bench_trie4";
    /// The address class from the DIR-16-8-8 arrays.
    pub const PROG_DIR4: &str = "bench_dir4";
    /// The address class from the hybrid.
    pub const PROG_HYBRID4: &str = "bench_hybrid4";
    /// The trie's class, then the port trie: a new flow's two policy lookups.
    pub const PROG_TRIE4_PORTS: &str = "bench_trie4_ports";
    /// The arrays' class, then the port trie.
    pub const PROG_DIR4_PORTS: &str = "bench_dir4_ports";
    /// The hybrid's class, then the port trie: `fw_egress` before the port
    /// hash.
    pub const PROG_HYBRID4_PORTS: &str = "bench_hybrid4_ports";
    /// The hybrid's class, then the port hash and the trie behind it
    /// (`crate::port_hash`): `fw_egress` now.
    pub const PROG_HYBRID4_PORT_HASH: &str = "bench_hybrid4_port_hash";
    /// One lookup of the frame's flow in an LRU hash keyed as `FW_FLOWS4`:
    /// what every packet `fw_egress` judges costs at least.
    pub const PROG_FLOW4: &str = "bench_flow4";
    /// Its floor: the same frame reads and key, no lookup.
    pub const PROG_FLOW4_FLOOR: &str = "bench_flow4_floor";
    /// The same for an IPv6 frame, keyed as `FW_FLOWS6` (40 bytes).
    pub const PROG_FLOW6: &str = "bench_flow6";
    pub const PROG_FLOW6_FLOOR: &str = "bench_flow6_floor";
    /// The frame through `fw_egress`'s parser alone.
    pub const PROG_PARSE: &str = "bench_parse";
    /// Does nothing: the parser's floor.
    pub const PROG_NOOP: &str = "bench_noop";
    /// A packet's two counters alone, as `fw_egress` updates them.
    pub const PROG_COUNT: &str = "bench_count";
}
