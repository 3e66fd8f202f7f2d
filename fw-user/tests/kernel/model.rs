//! The reference model: a plain-Rust packet parser and decision procedure,
//! written from the design (DESIGN.md "Datapath"), the documented order in
//! `fw-ebpf/src/datapath.rs` and the policy semantics, sharing no code with
//! the kernel programs. The policy part reads the compiled tables with
//! `CompiledPhase::lookup`, the reference LPM lookup.
//!
//! It keeps its own flow and fragment tables and applies to them what the
//! kernel must do (admit, touch, re-check, forget, remember a first
//! fragment), so that a sequence of packets can be predicted, not only a
//! single one.
//!
//! Semantics, in the order a packet meets them:
//!
//! * Parsing. A frame shorter than its Ethernet header plus VLAN tags is
//!   `drop_truncated_l2`; more than two tags `drop_vlan_depth`; anything but
//!   IPv4/IPv6 passes (`pass_non_ip`). An IP header cut short is
//!   `drop_truncated_l3`; a wrong version, IHL < 5, total length smaller than
//!   the header or beyond the frame, IPv6 payload length 0 or beyond the frame
//!   is `drop_bad_ip_header`. IPv6 extension headers (hop-by-hop, routing,
//!   destination options, fragment, AH) are walked, at most 6; a 7th, or one
//!   of the types no parser can walk (135, 139, 140, 253, 254), is
//!   `drop_ipv6_ext_chain`; an extension header running past the datagram is
//!   `drop_truncated_l3`. The transport header (TCP 20, UDP 8, SCTP 12,
//!   ICMP/ICMPv6 8 bytes) must lie inside the datagram, else
//!   `drop_truncated_l4`. Non-first fragments have no transport header.
//!   Headers are only looked for within the first 512 bytes of the frame (a
//!   documented limit of the parser: a header read starting beyond it counts
//!   as missing).
//! * ICMPv6 control in IPv6 passes: MLD (130-132, 143) with hop limit 1,
//!   router and neighbour discovery (133-137) with hop limit 255 to a
//!   link-local (fe80::/10) or link-scope multicast (ff02::/16) destination
//!   (the on-link prefix map is empty in these tests). ICMP in IPv6 and
//!   ICMPv6 in IPv4 are parsed as protocols without ports.
//! * A non-first fragment follows its datagram's first fragment: passes if
//!   that one passed less than 30 s ago, else `drop_fragment`. The datagram
//!   is identified by (src, dst, id) and the protocol: for IPv4 the protocol
//!   field; for IPv6 the fragment header's Next Header (the first header of
//!   the fragmentable part, the same in every fragment, RFC 8200 4.5).
//! * Two flow tables, a key in at most one: protected (flows this host
//!   opened, inbound TCP once its handshake completed) and probation (what
//!   inbound packets opened). The protected one is looked at first; an
//!   entry found idle past its timeout (the active phase's, plus the 1 s
//!   touch interval) there or in probation is removed and the packet
//!   judged as untracked. Timeouts: TCP closed (a RST, or a FIN each way)
//!   `tcp_closing`, other TCP `tcp_established`, UDP `udp`, the rest
//!   `other`.
//! * A live tracked flow (same generation) passes (`pass_audit` when audit
//!   mode admitted it); of another generation, it is re-checked against
//!   the active policy in the direction that opened it (origin direction,
//!   remote peer, protocol, the port it was admitted on: rule, default or
//!   audit) and re-stamped, or forgotten and the packet judged afresh.
//! * TCP marks: a SYN without ACK on a flow with closing marks clears them
//!   (and the recorded SYN-ACK): a new connection; a RST marks RST; a FIN
//!   marks the side that sent it; a segment with data clears RST. A change
//!   of marks rewrites the last-seen time.
//! * A TCP flow in probation records this host's SYN-ACK (egress, SYN and
//!   ACK set: its sequence number), and moves to the protected table on the
//!   inbound segment with ACK but neither SYN nor RST that acknowledges
//!   exactly that SYN-ACK (ack = seq + 1), unless it has a closing mark. A
//!   protected flow an inbound packet opened goes back to probation with
//!   the packet that closes it.
//! * An ICMP error quoting a live tracked flow passes when it is addressed
//!   to the quoted packet's source; one quoting a later fragment, when the
//!   first fragment of that datagram passed less than 30 s ago. IPv6 quotes
//!   are parsed through their extension headers.
//! * The policy: the deciding rule (allow/deny) or the phase default; audit
//!   turns drops into `pass_audit`; an egress packet that only the default
//!   drops, sent from a port an inbound rule serves to that peer, is
//!   `drop_spoofed_reply`, unless it is a TCP SYN without ACK (a connection
//!   this host opens). What the policy passes (rule, default, audit) opens
//!   a flow (ICMP: echo requests only; inbound TCP: a SYN without ACK only;
//!   outbound TCP: neither a RST nor a SYN-ACK), in probation when the
//!   packet is inbound, else in the protected table.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use fw_common::{
    flow::{
        tcp_closed, timeouts, FLOW_AUDIT, FLOW_CLOSING, FLOW_FIN_IN, FLOW_FIN_OUT, FLOW_INBOUND, FLOW_RST,
        FLOW_SYN_ACK, FRAG_TIMEOUT_NS, TOUCH_INTERVAL_NS,
    },
    Action, Direction, FlowKey, FlowValue, FragKey, FragValue, PolicyValue, Reason,
};
use fw_user::policy::compile::tables::{CompiledPhase, PhaseSettings, TableVerdict};

pub const NO_RULE: u32 = u32::MAX;
/// The parser's look-ahead window (see the module docs).
pub const HEADER_WINDOW: usize = 512;

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    Whole,
    First,
    Later,
}

/// The transport identity of the packet an ICMP error quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub family: u8,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// A later fragment: `(fragment protocol, id)` of its datagram.
    pub later: Option<(u8, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headers {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The transport protocol (IPv6: the header after the walked chain).
    pub proto: u8,
    /// Flow ports (ICMP echo: the identifier twice).
    pub sport: u16,
    pub dport: u16,
    /// What the policy matches: destination port, ICMP `type << 8 | code`.
    pub policy_port: u16,
    pub icmp_type: Option<u8>,
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// TCP: data follows the header.
    pub tcp_data: bool,
    pub fragment: Fragment,
    pub frag_id: u32,
    /// IPv6 fragments: the fragment header's Next Header.
    pub frag_next: u8,
    /// IPv4 TTL / IPv6 hop limit.
    pub hop_limit: u8,
    pub quote: Option<Quote>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    NotIp,
    Ip(Headers),
    Bad(Reason),
}

/// Byte access honouring the frame end and the look-ahead window.
struct Frame<'a>(&'a [u8]);

impl Frame<'_> {
    fn get(&self, off: usize, n: usize) -> Option<&[u8]> {
        if off > HEADER_WINDOW || off + n > self.0.len() {
            return None;
        }
        Some(&self.0[off..off + n])
    }
    fn be16(&self, off: usize) -> Option<u16> {
        self.get(off, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn addr16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..b.len()].copy_from_slice(b);
    a
}

fn is_vlan(ethertype: u16) -> bool {
    ethertype == 0x8100 || ethertype == 0x88a8
}

fn walkable_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

fn unwalkable_ext(next: u8) -> bool {
    matches!(next, 135 | 139 | 140 | 253 | 254)
}

fn icmp_echo(proto: u8, ty: u8) -> bool {
    if proto == ICMP {
        ty == 0 || ty == 8
    } else {
        ty == 128 || ty == 129
    }
}

fn icmp_error(proto: u8, ty: u8) -> bool {
    if proto == ICMP {
        ty == 3 || ty == 11 || ty == 12
    } else {
        (1..=4).contains(&ty)
    }
}

/// Parses a whole frame (at least 14 bytes: shorter frames cannot be fed to
/// a TC program).
pub fn parse(bytes: &[u8]) -> Parsed {
    let f = Frame(bytes);
    let Some(mut ethertype) = f.be16(12) else {
        return Parsed::Bad(Reason::DropTruncatedL2);
    };
    let mut l3 = 14;
    let mut tags = 0;
    while is_vlan(ethertype) {
        if tags == 2 {
            return Parsed::Bad(Reason::DropVlanDepth);
        }
        match f.be16(l3 + 2) {
            Some(t) => ethertype = t,
            None => return Parsed::Bad(Reason::DropTruncatedL2),
        }
        l3 += 4;
        tags += 1;
    }
    let result = match ethertype {
        0x0800 => ipv4(&f, l3),
        0x86dd => ipv6(&f, l3),
        _ => return Parsed::NotIp,
    };
    match result {
        Ok(h) => Parsed::Ip(h),
        Err(r) => Parsed::Bad(r),
    }
}

fn empty_headers(family: u8, src: [u8; 16], dst: [u8; 16], proto: u8) -> Headers {
    Headers {
        family,
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        policy_port: 0,
        icmp_type: None,
        tcp_flags: 0,
        tcp_seq: 0,
        tcp_ack: 0,
        tcp_data: false,
        fragment: Fragment::Whole,
        frag_id: 0,
        frag_next: 0,
        hop_limit: 0,
        quote: None,
    }
}

fn ipv4(f: &Frame, l3: usize) -> Result<Headers, Reason> {
    let h = f.get(l3, 20).ok_or(Reason::DropTruncatedL3)?;
    let version = h[0] >> 4;
    let header_len = usize::from(h[0] & 0xf) * 4;
    let total = usize::from(be16(&h[2..4]));
    let in_frame = f.0.len() - l3;
    if version != 4 || header_len < 20 || total < header_len || total > in_frame {
        return Err(Reason::DropBadIpHeader);
    }
    let mut out = empty_headers(4, addr16(&h[12..16]), addr16(&h[16..20]), h[9]);
    out.hop_limit = h[8];
    let flags_offset = be16(&h[6..8]);
    out.frag_id = u32::from(be16(&h[4..6]));
    out.fragment = match (flags_offset & 0x1fff, flags_offset & 0x2000) {
        (0, 0) => Fragment::Whole,
        (0, _) => Fragment::First,
        _ => Fragment::Later,
    };
    out.frag_next = out.proto;
    if out.fragment != Fragment::Later {
        transport(f, &mut out, l3 + header_len, l3 + total)?;
    }
    Ok(out)
}

fn ipv6(f: &Frame, l3: usize) -> Result<Headers, Reason> {
    let h = f.get(l3, 40).ok_or(Reason::DropTruncatedL3)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::DropBadIpHeader);
    }
    let payload = usize::from(be16(&h[4..6]));
    if payload == 0 || 40 + payload > f.0.len() - l3 {
        return Err(Reason::DropBadIpHeader);
    }
    let end = l3 + 40 + payload;
    let mut out = empty_headers(6, addr16(&h[8..24]), addr16(&h[24..40]), 0);
    out.hop_limit = h[7];
    let mut next = h[6];
    let mut at = l3 + 40;
    let mut walked = 0;
    loop {
        if unwalkable_ext(next) || (walkable_ext(next) && walked == 6) {
            return Err(Reason::DropIpv6ExtChain);
        }
        if !walkable_ext(next) {
            break;
        }
        let len = match next {
            44 => {
                let x = f.get(at, 8).ok_or(Reason::DropTruncatedL3)?;
                let field = be16(&x[2..4]);
                out.fragment = if field >> 3 != 0 {
                    Fragment::Later
                } else if field & 1 != 0 {
                    Fragment::First
                } else {
                    Fragment::Whole
                };
                out.frag_id = u32::from_be_bytes([x[4], x[5], x[6], x[7]]);
                out.frag_next = x[0];
                8
            }
            51 => (usize::from(f.get(at, 2).ok_or(Reason::DropTruncatedL3)?[1]) + 2) * 4,
            _ => (usize::from(f.get(at, 2).ok_or(Reason::DropTruncatedL3)?[1]) + 1) * 8,
        };
        next = f.0[at];
        at += len;
        if at > end {
            return Err(Reason::DropTruncatedL3);
        }
        walked += 1;
        if out.fragment == Fragment::Later {
            // The rest of the chain travels in the first fragment.
            break;
        }
    }
    out.proto = next;
    if out.fragment != Fragment::Later {
        transport(f, &mut out, at, end)?;
    }
    Ok(out)
}

fn transport(f: &Frame, out: &mut Headers, at: usize, end: usize) -> Result<(), Reason> {
    let crossed = (out.proto == ICMP && out.family == 6) || (out.proto == ICMPV6 && out.family == 4);
    let need = match out.proto {
        _ if crossed => return Ok(()),
        TCP => 20,
        UDP | ICMP | ICMPV6 => 8,
        SCTP => 12,
        _ => return Ok(()),
    };
    let h = match f.get(at, need) {
        Some(h) if at + need <= end => h,
        _ => return Err(Reason::DropTruncatedL4),
    };
    if out.proto == ICMP || out.proto == ICMPV6 {
        let ty = h[0];
        out.icmp_type = Some(ty);
        out.policy_port = u16::from(ty) << 8 | u16::from(h[1]);
        if icmp_echo(out.proto, ty) {
            let id = be16(&h[4..6]);
            (out.sport, out.dport) = (id, id);
        } else if icmp_error(out.proto, ty) {
            out.quote = quote(f, out.proto, at + 8, end);
        }
    } else {
        out.sport = be16(&h[0..2]);
        out.dport = be16(&h[2..4]);
        out.policy_port = out.dport;
        if out.proto == TCP {
            out.tcp_flags = h[13];
            out.tcp_seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            out.tcp_ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            out.tcp_data = end - at > usize::from(h[12] >> 4) * 4;
        }
    }
    Ok(())
}

/// The quoted packet of an ICMP error: its IP header (ICMP quotes IPv4,
/// ICMPv6 quotes IPv6; IPv6 extension headers walked as in a packet, at
/// most 6) and 8 bytes of its transport header, inside the error's
/// datagram. Only TCP/UDP/SCTP and echo quotes identify a flow; a later
/// fragment identifies its datagram.
fn quote(f: &Frame, icmp_proto: u8, at: usize, end: usize) -> Option<Quote> {
    let mut q = Quote { family: 0, proto: 0, src: [0; 16], dst: [0; 16], sport: 0, dport: 0, later: None };
    let l4 = if icmp_proto == ICMP {
        let h = f.get(at, 20)?;
        let ihl = usize::from(h[0] & 0xf) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        (q.family, q.proto, q.src, q.dst) = (4, h[9], addr16(&h[12..16]), addr16(&h[16..20]));
        if be16(&h[6..8]) & 0x1fff != 0 {
            q.later = Some((h[9], u32::from(be16(&h[4..6]))));
            return (at + ihl <= end).then_some(q);
        }
        at + ihl
    } else {
        // The addresses are read as two separate 16-byte fields, each of
        // which must start inside the window.
        let h = f.get(at, 40)?;
        f.get(at + 24, 16)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        (q.family, q.src, q.dst) = (6, addr16(&h[8..24]), addr16(&h[24..40]));
        let mut next = h[6];
        let mut hoff = at + 40;
        let mut walked = 0;
        while walked < 6 && walkable_ext(next) {
            let len = match next {
                44 => {
                    let x = f.get(hoff, 8)?;
                    let id = u32::from_be_bytes([x[4], x[5], x[6], x[7]]);
                    if be16(&x[2..4]) >> 3 != 0 {
                        q.later = Some((x[0], id));
                    }
                    8
                }
                51 => (usize::from(f.get(hoff, 2)?[1]) + 2) * 4,
                _ => (usize::from(f.get(hoff, 2)?[1]) + 1) * 8,
            };
            next = f.0[hoff];
            hoff += len;
            walked += 1;
            if q.later.is_some() {
                q.proto = next;
                return (hoff <= end).then_some(q);
            }
        }
        if walkable_ext(next) || unwalkable_ext(next) {
            return None;
        }
        q.proto = next;
        hoff
    };
    let t = f.get(l4, 8)?;
    if l4 + 8 > end {
        return None;
    }
    (q.sport, q.dport) = match q.proto {
        TCP | UDP | SCTP => (be16(&t[0..2]), be16(&t[2..4])),
        ICMP | ICMPV6 if icmp_echo(q.proto, t[0]) => (be16(&t[4..6]), be16(&t[4..6])),
        _ => return None,
    };
    Some(q)
}

/// The policy the kernel enforces: the generation in `FW_CONFIG` and the
/// compiled phase written under it. `phase: None` is the state before any
/// policy was written: generation 0, which the kernel reads as no policy.
#[derive(Clone, Debug)]
pub struct Active {
    pub generation: u32,
    pub phase: Option<CompiledPhase>,
}

impl Active {
    pub fn unwritten() -> Active {
        Active { generation: 0, phase: None }
    }

    pub fn settings(&self) -> PhaseSettings {
        match &self.phase {
            Some(p) => p.settings,
            None => PhaseSettings {
                egress_default: Action::Deny,
                inbound_default: Action::Deny,
                audit: false,
                reject: true,
                timeouts: fw_common::FlowTimeouts::DEFAULT,
            },
        }
    }

    /// Is `addr` one of the phase's `dns.resolvers`?
    fn is_resolver(&self, family: u8, addr: &[u8; 16]) -> bool {
        let ip = if family == 4 {
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*addr))
        };
        let resolvers = self.phase.as_ref().and_then(|p| p.dns.as_ref());
        resolvers.is_some_and(|list| list.contains(&fw_user::policy::ir::Resolver::Addr(ip)))
    }

    /// The deciding rule, if any rule matches.
    pub fn rule(&self, direction: Direction, family: u8, addr: &[u8; 16], proto: u8, port: u16) -> Option<PolicyValue> {
        let phase = self.phase.as_ref()?;
        let ip = if family == 4 {
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*addr))
        };
        match phase.lookup(direction, ip, proto, port) {
            TableVerdict::Rule(v) => Some(v),
            TableVerdict::Default(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reason: Reason,
    pub rule: u32,
}

impl Outcome {
    fn new(reason: Reason, rule: u32) -> Outcome {
        Outcome { reason, rule }
    }
    fn bare(reason: Reason) -> Outcome {
        Outcome { reason, rule: NO_RULE }
    }
}

/// The flow tables (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Protected,
    Probation,
}

/// Flow and fragment state, as the kernel's maps should hold it.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// The protected flow table (`FW_FLOWS4` and `FW_FLOWS6`).
    pub flows: HashMap<FlowKey, FlowValue>,
    /// The probation flow table (`FW_FLOWS4_IN` and `FW_FLOWS6_IN`).
    pub flows_in: HashMap<FlowKey, FlowValue>,
    pub frags: HashMap<FragKey, FragValue>,
    /// How often each stateful path was taken (to show the run reached them).
    pub paths: BTreeMap<&'static str, u64>,
}

/// The stateful paths a run must take at least once.
pub const PATHS: [&str; 17] = [
    "flow of the active generation",
    "flow in probation",
    "SYN-ACK recorded",
    "flow promoted",
    "flow demoted",
    "flow of another generation, still allowed",
    "flow of another generation, forgotten",
    "flow expired",
    "flow opened",
    "flow opened by the phase default",
    "flow admitted in audit mode",
    "flow closing (FIN/RST)",
    "closing marks cleared",
    "error quoting a flow",
    "error quoting a later fragment",
    "first fragment remembered",
    "fragment entry expired",
];

pub fn flow_key(family: u8, proto: u8, local: &[u8; 16], remote: &[u8; 16], lport: u16, rport: u16) -> FlowKey {
    FlowKey {
        family,
        proto,
        _pad: 0,
        local_port: lport.to_be_bytes(),
        remote_port: rport.to_be_bytes(),
        local_addr: *local,
        remote_addr: *remote,
    }
}

/// This host is the source on egress, the destination on ingress.
pub fn packet_flow_key(direction: Direction, h: &Headers) -> FlowKey {
    match direction {
        Direction::Egress => flow_key(h.family, h.proto, &h.src, &h.dst, h.sport, h.dport),
        Direction::Inbound => flow_key(h.family, h.proto, &h.dst, &h.src, h.dport, h.sport),
    }
}

/// The quoted packet went the other way: on ingress it is one this host
/// sent (its source is local), on egress one it received.
pub fn quote_flow_key(direction: Direction, q: &Quote) -> FlowKey {
    match direction {
        Direction::Inbound => flow_key(q.family, q.proto, &q.src, &q.dst, q.sport, q.dport),
        Direction::Egress => flow_key(q.family, q.proto, &q.dst, &q.src, q.dport, q.sport),
    }
}

pub fn frag_key(h: &Headers) -> FragKey {
    FragKey { family: h.family, proto: h.frag_next, _pad: 0, id: h.frag_id, src: h.src, dst: h.dst }
}

/// How long a flow may stay idle under `settings`, the touch interval
/// included (the kernel's last-seen time may lag its last packet by it).
pub fn flow_timeout(proto: u8, flags: u8, settings: &PhaseSettings) -> u64 {
    let t = settings.timeouts;
    let seconds = match proto {
        TCP if tcp_closed(flags) => t.tcp_closing,
        TCP => t.tcp_established,
        UDP => t.udp,
        _ => t.other,
    };
    u64::from(seconds) * 1_000_000_000 + TOUCH_INTERVAL_NS
}

/// Whether a flow last seen at `last_seen` is idle past its timeout.
pub fn flow_expired(now: u64, last_seen: u64, proto: u8, flags: u8, settings: &PhaseSettings) -> bool {
    let idle = now.wrapping_sub(last_seen);
    idle > u64::from(timeouts::MIN) * 1_000_000_000 + TOUCH_INTERVAL_NS && idle > flow_timeout(proto, flags, settings)
}

/// The TCP marks after a segment (see the module docs).
pub fn tcp_marks(flags: u8, direction: Direction, tcp_flags: u8, data: bool) -> u8 {
    let mut f = flags;
    if tcp_flags & 0x12 == 0x02 && f & FLOW_CLOSING != 0 {
        f &= !(FLOW_CLOSING | FLOW_SYN_ACK);
    }
    if tcp_flags & 0x04 != 0 {
        f |= FLOW_RST;
    } else {
        if tcp_flags & 0x01 != 0 {
            f |= if direction == Direction::Egress { FLOW_FIN_OUT } else { FLOW_FIN_IN };
        }
        if data {
            f &= !FLOW_RST;
        }
    }
    f
}

fn peer(direction: Direction, h: &Headers) -> &[u8; 16] {
    match direction {
        Direction::Egress => &h.dst,
        Direction::Inbound => &h.src,
    }
}

fn is_control(h: &Headers) -> bool {
    let link_scope = (h.dst[0] == 0xfe && h.dst[1] & 0xc0 == 0x80) || (h.dst[0] == 0xff && h.dst[1] & 0x0f == 0x02);
    h.family == 6
        && h.proto == ICMPV6
        && match h.icmp_type {
            Some(130..=132 | 143) => h.hop_limit == 1,
            Some(133..=137) => h.hop_limit == 255 && link_scope,
            _ => false,
        }
}

fn opens_flow(direction: Direction, h: &Headers) -> bool {
    match h.proto {
        ICMP => h.icmp_type == Some(8),
        ICMPV6 => h.icmp_type == Some(128),
        // Inbound TCP: only the start of a connection (SYN without ACK).
        TCP if direction == Direction::Inbound => h.tcp_flags & 0x12 == 0x02,
        // Outbound TCP: neither a RST nor a SYN-ACK.
        TCP => h.tcp_flags & 0x04 == 0 && h.tcp_flags & 0x12 != 0x12,
        _ => true,
    }
}

impl State {
    fn took(&mut self, path: &'static str) {
        *self.paths.entry(path).or_insert(0) += 1;
    }

    pub fn table(&self, table: Table) -> &HashMap<FlowKey, FlowValue> {
        match table {
            Table::Protected => &self.flows,
            Table::Probation => &self.flows_in,
        }
    }

    pub fn table_mut(&mut self, table: Table) -> &mut HashMap<FlowKey, FlowValue> {
        match table {
            Table::Protected => &mut self.flows,
            Table::Probation => &mut self.flows_in,
        }
    }

    /// Whether `key` has a live entry (the protected table decides when it
    /// has the key); nothing changes.
    fn is_live(&self, key: &FlowKey, now: u64, settings: &PhaseSettings) -> bool {
        self.flows
            .get(key)
            .or_else(|| self.flows_in.get(key))
            .is_some_and(|v| !flow_expired(now, v.last_seen_ns, key.proto, v.flags, settings))
    }

    /// The table whose live entry `key` has: the protected table decides
    /// when it has the key, live or not. An expired entry is removed.
    /// `Err(())` when the entry found had expired.
    fn find(&mut self, key: &FlowKey, now: u64, settings: &PhaseSettings) -> Result<Option<Table>, ()> {
        let table = if self.flows.contains_key(key) {
            Table::Protected
        } else if self.flows_in.contains_key(key) {
            Table::Probation
        } else {
            return Ok(None);
        };
        let v = self.table(table)[key];
        if flow_expired(now, v.last_seen_ns, key.proto, v.flags, settings) {
            self.table_mut(table).remove(key);
            return Err(());
        }
        Ok(Some(table))
    }

    /// Judges one frame at time `now` (CLOCK_MONOTONIC_COARSE ns) and
    /// applies what judging it changes.
    pub fn judge(&mut self, active: &Active, direction: Direction, frame: &[u8], now: u64) -> Outcome {
        let h = match parse(frame) {
            Parsed::Bad(reason) => return Outcome::bare(reason),
            Parsed::NotIp => return Outcome::bare(Reason::PassNonIp),
            Parsed::Ip(h) => h,
        };
        if is_control(&h) {
            return Outcome::bare(Reason::PassIcmpControl);
        }
        if active.phase.is_none() {
            return Outcome::bare(Reason::DropNoPolicy);
        }
        if h.fragment == Fragment::Later {
            return match self.frags.get(&frag_key(&h)).copied() {
                Some(v) if now.wrapping_sub(v.seen_ns) <= FRAG_TIMEOUT_NS => Outcome::new(Reason::PassFragment, v.rule),
                Some(_) => {
                    self.took("fragment entry expired");
                    Outcome::bare(Reason::DropFragment)
                }
                None => Outcome::bare(Reason::DropFragment),
            };
        }
        let settings = active.settings();
        let key = packet_flow_key(direction, &h);
        let mut outcome = None;
        let found = self.find(&key, now, &settings).unwrap_or_else(|()| {
            self.took("flow expired");
            None
        });
        if let Some(table) = found {
            if table == Table::Probation {
                self.took("flow in probation");
            }
            let value = *self.table(table).get(&key).expect("live");
            let mut value = value;
            let mut path = "flow of the active generation";
            if value.generation != active.generation {
                let origin = if value.flags & FLOW_INBOUND != 0 { Direction::Inbound } else { Direction::Egress };
                let o = self.policy(active, origin, h.family, peer(direction, &h), h.proto, value.policy_port);
                path = if admits(o.reason) {
                    value.generation = active.generation;
                    value.rule = o.rule;
                    if o.reason == Reason::PassAudit {
                        value.flags |= FLOW_AUDIT;
                    } else {
                        value.flags &= !FLOW_AUDIT;
                    }
                    "flow of another generation, still allowed"
                } else {
                    "flow of another generation, forgotten"
                };
            }
            if path != "flow of another generation, forgotten" {
                let mut closed = false;
                let marks = if h.proto == TCP {
                    tcp_marks(value.flags, direction, h.tcp_flags, h.tcp_data)
                } else {
                    value.flags
                };
                if marks != value.flags {
                    if marks & FLOW_CLOSING != 0 && value.flags & FLOW_CLOSING == 0 {
                        self.took("flow closing (FIN/RST)");
                    }
                    if value.flags & FLOW_CLOSING != 0 && marks & FLOW_CLOSING == 0 {
                        self.took("closing marks cleared");
                    }
                    closed = !tcp_closed(value.flags) && tcp_closed(marks);
                    value.flags = marks;
                    value.last_seen_ns = now;
                } else if now.wrapping_sub(value.last_seen_ns) > TOUCH_INTERVAL_NS {
                    value.last_seen_ns = now;
                }
                let inbound = value.flags & FLOW_INBOUND != 0;
                let reason = if value.flags & FLOW_AUDIT != 0 {
                    self.took("flow admitted in audit mode");
                    Reason::PassAudit
                } else {
                    Reason::PassFlow
                };
                outcome = Some(Outcome::new(reason, value.rule));
                self.table_mut(table).insert(key, value);
                if table == Table::Probation {
                    if h.proto == TCP {
                        self.follow_handshake(&key, direction, &h);
                    }
                } else if closed && inbound {
                    let value = self.flows.remove(&key).expect("protected");
                    self.flows_in.insert(key, value);
                    self.took("flow demoted");
                }
            } else {
                self.table_mut(table).remove(&key);
            }
            self.took(path);
        }
        let outcome = match outcome {
            Some(o) => o,
            None => {
                let o = self.untracked(active, direction, &h, now);
                if admits(o.reason) && opens_flow(direction, &h) {
                    let mut flags = if direction == Direction::Inbound { FLOW_INBOUND } else { 0 };
                    if o.reason == Reason::PassAudit {
                        flags |= FLOW_AUDIT;
                    }
                    if h.proto == TCP {
                        flags = tcp_marks(flags, direction, h.tcp_flags, h.tcp_data);
                    }
                    if flags & FLOW_CLOSING != 0 {
                        self.took("flow closing (FIN/RST)");
                    }
                    self.took(if o.reason == Reason::PassDefault {
                        "flow opened by the phase default"
                    } else {
                        "flow opened"
                    });
                    let value = FlowValue {
                        last_seen_ns: now,
                        generation: active.generation,
                        rule: o.rule,
                        policy_port: h.policy_port,
                        flags,
                        _pad1: 0,
                        syn_ack_seq: 0,
                    };
                    match direction {
                        Direction::Inbound => self.flows_in.insert(key, value),
                        Direction::Egress => self.flows.insert(key, value),
                    };
                }
                o
            }
        };
        if h.fragment == Fragment::First && !outcome.reason.is_drop() {
            self.took("first fragment remembered");
            self.frags.insert(frag_key(&h), FragValue { seen_ns: now, rule: outcome.rule, _pad: 0 });
        }
        outcome
    }

    /// A TCP flow in probation: record this host's SYN-ACK, promote on the
    /// peer's acknowledgment of exactly it.
    fn follow_handshake(&mut self, key: &FlowKey, direction: Direction, h: &Headers) {
        let value = self.flows_in.get_mut(key).expect("in probation");
        match direction {
            Direction::Egress => {
                if h.tcp_flags & 0x12 == 0x12 {
                    value.syn_ack_seq = h.tcp_seq;
                    value.flags |= FLOW_SYN_ACK;
                    self.took("SYN-ACK recorded");
                }
            }
            Direction::Inbound => {
                if h.tcp_flags & 0x16 == 0x10
                    && value.flags & (FLOW_SYN_ACK | FLOW_CLOSING) == FLOW_SYN_ACK
                    && h.tcp_ack == value.syn_ack_seq.wrapping_add(1)
                {
                    let value = self.flows_in.remove(key).expect("in probation");
                    self.flows.insert(*key, value);
                    self.took("flow promoted");
                }
            }
        }
    }

    /// The policy alone (no state): rule, default, audit.
    fn policy(
        &self,
        active: &Active,
        direction: Direction,
        family: u8,
        peer: &[u8; 16],
        proto: u8,
        port: u16,
    ) -> Outcome {
        let settings = active.settings();
        let mut outcome = match active.rule(direction, family, peer, proto, port) {
            Some(v) if v.action() == Action::Allow => Outcome::new(Reason::PassRule, v.rule),
            Some(v) => Outcome::new(Reason::DropRule, v.rule),
            // UDP/TCP 53 to a resolver of a phase with `dns:`: the DNS
            // proxy's queries (issue 14); TCP 853 (DNS over TLS) too.
            None if direction == Direction::Egress
                && ((port == 53 && (proto == 6 || proto == 17)) || (port == 853 && proto == 6))
                && active.is_resolver(family, peer) =>
            {
                Outcome::bare(Reason::PassResolver)
            }
            None => {
                let default = match direction {
                    Direction::Egress => settings.egress_default,
                    Direction::Inbound => settings.inbound_default,
                };
                match default {
                    Action::Allow => Outcome::bare(Reason::PassDefault),
                    Action::Deny => Outcome::bare(Reason::DropDefault),
                }
            }
        };
        if settings.audit && outcome.reason.is_drop() {
            outcome.reason = Reason::PassAudit;
        }
        outcome
    }

    fn untracked(&mut self, active: &Active, direction: Direction, h: &Headers, now: u64) -> Outcome {
        if let Some(q) = &h.quote {
            if h.dst == q.src {
                let tracked = match q.later {
                    Some((proto, id)) => {
                        let key = FragKey { family: q.family, proto, _pad: 0, id, src: q.src, dst: q.dst };
                        self.frags.get(&key).is_some_and(|v| now.wrapping_sub(v.seen_ns) <= FRAG_TIMEOUT_NS)
                    }
                    None => self.is_live(&quote_flow_key(direction, q), now, &active.settings()),
                };
                if tracked {
                    self.took(if q.later.is_some() {
                        "error quoting a later fragment"
                    } else {
                        "error quoting a flow"
                    });
                    return Outcome::bare(Reason::PassIcmpControl);
                }
            }
        }
        let peer = peer(direction, h);
        let mut outcome = self.policy(active, direction, h.family, peer, h.proto, h.policy_port);
        if direction == Direction::Egress
            && outcome.reason == Reason::DropDefault
            && h.proto != ICMP
            && h.proto != ICMPV6
            && !(h.proto == TCP && h.tcp_flags & 0x12 == 0x02)
            && matches!(active.rule(Direction::Inbound, h.family, peer, h.proto, h.sport),
                        Some(v) if v.action() == Action::Allow)
        {
            outcome = Outcome::bare(Reason::DropSpoofedReply);
        }
        outcome
    }
}

/// What the policy passes opens a flow: a rule, an allowing default, audit.
fn admits(reason: Reason) -> bool {
    matches!(reason, Reason::PassRule | Reason::PassDefault | Reason::PassAudit | Reason::PassResolver)
}
