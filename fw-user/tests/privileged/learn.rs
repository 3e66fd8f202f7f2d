//! Issue 12, finding 5: `fw learn` on a server that serves clients while it
//! downloads. The old learning phase passed the clients' packets under its
//! inbound default without opening flows, so the server's replies were
//! would-drops, learned as egress rules to the clients' ephemeral ports;
//! and since audit mode tracked no flows, every ACK of the download was an
//! event, sharing one budget with everything else.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use crate::{
    harness::{
        self,
        cgroup::{with_resolv_conf, TestCgroup},
        fw::{fw, Fw, Launch, Learning, FW},
        netns::VethPair,
        poll,
        stream::{tcp_connect_from, Download, End, TcpSource},
        traffic::{in_netns, tcp_echo, udp_echo, Echo, Outcome, PASS_TIMEOUT},
        TempDir,
    },
    names::{resolve_a, Dnsmasq, Servers, CONNECT},
};

/// The far side's destinations this host opens (besides the download).
const FAR_TCP: [u16; 3] = [7001, 7002, 7003];
const FAR_UDP: [u16; 4] = [6001, 6002, 6003, 6004];
/// What this host serves.
const SERVED_TCP: u16 = 8080;
const SERVED_UDP: u16 = 5005;
/// Served too, to a client connected before learning began.
const SERVED_BEFORE: u16 = 8443;
const MIRROR: u16 = 80;
const DOWNLOAD_BYTES: usize = 200 << 20;
/// A destination this host sends a burst of new flows to, and one it
/// reaches once, after the burst.
const CHATTY: u16 = 6010;
const RARE: u16 = 6099;
const BURST_FLOWS: usize = 5000;

#[test]
fn finding5_learn_under_load_learns_only_what_this_host_opens() {
    harness::setup();
    let pair = VethPair::new(85);
    let far = IpAddr::from(pair.far4);
    let near = IpAddr::from(pair.near4);
    let dir = TempDir::new();
    let learned = dir.path().join("learned.yaml");

    // The far side: a mirror streaming the download, and echo servers.
    let _mirror = TcpSource::new(&pair.far, SocketAddr::new(far, MIRROR), Some(DOWNLOAD_BYTES));
    let mut far_servers: Vec<Echo> = FAR_TCP.iter().map(|p| Echo::tcp(&pair.far, SocketAddr::new(far, *p))).collect();
    far_servers.extend(FAR_UDP.iter().chain(&[RARE]).map(|p| Echo::udp(&pair.far, SocketAddr::new(far, *p))));
    // This host's services.
    let served_tcp = Echo::tcp(&pair.near, SocketAddr::new(near, SERVED_TCP));
    let served_udp = Echo::udp(&pair.near, SocketAddr::new(near, SERVED_UDP));
    // Its server echoes for as long as the client stays (the harness's echo
    // server hangs up after 3 quiet seconds, and under load `fw learn` can
    // take longer than that to start).
    let listener = in_netns(&pair.near, || std::net::TcpListener::bind(SocketAddr::new(near, SERVED_BEFORE)))
        .expect("binding the old client's server");
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else { return };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(300)));
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            if conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    // A client connection older than the learning: the server's segments on
    // it have no flow (its handshake was never seen).
    let mut old_client =
        in_netns(&pair.far, || TcpStream::connect_timeout(&SocketAddr::new(near, SERVED_BEFORE), PASS_TIMEOUT))
            .expect("a client connected before learning");
    old_client.set_read_timeout(Some(PASS_TIMEOUT)).unwrap();

    let mut learning = Learning::start(&pair.near, &pair.near_if, "none", "3m", &learned, dir.path().join("learn.log"));

    // Load: the download runs while clients use this host's services and
    // this host reaches its other destinations.
    let started = Instant::now();
    let conn =
        tcp_connect_from(&pair.near, SocketAddr::new(far, MIRROR), 0, PASS_TIMEOUT).expect("the download connects");
    let download = Download::start(conn);
    let mut client_echoes = 0;
    for round in 0..10 {
        for _ in 0..3 {
            let served = in_netns(&pair.far, || tcp_echo(SocketAddr::new(near, SERVED_TCP), PASS_TIMEOUT));
            assert_eq!(served, Outcome::Echoed, "round {round}: a client of {SERVED_TCP}/tcp");
            let served = in_netns(&pair.far, || udp_echo(SocketAddr::new(near, SERVED_UDP), PASS_TIMEOUT));
            assert_eq!(served, Outcome::Echoed, "round {round}: a client of {SERVED_UDP}/udp");
            client_echoes += 2;
        }
        old_client.write_all(b"still here").expect("the old client writes");
        let mut back = [0u8; 10];
        old_client.read_exact(&mut back).expect("the old connection is echoed");
        let port = FAR_TCP[round % FAR_TCP.len()];
        assert_eq!(in_netns(&pair.near, || tcp_echo(SocketAddr::new(far, port), PASS_TIMEOUT)), Outcome::Echoed);
        let port = FAR_UDP[round % FAR_UDP.len()];
        assert_eq!(in_netns(&pair.near, || udp_echo(SocketAddr::new(far, port), PASS_TIMEOUT)), Outcome::Echoed);
    }
    // A chatty destination: thousands of new flows in a burst (each from a
    // socket of its own), then a destination reached once. With one budget
    // for every event the burst used it up and the rare one could vanish;
    // per destination, the burst is sampled and the rare one is learned.
    let burst = in_netns(&pair.near, || {
        let mut sent = 0;
        for _ in 0..BURST_FLOWS {
            let socket = UdpSocket::bind((IpAddr::from([0u8; 4]), 0)).expect("a udp socket");
            sent += usize::from(socket.send_to(b"x", SocketAddr::new(far, CHATTY)).is_ok());
        }
        sent
    });
    assert_eq!(burst, BURST_FLOWS, "learning blocks nothing");
    assert_eq!(in_netns(&pair.near, || udp_echo(SocketAddr::new(far, RARE), PASS_TIMEOUT)), Outcome::Echoed);
    assert!(
        download.wait(Duration::from_secs(60), |d| d.end() != End::Running),
        "the download did not finish ({} bytes)",
        download.bytes()
    );
    assert_eq!((download.end(), download.bytes()), (End::Eof, DOWNLOAD_BYTES as u64), "learning blocks nothing");
    let load_time = started.elapsed();

    learning.interrupt();
    let log_text = || learning.log_text();
    assert!(!Path::new("/sys/fs/bpf/fw").join(&learning.name).exists(), "the learning instance must be removed");
    let text = fs::read_to_string(&learned).expect("the learned policy");
    println!("learned policy:\n{text}\nfw learn said:\n{}", log_text());
    println!(
        "load: {} MiB downloaded, {client_echoes} client echoes, {} tcp / {} udp served, in {load_time:.1?}",
        DOWNLOAD_BYTES >> 20,
        served_tcp.received(),
        served_udp.received()
    );

    // What this host opened, and only that, is egress.
    let egress = &text[text.find("egress:").expect("an egress section")..];
    let mut expected: Vec<String> = vec![format!("proto: tcp, ports: [{MIRROR}, {}-{}]", FAR_TCP[0], FAR_TCP[2])];
    expected.push(format!("proto: udp, ports: [{}-{}, {CHATTY}, {RARE}]", FAR_UDP[0], FAR_UDP[3]));
    for e in &expected {
        assert!(egress.contains(e), "missing `{e}` in the egress:\n{egress}");
    }
    let egress_rules = egress.lines().filter(|l| l.trim_start().starts_with("- {")).count();
    assert_eq!(egress_rules, 2, "one rule per protocol to the far host, nothing to clients:\n{egress}");
    // What it served is inbound, never egress to the clients' ports.
    assert!(text.contains(&format!("- {{ name: served-tcp, proto: tcp, ports: [{SERVED_TCP}] }}")), "{text}");
    assert!(text.contains(&format!("- {{ name: served-udp, proto: udp, ports: [{SERVED_UDP}] }}")), "{text}");
    // Counted: one event per flow this host opened, nothing unseen.
    let events = header_number(&text, "# Events: ", " read");
    let suppressed = header_number(&text, " read, ", " over the per-destination budget");
    let lost = header_number(&text, "budget, ", " lost");
    println!("events: {events} read, {suppressed} suppressed, {lost} lost");
    assert_eq!(lost, 0, "{text}");
    // The burst was sampled, and said so: every destination is learned.
    assert!(suppressed > 0, "{BURST_FLOWS} new flows to one destination in a burst: some over its budget\n{text}");
    assert!(log_text().contains("events were over a destination's budget"), "{}", log_text());
    // One event per flow, not per packet (200 MiB of ACKs), and the burst
    // at most its budget (100 a second per CPU) for its few seconds.
    assert!(events < 2000, "{events} events\n{text}");

    let check = fw(&pair.near, &["check", learned.to_str().unwrap(), "--phase", "learned"]);
    assert!(check.status.success(), "fw check must accept the learned policy: {check:#?}");
    drop(far_servers);
}

/// The number between `before` and `after` in the learned policy's header.
fn header_number(text: &str, before: &str, after: &str) -> u64 {
    let start = text.find(before).unwrap_or_else(|| panic!("no `{before}` in:\n{text}")) + before.len();
    let rest = &text[start..];
    let end = rest.find(after).unwrap_or_else(|| panic!("no `{after}` after `{before}` in:\n{text}"));
    rest[..end].trim().parse().unwrap_or_else(|e| panic!("`{}`: {e}", &rest[..end]))
}

/// The far servers of the names test: every 198.19.230.x address is far's.
const NAMED_PORT: u16 = 8443;
const NAME: &str = "media.learn.test";
/// The two addresses the name's answer rotates between, and a literal.
const ROTATION: [&str; 2] = ["198.19.230.1", "198.19.230.2"];
const LITERAL: &str = "198.19.230.9";
/// An address nothing in the learning reached.
const UNSEEN: &str = "198.19.230.50";

/// `fw run` of the learned phase of `learned` on `pair`'s near side, its
/// socket hooks on `cgroup`, its system resolvers those of `resolv_conf`.
fn enforce_learned<'a>(pair: &'a VethPair, learned: &Path, resolv_conf: &Path, cgroup: &TestCgroup) -> Fw<'a> {
    let wrapper = with_resolv_conf(resolv_conf);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let cg = cgroup.path.display().to_string();
    let extra: Vec<&std::ffi::OsStr> = vec!["--cgroup".as_ref(), cg.as_ref()];
    let launch = Launch { extra: &extra, wrapper: &wrapper, ..Launch::default() };
    Fw::start_launch(&pair.near, &pair.near_if, learned, "learned", launch)
}

/// `fw learn` on `pair`'s near side with its socket hooks on `cgroup`,
/// seeing `resolv_conf`'s nameserver as the system resolver, with `env`
/// set for it alone; started once its log says it learns.
fn learn_with_resolv_conf(
    pair: &VethPair,
    cgroup: &TestCgroup,
    resolv_conf: &Path,
    output: &Path,
    log: std::path::PathBuf,
    env: &[(&str, String)],
) -> Learning {
    let name = harness::unique_name();
    let cg = cgroup.path.display().to_string();
    let mut cmd = pair.near.command("unshare");
    cmd.args(&with_resolv_conf(resolv_conf)[1..])
        .arg(FW)
        .args(["learn", "--iface", &pair.near_if, "--name", &name, "--cgroup", &cg, "--duration", "3m", "-o"])
        .arg(output)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("learn log"));
    let learning = Learning { child: cmd.spawn().expect("starting fw learn"), name, log };
    let started = poll(Duration::from_secs(30), || learning.log_text().contains("fw: learning"));
    assert!(started, "fw learn did not start:\n{}", learning.log_text());
    learning
}

/// Issue 14: with socket hooks on a cgroup, `fw learn` sees the DNS
/// answers its processes get and writes what they connected to after an
/// answer as one rule for the name (the answer rotated between two
/// addresses), a literal address as an address rule, and `dns:` for the
/// resolvers; the learned policy, enforced, lets the same process resolve
/// and connect again, and refuses what was never seen.
#[test]
fn learn_names_follow_dns_answers_into_name_rules() {
    harness::setup();
    let pair = VethPair::new(100);
    pair.far.ip(&["route", "add", "local", "198.19.0.0/16", "dev", "lo"]);
    pair.near.ip(&["route", "add", "198.19.0.0/16", "via", &pair.far4.to_string()]);
    let hosts = |i: usize| format!("{} {NAME}\n", ROTATION[i % 2]);
    let dnsmasq = Dnsmasq::start(&pair, &hosts(0), &[]);
    let _servers = Servers::start(&pair.far, &[NAMED_PORT]);
    let cgroup = TestCgroup::new();
    let dir = TempDir::new();
    let resolv_conf = dir.write("resolv.conf", &format!("nameserver {}\noptions timeout:2 attempts:2\n", pair.far4));
    let learned = dir.path().join("learned.yaml");
    let server = SocketAddr::new(pair.far4.into(), 53);
    let client = |args: &[&str]| -> Vec<(String, String, String)> {
        let mut all = vec![NAMED_PORT.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        cgroup
            .python_output(&pair.near, &resolv_conf, CONNECT, &all)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.splitn(3, ' ').collect();
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect()
    };
    // The answer now is `ROTATION[i % 2]` (dnsmasq re-read its hosts file).
    let rotate = |i: usize| {
        dnsmasq.rewrite(&hosts(i));
        let want: Ipv4Addr = ROTATION[i % 2].parse().unwrap();
        let now = poll(Duration::from_secs(10), || in_netns(&pair.near, || resolve_a(server, NAME)) == [want]);
        assert!(now, "dnsmasq did not answer {want} for {NAME}");
    };

    // `fw learn` with its socket hooks on the cgroup, seeing the lab's
    // dnsmasq as the system resolver.
    let mut learning =
        learn_with_resolv_conf(&pair, &cgroup, &resolv_conf, &learned, dir.path().join("learn.log"), &[]);

    for i in 0..4 {
        rotate(i);
        let results = client(&[NAME, LITERAL]);
        let got: Vec<(&str, &str)> = results.iter().map(|r| (r.1.as_str(), r.2.as_str())).collect();
        assert_eq!(got, [(ROTATION[i % 2], "ok"), (LITERAL, "ok")], "iteration {i}: learning blocks nothing");
    }
    learning.interrupt();
    let text = fs::read_to_string(&learned).expect("the learned policy");
    println!("learned policy:\n{text}\nfw learn said:\n{}", learning.log_text());

    let rules: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("- {")).collect();
    let to = |target: &str| -> Vec<&str> {
        rules.iter().copied().filter(|l| l.contains(&format!("to: [{target}]"))).collect()
    };
    let named = to(NAME);
    assert_eq!(named.len(), 1, "one rule for the name, whatever its addresses:\n{text}");
    assert!(named[0].contains(&format!("proto: tcp, ports: [{NAMED_PORT}] }}")), "{text}");
    let literal = to(LITERAL);
    assert_eq!(literal.len(), 1, "the literal address stays an address rule:\n{text}");
    assert!(literal[0].contains(&format!("proto: tcp, ports: [{NAMED_PORT}] }}")), "{text}");
    for addr in ROTATION {
        assert!(to(addr).is_empty(), "the name's addresses are not rules of their own:\n{text}");
        assert!(text.contains(addr), "the comment lists the addresses answered:\n{text}");
    }
    assert!(text.contains("    dns: { resolvers: [system] }\n"), "{text}");
    let check = fw(&pair.near, &["check", learned.to_str().unwrap(), "--phase", "learned"]);
    assert!(check.status.success(), "fw check must accept the learned policy: {check:#?}");

    // Enforced, with the same resolver as the system's: the process
    // resolves and connects again, to either address the name rotates
    // through; what learning never saw is refused.
    let enforced = enforce_learned(&pair, &learned, &resolv_conf, &cgroup);
    assert!(enforced.log_has_within("DNS proxy listening", Duration::from_secs(10)), "{}", enforced.log_text());
    for i in 4..6 {
        rotate(i);
        let results = client(&[NAME, LITERAL, UNSEEN]);
        let got: Vec<(&str, &str)> = results.iter().map(|r| (r.1.as_str(), r.2.as_str())).collect();
        assert_eq!(
            got,
            [(ROTATION[i % 2], "ok"), (LITERAL, "ok"), (UNSEEN, "EPERM")],
            "enforcing the learned policy:\n{}",
            enforced.log_text()
        );
    }
}

/// Learning blocks nothing, not even while its DNS proxy cannot listen:
/// the learning phase steers the cgroup's DNS to the proxy, and with no
/// proxy registered the hook refused it (enforce mode's fail-closed) in
/// audit mode too. Here the proxy's port is taken for the whole run (as in
/// the moment before it listens): `fw learn` says names cannot be seen,
/// the process still resolves and connects, and what it reached is learned
/// as addresses, its DNS as a rule to the resolver; the DNS to the system
/// resolver it saw on the wire still gives the learned phase `dns:`.
#[test]
fn learn_blocks_no_dns_while_its_proxy_cannot_listen() {
    harness::setup();
    let pair = VethPair::new(101);
    pair.far.ip(&["route", "add", "local", "198.19.0.0/16", "dev", "lo"]);
    pair.near.ip(&["route", "add", "198.19.0.0/16", "via", &pair.far4.to_string()]);
    let dnsmasq = Dnsmasq::start(&pair, &format!("{} {NAME}\n", ROTATION[0]), &[]);
    let _servers = Servers::start(&pair.far, &[NAMED_PORT]);
    let cgroup = TestCgroup::new();
    let dir = TempDir::new();
    let resolv_conf = dir.write("resolv.conf", &format!("nameserver {}\noptions timeout:2 attempts:2\n", pair.far4));
    let learned = dir.path().join("learned.yaml");
    // Taken in near's namespace: the proxy cannot bind its first port.
    const TAKEN: u16 = 25353;
    let _taken = in_netns(&pair.near, || UdpSocket::bind((Ipv4Addr::LOCALHOST, TAKEN))).expect("taking the port");

    let env = [("FW_DNS_PROXY_PORT", TAKEN.to_string())];
    let mut learning =
        learn_with_resolv_conf(&pair, &cgroup, &resolv_conf, &learned, dir.path().join("learn.log"), &env);
    assert!(learning.log_text().contains("DNS answers cannot be seen"), "{}", learning.log_text());

    let out = cgroup.python_output(&pair.near, &resolv_conf, CONNECT, &[NAMED_PORT.to_string(), NAME.to_string()]);
    assert_eq!(out.trim(), format!("{NAME} {} ok", ROTATION[0]), "learning blocks nothing");
    learning.interrupt();
    let text = fs::read_to_string(&learned).expect("the learned policy");
    println!("learned policy:\n{text}\nfw learn said:\n{}", learning.log_text());
    assert!(text.contains("# DNS: 0 queries through fw's proxy, 0 answers seen"), "{text}");
    // The query the hook let through unproxied was an event: its server is
    // named as a resolver too (here the system's own, which is redundant).
    assert!(text.contains(&format!("    dns: {{ resolvers: [system, {}] }}\n", pair.far4)), "{text}");
    assert!(text.contains(&format!("to: [{}], proto: tcp, ports: [{NAMED_PORT}] }}", ROTATION[0])), "{text}");
    assert!(text.contains(&format!("to: [{}], proto: udp, ports: [53] }}", pair.far4)), "{text}");
    drop(dnsmasq);
}

/// DNS that only the wire carries (a process outside the hooked cgroup
/// asking the system resolver) is no event while learning watches DNS (it
/// passes as `pass_resolver`): the learned phase must still allow it.
#[test]
fn learn_keeps_dns_that_only_the_wire_carried() {
    harness::setup();
    let pair = VethPair::new(102);
    let _dnsmasq = Dnsmasq::start(&pair, &format!("{} {NAME}\n", ROTATION[0]), &[]);
    let cgroup = TestCgroup::new();
    let dir = TempDir::new();
    let resolv_conf = dir.write("resolv.conf", &format!("nameserver {}\n", pair.far4));
    let learned = dir.path().join("learned.yaml");
    let server = SocketAddr::new(pair.far4.into(), 53);
    let want = [ROTATION[0].parse::<Ipv4Addr>().unwrap()];

    let mut learning =
        learn_with_resolv_conf(&pair, &cgroup, &resolv_conf, &learned, dir.path().join("learn.log"), &[]);
    // The test itself, outside the cgroup, asks the resolver.
    assert_eq!(in_netns(&pair.near, || resolve_a(server, NAME)), want, "learning blocks nothing");
    learning.interrupt();
    let text = fs::read_to_string(&learned).expect("the learned policy");
    println!("learned policy:\n{text}\nfw learn said:\n{}", learning.log_text());
    assert!(text.contains("    dns: { resolvers: [system] }\n"), "{text}");

    let enforced = enforce_learned(&pair, &learned, &resolv_conf, &cgroup);
    let answered = poll(Duration::from_secs(5), || in_netns(&pair.near, || resolve_a(server, NAME)) == want);
    assert!(answered, "the learned policy must let this DNS through:\n{}", enforced.log_text());
}
