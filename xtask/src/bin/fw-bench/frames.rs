//! The few frames the per-packet runs need: Ethernet + IPv4/IPv6 + UDP, TCP
//! SYN or ICMP echo reply. Checksums stay zero: the programs never read them.

use std::net::IpAddr;

pub const UDP: u8 = 17;
pub const TCP: u8 = 6;
/// ICMP (v4) or ICMPv6 echo reply: allowed by `bench-icmp`, opens no flow.
pub const ECHO_REPLY: u8 = 255;

pub fn frame(src: IpAddr, dst: IpAddr, kind: u8, sport: u16, dport: u16) -> Vec<u8> {
    let v6 = dst.is_ipv6();
    let (proto, l4) = match kind {
        UDP => {
            let mut b = vec![0u8; 8 + 18];
            b[0..2].copy_from_slice(&sport.to_be_bytes());
            b[2..4].copy_from_slice(&dport.to_be_bytes());
            let len = b.len() as u16;
            b[4..6].copy_from_slice(&len.to_be_bytes());
            (UDP, b)
        }
        TCP => {
            let mut b = vec![0u8; 20];
            b[0..2].copy_from_slice(&sport.to_be_bytes());
            b[2..4].copy_from_slice(&dport.to_be_bytes());
            b[12] = 5 << 4;
            b[13] = 0x02; // SYN
            (TCP, b)
        }
        _ => {
            let mut b = vec![0u8; 8 + 16];
            b[0] = if v6 { 129 } else { 0 };
            b[4..6].copy_from_slice(&sport.to_be_bytes());
            (if v6 { 58 } else { 1 }, b)
        }
    };
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            f.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86DDu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            ip[6] = proto;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            f.extend(ip);
        }
        _ => panic!("source and destination of different families"),
    }
    f.extend(l4);
    f
}
