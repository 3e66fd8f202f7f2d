//! The flow tables: one hash lookup for every packet of an established
//! connection or of a flow this host opened.
//!
//! Two LRU hashes (see `fw_common::flow`): the protected `FW_FLOWS*` and the
//! probation `FW_FLOWS*_IN`, for what inbound packets open. Each is one map
//! per address family, so that an IPv4 key is 16 bytes instead of IPv6's 40
//! (the lookup hashes and compares the whole key): the code below is
//! generic over the key, [`Key`], and the datapath picks the family once.
//! A flood of new inbound flows evicts only probation entries; an inbound
//! TCP connection leaves probation when its handshake completes, and
//! returns to it when it closes. A key lives in at most one table:
//! admitting a flow inserts it into one, an expired entry is removed when
//! found, and a promotion inserts into the protected table before it
//! removes from probation (a packet in between finds the protected copy
//! first).

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use fw_common::{
    flow::{
        flow_stats, tcp_closed, timeouts, FLOW_AUDIT, FLOW_CLOSING, FLOW_FIN_IN, FLOW_FIN_OUT, FLOW_INBOUND, FLOW_RST,
        FLOW_SYN_ACK, TOUCH_INTERVAL_NS,
    },
    maps::{DEFAULT_FLOW_ENTRIES, DEFAULT_INBOUND_FLOW_ENTRIES},
    policy::proto,
    Direction, FlowKey, FlowKey4, FlowValue, PhaseConfig,
};

use crate::parse::{Packet, Ports, Quoted, TCP_ACK, TCP_DATA, TCP_FIN, TCP_RST, TCP_SYN};

#[map(name = "FW_FLOWS4")]
static FW_FLOWS4: LruHashMap<FlowKey4, FlowValue> = LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

#[map(name = "FW_FLOWS4_IN")]
static FW_FLOWS4_IN: LruHashMap<FlowKey4, FlowValue> = LruHashMap::with_max_entries(DEFAULT_INBOUND_FLOW_ENTRIES, 0);

#[map(name = "FW_FLOWS6")]
static FW_FLOWS6: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

#[map(name = "FW_FLOWS6_IN")]
static FW_FLOWS6_IN: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_INBOUND_FLOW_ENTRIES, 0);

/// A flow key of one address family, and that family's two tables.
pub trait Key: Sized + 'static {
    fn protected() -> &'static LruHashMap<Self, FlowValue>;
    fn probation() -> &'static LruHashMap<Self, FlowValue>;
    fn proto(&self) -> u8;
}

impl Key for FlowKey4 {
    #[inline(always)]
    fn protected() -> &'static LruHashMap<Self, FlowValue> {
        &FW_FLOWS4
    }
    #[inline(always)]
    fn probation() -> &'static LruHashMap<Self, FlowValue> {
        &FW_FLOWS4_IN
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl Key for FlowKey {
    #[inline(always)]
    fn protected() -> &'static LruHashMap<Self, FlowValue> {
        &FW_FLOWS6
    }
    #[inline(always)]
    fn probation() -> &'static LruHashMap<Self, FlowValue> {
        &FW_FLOWS6_IN
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
}

#[map(name = "FW_FLOW_STATS")]
static FW_FLOW_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(flow_stats::ENTRIES, 0);

/// Which table holds a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `FW_FLOWS4`/`FW_FLOWS6`: flows this host opened, established inbound TCP.
    Protected,
    /// `FW_FLOWS4_IN`/`FW_FLOWS6_IN`: what inbound packets opened, until promoted.
    Probation,
}

impl Table {
    #[inline(always)]
    fn map<K: Key>(self) -> &'static LruHashMap<K, FlowValue> {
        match self {
            Table::Protected => K::protected(),
            Table::Probation => K::probation(),
        }
    }
}

/// A live flow entry and the table it is in.
#[derive(Clone, Copy)]
pub struct Entry {
    pub value: *mut FlowValue,
    pub table: Table,
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = FW_FLOW_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Builds an IPv6 key with `local`/`remote` taken from source or destination.
#[inline(always)]
fn make_key6(proto: u8, src: &[u8; 16], dst: &[u8; 16], ports: &Ports, local_is_src: bool) -> FlowKey {
    let (local_addr, remote_addr, lp, rp) =
        if local_is_src { (*src, *dst, ports.src, ports.dst) } else { (*dst, *src, ports.dst, ports.src) };
    FlowKey {
        family: 6,
        proto,
        _pad: 0,
        local_port: lp.to_be_bytes(),
        remote_port: rp.to_be_bytes(),
        local_addr,
        remote_addr,
    }
}

/// Builds an IPv4 key (the addresses' first 4 bytes) likewise.
#[inline(always)]
fn make_key4(proto: u8, src: &[u8; 16], dst: &[u8; 16], ports: &Ports, local_is_src: bool) -> FlowKey4 {
    let (l, r, lp, rp) = if local_is_src { (src, dst, ports.src, ports.dst) } else { (dst, src, ports.dst, ports.src) };
    FlowKey4 {
        proto,
        _pad: 0,
        local_port: lp.to_be_bytes(),
        remote_port: rp.to_be_bytes(),
        _pad2: 0,
        local_addr: [l[0], l[1], l[2], l[3]],
        remote_addr: [r[0], r[1], r[2], r[3]],
    }
}

/// The flow an IPv4 packet belongs to; this host is the source on egress.
#[inline(always)]
pub fn key4(direction: Direction, pkt: &Packet) -> FlowKey4 {
    make_key4(pkt.proto, &pkt.src, &pkt.dst, &pkt.ports, direction == Direction::Egress)
}

/// The flow an IPv6 packet belongs to.
#[inline(always)]
pub fn key6(direction: Direction, pkt: &Packet) -> FlowKey {
    make_key6(pkt.proto, &pkt.src, &pkt.dst, &pkt.ports, direction == Direction::Egress)
}

/// Whether the packet an ICMP error quotes belongs to a live flow. On
/// ingress the quoted packet is one this host sent (its source is local);
/// on egress this host reports an error about a packet it received (its
/// destination is local).
#[inline(always)]
pub fn quoted_is_live(direction: Direction, q: &Quoted, now: u64, phase: &PhaseConfig) -> bool {
    let local_is_src = direction == Direction::Inbound;
    if q.family == 4 {
        is_live(&make_key4(q.proto, &q.src, &q.dst, &q.ports, local_is_src), now, phase)
    } else {
        is_live(&make_key6(q.proto, &q.src, &q.dst, &q.ports, local_is_src), now, phase)
    }
}

/// A timeout of the phase in seconds, its default when unset (zero).
#[inline(always)]
fn seconds(set: u32, default: u32) -> u64 {
    u64::from(if set == 0 { default } else { set })
}

/// How long a flow may stay idle (plus the touch interval: `last_seen_ns`
/// may lag the last packet by that much), under the active phase.
#[inline(always)]
fn timeout_ns(proto: u8, flags: u8, phase: &PhaseConfig) -> u64 {
    let t = &phase.timeouts;
    let s = match proto {
        proto::TCP if tcp_closed(flags) => seconds(t.tcp_closing, timeouts::TCP_CLOSING),
        proto::TCP => seconds(t.tcp_established, timeouts::TCP_ESTABLISHED),
        proto::UDP => seconds(t.udp, timeouts::UDP),
        _ => seconds(t.other, timeouts::OTHER),
    };
    s * 1_000_000_000 + TOUCH_INTERVAL_NS
}

/// Whether a flow last seen at `last_seen` is idle past its timeout. The
/// timeout is read only for a flow idle longer than the shortest one a
/// policy may set: a busy flow costs one subtraction.
#[inline(always)]
fn expired(now: u64, last_seen: u64, proto: u8, flags: u8, phase: &PhaseConfig) -> bool {
    let idle = now.wrapping_sub(last_seen);
    idle > u64::from(timeouts::MIN) * 1_000_000_000 + TOUCH_INTERVAL_NS && idle > timeout_ns(proto, flags, phase)
}

/// The live entry for `key`: the protected table first (an established
/// connection or a flow this host opened costs one lookup), then probation.
/// An expired entry is removed and reads as absent, so that the flow,
/// opened again, is in one table only.
#[inline(always)]
pub fn get<K: Key>(key: &K, now: u64, phase: &PhaseConfig) -> Option<Entry> {
    let (value, table) = match K::protected().get_ptr_mut(key) {
        Some(v) => (v, Table::Protected),
        None => (K::probation().get_ptr_mut(key)?, Table::Probation),
    };
    // SAFETY: the pointer comes from a successful map lookup; the value
    // stays valid for this program run (RCU).
    let v = unsafe { &*value };
    if expired(now, v.last_seen_ns, key.proto(), v.flags, phase) {
        if table.map::<K>().remove(key).is_ok() {
            count(flow_stats::EXPIRED);
        }
        return None;
    }
    Some(Entry { value, table })
}

/// Whether `key` has a live entry in either table (nothing is changed).
#[inline(always)]
fn is_live<K: Key>(key: &K, now: u64, phase: &PhaseConfig) -> bool {
    let value = match K::protected().get_ptr(key) {
        Some(v) => v,
        None => match K::probation().get_ptr(key) {
            Some(v) => v,
            None => return false,
        },
    };
    // SAFETY: as in `get`.
    let v = unsafe { &*value };
    !expired(now, v.last_seen_ns, key.proto(), v.flags, phase)
}

/// The TCP marks after a segment with `tcp_flags` going `direction` (see
/// docs/datapath.md "Flow state"): a SYN without ACK on a closing flow
/// starts a new connection (all marks cleared, the handshake followed
/// again); a RST marks it reset; a FIN marks the side that sent it; a
/// segment carrying data clears a RST that did not close the connection.
#[inline(always)]
fn tcp_marks(flags: u8, direction: Direction, tcp_flags: u8) -> u8 {
    let mut f = flags;
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && f & FLOW_CLOSING != 0 {
        f &= !(FLOW_CLOSING | FLOW_SYN_ACK);
    }
    if tcp_flags & TCP_RST != 0 {
        f |= FLOW_RST;
    } else {
        if tcp_flags & TCP_FIN != 0 {
            f |= if direction == Direction::Egress { FLOW_FIN_OUT } else { FLOW_FIN_IN };
        }
        if tcp_flags & TCP_DATA != 0 {
            f &= !FLOW_RST;
        }
    }
    f
}

/// Marks a flow seen now and follows its TCP state. True when this packet
/// closed the connection (see [`tcp_closed`]).
#[inline(always)]
pub fn touch(entry: Entry, now: u64, direction: Direction, pkt: &Packet) -> bool {
    // SAFETY: as in `get`; racing writers only store whole, valid values.
    let value = unsafe { &mut *entry.value };
    let old = value.flags;
    if pkt.proto == proto::TCP {
        let new = tcp_marks(old, direction, pkt.tcp_flags);
        if new != old {
            value.flags = new;
            value.last_seen_ns = now;
            return !tcp_closed(old) && tcp_closed(new);
        }
    }
    if now.wrapping_sub(value.last_seen_ns) > TOUCH_INTERVAL_NS {
        value.last_seen_ns = now;
    }
    false
}

/// Records a flow the policy admitted (a rule, the phase default, or audit
/// mode: `audit`): in probation when an inbound packet opened it, else in
/// the protected table.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn admit<K: Key>(key: &K, direction: Direction, generation: u32, rule: u32, audit: bool, pkt: &Packet, now: u64) {
    let mut flags = if direction == Direction::Inbound { FLOW_INBOUND } else { 0 };
    if audit {
        flags |= FLOW_AUDIT;
    }
    if pkt.proto == proto::TCP {
        flags = tcp_marks(flags, direction, pkt.tcp_flags);
    }
    let value = FlowValue {
        last_seen_ns: now,
        generation,
        rule,
        policy_port: pkt.policy_port,
        flags,
        _pad1: 0,
        syn_ack_seq: 0,
    };
    let (table, stat) = if direction == Direction::Inbound {
        (Table::Probation, flow_stats::OPENED_IN)
    } else {
        (Table::Protected, flow_stats::OPENED)
    };
    // A full table evicts its least recently used entry; failure to insert
    // only means the next packet is judged by the policy again.
    if table.map::<K>().insert(key, &value, 0).is_ok() {
        count(stat);
    }
}

/// Follows the handshake of an inbound TCP connection in probation: this
/// host's SYN-ACK is recorded, and the peer's segment that acknowledges
/// exactly it (the last of the handshake) promotes the flow to the
/// protected table. A spoofed peer never sees the SYN-ACK: no flood of
/// SYNs and ACKs completes the handshake here.
#[inline(always)]
pub fn follow_handshake<K: Key>(key: &K, entry: Entry, direction: Direction, pkt: &Packet) {
    // SAFETY: as in `get`.
    let value = unsafe { &mut *entry.value };
    let flags = pkt.tcp_flags;
    if direction == Direction::Egress {
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            value.syn_ack_seq = pkt.tcp_number;
            value.flags |= FLOW_SYN_ACK;
        }
    } else if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK
        && value.flags & (FLOW_SYN_ACK | FLOW_CLOSING) == FLOW_SYN_ACK
        && pkt.tcp_number == value.syn_ack_seq.wrapping_add(1)
    {
        // Protected first: a packet on another CPU finds one copy or the
        // other, never none.
        if K::protected().insert(key, value, 0).is_ok() {
            let _ = K::probation().remove(key);
            count(flow_stats::PROMOTED);
        }
    }
}

/// Moves a promoted inbound connection that closed back to probation: the
/// protected table keeps open connections only, and a peer decides how
/// fast it opens and closes them. (Half-closed is still open: the side
/// that did not send its FIN may go on sending.)
#[inline(always)]
pub fn demote_closing<K: Key>(key: &K, entry: Entry) {
    // SAFETY: as in `get`.
    let value = unsafe { &*entry.value };
    if value.flags & FLOW_INBOUND != 0 && K::probation().insert(key, value, 0).is_ok() {
        let _ = K::protected().remove(key);
        count(flow_stats::DEMOTED);
    }
}

/// Forgets a flow that the active policy no longer admits.
#[inline(always)]
pub fn forget<K: Key>(key: &K, entry: Entry) {
    if entry.table.map::<K>().remove(key).is_ok() {
        count(flow_stats::FORGOTTEN);
    }
}
