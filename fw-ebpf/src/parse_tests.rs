//! The parser on the host: frames built byte by byte, parsed from a buffer
//! exactly as long as the frame (`start..end`), so a read past the end
//! would be a read past the allocation.

use fw_common::{policy::proto, Reason};
use proptest::prelude::*;

use super::*;

const MAC: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
const V4_SRC: [u8; 4] = [198, 18, 0, 1];
const V4_DST: [u8; 4] = [198, 18, 0, 2];
const V6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// What a parse produced, in comparable form.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Seen {
    family: u8,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    ports: (u16, u16),
    policy_port: u16,
    tcp_flags: u8,
    frag: u8,
    frag_id: u32,
    frag_proto: u8,
    hop_limit: u8,
    quoted: Option<(u8, u8, [u8; 16], [u8; 16], (u16, u16))>,
}

/// Parses `frame`, of which the first `linear` bytes are readable.
fn parse_linear(frame: &[u8], linear: usize) -> Result<Option<Seen>, Reason> {
    // A buffer of exactly `linear` bytes: reading past it leaves the
    // allocation (caught by the allocator's guard pages only by luck, but
    // by Miri and sanitizers always).
    let buf: Box<[u8]> = frame[..linear].into();
    let start = buf.as_ptr() as usize;
    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = Packet::zeroed_in(&mut slot);
    let parsed = parse(start, start + buf.len(), frame.len(), pkt)?;
    Ok(match parsed {
        Parsed::NotIp => None,
        Parsed::Ip => Some(Seen {
            family: pkt.family,
            proto: pkt.proto,
            src: pkt.src,
            dst: pkt.dst,
            ports: (pkt.ports.src, pkt.ports.dst),
            policy_port: pkt.policy_port,
            tcp_flags: pkt.tcp_flags,
            frag: pkt.frag as u8,
            frag_id: pkt.frag_id,
            frag_proto: pkt.frag_proto,
            hop_limit: pkt.hop_limit,
            quoted: pkt.quoted.valid.then(|| {
                let q = &pkt.quoted;
                (q.family, q.proto, q.src, q.dst, (q.ports.src, q.ports.dst))
            }),
        }),
    })
}

fn parse_frame(frame: &[u8]) -> Result<Option<Seen>, Reason> {
    parse_linear(frame, frame.len())
}

fn v4(addr: [u8; 4]) -> [u8; 16] {
    let mut a = [0; 16];
    a[..4].copy_from_slice(&addr);
    a
}

/// Ethernet header with `tags` VLAN tags (802.1ad outer, then 802.1Q).
fn eth(tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = MAC.to_vec();
    for (i, vid) in tags.iter().enumerate() {
        let tpid: u16 = if i == 0 && tags.len() > 1 { 0x88A8 } else { 0x8100 };
        f.extend(tpid.to_be_bytes());
        f.extend(vid.to_be_bytes());
    }
    f.extend(ethertype.to_be_bytes());
    f
}

fn ipv4(proto: u8, flags_offset: u16, id: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend(total.to_be_bytes());
    h.extend(id.to_be_bytes());
    h.extend(flags_offset.to_be_bytes());
    h.extend([64, proto, 0, 0]);
    h.extend(V4_SRC);
    h.extend(V4_DST);
    h.extend(payload);
    h
}

/// IPv6 header, then `exts` (each: header type, its bytes with the next
/// header byte filled in here), then the transport `payload` of `proto`.
fn ipv6(exts: &[(u8, Vec<u8>)], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |(t, _)| *t);
        let mut b = bytes.clone();
        b[0] = next;
        body.extend(b);
    }
    body.extend(payload);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((body.len() as u16).to_be_bytes());
    h.push(exts.first().map_or(proto, |(t, _)| *t));
    h.push(63);
    h.extend(V6_SRC);
    h.extend(V6_DST);
    h.extend(body);
    h
}

fn tcp(src: u16, dst: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut t = src.to_be_bytes().to_vec();
    t.extend(dst.to_be_bytes());
    t.extend(seq.to_be_bytes());
    t.extend(ack.to_be_bytes());
    t.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn udp(src: u16, dst: u16, data: &[u8]) -> Vec<u8> {
    let mut u = src.to_be_bytes().to_vec();
    u.extend(dst.to_be_bytes());
    u.extend(((8 + data.len()) as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(data);
    u
}

fn icmp(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut i = vec![ty, code, 0, 0];
    i.extend(rest);
    i.extend(body);
    i
}

/// An 8-byte IPv6 extension header of type `ty` (hop-by-hop, routing or
/// destination options: length field 0 means 8 bytes).
fn ext8(ty: u8) -> (u8, Vec<u8>) {
    (ty, vec![0; 8])
}

fn fragment_header(offset_units: u16, more: bool, id: u32) -> (u8, Vec<u8>) {
    let mut h = vec![0, 0];
    h.extend((offset_units << 3 | u16::from(more)).to_be_bytes());
    h.extend(id.to_be_bytes());
    (NEXTHDR_FRAGMENT, h)
}

fn frame(l2: Vec<u8>, l3: Vec<u8>) -> Vec<u8> {
    let mut f = l2;
    f.extend(l3);
    f
}

fn tcp4() -> Vec<u8> {
    frame(eth(&[], ETH_P_IP), ipv4(proto::TCP, 0, 7, &tcp(40000, 443, TCP_SYN, 1000, 0)))
}

#[test]
fn ipv4_tcp_syn_fields() {
    let seen = parse_frame(&tcp4()).unwrap().unwrap();
    assert_eq!(seen.family, 4);
    assert_eq!(seen.proto, proto::TCP);
    assert_eq!(seen.src, v4(V4_SRC));
    assert_eq!(seen.dst, v4(V4_DST));
    assert_eq!(seen.ports, (40000, 443));
    assert_eq!(seen.policy_port, 443);
    assert_eq!(seen.tcp_flags, TCP_SYN);
    assert_eq!(seen.frag, Frag::None as u8);
    assert_eq!(seen.hop_limit, 64);
}

#[test]
fn tcp_number_is_the_syn_sequence_or_else_the_acknowledgment() {
    let syn = frame(eth(&[], ETH_P_IP), ipv4(proto::TCP, 0, 1, &tcp(1, 2, TCP_SYN, 111, 222)));
    let ack = frame(eth(&[], ETH_P_IP), ipv4(proto::TCP, 0, 1, &tcp(1, 2, TCP_ACK, 111, 222)));
    let number = |f: &[u8]| {
        let buf: Box<[u8]> = f.into();
        let start = buf.as_ptr() as usize;
        let mut slot = core::mem::MaybeUninit::uninit();
        let pkt = Packet::zeroed_in(&mut slot);
        parse(start, start + buf.len(), buf.len(), pkt).unwrap();
        pkt.tcp_number
    };
    assert_eq!(number(&syn), 111);
    assert_eq!(number(&ack), 222);
}

#[test]
fn ipv6_udp_fields() {
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&[], proto::UDP, &udp(5000, 3478, b"stun")));
    let seen = parse_frame(&f).unwrap().unwrap();
    assert_eq!((seen.family, seen.proto), (6, proto::UDP));
    assert_eq!((seen.src, seen.dst), (V6_SRC, V6_DST));
    assert_eq!(seen.ports, (5000, 3478));
    assert_eq!(seen.policy_port, 3478);
    assert_eq!(seen.hop_limit, 63);
}

#[test]
fn not_ip_passes_to_the_caller_as_such() {
    let mut arp = eth(&[], 0x0806);
    arp.extend([0; 28]);
    assert_eq!(parse_frame(&arp), Ok(None));
}

#[test]
fn vlan_tags_up_to_two_are_walked_a_third_is_refused() {
    let l3 = ipv4(proto::UDP, 0, 1, &udp(1, 53, b""));
    for tags in [&[10][..], &[10, 20]] {
        let seen = parse_frame(&frame(eth(tags, ETH_P_IP), l3.clone())).unwrap().unwrap();
        assert_eq!(seen.ports, (1, 53), "{tags:?}");
    }
    let three = frame(eth(&[10, 20, 30], ETH_P_IP), l3);
    assert_eq!(parse_frame(&three), Err(Reason::DropVlanDepth));
}

#[test]
fn truncation_at_each_layer_names_the_layer() {
    let f = tcp4();
    // Ethernet is 14 bytes, IPv4 20, TCP 20.
    for (cut, reason) in [(13, Reason::DropTruncatedL2), (14 + 19, Reason::DropTruncatedL3)] {
        assert_eq!(parse_frame(&f[..cut]), Err(reason), "cut at {cut}");
    }
    // An IPv4 total length that promises more than the frame holds.
    assert_eq!(parse_frame(&f[..14 + 20 + 10]), Err(Reason::DropBadIpHeader));
    // A TCP header cut short inside a consistent datagram.
    let short = frame(eth(&[], ETH_P_IP), ipv4(proto::TCP, 0, 1, &[0; 12]));
    assert_eq!(parse_frame(&short), Err(Reason::DropTruncatedL4));
}

#[test]
fn headers_outside_the_linear_area_count_as_truncated() {
    // The whole frame exists (len), but only the Ethernet and IP headers
    // were pulled into the readable window.
    let f = tcp4();
    assert_eq!(parse_linear(&f, 14 + 20), Err(Reason::DropTruncatedL4));
}

#[test]
fn bad_ipv4_headers() {
    let mut f = tcp4();
    f[14] = 0x44; // IHL 4: shorter than the fixed header.
    assert_eq!(parse_frame(&f), Err(Reason::DropBadIpHeader));
    let mut f = tcp4();
    f[14] = 0x65; // Version 6 in an IPv4 ethertype.
    assert_eq!(parse_frame(&f), Err(Reason::DropBadIpHeader));
    let mut f = tcp4();
    f[16..18].copy_from_slice(&10u16.to_be_bytes()); // Total < IHL.
    assert_eq!(parse_frame(&f), Err(Reason::DropBadIpHeader));
}

#[test]
fn ipv4_options_move_the_transport_header() {
    let mut l3 = ipv4(proto::UDP, 0, 1, &[]);
    l3[0] = 0x46; // IHL 6: one 4-byte option (NOPs) before the payload.
    l3.extend([1, 1, 1, 1]);
    l3.extend(udp(7, 8, b""));
    let total = l3.len() as u16;
    l3[2..4].copy_from_slice(&total.to_be_bytes());
    let seen = parse_frame(&frame(eth(&[], ETH_P_IP), l3)).unwrap().unwrap();
    assert_eq!(seen.ports, (7, 8));
}

#[test]
fn ipv4_fragments() {
    let first = frame(eth(&[], ETH_P_IP), ipv4(proto::UDP, 0x2000, 99, &udp(1, 2, &[0; 16])));
    let seen = parse_frame(&first).unwrap().unwrap();
    assert_eq!((seen.frag, seen.frag_id, seen.frag_proto, seen.ports), (Frag::First as u8, 99, proto::UDP, (1, 2)));
    // A later fragment: no transport header, whatever its bytes say.
    let later = frame(eth(&[], ETH_P_IP), ipv4(proto::UDP, 3, 99, &[0xee; 16]));
    let seen = parse_frame(&later).unwrap().unwrap();
    assert_eq!((seen.frag, seen.frag_id, seen.frag_proto, seen.ports), (Frag::Later as u8, 99, proto::UDP, (0, 0)));
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport_header() {
    for ty in [NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_DEST] {
        let f = frame(eth(&[], ETH_P_IPV6), ipv6(&[ext8(ty)], proto::TCP, &tcp(9, 443, TCP_ACK, 0, 0)));
        let seen = parse_frame(&f).unwrap().unwrap();
        assert_eq!((seen.proto, seen.ports), (proto::TCP, (9, 443)), "extension {ty}");
    }
    // Authentication header: length in 4-byte units, minus 2 (RFC 4302).
    let mut ah = vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ah[1] = 1; // (1 + 2) * 4 = 12 bytes.
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&[(NEXTHDR_AUTH, ah)], proto::UDP, &udp(5, 6, b"")));
    assert_eq!(parse_frame(&f).unwrap().unwrap().ports, (5, 6));
}

#[test]
fn ipv6_chains_longer_than_the_walk_or_unknown_are_refused() {
    let six: Vec<_> = (0..MAX_IPV6_EXT).map(|_| ext8(NEXTHDR_DEST)).collect();
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&six, proto::UDP, &udp(1, 2, b"")));
    assert_eq!(parse_frame(&f).unwrap().unwrap().ports, (1, 2), "{MAX_IPV6_EXT} headers are walked");
    let seven: Vec<_> = (0..=MAX_IPV6_EXT).map(|_| ext8(NEXTHDR_DEST)).collect();
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&seven, proto::UDP, &udp(1, 2, b"")));
    assert_eq!(parse_frame(&f), Err(Reason::DropIpv6ExtChain));
    // Mobility (135): an extension header the parser does not walk.
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&[(135, vec![0; 8])], proto::UDP, &udp(1, 2, b"")));
    assert_eq!(parse_frame(&f), Err(Reason::DropIpv6ExtChain));
}

#[test]
fn ipv6_extension_header_beyond_the_datagram_is_truncation() {
    // A destination-options header that claims 16 bytes in a datagram of 8.
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&[(NEXTHDR_DEST, vec![0, 1, 0, 0, 0, 0, 0, 0])], 59, &[]));
    assert_eq!(parse_frame(&f), Err(Reason::DropTruncatedL3));
}

#[test]
fn ipv6_fragments() {
    let first =
        frame(eth(&[], ETH_P_IPV6), ipv6(&[fragment_header(0, true, 0xabcd)], proto::UDP, &udp(3, 4, &[0; 16])));
    let seen = parse_frame(&first).unwrap().unwrap();
    assert_eq!((seen.frag, seen.frag_id, seen.frag_proto, seen.ports), (Frag::First as u8, 0xabcd, proto::UDP, (3, 4)));
    let later = frame(eth(&[], ETH_P_IPV6), ipv6(&[fragment_header(2, false, 0xabcd)], proto::UDP, &[0xee; 16]));
    let seen = parse_frame(&later).unwrap().unwrap();
    assert_eq!((seen.frag, seen.frag_id, seen.frag_proto, seen.ports), (Frag::Later as u8, 0xabcd, proto::UDP, (0, 0)));
    // An atomic fragment (offset 0, no more fragments) is a whole packet.
    let atomic = frame(eth(&[], ETH_P_IPV6), ipv6(&[fragment_header(0, false, 5)], proto::UDP, &udp(3, 4, b"")));
    let seen = parse_frame(&atomic).unwrap().unwrap();
    assert_eq!((seen.frag, seen.ports), (Frag::None as u8, (3, 4)));
}

#[test]
fn icmp_echo_carries_its_identifier_as_both_ports() {
    let f = frame(eth(&[], ETH_P_IP), ipv4(proto::ICMP, 0, 1, &icmp(8, 0, [0x12, 0x34, 0, 1], b"ping")));
    let seen = parse_frame(&f).unwrap().unwrap();
    assert_eq!((seen.ports, seen.policy_port), ((0x1234, 0x1234), 8 << 8));
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&[], proto::ICMPV6, &icmp(129, 0, [0, 7, 0, 1], b"")));
    let seen = parse_frame(&f).unwrap().unwrap();
    assert_eq!((seen.ports, seen.policy_port), ((7, 7), 129 << 8));
}

#[test]
fn icmp_errors_quote_the_packet_they_answer() {
    // Port unreachable for a UDP datagram 198.18.0.2:53 -> 198.18.0.1:5353
    // (as sent by the peer: the quote is the original, reversed).
    let quoted = ipv4(proto::UDP, 0, 3, &udp(5353, 53, b""));
    let f = frame(eth(&[], ETH_P_IP), ipv4(proto::ICMP, 0, 1, &icmp(3, 3, [0; 4], &quoted)));
    let seen = parse_frame(&f).unwrap().unwrap();
    assert_eq!(seen.policy_port, 3 << 8 | 3);
    assert_eq!(seen.quoted, Some((4, proto::UDP, v4(V4_SRC), v4(V4_DST), (5353, 53))));
    // Packet too big quoting a TCP segment.
    let quoted = ipv6(&[], proto::TCP, &tcp(443, 40000, TCP_ACK, 0, 0));
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&[], proto::ICMPV6, &icmp(2, 0, [0, 0, 5, 0], &quoted)));
    let seen = parse_frame(&f).unwrap().unwrap();
    assert_eq!(seen.quoted, Some((6, proto::TCP, V6_SRC, V6_DST, (443, 40000))));
}

#[test]
fn a_quote_too_short_matches_no_flow_but_the_error_still_parses() {
    let quoted = ipv4(proto::UDP, 0, 3, &udp(5353, 53, b""));
    let f = frame(eth(&[], ETH_P_IP), ipv4(proto::ICMP, 0, 1, &icmp(3, 3, [0; 4], &quoted[..24])));
    let seen = parse_frame(&f).unwrap().unwrap();
    assert_eq!(seen.quoted, None);
}

#[test]
fn icmp_in_the_wrong_family_is_left_to_the_policy() {
    // ICMPv4 inside IPv6: no echo pairing, no quote, policy port 0.
    let f = frame(eth(&[], ETH_P_IPV6), ipv6(&[], proto::ICMP, &icmp(8, 0, [0, 9, 0, 1], b"")));
    let seen = parse_frame(&f).unwrap().unwrap();
    assert_eq!((seen.ports, seen.policy_port, seen.quoted), ((0, 0), 0, None));
}

#[test]
fn outcome_round_trips_every_result() {
    for result in [Ok(Parsed::Ip), Ok(Parsed::NotIp), Err(Reason::DropTruncatedL4), Err(Reason::DropIpv6ExtChain)] {
        let expected = match &result {
            Ok(Parsed::Ip) => "ip".to_owned(),
            Ok(Parsed::NotIp) => "not ip".to_owned(),
            Err(r) => format!("{r:?}"),
        };
        let decoded = match Outcome::encode(result).decode() {
            Ok(Parsed::Ip) => "ip".to_owned(),
            Ok(Parsed::NotIp) => "not ip".to_owned(),
            Err(r) => format!("{r:?}"),
        };
        assert_eq!(decoded, expected);
    }
}

/// Frames of every shape the tests above build, for the properties below.
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    let transport = prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(s, d, f)| (proto::TCP, tcp(s, d, f, 1, 2))),
        (any::<u16>(), any::<u16>()).prop_map(|(s, d)| (proto::UDP, udp(s, d, b"x"))),
    ];
    (transport, 0..3usize, any::<bool>(), 0..4usize).prop_map(|((p, l4), tags, six, exts)| {
        let tags: Vec<u16> = (0..tags as u16).collect();
        if six {
            let exts: Vec<_> = (0..exts).map(|_| ext8(NEXTHDR_DEST)).collect();
            frame(eth(&tags, ETH_P_IPV6), ipv6(&exts, p, &l4))
        } else {
            frame(eth(&tags, ETH_P_IP), ipv4(p, 0, 1, &l4))
        }
    })
}

proptest! {
    /// Whatever the bytes, the parser answers (no panic, no read outside
    /// the readable window: the buffer is exactly that long).
    #[test]
    fn arbitrary_bytes_never_crash(bytes in proptest::collection::vec(any::<u8>(), 0..200), ethertype in prop_oneof![Just(ETH_P_IP), Just(ETH_P_IPV6), Just(ETH_P_8021Q), any::<u16>()]) {
        let mut f = eth(&[], ethertype);
        f.extend(bytes);
        let _ = parse_frame(&f);
    }

    /// Cutting the readable window of a valid frame either leaves the
    /// result as it was (the cut is past every header read) or drops the
    /// packet as truncated: never a different packet.
    #[test]
    fn a_shorter_window_never_changes_what_is_read(f in any_frame(), cut in 0..120usize) {
        let whole = parse_frame(&f).unwrap();
        let linear = cut.min(f.len());
        match parse_linear(&f, linear) {
            Ok(seen) => prop_assert_eq!(seen, whole),
            Err(reason) => prop_assert!(
                matches!(reason, Reason::DropTruncatedL2 | Reason::DropTruncatedL3 | Reason::DropTruncatedL4),
                "{:?} at {}", reason, linear
            ),
        }
    }
}
