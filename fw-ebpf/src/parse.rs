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

#[derive(Clone, Copy)]
pub enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

#[derive(Clone, Copy)]
pub struct Packet {
    pub addrs: Addrs,
    pub proto: u8,
    pub sport: u16,
    /// Destination port; for ICMP and ICMPv6 `type << 8 | code`; 0 for
    /// protocols without ports.
    pub dport: u16,
}

pub enum Parsed {
    Ip(Packet),
    /// ARP, LLDP...: not the policy's business.
    NotIp,
}

/// The readable window of a packet: `[start, end)`.
#[derive(Clone, Copy)]
struct Bounds {
    start: usize,
    end: usize,
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
}

/// Parses the packet of a TC program, first pulling the headers into the
/// linear area when the stack left them in page fragments.
#[inline(always)]
pub fn parse_skb(ctx: &TcContext) -> Result<Parsed, Reason> {
    let len = ctx.len() as usize;
    let linear = ctx.data_end() - ctx.data();
    if linear < len && linear < MAX_HEADER_BYTES {
        let want = if len < MAX_HEADER_BYTES { len } else { MAX_HEADER_BYTES };
        // On failure the bounds checks below see the short linear area and
        // drop the packet as truncated: fail closed.
        let _ = ctx.pull_data(want as u32);
    }
    parse(ctx.data(), ctx.data_end())
}

#[inline(always)]
pub fn parse(start: usize, end: usize) -> Result<Parsed, Reason> {
    let b = Bounds { start, end };
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
        ETH_P_IP => parse_ipv4(&b, off).map(Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(&b, off).map(Parsed::Ip),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::DropVlanDepth),
        _ => Ok(Parsed::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(b: &Bounds, off: usize) -> Result<Packet, Reason> {
    // Fixed 20-byte header: version/IHL, TOS, total length, id, flags/fragment
    // offset, TTL, protocol, checksum, source, destination.
    let hdr: [u8; 20] = b.load(off).ok_or(Reason::DropTruncatedL3)?;
    if hdr[0] >> 4 != 4 {
        return Err(Reason::DropBadIpHeader);
    }
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    let available = b.end - (b.start + off);
    if ihl < 20 || total < ihl || total > available {
        return Err(Reason::DropBadIpHeader);
    }
    let fragment_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    if fragment_offset != 0 {
        // A non-first fragment carries no ports. Until fragments are
        // tracked, it cannot be matched to its first fragment's verdict:
        // never a blanket allow.
        return Err(Reason::DropFragment);
    }
    let proto = hdr[9];
    let (sport, dport) = parse_l4(b, proto, off + ihl, off + total)?;
    Ok(Packet {
        addrs: Addrs::V4 {
            src: [hdr[12], hdr[13], hdr[14], hdr[15]],
            dst: [hdr[16], hdr[17], hdr[18], hdr[19]],
        },
        proto,
        sport,
        dport,
    })
}

#[inline(always)]
fn parse_ipv6(b: &Bounds, off: usize) -> Result<Packet, Reason> {
    // Fixed header: version/class/flow (4), payload length (2), next header,
    // hop limit, source (16), destination (16).
    let hdr: [u8; IPV6_HDR_LEN] = b.load(off).ok_or(Reason::DropTruncatedL3)?;
    if hdr[0] >> 4 != 6 {
        return Err(Reason::DropBadIpHeader);
    }
    let payload = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
    let available = b.end - (b.start + off);
    // Payload length 0 means a jumbogram, which no Ethernet link carries.
    if payload == 0 || IPV6_HDR_LEN + payload > available {
        return Err(Reason::DropBadIpHeader);
    }
    let mut next = hdr[6];
    let ip_end = off + IPV6_HDR_LEN + payload;
    let mut hoff = off + IPV6_HDR_LEN;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        // Every extension header starts with (next header, length); the
        // fragment header has its offset in the next two bytes.
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
                let h: [u8; 4] = b.load(hoff).ok_or(Reason::DropTruncatedL3)?;
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    // Non-first fragment: see parse_ipv4.
                    return Err(Reason::DropFragment);
                }
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
    }
    if walked == MAX_IPV6_EXT && is_ipv6_ext(next) {
        return Err(Reason::DropIpv6ExtChain);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&hdr[8..24]);
    dst.copy_from_slice(&hdr[24..40]);
    let (sport, dport) = parse_l4(b, next, hoff, ip_end)?;
    Ok(Packet { addrs: Addrs::V6 { src, dst }, proto: next, sport, dport })
}

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT | 135 | 139 | 140 | 253 | 254
    )
}

/// Ports of the transport header at `off`, which must lie within the IP
/// datagram (ending at `ip_end`) as well as within the frame.
#[inline(always)]
fn parse_l4(b: &Bounds, proto: u8, off: usize, ip_end: usize) -> Result<(u16, u16), Reason> {
    let (need, head) = match proto {
        proto::TCP => (20, b.load::<[u8; 20]>(off).map(first4)),
        proto::UDP => (8, b.load::<[u8; 8]>(off).map(first4)),
        proto::SCTP => (12, b.load::<[u8; 12]>(off).map(first4)),
        proto::ICMP | proto::ICMPV6 => (4, b.load::<[u8; 4]>(off)),
        _ => return Ok((0, 0)),
    };
    let head = match head {
        Some(h) if off + need <= ip_end => h,
        _ => return Err(Reason::DropTruncatedL4),
    };
    if proto == proto::ICMP || proto == proto::ICMPV6 {
        // type << 8 | code rides in the port field.
        return Ok((0, u16::from_be_bytes([head[0], head[1]])));
    }
    Ok((u16::from_be_bytes([head[0], head[1]]), u16::from_be_bytes([head[2], head[3]])))
}

#[inline(always)]
fn first4<const N: usize>(h: [u8; N]) -> [u8; 4] {
    [h[0], h[1], h[2], h[3]]
}
