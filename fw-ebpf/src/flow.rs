//! The flow table: one hash lookup for every packet of an admitted flow.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap};
use fw_common::{
    flow::{
        FLOW_FIN, FLOW_INBOUND, OTHER_TIMEOUT_NS, TCP_CLOSING_TIMEOUT_NS, TCP_TIMEOUT_NS, TOUCH_INTERVAL_NS,
        UDP_TIMEOUT_NS,
    },
    maps::DEFAULT_FLOW_ENTRIES,
    policy::proto,
    Direction, FlowKey, FlowValue,
};

use crate::parse::{Packet, Ports, Quoted, TCP_FIN, TCP_RST};

#[map(name = "FW_FLOWS")]
static FW_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_FLOW_ENTRIES, 0);

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Builds the key with `local`/`remote` taken from source or destination.
#[inline(always)]
fn make_key(family: u8, proto: u8, src: &[u8; 16], dst: &[u8; 16], ports: &Ports, local_is_src: bool) -> FlowKey {
    let (local_addr, remote_addr, lp, rp) =
        if local_is_src { (*src, *dst, ports.src, ports.dst) } else { (*dst, *src, ports.dst, ports.src) };
    FlowKey {
        family,
        proto,
        _pad: 0,
        local_port: lp.to_be_bytes(),
        remote_port: rp.to_be_bytes(),
        local_addr,
        remote_addr,
    }
}

/// The flow a packet belongs to; this host is the source on egress.
#[inline(always)]
pub fn key(direction: Direction, pkt: &Packet) -> FlowKey {
    make_key(pkt.family, pkt.proto, &pkt.src, &pkt.dst, &pkt.ports, direction == Direction::Egress)
}

/// The flow of the packet an ICMP error quotes. On ingress the quoted packet
/// is one this host sent (its source is local); on egress this host reports
/// an error about a packet it received (its destination is local).
#[inline(always)]
pub fn quoted_key(direction: Direction, q: &Quoted) -> FlowKey {
    make_key(q.family, q.proto, &q.src, &q.dst, &q.ports, direction == Direction::Inbound)
}

#[inline(always)]
fn timeout_ns(proto: u8, flags: u8) -> u64 {
    match proto {
        proto::TCP if flags & FLOW_FIN != 0 => TCP_CLOSING_TIMEOUT_NS,
        proto::TCP => TCP_TIMEOUT_NS,
        proto::UDP => UDP_TIMEOUT_NS,
        _ => OTHER_TIMEOUT_NS,
    }
}

/// A live entry for `key`, expired ones read as absent.
#[inline(always)]
pub fn get(key: &FlowKey, now: u64) -> Option<*mut FlowValue> {
    let entry = FW_FLOWS.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful map lookup; the value
    // stays valid for this program run (RCU).
    let value = unsafe { &*entry };
    if now.wrapping_sub(value.last_seen_ns) > timeout_ns(key.proto, value.flags) {
        return None;
    }
    Some(entry)
}

/// Marks a flow seen now, and closing when the packet carries FIN or RST.
#[inline(always)]
pub fn touch(entry: *mut FlowValue, now: u64, tcp_flags: u8) {
    // SAFETY: as in `get`; racing writers only store whole, valid values.
    let value = unsafe { &mut *entry };
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 && value.flags & FLOW_FIN == 0 {
        value.flags |= FLOW_FIN;
        value.last_seen_ns = now;
    } else if now.wrapping_sub(value.last_seen_ns) > TOUCH_INTERVAL_NS {
        value.last_seen_ns = now;
    }
}

/// Records a flow that a rule admitted.
#[inline(always)]
pub fn admit(key: &FlowKey, direction: Direction, generation: u32, rule: u32, policy_port: u16, tcp_flags: u8, now: u64) {
    let mut flags = if direction == Direction::Inbound { FLOW_INBOUND } else { 0 };
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= FLOW_FIN;
    }
    let value = FlowValue { last_seen_ns: now, generation, rule, policy_port, flags, _pad1: 0, _pad4: 0 };
    // A full table evicts its least recently used entry; failure to insert
    // only means the next packet is judged by the policy again.
    let _ = FW_FLOWS.insert(key, &value, 0);
}

/// Forgets a flow that the active policy no longer admits.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let _ = FW_FLOWS.remove(key);
}
