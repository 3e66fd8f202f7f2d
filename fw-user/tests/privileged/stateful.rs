//! Issue 5, the stateful datapath, proven with real sockets. The enforcer
//! is attached on the *server's* side (the `near` namespace, the media
//! server) in a runtime phase whose egress allows nothing these tests use:
//! whatever the server sends must pass as a reply to a flow that a client
//! opened, or not at all. IPv4 and IPv6 in every test.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::harness::{
    self,
    fw::{Drops, Fw},
    netns::{Netns, Routed, VethPair},
    packet::{send_tcp, Sniffer, TCP_ACK, TCP_SYN},
    stream::{tcp_connect_from, tcp_echo_bulk, Download, End, TcpSource},
    traffic::{in_netns, tcp_echo, udp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    TempDir,
};

/// `runtime`: serves https and the UDP media range, may open nothing but a
/// connection to an address no test uses. `closed`: the same, plus
/// `inbound_default: drop` and one outbound service on the client.
fn policy(pair_far4: IpAddr, pair_far6: IpAddr) -> String {
    format!(
        r#"name: stateful
phases:
  runtime:
    inbound:
      - {{ name: https, proto: tcp, ports: [443] }}
      - {{ name: media, proto: udp, ports: ["40000-65535"] }}
    egress:
      - {{ name: elsewhere, to: [198.19.255.1, "2001:db8:ffff::1"], proto: tcp, ports: [9] }}
  closed:
    extends: runtime
    inbound_default: drop
    egress:
      - {{ name: upstream, to: [{pair_far4}, "{pair_far6}"], proto: tcp, ports: [{UPSTREAM}] }}
"#
    )
}

/// The client's service that phase `closed` lets the server use.
const UPSTREAM: u16 = 8443;
const MEDIA: u16 = 40000;

/// Server (`near`, enforced) and client (`far`) namespaces and the policy.
struct Site {
    policy: PathBuf,
    _dir: TempDir,
    pair: VethPair,
}

impl Site {
    fn new(x: u8) -> Self {
        harness::setup();
        let pair = VethPair::new(x);
        let dir = TempDir::new();
        let policy = dir.write("stateful.yaml", &policy(pair.far4.into(), pair.far6.into()));
        Self { policy, _dir: dir, pair }
    }

    fn server(&self) -> &Netns {
        &self.pair.near
    }

    fn client(&self) -> &Netns {
        &self.pair.far
    }

    /// The server's and the client's address of family `v6`.
    fn addrs(&self, v6: bool) -> (IpAddr, IpAddr) {
        if v6 {
            (self.pair.near6.into(), self.pair.far6.into())
        } else {
            (self.pair.near4.into(), self.pair.far4.into())
        }
    }

    fn start_fw(&self, phase: &str) -> Fw<'_> {
        Fw::start(self.server(), &self.pair.near_if, &self.policy, phase)
    }
}

const FAMILIES: [(bool, &str); 2] = [(false, "IPv4"), (true, "IPv6")];

fn delta(after: &Drops, before: &Drops, direction: &str, reason: &str) -> u64 {
    after.counted(direction, reason).0 - before.counted(direction, reason).0
}

/// An inbound TCP connection to 443 is served, and 256 KiB flow each way
/// (the echo of the same bytes), although egress allows nothing.
#[test]
fn stateful_inbound_tcp_443_is_served_both_ways() {
    let site = Site::new(0);
    let servers: Vec<Echo> =
        FAMILIES.iter().map(|&(v6, _)| Echo::tcp(site.server(), SocketAddr::new(site.addrs(v6).0, 443))).collect();
    let fw = site.start_fw("runtime");
    let before = fw.drops();
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    for (v6, family) in FAMILIES {
        let to = SocketAddr::new(site.addrs(v6).0, 443);
        let back = in_netns(site.client(), || {
            let mut conn = std::net::TcpStream::connect_timeout(&to, PASS_TIMEOUT)?;
            tcp_echo_bulk(&mut conn, &payload, PASS_TIMEOUT)
        })
        .unwrap_or_else(|e| panic!("{family}: 256 KiB echo over {to}: {e}"));
        assert!(back == payload, "{family}: the echo differs from what was sent");
    }
    assert_eq!(servers.iter().map(Echo::received).sum::<usize>(), 2);
    let after = fw.drops();
    assert!(after.rule("https").packets >= 2, "{after:#?}");
    assert_eq!(after.dropped("egress") - before.dropped("egress"), 0, "{after:#?}");
    assert!(delta(&after, &before, "egress", "pass_flow") > 100, "{after:#?}");
}

/// Inbound UDP to both ends of the media range gets its echo back.
#[test]
fn stateful_inbound_udp_to_a_media_port_gets_its_echo() {
    let site = Site::new(0);
    let mut servers = Vec::new();
    for (v6, _) in FAMILIES {
        for port in [MEDIA, 65535] {
            let addr = SocketAddr::new(site.addrs(v6).0, port);
            servers.push((addr, Echo::udp(site.server(), addr)));
        }
    }
    let fw = site.start_fw("runtime");
    for (addr, echo) in &servers {
        let got = in_netns(site.client(), || udp_echo(*addr, PASS_TIMEOUT));
        assert_eq!(got, Outcome::Echoed, "udp to {addr}");
        assert_eq!(echo.received(), 1, "{addr}");
    }
    let drops = fw.drops();
    assert_eq!(drops.dropped("egress"), 0, "{drops:#?}");
    assert!(drops.rule("media").packets >= 4, "{drops:#?}");
}

/// The server's own attempts to open connections fail, to ports that the
/// client serves and that answer without fw.
#[test]
fn stateful_outbound_from_the_server_fails() {
    let site = Site::new(0);
    let mut targets = Vec::new();
    for (v6, _) in FAMILIES {
        let client = site.addrs(v6).1;
        for (tcp, port) in [(true, 443), (true, 8080), (false, 53), (false, MEDIA)] {
            let addr = SocketAddr::new(client, port);
            let echo = if tcp { Echo::tcp(site.client(), addr) } else { Echo::udp(site.client(), addr) };
            targets.push((tcp, addr, echo));
        }
    }
    let probe = |timeout| {
        in_netns(site.server(), || {
            targets
                .iter()
                .map(|(tcp, addr, _)| if *tcp { tcp_echo(*addr, timeout) } else { udp_echo(*addr, timeout) })
                .collect::<Vec<_>>()
        })
    };
    assert!(probe(PASS_TIMEOUT).iter().all(|o| *o == Outcome::Echoed), "without fw the client answers every probe");
    let fw = site.start_fw("runtime");
    let before = fw.drops();
    let received: Vec<usize> = targets.iter().map(|(_, _, e)| e.received()).collect();
    let seen = probe(DROP_TIMEOUT);
    for ((_, addr, echo), (outcome, before)) in targets.iter().zip(seen.iter().zip(received)) {
        assert_eq!(*outcome, Outcome::TimedOut, "outbound to {addr} must fail");
        assert_eq!(echo.received(), before, "{addr} must see nothing");
    }
    let after = fw.drops_when(|d| d.dropped("egress") - before.dropped("egress") >= 8);
    assert!(after.dropped("egress") - before.dropped("egress") >= 8, "one drop at least per probe: {after:#?}");
}

/// A crafted SYN-ACK "from" 443 to a client port that never connected, and
/// a UDP "reply" from a media port to a peer that never sent, are dropped
/// and counted as `drop_spoofed_reply`; the client's interface receives
/// neither (it receives them without fw: the control).
#[test]
fn stateful_crafted_reply_to_a_peer_that_never_connected_is_dropped_as_spoofed() {
    let site = Site::new(0);
    let sniffer = Sniffer::new(site.client(), &site.pair.far_if);
    let send_both = |v6: bool, port: u16| {
        let (server, client) = site.addrs(v6);
        send_tcp(site.server(), SocketAddr::new(server, 443), SocketAddr::new(client, port), TCP_SYN | TCP_ACK);
        in_netns(site.server(), || {
            let socket = UdpSocket::bind(SocketAddr::new(server, MEDIA))?;
            socket.send_to(b"reply?", SocketAddr::new(client, port))
        })
        .unwrap_or_else(|e| panic!("udp from {server}:{MEDIA}: {e}"));
    };
    let arrived = |v6: bool, port: u16| {
        let (server, _) = site.addrs(v6);
        sniffer.count(|s| s.src.ip() == server && s.dst.port() == port)
    };

    // Control: without fw both arrive (the client answers the SYN-ACK with
    // a RST and the datagram with port unreachable; nothing listens).
    for (v6, family) in FAMILIES {
        send_both(v6, 5555);
        let start = Instant::now();
        while arrived(v6, 5555) < 2 && start.elapsed() < PASS_TIMEOUT {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(arrived(v6, 5555), 2, "{family}: without fw both packets arrive");
    }

    let fw = site.start_fw("runtime");
    for (v6, family) in FAMILIES {
        let before = fw.drops();
        send_both(v6, 5556);
        let after = fw.drops_when(|d| delta(d, &before, "egress", "drop_spoofed_reply") >= 2);
        assert_eq!(
            delta(&after, &before, "egress", "drop_spoofed_reply"),
            2,
            "{family}: one crafted SYN-ACK and one datagram: {after:#?}"
        );
        assert_eq!(after.dropped("egress") - before.dropped("egress"), 2, "{after:#?}");
        std::thread::sleep(DROP_TIMEOUT);
        assert_eq!(arrived(v6, 5556), 0, "{family}: the client must receive neither");
    }
}

/// Receives one datagram on `socket` within `timeout`. A signal to the
/// test process interrupts a receive with a timeout (signal(7): never
/// restarted), so an interrupted one waits again for what is left.
fn recv(socket: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket.set_read_timeout(Some(left)).expect("read timeout");
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return None,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// ICE-like: the server's first datagram to a client port is dropped; the
/// client's datagram to the server's media port admits the flow; the
/// server's retry to that client port then arrives, and one to a different
/// client port still does not.
#[test]
fn stateful_ice_exchange_opens_exactly_the_port_that_spoke() {
    let site = Site::new(0);
    const CLIENT_PORT: u16 = 50000;
    const OTHER_CLIENT_PORT: u16 = 50002;
    let sockets: Vec<(UdpSocket, UdpSocket, UdpSocket)> = FAMILIES
        .iter()
        .map(|&(v6, _)| {
            let (server, client) = site.addrs(v6);
            let s = in_netns(site.server(), || UdpSocket::bind((server, MEDIA + 1)));
            let c = in_netns(site.client(), || UdpSocket::bind((client, CLIENT_PORT)));
            let o = in_netns(site.client(), || UdpSocket::bind((client, OTHER_CLIENT_PORT)));
            (s.expect("server socket"), c.expect("client socket"), o.expect("other socket"))
        })
        .collect();
    // Control: without fw, the server's first datagram arrives.
    for ((v6, family), (server, client, _)) in FAMILIES.iter().zip(&sockets) {
        let to = SocketAddr::new(site.addrs(*v6).1, CLIENT_PORT);
        server.send_to(b"control", to).expect("send");
        assert!(recv(client, PASS_TIMEOUT).is_some(), "{family}: control without fw");
    }

    let fw = site.start_fw("runtime");
    for ((v6, family), (server, client, other)) in FAMILIES.iter().zip(&sockets) {
        let (server_ip, client_ip) = site.addrs(*v6);
        let client_addr = SocketAddr::new(client_ip, CLIENT_PORT);
        let other_addr = SocketAddr::new(client_ip, OTHER_CLIENT_PORT);
        let before = fw.drops();

        server.send_to(b"first check", client_addr).expect("send");
        assert_eq!(recv(client, DROP_TIMEOUT), None, "{family}: the server's first check must be dropped");

        client.send_to(b"client check", (server_ip, MEDIA + 1)).expect("send");
        let (got, from) =
            recv(server, PASS_TIMEOUT).unwrap_or_else(|| panic!("{family}: the client's check must reach the server"));
        assert_eq!((got.as_slice(), from), (&b"client check"[..], client_addr));

        server.send_to(b"retry", client_addr).expect("send");
        let (got, _) =
            recv(client, PASS_TIMEOUT).unwrap_or_else(|| panic!("{family}: the server's retry must arrive now"));
        assert_eq!(got, b"retry");

        server.send_to(b"elsewhere", other_addr).expect("send");
        assert_eq!(recv(other, DROP_TIMEOUT), None, "{family}: another client port stays closed");

        let after = fw.drops_when(|d| delta(d, &before, "egress", "drop_spoofed_reply") >= 2);
        assert_eq!(
            delta(&after, &before, "egress", "drop_spoofed_reply"),
            2,
            "{family}: the first check and the datagram to the other port: {after:#?}"
        );
        assert_eq!(after.dropped("egress") - before.dropped("egress"), 2, "{after:#?}");
    }
}

/// `inbound_default: drop`: a new inbound connection (TCP or UDP) to a port
/// no rule serves fails and never reaches its server, 443 is still served,
/// and the replies to an outbound connection that egress allows arrive.
#[test]
fn stateful_inbound_default_drop_filters_new_inbound_but_replies_arrive() {
    let site = Site::new(0);
    let mut unserved = Vec::new();
    let mut https = Vec::new();
    let mut upstream = Vec::new();
    for (v6, _) in FAMILIES {
        let (server, client) = site.addrs(v6);
        unserved.push((true, Echo::tcp(site.server(), SocketAddr::new(server, 8080))));
        unserved.push((false, Echo::udp(site.server(), SocketAddr::new(server, 9000))));
        https.push(Echo::tcp(site.server(), SocketAddr::new(server, 443)));
        upstream.push(Echo::tcp(site.client(), SocketAddr::new(client, UPSTREAM)));
    }
    let fw = site.start_fw("closed");
    let before = fw.drops();
    for (v6, family) in FAMILIES {
        let (server, client) = site.addrs(v6);
        let outcomes = in_netns(site.client(), || {
            [
                tcp_echo(SocketAddr::new(server, 8080), DROP_TIMEOUT),
                udp_echo(SocketAddr::new(server, 9000), DROP_TIMEOUT),
                tcp_echo(SocketAddr::new(server, 443), PASS_TIMEOUT),
            ]
        });
        assert_eq!(
            outcomes,
            [Outcome::TimedOut, Outcome::TimedOut, Outcome::Echoed],
            "{family}: unserved tcp 8080, unserved udp 9000, served 443"
        );
        let out = in_netns(site.server(), || tcp_echo(SocketAddr::new(client, UPSTREAM), PASS_TIMEOUT));
        assert_eq!(out, Outcome::Echoed, "{family}: replies of an allowed outbound connection");
    }
    for (tcp, echo) in &unserved {
        assert_eq!(echo.received(), 0, "unserved {} port", if *tcp { "tcp" } else { "udp" });
    }
    assert_eq!(https.iter().map(Echo::received).sum::<usize>(), 2);
    assert_eq!(upstream.iter().map(Echo::received).sum::<usize>(), 2);
    let after = fw.drops_when(|d| delta(d, &before, "inbound", "drop_default") >= 4);
    assert!(
        delta(&after, &before, "inbound", "drop_default") >= 4,
        "a SYN and a datagram per family at least: {after:#?}"
    );
    assert!(after.rule("upstream").packets >= 2, "{after:#?}");
}

/// Path MTU discovery through the enforcer: client - router - server, the
/// router's end of the client link at MTU 1280, every other end at 1500
/// (so the client advertises a full 1460/1440 MSS and nothing pre-clamps
/// the server's segments). The server sends 1 MiB over a connection the
/// client opened to 443; its 1500-byte DF segments make the router answer
/// "fragmentation needed" / "packet too big", which must pass the server's
/// ingress hook because it quotes a tracked flow. Proven by the counters
/// (`pass_icmp_control` on ingress) and the server's learned route MTU.
#[test]
fn stateful_path_mtu_discovery_passes_the_enforcer() {
    const TOTAL: usize = 1 << 20;
    harness::setup();
    let net = Routed::new(10, 1280);
    let dir = TempDir::new();
    let policy = dir.write("stateful.yaml", &policy(net.client4.into(), net.client6.into()));
    let sources: Vec<TcpSource> = [IpAddr::from(net.server4), IpAddr::from(net.server6)]
        .into_iter()
        .map(|ip| TcpSource::new(&net.server, SocketAddr::new(ip, 443), Some(TOTAL)))
        .collect();
    // The setup PMTU discovery needs: 1500 everywhere but the router's end
    // of the client link, and no MSS clamping anywhere.
    let mtu = |ns: &Netns, dev: &str| {
        let link = ns.ip_output(&["-o", "link", "show", "dev", dev]);
        link.split(" mtu ").nth(1).and_then(|r| r.split(' ').next()).map(str::to_owned)
    };
    assert_eq!(mtu(&net.server, &net.server_if).as_deref(), Some("1500"));
    assert_eq!(mtu(&net.client, &net.client_if).as_deref(), Some("1500"));
    assert_eq!(mtu(&net.router, &net.router_client_if).as_deref(), Some("1280"));
    for ns in [&net.server, &net.router, &net.client] {
        let rules = ns.command("iptables-save").output().map(|o| o.stdout).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&rules).contains("TCPMSS"), "nothing may clamp the MSS");
    }
    let fw = Fw::start(&net.server, &net.server_if, &policy, "runtime");
    for ((v6, family), (server, client)) in FAMILIES.iter().zip([
        (IpAddr::from(net.server4), IpAddr::from(net.client4)),
        (IpAddr::from(net.server6), IpAddr::from(net.client6)),
    ]) {
        let route = |ip: IpAddr| {
            let family_flag = if *v6 { "-6" } else { "-4" };
            net.server.ip_output(&[family_flag, "route", "get", &ip.to_string()])
        };
        assert!(!route(client).contains("mtu"), "{family}: no path MTU known before the transfer: {}", route(client));
        let before = fw.drops();
        let conn = tcp_connect_from(&net.client, SocketAddr::new(server, 443), 0, PASS_TIMEOUT)
            .unwrap_or_else(|e| panic!("{family}: connecting to {server}:443: {e}"));
        let download = Download::start(conn);
        let done = download.wait(Duration::from_secs(15), |d| d.end() != End::Running);
        assert!(done, "{family}: 1 MiB did not arrive within 15 s ({} bytes)", download.bytes());
        assert_eq!(download.end(), End::Eof, "{family}");
        assert_eq!(download.bytes(), TOTAL as u64, "{family}: every byte");
        let after = fw.drops();
        let icmp = delta(&after, &before, "inbound", "pass_icmp_control");
        assert!(
            icmp >= 1,
            "{family}: the router's ICMP error must have passed ingress as pass_icmp_control: {after:#?}"
        );
        assert!(
            route(client).contains("mtu 1280"),
            "{family}: the server must have learned the path MTU: {}",
            route(client)
        );
        assert_eq!(after.dropped("inbound") - before.dropped("inbound"), 0, "{after:#?}");
        assert_eq!(after.dropped("egress") - before.dropped("egress"), 0, "{after:#?}");
        println!("{family}: 1 MiB through a 1280-byte path; ingress pass_icmp_control +{icmp}");
    }
    assert_eq!(sources.iter().map(TcpSource::accepted).sum::<u64>(), 2);
}
