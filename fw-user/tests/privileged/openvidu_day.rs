//! Issue 15: OpenVidu days (2.x CE, 3.x Single Node), replayed against
//! the shipped policies, with a real DNS server (dnsmasq), a real DHCP
//! server and client, and real peers.
//!
//! `near` is the OpenVidu host (fw enforces there, its socket hooks on a
//! cgroup the test made); `far` is the Internet: dnsmasq on far's address
//! answers the names OpenVidu uses (the webhook receiver, Let's Encrypt's
//! ACME host, ifconfig.co, an NTP pool name, a registry) with addresses in
//! 198.19.0.0/16, which far routes to itself, where TCP servers and an NTP
//! (UDP echo) server listen. `fw run` and `fw switch` run in a private
//! mount namespace whose /etc/resolv.conf names far's dnsmasq (a bind
//! mount: the host's file is never touched), so `resolvers: [system]` of
//! essentials means dnsmasq; clients are python3 processes in the test
//! cgroup with the same resolv.conf.
//!
//! The day: install-phase downloads; public-IP discovery (its DNS query to
//! a public resolver refused, its HTTP fallback passing); the switch to
//! runtime; clients on served ports; a webhook POST to a name whose address
//! changes; ACME renewal to its name; NTP to a pool name; then everything
//! else refused, with `fw drops` naming the rules that passed and the
//! reasons that dropped.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use crate::{
    harness::{
        self,
        cgroup::{with_resolv_conf, TestCgroup},
        dhcp::{DhcpClient, DhcpServer},
        fw::{run_bounded, Drops, Finished, Fw, Launch, FW},
        netns::{Netns, Routed, VethPair},
        poll,
        traffic::{in_netns, tcp_echo, udp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
        TempDir,
    },
    names::{resolve_a, Dnsmasq, Servers},
};

/// The webhook receiver's port (OPENVIDU_WEBHOOK_ENDPOINT).
const WEBHOOK_PORT: u16 = 8443;

/// What dnsmasq answers in every day: the names OpenVidu 2.x and 3.x
/// use (webhook receiver, ACME, public-IP discovery, NTP pool, a registry,
/// the license server, STUN), and the webhook receiver on IPv6 too.
const HOSTS: &str = "\
198.19.1.1 hooks.day.test
198.19.2.1 acme-v02.api.letsencrypt.org
198.19.3.1 ifconfig.co
198.19.4.1 2.debian.pool.ntp.org
198.19.5.1 registry.day.test
198.19.6.1 accounts.openvidu.io
198.19.8.1 stun.l.google.com
2001:db8:1900:1::1 hooks.day.test
";

/// Connects to each `NAME:PORT` (resolved through the system resolver,
/// IPv4, or IPv6 with a `6:` prefix) or `ADDR:PORT`; over TCP it sends an
/// HTTP POST and reads the echo, over UDP (`udp:NAME:PORT`) a datagram and
/// its echo. One line per argument: `ARG ADDR ok|ERRNO|timeout`.
const CLIENT: &str = r#"
import errno, socket, sys
for arg in sys.argv[1:]:
    rest = arg
    family = socket.AF_INET6 if rest.startswith("6:") else socket.AF_INET
    rest = rest[2:] if rest.startswith("6:") else rest
    udp = rest.startswith("udp:")
    name, _, port = rest[4:].rpartition(":") if udp else rest.rpartition(":")
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        addr = socket.getaddrinfo(name, int(port), family, kind)[0][4]
    except OSError as e:
        print(arg, "-", "resolve:" + str(e), flush=True)
        continue
    s = socket.socket(family, kind)
    s.settimeout(2)
    try:
        s.connect(addr)
        s.send(b"POST /webhook HTTP/1.1\r\n\r\n" if not udp else b"ntp")
        result = "ok" if s.recv(64) else "closed"
    except OSError as e:
        result = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
    s.close()
    print(arg, addr[0], result, flush=True)
"#;

/// The Internet of a day, in namespace `ns`, which owns 198.19.0.0/16 and
/// 2001:db8:1900::/48: dnsmasq answering `hosts` on `dns` (an address of
/// `ns`), dual-stack TCP servers on 80, 443 and the webhook port, and UDP
/// echo servers as the NTP pool and the STUN server; `resolv_conf` names
/// dnsmasq.
struct Internet {
    dnsmasq: Dnsmasq,
    _servers: Servers,
    _udp: [Echo; 2],
    resolv_conf: PathBuf,
    _dir: TempDir,
}

/// The STUN server 3.x asks for its public IP (`stun.l.google.com:19302`).
const STUN: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 19, 8, 1), 19302);

impl Internet {
    /// `client`: a namespace to check dnsmasq answers from.
    fn start(ns: &Netns, dns: Ipv4Addr, client: &Netns, hosts: &str) -> Self {
        ns.ip(&["route", "add", "local", "198.19.0.0/16", "dev", "lo"]);
        ns.ip(&["-6", "route", "add", "local", "2001:db8:1900::/48", "dev", "lo"]);
        let dnsmasq = Dnsmasq::start_at(ns, dns, client, hosts, &[]);
        let servers = Servers::start(ns, &[80, 443, WEBHOOK_PORT]);
        // Bound to the names' addresses (the local route makes them ns's).
        let udp = [Echo::udp(ns, at(Ipv4Addr::new(198, 19, 4, 1), 123)), Echo::udp(ns, at(STUN.0, STUN.1))];
        let dir = TempDir::new();
        let resolv_conf = dir.write("resolv.conf", &format!("nameserver {dns}\noptions timeout:2 attempts:2\n"));
        Self { dnsmasq, _servers: servers, _udp: udp, resolv_conf, _dir: dir }
    }

    /// `pair.far` as the Internet of `pair.near`.
    fn beyond(pair: &VethPair, hosts: &str) -> Self {
        pair.near.ip(&["route", "add", "198.19.0.0/16", "via", &pair.far4.to_string()]);
        pair.near.ip(&["-6", "route", "add", "2001:db8:1900::/48", "via", &pair.far6.to_string()]);
        Self::start(&pair.far, pair.far4, &pair.near, hosts)
    }
}

/// An OpenVidu host fw enforces on: its namespace and interface, its
/// env file, and a cgroup of its own for the hooks and the clients, whose
/// processes (fw's too) see the Internet's resolv.conf.
struct Node<'a> {
    ns: &'a Netns,
    iface: &'a str,
    cgroup: TestCgroup,
    resolv_conf: PathBuf,
    env: PathBuf,
    _dir: TempDir,
}

impl<'a> Node<'a> {
    fn new(ns: &'a Netns, iface: &'a str, internet: &Internet, env: &str) -> Self {
        let dir = TempDir::new();
        let env = dir.write(".env", env);
        Self { ns, iface, cgroup: TestCgroup::new(), resolv_conf: internet.resolv_conf.clone(), env, _dir: dir }
    }

    fn wrapper(&self) -> Vec<String> {
        with_resolv_conf(&self.resolv_conf)
    }

    /// `fw run --policy POLICY --phase install` with the hooks on the test
    /// cgroup, once its DNS proxy listens.
    fn fw(&self, policy: &str) -> Fw<'a> {
        let cg = self.cgroup.path.display().to_string();
        let extra: Vec<&OsStr> = vec!["--cgroup".as_ref(), cg.as_ref(), "--env-file".as_ref(), self.env.as_os_str()];
        let wrapper = self.wrapper();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let fw = Fw::start_launch(
            self.ns,
            self.iface,
            policy,
            "install",
            Launch { extra: &extra, wrapper: &wrapper, ..Launch::default() },
        );
        assert!(fw.log_has_within("DNS proxy listening", Duration::from_secs(10)), "{}", fw.log_text());
        fw
    }

    /// `fw ARGS --name NAME` in the same mount namespace setup as `fw run`
    /// (`fw switch` writes the phase, resolvers included, itself).
    fn fw_cli(&self, fw: &Fw, args: &[&str]) -> Finished {
        let mut cmd = self.ns.command("unshare");
        cmd.args(&self.wrapper()[1..]).arg(FW).args(args).args(["--name", fw.name()]);
        run_bounded(cmd, Duration::from_secs(30))
    }

    /// Runs the client in the cgroup; `(arg, addr, result)` per argument.
    fn client(&self, args: &[&str]) -> Vec<(String, String, String)> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.cgroup
            .python_output(self.ns, &self.resolv_conf, CLIENT, &args)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.splitn(3, ' ').collect();
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect()
    }

    /// The result of one client call.
    fn one(&self, arg: &str) -> (String, String) {
        let r = self.client(&[arg]).remove(0);
        (r.1, r.2)
    }

    /// A DNS query (UDP) from the cgroup straight to `server`, as
    /// `dig @server` does: `sent`, or the errno.
    fn dig_at(&self, server: Ipv4Addr) -> String {
        const DIG: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04myip\x07opendns\x03com\x00\x00\x01\x00\x01", (sys.argv[1], 53))
    print("sent")
except OSError as e:
    print(errno.errorcode.get(e.errno))
"#;
        let out = self
            .cgroup
            .python_with_resolv_conf(self.ns, &self.resolv_conf, DIG, &[server.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("running dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// Echo servers on `addr` in `ns`, one per `(protocol, port)` of a
/// deployment's inbound rules (one port of each range).
fn serve(ns: &Netns, addr: IpAddr, ports: &[(&str, u16)]) -> Vec<Echo> {
    ports
        .iter()
        .map(|&(proto, port)| match proto {
            "tcp" => Echo::tcp(ns, SocketAddr::new(addr, port)),
            _ => Echo::udp(ns, SocketAddr::new(addr, port)),
        })
        .collect()
}

/// A client from `from` on every one of `ports` of `addr`: each must echo.
fn clients_reach(from: &Netns, addr: IpAddr, ports: &[(&str, u16)]) {
    for &(proto, port) in ports {
        let target = SocketAddr::new(addr, port);
        let outcome = in_netns(from, || match proto {
            "tcp" => tcp_echo(target, PASS_TIMEOUT),
            _ => udp_echo(target, PASS_TIMEOUT),
        });
        assert_eq!(outcome, Outcome::Echoed, "a client on {target}/{proto}");
    }
}

/// What OpenVidu 2.x CE serves (`openvidu2-ce`'s inbound rules).
const SERVED_2X_CE: &[(&str, u16)] = &[
    ("tcp", 22),
    ("tcp", 80),
    ("tcp", 443),
    ("tcp", 3478),
    ("udp", 3478),
    ("tcp", 40000),
    ("udp", 40000),
    ("tcp", 57001),
    ("udp", 57001),
];
/// What OpenVidu 3.x Single Node serves (`openvidu3-single`).
const SERVED_3X_SINGLE: &[(&str, u16)] = &[
    ("tcp", 22),
    ("tcp", 80),
    ("tcp", 443),
    ("udp", 443),
    ("tcp", 1935),
    ("tcp", 7881),
    ("udp", 7885),
    ("tcp", 9000),
    ("tcp", 50000),
    ("udp", 50000),
];
/// What a 2.x Pro master serves to everyone (`openvidu2-pro-master`).
const SERVED_2X_MASTER: &[(&str, u16)] =
    &[("tcp", 22), ("tcp", 80), ("tcp", 443), ("tcp", 3478), ("udp", 3478), ("tcp", 40000), ("udp", 40000)];
/// What a 2.x media node serves to everyone (`openvidu2-media-node`).
const SERVED_2X_MEDIA: &[(&str, u16)] = &[("tcp", 22), ("tcp", 443), ("udp", 443), ("tcp", 40000), ("udp", 40000)];
/// What a 3.x Elastic master serves to everyone.
const SERVED_3X_MASTER: &[(&str, u16)] = &[("tcp", 22), ("tcp", 80), ("tcp", 443), ("tcp", 1935), ("tcp", 9000)];
/// What a 3.x media node serves to everyone.
const SERVED_3X_MEDIA: &[(&str, u16)] =
    &[("tcp", 22), ("udp", 443), ("tcp", 7881), ("udp", 7885), ("tcp", 50000), ("udp", 50000)];

#[test]
fn openvidu_day_2x_ce_replayed_every_needed_flow_passes_everything_else_drops() {
    // /opt/openvidu/.env as an operator writes it: the public IP set (no
    // discovery needed, but the container still may run it), the webhook
    // by name.
    harness::setup();
    let pair = VethPair::new(157);
    let net = Internet::beyond(&pair, HOSTS);
    let day = Node::new(
        &pair.near,
        &pair.near_if,
        &net,
        &format!(
            "DOMAIN_OR_PUBLIC_IP={near}\nCOTURN_IP={near}\nOPENVIDU_WEBHOOK=true\n\
             OPENVIDU_WEBHOOK_ENDPOINT=http://hooks.day.test:{WEBHOOK_PORT}/webhook\nNTP_SERVERS=\n",
            near = pair.near4
        ),
    );
    let (near4, far4) = (pair.near4, pair.far4);
    // What OpenVidu serves on the host: HTTPS, TURN, Kurento media.
    let _served = serve(&pair.near, near4.into(), SERVED_2X_CE);
    let mut fw = day.fw("openvidu2-ce");
    let public_resolver = Ipv4Addr::new(198, 19, 53, 53);

    // Install: the install script and images (web), the public-IP
    // discovery's HTTP fallback, the webhook.
    all_are(
        "install",
        &day.client(&[
            "registry.day.test:443",
            "registry.day.test:80",
            "ifconfig.co:80",
            &format!("hooks.day.test:{WEBHOOK_PORT}"),
        ]),
        "ok",
        &fw,
    );
    // discover_my_public_ip.sh's `dig @public-resolver`: DNS goes to the
    // system resolvers only, even while installing.
    assert_eq!(day.dig_at(public_resolver), "EPERM", "install: DNS to a public resolver");

    // Close all outbound.
    let out = day.fw_cli(&fw, &["switch", "runtime"]);
    assert!(out.status.success(), "fw switch runtime: {out:#?}");
    assert_eq!(fw.status_json()["phase"], "runtime");

    // Clients on the served ports (from the Internet side).
    clients_reach(&pair.far, near4.into(), SERVED_2X_CE);

    // The runtime's outbound needs: webhook, ACME renewal, the discovery
    // fallback, NTP to a pool name.
    let hook = format!("hooks.day.test:{WEBHOOK_PORT}");
    all_are(
        "runtime",
        &day.client(&[&hook, "acme-v02.api.letsencrypt.org:443", "ifconfig.co:80", "udp:2.debian.pool.ntp.org:123"]),
        "ok",
        &fw,
    );
    assert_eq!(day.one(&hook), ("198.19.1.1".to_string(), "ok".to_string()));

    // The webhook receiver moves: the next POST goes to its new address.
    net.dnsmasq.rewrite(&HOSTS.replace("198.19.1.1 hooks", "198.19.1.2 hooks"));
    let server = at(far4, 53);
    let moved = poll(Duration::from_secs(10), || {
        in_netns(&pair.near, || resolve_a(server, "hooks.day.test") == [Ipv4Addr::new(198, 19, 1, 2)])
    });
    assert!(moved, "dnsmasq did not pick up the webhook's new address");
    assert_eq!(day.one(&hook), ("198.19.1.2".to_string(), "ok".to_string()), "the webhook after its address changed");

    // Everything else: refused at the socket (the hooks), the registry
    // included now that the install is over.
    let before = fw.drops().egress("drop_socket").0;
    all_are(
        "closed",
        &day.client(&[
            "registry.day.test:443",
            "registry.day.test:80",
            "198.19.7.7:8443",
            "acme-v02.api.letsencrypt.org:80",
            "hooks.day.test:443",
        ]),
        "EPERM",
        &fw,
    );
    assert_eq!(day.dig_at(public_resolver), "EPERM", "runtime: DNS to a public resolver");
    // And on the wire, from a socket outside the hooked cgroup; then fw
    // drops: each needed flow passed by its rule, the rest was dropped.
    let drops = dropped_on_the_wire(&pair.near, &fw);
    println!("{drops:#?}");
    for rule in
        ["web", "webhook", "acme", "public-ip-discovery", "essentials-ntp", "https", "stun-turn", "kurento-media"]
    {
        assert!(drops.rule(rule).packets > 0, "rule {rule} passed nothing: {drops:#?}");
    }
    assert!(drops.egress("drop_socket").0 >= before + 6, "{drops:#?}");
    assert!(drops.egress("pass_resolver").0 > 0, "DNS went to dnsmasq through the proxy: {drops:#?}");
    fw.stop();
}

/// OpenVidu 3.x Single Node (CE and PRO), replayed against the shipped
/// `openvidu3-single`: install downloads, STUN for the public IP, the
/// switch, clients on the served ports (IPv4 and IPv6), the PRO license
/// check, ACME, a webhook of livekit.yaml's `webhook.urls` over IPv4 and
/// IPv6 whose addresses change, NTP, a DHCP exchange by a real dhclient with a real DHCP server,
/// then everything else refused.
#[test]
fn openvidu_day_3x_single_replayed_every_needed_flow_passes_everything_else_drops() {
    harness::setup();
    let pair = VethPair::new(158);
    let net = Internet::beyond(&pair, HOSTS);
    // openvidu.env's DOMAIN_NAME; the webhook is where OpenVidu keeps it,
    // livekit.yaml's `webhook.urls` beside openvidu.env, which fw reads
    // when WEBHOOK_URLS is not given.
    let day = Node::new(&pair.near, &pair.near_if, &net, &format!("DOMAIN_NAME={}\nNTP_SERVERS=\n", pair.near4));
    let livekit = day.env.parent().expect("the env file's directory").join("livekit.yaml");
    std::fs::write(
        &livekit,
        format!("port: 7880\nwebhook:\n  api_key: key\n  urls:\n    - http://hooks.day.test:{WEBHOOK_PORT}/livekit\n"),
    )
    .expect("livekit.yaml");
    let (near4, near6, far4) = (pair.near4, pair.near6, pair.far4);
    // Served on the host: HTTPS (TCP and UDP), WebRTC over TCP, media.
    let _served = serve(&pair.near, near4.into(), SERVED_3X_SINGLE);
    let _served6 = serve(&pair.near, near6.into(), SERVED_3X_SINGLE);
    let mut fw = day.fw("openvidu3-single");
    let stun = format!("udp:stun.l.google.com:{}", STUN.1);

    // Install: downloads, and the public IP by STUN.
    all_are("install", &day.client(&["registry.day.test:443", "registry.day.test:80", &stun]), "ok", &fw);

    let out = day.fw_cli(&fw, &["switch", "runtime"]);
    assert!(out.status.success(), "fw switch runtime: {out:#?}");
    assert_eq!(fw.status_json()["phase"], "runtime");

    // Clients, from the Internet side, on both families.
    clients_reach(&pair.far, near4.into(), SERVED_3X_SINGLE);
    clients_reach(&pair.far, near6.into(), SERVED_3X_SINGLE);

    // Runtime needs: license (PRO), STUN at every restart, ACME, the
    // webhook on both families, NTP.
    let hook = format!("hooks.day.test:{WEBHOOK_PORT}");
    let hook6 = format!("6:{hook}");
    all_are(
        "runtime",
        &day.client(&[
            "accounts.openvidu.io:443",
            &stun,
            "acme-v02.api.letsencrypt.org:443",
            &hook,
            &hook6,
            "udp:2.debian.pool.ntp.org:123",
        ]),
        "ok",
        &fw,
    );
    assert_eq!(day.one(&hook6), ("2001:db8:1900:1::1".to_string(), "ok".to_string()), "the webhook over IPv6");
    // The webhook receiver moves (both families): the next POSTs follow.
    net.dnsmasq.rewrite(&HOSTS.replace("198.19.1.1 hooks", "198.19.1.2 hooks").replace("1900:1::1", "1900:1::2"));
    let moved = poll(Duration::from_secs(10), || {
        in_netns(&pair.near, || resolve_a(at(far4, 53), "hooks.day.test") == [Ipv4Addr::new(198, 19, 1, 2)])
    });
    assert!(moved, "dnsmasq did not pick up the webhook's new address");
    assert_eq!(day.one(&hook), ("198.19.1.2".to_string(), "ok".to_string()), "the webhook after it moved");
    assert_eq!(day.one(&hook6), ("2001:db8:1900:1::2".to_string(), "ok".to_string()), "over IPv6 after it moved");

    // A DHCP exchange under the runtime phase: a real dhclient gets its
    // lease from a real DHCP server through fw (essentials).
    let dhcp_dir = TempDir::new();
    let _dhcp_server = DhcpServer::start(&pair, dhcp_dir.path());
    let dhcp = DhcpClient::start(&pair, &dhcp_dir.path().join("dhclient.leases"), dhcp_dir.path());
    assert!(dhcp.leased_from(far4, Duration::from_secs(30)), "no DHCP lease under the runtime phase");

    // Everything else is refused: the registry now, other ports of allowed
    // names, other hosts, on both families.
    let before = fw.drops().egress("drop_socket").0;
    all_are(
        "closed",
        &day.client(&[
            "registry.day.test:443",
            "198.19.7.7:8443",
            "accounts.openvidu.io:80",
            "6:hooks.day.test:443",
            "udp:stun.l.google.com:3478",
        ]),
        "EPERM",
        &fw,
    );
    // And on the wire, from a socket outside the hooked cgroup; then fw
    // drops: each needed flow passed by its rule, the rest was dropped.
    let drops = dropped_on_the_wire(&pair.near, &fw);
    println!("{drops:#?}");
    for rule in [
        "web",
        "license",
        "stun-google",
        "acme",
        "webhook",
        "essentials-ntp",
        "essentials-dhcp4",
        "https",
        "webrtc-tcp",
        "media",
    ] {
        assert!(drops.rule(rule).packets > 0, "rule {rule} passed nothing: {drops:#?}");
    }
    assert!(drops.egress("drop_socket").0 >= before + 5, "{drops:#?}");
    assert!(drops.egress("pass_resolver").0 > 0, "DNS went to dnsmasq through the proxy: {drops:#?}");
    fw.stop();
}

/// Asserts that every `(arg, addr, result)` of a client run is `want`.
fn all_are(what: &str, results: &[(String, String, String)], want: &str, fw: &Fw) {
    for (arg, addr, result) in results {
        assert_eq!(
            result,
            want,
            "{what}: {arg} ({addr}): {results:?}\n{}\n{}\n{}",
            fw.log_text(),
            fw.cli(&["names"]).stdout,
            fw.cli(&["drops", "--since", "1h"]).stdout
        );
    }
}

/// A connection to a host no rule names, from a socket outside the hooked
/// cgroup in `ns`: dropped on the wire (it times out); `fw drops` once the
/// drop is counted.
fn dropped_on_the_wire(ns: &Netns, fw: &Fw) -> Drops {
    let before = fw.drops().egress("drop_default").0;
    let outcome = in_netns(ns, || tcp_echo(at(Ipv4Addr::new(198, 19, 7, 7), 8443), DROP_TIMEOUT));
    assert_eq!(outcome, Outcome::TimedOut, "a host no rule names, on the wire");
    fw.drops_when(|d| d.egress("drop_default").0 > before)
}

/// Asserts that each rule of `rules` passed packets in `fw`.
fn rules_passed(fw: &Fw, rules: &[&str]) {
    let drops = fw.drops();
    for rule in rules {
        assert!(drops.rule(rule).packets > 0, "{}: rule {rule} passed nothing: {drops:#?}", fw.name());
    }
}

/// One node of a cluster day: its shipped policy, its env file (given the
/// master's and the node's addresses), what it serves to everyone, the TCP
/// ports it serves to the other node only, and what it fetches while
/// installing.
struct NodeSpec {
    policy: &'static str,
    env: String,
    served: &'static [(&'static str, u16)],
    cluster_only: &'static [u16],
    install: Vec<String>,
}

/// A two-node cluster on `Routed`: the master on its server side, a media
/// node on its client side, the Internet (dnsmasq, servers, NTP, STUN) on
/// the router between them. Each node serves its ports, runs its policy
/// under its own `fw run`, installs, and is switched to runtime.
struct ClusterDay<'a> {
    master: Node<'a>,
    media: Node<'a>,
    fw_master: Fw<'a>,
    fw_media: Fw<'a>,
    /// Per node: its address, what it serves to all, what to the other.
    serves: [(Ipv4Addr, &'static [(&'static str, u16)], &'static [u16]); 2],
    _servers: Vec<Echo>,
}

impl<'a> ClusterDay<'a> {
    fn start(net: &'a Routed, internet: &Internet, master: NodeSpec, media: NodeSpec) -> Self {
        let mut servers = Vec::new();
        let mut up = |ns: &'a Netns, iface: &'a str, addr: Ipv4Addr, spec: &NodeSpec| {
            servers.extend(serve(ns, addr.into(), spec.served));
            servers.extend(spec.cluster_only.iter().map(|&port| Echo::tcp(ns, at(addr, port))));
            let node = Node::new(ns, iface, internet, &spec.env);
            let fw = node.fw(spec.policy);
            let install: Vec<&str> = spec.install.iter().map(String::as_str).collect();
            all_are(&format!("{} install", spec.policy), &node.client(&install), "ok", &fw);
            (node, fw)
        };
        let (master_node, fw_master) = up(&net.server, &net.server_if, net.server4, &master);
        let (media_node, fw_media) = up(&net.client, &net.client_if, net.client4, &media);
        for (node, fw) in [(&master_node, &fw_master), (&media_node, &fw_media)] {
            let out = node.fw_cli(fw, &["switch", "runtime"]);
            assert!(out.status.success(), "fw switch runtime: {out:#?}");
        }
        let serves =
            [(net.server4, master.served, master.cluster_only), (net.client4, media.served, media.cluster_only)];
        Self { master: master_node, media: media_node, fw_master, fw_media, serves, _servers: servers }
    }

    /// From `internet`: a client on every port each node serves to all
    /// echoes, and none of the ports a node serves to the other does.
    fn check_what_the_internet_reaches(&self, internet: &Netns) {
        for (addr, served, cluster_only) in self.serves {
            clients_reach(internet, addr.into(), served);
            for &port in cluster_only {
                let outcome = in_netns(internet, || tcp_echo(at(addr, port), DROP_TIMEOUT));
                assert_ne!(outcome, Outcome::Echoed, "the Internet reached {addr}:{port}, a cluster-only port");
            }
        }
    }
}

fn cluster(x: u8) -> (Routed, Internet) {
    harness::setup();
    let net = Routed::new(x, 1500);
    let internet = Internet::start(&net.router, Ipv4Addr::new(198, 18, x, 254), &net.server, HOSTS);
    (net, internet)
}

/// OpenVidu 2.x Pro: a master and a media node named in its `KMS_URIS`,
/// each under its shipped policy. The master reaches the node's controller
/// (3000) and Kurento (8888), the node sends its beats (5044, 9200) to the
/// master; clients reach HTTPS on the master and media on the node; the
/// master checks its license, renews, posts its webhook; both keep time.
/// The Internet cannot reach the master's beats ports nor the node's
/// Kurento, the node cannot reach the license server, and neither reaches
/// anything else.
#[test]
fn openvidu_day_2x_pro_master_and_media_node_replayed() {
    let (net, internet) = cluster(159);
    let (master4, media4) = (net.server4, net.client4);
    let day = ClusterDay::start(
        &net,
        &internet,
        NodeSpec {
            policy: "openvidu2-pro-master",
            env: format!(
                "DOMAIN_OR_PUBLIC_IP={master4}\nCOTURN_IP={master4}\nKMS_URIS=[\"ws://{media4}:8888/kurento\"]\n\
                 OPENVIDU_WEBHOOK=true\nOPENVIDU_WEBHOOK_ENDPOINT=http://hooks.day.test:{WEBHOOK_PORT}/webhook\n\
                 NTP_SERVERS=\n"
            ),
            served: SERVED_2X_MASTER,
            cluster_only: &[5044, 9200],
            install: vec!["registry.day.test:443".into(), "registry.day.test:80".into()],
        },
        NodeSpec {
            policy: "openvidu2-media-node",
            env: format!("MASTER_NODE={master4}\nNTP_SERVERS=\n"),
            served: SERVED_2X_MEDIA,
            cluster_only: &[3000, 8888],
            install: vec!["registry.day.test:443".into()],
        },
    );
    let (master, media, fw_master, fw_media) = (&day.master, &day.media, &day.fw_master, &day.fw_media);

    let hook = format!("hooks.day.test:{WEBHOOK_PORT}");
    let to_media = [format!("{media4}:3000"), format!("{media4}:8888")];
    let master_needs = [
        to_media[0].as_str(),
        to_media[1].as_str(),
        "accounts.openvidu.io:443",
        "acme-v02.api.letsencrypt.org:443",
        &hook,
        "ifconfig.co:80",
        "udp:2.debian.pool.ntp.org:123",
    ];
    all_are("master runtime", &master.client(&master_needs), "ok", &fw_master);
    let beats = [format!("{master4}:5044"), format!("{master4}:9200")];
    let media_needs = [beats[0].as_str(), beats[1].as_str(), "udp:2.debian.pool.ntp.org:123"];
    all_are("media runtime", &media.client(&media_needs), "ok", &fw_media);
    // From the Internet: the master's beats ports and the node's
    // controller and Kurento are for the cluster only.
    day.check_what_the_internet_reaches(&net.router);
    all_are(
        "media closed",
        &media.client(&["accounts.openvidu.io:443", "registry.day.test:443", &format!("{master4}:443"), &hook]),
        "EPERM",
        &fw_media,
    );
    all_are("master closed", &master.client(&["registry.day.test:443", &format!("{media4}:22")]), "EPERM", &fw_master);

    rules_passed(
        &fw_master,
        &[
            "web",
            "media-node-controller",
            "media-node-kms",
            "license",
            "acme",
            "webhook",
            "public-ip-discovery",
            "essentials-ntp",
            "https",
            "beats-from-media-nodes",
        ],
    );
    rules_passed(
        &fw_media,
        &["web", "beats-to-master", "controller-from-master", "kms-from-master", "media", "essentials-ntp"],
    );
}

/// OpenVidu 3.x Elastic: a master with one media node in `MEDIA_NODES`.
/// The node reaches the master's services (LiveKit 7880, Redis 7000,
/// 4443), the master the node's (7880, 8080); both check the license and
/// ask STUN; the node posts its webhook, the master renews; clients reach
/// HTTPS on the master, WebRTC over TCP and media on the node. The
/// Internet cannot reach the master's Redis nor the node's 8080; the node
/// has no ACME, the master posts no LiveKit webhook.
#[test]
fn openvidu_day_3x_elastic_master_and_media_node_replayed() {
    let (net, internet) = cluster(161);
    let (master4, media4) = (net.server4, net.client4);
    let stun = format!("udp:stun.l.google.com:{}", STUN.1);
    let day = ClusterDay::start(
        &net,
        &internet,
        NodeSpec {
            policy: "openvidu3-elastic-master",
            env: format!("DOMAIN_NAME={master4}\nMEDIA_NODES={media4}\nNTP_SERVERS=\n"),
            served: SERVED_3X_MASTER,
            cluster_only: &[7880, 7000, 4443],
            install: vec!["registry.day.test:443".into(), stun.clone()],
        },
        NodeSpec {
            policy: "openvidu3-media-node",
            env: format!(
                "MASTER_NODE={master4}\nWEBHOOK_URLS=[\"http://hooks.day.test:{WEBHOOK_PORT}/livekit\"]\n\
                 NTP_SERVERS=\n"
            ),
            served: SERVED_3X_MEDIA,
            cluster_only: &[7880, 8080],
            install: vec!["registry.day.test:443".into(), stun.clone()],
        },
    );
    let (master, media, fw_master, fw_media) = (&day.master, &day.media, &day.fw_master, &day.fw_media);

    let hook = format!("hooks.day.test:{WEBHOOK_PORT}");
    let to_media = [format!("{media4}:7880"), format!("{media4}:8080")];
    all_are(
        "master runtime",
        &master.client(&[
            &to_media[0],
            &to_media[1],
            "accounts.openvidu.io:443",
            &stun,
            "acme-v02.api.letsencrypt.org:443",
            "udp:2.debian.pool.ntp.org:123",
        ]),
        "ok",
        &fw_master,
    );
    let to_master = [format!("{master4}:7880"), format!("{master4}:7000"), format!("{master4}:4443")];
    all_are(
        "media runtime",
        &media.client(&[
            &to_master[0],
            &to_master[1],
            &to_master[2],
            "accounts.openvidu.io:443",
            &stun,
            &hook,
            "udp:2.debian.pool.ntp.org:123",
        ]),
        "ok",
        &fw_media,
    );
    // LiveKit, Redis and the node's services are for the cluster only.
    day.check_what_the_internet_reaches(&net.router);
    all_are(
        "media closed",
        &media.client(&["acme-v02.api.letsencrypt.org:443", "registry.day.test:443", &format!("{master4}:22")]),
        "EPERM",
        &fw_media,
    );
    all_are("master closed", &master.client(&["registry.day.test:443", &hook]), "EPERM", &fw_master);

    rules_passed(
        &fw_master,
        &[
            "web",
            "media-node-services",
            "license",
            "stun-google",
            "acme",
            "essentials-ntp",
            "https",
            "services-for-media-nodes",
        ],
    );
    rules_passed(
        &fw_media,
        &[
            "web",
            "master-services",
            "services-for-master",
            "license",
            "stun-google",
            "webhook",
            "essentials-ntp",
            "webrtc-tcp",
            "media",
        ],
    );
}
