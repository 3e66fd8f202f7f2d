//! Tracked flows, keyed the same way from both directions: `local` is this
//! host's side (source on egress, destination on ingress), so a reply finds
//! the entry its request created with one hash lookup.
//!
//! An entry records how the flow was admitted (origin, rule, the port the
//! rule matched) and the generation of the policy that admitted it. A packet
//! of a flow admitted under another generation is re-checked against the
//! active policy before it passes: a phase switch also closes flows opened
//! before it.
//!
//! Two LRU hashes with these keys and values, a key in at most one of them,
//! so that a peer flooding the host with new flows cycles only the flows
//! such a flood can open (finding 7 of issue 11):
//!
//! * `FW_FLOWS4`/`FW_FLOWS6`, protected: flows this host opened, and
//!   inbound TCP connections whose handshake completed (see
//!   [`FLOW_SYN_ACK`]);
//! * `FW_FLOWS4_IN`/`FW_FLOWS6_IN`, probation: everything an inbound packet
//!   opened (UDP, ICMP echo, other protocols, TCP before its handshake
//!   completes).
//!
//! One map per table and address family: IPv4 keys are [`FlowKey4`].
//!
//! An evicted entry only costs a fresh policy lookup, it never opens
//! anything; the lookup tries the protected table first.

/// A flow, as userspace and the IPv6 tables see it. 8-aligned, so that the
/// kernel builds it (and hashes it) with 8-byte moves; 40 bytes.
///
/// The IPv4 tables hold [`FlowKey4`] instead (16 bytes): the kernel hashes
/// and compares every byte of a key on each lookup, and the lookup is most
/// of what an established packet costs (measured: 40-byte keys cost IPv4
/// packets about twice what 16-byte keys do). Userspace reads both kinds of
/// table as `FlowKey`s ([`FlowKey4::widen`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct FlowKey {
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    // Integer padding, not `[u8; N]`: the BPF backend zeroes byte arrays
    // with a call to a byte-loop memset (see fw-ebpf's `mem`).
    pub _pad: u16,
    /// Big-endian; ICMP echo uses the identifier as both ports.
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
    /// IPv4 addresses use the first 4 bytes, the rest stays zero.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// The key of the IPv4 flow tables: [`FlowKey`] without the family (the
/// table says it) and with 4-byte addresses. 16 bytes, 8-aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct FlowKey4 {
    pub proto: u8,
    pub _pad: u8,
    /// Big-endian; ICMP echo uses the identifier as both ports.
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
    pub _pad2: u16,
    pub local_addr: [u8; 4],
    pub remote_addr: [u8; 4],
}

impl FlowKey4 {
    /// The same flow as a [`FlowKey`] (family 4).
    pub fn widen(&self) -> FlowKey {
        let (l, r) = (self.local_addr, self.remote_addr);
        FlowKey {
            family: 4,
            proto: self.proto,
            _pad: 0,
            local_port: self.local_port,
            remote_port: self.remote_port,
            local_addr: [l[0], l[1], l[2], l[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [r[0], r[1], r[2], r[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }
}

impl FlowKey {
    /// The key of this flow in an IPv4 table, when it is an IPv4 flow.
    pub fn narrow(&self) -> Option<FlowKey4> {
        if self.family != 4 {
            return None;
        }
        let (l, r) = (self.local_addr, self.remote_addr);
        Some(FlowKey4 {
            proto: self.proto,
            _pad: 0,
            local_port: self.local_port,
            remote_port: self.remote_port,
            _pad2: 0,
            local_addr: [l[0], l[1], l[2], l[3]],
            remote_addr: [r[0], r[1], r[2], r[3]],
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowValue {
    /// `bpf_ktime_get_coarse_ns` of the last packet (refreshed at most
    /// every [`TOUCH_INTERVAL_NS`], to spare the cache line).
    pub last_seen_ns: u64,
    /// Generation whose policy admitted the flow; another generation re-checks it.
    pub generation: u32,
    /// Rule that admitted it.
    pub rule: u32,
    /// The port the admitting rule matched (the local port for inbound
    /// flows, the remote one for outbound; ICMP: `type << 8 | code`).
    pub policy_port: u16,
    /// [`FLOW_INBOUND`], [`FLOW_RST`], [`FLOW_SYN_ACK`], [`FLOW_FIN_OUT`],
    /// [`FLOW_FIN_IN`], [`FLOW_AUDIT`].
    pub flags: u8,
    pub _pad1: u8,
    /// With [`FLOW_SYN_ACK`]: the sequence number of this host's SYN-ACK.
    pub syn_ack_seq: u32,
}

/// The flow was opened by a peer (admitted on ingress).
pub const FLOW_INBOUND: u8 = 1;
/// TCP: a RST was seen either way. Cleared by a segment that carries data
/// (the RST did not close the connection: out of its window, or answered
/// with a challenge ACK, RFC 5961) or by a new SYN on the same addresses
/// and ports (a new connection, a reused 4-tuple).
pub const FLOW_RST: u8 = 2;
/// An inbound TCP connection in the probation table that this host
/// answered with a SYN-ACK (`syn_ack_seq`). The peer's segment that
/// acknowledges exactly that SYN-ACK (`ack == syn_ack_seq + 1`, the one
/// that completes the handshake) moves the flow to the protected table: a
/// peer that spoofs its source address never sees the SYN-ACK, and guesses
/// its 32-bit sequence number once in 4 billion tries. Closing moves it
/// back: only open connections are protected, so a peer that opens and
/// closes connections as fast as it can cycles the probation table only.
pub const FLOW_SYN_ACK: u8 = 4;
/// TCP: this host sent a FIN (it will send no more data; the peer may).
pub const FLOW_FIN_OUT: u8 = 8;
/// TCP: the peer sent a FIN.
pub const FLOW_FIN_IN: u8 = 16;
/// Admitted only because the phase audits: its packets are counted as
/// `pass_audit` (would drop) without an event each (one per flow).
pub const FLOW_AUDIT: u8 = 32;
/// Every TCP closing mark; a new SYN clears them all.
pub const FLOW_CLOSING: u8 = FLOW_RST | FLOW_FIN_OUT | FLOW_FIN_IN;

/// A TCP connection is closed once a RST was seen or both sides sent a
/// FIN; half-closed (a FIN one way) is still open the other way: the
/// side that did not close may send for as long as it likes.
#[inline(always)]
pub const fn tcp_closed(flags: u8) -> bool {
    flags & FLOW_RST != 0 || flags & (FLOW_FIN_OUT | FLOW_FIN_IN) == FLOW_FIN_OUT | FLOW_FIN_IN
}

/// Indices of `FW_FLOW_STATS` (per-CPU `u64` counters): how fast each table
/// fills, so that operators see a flood (an insert into a full table evicts
/// its least recently used entry).
pub mod flow_stats {
    /// Flows this host opened, inserted into the protected table.
    pub const OPENED: u32 = 0;
    /// Flows inbound packets opened, inserted into the probation table.
    pub const OPENED_IN: u32 = 1;
    /// Inbound TCP connections moved to the protected table.
    pub const PROMOTED: u32 = 2;
    /// Promoted connections moved back to probation when they closed.
    pub const DEMOTED: u32 = 3;
    /// Entries removed because a lookup found them idle past their timeout.
    pub const EXPIRED: u32 = 4;
    /// Entries removed because the active policy no longer admits them.
    pub const FORGOTTEN: u32 = 5;
    pub const ENTRIES: u32 = 6;
}

/// Default idle timeouts, in seconds: what a phase without `timeouts:`
/// gets (docs/datapath.md, "Flow state", says why each).
pub mod timeouts {
    /// Established (and half-closed) TCP: 5 days, as Linux conntrack's
    /// `nf_conntrack_tcp_timeout_established` (432,000 s). Far past any
    /// default keepalive (Linux `tcp_keepalive_time` 7,200 s): an idle SSH
    /// session or WebSocket without application pings survives; a dead
    /// one costs an LRU entry, which the table evicts first.
    pub const TCP_ESTABLISHED: u32 = 5 * 86_400;
    /// After a RST, or a FIN each way: the last ACKs and retransmissions
    /// (conntrack's CLOSE state keeps 10 s).
    pub const TCP_CLOSING: u32 = 10;
    /// UDP: 10 minutes, past the longest quiet period of a live WebRTC
    /// media flow: consent freshness checks every ~5 s and expires after
    /// 30 s without a response (RFC 7675), and a TURN allocation lives 600 s
    /// by default and is refreshed before it expires (RFC 8656).
    pub const UDP: u32 = 600;
    /// ICMP echo and other protocols.
    pub const OTHER: u32 = 30;
    /// Shortest and longest a policy may set: a second (the clock the
    /// flows keep), a year.
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 365 * 86_400;
}

/// `last_seen_ns` is rewritten only when older than this (a second), and a
/// flow expires only once idle for its timeout plus this: it never expires
/// early because its last packets did not rewrite the time.
pub const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// A fragmented datagram: non-first fragments carry no ports, so they follow
/// the verdict their first fragment got, found by this key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct FragKey {
    pub family: u8,
    pub proto: u8,
    pub _pad: u16,
    /// IPv4: the 16-bit identification; IPv6: the fragment header's id.
    pub id: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FragValue {
    pub seen_ns: u64,
    /// Rule that passed the first fragment, or `u32::MAX` (a tracked flow).
    pub rule: u32,
    pub _pad: u32,
}

/// Fragments of one datagram arrive within this (Linux's ipfrag_time).
pub const FRAG_TIMEOUT_NS: u64 = 30 * 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowKey4>(), 16);
        assert_eq!(size_of::<FlowValue>(), 24);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<FragValue>(), 16);
    }

    #[test]
    fn an_ipv4_key_narrows_and_widens_back() {
        let key = FlowKey {
            family: 4,
            proto: 17,
            _pad: 0,
            local_port: [0x9c, 0x40],
            remote_port: [0, 53],
            local_addr: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [198, 19, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(key.narrow().map(|k| k.widen()), Some(key));
        assert_eq!(FlowKey { family: 6, ..key }.narrow(), None);
    }
}
