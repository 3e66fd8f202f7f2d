//! What a phase would break on this host, judged before it is applied
//! (`fw preflight`, and `fw switch --confirm` first): the host's own needs
//! ([`HostFacts`]: its resolvers, time servers, DHCP server, the ports it
//! serves) against the compiled phase, each need the phase would drop
//! becoming a [`Finding`] with the rule that keeps it.
//!
//! Pure: the facts are read by `source::host`, the verdicts come from
//! [`explain`] and the name rules, exactly as `fw explain` gives them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fw_common::{policy::proto::UDP, Action, Direction};
use serde::Serialize;

use super::{
    compile::tables::CompiledPhase,
    explain::{explain, explain_name, Query},
    ir::Resolver,
    names::NameRules,
    protocols::protocol_name,
};

/// The ports DHCP clients receive their server's answers on: 68 (RFC 2131
/// 4.1) and 546 (RFC 8415 7.2). A socket there is a lease to keep, not a
/// service.
const DHCP_CLIENT_PORTS: [u16; 2] = [68, 546];

/// A value read from the host, and where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub from: String,
}

/// A port this host serves to other hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub proto: u8,
    pub port: u16,
    /// Who serves it (`nginx[812]`, `container openvidu-server`), and from
    /// which table it was read.
    pub by: String,
}

/// The host's needs that a phase can break.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The nameservers the host's resolver asks.
    pub resolvers: Vec<Sourced<IpAddr>>,
    /// The time servers its NTP client is configured with (names or
    /// addresses).
    pub ntp: Vec<Sourced<String>>,
    /// The DHCP servers of its current leases (renewals go to them).
    pub dhcp_servers: Vec<Sourced<IpAddr>>,
    /// Ports it listens on, for other hosts (loopback left out).
    pub served: Vec<Served>,
}

/// One need the phase would drop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `dns`, `ntp`, `dhcp` or `served`.
    pub kind: &'static str,
    /// What would break, and how the host needs it.
    pub problem: String,
    /// What to add to the phase.
    pub fix: String,
}

/// Every need of `facts` that `phase` (with its name rules) would drop.
pub fn preflight(phase: &CompiledPhase, names: Option<&NameRules>, facts: &HostFacts) -> Vec<Finding> {
    let mut findings = Vec::new();
    for resolver in &facts.resolvers {
        if !reaches_resolver(phase, resolver.value) {
            findings.push(Finding {
                kind: "dns",
                problem: format!(
                    "DNS: this host asks {} ({}); the phase drops udp/53 to it, so every name lookup fails",
                    resolver.value, resolver.from
                ),
                fix: "in the phase: `dns: { resolvers: [system] }` (or `extends: essentials`)".to_string(),
            });
        }
    }
    for server in &facts.ntp {
        if !egress_allowed(phase, names, &server.value, UDP, 123) {
            let name_note = if server.value.parse::<IpAddr>().is_err() && phase.dns.is_none() {
                " and `dns: { resolvers: [system] }` (a name rule needs DNS)"
            } else {
                ""
            };
            findings.push(Finding {
                kind: "ntp",
                problem: format!(
                    "NTP: the time server {} ({}) is not allowed: the clock drifts (TLS and TURN credentials depend on it)",
                    server.value, server.from
                ),
                fix: format!(
                    "NTP_SERVERS={} in the env file with `extends: essentials`, or the egress rule \
                     `- {{ name: ntp, to: [\"{}\"], proto: udp, ports: [123] }}`{name_note}",
                    server.value, server.value
                ),
            });
        }
    }
    for server in &facts.dhcp_servers {
        if !egress_allowed(phase, names, &server.value.to_string(), UDP, 67) {
            findings.push(Finding {
                kind: "dhcp",
                problem: format!(
                    "DHCP: this host's lease comes from {} ({}); renewals to it are dropped, and the address \
                     goes when the lease ends",
                    server.value, server.from
                ),
                fix: "`extends: essentials` (DHCP v4/v6 renewals), or the egress rule \
                      `- { name: dhcp, proto: udp, ports: [67] }`"
                    .to_string(),
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for served in &facts.served {
        if !seen.insert((served.proto, served.port)) || served_somewhere(phase, served.proto, served.port) {
            continue;
        }
        let proto = protocol_name(served.proto);
        if served.proto == UDP && DHCP_CLIENT_PORTS.contains(&served.port) {
            findings.push(Finding {
                kind: "dhcp",
                problem: format!(
                    "DHCP: the client ({}) waits on {}/udp for its server's answers; the phase drops them, and the \
                     address goes when the lease ends",
                    served.by, served.port
                ),
                fix: format!(
                    "`extends: essentials`, or the inbound rule `- {{ name: dhcp-replies, proto: udp, ports: [{}] }}`",
                    served.port
                ),
            });
            continue;
        }
        findings.push(Finding {
            kind: "served",
            problem: format!(
                "served port {}/{proto} ({}): the phase drops new connections to it from every client",
                served.port, served.by
            ),
            fix: format!(
                "the inbound rule `- {{ name: serve-{}-{proto}, proto: {proto}, ports: [{}] }}`",
                served.port, served.port
            ),
        });
    }
    findings
}

/// DNS to `resolver` passes: a phase with `dns:` passes its resolvers in
/// the kernel (pass_resolver) before any rule; otherwise the rules judge.
fn reaches_resolver(phase: &CompiledPhase, resolver: IpAddr) -> bool {
    match &phase.dns {
        Some(resolvers) => resolvers.iter().any(|r| matches!(r, Resolver::System) || *r == Resolver::Addr(resolver)),
        None => egress_allowed(phase, None, &resolver.to_string(), UDP, 53),
    }
}

/// Egress to `target` (an address, or a name tracked by the phase's name
/// rules) on `proto`/`port` is allowed, as `fw explain` says.
fn egress_allowed(phase: &CompiledPhase, names: Option<&NameRules>, target: &str, proto: u8, port: u16) -> bool {
    let passes = |action: Action| action == Action::Allow || phase.settings.audit;
    match target.parse::<IpAddr>() {
        Ok(address) => {
            let query = Query { direction: Direction::Egress, address, proto, port, host: None };
            passes(explain(phase, &query).verdict)
        }
        Err(_) => {
            names.and_then(|rules| explain_name(phase, rules, target, proto, port)).is_some_and(|e| passes(e.verdict))
        }
    }
}

/// Some peer may open a connection to `port`: a rule for any address, or
/// for some peers (a media node's master), or an allowing default. Only a
/// port no peer can reach is a finding: which peers should is the
/// policy's business.
fn served_somewhere(phase: &CompiledPhase, proto: u8, port: u16) -> bool {
    if phase.settings.inbound_default == Action::Allow || phase.settings.audit {
        return true;
    }
    for any in [IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)] {
        let query = Query { direction: Direction::Inbound, address: any, proto, port, host: None };
        if explain(phase, &query).verdict == Action::Allow {
            return true;
        }
    }
    let inbound_classes = phase
        .addr4
        .iter()
        .filter(|e| e.direction == Direction::Inbound)
        .map(|e| e.class)
        .chain(phase.addr6.iter().filter(|e| e.direction == Direction::Inbound).map(|e| e.class));
    let mut allowed = false;
    for class in inbound_classes {
        if phase.lookup_class(class, proto, port).is_some_and(|v| v.action() == Action::Allow) {
            allowed = true;
            break;
        }
    }
    allowed
}

#[cfg(test)]
mod tests {
    use fw_common::policy::proto::TCP;

    use super::*;
    use crate::policy::{compile::compile_phase, parse_str_with_resolver, Vars};

    fn phase(yaml: &str, name: &str) -> (CompiledPhase, Option<NameRules>) {
        let no_dns = |host: &str| -> Result<Vec<IpAddr>, String> { Err(format!("{host}: no resolver in tests")) };
        let loaded = parse_str_with_resolver(yaml, "test.yaml", &Vars::from_pairs::<&str, &str>([]), &no_dns)
            .expect("the test policy compiles");
        let compiled = compile_phase(&loaded.policy, name).expect("the phase");
        (compiled, NameRules::of_phase(&loaded.policy, name))
    }

    fn facts() -> HostFacts {
        let from = |s: &str| s.to_string();
        HostFacts {
            resolvers: vec![Sourced { value: "10.0.0.2".parse().unwrap(), from: from("/etc/resolv.conf") }],
            ntp: vec![Sourced { value: "169.254.169.123".into(), from: from("/etc/chrony/chrony.conf") }],
            dhcp_servers: vec![Sourced { value: "10.0.0.1".parse().unwrap(), from: from("lease") }],
            served: vec![
                Served { proto: TCP, port: 443, by: "nginx[1]".into() },
                Served { proto: TCP, port: 8443, by: "java[2]".into() },
                Served { proto: TCP, port: 5044, by: "logstash[3]".into() },
            ],
        }
    }

    #[test]
    fn a_closed_phase_breaks_every_need_and_says_which_rule_keeps_it() {
        let (p, names) = phase(
            "name: t\nphases:\n  runtime:\n    egress_default: drop\n    inbound_default: drop\n    \
             inbound:\n      - { name: https, proto: tcp, ports: [443] }\n      \
             - { name: beats, from: [198.18.5.0/24], proto: tcp, ports: [5044] }\n",
            "runtime",
        );
        let found = preflight(&p, names.as_ref(), &facts());
        let kinds: Vec<&str> = found.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, ["dns", "ntp", "dhcp", "served"], "{found:#?}");
        // 443 is served to all and 5044 to the media nodes: only 8443 is lost.
        assert!(found[3].problem.contains("8443/tcp (java[2])"), "{found:#?}");
        assert!(found[3].fix.contains("ports: [8443]"), "{found:#?}");
        assert!(found[1].fix.contains("NTP_SERVERS=169.254.169.123"), "{found:#?}");
    }

    #[test]
    fn essentials_and_the_served_ports_leave_nothing_to_say() {
        let (p, names) = phase(
            "name: t\nphases:\n  runtime:\n    egress_default: drop\n    inbound_default: drop\n    \
             dns: { resolvers: [system] }\n    \
             inbound:\n      - { name: web, proto: tcp, ports: [443, 8443] }\n      \
             - { name: beats, from: [198.18.5.0/24], proto: tcp, ports: [5044] }\n    \
             egress:\n      - { name: ntp, to: [169.254.169.123], proto: udp, ports: [123] }\n      \
             - { name: dhcp, proto: udp, ports: [67] }\n",
            "runtime",
        );
        assert_eq!(preflight(&p, names.as_ref(), &facts()), []);
    }

    #[test]
    fn ntp_names_are_judged_by_the_name_rules() {
        let (p, names) = phase(
            "name: t\nphases:\n  runtime:\n    egress_default: drop\n    dns: { resolvers: [system] }\n    \
             egress:\n      - { name: ntp, to: [\"**.pool.ntp.org\"], proto: udp, ports: [123] }\n",
            "runtime",
        );
        let facts = |server: &str| HostFacts {
            ntp: vec![Sourced { value: server.into(), from: "timesyncd.conf".into() }],
            ..HostFacts::default()
        };
        assert_eq!(preflight(&p, names.as_ref(), &facts("2.debian.pool.ntp.org")), []);
        let found = preflight(&p, names.as_ref(), &facts("time.example.com"));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].problem.contains("time.example.com (timesyncd.conf)"), "{found:#?}");
    }
}
