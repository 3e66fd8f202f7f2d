//! The lookup benchmark object (`fw-lookup-bench`): the policy's first
//! lookup done two ways on the same addresses, so that `cargo xtask bench`
//! can weigh the IPv4 address trie against the DIR-16-8-8 arrays of
//! `fw_common::dir4` and their hybrid with a hash of hosts in one run
//! (issue 16, item 2), the port trie that follows against the port hash in
//! front of it, the IPv6 trie against a hash of /64s, and the flow-table
//! lookup every judged packet pays. Never loaded by `fw`; built beside
//! `fw-ebpf` and linked into `fw-bench` only.
//!
//! Each program reads the destination address (and port) of an untagged
//! IPv4 or IPv6 frame at fixed offsets, as the benchmark builds them, and
//! returns what it found, so the benchmark checks that every way agrees.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use fw_common::{
    addr6::NetKey,
    dir4::{found, Chunk, Top, CHUNK, CHUNK_ENTRIES, INDEX, MISS, TOP_ENTRIES, TRIE},
    policy::{ADDR_KEY_FIXED_BITS, PORT_KEY_FULL_BITS},
    port_hash::{PortHashKey, PortHashValue},
    stats::STATS_ENTRIES,
    AddrKey4, AddrKey6, Counter, Direction, FlowKey, FlowKey4, FlowValue, PolicyValue, PortKey, Reason,
};

/// Ethernet (14) + the IPv4 header's offsets of the protocol and destination.
const PROTO_OFFSET: usize = 14 + 9;
const SRC_OFFSET: usize = 14 + 12;
/// The destination of an IPv6 frame (40-byte header).
const DST6_OFFSET: usize = 14 + 24;
/// An IPv6 frame's next header, source, and transport ports.
const PROTO6_OFFSET: usize = 14 + 6;
const SRC6_OFFSET: usize = 14 + 8;
const SPORT6_OFFSET: usize = 14 + 40;
const DST_OFFSET: usize = 14 + 16;
/// The ports of a 20-byte IPv4 header's transport header.
const SPORT_OFFSET: usize = 14 + 20;
const DPORT_OFFSET: usize = SPORT_OFFSET + 2;
/// The generation the benchmark writes.
const GENERATION: u32 = 1;

// Named as in `fw_common::dir4` (the attribute takes a literal); the
// benchmark sets the capacities before loading.
#[map(name = "BENCH_ADDR4")]
static BENCH_ADDR4: LpmTrie<AddrKey4, u32> = LpmTrie::with_max_entries(1, 0);

#[map(name = "BENCH_PORTS")]
static BENCH_PORTS: LpmTrie<PortKey, PolicyValue> = LpmTrie::with_max_entries(1, 0);

#[map(name = "BENCH_DIR4_TOP")]
static BENCH_DIR4_TOP: Array<u32> = Array::with_max_entries(TOP_ENTRIES, 0);

#[map(name = "BENCH_DIR4_CHUNKS")]
static BENCH_DIR4_CHUNKS: Array<u32> = Array::with_max_entries(1, 0);

// The hybrid, laid out as `fw_egress`'s FW_ADDR4_TOP/MID/HOSTS.
#[map(name = "BENCH_HYB4_TOP")]
static BENCH_HYB4_TOP: Array<Top> = Array::with_max_entries(4, 0);

#[map(name = "BENCH_HYB4_CHUNKS")]
static BENCH_HYB4_CHUNKS: Array<Chunk> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_HYB4_HOSTS")]
static BENCH_HYB4_HOSTS: HashMap<AddrKey4, u32> = HashMap::with_max_entries(1, 0);

#[map(name = "BENCH_ADDR6")]
static BENCH_ADDR6: LpmTrie<AddrKey6, u32> = LpmTrie::with_max_entries(1, 0);

#[map(name = "BENCH_NET64")]
static BENCH_NET64: HashMap<NetKey, u32> = HashMap::with_max_entries(1, 0);

#[map(name = "BENCH_HOSTS6")]
static BENCH_HOSTS6: HashMap<AddrKey6, u32> = HashMap::with_max_entries(1, 0);

/// Counted as `fw_egress` counts (`fw_ebpf::counters`), in maps of the
/// same types; a rule counter per frame length, so the index is not a
/// constant.
#[map(name = "BENCH_STATS")]
static BENCH_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[map(name = "BENCH_RULE_STATS")]
static BENCH_RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(2048, 0);

const COUNTERS: fw_ebpf::counters::Maps = fw_ebpf::counters::Maps { reasons: &BENCH_STATS, rules: &BENCH_RULE_STATS };

/// The egress miss entry of the phase (`PhaseConfig::addr6_miss`).
#[map(name = "BENCH_MISS6")]
static BENCH_MISS6: Array<u32> = Array::with_max_entries(1, 0);

/// `fw_egress`'s IPv6 hash (`fw_ebpf::addr6`), over this object's maps.
const HASH6: fw_ebpf::addr6::Maps =
    fw_ebpf::addr6::Maps { nets: &BENCH_NET64, hosts: &BENCH_HOSTS6, trie: &BENCH_ADDR6 };

/// Keyed and valued as `FW_FLOWS4`.
#[map(name = "BENCH_FLOWS4")]
static BENCH_FLOWS4: LruHashMap<FlowKey4, FlowValue> = LruHashMap::with_max_entries(1, 0);

/// Keyed and valued as `FW_FLOWS6` (40-byte key).
#[map(name = "BENCH_FLOWS6")]
static BENCH_FLOWS6: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(1, 0);

#[map(name = "BENCH_PORTS_HASH")]
static BENCH_PORTS_HASH: HashMap<PortHashKey, PortHashValue> = HashMap::with_max_entries(1, 0);

/// `fw_egress`'s port lookup (`fw_ebpf::ports`), over this object's maps.
const PORTS: fw_ebpf::ports::Maps = fw_ebpf::ports::Maps { hash: &BENCH_PORTS_HASH, trie: &BENCH_PORTS };

/// Built without a budget, the table never sends a lookup to the trie.
const HYBRID: fw_ebpf::addr4::Maps = fw_ebpf::addr4::Maps {
    top: &BENCH_HYB4_TOP,
    mid: &BENCH_HYB4_CHUNKS,
    hosts: &BENCH_HYB4_HOSTS,
    trie: &BENCH_ADDR4,
};

#[inline(always)]
fn dst4(ctx: &TcContext) -> Option<[u8; 4]> {
    ctx.load::<[u8; 4]>(DST_OFFSET).ok()
}

#[inline(always)]
fn trie4(a: [u8; 4]) -> u32 {
    let key = Key::new(ADDR_KEY_FIXED_BITS + 32, AddrKey4::new(GENERATION, Direction::Egress, a));
    match BENCH_ADDR4.get(&key) {
        Some(class) => found(*class),
        None => MISS,
    }
}

/// At most three array reads; the verifier inlines each (no helper call).
#[inline(always)]
fn dir4(a: [u8; 4]) -> u32 {
    let Some(&top) = BENCH_DIR4_TOP.get(u32::from(a[0]) << 8 | u32::from(a[1])) else { return MISS };
    if top & CHUNK == 0 {
        return top;
    }
    let Some(&mid) = BENCH_DIR4_CHUNKS.get((top & INDEX) * CHUNK_ENTRIES + u32::from(a[2])) else { return MISS };
    if mid & CHUNK == 0 {
        return mid;
    }
    match BENCH_DIR4_CHUNKS.get((mid & INDEX) * CHUNK_ENTRIES + u32::from(a[3])) {
        Some(&leaf) => leaf,
        None => MISS,
    }
}

/// `fw_egress`'s own lookup (`fw_ebpf::addr4`), over this object's maps.
#[inline(always)]
fn hybrid4(a: [u8; 4]) -> u32 {
    fw_ebpf::addr4::class(&HYBRID, GENERATION, Direction::Egress, a).map_or(MISS, found)
}

/// The port trie after an address lookup's `found` value: the deciding
/// rule + 1, or 0.
#[inline(always)]
fn ports(ctx: &TcContext, class_found: u32) -> u32 {
    if class_found == MISS {
        return 0;
    }
    let (Ok(proto), Ok(port)) = (ctx.load::<u8>(PROTO_OFFSET), ctx.load::<[u8; 2]>(DPORT_OFFSET)) else { return 0 };
    let key = Key::new(PORT_KEY_FULL_BITS, PortKey::new(GENERATION, class_found - 1, proto, u16::from_be_bytes(port)));
    match BENCH_PORTS.get(&key) {
        Some(v) => v.rule + 1,
        None => 0,
    }
}

/// The port hash (and the trie behind it) after an address lookup's
/// `found` value, answering as [`ports`] does.
#[inline(always)]
fn port_hash(ctx: &TcContext, class_found: u32) -> u32 {
    if class_found == MISS {
        return 0;
    }
    let (Ok(proto), Ok(port)) = (ctx.load::<u8>(PROTO_OFFSET), ctx.load::<[u8; 2]>(DPORT_OFFSET)) else { return 0 };
    let packed = fw_ebpf::ports::rule(&PORTS, GENERATION, class_found - 1, proto, u16::from_be_bytes(port));
    match fw_ebpf::ports::unpack(packed) {
        Some(v) => v.rule + 1,
        None => 0,
    }
}

#[classifier]
pub fn bench_floor(ctx: TcContext) -> i32 {
    match dst4(&ctx) {
        Some(a) => i32::from(a[3] & 1),
        None => -1,
    }
}

#[classifier]
pub fn bench_trie4(ctx: TcContext) -> i32 {
    dst4(&ctx).map_or(-1, |a| trie4(a) as i32)
}

#[classifier]
pub fn bench_dir4(ctx: TcContext) -> i32 {
    dst4(&ctx).map_or(-1, |a| dir4(a) as i32)
}

#[classifier]
pub fn bench_hybrid4(ctx: TcContext) -> i32 {
    dst4(&ctx).map_or(-1, |a| hybrid4(a) as i32)
}

#[classifier]
pub fn bench_trie4_ports(ctx: TcContext) -> i32 {
    dst4(&ctx).map_or(-1, |a| ports(&ctx, trie4(a)) as i32)
}

#[classifier]
pub fn bench_dir4_ports(ctx: TcContext) -> i32 {
    dst4(&ctx).map_or(-1, |a| ports(&ctx, dir4(a)) as i32)
}

#[classifier]
pub fn bench_hybrid4_ports(ctx: TcContext) -> i32 {
    dst4(&ctx).map_or(-1, |a| ports(&ctx, hybrid4(a)) as i32)
}

#[classifier]
pub fn bench_hybrid4_port_hash(ctx: TcContext) -> i32 {
    dst4(&ctx).map_or(-1, |a| port_hash(&ctx, hybrid4(a)) as i32)
}

/// The frame's flow key, built as `fw_egress` builds an IPv4 one.
#[inline(always)]
fn flow_key4(ctx: &TcContext) -> Option<FlowKey4> {
    let (Ok(proto), Ok(src), Ok(dst), Ok(ports)) = (
        ctx.load::<u8>(PROTO_OFFSET),
        ctx.load::<[u8; 4]>(SRC_OFFSET),
        ctx.load::<[u8; 4]>(DST_OFFSET),
        ctx.load::<[u8; 4]>(SPORT_OFFSET),
    ) else {
        return None;
    };
    Some(FlowKey4 {
        proto,
        _pad: 0,
        local_port: [ports[0], ports[1]],
        remote_port: [ports[2], ports[3]],
        _pad2: 0,
        local_addr: src,
        remote_addr: dst,
    })
}

/// The frame's flow, looked up as `fw_egress` looks an IPv4 flow up (the
/// same key and table type): 1 when found.
#[classifier]
pub fn bench_flow4(ctx: TcContext) -> i32 {
    // SAFETY: only whether it is there is read.
    flow_key4(&ctx).map_or(-1, |key| i32::from(unsafe { BENCH_FLOWS4.get(&key) }.is_some()))
}

/// [`bench_flow4`]'s floor: the same frame reads and key, no lookup.
#[classifier]
pub fn bench_flow4_floor(ctx: TcContext) -> i32 {
    flow_key4(&ctx).map_or(-1, |key| i32::from(key.local_addr[3] ^ key.remote_port[1] ^ key.proto))
}

/// The frame's flow key, built as `fw_egress` builds an IPv6 one.
#[inline(always)]
fn flow_key6(ctx: &TcContext) -> Option<FlowKey> {
    let (Ok(proto), Ok(src), Ok(dst), Ok(ports)) = (
        ctx.load::<u8>(PROTO6_OFFSET),
        ctx.load::<[u8; 16]>(SRC6_OFFSET),
        ctx.load::<[u8; 16]>(DST6_OFFSET),
        ctx.load::<[u8; 4]>(SPORT6_OFFSET),
    ) else {
        return None;
    };
    Some(FlowKey {
        family: 6,
        proto,
        _pad: 0,
        local_port: [ports[0], ports[1]],
        remote_port: [ports[2], ports[3]],
        local_addr: src,
        remote_addr: dst,
    })
}

/// The frame's flow, looked up as `fw_egress` looks an IPv6 flow up: 1
/// when found.
#[classifier]
pub fn bench_flow6(ctx: TcContext) -> i32 {
    // SAFETY: only whether it is there is read.
    flow_key6(&ctx).map_or(-1, |key| i32::from(unsafe { BENCH_FLOWS6.get(&key) }.is_some()))
}

/// [`bench_flow6`]'s floor: the same frame reads and key, no lookup.
#[classifier]
pub fn bench_flow6_floor(ctx: TcContext) -> i32 {
    flow_key6(&ctx).map_or(-1, |key| i32::from(key.local_addr[15] ^ key.remote_port[1] ^ key.proto))
}

/// Does nothing: the floor the parser is timed against (the other floors
/// read the frame through a helper call, which costs about what a parse
/// does).
#[classifier]
pub fn bench_noop(_ctx: TcContext) -> i32 {
    0
}

/// The frame through `fw_egress`'s parser (`fw_parse`, the same global
/// function) and nothing else: what every packet pays before its flow is
/// looked up. Returns the parser's outcome and a byte of the address it
/// read, so the work is not dropped.
#[classifier]
pub fn bench_parse(ctx: TcContext) -> i32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = fw_ebpf::parse::Packet::zeroed_in(&mut slot);
    // SAFETY: as in `fw_egress` (the verifier refuses a misaligned load the
    // CPU cannot do).
    match unsafe { fw_ebpf::parse::parse_skb(&ctx, pkt) }.decode() {
        Ok(_) => i32::from(pkt.dst[3]),
        Err(reason) => -(reason as i32),
    }
}

/// A packet counted as `fw_egress` counts every packet it judges (the two
/// per-CPU counters, of its reason and of its rule) and nothing else.
#[classifier]
pub fn bench_count(ctx: TcContext) -> i32 {
    let len = ctx.len();
    fw_ebpf::counters::count(&COUNTERS, 1, Direction::Egress, Reason::PassRule, len & 0x7ff, len);
    0
}

#[inline(always)]
fn dst6(ctx: &TcContext) -> Option<[u8; 16]> {
    ctx.load::<[u8; 16]>(DST6_OFFSET).ok()
}

#[inline(always)]
fn trie6(a: [u8; 16]) -> u32 {
    fw_ebpf::addr6::trie_class(&BENCH_ADDR6, GENERATION, Direction::Egress, &a).map_or(MISS, found)
}

/// The class as `fw_egress` looks it up in a phase with the hash.
#[inline(always)]
fn hash6(a: [u8; 16]) -> u32 {
    let miss = BENCH_MISS6.get(0).copied().unwrap_or(TRIE);
    fw_ebpf::addr6::class(&HASH6, GENERATION, Direction::Egress, &a, miss).map_or(MISS, found)
}

#[classifier]
pub fn bench_floor6(ctx: TcContext) -> i32 {
    dst6(&ctx).map_or(-1, |a| i32::from(a[15] & 1))
}

#[classifier]
pub fn bench_trie6(ctx: TcContext) -> i32 {
    dst6(&ctx).map_or(-1, |a| trie6(a) as i32)
}

#[classifier]
pub fn bench_hash6(ctx: TcContext) -> i32 {
    dst6(&ctx).map_or(-1, |a| hash6(a) as i32)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
