//! End to end (issue 3, item 7): `fw` on the near end of a veth pair, echo
//! servers in the far namespace, real TCP and UDP over IPv4 and IPv6.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use crate::harness::{
    self,
    fw::{pin_dir, Drops, Fw},
    netns::VethPair,
    traffic::{in_netns, tcp_echo, udp_echo, udp_send, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    TempDir,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}
use Proto::{Tcp, Udp};

/// Allowed by rule `allow-tcp`.
const TCP_ALLOWED: u16 = 8080;
/// No rule: the egress default (drop).
const TCP_DEFAULT: u16 = 8081;
/// Denied by rule `deny-tcp-9090`.
const TCP_DENIED: u16 = 9090;
/// Both ends of rule `allow-udp`'s range 9000-9001.
const UDP_ALLOWED: [u16; 2] = [9000, 9001];
/// Just past that range, and well away from it: the egress default.
const UDP_DEFAULT: [u16; 2] = [9002, 9100];

const SERVERS: [(Proto, u16); 7] = [
    (Tcp, TCP_ALLOWED),
    (Tcp, TCP_DEFAULT),
    (Tcp, TCP_DENIED),
    (Udp, UDP_ALLOWED[0]),
    (Udp, UDP_ALLOWED[1]),
    (Udp, UDP_DEFAULT[0]),
    (Udp, UDP_DEFAULT[1]),
];

/// The policy of the issue, aimed at the far host's addresses.
fn policy(pair: &VethPair) -> String {
    let (v4, v6) = (pair.far4, pair.far6);
    format!(
        r#"name: e2e
phases:
  test:
    egress:
      - {{ name: allow-tcp, to: [{v4}, "{v6}"], proto: tcp, ports: [{TCP_ALLOWED}] }}
      - {{ name: allow-udp, to: [{v4}, "{v6}"], proto: udp, ports: ["9000-9001"] }}
      - {{ name: deny-tcp-9090, to: [any], proto: tcp, ports: [{TCP_DENIED}], action: deny }}
"#
    )
}

/// Two namespaces, echo servers on every port of [`SERVERS`] and both far
/// addresses, and the policy file. Checked on creation: without `fw`, every
/// server answers, so whatever is dropped later is `fw`'s doing.
struct Site {
    // Declaration order is drop order: servers, then files, then namespaces.
    servers: Vec<(Proto, SocketAddr, Echo)>,
    policy: PathBuf,
    _dir: TempDir,
    pair: VethPair,
}

impl Site {
    fn new() -> Self {
        harness::setup();
        let pair = VethPair::new(0);
        let dir = TempDir::new();
        let policy = dir.write("policy.yaml", &policy(&pair));
        let mut servers = Vec::new();
        for ip in pair.far_addrs() {
            for (proto, port) in SERVERS {
                let addr = SocketAddr::new(ip, port);
                let echo = match proto {
                    Tcp => Echo::tcp(&pair.far, addr),
                    Udp => Echo::udp(&pair.far, addr),
                };
                servers.push((proto, addr, echo));
            }
        }
        let site = Self { servers, policy, _dir: dir, pair };
        let targets: Vec<(Proto, SocketAddr)> = site.servers.iter().map(|(p, a, _)| (*p, *a)).collect();
        let seen = site.probe(&targets, PASS_TIMEOUT);
        assert!(seen.iter().all(|(_, _, o)| *o == Outcome::Echoed), "without fw every server must answer: {seen:#?}");
        site
    }

    fn start_fw(&self) -> Fw<'_> {
        Fw::start(&self.pair.near, &self.pair.near_if, &self.policy, "test")
    }

    fn echo(&self, proto: Proto, addr: SocketAddr) -> &Echo {
        self.servers
            .iter()
            .find(|(p, a, _)| *p == proto && *a == addr)
            .map(|(_, _, e)| e)
            .unwrap_or_else(|| panic!("no {proto:?} server on {addr}"))
    }

    /// Tries each target from the near namespace, one after the other.
    fn probe(
        &self,
        targets: &[(Proto, SocketAddr)],
        timeout: std::time::Duration,
    ) -> Vec<(Proto, SocketAddr, Outcome)> {
        in_netns(&self.pair.near, || {
            targets
                .iter()
                .map(|&(proto, addr)| {
                    let outcome = match proto {
                        Tcp => tcp_echo(addr, timeout),
                        Udp => udp_echo(addr, timeout),
                    };
                    (proto, addr, outcome)
                })
                .collect()
        })
    }

    /// Asserts that each target times out (dropped) and that its server saw
    /// nothing of it.
    fn assert_dropped(&self, targets: &[(Proto, SocketAddr)]) {
        self.assert_each(targets, Outcome::TimedOut, 0);
    }

    /// Asserts that each target echoes, each server seeing exactly one more
    /// connection or datagram.
    fn assert_pass(&self, targets: &[(Proto, SocketAddr)]) {
        self.assert_each(targets, Outcome::Echoed, 1);
    }

    /// Probes each target, expecting `outcome` and `receptions` more
    /// connections or datagrams at its server.
    fn assert_each(&self, targets: &[(Proto, SocketAddr)], outcome: Outcome, receptions: usize) {
        let before: Vec<usize> = targets.iter().map(|&(p, a)| self.echo(p, a).received()).collect();
        let timeout = match outcome {
            Outcome::Echoed => PASS_TIMEOUT,
            _ => DROP_TIMEOUT,
        };
        let seen = self.probe(targets, timeout);
        for ((proto, addr, got), before) in seen.into_iter().zip(before) {
            assert_eq!(got, outcome, "{proto:?} {addr}");
            assert_eq!(
                self.echo(proto, addr).received(),
                before + receptions,
                "{proto:?} {addr}: receptions at the server"
            );
        }
    }
}

fn at(ip: IpAddr, targets: &[(Proto, u16)]) -> Vec<(Proto, SocketAddr)> {
    targets.iter().map(|&(p, port)| (p, SocketAddr::new(ip, port))).collect()
}

fn allowed(ip: IpAddr) -> Vec<(Proto, SocketAddr)> {
    at(ip, &[(Tcp, TCP_ALLOWED), (Udp, UDP_ALLOWED[0]), (Udp, UDP_ALLOWED[1])])
}

fn denied(ip: IpAddr) -> Vec<(Proto, SocketAddr)> {
    at(ip, &[(Tcp, TCP_DEFAULT), (Tcp, TCP_DENIED), (Udp, UDP_DEFAULT[0]), (Udp, UDP_DEFAULT[1])])
}

/// The control for every test below: namespaces, addresses and servers
/// work, and every port answers while no `fw` is attached.
#[test]
fn without_fw_every_server_answers() {
    Site::new();
}

/// Allowed TCP and UDP echo, denied ones time out unseen, and `fw drops`
/// names what dropped them.
fn enforces_the_policy(family: usize) {
    let site = Site::new();
    let fw = site.start_fw();
    let ip = site.pair.far_addrs()[family];
    let zero = fw.drops();
    assert_eq!(zero.phase, "test");
    for (rule, action) in [("allow-tcp", "allow"), ("allow-udp", "allow"), ("deny-tcp-9090", "deny")] {
        assert_eq!(zero.rule(rule).action, action, "{zero:#?}");
        assert_eq!(zero.rule(rule).direction, "egress", "{zero:#?}");
    }

    site.assert_pass(&allowed(ip));
    site.assert_dropped(&denied(ip));

    // TCP retransmits SYNs, so TCP counts are "at least"; exact counts are
    // the UDP test's job.
    let drops = fw.drops();
    let grew = |rule: &str| drops.rule(rule).packets - zero.rule(rule).packets;
    let reason = |name: &str| drops.egress(name).0 - zero.egress(name).0;
    assert!(grew("allow-tcp") >= 1, "allow-tcp counted nothing: {drops:#?}");
    assert!(grew("allow-udp") >= 2, "allow-udp must count both datagrams: {drops:#?}");
    assert!(grew("deny-tcp-9090") >= 1, "deny-tcp-9090 counted nothing: {drops:#?}");
    assert!(reason("drop_rule") >= grew("deny-tcp-9090"), "{drops:#?}");
    // One SYN (at least) to 8081, one datagram to each UDP port.
    assert!(reason("drop_default") >= 3, "{drops:#?}");
}

#[test]
fn ipv4_allowed_pass_denied_drop_and_are_named() {
    enforces_the_policy(0);
}

#[test]
fn ipv6_allowed_pass_denied_drop_and_are_named() {
    enforces_the_policy(1);
}

/// Exactly N datagrams to default-denied ports: drop_default egress grows
/// by exactly N packets and N frames' bytes, nothing else drops, and no
/// server sees any of them.
#[test]
fn udp_drops_are_counted_exactly() {
    const PAYLOAD: usize = 32;
    let site = Site::new();
    let fw = site.start_fw();
    for (ip, l3_header) in [(IpAddr::from(site.pair.far4), 20), (IpAddr::from(site.pair.far6), 40)] {
        let sends = [(UDP_DEFAULT[0], 3), (UDP_DEFAULT[1], 5)];
        let n: u64 = sends.iter().map(|&(_, k)| k as u64).sum();
        let before = fw.drops();
        let received: Vec<usize> =
            sends.iter().map(|&(p, _)| site.echo(Udp, SocketAddr::new(ip, p)).received()).collect();

        in_netns(&site.pair.near, || {
            for (port, count) in sends {
                udp_send(SocketAddr::new(ip, port), count, PAYLOAD);
            }
        });

        let delta = |d: &Drops, reason: &str| {
            (d.egress(reason).0 - before.egress(reason).0, d.egress(reason).1 - before.egress(reason).1)
        };
        let after = fw.drops_when(|d| delta(d, "drop_default").0 >= n);
        // Ethernet + IP + UDP header + payload, as the TC hook sees the frame.
        let frame = (14 + l3_header + 8 + PAYLOAD) as u64;
        assert_eq!(delta(&after, "drop_default"), (n, n * frame), "{ip}: {after:#?}");
        assert_eq!(delta(&after, "drop_rule"), (0, 0), "{ip}: no rule denies these: {after:#?}");
        for (&(port, _), before) in sends.iter().zip(received) {
            assert_eq!(site.echo(Udp, SocketAddr::new(ip, port)).received(), before, "{ip}:{port} server");
        }
    }
}

/// Enforcement outlives the `fw run` process (pinned, fail closed); `fw
/// stop` detaches it, removes the pins, and denied ports work again.
#[test]
fn enforcement_outlives_fw_run_until_fw_stop() {
    let site = Site::new();
    let mut fw = site.start_fw();
    let [v4, v6] = site.pair.far_addrs();
    let probes =
        [at(v4, &[(Tcp, TCP_DEFAULT), (Udp, UDP_DEFAULT[1])]), at(v6, &[(Tcp, TCP_DEFAULT), (Udp, UDP_DEFAULT[1])])]
            .concat();
    site.assert_dropped(&probes);

    fw.kill_run_process();
    assert!(fw.status().status.success(), "still enforcing after fw run died: {:#?}", fw.status());
    site.assert_dropped(&probes);
    site.assert_pass(&[allowed(v4), allowed(v6)].concat());

    fw.stop();
    let status = fw.status();
    assert!(!status.status.success(), "fw status must fail after fw stop: {status:#?}");
    assert!(!pin_dir(fw.name()).exists(), "fw stop must remove {}", pin_dir(fw.name()).display());
    site.assert_pass(&probes);
}
