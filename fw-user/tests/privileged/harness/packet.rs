//! Packets below the socket API: a raw-socket TCP segment writer (to craft
//! what no connected socket would send, e.g. a "reply" from a served port
//! to a peer that never connected), and a sniffer that sees every frame a
//! namespace's interface receives, whether a socket wants it or not.

use std::{
    io, mem,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
};

use super::{netns::Netns, stream::sockaddr, traffic::in_netns};

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PACKET_OUTGOING: u8 = 4;

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

/// The 16-bit one's complement sum of `data`, folded.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A 20-byte TCP header (no options, no payload) from `src` to `dst`, its
/// checksum over the pseudo-header of either family.
pub fn tcp_segment(src: SocketAddr, dst: SocketAddr, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend(src.port().to_be_bytes());
    tcp.extend(dst.port().to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.push(5 << 4); // data offset: 5 words
    tcp.push(flags);
    tcp.extend(65535u16.to_be_bytes()); // window
    tcp.extend([0, 0]); // checksum, below
    tcp.extend([0, 0]); // urgent pointer
    let sum = l4_checksum(src.ip(), dst.ip(), libc::IPPROTO_TCP as u8, &tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

/// The TCP/UDP checksum of `l4` (its checksum field zero) over the
/// pseudo-header of either family.
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = ip_bytes(src);
    pseudo.extend(ip_bytes(dst));
    match src {
        IpAddr::V4(_) => {
            pseudo.extend([0, proto]);
            pseudo.extend((l4.len() as u16).to_be_bytes());
        }
        IpAddr::V6(_) => {
            pseudo.extend((l4.len() as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, proto]);
        }
    }
    fold(sum16(sum16(0, &pseudo), l4))
}

/// A UDP datagram (header and `payload`) from `src` to `dst`, checksummed.
pub fn udp_datagram(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend(src.port().to_be_bytes());
    udp.extend(dst.port().to_be_bytes());
    udp.extend(((8 + payload.len()) as u16).to_be_bytes());
    udp.extend([0, 0]); // checksum, below
    udp.extend(payload);
    let sum = match l4_checksum(src.ip(), dst.ip(), libc::IPPROTO_UDP as u8, &udp) {
        0 => 0xffff, // 0 means "no checksum" in UDP
        sum => sum,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    udp
}

/// Sends crafted UDP datagrams from `src` (an address of `ns`) to `dst`
/// through one raw socket in `ns`: for each `(source port, destination
/// port)` of `flows`, `per_flow` copies, back to back (a flood whose every
/// flow looks like a conversation that goes on). The kernel adds the IP
/// header and routes each datagram out like any packet, so the count is
/// bounded by `flows`. Returns how many datagrams the kernel took.
pub fn send_udp_flood(ns: &Netns, src: IpAddr, dst: IpAddr, flows: &[(u16, u16)], per_flow: usize) -> usize {
    assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one family: {src} -> {dst}");
    in_netns(ns, || -> io::Result<usize> {
        let family = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = check(unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_UDP) }, "raw socket")?;
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Bound to `src`: the IP header carries the address the checksums
        // were computed with.
        let (local, local_len) = raw_sockaddr(src);
        // SAFETY: a valid sockaddr of `local_len` bytes.
        check(
            unsafe { libc::bind(fd.as_raw_fd(), &local as *const _ as *const libc::sockaddr, local_len) },
            "binding the raw socket",
        )?;
        let (to, to_len) = raw_sockaddr(dst);
        let mut sent = 0;
        for &(sport, dport) in flows {
            let datagram = udp_datagram(SocketAddr::new(src, sport), SocketAddr::new(dst, dport), b"flood");
            for _ in 0..per_flow {
                // SAFETY: valid buffer and sockaddr for their lengths.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        datagram.as_ptr().cast(),
                        datagram.len(),
                        0,
                        &to as *const _ as *const libc::sockaddr,
                        to_len,
                    )
                };
                match n {
                    0.. => sent += 1,
                    // A full queue: the datagram is lost, as on a wire.
                    _ if io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) => {}
                    _ => return Err(io::Error::last_os_error()),
                }
            }
        }
        Ok(sent)
    })
    .unwrap_or_else(|e| panic!("flooding {dst} from {src}: {e}"))
}

/// A `sockaddr_storage` for `ip` with port 0 (raw sockets take none).
fn raw_sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    sockaddr(SocketAddr::new(ip, 0))
}

/// Sends one crafted TCP segment from `src` (an address of `ns`) to `dst`
/// through a raw socket in `ns`: the kernel adds the IP header and routes
/// it out through the interface (and its TC egress hook) like any packet.
/// Returns `false` when the kernel reported the packet dropped on its way
/// out (a TC egress drop reaches a raw socket as ENOBUFS; a UDP socket
/// swallows it).
pub fn send_tcp(ns: &Netns, src: SocketAddr, dst: SocketAddr, flags: u8) -> bool {
    assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one family: {src} -> {dst}");
    let segment = tcp_segment(src, dst, flags, 0x1234_5678, 0x0bad_cafe);
    in_netns(ns, || -> io::Result<bool> {
        let family = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = check(unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_TCP) }, "raw socket")?;
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Bound to `src`: the kernel puts exactly the address the checksum
        // was computed with into the IP header.
        let (local, local_len) = raw_sockaddr(src.ip());
        // SAFETY: a valid sockaddr of `local_len` bytes.
        check(
            unsafe { libc::bind(fd.as_raw_fd(), &local as *const _ as *const libc::sockaddr, local_len) },
            "binding the raw socket",
        )?;
        let (to, to_len) = raw_sockaddr(dst.ip());
        // SAFETY: valid buffer and sockaddr for their lengths.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                segment.as_ptr().cast(),
                segment.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                to_len,
            )
        };
        if sent >= 0 {
            assert_eq!(sent as usize, segment.len());
            return Ok(true);
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(false),
            e => Err(io::Error::new(e.kind(), format!("sendto on the raw socket: {e}"))),
        }
    })
    .unwrap_or_else(|e| panic!("sending a crafted TCP segment {src} -> {dst}: {e}"))
}

/// One received TCP or UDP packet, as the sniffer saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub tcp_flags: u8,
}

/// Parses an Ethernet frame carrying IPv4 or IPv6 (no extension headers)
/// with TCP or UDP; anything else is `None`.
fn parse(frame: &[u8]) -> Option<Seen> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let l3 = frame.get(14..)?;
    let (proto, src, dst, l4) = match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(l3.first()? & 0x0f) * 4;
            let src: [u8; 4] = l3.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = l3.get(16..20)?.try_into().ok()?;
            (*l3.get(9)?, IpAddr::from(src), IpAddr::from(dst), l3.get(ihl..)?)
        }
        ETH_P_IPV6 => {
            let src: [u8; 16] = l3.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = l3.get(24..40)?.try_into().ok()?;
            (*l3.get(6)?, IpAddr::from(src), IpAddr::from(dst), l3.get(40..)?)
        }
        _ => return None,
    };
    if proto != libc::IPPROTO_TCP as u8 && proto != libc::IPPROTO_UDP as u8 {
        return None;
    }
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    let tcp_flags = if proto == libc::IPPROTO_TCP as u8 { *l4.get(13)? } else { 0 };
    Some(Seen { proto, src: SocketAddr::new(src, port(0)?), dst: SocketAddr::new(dst, port(2)?), tcp_flags })
}

/// Every TCP/UDP packet that interface `iface` of a namespace receives
/// (not those it sends), recorded from creation until drop.
pub struct Sniffer {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    pub fn new(ns: &Netns, iface: &str) -> Self {
        let fd = in_netns(ns, || -> io::Result<OwnedFd> {
            let protocol = i32::from(ETH_P_ALL.to_be());
            // SAFETY: plain socket(2); the descriptor is owned right away.
            let fd = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol) }, "packet socket")?;
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let c_iface = std::ffi::CString::new(iface).expect("interface name");
            // SAFETY: a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: a valid sockaddr_ll for its size.
            check(
                unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        &sll as *const _ as *const libc::sockaddr,
                        mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                },
                "binding the packet socket",
            )?;
            Ok(fd)
        })
        .unwrap_or_else(|e| panic!("sniffing {iface} in {}: {e}", ns.name()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || capture(&fd, &seen, &stop))
        };
        Self { seen, stop, thread: Some(thread) }
    }

    /// Received packets that satisfy `f`.
    pub fn count(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.seen.lock().expect("sniffer lock").iter().filter(|s| f(s)).count()
    }
}

fn capture(fd: &OwnedFd, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 20) } <= 0 {
            continue;
        }
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid buffer and address storage for their lengths.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut from_len,
            )
        };
        if n <= 0 || from.sll_pkttype == PACKET_OUTGOING {
            continue;
        }
        if let Some(packet) = parse(&buf[..n as usize]) {
            seen.lock().expect("sniffer lock").push(packet);
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum of a known segment: summing the segment with its
    /// checksum in place gives 0 (the receiver's check).
    #[test]
    fn tcp_checksums_verify() {
        for (src, dst) in [("198.18.0.1:443", "198.18.0.2:5555"), ("[2001:db8::1]:443", "[2001:db8::2]:5555")] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let seg = tcp_segment(src, dst, TCP_SYN | TCP_ACK, 1, 2);
            let mut pseudo = ip_bytes(src.ip());
            pseudo.extend(ip_bytes(dst.ip()));
            pseudo.extend([0, 0, 0, 6]);
            pseudo.extend([0, 20]);
            // For IPv4 the order differs, but the one's complement sum
            // does not depend on where the words sit.
            assert_eq!(fold(sum16(sum16(0, &pseudo), &seg)), 0, "{src} -> {dst}");
        }
    }

    #[test]
    fn udp_checksums_verify() {
        for (src, dst) in [("198.18.0.2:5555", "198.18.0.1:40000"), ("[2001:db8::2]:5555", "[2001:db8::1]:40000")] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let datagram = udp_datagram(src, dst, b"odd");
            let mut pseudo = ip_bytes(src.ip());
            pseudo.extend(ip_bytes(dst.ip()));
            pseudo.extend([0, 17, 0, datagram.len() as u8]);
            assert_eq!(fold(sum16(sum16(0, &pseudo), &datagram)), 0, "{src} -> {dst}");
        }
    }
}
