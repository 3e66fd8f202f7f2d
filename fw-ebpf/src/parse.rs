//! Header parsing with bounds checks the verifier can follow.
//!
//! Output: the addresses, IP protocol and ports the policy needs, or the
//! named reason why the packet cannot be classified (and must be dropped).
//! Every read goes through [`Bounds::load`]; offsets that depend on packet
//! contents are capped by constants before use, so the verifier can prove
//! each access in range.

#[cfg(target_arch = "bpf")]
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
#[repr(u8)]
pub enum Frag {
    /// Not fragmented (0: what `Packet::empty` makes).
    None = 0,
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
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ports: Ports,
    /// With `later`: the datagram's id and the protocol that names it (as
    /// in [`Packet::frag_id`] and [`Packet::frag_proto`]).
    pub frag_id: u32,
    /// False when the packet is no ICMP error or its quote matches no flow.
    pub valid: bool,
    pub family: u8,
    pub proto: u8,
    /// The quote is a later fragment (no ports): it belongs to the
    /// datagram whose first fragment `FW_FRAGS` remembers, if any.
    pub later: bool,
    pub frag_proto: u8,
}

/// What the policy and the flow table need of a packet.
///
/// Plain fields, no enums with data: the object's BTF must describe these
/// types in a form the kernel accepts (Rust's tagged unions are not).
/// IPv4 addresses fill the first 4 bytes of `src`/`dst`, the rest stays 0.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Packet {
    // Addresses first, at 8-aligned offsets of an 8-aligned struct: copied
    // into the 8-aligned flow and fragment keys with 8-byte moves.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// 4 or 6.
    pub family: u8,
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
    /// TCP: what the flow table follows an inbound connection's handshake
    /// with (see `flow::follow_handshake`): a SYN's sequence number, any
    /// other segment's acknowledgment number. One field, not both numbers:
    /// with both the verifier processed 4.4 times the instructions (629,000
    /// of its limit of 1,000,000, from 141,000), for reasons of code layout
    /// rather than logic.
    pub tcp_number: u32,
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
/// Not a TCP flag: in [`Packet::tcp_flags`], the parser puts here (in place
/// of CWR, which nothing reads) whether the segment carries data. A field
/// of its own cost the verifier four times the instructions (750,000 of
/// its 1,000,000, from 193,000): the same story as `tcp_number`'s.
pub const TCP_DATA: u8 = 0x80;

/// What the parser made of a frame. Small on purpose: a non-inlined BPF
/// function may not return through a pointer into its caller's stack, so
/// the packet itself is written into the caller's [`Packet`].
pub enum Parsed {
    Ip,
    /// ARP, LLDP...: not the policy's business.
    NotIp,
}

impl Packet {
    /// Zeroes `slot` in place (IPv4 addresses need the rest of their 16
    /// bytes zero) and returns it as a packet. In place: returning a zeroed
    /// value would be copied, and LLVM turns a copy of known zeros back
    /// into a `memset` (see `mem`).
    #[inline(always)]
    pub fn zeroed_in(slot: &mut core::mem::MaybeUninit<Packet>) -> &mut Packet {
        // SAFETY: Packet is 8-aligned with a size a multiple of 8, and all
        // zeros is a valid Packet (Frag::None is 0, `valid` false).
        unsafe {
            crate::mem::zero(slot.as_mut_ptr());
            slot.assume_init_mut()
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
    /// The program's context, which a global function is given in place
    /// of packet pointers (the verifier allows no others as arguments).
    /// Nothing on the host, where no global function is called.
    #[cfg_attr(not(target_arch = "bpf"), allow(dead_code))]
    ctx: Ctx,
}

#[cfg(target_arch = "bpf")]
type Ctx = *mut aya_ebpf::bindings::__sk_buff;
#[cfg(not(target_arch = "bpf"))]
type Ctx = ();

/// `N` bytes of a header that were checked to lie in the readable packet:
/// its fields are read in place, as integers of their own width (the
/// parser is compiled with misaligned loads allowed, see `parse_skb`).
#[derive(Clone, Copy)]
struct Hdr<const N: usize>(*const u8);

impl<const N: usize> Hdr<N> {
    #[inline(always)]
    fn u8(self, i: usize) -> u8 {
        // SAFETY: `i < N` at every call site (constant offsets), and the
        // N bytes were bounds-checked when the Hdr was made.
        unsafe { *self.0.add(i) }
    }

    #[inline(always)]
    fn be16(self, i: usize) -> u16 {
        // SAFETY: as in `u8`, for bytes i and i + 1.
        u16::from_be(unsafe { core::ptr::read_unaligned(self.0.add(i) as *const u16) })
    }

    #[inline(always)]
    fn be32(self, i: usize) -> u32 {
        // SAFETY: as in `u8`, for bytes i .. i + 4.
        u32::from_be(unsafe { core::ptr::read_unaligned(self.0.add(i) as *const u32) })
    }

    /// `M` bytes starting at `i`, as they are in the packet.
    #[inline(always)]
    fn bytes<const M: usize>(self, i: usize) -> [u8; M] {
        // SAFETY: as in `u8`, for bytes i .. i + M.
        unsafe { core::ptr::read_unaligned(self.0.add(i) as *const [u8; M]) }
    }

    /// The IPv6 address at `i` into `dst`, as two 8-byte loads and stores.
    /// Not `*dst = self.bytes(i)`: inside a global function, whose `Packet`
    /// comes as a raw pointer that LLVM cannot prove apart from the packet,
    /// that copy became a call to the object's byte-by-byte `memmove` (IPv6
    /// packets 25-30 ns slower).
    #[inline(always)]
    fn copy_addr6(self, i: usize, dst: &mut [u8; 16]) {
        let words = dst.as_mut_ptr() as *mut u64;
        // SAFETY: as in `u8`, for bytes i .. i + 16; `dst` is 16 bytes, and
        // unaligned stores are allowed for it as for the packet.
        unsafe {
            words.write_unaligned(core::ptr::read_unaligned(self.0.add(i) as *const u64));
            words.add(1).write_unaligned(core::ptr::read_unaligned(self.0.add(i + 8) as *const u64));
        }
    }
}

impl Bounds {
    #[cfg(target_arch = "bpf")]
    #[inline(always)]
    fn of(ctx: &TcContext) -> Bounds {
        Bounds { start: ctx.data(), end: ctx.data_end(), len: ctx.len() as usize, ctx: ctx.skb.skb }
    }

    /// The `N`-byte header at `off`, or `None` when the packet is shorter.
    ///
    /// Checked for at least 2 bytes: LLVM rewrites `p + 1 > end` as
    /// `p >= end`, a form the verifier does not turn into a packet range.
    #[inline(always)]
    fn header<const N: usize>(&self, off: usize) -> Option<Hdr<N>> {
        const { assert!(N >= 2) };
        if off > MAX_HEADER_BYTES || self.start + off + N > self.end {
            return None;
        }
        Some(Hdr((self.start + off) as *const u8))
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
/// Through [`fw_parse`], a BPF-to-BPF call: it gets its own stack frame, so
/// the header copies made there do not add to the flow and LPM keys the
/// caller builds later (the verifier allows 512 bytes along one call
/// chain). The outcome crosses the call as a plain number (see [`Outcome`]).
///
/// # Safety
/// The parser is compiled for misaligned loads, which the kernel allows on
/// packet data where the CPU handles them (x86-64, arm64); elsewhere the
/// verifier refuses the program at load: it fails closed.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn parse_skb(ctx: &TcContext, pkt: &mut Packet) -> Outcome {
    // SAFETY: `ctx.skb.skb` is the program's context and `pkt` a live,
    // exclusive Packet: what `fw_parse` requires.
    Outcome(unsafe { fw_parse(ctx.skb.skb, pkt) })
}

/// [`parse_skb`] as a global function, the one the kernel verifies once on
/// its own: a pointer to the context and one to a `Packet` in, a number
/// out. A static function (what every other call here is) is verified
/// again on every path that reaches it, and its caller is then verified
/// once for every state the parse can end in (each combination of VLAN
/// tags, extension headers, fragment and protocol it saw); after a global
/// call the verifier knows nothing of what it wrote into the `Packet` and
/// goes on from one state. Measured with `fw check --verbose`: `fw_egress`
/// 545,220 -> 314,093 instructions processed and its load 1,060 -> 341 ms,
/// `fw_ingress` 555,722 -> 300,790 and 966 -> 300 ms (with
/// [`fw_parse_quoted`] and [`Hdr::copy_addr6`]: 171,630 and 158,327, 144
/// and 125 ms); the time per packet did not move (`fw-bench testrun`,
/// three alternating runs). Sound: a branch the zeroed `Packet` would have
/// made dead before the call (a field compared with a value the parse never
/// writes) is still walked after it (checked with a deliberately invalid
/// store behind such a branch: rejected).
///
/// Global for the kernel because it is `#[no_mangle]`: rustc passes such
/// symbols to bpf-linker as exported, and bpf-linker gives exported
/// functions global linkage in the BTF it emits and makes every other
/// function static. Where the kernel has no global functions, aya loads it
/// as static, as before.
///
/// Compiled with misaligned loads allowed: header fields sit at any
/// alignment, and without this LLVM reads every multi-byte field and
/// address byte by byte and reassembles it with shifts (measured: about a
/// third of the established-flow cost).
///
/// # Safety
/// `skb` is the program's context; `pkt` a valid `Packet` that nothing else
/// uses during the call, or null (the verifier makes a global function
/// check; never the case: the packet is dropped, as one that cannot be read).
#[cfg(target_arch = "bpf")]
#[no_mangle]
#[inline(never)]
#[target_feature(enable = "allows-misaligned-mem-access")]
pub unsafe extern "C" fn fw_parse(skb: *mut aya_ebpf::bindings::__sk_buff, pkt: *mut Packet) -> u32 {
    // SAFETY: per this function's contract.
    let Some(pkt) = (unsafe { pkt.as_mut() }) else { return Outcome::encode(Err(Reason::DropTruncatedL2)).0 };
    Outcome::encode(parse_skb_inner(&TcContext::new(skb), pkt)).0
}

/// [`parse_skb`]'s result as one integer: `Parsed` as 0/1, a drop reason as
/// 256 + its number. A non-inlined BPF function must leave a scalar in R0
/// on every path (the verifier refuses a stack pointer there), which LLVM
/// does not guarantee for a small `Result` whose bits it only partly sets.
#[derive(Clone, Copy)]
pub struct Outcome(u32);

impl Outcome {
    #[inline(always)]
    pub fn encode(result: Result<Parsed, Reason>) -> Outcome {
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

#[cfg(target_arch = "bpf")]
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
    parse_frame(&Bounds::of(ctx), pkt)
}

/// `start..end` is the readable (linear) part of a packet of `len` bytes:
/// the parser as the host's tests run it.
#[cfg(not(target_arch = "bpf"))]
pub fn parse(start: usize, end: usize, len: usize, pkt: &mut Packet) -> Result<Parsed, Reason> {
    parse_frame(&Bounds { start, end, len, ctx: () }, pkt)
}

#[inline(always)]
fn parse_frame(b: &Bounds, pkt: &mut Packet) -> Result<Parsed, Reason> {
    let mut ethertype = b.header::<ETH_HLEN>(0).ok_or(Reason::DropTruncatedL2)?.be16(12);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = b.header::<4>(off).ok_or(Reason::DropTruncatedL2)?.be16(2);
        off += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(b, off, pkt).map(|()| Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(b, off, pkt).map(|()| Parsed::Ip),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::DropVlanDepth),
        _ => Ok(Parsed::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(b: &Bounds, off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    // Fixed 20-byte header: version/IHL, TOS, total length, id, flags/fragment
    // offset, TTL, protocol, checksum, source, destination.
    let hdr = b.header::<20>(off).ok_or(Reason::DropTruncatedL3)?;
    let version_ihl = hdr.u8(0);
    if version_ihl >> 4 != 4 {
        return Err(Reason::DropBadIpHeader);
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let total = hdr.be16(2) as usize;
    if ihl < 20 || total < ihl || total > b.remaining(off) {
        return Err(Reason::DropBadIpHeader);
    }
    let flags_offset = hdr.be16(6);
    let frag = if flags_offset & 0x1fff != 0 {
        Frag::Later
    } else if flags_offset & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    pkt.family = 4;
    // The other 12 bytes stay zero (Packet::zeroed_in).
    write4(&mut pkt.src, hdr.bytes(12));
    write4(&mut pkt.dst, hdr.bytes(16));
    pkt.proto = hdr.u8(9);
    pkt.frag = frag;
    pkt.frag_id = u32::from(hdr.be16(4));
    pkt.frag_proto = pkt.proto;
    pkt.hop_limit = hdr.u8(8);
    if frag != Frag::Later {
        parse_l4(b, pkt, off + ihl, off + total)?;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(b: &Bounds, off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    // Fixed header: version/class/flow (4), payload length (2), next header,
    // hop limit, then source (16) and destination (16), read further down.
    let hdr = b.header::<IPV6_HDR_LEN>(off).ok_or(Reason::DropTruncatedL3)?;
    if hdr.u8(0) >> 4 != 6 {
        return Err(Reason::DropBadIpHeader);
    }
    let payload = hdr.be16(4) as usize;
    // Payload length 0 means a jumbogram, which no Ethernet link carries.
    if payload == 0 || IPV6_HDR_LEN + payload > b.remaining(off) {
        return Err(Reason::DropBadIpHeader);
    }
    let mut next = hdr.u8(6);
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
                let h = b.header::<2>(hoff).ok_or(Reason::DropTruncatedL3)?;
                next = h.u8(0);
                (h.u8(1) as usize + 1) * 8
            }
            NEXTHDR_AUTH => {
                let h = b.header::<2>(hoff).ok_or(Reason::DropTruncatedL3)?;
                next = h.u8(0);
                (h.u8(1) as usize + 2) * 4
            }
            NEXTHDR_FRAGMENT => {
                let h = b.header::<8>(hoff).ok_or(Reason::DropTruncatedL3)?;
                let offset_flags = h.be16(2);
                frag = if offset_flags >> 3 != 0 {
                    Frag::Later
                } else if offset_flags & 1 != 0 {
                    Frag::First
                } else {
                    // An atomic fragment (RFC 6946): a whole packet.
                    Frag::None
                };
                frag_id = u32::from_be_bytes(h.bytes(4));
                frag_proto = h.u8(0);
                next = frag_proto;
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
    hdr.copy_addr6(8, &mut pkt.src);
    hdr.copy_addr6(24, &mut pkt.dst);
    pkt.proto = next;
    pkt.frag = frag;
    pkt.frag_id = frag_id;
    pkt.frag_proto = frag_proto;
    pkt.hop_limit = hdr.u8(7);
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
            let h = b.header::<20>(off).ok_or(Reason::DropTruncatedL4)?;
            check_within(off + 20, ip_end)?;
            pkt.ports = ports(h);
            // Whether data follows the header (its length in 32-bit words):
            // the sign of `header - segment`, without a branch, in the bit
            // of CWR, which nothing here reads (see [`TCP_DATA`]).
            let header = ((h.u8(12) >> 4) as u64) * 4;
            let segment = (ip_end - off) as u64;
            let data = (header.wrapping_sub(segment) >> 63) as u8;
            pkt.tcp_flags = (h.u8(13) & !TCP_DATA) | (data << 7);
            pkt.tcp_number = h.be32(if pkt.tcp_flags & TCP_SYN != 0 { 4 } else { 8 });
        }
        proto::UDP => {
            let h = b.header::<8>(off).ok_or(Reason::DropTruncatedL4)?;
            check_within(off + 8, ip_end)?;
            pkt.ports = ports(h);
        }
        proto::SCTP => {
            let h = b.header::<12>(off).ok_or(Reason::DropTruncatedL4)?;
            check_within(off + 12, ip_end)?;
            pkt.ports = ports(h);
        }
        // ICMP belongs to IPv4 and ICMPv6 to IPv6; crossed over, neither
        // is parsed (no echo pairing, no quoted flow): the policy decides.
        proto::ICMP | proto::ICMPV6 if (pkt.proto == proto::ICMP) == (pkt.family == 4) => {
            // type, code, checksum, then 4 bytes whose meaning depends on
            // the type (echo: identifier and sequence).
            let h = b.header::<8>(off).ok_or(Reason::DropTruncatedL4)?;
            check_within(off + 8, ip_end)?;
            let ty = h.u8(0);
            pkt.policy_port = h.be16(0);
            if is_icmp_echo(pkt.proto, ty) {
                let id = h.be16(4);
                pkt.ports = Ports { src: id, dst: id };
            } else if is_icmp_error(pkt.proto, ty) {
                pkt.quoted.valid = quoted(b, pkt, off + 8, ip_end);
            }
            return Ok(());
        }
        _ => {}
    }
    pkt.policy_port = pkt.ports.dst;
    Ok(())
}

/// Source and destination port, the first 4 bytes of TCP, UDP and SCTP.
#[inline(always)]
fn ports<const N: usize>(h: Hdr<N>) -> Ports {
    Ports { src: h.be16(0), dst: h.be16(2) }
}

/// An IPv4 address into the first 4 bytes of a 16-byte address field.
#[inline(always)]
fn write4(dst: &mut [u8; 16], addr: [u8; 4]) {
    let [a, b, c, d] = addr;
    dst[0] = a;
    dst[1] = b;
    dst[2] = c;
    dst[3] = d;
}

#[inline(always)]
fn check_within(header_end: usize, ip_end: usize) -> Result<(), Reason> {
    if header_end > ip_end {
        Err(Reason::DropTruncatedL4)
    } else {
        Ok(())
    }
}

/// The offending packet an ICMP error quotes: its IP header (IPv6: and its
/// extension headers, walked as in [`parse_ipv6`]) and the first 8 bytes
/// of its payload (RFC 792 and RFC 4443 guarantee at least these). A quoted
/// later fragment has no ports: it is recognised by its datagram (`later`).
/// Returns false when the quote is too short or not TCP/UDP/SCTP/echo:
/// such an error matches no flow and is left to the policy. It returns a
/// value because a BPF subprogram must not exit with a stack pointer left
/// in R0, which LLVM may do for a `()` function.
///
/// In the kernel through the global function [`fw_parse_quoted`]: inline or
/// static, the verifier walked it once for every path into it (each VLAN
/// depth, extension-header chain and fragment state of the error itself).
#[inline(always)]
fn quoted(b: &Bounds, pkt: &mut Packet, off: usize, ip_end: usize) -> bool {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `b.ctx` is the program's context, `pkt` a live Packet.
    return unsafe { fw_parse_quoted(b.ctx, pkt, off, ip_end) } != 0;
    #[cfg(not(target_arch = "bpf"))]
    parse_quoted(b, pkt, off, ip_end)
}

/// [`quoted`] as a global function (see [`fw_parse`] for why global): 1
/// when the quote names a flow. Compiled with misaligned accesses allowed,
/// like the parser: without it the quoted addresses are copied byte by
/// byte.
///
/// # Safety
/// As for [`fw_parse`].
#[cfg(target_arch = "bpf")]
#[no_mangle]
#[inline(never)]
#[target_feature(enable = "allows-misaligned-mem-access")]
pub unsafe extern "C" fn fw_parse_quoted(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    pkt: *mut Packet,
    off: usize,
    ip_end: usize,
) -> u32 {
    // SAFETY: per this function's contract.
    let Some(pkt) = (unsafe { pkt.as_mut() }) else { return 0 };
    u32::from(parse_quoted(&Bounds::of(&TcContext::new(skb)), pkt, off, ip_end))
}

#[inline(always)]
fn parse_quoted(b: &Bounds, pkt: &mut Packet, off: usize, ip_end: usize) -> bool {
    let q = &mut pkt.quoted;
    let l4 = if pkt.proto == proto::ICMP {
        let Some(h) = b.header::<20>(off) else { return false };
        let version_ihl = h.u8(0);
        let ihl = ((version_ihl & 0x0f) as usize) * 4;
        if version_ihl >> 4 != 4 || ihl < 20 {
            return false;
        }
        q.family = 4;
        q.proto = h.u8(9);
        write4(&mut q.src, h.bytes(12));
        write4(&mut q.dst, h.bytes(16));
        if h.be16(6) & 0x1fff != 0 {
            q.later = true;
            q.frag_id = u32::from(h.be16(4));
            q.frag_proto = q.proto;
            return off + ihl <= ip_end;
        }
        off + ihl
    } else {
        let Some(h) = b.header::<IPV6_HDR_LEN>(off) else { return false };
        if h.u8(0) >> 4 != 6 {
            return false;
        }
        q.family = 6;
        h.copy_addr6(8, &mut q.src);
        h.copy_addr6(24, &mut q.dst);
        let mut next = h.u8(6);
        let mut hoff = off + IPV6_HDR_LEN;
        let mut walked = 0;
        while walked < MAX_IPV6_EXT {
            let len = match next {
                NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                    let Some(e) = b.header::<2>(hoff) else { return false };
                    next = e.u8(0);
                    (e.u8(1) as usize + 1) * 8
                }
                NEXTHDR_AUTH => {
                    let Some(e) = b.header::<2>(hoff) else { return false };
                    next = e.u8(0);
                    (e.u8(1) as usize + 2) * 4
                }
                NEXTHDR_FRAGMENT => {
                    let Some(e) = b.header::<8>(hoff) else { return false };
                    q.frag_id = u32::from_be_bytes(e.bytes(4));
                    q.frag_proto = e.u8(0);
                    q.later = e.be16(2) >> 3 != 0;
                    next = q.frag_proto;
                    8
                }
                _ => break,
            };
            hoff += len;
            walked += 1;
            if q.later {
                q.proto = next;
                return hoff <= ip_end;
            }
        }
        if is_ipv6_ext(next) {
            return false;
        }
        q.proto = next;
        hoff
    };
    let Some(t) = b.header::<8>(l4) else { return false };
    if l4 + 8 > ip_end {
        return false;
    }
    q.ports = match q.proto {
        proto::TCP | proto::UDP | proto::SCTP => ports(t),
        proto::ICMP | proto::ICMPV6 if is_icmp_echo(q.proto, t.u8(0)) => {
            let id = t.be16(4);
            Ports { src: id, dst: id }
        }
        _ => return false,
    };
    true
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
