//! Random packets: conversations (a 5-tuple seen from this host, with
//! packets both ways, ICMP errors quoting it, fragments of it), neighbour
//! discovery, odd protocols, non-IP, and the malformed variants.

use crate::{
    packets::*,
    policies::{Hints, V4_BASE, V6_BASE},
};
use fw_common::Direction;
use fw_lab::rng::Rng;

/// This host's addresses (outside the rule windows, so rules match peers).
pub const LOCAL4: [u8; 4] = [198, 19, 255, 1];
pub const LOCAL6: u128 = 0x2001_0db8_ffff_0000_0000_0000_0000_0001;

/// A flow seen from this host. ICMP echo conversations use the echo
/// identifier as both ports.
#[derive(Clone, Debug)]
pub struct Conv {
    pub v6: bool,
    pub proto: u8,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub lport: u16,
    pub rport: u16,
}

impl Conv {
    pub fn is_echo(&self) -> bool {
        self.proto == ICMP || self.proto == ICMPV6
    }
    fn icmp_proto(&self) -> u8 {
        if self.v6 {
            ICMPV6
        } else {
            ICMP
        }
    }
    /// (src, dst, sport, dport) of a packet going `direction`.
    pub fn ends(&self, direction: Direction) -> ([u8; 16], [u8; 16], u16, u16) {
        match direction {
            Direction::Egress => (self.local, self.remote, self.lport, self.rport),
            Direction::Inbound => (self.remote, self.local, self.rport, self.lport),
        }
    }
}

/// How a packet of a conversation looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Data,
    /// Echo request sent in this direction (echo conversations only).
    EchoRequest,
    EchoReply,
    /// An ICMP error travelling this way that quotes the conversation.
    ErrorQuoting,
    /// An ICMP error quoting a packet of another (random) tuple.
    ErrorQuotingOther,
    FirstFragment,
    LaterFragment,
}

pub struct Gen {
    pub rng: Rng,
    pub hints: Hints,
}

impl Gen {
    pub fn v4_addr(&mut self) -> [u8; 4] {
        match self.rng.weighted(&[6, 3, 1]) {
            0 if !self.hints.v4.is_empty() => *self.rng.pick(&self.hints.v4),
            1 | 0 => (V4_BASE + self.rng.below(1024) as u32).to_be_bytes(),
            _ => self.rng.u32().to_be_bytes(),
        }
    }

    pub fn v6_addr(&mut self) -> [u8; 16] {
        match self.rng.weighted(&[6, 3, 1]) {
            0 if !self.hints.v6.is_empty() => *self.rng.pick(&self.hints.v6),
            1 | 0 => (V6_BASE + u128::from(self.rng.below(1024))).to_be_bytes(),
            _ => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&self.rng.bytes(16));
                a
            }
        }
    }

    pub fn remote(&mut self, v6: bool) -> [u8; 16] {
        if v6 {
            self.v6_addr()
        } else {
            v4(self.v4_addr())
        }
    }

    pub fn local(&mut self, v6: bool) -> [u8; 16] {
        if self.rng.percent(90) {
            if v6 {
                LOCAL6.to_be_bytes()
            } else {
                v4(LOCAL4)
            }
        } else {
            self.remote(v6)
        }
    }

    pub fn port(&mut self) -> u16 {
        match self.rng.weighted(&[6, 2, 2]) {
            0 if !self.hints.ports.is_empty() => *self.rng.pick(&self.hints.ports),
            1 | 0 => *self.rng.pick(&[0u16, 1, 22, 53, 80, 123, 443, 3478, 8080, 40000, 50000, 65535]),
            _ => self.rng.u16(),
        }
    }

    pub fn conv(&mut self) -> Conv {
        let v6 = self.rng.percent(45);
        let proto = match self.rng.weighted(&[35, 30, 8, 14, 5]) {
            0 => TCP,
            1 => UDP,
            2 => SCTP,
            3 => {
                if v6 {
                    ICMPV6
                } else {
                    ICMP
                }
            }
            _ => *self.rng.pick(&[47u8, 50, 0, 59, 200]),
        };
        let local = self.local(v6);
        let remote = self.remote(v6);
        let (lport, rport) = match proto {
            TCP | UDP | SCTP => (self.port(), self.port()),
            ICMP | ICMPV6 => {
                let id = self.rng.u16();
                (id, id)
            }
            _ => (0, 0),
        };
        Conv { v6, proto, local, remote, lport, rport }
    }

    /// VLAN tags (outermost first) and Ethernet padding.
    pub fn l2(&mut self) -> (Vec<u16>, usize) {
        let tags = match self.rng.weighted(&[70, 14, 10, 6]) {
            0 => vec![],
            1 => vec![VLAN_Q],
            2 => vec![VLAN_AD, VLAN_Q],
            _ => vec![*self.rng.pick(&[VLAN_Q, VLAN_AD]), *self.rng.pick(&[VLAN_Q, VLAN_AD])],
        };
        let pad = match self.rng.weighted(&[70, 20, 10]) {
            0 => 0,
            1 => self.rng.usize(1, 24),
            _ => self.rng.usize(25, 200),
        };
        (tags, pad)
    }

    /// IPv4 options or an IPv6 extension chain (no fragment header).
    pub fn decorate(&mut self, ip: &mut Ip) {
        if ip.v6 {
            if self.rng.percent(30) {
                let n = self.rng.weighted(&[30, 25, 15, 10, 8, 12]) + 1;
                for i in 0..n {
                    let e = self.ext(i == 0);
                    ip.v6_ext.push(e);
                }
            }
        } else if self.rng.percent(20) {
            let words = self.rng.usize(1, 10);
            let mut opts = vec![1u8; words * 4]; // NOPs
            if self.rng.percent(50) {
                // Router alert (4 bytes), then NOPs.
                opts[..4].copy_from_slice(&[0x94, 4, 0, 0]);
            }
            if self.rng.percent(30) {
                let last = opts.len() - 1;
                opts[last] = 0; // end of options list
            }
            ip.v4_options = opts;
        }
    }

    /// One walkable extension header (hop-by-hop only first).
    pub fn ext(&mut self, first: bool) -> Ext {
        let kinds: &[u8] = if first { &[0, 43, 60, 51] } else { &[43, 60, 51] };
        let ty = *self.rng.pick(kinds);
        if ty == 51 {
            return Ext::Auth { len4: *self.rng.pick(&[1u8, 4, 6]) };
        }
        let len8 = match self.rng.weighted(&[70, 25, 5]) {
            0 => self.rng.below(2) as u8,
            1 => self.rng.range(2, 8) as u8,
            // Long enough to push the transport header past the parser's window.
            _ => self.rng.range(40, 90) as u8,
        };
        Ext::Generic { ty, len8 }
    }

    /// A short walkable extension header (hop-by-hop only first): for
    /// quotes, which must fit a packet-too-big message.
    fn small_ext(&mut self, first: bool) -> Ext {
        match self.ext(first) {
            Ext::Generic { ty, len8 } => Ext::Generic { ty, len8: len8.min(2) },
            other => other,
        }
    }

    fn tcp_flags(&mut self) -> u8 {
        *self.rng.pick(&[
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_ACK,
            TCP_ACK | 0x08,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
        ])
    }

    /// The transport bytes of a data packet `src_port -> dst_port`.
    fn data_l4(&mut self, conv: &Conv, sport: u16, dport: u16, request: bool, direction: Direction) -> Vec<u8> {
        let payload = match self.rng.weighted(&[50, 40, 10]) {
            0 => 0,
            1 => self.rng.usize(1, 40),
            _ => self.rng.usize(41, 300),
        };
        match conv.proto {
            TCP => {
                let flags = self.tcp_flags();
                // Mostly the acknowledgment of a SYN-ACK the generator sent
                // the other way (all its segments carry TCP_SEQ).
                let ack = if self.rng.percent(70) { TCP_SEQ.wrapping_add(1) } else { self.rng.u32() };
                let mut segment = tcp_acking(sport, dport, flags, ack, payload);
                if self.rng.percent(10) {
                    // A data offset other than 5 (options, or a broken
                    // one): what counts as data is what follows it.
                    segment[12] = (self.rng.below(16) as u8) << 4;
                }
                segment
            }
            UDP => udp(sport, dport, payload),
            SCTP => sctp(sport, dport, payload),
            ICMP | ICMPV6 => {
                let _ = direction;
                let ty = match (conv.proto, request) {
                    (ICMP, true) => 8,
                    (ICMP, false) => 0,
                    (_, true) => 128,
                    (_, false) => 129,
                };
                icmp(ty, 0, echo_rest(sport, self.rng.u16()), &vec![0x42; payload.min(64)])
            }
            _ => self.rng.bytes(payload.min(64)),
        }
    }

    fn finish(&mut self, ip: &Ip, l4: &[u8]) -> Vec<u8> {
        let (tags, pad) = self.l2();
        frame(&tags, ip, l4, pad)
    }

    /// A packet of `conv` going `direction`.
    pub fn packet(&mut self, conv: &Conv, direction: Direction, variant: Variant, frag_id: u32) -> Vec<u8> {
        let (src, dst, sport, dport) = conv.ends(direction);
        match variant {
            Variant::Data | Variant::EchoRequest | Variant::EchoReply => {
                let mut ip = Ip::new(conv.v6, src, dst, conv.proto);
                self.decorate(&mut ip);
                let request = variant != Variant::EchoReply;
                let l4 = self.data_l4(conv, sport, dport, request, direction);
                self.finish(&ip, &l4)
            }
            Variant::ErrorQuoting | Variant::ErrorQuotingOther => {
                // The quoted packet went the other way.
                let back = match direction {
                    Direction::Egress => Direction::Inbound,
                    Direction::Inbound => Direction::Egress,
                };
                let quoted_conv = if variant == Variant::ErrorQuoting { conv.clone() } else { self.conv_like(conv) };
                let (qsrc, qdst, qs, qd) = quoted_conv.ends(back);
                let mut qip = Ip::new(conv.v6, qsrc, qdst, quoted_conv.proto);
                if !conv.v6 && self.rng.percent(15) {
                    qip.v4_options = vec![1; 4 * self.rng.usize(1, 3)];
                }
                // The quoted packet may be a fragment (path MTU discovery
                // of a fragmented datagram: issue 12, finding 4) and, in
                // IPv6, carry extension headers before or after its
                // fragment header, as any packet may.
                let quoted_later = self.rng.percent(12);
                let quoted_first = !quoted_later && self.rng.percent(15);
                if conv.v6 {
                    if self.rng.percent(25) {
                        let n = self.rng.usize(1, 3);
                        for i in 0..n {
                            let e = self.small_ext(i == 0);
                            qip.v6_ext.push(e);
                        }
                    }
                    if quoted_first || quoted_later {
                        let offset = if quoted_later { self.rng.range(1, 400) as u16 } else { 0 };
                        qip.v6_ext.push(Ext::Fragment { offset, more: true, id: frag_id });
                        if self.rng.percent(15) {
                            // Options in the fragmentable part (first fragment only).
                            if quoted_first {
                                qip.v6_ext.push(Ext::Generic { ty: 60, len8: 0 });
                            } else {
                                qip.proto = 60;
                            }
                        }
                    }
                    if self.rng.percent(3) {
                        // Longer than the parser walks, or unwalkable.
                        for _ in 0..self.rng.usize(5, 8) {
                            qip.v6_ext.push(Ext::Generic { ty: 60, len8: 0 });
                        }
                    }
                } else if quoted_first || quoted_later {
                    qip.v4_id = frag_id as u16;
                    qip.v4_frag = if quoted_later { self.rng.range(1, 400) as u16 } else { 0x2000 };
                }
                let ql4 = match quoted_conv.proto {
                    _ if quoted_later => self.rng.bytes(8),
                    TCP => tcp(qs, qd, TCP_SYN, 0),
                    UDP => udp(qs, qd, 20),
                    SCTP => sctp(qs, qd, 4),
                    ICMP | ICMPV6 => {
                        let request = if quoted_conv.proto == ICMP { 8 } else { 128 };
                        icmp(request, 0, echo_rest(qs, 1), &[0; 8])
                    }
                    _ => self.rng.bytes(8),
                };
                let mut quoted = qip.packet(&ql4);
                let keep = match self.rng.weighted(&[60, 25, 15]) {
                    // The minimum RFC 792 quote: header + 8 bytes.
                    0 => quoted.len() - ql4.len() + 8.min(ql4.len()),
                    1 => quoted.len(),
                    // Shorter than a usable quote.
                    _ => self.rng.usize(0, quoted.len() - ql4.len() + 7),
                };
                quoted.truncate(keep);
                let (ty, code) = self.error_type(conv.v6);
                let outer_src = if direction == Direction::Inbound && self.rng.percent(30) {
                    self.remote(conv.v6) // a router on the path
                } else {
                    src
                };
                let mut ip = Ip::new(conv.v6, outer_src, dst, conv.icmp_proto());
                self.decorate(&mut ip);
                let l4 = icmp(ty, code, [0, 0, 0x05, 0xdc], &quoted);
                self.finish(&ip, &l4)
            }
            Variant::FirstFragment | Variant::LaterFragment => {
                let first = variant == Variant::FirstFragment;
                let mut ip = Ip::new(conv.v6, src, dst, conv.proto);
                // Decided by the datagram, so that its first and later
                // fragments agree.
                let dest_after = conv.v6 && frag_id % 8 == 3;
                let l4 = if first {
                    let mut l4 = self.data_l4(conv, sport, dport, true, direction);
                    // Round the fragment to 8 bytes, as a real one is.
                    l4.resize(l4.len().max(8).div_ceil(8) * 8, 0);
                    l4
                } else {
                    self.rng.bytes_between(1, 60)
                };
                let offset = if first { 0 } else { self.rng.range(1, 400) as u16 };
                let more = first || self.rng.percent(50);
                if conv.v6 {
                    if self.rng.percent(30) {
                        ip.v6_ext.push(self.ext(true));
                    }
                    ip.v6_ext.push(Ext::Fragment { offset, more, id: frag_id });
                    if dest_after {
                        // A destination options header in the fragmentable
                        // part: in the first fragment only, but named by the
                        // fragment header's Next Header in every fragment.
                        if first {
                            ip.v6_ext.push(Ext::Generic { ty: 60, len8: 0 });
                        } else {
                            ip.proto = 60;
                        }
                    }
                } else {
                    ip.v4_id = frag_id as u16;
                    ip.v4_frag = offset | if more { 0x2000 } else { 0 };
                    if self.rng.percent(20) {
                        ip.v4_frag |= 0x4000; // DF: no bearing on fragment position
                    }
                }
                self.finish(&ip, &l4)
            }
        }
    }

    fn error_type(&mut self, v6: bool) -> (u8, u8) {
        if v6 {
            match self.rng.below(4) {
                0 => (1, self.rng.below(7) as u8),
                1 => (2, 0),
                2 => (3, self.rng.below(2) as u8),
                _ => (4, self.rng.below(4) as u8),
            }
        } else {
            match self.rng.below(4) {
                0 | 1 => (3, self.rng.below(16) as u8),
                2 => (11, self.rng.below(2) as u8),
                _ => (12, 0),
            }
        }
    }

    /// A conversation of the same family with another tuple.
    fn conv_like(&mut self, conv: &Conv) -> Conv {
        let mut c = self.conv();
        while c.v6 != conv.v6 {
            c = self.conv();
        }
        c
    }

    /// (source, destination) of a packet between this host and a peer.
    fn endpoints(&mut self, v6: bool, direction: Direction) -> ([u8; 16], [u8; 16]) {
        let local = self.local(v6);
        let remote = self.remote(v6);
        match direction {
            Direction::Egress => (local, remote),
            Direction::Inbound => (remote, local),
        }
    }

    /// ICMPv6 neighbour discovery / MLD, sometimes behind a hop-by-hop
    /// header, with the hop limits they must have (1, 255) and others, to
    /// link-scope addresses and to global ones.
    pub fn neighbour_discovery(&mut self, direction: Direction) -> Vec<u8> {
        let (src, mut dst) = self.endpoints(true, direction);
        let ty = *self.rng.pick(&[130u8, 131, 132, 133, 134, 135, 136, 137, 143]);
        match self.rng.below(3) {
            // Link-local unicast.
            0 => dst[..2].copy_from_slice(&[0xfe, 0x80]),
            // Link-scope multicast (solicited-node).
            1 => dst[..2].copy_from_slice(&[0xff, 0x02]),
            // Global: off the link unless the on-link map says otherwise.
            _ => {}
        }
        let mut ip = Ip::new(true, src, dst, ICMPV6);
        ip.hop_limit = *self.rng.pick(&[1u8, 255, 64]);
        if self.rng.percent(30) {
            ip.v6_ext.push(Ext::Generic { ty: 0, len8: 0 });
        }
        let l4 = icmp(ty, 0, [0; 4], &self.rng.bytes_between(0, 24));
        self.finish(&ip, &l4)
    }

    /// ICMP messages that are neither echo nor errors, in both families,
    /// and protocols carried in the "wrong" family.
    pub fn odd(&mut self, direction: Direction) -> Vec<u8> {
        let v6 = self.rng.percent(50);
        let (src, dst) = self.endpoints(v6, direction);
        let (proto, l4) = match self.rng.below(5) {
            0 => {
                let p = if v6 { ICMPV6 } else { ICMP };
                let ty = if v6 {
                    *self.rng.pick(&[0u8, 5, 100, 138, 139, 144, 200])
                } else {
                    *self.rng.pick(&[5u8, 9, 10, 13, 14, 42])
                };
                (p, icmp(ty, self.rng.u8(), [0; 4], &[0; 8]))
            }
            1 => (*self.rng.pick(&[47u8, 50, 59, 0, 255, 2]), self.rng.bytes_between(0, 40)),
            // ICMP in IPv6 and ICMPv6 in IPv4 (which the stacks never send).
            2 => {
                let p = if v6 { ICMP } else { ICMPV6 };
                let ty = *self.rng.pick(&[0u8, 3, 8, 128, 129, 133, 135, 136, 143]);
                (p, icmp(ty, 0, echo_rest(self.rng.u16(), 0), &[0; 8]))
            }
            3 => (UDP, udp(self.port(), self.port(), 0)),
            _ => (TCP, tcp(self.port(), self.port(), self.tcp_flags(), 0)),
        };
        let mut ip = Ip::new(v6, src, dst, proto);
        self.decorate(&mut ip);
        self.finish(&ip, &l4)
    }

    pub fn non_ip(&mut self) -> Vec<u8> {
        let (tags, pad) = self.l2();
        let ethertype = *self.rng.pick(&[ETH_P_ARP, 0x88cc, 0x8847, 0x0842, 0x05dc, 0x9000]);
        let mut f = ethernet(&tags, ethertype);
        f.extend({
            let n = self.rng.usize(0, 46) + pad;
            self.rng.bytes(n)
        });
        f
    }
}
