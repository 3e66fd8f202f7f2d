//! Header parsing with bounds checks the verifier can follow.
//!
//! Output: the addresses, IP protocol and ports the policy needs, or the
//! named reason why the packet cannot be classified (and must be dropped).
//! Every read goes through [`Bounds::load`]; offsets that depend on packet
//! contents are capped by constants before use, so the verifier can prove
//! each access in range.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use fw_common::{policy::proto, Reason};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// 802.1ad outer tag + 802.1Q inner tag: the deepest stacking we walk.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the chain counts as over-long.
const MAX_IPV6_EXT: usize = 6;
/// No header we need starts beyond this offset; it bounds variable offsets
/// for the verifier and is how much of a non-linear skb we pull in.
pub const MAX_HEADER_BYTES: usize = 512;

const IPV6_HDR_LEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// Fragment position of an IP packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    None,
    /// First fragment: carries the transport header and decides.
    First,
    /// Later fragment: no transport header; follows the first's verdict.
    Later,
}

/// The transport part of a flow: ports, or the ICMP echo identifier in both
/// port fields (so a reply finds its request's entry).
#[derive(Clone, Copy)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// The packet quoted by an ICMP error (destination unreachable, packet too
/// big, time exceeded, parameter problem), as it was sent.
#[derive(Clone, Copy)]
pub struct Quoted {
    /// False when the packet is no ICMP error or its quote matches no flow.
    pub valid: bool,
    pub family: u8,
    pub proto: u8,
    pub ports: Ports,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// What the policy and the flow table need of a packet.
///
/// Plain fields, no enums with data: the object's BTF must describe these
/// types in a form the kernel accepts (Rust's tagged unions are not).
/// IPv4 addresses fill the first 4 bytes of `src`/`dst`, the rest stays 0.
#[derive(Clone, Copy)]
pub struct Packet {
    /// 4 or 6.
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    /// Flow ports (see [`Ports`]); zero for protocols without ports and for
    /// later fragments.
    pub ports: Ports,
    /// The port the policy matches: the destination port; for ICMP and
    /// ICMPv6 `type << 8 | code`; 0 for protocols without ports.
    pub policy_port: u16,
    pub tcp_flags: u8,
    pub frag: Frag,
    /// IPv4: the 16-bit id; IPv6: the fragment header's 32-bit id.
    pub frag_id: u32,
    /// The protocol that identifies a fragmented datagram: IPv4's protocol
    /// field; for IPv6 the fragment header's Next Header, the same in every
    /// fragment (RFC 8200), unlike the protocol at the end of the chain,
    /// which only the first fragment reaches.
    pub frag_proto: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    pub quoted: Quoted,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the parser made of a frame. Small on purpose: a non-inlined BPF
/// function may not return through a pointer into its caller's stack, so
/// the packet itself is written into the caller's [`Packet`].
pub enum Parsed {
    Ip,
    /// ARP, LLDP...: not the policy's business.
    NotIp,
}

impl Packet {
    pub const fn empty() -> Packet {
        Packet {
            family: 0,
            src: [0; 16],
            dst: [0; 16],
            proto: 0,
            ports: Ports { src: 0, dst: 0 },
            policy_port: 0,
            tcp_flags: 0,
            frag: Frag::None,
            frag_id: 0,
            frag_proto: 0,
            hop_limit: 0,
            quoted: Quoted { valid: false, family: 0, proto: 0, ports: Ports { src: 0, dst: 0 }, src: [0; 16], dst: [0; 16] },
        }
    }
}

/// The readable window of a packet, `[start, end)` (the linear area, which
/// holds at least the headers), and the whole packet's length, which may go
/// on in page fragments the program does not read.
#[derive(Clone, Copy)]
struct Bounds {
    start: usize,
    end: usize,
    len: usize,
}

impl Bounds {
    /// Reads a `T` at `off`, or `None` when the packet is shorter.
    ///
    /// Never used for single bytes: LLVM rewrites `p + 1 > end` as
    /// `p >= end`, a form the verifier does not turn into a packet range.
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        if off > MAX_HEADER_BYTES || self.start + off + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the range was checked against the packet end just above.
        Some(unsafe { core::ptr::read_unaligned((self.start + off) as *const T) })
    }

    #[inline(always)]
    fn be16(&self, off: usize) -> Option<u16> {
        self.load::<[u8; 2]>(off).map(u16::from_be_bytes)
    }

    /// Bytes of the whole packet from `off` on: what an IP length field
    /// must fit in (a large datagram's payload is not in the linear area).
    #[inline(always)]
    fn remaining(&self, off: usize) -> usize {
        self.len.saturating_sub(off)
    }
}

/// Parses the packet of a TC program, first pulling the headers into the
/// linear area when the stack left them in page fragments.
///
/// Not inlined: a BPF-to-BPF call gets its own stack frame, so the header
/// copies made here do not add to the flow and LPM keys the caller builds
/// later (the verifier allows 512 bytes along one call chain). The outcome
/// crosses the call as a plain number (see [`Outcome`]).
#[inline(never)]
pub fn parse_skb(ctx: &TcContext, pkt: &mut Packet) -> Outcome {
    Outcome::encode(parse_skb_inner(ctx, pkt))
}

/// [`parse_skb`]'s result as one integer: `Parsed` as 0/1, a drop reason as
/// 256 + its number. A non-inlined BPF function must leave a scalar in R0
/// on every path (the verifier refuses a stack pointer there), which LLVM
/// does not guarantee for a small `Result` whose bits it only partly sets.
#[derive(Clone, Copy)]
pub struct Outcome(u32);

impl Outcome {
    #[inline(always)]
    fn encode(result: Result<Parsed, Reason>) -> Outcome {
        Outcome(match result {
            Ok(Parsed::Ip) => 0,
            Ok(Parsed::NotIp) => 1,
            Err(reason) => 256 + reason as u32,
        })
    }

    #[inline(always)]
    pub fn decode(self) -> Result<Parsed, Reason> {
        match self.0 {
            0 => Ok(Parsed::Ip),
            1 => Ok(Parsed::NotIp),
            // SAFETY: only `encode` makes an Outcome, from a valid Reason
            // (a `#[repr(u8)]` enum), so `n - 256` is one of its values.
            n => Err(unsafe { core::mem::transmute::<u8, Reason>((n - 256) as u8) }),
        }
    }
}

#[inline(always)]
fn parse_skb_inner(ctx: &TcContext, pkt: &mut Packet) -> Result<Parsed, Reason> {
    let len = ctx.len() as usize;
    let linear = ctx.data_end() - ctx.data();
    if linear < len && linear < MAX_HEADER_BYTES {
        let want = if len < MAX_HEADER_BYTES { len } else { MAX_HEADER_BYTES };
        // On failure the bounds checks below see the short linear area and
        // drop the packet as truncated: fail closed.
        let _ = ctx.pull_data(want as u32);
    }
    parse(ctx.data(), ctx.data_end(), ctx.len() as usize, pkt)
}

/// `start..end` is the readable (linear) part of a packet of `len` bytes.
#[inline(always)]
pub fn parse(start: usize, end: usize, len: usize, pkt: &mut Packet) -> Result<Parsed, Reason> {
    let b = Bounds { start, end, len };
    let mut ethertype = b.be16(12).ok_or(Reason::DropTruncatedL2)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = b.be16(off + 2).ok_or(Reason::DropTruncatedL2)?;
        off += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(&b, off, pkt).map(|()| Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(&b, off, pkt).map(|()| Parsed::Ip),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::DropVlanDepth),
        _ => Ok(Parsed::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(b: &Bounds, off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    // Fixed 20-byte header: version/IHL, TOS, total length, id, flags/fragment
    // offset, TTL, protocol, checksum, source, destination.
    let hdr: [u8; 20] = b.load(off).ok_or(Reason::DropTruncatedL3)?;
    if hdr[0] >> 4 != 4 {
        return Err(Reason::DropBadIpHeader);
    }
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if ihl < 20 || total < ihl || total > b.remaining(off) {
        return Err(Reason::DropBadIpHeader);
    }
    let flags_offset = u16::from_be_bytes([hdr[6], hdr[7]]);
    let frag = if flags_offset & 0x1fff != 0 {
        Frag::Later
    } else if flags_offset & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    pkt.family = 4;
    pkt.src[..4].copy_from_slice(&hdr[12..16]);
    pkt.dst[..4].copy_from_slice(&hdr[16..20]);
    pkt.proto = hdr[9];
    pkt.frag = frag;
    pkt.frag_id = u32::from(u16::from_be_bytes([hdr[4], hdr[5]]));
    pkt.frag_proto = hdr[9];
    pkt.hop_limit = hdr[8];
    if frag != Frag::Later {
        parse_l4(b, pkt, off + ihl, off + total)?;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(b: &Bounds, off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    // Fixed header: version/class/flow (4), payload length (2), next header,
    // hop limit, then source (16) and destination (16), read further down.
    let hdr: [u8; 8] = b.load(off).ok_or(Reason::DropTruncatedL3)?;
    let src: [u8; 16] = b.load(off + 8).ok_or(Reason::DropTruncatedL3)?;
    let dst: [u8; 16] = b.load(off + 24).ok_or(Reason::DropTruncatedL3)?;
    if hdr[0] >> 4 != 6 {
        return Err(Reason::DropBadIpHeader);
    }
    let payload = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
    // Payload length 0 means a jumbogram, which no Ethernet link carries.
    if payload == 0 || IPV6_HDR_LEN + payload > b.remaining(off) {
        return Err(Reason::DropBadIpHeader);
    }
    let mut next = hdr[6];
    let ip_end = off + IPV6_HDR_LEN + payload;
    let mut hoff = off + IPV6_HDR_LEN;
    let mut frag = Frag::None;
    let mut frag_id = 0;
    let mut frag_proto = 0;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        // Every extension header starts with (next header, length); the
        // fragment header has its offset next, then its id.
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let h: [u8; 2] = b.load(hoff).ok_or(Reason::DropTruncatedL3)?;
                next = h[0];
                (h[1] as usize + 1) * 8
            }
            NEXTHDR_AUTH => {
                let h: [u8; 2] = b.load(hoff).ok_or(Reason::DropTruncatedL3)?;
                next = h[0];
                (h[1] as usize + 2) * 4
            }
            NEXTHDR_FRAGMENT => {
                let h: [u8; 8] = b.load(hoff).ok_or(Reason::DropTruncatedL3)?;
                let offset_flags = u16::from_be_bytes([h[2], h[3]]);
                frag = if offset_flags >> 3 != 0 {
                    Frag::Later
                } else if offset_flags & 1 != 0 {
                    Frag::First
                } else {
                    // An atomic fragment (RFC 6946): a whole packet.
                    Frag::None
                };
                frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                frag_proto = h[0];
                next = h[0];
                8
            }
            // Mobility, HIP, Shim6 and the experimental values are extension
            // headers this parser does not walk: it cannot find the ports.
            135 | 139 | 140 | 253 | 254 => return Err(Reason::DropIpv6ExtChain),
            _ => break,
        };
        hoff += len;
        if hoff > ip_end {
            return Err(Reason::DropTruncatedL3);
        }
        walked += 1;
        if frag == Frag::Later {
            // The rest of the chain is in the first fragment.
            break;
        }
    }
    if frag != Frag::Later && walked == MAX_IPV6_EXT && is_ipv6_ext(next) {
        return Err(Reason::DropIpv6ExtChain);
    }
    pkt.family = 6;
    pkt.src = src;
    pkt.dst = dst;
    pkt.proto = next;
    pkt.frag = frag;
    pkt.frag_id = frag_id;
    pkt.frag_proto = frag_proto;
    pkt.hop_limit = hdr[7];
    if frag != Frag::Later {
        parse_l4(b, pkt, hoff, ip_end)?;
    }
    Ok(())
}

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT | 135 | 139 | 140 | 253 | 254
    )
}

/// ICMP types whose body quotes the offending packet.
#[inline(always)]
fn is_icmp_error(proto: u8, ty: u8) -> bool {
    match proto {
        proto::ICMP => matches!(ty, 3 | 11 | 12),
        _ => matches!(ty, 1..=4),
    }
}

/// Echo request and reply carry an identifier that pairs them.
#[inline(always)]
fn is_icmp_echo(proto: u8, ty: u8) -> bool {
    match proto {
        proto::ICMP => ty == 8 || ty == 0,
        _ => ty == 128 || ty == 129,
    }
}

/// Reads the transport header at `off`, which must lie within the IP
/// datagram (ending at `ip_end`) as well as within the frame.
#[inline(always)]
fn parse_l4(b: &Bounds, pkt: &mut Packet, off: usize, ip_end: usize) -> Result<(), Reason> {
    match pkt.proto {
        proto::TCP => {
            let h: [u8; 20] = b.load(off).ok_or(Reason::DropTruncatedL4)?;
            check_within(off + 20, ip_end)?;
            pkt.ports = Ports { src: u16::from_be_bytes([h[0], h[1]]), dst: u16::from_be_bytes([h[2], h[3]]) };
            pkt.tcp_flags = h[13];
        }
        proto::UDP => {
            let h: [u8; 8] = b.load(off).ok_or(Reason::DropTruncatedL4)?;
            check_within(off + 8, ip_end)?;
            pkt.ports = Ports { src: u16::from_be_bytes([h[0], h[1]]), dst: u16::from_be_bytes([h[2], h[3]]) };
        }
        proto::SCTP => {
            let h: [u8; 12] = b.load(off).ok_or(Reason::DropTruncatedL4)?;
            check_within(off + 12, ip_end)?;
            pkt.ports = Ports { src: u16::from_be_bytes([h[0], h[1]]), dst: u16::from_be_bytes([h[2], h[3]]) };
        }
        // ICMP belongs to IPv4 and ICMPv6 to IPv6; crossed over, neither
        // is parsed (no echo pairing, no quoted flow): the policy decides.
        proto::ICMP | proto::ICMPV6 if (pkt.proto == proto::ICMP) == (pkt.family == 4) => {
            // type, code, checksum, then 4 bytes whose meaning depends on
            // the type (echo: identifier and sequence).
            let h: [u8; 8] = b.load(off).ok_or(Reason::DropTruncatedL4)?;
            check_within(off + 8, ip_end)?;
            pkt.policy_port = u16::from_be_bytes([h[0], h[1]]);
            if is_icmp_echo(pkt.proto, h[0]) {
                let id = u16::from_be_bytes([h[4], h[5]]);
                pkt.ports = Ports { src: id, dst: id };
            } else if is_icmp_error(pkt.proto, h[0]) {
                pkt.quoted.valid = parse_quoted(b, pkt, off + 8, ip_end);
            }
            return Ok(());
        }
        _ => {}
    }
    pkt.policy_port = pkt.ports.dst;
    Ok(())
}

#[inline(always)]
fn check_within(header_end: usize, ip_end: usize) -> Result<(), Reason> {
    if header_end > ip_end {
        Err(Reason::DropTruncatedL4)
    } else {
        Ok(())
    }
}

/// The offending packet an ICMP error quotes: its IP header and the first
/// 8 bytes of its payload (RFC 792 and RFC 4443 guarantee at least these).
/// Left `None` (and `false` returned) when the quote is too short or not
/// TCP/UDP/SCTP/echo: such an error matches no flow and is left to the
/// policy. It returns a value because a BPF subprogram must not exit with a
/// stack pointer left in R0, which LLVM may do for a `()` function.
#[inline(never)]
fn parse_quoted(b: &Bounds, pkt: &mut Packet, off: usize, ip_end: usize) -> bool {
    let q = &mut pkt.quoted;
    let l4 = if pkt.proto == proto::ICMP {
        let Some(h) = b.load::<[u8; 20]>(off) else { return false };
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return false;
        }
        q.family = 4;
        q.proto = h[9];
        q.src[..4].copy_from_slice(&h[12..16]);
        q.dst[..4].copy_from_slice(&h[16..20]);
        off + ihl
    } else {
        let Some(h) = b.load::<[u8; 8]>(off) else { return false };
        let (Some(src), Some(dst)) = (b.load::<[u8; 16]>(off + 8), b.load::<[u8; 16]>(off + 24)) else {
            return false;
        };
        if h[0] >> 4 != 6 {
            return false;
        }
        q.family = 6;
        q.proto = h[6];
        q.src = src;
        q.dst = dst;
        off + IPV6_HDR_LEN
    };
    let Some(t) = b.load::<[u8; 8]>(l4) else { return false };
    if l4 + 8 > ip_end {
        return false;
    }
    q.ports = match q.proto {
        proto::TCP | proto::UDP | proto::SCTP => {
            Ports { src: u16::from_be_bytes([t[0], t[1]]), dst: u16::from_be_bytes([t[2], t[3]]) }
        }
        proto::ICMP | proto::ICMPV6 if is_icmp_echo(q.proto, t[0]) => {
            let id = u16::from_be_bytes([t[4], t[5]]);
            Ports { src: id, dst: id }
        }
        _ => return false,
    };
    true
}
