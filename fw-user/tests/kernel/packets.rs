//! Frame builders: Ethernet (with 802.1Q / 802.1ad tags), IPv4 (with
//! options and fragment fields), IPv6 (with extension-header chains), and
//! TCP/UDP/SCTP/ICMP/ICMPv6 bodies. Checksums are left zero: the programs
//! under test never look at them. The builders only produce bytes; how the
//! bytes are judged is the reference model's business (`model.rs`).

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const VLAN_Q: u16 = 0x8100;
pub const VLAN_AD: u16 = 0x88A8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// One IPv6 extension header; `next` is filled in when the chain is built.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options, routing, destination options: (type, length in
    /// 8-octet units not counting the first).
    Generic {
        ty: u8,
        len8: u8,
    },
    /// Authentication header: payload length field (4-octet units minus 2).
    Auth {
        len4: u8,
    },
    Fragment {
        offset: u16,
        more: bool,
        id: u32,
    },
    /// A type the parser does not walk (135, 139, 140, 253, 254...), 8 bytes.
    Unknown {
        ty: u8,
    },
}

impl Ext {
    pub fn ty(&self) -> u8 {
        match self {
            Ext::Generic { ty, .. } => *ty,
            Ext::Auth { .. } => 51,
            Ext::Fragment { .. } => 44,
            Ext::Unknown { ty } => *ty,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::Generic { len8, .. } => {
                let mut b = vec![0u8; (*len8 as usize + 1) * 8];
                b[0] = next;
                b[1] = *len8;
                // PadN filling the options area (type 1, length).
                b[2] = 1;
                b[3] = (b.len() - 4) as u8;
                b
            }
            Ext::Auth { len4 } => {
                let mut b = vec![0u8; (*len4 as usize + 2) * 4];
                b[0] = next;
                b[1] = *len4;
                b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
                b
            }
            Ext::Fragment { offset, more, id } => {
                let mut b = vec![0u8; 8];
                b[0] = next;
                let field = (offset << 3) | u16::from(*more);
                b[2..4].copy_from_slice(&field.to_be_bytes());
                b[4..8].copy_from_slice(&id.to_be_bytes());
                b
            }
            Ext::Unknown { .. } => {
                let mut b = vec![0u8; 8];
                b[0] = next;
                b
            }
        }
    }
}

/// The IP layer of a frame.
#[derive(Clone, Debug)]
pub struct Ip {
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Transport protocol (IPv4 protocol field; IPv6 last next-header).
    pub proto: u8,
    /// IPv4 options, a multiple of 4 bytes, at most 40.
    pub v4_options: Vec<u8>,
    pub v4_id: u16,
    /// IPv4 flags and fragment offset (MF = 0x2000, offset in 8-byte units).
    pub v4_frag: u16,
    pub v6_ext: Vec<Ext>,
    /// IPv4 TTL / IPv6 hop limit.
    pub hop_limit: u8,
}

impl Ip {
    pub fn new(v6: bool, src: [u8; 16], dst: [u8; 16], proto: u8) -> Ip {
        Ip { v6, src, dst, proto, v4_options: Vec::new(), v4_id: 0, v4_frag: 0, v6_ext: Vec::new(), hop_limit: 64 }
    }

    /// The IP header (and extension headers) followed by `l4`.
    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(60 + l4.len());
        if self.v6 {
            let mut ext = Vec::new();
            for (i, e) in self.v6_ext.iter().enumerate() {
                let next = self.v6_ext.get(i + 1).map_or(self.proto, Ext::ty);
                ext.extend(e.bytes(next));
            }
            let first = self.v6_ext.first().map_or(self.proto, Ext::ty);
            let payload = (ext.len() + l4.len()) as u16;
            out.extend([0x60, 0, 0, 0]);
            out.extend(payload.to_be_bytes());
            out.push(first);
            out.push(self.hop_limit);
            out.extend(self.src);
            out.extend(self.dst);
            out.extend(ext);
        } else {
            assert!(self.v4_options.len().is_multiple_of(4) && self.v4_options.len() <= 40);
            let ihl = 20 + self.v4_options.len();
            let total = (ihl + l4.len()) as u16;
            out.push(0x40 | (ihl / 4) as u8);
            out.push(0);
            out.extend(total.to_be_bytes());
            out.extend(self.v4_id.to_be_bytes());
            out.extend(self.v4_frag.to_be_bytes());
            out.push(self.hop_limit);
            out.push(self.proto);
            out.extend([0, 0]);
            out.extend(&self.src[..4]);
            out.extend(&self.dst[..4]);
            out.extend(&self.v4_options);
        }
        out.extend(l4);
        out
    }
}

/// Ethernet header with the given VLAN tag protocol ids (outermost first).
pub fn ethernet(tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut out = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, tpid) in tags.iter().enumerate() {
        out.extend(tpid.to_be_bytes());
        out.extend((100 + i as u16).to_be_bytes());
    }
    out.extend(ethertype.to_be_bytes());
    out
}

/// A whole frame: Ethernet, `ip` carrying `l4`, then `pad` trailing bytes
/// (Ethernet padding, outside the IP datagram).
pub fn frame(tags: &[u16], ip: &Ip, l4: &[u8], pad: usize) -> Vec<u8> {
    let mut out = ethernet(tags, if ip.v6 { ETH_P_IPV6 } else { ETH_P_IP });
    out.extend(ip.packet(l4));
    out.extend(std::iter::repeat_n(0xeeu8, pad));
    out
}

/// The sequence number of every generated TCP segment.
pub const TCP_SEQ: u32 = 0x0102_0304;

pub fn tcp(sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    tcp_acking(sport, dport, flags, 0, payload)
}

/// A TCP segment (sequence number [`TCP_SEQ`]) acknowledging `ack`.
pub fn tcp_acking(sport: u16, dport: u16, flags: u8, ack: u32, payload: usize) -> Vec<u8> {
    let mut b = vec![0u8; 20 + payload];
    b[0..2].copy_from_slice(&sport.to_be_bytes());
    b[2..4].copy_from_slice(&dport.to_be_bytes());
    b[4..8].copy_from_slice(&TCP_SEQ.to_be_bytes());
    b[8..12].copy_from_slice(&ack.to_be_bytes());
    b[12] = 5 << 4;
    b[13] = flags;
    b[14..16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, x) in b[20..].iter_mut().enumerate() {
        *x = i as u8;
    }
    b
}

pub fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut b = vec![0u8; 8 + payload];
    b[0..2].copy_from_slice(&sport.to_be_bytes());
    b[2..4].copy_from_slice(&dport.to_be_bytes());
    b[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    for (i, x) in b[8..].iter_mut().enumerate() {
        *x = i as u8 ^ 0x5a;
    }
    b
}

pub fn sctp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut b = vec![0u8; 12 + payload];
    b[0..2].copy_from_slice(&sport.to_be_bytes());
    b[2..4].copy_from_slice(&dport.to_be_bytes());
    b[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    b
}

/// ICMP or ICMPv6: type, code, checksum, 4 type-specific bytes, body.
pub fn icmp(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut b = vec![ty, code, 0, 0];
    b.extend(rest);
    b.extend(body);
    b
}

/// Echo request/reply identifier and sequence as the 4 type-specific bytes.
pub fn echo_rest(id: u16, seq: u16) -> [u8; 4] {
    let mut r = [0u8; 4];
    r[..2].copy_from_slice(&id.to_be_bytes());
    r[2..].copy_from_slice(&seq.to_be_bytes());
    r
}

/// A UDP datagram from this host (`gen::LOCAL4`, port 40000) to `dst`.
pub fn local_udp4(dst: [u8; 4], dport: u16) -> Vec<u8> {
    frame(&[], &Ip::new(false, v4(crate::gen::LOCAL4), v4(dst), UDP), &udp(40000, dport, 4), 0)
}

/// A TCP SYN from this host (port 40001) to `dst`.
pub fn local_syn4(dst: [u8; 4], dport: u16) -> Vec<u8> {
    frame(&[], &Ip::new(false, v4(crate::gen::LOCAL4), v4(dst), TCP), &tcp(40001, dport, TCP_SYN, 0), 0)
}

/// A UDP datagram from this host (`gen::LOCAL6`, port 40000) to `dst`.
pub fn local_udp6(dst: [u8; 16], dport: u16) -> Vec<u8> {
    frame(&[], &Ip::new(true, crate::gen::LOCAL6.to_be_bytes(), dst, UDP), &udp(40000, dport, 4), 0)
}

/// A TCP SYN from this host (port 40001) to `dst`.
pub fn local_syn6(dst: [u8; 16], dport: u16) -> Vec<u8> {
    frame(&[], &Ip::new(true, crate::gen::LOCAL6.to_be_bytes(), dst, TCP), &tcp(40001, dport, TCP_SYN, 0), 0)
}

pub fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
