//! Issue 14: names tracked at run time, against a real dnsmasq.
//!
//! Each test makes a veth pair: `near` (where fw enforces, with its socket
//! hooks on a cgroup the test made) and `far` (dnsmasq on the far address,
//! and TCP servers on 198.19.0.0/16, which far routes to itself as local
//! addresses). Clients are python3 processes in the test cgroup and in a
//! private mount namespace whose /etc/resolv.conf names far's dnsmasq (a
//! bind mount: the host's file is never touched). dnsmasq listens only on
//! far's address and is killed by its PID when the test ends.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::harness::{
    self,
    cgroup::TestCgroup,
    dnsmasq,
    fw::{Fw, Launch},
    netns::{Netns, VethPair},
    poll,
    traffic::in_netns,
    TempDir,
};
use fw_lab::process::Guarded;

/// The port the far servers listen on (every 198.19.x.y address).
const PORT: u16 = 8443;
/// A port no rule names; a server listens there too.
const OTHER_PORT: u16 = 8444;

/// dnsmasq on far's address only, answering from a hosts file it re-reads
/// on SIGHUP, with TTL 1. Stopped by its PID on drop.
pub(crate) struct Dnsmasq {
    child: Guarded,
    hosts: PathBuf,
    _dir: TempDir,
}

impl Dnsmasq {
    /// `extra`: more dnsmasq options (`--cname=...`).
    pub(crate) fn start(pair: &VethPair, hosts: &str, extra: &[String]) -> Self {
        Self::start_at(&pair.far, pair.far4, &pair.near, hosts, extra)
    }

    /// dnsmasq in `server` on `addr`, ready once it answers a client in
    /// `client` (the first name of `hosts`).
    pub(crate) fn start_at(server: &Netns, addr: Ipv4Addr, client: &Netns, hosts: &str, extra: &[String]) -> Self {
        let dir = TempDir::new();
        let hosts_path = dir.write("hosts", hosts);
        let log = fs::File::create(dir.path().join("dnsmasq.log")).expect("dnsmasq log");
        let child = dnsmasq::command(server)
            .args(["--local-ttl=1", "--log-facility=-"])
            .arg(format!("--listen-address={addr}"))
            .arg(format!("--addn-hosts={}", hosts_path.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting dnsmasq (cargo xtask test installs dnsmasq-base)");
        let dnsmasq = Self { child: Guarded(child), hosts: hosts_path, _dir: dir };
        // Ready when it answers (asked from the near namespace, before fw
        // enforces anything there).
        let address = SocketAddr::new(addr.into(), 53);
        let first = hosts.lines().next().and_then(|l| l.split_whitespace().nth(1)).expect("a hosts line").to_string();
        let ready = poll(Duration::from_secs(10), || in_netns(client, || !resolve_a(address, &first).is_empty()));
        assert!(ready, "dnsmasq did not answer on {address}");
        dnsmasq
    }

    /// Replaces the hosts file and makes dnsmasq re-read it.
    pub(crate) fn rewrite(&self, hosts: &str) {
        fs::write(&self.hosts, hosts).expect("rewriting the hosts file");
        // SAFETY: a signal to the child this guard started and still owns.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) }, 0);
    }
}

/// A one-question A query, and the addresses of the answer (empty on any
/// failure): the test's own client, outside the hooked cgroup.
pub(crate) fn resolve_a(server: SocketAddr, name: &str) -> Vec<Ipv4Addr> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    use std::str::FromStr as _;
    let mut query = Message::query();
    query.metadata.id = 0x4242;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_str(name).expect("a name"), RecordType::A));
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else { return Vec::new() };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    if socket.send_to(&query.to_vec().expect("encodes"), server).is_err() {
        return Vec::new();
    }
    let mut buf = [0u8; 2048];
    let Ok((len, _)) = socket.recv_from(&mut buf) else { return Vec::new() };
    let Ok(answer) = Message::from_vec(&buf[..len]) else { return Vec::new() };
    answer.answers.iter().filter_map(|r| if let RData::A(a) = &r.data { Some(a.0) } else { None }).collect()
}

/// TCP servers on [::] in far (dual-stack: IPv4 too; far routes
/// 198.19.0.0/16 to itself): accept, echo what they read, until dropped.
pub(crate) struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub(crate) fn start(far: &Netns, ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let listener = in_netns(far, || TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)))
                    .expect("binding a far server");
                listener.set_nonblocking(true).expect("nonblocking");
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((mut conn, _)) => {
                                std::thread::spawn(move || {
                                    let _ = conn.set_nonblocking(false);
                                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                                    let mut buf = [0u8; 256];
                                    while let Ok(n) = conn.read(&mut buf) {
                                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                });
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A veth pair with far routing 198.19.0.0/16 to itself, dnsmasq on far,
/// servers on [`PORT`] and [`OTHER_PORT`], a test cgroup, and a
/// resolv.conf naming far's dnsmasq.
struct Lab {
    pair: VethPair,
    dnsmasq: Dnsmasq,
    _servers: Servers,
    cgroup: TestCgroup,
    dir: TempDir,
    resolv_conf: PathBuf,
}

impl Lab {
    fn new(x: u8, hosts: &str) -> Self {
        Self::with_dnsmasq(x, hosts, &[])
    }

    fn with_dnsmasq(x: u8, hosts: &str, extra: &[String]) -> Self {
        harness::setup();
        let pair = VethPair::new(x);
        pair.far.ip(&["route", "add", "local", "198.19.0.0/16", "dev", "lo"]);
        pair.near.ip(&["route", "add", "198.19.0.0/16", "via", &pair.far4.to_string()]);
        let dnsmasq = Dnsmasq::start(&pair, hosts, extra);
        let servers = Servers::start(&pair.far, &[PORT, OTHER_PORT]);
        let dir = TempDir::new();
        // One attempt, short timeout: a refused query fails fast.
        let resolv_conf =
            dir.write("resolv.conf", &format!("nameserver {}\noptions timeout:2 attempts:2\n", pair.far4));
        Self { pair, dnsmasq, _servers: servers, cgroup: TestCgroup::new(), dir, resolv_conf }
    }

    fn policy(&self, phase_body: &str) -> PathBuf {
        self.dir.write("policy.yaml", &format!("name: names\nphases:\n  test:\n{phase_body}"))
    }

    /// `fw run` with its socket hooks on the test cgroup, once its DNS
    /// proxy listens.
    fn fw(&self, policy: &Path) -> Fw<'_> {
        let cg = self.cgroup.path.display().to_string();
        let extra: Vec<&std::ffi::OsStr> = vec!["--cgroup".as_ref(), cg.as_ref()];
        let fw = Fw::start_launch(
            &self.pair.near,
            &self.pair.near_if,
            policy,
            "test",
            Launch { extra: &extra, ..Launch::default() },
        );
        assert!(fw.log_has_within("DNS proxy listening", Duration::from_secs(10)), "{}", fw.log_text());
        fw
    }

    /// Runs `script` in the cgroup with the lab's resolv.conf; its stdout.
    fn client(&self, script: &str, args: &[String]) -> String {
        self.cgroup.python_output(&self.pair.near, &self.resolv_conf, script, args)
    }
}

/// Resolves each `NAME` (IPv4, through the system resolver: glibc reading
/// the bind-mounted resolv.conf) and connects to `ADDR:PORT` at once, or
/// connects to a literal `ADDR`; prints one line per argument:
/// `ARG ADDR ok|ERRNO`.
pub(crate) const CONNECT: &str = r#"
import errno, socket, sys
port = int(sys.argv[1])
for arg in sys.argv[2:]:
    name, _, p = arg.partition(":")
    p = int(p) if p else port
    try:
        addr = socket.getaddrinfo(name, p, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except OSError as e:
        print(arg, "-", "resolve:" + str(e), flush=True)
        continue
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(addr)
        result = "ok"
    except OSError as e:
        result = errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"
    s.close()
    print(arg, addr[0], result, flush=True)
"#;

fn connect_results(lab: &Lab, args: &[&str]) -> Vec<(String, String, String)> {
    let mut all = vec![PORT.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    lab.client(CONNECT, &all)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, ' ').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

fn egress(fw: &Fw, reason: &str) -> u64 {
    fw.drops().egress(reason).0
}

/// Behaviour 1: resolve and connect at once, 1,000 times, each time a name
/// never asked before (so an address never learned before) with TTL 1: no
/// connect ever fails, and fw counts no socket refusal and no drop.
#[test]
fn names_no_first_packet_race_in_1000_resolve_connect_iterations() {
    const ITERATIONS: usize = 1000;
    let hosts: String =
        (0..ITERATIONS).map(|i| format!("198.19.{}.{} i{i}.race.test\n", 10 + i / 250, 1 + i % 250)).collect();
    let lab = Lab::new(90, &hosts);
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [{}], min_ttl: 0 }}\n    egress:\n      - {{ name: race, to: [\"*.race.test\"], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let fw = lab.fw(&policy);
    const LOOP: &str = r#"
import errno, socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
failures = []
for i in range(n):
    name = "i%d.race.test" % i
    try:
        addr = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except OSError as e:
        failures.append("%s resolve %s" % (name, e))
        continue
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(addr)
    except OSError as e:
        failures.append("%s %s %s" % (name, addr[0], errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout"))
    finally:
        s.close()
print("iterations", n, "failures", len(failures))
for f in failures[:20]:
    print(f)
"#;
    let out = lab.client(LOOP, &[ITERATIONS.to_string(), PORT.to_string()]);
    println!("{out}");
    assert!(out.starts_with(&format!("iterations {ITERATIONS} failures 0")), "{out}\n{}", fw.log_text());
    assert_eq!(egress(&fw, "drop_socket"), 0, "a connect was refused");
    assert_eq!(egress(&fw, "drop_default"), 0, "a packet was dropped");
    let drops = fw.drops();
    // Every connection was opened by the name rule (its SYN), and the
    // proxy's queries left as pass_resolver (fewer than the queries: a
    // reused source port finds its flow still tracked).
    assert!(drops.egress("pass_rule").0 >= ITERATIONS as u64, "{drops:#?}");
    assert!(drops.rule("race").packets >= ITERATIONS as u64, "{drops:#?}");
    assert!(drops.egress("pass_resolver").0 > 0, "{drops:#?}");
}

/// Behaviour 2: an address never answered is denied even on the rule's
/// port; an answered address is denied on a port the rule does not list; a
/// name no rule mentions resolves (queries: any) but opens nothing.
#[test]
fn names_allow_only_answered_addresses_on_the_rules_ports() {
    let lab = Lab::new(91, "198.19.200.1 api.known.test\n198.19.200.3 other.test\n");
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [{}] }}\n    egress:\n      - {{ name: api, to: [api.known.test], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let fw = lab.fw(&policy);
    let results = connect_results(
        &lab,
        &[
            "198.19.200.1",
            "api.known.test",
            "198.19.200.1",
            &format!("api.known.test:{OTHER_PORT}"),
            "198.19.200.2",
            "other.test",
        ],
    );
    let result = |i: usize| (results[i].1.as_str(), results[i].2.as_str());
    // Before any answer, the address is not allowed.
    assert_eq!(result(0), ("198.19.200.1", "EPERM"), "{results:?}");
    assert_eq!(result(1), ("198.19.200.1", "ok"), "{results:?}\n{}", fw.log_text());
    assert_eq!(result(2), ("198.19.200.1", "ok"), "learned: the literal address works now");
    assert_eq!(result(3), ("198.19.200.1", "EPERM"), "a port the rule does not list");
    assert_eq!(result(4), ("198.19.200.2", "EPERM"), "never answered");
    assert_eq!(result(5), ("198.19.200.3", "EPERM"), "answered, but for a name no rule mentions");
    assert_eq!(egress(&fw, "drop_default"), 0, "the hooks refused every denied call before a packet left");
}

/// Behaviour 3: after the answer rotates, the new address works at once;
/// the old one keeps the connection already open, and refuses new ones
/// once its TTL (with the floor, here 2 s) has run out.
#[test]
fn names_rotation_and_expiry_keep_open_connections() {
    let lab = Lab::new(92, "198.19.201.1 rotate.test\n");
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [{}], min_ttl: 2 }}\n    egress:\n      - {{ name: rot, to: [rotate.test], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let fw = lab.fw(&policy);
    // A client that resolves, connects, reports, then echoes through the
    // open connection each time it reads a line on stdin.
    const HOLD: &str = r#"
import socket, sys
addr = socket.getaddrinfo("rotate.test", int(sys.argv[1]), socket.AF_INET, socket.SOCK_STREAM)[0][4]
s = socket.create_connection(addr, timeout=5)
print("connected", addr[0], flush=True)
for line in sys.stdin:
    s.sendall(b"ping")
    print("echo", s.recv(16).decode(), flush=True)
"#;
    let mut holder = lab
        .cgroup
        .python_with_resolv_conf(&lab.pair.near, &lab.resolv_conf, HOLD, &[PORT.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the holding client");
    let mut to_holder = holder.stdin.take().expect("stdin");
    let mut from_holder = std::io::BufReader::new(holder.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut from_holder, &mut line).expect("holder output");
    assert_eq!(line.trim(), "connected 198.19.201.1", "{}", fw.log_text());

    lab.dnsmasq.rewrite("198.19.201.2 rotate.test\n");
    let server = SocketAddr::new(lab.pair.far4.into(), 53);
    let rotated = poll(Duration::from_secs(10), || {
        in_netns(&lab.pair.near, || resolve_a(server, "rotate.test") == [Ipv4Addr::new(198, 19, 201, 2)])
    });
    assert!(rotated, "dnsmasq did not pick up the new answer");
    let results = connect_results(&lab, &["rotate.test"]);
    assert_eq!((results[0].1.as_str(), results[0].2.as_str()), ("198.19.201.2", "ok"), "the new address works at once");

    // The old address expires (TTL 1 s, floor 2 s): new connections to it
    // are refused from then on.
    let expired = poll(Duration::from_secs(15), || connect_results(&lab, &["198.19.201.1"])[0].2 == "EPERM");
    assert!(expired, "the old address stayed allowed past its TTL");
    // The connection opened while it was allowed still works.
    writeln!(to_holder).expect("to the holder");
    line.clear();
    std::io::BufRead::read_line(&mut from_holder, &mut line).expect("holder output");
    assert_eq!(line.trim(), "echo ping", "the open connection was cut");
    drop(to_holder);
    let _ = holder.wait();
}

/// Behaviour 5 (and 6): DNS to a resolver the phase does not name fails
/// with EPERM from a local socket and is dropped on the wire; with
/// `queries: policy`, a name no rule mentions gets REFUSED, seemingly from
/// the resolver asked; DNS over TCP goes through the proxy and teaches
/// addresses too (and getpeername() shows the resolver).
#[test]
fn names_unnamed_resolvers_are_refused_and_tcp_dns_teaches() {
    let lab = Lab::new(93, "198.19.202.1 tcp.allowed.test\n198.19.202.9 tunnel.test\n");
    let unnamed = Ipv4Addr::new(198, 18, 93, 3);
    lab.pair.far.ip(&["addr", "add", &format!("{unnamed}/24"), "dev", &lab.pair.far_if]);
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [{}], queries: policy }}\n    egress:\n      - {{ name: t, to: [\"*.allowed.test\"], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let fw = lab.fw(&policy);
    const DNS: &str = r#"
import errno, socket, struct, sys
far, unnamed, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)
# To a resolver the phase does not name: refused locally.
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(query("tcp.allowed.test", 1), (unnamed, 53))
    print("unnamed sent")
except OSError as e:
    print("unnamed", errno.errorcode.get(e.errno))
# queries: policy: an unmentioned name is REFUSED, from the resolver asked.
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(query("tunnel.test", 2), (far, 53))
data, source = s.recvfrom(4096)
print("policy rcode", data[3] & 15, "from", source[0], source[1])
# DNS over TCP: answered through the proxy, and it teaches the address.
t = socket.create_connection((far, 53), timeout=3)
print("tcp peer", *t.getpeername())
q = query("tcp.allowed.test", 3)
t.sendall(struct.pack(">H", len(q)) + q)
n = struct.unpack(">H", t.recv(2))[0]
data = b""
while len(data) < n:
    data += t.recv(n - len(data))
print("tcp rcode", data[3] & 15, "answers", struct.unpack(">H", data[6:8])[0])
c = socket.socket()
c.settimeout(2)
try:
    c.connect(("198.19.202.1", port))
    print("learned ok")
except OSError as e:
    print("learned", errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
"#;
    let far = lab.pair.far4.to_string();
    let out = lab.client(DNS, &[far.clone(), unnamed.to_string(), PORT.to_string()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "unnamed EPERM", "{out}");
    assert_eq!(lines[1], format!("policy rcode 5 from {far} 53"), "{out}");
    assert_eq!(lines[2], format!("tcp peer {far} 53"), "{out}");
    assert_eq!(lines[3], "tcp rcode 0 answers 1", "{out}\n{}", fw.log_text());
    assert_eq!(lines[4], "learned ok", "{out}");
    assert!(egress(&fw, "drop_socket") >= 1);

    // On the wire (a socket outside the hooked cgroup): dropped.
    let before = egress(&fw, "drop_default");
    let sent = in_netns(&lab.pair.near, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("a socket");
        s.send_to(
            b"\x00\x05\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x00\x00\x01\x00\x01",
            (IpAddr::from(unnamed), 53),
        )
        .is_ok()
    });
    assert!(sent);
    let dropped = poll(Duration::from_secs(5), || egress(&fw, "drop_default") > before);
    assert!(dropped, "DNS to an unnamed resolver left the host");
}

/// `fw names --json` of the lab's instance.
fn names_json(fw: &Fw) -> serde_json::Value {
    let out = fw.cli(&["names", "--json"]);
    assert!(out.status.success(), "fw names: {out:?}");
    serde_json::from_str(&out.stdout).expect("fw names --json prints JSON")
}

/// (address, names) of each learned address `fw names` lists.
fn learned(fw: &Fw) -> Vec<(String, Vec<String>)> {
    names_json(fw)["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let names =
                e["names"].as_array().expect("names").iter().map(|n| n.as_str().expect("a name").to_string()).collect();
            (e["address"].as_str().expect("an address").to_string(), names)
        })
        .collect()
}

/// Resolves each name (through the system resolver), prints `NAME ok` or
/// `NAME fail`.
const RESOLVE: &str = r#"
import socket, sys
for name in sys.argv[1:]:
    try:
        socket.getaddrinfo(name, 1, socket.AF_INET, socket.SOCK_STREAM)
        print(name, "ok", flush=True)
    except OSError:
        print(name, "fail", flush=True)
"#;

/// Resolves `rotate.test`-style `NAME`, connects, prints `connected ADDR`,
/// then holds the connection open until stdin closes.
const HOLD_OPEN: &str = r#"
import socket, sys
addr = socket.getaddrinfo(sys.argv[1], int(sys.argv[2]), socket.AF_INET, socket.SOCK_STREAM)[0][4]
s = socket.create_connection(addr, timeout=5)
print("connected", addr[0], flush=True)
sys.stdin.read()
"#;

/// Behaviour 9: memory is bounded. A name answering six addresses keeps
/// four (`max_addresses_per_name`); a flood of subdomains under an allowed
/// wildcard keeps the total at eight (`max_addresses`), evicting the least
/// recently answered, never the address a live connection uses; evictions
/// are counted, and an evicted address is refused again.
#[test]
fn names_memory_stays_within_the_caps_and_spares_live_connections() {
    let mut hosts: String = (1..=6).map(|i| format!("198.19.210.{i} cdn.test\n")).collect();
    hosts.extend((0..20).map(|i| format!("198.19.211.{} f{i}.flood.test\n", i + 1)));
    let lab = Lab::new(94, &hosts);
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [{}], min_ttl: 600, max_addresses_per_name: 4, max_addresses: 8 }}\n    egress:\n      \
         - {{ name: cdn, to: [cdn.test], proto: tcp, ports: [{PORT}] }}\n      \
         - {{ name: flood, to: [\"*.flood.test\"], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let fw = lab.fw(&policy);
    assert_eq!(lab.client(RESOLVE, &["cdn.test".into()]).trim(), "cdn.test ok");
    let cdn: Vec<(String, Vec<String>)> =
        learned(&fw).into_iter().filter(|(_, n)| n.contains(&"cdn.test".to_string())).collect();
    assert_eq!(cdn.len(), 4, "one name keeps max_addresses_per_name addresses: {cdn:?}");
    assert_eq!(names_json(&fw)["over_cap"], 2, "the two answered past the cap are not learned");

    // A live connection to the first flood address.
    let mut holder = lab
        .cgroup
        .python_with_resolv_conf(
            &lab.pair.near,
            &lab.resolv_conf,
            HOLD_OPEN,
            &["f0.flood.test".into(), PORT.to_string()],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the holding client");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().expect("stdout")), &mut line)
        .expect("holder output");
    assert_eq!(line.trim(), "connected 198.19.211.1", "{}", fw.log_text());

    let flood: Vec<String> = (1..20).map(|i| format!("f{i}.flood.test")).collect();
    let resolved = lab.client(RESOLVE, &flood);
    assert_eq!(resolved.matches(" ok").count(), 19, "{resolved}");
    let now = learned(&fw);
    let report = names_json(&fw);
    println!("after the flood: {} learned, {} evicted: {now:?}", now.len(), report["evicted"]);
    assert_eq!(now.len(), 8, "max_addresses holds: {now:?}");
    assert!(now.iter().any(|(a, _)| a == "198.19.211.1"), "the address of a live connection was evicted: {now:?}");
    assert!(
        now.iter().all(|(_, n)| !n.contains(&"cdn.test".to_string())),
        "the least recently answered go first: {now:?}"
    );
    assert!(report["evicted"].as_u64().unwrap() >= 15, "{report}");
    let status = fw.status_json();
    assert_eq!(status["learned_addresses"], 8, "the kernel maps hold what the ledger says: {status}");
    // An evicted address is refused again; the kept ones work.
    let results = connect_results(&lab, &["198.19.211.2", "198.19.211.20", "198.19.210.1"]);
    let verdicts: Vec<&str> = results.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(verdicts, ["EPERM", "ok", "EPERM"], "{results:?}");
    drop(holder.stdin.take());
    let _ = holder.wait();
}

/// Behaviour 8: learned state outlives the daemon. After `kill -9`, an
/// address learned before stays allowed (the kernel checks its expiry),
/// nothing new can be learned (names fail closed: resolution fails, the
/// kernel allows nothing unseen); `fw run` again answers DNS as soon as it
/// is ready and still knows which name the old address was learned for.
#[test]
fn names_learned_state_survives_a_daemon_restart_and_fails_closed_without_one() {
    let lab = Lab::new(95, "198.19.212.1 keep.test\n198.19.212.2 later.test\n");
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [{}], min_ttl: 600 }}\n    egress:\n      - {{ name: kept, to: [keep.test, later.test], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let mut fw = lab.fw(&policy);
    let results = connect_results(&lab, &["keep.test"]);
    assert_eq!((results[0].1.as_str(), results[0].2.as_str()), ("198.19.212.1", "ok"), "{}", fw.log_text());
    // The names are saved with the sweep (every 10 s).
    let names_file = PathBuf::from(format!("/run/fw/{}.names.json", fw.name()));
    let saved =
        poll(Duration::from_secs(30), || fs::read_to_string(&names_file).is_ok_and(|t| t.contains("keep.test")));
    assert!(saved, "{} never named keep.test", names_file.display());

    fw.kill_run_process();
    let results = connect_results(&lab, &["198.19.212.1", "198.19.212.2"]);
    let verdicts: Vec<&str> = results.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(verdicts, ["ok", "EPERM"], "learned stays allowed, unlearned stays refused: {results:?}");
    assert_eq!(lab.client(RESOLVE, &["later.test".into()]).trim(), "later.test fail", "no daemon: no name resolves");

    let restarted = std::time::Instant::now();
    fw.start_again();
    assert!(fw.log_has_within("DNS proxy listening", Duration::from_secs(10)), "{}", fw.log_text());
    let resolves =
        poll(Duration::from_secs(10), || lab.client(RESOLVE, &["later.test".into()]).trim() == "later.test ok");
    println!("DNS answered again {:?} after `fw run` was started again", restarted.elapsed());
    assert!(resolves, "{}", fw.log_text());
    assert!(fw.log_text().contains("addresses learned before this start stay allowed"), "{}", fw.log_text());
    let now = learned(&fw);
    assert!(now.contains(&("198.19.212.1".to_string(), vec!["keep.test".to_string()])), "{now:?}");
    assert!(now.contains(&("198.19.212.2".to_string(), vec!["later.test".to_string()])), "{now:?}");
    let text = fw.cli(&["names"]);
    assert!(text.status.success() && text.stdout.contains("keep.test") && text.stdout.contains("kept"), "{text:?}");
}

/// Behaviour 5, continued: with `refuse_with: nxdomain` a name no rule
/// mentions gets NXDOMAIN and a `dns_refused` drop event naming it; DNS
/// over TLS (TCP 853) reaches the phase's resolver but nothing else.
#[test]
fn names_refusals_are_drop_events_and_dot_reaches_only_the_resolvers() {
    let lab = Lab::new(96, "198.19.213.1 a.allowed.test\n198.19.213.9 tunnel.test\n");
    let unnamed = Ipv4Addr::new(198, 18, 96, 3);
    lab.pair.far.ip(&["addr", "add", &format!("{unnamed}/24"), "dev", &lab.pair.far_if]);
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [{}], queries: policy, refuse_with: nxdomain }}\n    egress:\n      \
         - {{ name: t, to: [\"*.allowed.test\"], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let fw = lab.fw(&policy);
    const PROBE: &str = r#"
import errno, socket, struct, sys
far, unnamed = sys.argv[1], sys.argv[2]
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
for label in "tunnel.test".split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (far, 53))
print("rcode", s.recv(512)[3] & 15, flush=True)
for target in (far, unnamed):
    c = socket.socket()
    c.settimeout(2)
    try:
        c.connect((target, 853))
        print("dot", target, "connected")
    except OSError as e:
        print("dot", target, errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
"#;
    let far = lab.pair.far4.to_string();
    let out = lab.client(PROBE, &[far.clone(), unnamed.to_string()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "rcode 3", "{out}");
    // Nothing listens on far:853: refused by far, so it left the host.
    assert_eq!(lines[1], format!("dot {far} ECONNREFUSED"), "{out}");
    assert_eq!(lines[2], format!("dot {unnamed} EPERM"), "{out}");
    let drops = fw.cli(&["drops", "--since", "1h", "--json"]);
    assert!(drops.status.success(), "{drops:?}");
    let report: serde_json::Value = serde_json::from_str(&drops.stdout).expect("JSON");
    let refused: Vec<&serde_json::Value> =
        report["events"].as_array().expect("events").iter().filter(|e| e["reason"] == "dns_refused").collect();
    assert_eq!(refused.len(), 1, "{report}");
    assert_eq!(refused[0]["dns_name"], "tunnel.test");
    assert_eq!(refused[0]["dst"], far.as_str());
    let text = fw.cli(&["drops", "--since", "1h"]);
    assert!(text.stdout.contains("drop (dns_refused)") && text.stdout.contains("query tunnel.test"), "{text:?}");
}

/// Behaviour 7: an application that asks a local stub resolver (here a
/// dnsmasq on 127.0.0.53 forwarding to far's, as systemd-resolved does)
/// goes through fw's proxy first: the answer is learned for it, and with
/// `queries: policy` a name no rule mentions is refused before the stub
/// sees it, as a `dns_refused` event.
#[test]
fn names_through_a_local_stub_are_learned_for_the_application() {
    let lab = Lab::new(97, "198.19.214.1 app.stub.test\n198.19.214.9 other.test\n");
    let stub_dir = TempDir::new();
    let stub_log = stub_dir.path().join("stub.log");
    let mut stub = Guarded(
        dnsmasq::command(&lab.pair.near)
            .args(["--listen-address=127.0.0.53", "--cache-size=0", "--log-queries", "--log-facility=-"])
            .arg(format!("--server={}", lab.pair.far4))
            .arg(format!("--pid-file={}", stub_dir.path().join("pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stub_log).expect("stub log"))
            .spawn()
            .expect("starting the stub dnsmasq"),
    );
    let stub_addr: SocketAddr = "127.0.0.53:53".parse().unwrap();
    let ready = poll(Duration::from_secs(10), || {
        in_netns(&lab.pair.near, || !resolve_a(stub_addr, "app.stub.test").is_empty())
    });
    assert!(ready, "the stub did not answer");
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [127.0.0.53, {}], queries: policy }}\n    egress:\n      - {{ name: app, to: [app.stub.test], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let fw = lab.fw(&policy);
    let resolv_conf = lab.dir.write("stub-resolv.conf", "nameserver 127.0.0.53\noptions timeout:2 attempts:1\n");
    let out = lab
        .cgroup
        .python_with_resolv_conf(
            &lab.pair.near,
            &resolv_conf,
            CONNECT,
            &[PORT.to_string(), "app.stub.test".into(), "other.test".into()],
        )
        .stdin(Stdio::null())
        .output()
        .expect("running the client");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some("app.stub.test 198.19.214.1 ok"), "{out}\n{}", fw.log_text());
    assert!(lines.get(1).is_some_and(|l| l.starts_with("other.test - resolve:")), "{out}");
    let now = learned(&fw);
    assert_eq!(now, vec![("198.19.214.1".to_string(), vec!["app.stub.test".to_string()])]);
    let drops = fw.cli(&["drops", "--since", "1h", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&drops.stdout).expect("JSON");
    let refused: Vec<&serde_json::Value> =
        report["events"].as_array().expect("events").iter().filter(|e| e["reason"] == "dns_refused").collect();
    assert!(
        !refused.is_empty() && refused.iter().all(|e| e["dns_name"] == "other.test" && e["dst"] == "127.0.0.53"),
        "{report}"
    );
    let stub_saw = fs::read_to_string(&stub_log).unwrap_or_default();
    assert!(
        stub_saw.contains("app.stub.test") && !stub_saw.contains("other.test"),
        "the stub saw a refused query:\n{stub_saw}"
    );
    stub.0.kill().ok();
}

/// Behaviour 4, end to end: addresses are attributed to the question. A
/// name inside the pattern whose answer goes through a CNAME outside it is
/// learned (the lowest TTL of the chain applies); a name outside the
/// pattern whose CNAME points inside it teaches nothing.
#[test]
fn names_wildcards_follow_cname_chains_by_the_question() {
    let lab = Lab::with_dnsmasq(
        98,
        "198.19.215.1 edge.cdn.test\n198.19.215.2 b.media.test\n",
        &["--cname=a.media.test,edge.cdn.test".to_string(), "--cname=x.outside.test,b.media.test".to_string()],
    );
    let policy = lab.policy(&format!(
        "    dns: {{ resolvers: [{}] }}\n    egress:\n      - {{ name: media, to: [\"*.media.test\"], proto: tcp, ports: [{PORT}] }}\n",
        lab.pair.far4
    ));
    let fw = lab.fw(&policy);
    let results = connect_results(&lab, &["a.media.test", "x.outside.test", "198.19.215.2"]);
    let got: Vec<(&str, &str)> = results.iter().map(|r| (r.1.as_str(), r.2.as_str())).collect();
    assert_eq!(
        got,
        [("198.19.215.1", "ok"), ("198.19.215.2", "EPERM"), ("198.19.215.2", "EPERM")],
        "in through a CNAME: learned; out through a CNAME: not\n{}",
        fw.log_text()
    );
    assert_eq!(learned(&fw), vec![("198.19.215.1".to_string(), vec!["a.media.test".to_string()])]);
}

/// Behaviour 10: a phase switch keeps what was learned for the rules the
/// new phase still has, and drops the rest: in the kernel at once (the
/// dropped rule's name class has no entries under the new generation),
/// and from `fw names` once the proxy sees the new phase.
#[test]
fn names_a_switch_keeps_what_the_new_phase_still_allows() {
    let lab = Lab::new(99, "198.19.216.1 keep.test\n198.19.216.2 gone.test\n198.19.216.3 later.test\n");
    let policy = lab.dir.write(
        "policy.yaml",
        &format!(
            "name: names\nphases:\n  base:\n    dns: {{ resolvers: [{}], min_ttl: 600 }}\n    egress:\n      \
             - {{ name: keep, to: [keep.test, later.test], proto: tcp, ports: [{PORT}] }}\n  \
             a:\n    extends: base\n    egress:\n      - {{ name: gone, to: [gone.test], proto: tcp, ports: [{PORT}] }}\n  \
             b:\n    extends: base\n",
            lab.pair.far4
        ),
    );
    let cg = lab.cgroup.path.display().to_string();
    let extra: Vec<&std::ffi::OsStr> = vec!["--cgroup".as_ref(), cg.as_ref()];
    let fw = Fw::start_launch(
        &lab.pair.near,
        &lab.pair.near_if,
        &policy,
        "a",
        Launch { extra: &extra, ..Launch::default() },
    );
    assert!(fw.log_has_within("DNS proxy listening", Duration::from_secs(10)), "{}", fw.log_text());
    let verdicts = |args: &[&str]| connect_results(&lab, args).into_iter().map(|r| r.2).collect::<Vec<_>>();
    assert_eq!(verdicts(&["keep.test", "gone.test"]), ["ok", "ok"], "{}", fw.log_text());

    let switched = fw.cli(&["switch", "b"]);
    assert!(switched.status.success(), "{switched:?}");
    assert_eq!(verdicts(&["198.19.216.1", "198.19.216.2"]), ["ok", "EPERM"], "kept for keep, gone with its rule");
    // A query makes the proxy read the new phase; its ledger follows.
    assert_eq!(verdicts(&["later.test"]), ["ok"]);
    let now = learned(&fw);
    assert!(now.iter().any(|(a, _)| a == "198.19.216.1"), "{now:?}");
    assert!(!now.iter().any(|(a, _)| a == "198.19.216.2"), "the dropped rule's address is still listed: {now:?}");
}
