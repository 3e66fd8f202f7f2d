//! Issue 12, findings 3 and 4 with real sockets: what a server answers.
//! Ping stopped under the shipped runtime phases (v4 0/3, v6 0/3), and
//! under `inbound_default: drop` a fragmented IPv6 reply never learned the
//! path MTU (3,000-byte UDP echoes through a 1,280-byte link: v4 10/10, v6
//! 0/10).

use std::{
    ffi::OsStr,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use crate::harness::{
    self,
    fw::Fw,
    netns::{Netns, Routed, VethPair},
    stream::sockaddr,
    traffic::{in_netns, Echo},
    TempDir,
};

/// One ICMP (or ICMPv6) echo from `ns` to `to` through a ping socket
/// (SOCK_DGRAM: the kernel fills the identifier and the checksum); whether
/// the reply came within `timeout`.
fn ping(ns: &Netns, to: IpAddr, seq: u16, timeout: Duration) -> bool {
    in_netns(ns, || -> io::Result<bool> {
        let (family, proto, request) = match to {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
        };
        // SAFETY: plain socket(2); owned right below.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid timeval for its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let mut message = vec![request, 0, 0, 0, 0, 0];
        message.extend(seq.to_be_bytes());
        message.extend(b"fw ping");
        let (addr, len) = sockaddr(SocketAddr::new(to, 0));
        // SAFETY: valid buffer and sockaddr for their lengths.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&addr as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 128];
        loop {
            // SAFETY: a valid buffer for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                    Ok(false)
                } else {
                    Err(e)
                };
            }
            // An echo reply (0 / 129) with our sequence number.
            if n >= 8 && (reply[0] == 0 || reply[0] == 129) && reply[6..8] == seq.to_be_bytes() {
                return Ok(true);
            }
        }
    })
    .unwrap_or_else(|e| panic!("ping {to}: {e}"))
}

/// Finding 3: the shipped OpenVidu CE policy's runtime phase answers ping,
/// IPv4 and IPv6 (3 of 3 each).
#[test]
fn finding3_ping_is_answered_under_the_shipped_runtime_phase() {
    harness::setup();
    let pair = VethPair::new(88);
    // Ping sockets for root (the namespace's default range admits nobody).
    pair.far.sysctl("net.ipv4.ping_group_range", "0 0");
    let dir = TempDir::new();
    let env = dir.write("openvidu.env", "OPENVIDU_WEBHOOK_ENDPOINT=\nCOTURN_IP=\nDOMAIN_OR_PUBLIC_IP=\n");
    for to in [IpAddr::from(pair.near4), IpAddr::from(pair.near6)] {
        assert!(ping(&pair.far, to, 0, Duration::from_secs(3)), "{to} must answer without fw");
    }
    let fw = Fw::start_with(
        &pair.near,
        &pair.near_if,
        "openvidu-ce",
        "runtime",
        &[OsStr::new("--env-file"), env.as_os_str()],
    );
    let mut answered = Vec::new();
    for to in [IpAddr::from(pair.near4), IpAddr::from(pair.near6)] {
        let replies = (1..=3).filter(|&seq| ping(&pair.far, to, seq, Duration::from_secs(2))).count();
        answered.push((to, replies));
    }
    println!("pings answered under openvidu-ce runtime: {answered:?}");
    assert!(answered.iter().all(|(_, n)| *n == 3), "every ping must be answered: {answered:?}\n{:#?}", fw.drops());
}

/// Finding 4: 3,000-byte UDP echoes from a client behind a 1,280-byte link
/// to a server whose inbound default drops. The server's reply leaves in
/// 1,500-byte fragments; the router answers each with "packet too big"
/// (IPv6) quoting the fragment, fragment header and all; the server must
/// let it in to learn the path MTU, after which its replies arrive. (The
/// reply that met the small link first is lost: UDP does not resend.)
#[test]
fn finding4_ipv6_path_mtu_of_fragmented_replies_is_learned() {
    const ECHOES: usize = 10;
    harness::setup();
    let net = Routed::new(40, 1280);
    // The client's own end at 1,280 too: its 3,000-byte requests leave in
    // fragments that fit the small link (a veth drops a frame larger than
    // its receiving end's MTU); only the server's replies meet the router.
    net.client.ip(&["link", "set", "dev", &net.client_if, "mtu", "1280"]);
    let dir = TempDir::new();
    let policy = dir.write(
        "pmtu.yaml",
        &format!(
            "name: pmtu\nphases:\n  runtime:\n    inbound_default: drop\n    inbound:\n      \
             - {{ name: echo, from: [\"{}\", \"{}\"], proto: udp, ports: [7] }}\n",
            net.client4, net.client6
        ),
    );
    let servers: Vec<Echo> = [IpAddr::from(net.server4), IpAddr::from(net.server6)]
        .into_iter()
        .map(|ip| Echo::udp(&net.server, SocketAddr::new(ip, 7)))
        .collect();
    let echoes = |server: IpAddr| {
        in_netns(&net.client, || {
            let socket =
                UdpSocket::bind((if server.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) }, 0))
                    .expect("a udp socket");
            socket.connect(SocketAddr::new(server, 7)).expect("connect");
            socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let payload = vec![0x5au8; 3000];
            let mut back = vec![0u8; 4096];
            let mut echoed = 0;
            for _ in 0..ECHOES {
                socket.send(&payload).expect("sending 3,000 bytes");
                if matches!(socket.recv(&mut back), Ok(3000)) {
                    echoed += 1;
                }
            }
            echoed
        })
    };
    let servers_at = [IpAddr::from(net.server4), IpAddr::from(net.server6)];
    // No round without fw first: it would teach the server the path MTU,
    // and the round under fw would pass for nothing.
    let _fw = Fw::start(&net.server, &net.server_if, &policy, "runtime");
    let results: Vec<(IpAddr, usize)> = servers_at.iter().map(|&s| (s, echoes(s))).collect();
    println!("3,000-byte echoes through a 1,280-byte link: {results:?} of {ECHOES}");
    for (server, echoed) in &results {
        assert!(*echoed >= ECHOES - 1, "{server}: {echoed} of {ECHOES} echoes (at most the first may be lost)");
    }
    drop(servers);
}
