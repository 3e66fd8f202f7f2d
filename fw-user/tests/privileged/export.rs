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
                format!("{mechanism}: {} {}", p.what, if passed { "passed, fw drops it" } else { "dropped, fw passes it" })
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
    assert!(saved.contains(":DOCKER-USER") && saved.contains("-A FORWARD -j DOCKER-USER"), "another chain must survive:\n{saved}");
    for (tool, chain) in [("iptables", "INPUT"), ("iptables", "OUTPUT"), ("iptables", "FORWARD"), ("ip6tables", "INPUT"), ("ip6tables", "OUTPUT"), ("ip6tables", "FORWARD")] {
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
