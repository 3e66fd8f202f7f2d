//! Issue 12, finding 6: `fw export nft|iptables` must mean what fw means.
//! The same probes run against fw enforcing a policy on a router's outer
//! interface, then against the nftables and the iptables rulesets `fw
//! export` writes for it, in the same namespaces: what this host sends and
//! serves, loopback (which fw never sees: OpenVidu Server reaches Kurento
//! over 127.0.0.1:8888) and traffic it forwards for a host behind it (a
//! container), which fw's TC hooks on the interface judge. All three must
//! give the outcomes the policy prescribes.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use crate::harness::{
    self,
    fw::{fw, Fw},
    netns::{run_ok, Netns, Routed},
    traffic::{in_netns, tcp_echo, udp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    TempDir,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}
use Proto::{Tcp, Udp};

fn policy(server4: Ipv4Addr, server6: Ipv6Addr) -> String {
    format!(
        "name: export\nphases:\n  runtime:\n    inbound_default: drop\n    inbound:\n      \
         - {{ name: https, proto: tcp, ports: [443] }}\n      \
         - {{ name: dns, proto: udp, ports: [53] }}\n    egress:\n      \
         - {{ name: web, to: [\"{server4}\", \"{server6}\"], proto: tcp, ports: [80] }}\n      \
         - {{ name: ntp, to: [\"{server4}\", \"{server6}\"], proto: udp, ports: [123] }}\n"
    )
}

/// One connection or datagram, from a namespace, and whether the policy
/// lets it through (and its answer back).
struct Probe<'a> {
    what: String,
    from: &'a Netns,
    to: SocketAddr,
    proto: Proto,
    passes: bool,
}

fn run(probe: &Probe) -> bool {
    let (to, proto) = (probe.to, probe.proto);
    let timeout = if probe.passes { PASS_TIMEOUT } else { DROP_TIMEOUT };
    let outcome = in_netns(probe.from, || match proto {
        Tcp => tcp_echo(to, timeout),
        Udp => udp_echo(to, timeout),
    });
    match outcome {
        Outcome::Echoed => true,
        Outcome::TimedOut => false,
        // netfilter's output hook drops a local send with EPERM.
        Outcome::Failed(e) if e.contains("Operation not permitted") => false,
        Outcome::Failed(e) => panic!("{}: {e}", probe.what),
    }
}

/// The probes' outcomes that differ from what the policy prescribes.
fn wrong(mechanism: &str, probes: &[Probe]) -> Vec<String> {
    probes
        .iter()
        .filter_map(|p| {
            let passed = run(p);
            (passed != p.passes).then(|| {
                format!(
                    "{mechanism}: {} {}",
                    p.what,
                    if passed { "passed, fw drops it" } else { "dropped, fw passes it" }
                )
            })
        })
        .collect()
}

fn export(router: &Netns, format: &str, policy: &Path, iface: Option<&str>) -> String {
    let mut args = vec!["export", format, "--policy", policy.to_str().unwrap(), "--phase", "runtime"];
    if let Some(iface) = iface {
        args.extend(["--iface", iface]);
    }
    let out = fw(router, &args);
    assert!(out.status.success(), "fw export {format}: {out:#?}");
    out.stdout
}

fn load(ns: &Netns, tool: &str, args: &[&str], dir: &TempDir, text: &str) {
    let file = dir.write(&format!("{tool}.rules"), text);
    run_ok(ns.command(tool).args(args).arg(&file));
}

#[test]
fn finding6_exports_filter_what_fw_filters_and_nothing_else() {
    harness::setup();
    let net = Routed::new(30, 1500);
    let dir = TempDir::new();
    let policy = dir.write("export.yaml", &policy(net.server4, net.server6));
    let wan = net.router_server_if.clone();
    let router4: IpAddr = Ipv4Addr::new(198, 18, 30, 254).into();
    let router6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 30, 0, 0, 0, 0, 0xfe).into();
    let (server4, server6) = (IpAddr::from(net.server4), IpAddr::from(net.server6));
    let (client4, client6) = (IpAddr::from(net.client4), IpAddr::from(net.client6));
    let loop4: IpAddr = Ipv4Addr::LOCALHOST.into();
    let loop6: IpAddr = Ipv6Addr::LOCALHOST.into();

    let mut servers = Vec::new();
    let mut probes = Vec::new();
    let mut serve = |ns: &Netns, ip: IpAddr, proto: Proto, port: u16| {
        let addr = SocketAddr::new(ip, port);
        servers.push(match proto {
            Tcp => Echo::tcp(ns, addr),
            Udp => Echo::udp(ns, addr),
        });
        addr
    };
    let mut cases = Vec::new();
    for (server, router, client, lo) in [(server4, router4, client4, loop4), (server6, router6, client6, loop6)] {
        // (what, from, to, proto, passes)
        for (proto, port, passes) in [(Tcp, 80, true), (Tcp, 8080, false), (Udp, 123, true), (Udp, 124, false)] {
            let to = serve(&net.server, server, proto, port);
            cases.push((format!("this host to {to}/{proto:?}"), &net.router, to, proto, passes));
            cases.push((format!("forwarded, the container to {to}/{proto:?}"), &net.client, to, proto, passes));
        }
        for (proto, port, passes) in [(Tcp, 443, true), (Tcp, 8443, false), (Udp, 53, true), (Udp, 54, false)] {
            let to = serve(&net.router, router, proto, port);
            cases.push((format!("a client to this host's {to}/{proto:?}"), &net.server, to, proto, passes));
        }
        for (port, passes) in [(443, true), (8443, false)] {
            let to = serve(&net.client, client, Tcp, port);
            cases.push((format!("forwarded, a client to the container's {to}/Tcp"), &net.server, to, Tcp, passes));
        }
        let to = serve(&net.router, lo, Tcp, 8888);
        cases.push((format!("loopback, this host to {to}/Tcp (OpenVidu to Kurento)"), &net.router, to, Tcp, true));
    }
    for (what, from, to, proto, passes) in cases {
        probes.push(Probe { what, from, to, proto, passes });
    }

    // Without any enforcement everything answers: the probes are sound.
    let open: Vec<String> = probes.iter().filter(|p| !run(p)).map(|p| p.what.clone()).collect();
    assert!(open.is_empty(), "with nothing enforced, these got no answer: {open:#?}");

    let mut problems = Vec::new();
    let mut instance = Fw::start(&net.router, &wan, &policy, "runtime");
    problems.extend(wrong("fw", &probes));
    instance.stop();
    drop(instance);

    // nftables: the export for the interface fw enforced.
    load(&net.router, "nft", &["-f"], &dir, &export(&net.router, "nft", &policy, Some(&wan)));
    problems.extend(wrong("nft", &probes));
    run_ok(net.router.command("nft").args(["delete", "table", "inet", "fw"]));

    // iptables: the exports for both families, loaded without flushing
    // anything: a chain of someone else's (Docker's) survives.
    run_ok(net.router.command("iptables").args(["-N", "DOCKER-USER"]));
    run_ok(net.router.command("iptables").args(["-A", "FORWARD", "-j", "DOCKER-USER"]));
    for (tool, format) in [("iptables-restore", "iptables"), ("ip6tables-restore", "ip6tables")] {
        load(&net.router, tool, &["--noflush"], &dir, &export(&net.router, format, &policy, Some(&wan)));
    }
    problems.extend(wrong("iptables", &probes));
    let saved = String::from_utf8_lossy(&run_ok(&mut net.router.command("iptables-save")).stdout).into_owned();
    assert!(
        saved.contains(":DOCKER-USER") && saved.contains("-A FORWARD -j DOCKER-USER"),
        "another chain must survive:\n{saved}"
    );
    for (tool, chain) in [
        ("iptables", "INPUT"),
        ("iptables", "OUTPUT"),
        ("iptables", "FORWARD"),
        ("ip6tables", "INPUT"),
        ("ip6tables", "OUTPUT"),
        ("ip6tables", "FORWARD"),
    ] {
        run_ok(net.router.command(tool).args(["-F", chain]));
    }

    // Without an interface: every interface but loopback, still.
    load(&net.router, "nft", &["-f"], &dir, &export(&net.router, "nft", &policy, None));
    let loopback: Vec<&Probe> = probes.iter().filter(|p| p.what.starts_with("loopback")).collect();
    for p in &loopback {
        if !run(p) {
            problems.push(format!("nft without --iface: {} dropped", p.what));
        }
    }
    run_ok(net.router.command("nft").args(["delete", "table", "inet", "fw"]));
    for (tool, format) in [("iptables-restore", "iptables"), ("ip6tables-restore", "ip6tables")] {
        load(&net.router, tool, &["--noflush"], &dir, &export(&net.router, format, &policy, None));
    }
    for p in &loopback {
        if !run(p) {
            problems.push(format!("iptables without --iface: {} dropped", p.what));
        }
    }
    println!("{} probes each through fw, nft and iptables", probes.len());
    assert!(problems.is_empty(), "the exports disagree with fw:\n{}", problems.join("\n"));
}

/// Issue 16, deliver 6: the exported nftables decide every packet as fw
/// does, on random policies with nested CIDRs, overlapping port ranges,
/// `proto: any`, ICMP types and both defaults. fw's side is `fw explain`'s
/// own computation (the compiled tables' lookup); nftables' side is the
/// export loaded in a namespace that owns 198.18.0.0/16 and 2001:db8::/48
/// (local routes: every probe goes to the namespace's own addresses, over
/// loopback, which the export is bound to with `--iface lo`). A probe is
/// one socket call: the output hook's drop fails it with EPERM at once, so
/// each verdict is read without waiting for anything.
#[test]
fn exported_nft_decides_as_fw_explains_on_random_policies() {
    harness::setup();
    let ns = Netns::new(harness::unique_name());
    ns.ip(&["route", "add", "local", "198.18.0.0/16", "dev", "lo"]);
    ns.ip(&["-6", "route", "add", "local", "2001:db8::/48", "dev", "lo"]);
    let dir = TempDir::new();
    let seed = 0x16_0006u64;
    let mut rng = fw_lab::rng::Rng::new(seed);
    let mut probes_run = 0;
    let mut problems = Vec::new();
    for round in 0..12 {
        let yaml = random_policy(&mut rng);
        let path = dir.write(&format!("random-{round}.yaml"), &yaml);
        let vars = fw_user::policy::Vars::from_pairs::<&str, &str>([]);
        let loaded =
            fw_user::policy::parse_str_with_resolver(&yaml, "random.yaml", &vars, &|h| Err(format!("no DNS ({h})")))
                .unwrap_or_else(|e| panic!("round {round}: {e}\n{yaml}"));
        let compiled = fw_user::policy::compile::compile_phase(&loaded.policy, "runtime").unwrap();
        load(&ns, "nft", &["-f"], &dir, &export(&ns, "nft", &path, Some("lo")));
        let probes: Vec<(IpAddr, u8, u16)> = (0..150).map(|_| random_probe(&mut rng)).collect();
        let outcomes = in_netns(&ns, || {
            probes.iter().map(|&(addr, proto, port)| nft_passes(addr, proto, port)).collect::<Vec<_>>()
        });
        for (&(addr, proto, port), nft_passes) in probes.iter().zip(outcomes) {
            let query = fw_user::policy::explain::Query {
                direction: fw_common::Direction::Egress,
                address: addr,
                host: None,
                proto,
                port,
            };
            let fw = fw_user::policy::explain::explain(&compiled, &query);
            let fw_passes = fw.verdict == fw_common::Action::Allow;
            if fw_passes != nft_passes {
                problems.push(format!(
                    "round {round}: {addr} proto {proto} port {port}: fw {}, nft {}\n{yaml}",
                    if fw_passes { "allows" } else { "denies" },
                    if nft_passes { "allows" } else { "denies" }
                ));
            }
            probes_run += 1;
        }
        run_ok(ns.command("nft").args(["delete", "table", "inet", "fw"]));
    }
    println!("{probes_run} probes (seed {seed:#x})");
    assert!(
        problems.is_empty(),
        "{} disagreements, the first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(3)].join("\n")
    );
}

/// Nested CIDRs (/22 to /32 in 198.18.0.0/22, /118 to /128 in
/// 2001:db8::/118) and a few ports, so that rules overlap often.
fn random_policy(rng: &mut fw_lab::rng::Rng) -> String {
    let default = if rng.below(4) == 0 { "allow" } else { "drop" };
    let mut y = format!("name: random\nphases:\n  runtime:\n    egress_default: {default}\n    egress:\n");
    for i in 0..rng.usize(1, 14) {
        let peer = if rng.below(2) == 0 {
            let len = rng.range(22, 32) as u32;
            let addr = u32::from(Ipv4Addr::new(198, 18, 0, 0)) | (rng.below(1 << 10) as u32);
            let net = addr >> (32 - len) << (32 - len);
            format!("\"{}/{len}\"", Ipv4Addr::from(net))
        } else {
            let len = rng.range(118, 128) as u32;
            let addr = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0)) | u128::from(rng.below(1 << 10));
            let net = if len == 128 { addr } else { addr >> (128 - len) << (128 - len) };
            format!("\"{}/{len}\"", Ipv6Addr::from(net))
        };
        let ports = |rng: &mut fw_lab::rng::Rng| {
            let lo = rng.range(1000, 1030);
            if rng.below(3) == 0 {
                format!("\"{lo}-{}\"", lo + rng.range(1, 12))
            } else {
                lo.to_string()
            }
        };
        let proto = match rng.below(8) {
            0 => "proto: any".to_string(),
            1 => "proto: tcp, ports: any".to_string(),
            2 => "proto: [icmp, icmpv6], ports: [\"8\", \"0\"]".to_string(),
            3 => format!("proto: [tcp, udp], ports: [{}, {}]", ports(rng), ports(rng)),
            4..=5 => format!("proto: udp, ports: [{}]", ports(rng)),
            _ => format!("proto: tcp, ports: [{}]", ports(rng)),
        };
        let action = if rng.below(3) == 0 { ", action: deny" } else { "" };
        let _ = std::fmt::Write::write_fmt(
            &mut y,
            format_args!("      - {{ name: r{i}, to: [{peer}], {proto}{action} }}\n"),
        );
    }
    y
}

/// An address in the policies' space, a protocol and a port (ICMP: echo
/// request or reply, `type << 8`).
fn random_probe(rng: &mut fw_lab::rng::Rng) -> (IpAddr, u8, u16) {
    let v4 = rng.below(2) == 0;
    let addr: IpAddr = if v4 {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) | rng.below(1 << 10) as u32).into()
    } else {
        Ipv6Addr::from(u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0)) | u128::from(rng.below(1 << 10)))
            .into()
    };
    match rng.below(5) {
        0 => (addr, if v4 { 1 } else { 58 }, [8 << 8, 0, 129 << 8][rng.below(3) as usize]),
        1..=2 => (addr, 6, rng.range(995, 1045) as u16),
        _ => (addr, 17, rng.range(995, 1045) as u16),
    }
}

/// Whether this namespace's output hook lets one packet to (addr, proto,
/// port) out: a drop fails the send with EPERM. UDP goes through a UDP
/// socket; a TCP SYN and ICMP through raw sockets (a TCP connect() would
/// hide the EPERM and retransmit). Each packet has a source port or ICMP id
/// of its own, so conntrack never takes it for a packet of an earlier flow.
fn nft_passes(addr: IpAddr, proto: u8, port: u16) -> bool {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT_ID: AtomicU16 = AtomicU16::new(20_000);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let (kind, protocol) = match proto {
        17 => (libc::SOCK_DGRAM, 0),
        other => (libc::SOCK_RAW, i32::from(other)),
    };
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let target = SocketAddr::new(addr, if proto == 17 { port } else { 0 });
    let (storage, len) = sockaddr(&target);
    let [p0, p1] = port.to_be_bytes();
    let packet: Vec<u8> = match proto {
        // A SYN: source port, destination port, sequence, ack, data offset
        // 5 words, flags, window, checksum and urgent pointer (the local
        // stack drops it on its bad checksum; the output hook is before).
        6 => vec![id[0], id[1], p0, p1, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x10, 0, 0, 0, 0, 0],
        17 => b"probe".to_vec(),
        // ICMP: type, code, checksum (the kernel fills ICMPv6's), id, sequence.
        _ => {
            let mut icmp = vec![p0, p1, 0, 0, id[0], id[1], 0, 1];
            if proto == 1 {
                let sum = icmp.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
                let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
                icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            }
            icmp
        }
    };
    let ptr = &storage as *const libc::sockaddr_storage as *const libc::sockaddr;
    // SAFETY: valid descriptor, buffer and socket address of `len` bytes.
    let rc = unsafe { libc::sendto(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0, ptr, len) };
    if rc >= 0 {
        return true;
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EPERM) => false,
        _ => panic!("probe {addr} proto {proto} port {port}: {error}"),
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for it.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
