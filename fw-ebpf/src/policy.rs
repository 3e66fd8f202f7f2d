//! The policy lookup: address -> class, then {class, protocol, port} ->
//! deciding rule, in the active generation. Precedence is settled by the
//! compiler (see `fw_common::policy`), so the kernel only takes the longest
//! match:
//!
//! 1. Peer address not in any rule's CIDRs -> the phase default.
//! 2. {class, proto, port} entry -> its rule and action; otherwise
//!    {class, proto} (any port), then {class} (any protocol).
//! 3. No entry -> the phase default.
//! 4. A drop in an audit-mode phase is counted as "would drop" and passes.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie},
};
use fw_common::{
    addr6::NetKey,
    dir4::{self, Chunk, Top},
    maps::{DEFAULT_ADDR_ENTRIES, DEFAULT_MID_CHUNKS, DEFAULT_PORT_ENTRIES, DEFAULT_PORT_HASH_ENTRIES},
    names::{
        name_class, Learned, Resolvers, DNS_PORT, DOT_PORT, EMPTY_SLOT, LEARNED_CAPACITY, MAX_RESOLVERS4,
        MAX_RESOLVERS6, NAME_SLOTS,
    },
    policy::{proto as ip_proto, PORT_KEY_FULL_BITS},
    port_hash::{PortHashKey, PortHashValue},
    Action, AddrKey4, AddrKey6, Config, Direction, PhaseConfig, PolicyValue, PortKey, Reason,
};

use crate::{
    parse::Packet,
    verdict::{Verdict, NO_RULE},
};

#[map(name = "FW_CONFIG")]
static FW_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "FW_PHASES")]
static FW_PHASES: Array<PhaseConfig> = Array::with_max_entries(2, 0);

/// The IPv4 entries as the compiler made them (prefix -> class): the
/// record `fw explain --name` and `fw status` read back, and what the
/// collection of old generations walks. Packets read the table below, and
/// this trie only for a /16 the table could not hold.
#[map(name = "FW_ADDR4")]
static FW_ADDR4: LpmTrie<AddrKey4, u32> = LpmTrie::with_max_entries(DEFAULT_ADDR_ENTRIES, 0);

/// IPv4 address classes as packets look them up (`fw_common::dir4`): a
/// first-level table per phase slot and direction, the second-level chunks
/// of both slots, and the addresses of prefixes longer than /24, all built
/// from the same entries as `FW_ADDR4`.
#[map(name = "FW_ADDR4_TOP")]
static FW_ADDR4_TOP: Array<Top> = Array::with_max_entries(4, 0);

#[map(name = "FW_ADDR4_MID")]
static FW_ADDR4_MID: Array<Chunk> = Array::with_max_entries(2 * DEFAULT_MID_CHUNKS, 0);

#[map(name = "FW_ADDR4_HOSTS")]
static FW_ADDR4_HOSTS: HashMap<AddrKey4, u32> = HashMap::with_max_entries(DEFAULT_ADDR_ENTRIES, BPF_F_NO_PREALLOC);

const ADDR4: fw_ebpf::addr4::Maps =
    fw_ebpf::addr4::Maps { top: &FW_ADDR4_TOP, mid: &FW_ADDR4_MID, hosts: &FW_ADDR4_HOSTS, trie: &FW_ADDR4 };

#[map(name = "FW_ADDR6")]
static FW_ADDR6: LpmTrie<AddrKey6, u32> = LpmTrie::with_max_entries(DEFAULT_ADDR_ENTRIES, 0);

/// IPv6 address classes as packets look them up in a phase with many IPv6
/// entries (`fw_common::addr6`): the /64s and the hosts under them, built
/// from the same entries as `FW_ADDR6`.
#[map(name = "FW_ADDR6_NETS")]
static FW_ADDR6_NETS: HashMap<NetKey, u32> = HashMap::with_max_entries(DEFAULT_ADDR_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "FW_ADDR6_HOSTS")]
static FW_ADDR6_HOSTS: HashMap<AddrKey6, u32> = HashMap::with_max_entries(DEFAULT_ADDR_ENTRIES, BPF_F_NO_PREALLOC);

const ADDR6: fw_ebpf::addr6::Maps =
    fw_ebpf::addr6::Maps { nets: &FW_ADDR6_NETS, hosts: &FW_ADDR6_HOSTS, trie: &FW_ADDR6 };

#[map(name = "FW_PORTS")]
static FW_PORTS: LpmTrie<PortKey, PolicyValue> = LpmTrie::with_max_entries(DEFAULT_PORT_ENTRIES, 0);

/// What packets look ports up in first (`fw_common::port_hash`), written
/// from the same entries as `FW_PORTS`, which stays the record and answers
/// for port ranges and for the classes the hash could not hold.
#[map(name = "FW_PORTS_HASH")]
static FW_PORTS_HASH: HashMap<PortHashKey, PortHashValue> =
    HashMap::with_max_entries(DEFAULT_PORT_HASH_ENTRIES, BPF_F_NO_PREALLOC);

const PORTS: fw_ebpf::ports::Maps = fw_ebpf::ports::Maps { hash: &FW_PORTS_HASH, trie: &FW_PORTS };

/// Addresses the DNS proxy learned for name rules (`fw_common::names`).
#[map(name = "FW_NAMES4")]
static FW_NAMES4: HashMap<[u8; 4], Learned> = HashMap::with_max_entries(LEARNED_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "FW_NAMES6")]
static FW_NAMES6: HashMap<[u8; 16], Learned> = HashMap::with_max_entries(LEARNED_CAPACITY, BPF_F_NO_PREALLOC);

/// The phase's `dns.resolvers`, per `FW_PHASES` slot.
#[map(name = "FW_RESOLVERS")]
static FW_RESOLVERS: Array<Resolvers> = Array::with_max_entries(2, 0);

/// The enforced interface's on-link IPv6 prefixes (filled by userspace from
/// the routing table): neighbours that neighbour discovery may address.
#[map(name = "FW_ONLINK6")]
static FW_ONLINK6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(256, 0);

/// Link-local (fe80::/10), link-scope multicast (ff02::/16), or on-link.
#[inline(always)]
pub fn on_link6(addr: &[u8; 16]) -> bool {
    (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80)
        || (addr[0] == 0xff && addr[1] & 0x0f == 0x02)
        || FW_ONLINK6.get(&Key::new(128, *addr)).is_some()
}

/// The policy in force for this packet.
#[derive(Clone, Copy)]
pub struct Active {
    pub generation: u32,
    /// In the map, not copied: most packets read none of it.
    pub phase: &'static PhaseConfig,
}

/// `None` before any policy was written (generation 0 is never used for a
/// policy; an array reads zeroed until written): callers fail closed.
#[inline(always)]
pub fn active() -> Option<Active> {
    let generation = FW_CONFIG.get(0)?.generation;
    if generation == 0 {
        return None;
    }
    let phase = FW_PHASES.get(generation & 1)?;
    Some(Active { generation, phase })
}

/// The phase slot (`generation & 1`) of the active generation; 0 before
/// any was written. What the reason counters are kept under.
#[inline(always)]
pub fn active_slot() -> u32 {
    match FW_CONFIG.get(0) {
        Some(c) => c.generation & 1,
        None => 0,
    }
}

/// The remote side of a packet, which rules match: the destination on
/// egress, the source on inbound.
#[derive(Clone, Copy)]
pub struct Peer<'a> {
    pub family: u8,
    pub addr: &'a [u8; 16],
}

#[inline(always)]
pub fn peer(direction: Direction, pkt: &Packet) -> Peer<'_> {
    let addr = if direction == Direction::Egress { &pkt.dst } else { &pkt.src };
    Peer { family: pkt.family, addr }
}

/// The deciding rule for (peer, protocol, port), if any rule matches.
#[inline(always)]
pub fn lookup(active: &Active, direction: Direction, peer: Peer, proto: u8, port: u16) -> Option<PolicyValue> {
    let (generation, a) = (active.generation, peer.addr);
    let class = if peer.family == 4 {
        fw_ebpf::addr4::class(&ADDR4, generation, direction, [a[0], a[1], a[2], a[3]])?
    } else {
        let phase = active.phase;
        dir4::class_of(addr6_entry(generation, direction, a, phase.addr6_hash, phase.addr6_miss[direction as usize]))?
    };
    fw_ebpf::ports::unpack(port_rule(generation, class, proto, port))
}

/// The IPv6 address lookup, through the hash (`fw_ebpf::addr6`) where the
/// phase has it, as one BPF-to-BPF call that returns one scalar (a `dir4`
/// entry): inlined, the hash's paths were verified again through the rest
/// of the program at every call site (fw_egress: 610,564 instructions
/// processed, against 515,815 with the trie alone).
#[inline(never)]
fn addr6_entry(generation: u32, direction: Direction, a: &[u8; 16], hash: u8, miss: u32) -> u32 {
    let class = if hash != 0 {
        fw_ebpf::addr6::class(&ADDR6, generation, direction, a, miss)
    } else {
        fw_ebpf::addr6::trie_class(&FW_ADDR6, generation, direction, a)
    };
    class.map_or(dir4::MISS, dir4::found)
}

/// The port lookup (`fw_ebpf::ports::rule`) as one BPF-to-BPF call that
/// returns one scalar: inlined, each of its paths (hash hits and misses,
/// the trie) was verified again through the rest of the program at every
/// call site (fw_egress: 544,702 instructions processed, against 501,522
/// with the trie alone).
#[inline(never)]
fn port_rule(generation: u32, class: u32, proto: u8, port: u16) -> u64 {
    fw_ebpf::ports::rule(&PORTS, generation, class, proto, port)
}

/// Does this host serve `peer` on `local_port`: `Some(allowed)` when an
/// inbound rule decides, `None` when none matches (the caller decides what
/// the phase default means for it). One lookup for the TC programs (a
/// packet from a served port) and the socket hooks (a send from one).
#[inline(always)]
pub fn inbound_rule_allows(active: &Active, peer: Peer, proto: u8, local_port: u16) -> Option<bool> {
    lookup(active, Direction::Inbound, peer, proto, local_port).map(|v| v.action() == Action::Allow)
}

/// A name rule that allows (peer, protocol, port) because the DNS proxy
/// learned the peer's address for it and the answer's TTL has not run out.
/// Only reached when no static rule matched: one hash lookup, then one
/// `FW_PORTS` lookup per live slot (the trie: `port_rule` in this loop
/// took the verifier to 563,127 processed instructions for fw_egress).
#[inline(always)]
fn learned(generation: u32, peer: Peer, proto: u8, port: u16) -> Option<PolicyValue> {
    let a = peer.addr;
    // SAFETY: the value is read at once; a concurrent update by the daemon
    // can at worst mix two valid slot states, each of which is safe.
    let entry = unsafe {
        if peer.family == 4 {
            FW_NAMES4.get(&[a[0], a[1], a[2], a[3]])
        } else {
            FW_NAMES6.get(a)
        }
    }?;
    let now = crate::flow::now_ns();
    let mut i = 0;
    while i < NAME_SLOTS {
        let rule = entry.rule[i];
        if rule != EMPTY_SLOT && entry.expires_ns[i] > now {
            let key = Key::new(PORT_KEY_FULL_BITS, PortKey::new(generation, name_class(rule), proto, port));
            if let Some(v) = FW_PORTS.get(&key) {
                if v.action() == Action::Allow {
                    return Some(*v);
                }
            }
        }
        i += 1;
    }
    None
}

/// The resolvers of the phase of `generation`, when it has `dns:`.
#[inline(always)]
pub fn resolvers(generation: u32) -> Option<&'static Resolvers> {
    FW_RESOLVERS.get(generation & 1).filter(|r| r.enabled != 0)
}

/// Index of `peer` among `resolvers` (IPv6 ones after the IPv4 slots).
/// Compared as integers: an array comparison would be a `memcmp` call.
#[inline(always)]
pub fn resolver_index(resolvers: &Resolvers, peer: Peer) -> Option<u16> {
    let a = peer.addr;
    if peer.family == 4 {
        let want = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        let mut i = 0;
        while i < MAX_RESOLVERS4 {
            if i < resolvers.count4 as usize && u32::from_ne_bytes(resolvers.v4[i]) == want {
                return Some(i as u16);
            }
            i += 1;
        }
    } else {
        let want = u128::from_ne_bytes(*a);
        let mut j = 0;
        while j < MAX_RESOLVERS6 {
            if j < resolvers.count6 as usize && u128::from_ne_bytes(resolvers.v6[j]) == want {
                return Some((MAX_RESOLVERS4 + j) as u16);
            }
            j += 1;
        }
    }
    None
}

/// The verdict of the policy alone (no flow state) for a packet.
#[inline(always)]
pub fn decide(active: &Active, direction: Direction, peer: Peer, proto: u8, port: u16) -> Verdict {
    // A static rule first (a deny rule covering a learned address wins),
    // then what the DNS proxy learned: name rules only allow.
    let found = match lookup(active, direction, peer, proto, port) {
        None if direction == Direction::Egress => learned(active.generation, peer, proto, port),
        found => found,
    };
    let verdict = match found {
        Some(v) => match v.action() {
            Action::Allow => Verdict::new(Reason::PassRule, v.rule),
            Action::Deny => Verdict::new(Reason::DropRule, v.rule),
        },
        None if direction == Direction::Egress
            && ((port == DNS_PORT && (proto == ip_proto::TCP || proto == ip_proto::UDP))
                || (port == DOT_PORT && proto == ip_proto::TCP))
            && resolvers(active.generation).and_then(|r| resolver_index(r, peer)).is_some() =>
        {
            Verdict::new(Reason::PassResolver, crate::verdict::NO_RULE)
        }
        None => {
            let default = match direction {
                Direction::Egress => active.phase.egress_default(),
                Direction::Inbound => active.phase.inbound_default(),
            };
            match default {
                Action::Allow => Verdict::new(Reason::PassDefault, NO_RULE),
                Action::Deny => Verdict::drop(Reason::DropDefault),
            }
        }
    };
    if active.phase.audit != 0 && verdict.reason.is_drop() {
        return Verdict::new(Reason::PassAudit, verdict.rule);
    }
    verdict
}
