//! Differential property tests: the compiled tables, read with the reference
//! LPM lookup (`CompiledPhase::lookup`), must give the same verdict AND the
//! same rule id as the naive evaluator (`eval::evaluate`) for every packet.
//!
//! Policies are generated directly as the normalized IR (fast), with nested
//! and overlapping CIDRs of both families, port ranges straddling prefix
//! boundaries, deny rules inside allow rules, `any`, ICMP types and phases
//! extending each other. Packets are biased to rule boundaries: the first and
//! last address of every CIDR and their neighbours, the ends of every port
//! range and their neighbours.
//!
//! `PROPTEST_CASES` overrides the number of policies (default 10,000; see
//! docs/policy.md for the long run).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fw_common::{
    policy::proto::{ICMP, SCTP, TCP, UDP},
    Action, Direction,
};
use fw_user::{
    policy::compile::{compile_phase, tables::PhaseSettings},
    policy::eval::evaluate,
    policy::ir::{merge_ranges, Phase, Policy, PortRange, Pos, ProtoPorts, Protocols, Rule},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::{prelude::*, test_runner::FileFailurePersistence};

/// `cases` policies (or `PROPTEST_CASES`, divided by `divisor`), failures kept
/// in `proptest-regressions/NAME.txt` (relative to the package root, where
/// cargo runs integration tests).
fn config(default_cases: u32, divisor: u32, name: &'static str) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    ProptestConfig {
        cases: (cases / divisor).max(1),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(name))),
        ..ProptestConfig::default()
    }
}

const PHASE_NAMES: [&str; 3] = ["runtime", "install", "debug"];
/// Protocols rules may name; packets also use GRE (47), which no rule names.
const RULE_PROTOS: [u8; 4] = [TCP, UDP, ICMP, SCTP];
const GRE: u8 = 47;

/// Addresses live in a small window so that CIDRs nest and overlap often.
fn cidr() -> impl Strategy<Value = IpNet> {
    let v4 =
        (0u32..1024, prop::sample::select(vec![0u8, 15, 16, 22, 24, 26, 28, 29, 30, 31, 32])).prop_map(|(low, len)| {
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) | low);
            IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc())
        });
    let v6 =
        (0u128..1024, prop::sample::select(vec![0u8, 32, 64, 118, 120, 124, 126, 127, 128])).prop_map(|(low, len)| {
            let addr = Ipv6Addr::from(u128::from("2001:db8::".parse::<Ipv6Addr>().unwrap()) | low);
            IpNet::V6(Ipv6Net::new(addr, len).unwrap().trunc())
        });
    prop_oneof![3 => v4, 2 => v6]
}

/// Port values near power-of-two boundaries and the ends of the space.
fn port_value() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![
            0u16, 1, 2, 53, 80, 255, 256, 443, 1023, 1024, 40000, 49152, 57000, 57001, 65534, 65535
        ]),
        any::<u16>(),
        0u16..600,
    ]
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (port_value(), port_value()).prop_map(|(a, b)| PortRange { first: a.min(b), last: a.max(b) })
}

fn protocols() -> impl Strategy<Value = Protocols> {
    let one = (prop::sample::select(RULE_PROTOS.to_vec()), prop::collection::vec(port_range(), 1..4), any::<bool>())
        .prop_map(|(proto, ranges, all_ports)| ProtoPorts {
            proto,
            ports: if all_ports && proto == ICMP { vec![PortRange::ALL] } else { merge_ranges(ranges) },
        });
    prop_oneof![
        1 => Just(Protocols::Any),
        3 => prop::collection::vec(one, 1..3).prop_map(|mut list| {
            list.sort_by_key(|p| p.proto);
            list.dedup_by_key(|p| p.proto);
            Protocols::Only(list)
        }),
    ]
}

fn peers() -> impl Strategy<Value = Vec<IpNet>> {
    let any = vec!["0.0.0.0/0".parse::<IpNet>().unwrap(), "::/0".parse().unwrap()];
    prop_oneof![
        1 => Just(any),
        6 => prop::collection::vec(cidr(), 1..4),
        // An optional rule left out: keeps its id, matches nothing.
        1 => Just(Vec::new()),
    ]
    .prop_map(|mut nets| {
        nets.sort();
        nets.dedup();
        nets
    })
}

prop_compose! {
    fn rule()(
        phase in 0usize..3,
        inbound in prop::bool::weighted(0.3),
        deny in prop::bool::weighted(0.35),
        peers in peers(),
        protocols in protocols(),
    ) -> (usize, Rule) {
        (phase, Rule {
            id: 0,
            name: String::new(),
            phase: String::new(),
            direction: if inbound { Direction::Inbound } else { Direction::Egress },
            action: if deny { Action::Deny } else { Action::Allow },
            peers,
            names: Vec::new(),
            protocols,
            pos: Pos::default(),
        })
    }
}

fn settings() -> impl Strategy<Value = PhaseSettings> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(egress_allow, inbound_drop, audit)| PhaseSettings {
        reject: true,
        egress_default: if egress_allow { Action::Allow } else { Action::Deny },
        inbound_default: if inbound_drop { Action::Deny } else { Action::Allow },
        audit,
        timeouts: fw_common::FlowTimeouts::DEFAULT,
    })
}

prop_compose! {
    /// 1-3 phases; phase i may extend any phase before it (so no cycles,
    /// and chains of two occur). Rules of all phases interleave in file order.
    fn policy()(
        phase_count in 1usize..=3,
        extends in prop::collection::vec(prop::option::of(0usize..3), 3),
        settings in prop::collection::vec(settings(), 3),
        rules in prop::collection::vec(rule(), 0..10),
    ) -> Policy {
        let phases = (0..phase_count)
            .map(|i| Phase {
                name: PHASE_NAMES[i].to_string(),
                extends: extends[i].filter(|&p| p < i).map(|p| PHASE_NAMES[p].to_string()),
                settings: settings[i],
                dns: None,
                pos: Pos::default(),
            })
            .collect();
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(id, (phase, mut rule))| {
                rule.id = id as u32;
                rule.name = format!("r{id}");
                rule.phase = PHASE_NAMES[phase % phase_count].to_string();
                rule
            })
            .collect();
        Policy { name: "generated".into(), file: "generated.yaml".into(), phases, rules }
    }
}

/// A packet: (phase index, direction, peer address, protocol, port).
type Packet = (usize, Direction, IpAddr, u8, u16);

/// Addresses and ports at and next to the rule boundaries of `policy`, plus a
/// few unrelated ones; `picks` selects among them.
fn packets_for(policy: &Policy, picks: &[(u32, u32, u32, u32, u32)]) -> Vec<Packet> {
    let mut addresses: Vec<IpAddr> = vec![
        "203.0.113.7".parse().unwrap(),
        "198.18.1.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
        "2001:db9::1".parse().unwrap(),
    ];
    let mut ports: Vec<u16> = vec![0, 1, 443, 65535];
    for rule in &policy.rules {
        for net in &rule.peers {
            for edge in [net.network(), net.broadcast()] {
                addresses.push(edge);
                addresses.extend(neighbours(edge));
            }
        }
        if let Protocols::Only(list) = &rule.protocols {
            for range in list.iter().flat_map(|p| &p.ports) {
                for end in [range.first, range.last] {
                    ports.extend([end.wrapping_sub(1), end, end.wrapping_add(1)]);
                }
            }
        }
    }
    let protos = [TCP, UDP, ICMP, SCTP, GRE];
    picks
        .iter()
        .map(|&(phase, dir, addr, proto, port)| {
            (
                phase as usize % policy.phases.len(),
                if dir % 3 == 0 { Direction::Inbound } else { Direction::Egress },
                addresses[addr as usize % addresses.len()],
                protos[proto as usize % protos.len()],
                ports[port as usize % ports.len()],
            )
        })
        .collect()
}

fn neighbours(addr: IpAddr) -> [IpAddr; 2] {
    match addr {
        IpAddr::V4(a) => {
            let n = u32::from(a);
            [IpAddr::V4(n.wrapping_sub(1).into()), IpAddr::V4(n.wrapping_add(1).into())]
        }
        IpAddr::V6(a) => {
            let n = u128::from(a);
            [IpAddr::V6(n.wrapping_sub(1).into()), IpAddr::V6(n.wrapping_add(1).into())]
        }
    }
}

fn assert_tables_agree_with_evaluator(policy: &Policy, packets: &[Packet]) -> Result<(), TestCaseError> {
    let compiled: Vec<_> = policy.phases.iter().map(|p| compile_phase(policy, &p.name).unwrap()).collect();
    for &(phase, direction, addr, proto, port) in packets {
        let expected = evaluate(policy, &policy.phases[phase].name, direction, addr, proto, port).unwrap();
        let got = compiled[phase].lookup(direction, addr, proto, port);
        prop_assert_eq!(
            (got.action(), got.rule()),
            (expected.action, expected.rule),
            "phase {} {:?} {} proto {} port {}",
            policy.phases[phase].name,
            direction,
            addr,
            proto,
            port
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(10_000, 1, "proptest-regressions/compiler_differential.txt"))]

    #[test]
    fn compiled_tables_agree_with_the_evaluator(
        policy in policy(),
        picks in prop::collection::vec((any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()), 48),
    ) {
        let packets = packets_for(&policy, &picks);
        assert_tables_agree_with_evaluator(&policy, &packets)?;
    }

    #[test]
    fn compiling_twice_gives_identical_tables(policy in policy()) {
        for phase in &policy.phases {
            prop_assert_eq!(compile_phase(&policy, &phase.name).unwrap(), compile_phase(&policy, &phase.name).unwrap());
        }
    }
}

// ---------------------------------------------------------------------------
// Issue 16's nested shape, small: one phase, many rules on CIDRs nested
// several deep (every prefix length of a small window, the wide ones named
// by several rules), with `proto: any` rules and denies among them. A class
// keeps only the rules that can still decide in it (compile/classes.rs):
// this checks that what is dropped never mattered, at every depth.

fn nested_cidr() -> impl Strategy<Value = IpNet> {
    let v4 = (0u32..256, 22u8..=32).prop_map(|(low, len)| {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) | low);
        IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc())
    });
    let v6 = (0u128..256, 118u8..=128).prop_map(|(low, len)| {
        let addr = Ipv6Addr::from(u128::from("2001:db8::".parse::<Ipv6Addr>().unwrap()) | low);
        IpNet::V6(Ipv6Net::new(addr, len).unwrap().trunc())
    });
    prop_oneof![3 => v4, 1 => v6]
}

prop_compose! {
    fn nested_policy()(
        settings in settings(),
        rules in prop::collection::vec(
            (nested_cidr(), protocols(), prop::bool::weighted(0.2), prop::bool::weighted(0.15)),
            10..60,
        ),
    ) -> Policy {
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(id, (net, protocols, deny, inbound))| Rule {
                id: id as u32,
                name: format!("r{id}"),
                phase: "runtime".into(),
                direction: if inbound { Direction::Inbound } else { Direction::Egress },
                action: if deny { Action::Deny } else { Action::Allow },
                peers: vec![net],
                names: Vec::new(),
                protocols,
                pos: Pos::default(),
            })
            .collect();
        let phases = vec![Phase { name: "runtime".into(), extends: None, settings, dns: None, pos: Pos::default() }];
        Policy { name: "nested".into(), file: "nested.yaml".into(), phases, rules }
    }
}

proptest! {
    #![proptest_config(config(10_000, 5, "proptest-regressions/compiler_differential_nested.txt"))]

    #[test]
    fn nested_policies_compile_faithfully(
        policy in nested_policy(),
        picks in prop::collection::vec((any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()), 96),
    ) {
        let packets = packets_for(&policy, &picks);
        assert_tables_agree_with_evaluator(&policy, &packets)?;
    }
}

// ---------------------------------------------------------------------------
// The same property through the YAML front end: policies rendered as text,
// parsed back, then compiled and evaluated. Fewer cases (parsing dominates).

/// Protocols expressible in one YAML rule: one port protocol with ranges
/// (ports start at 1 in the language), or ICMP with whole types and single
/// type/code pairs, or any.
fn yaml_protocols() -> impl Strategy<Value = Protocols> {
    let ported = (prop::sample::select(vec![TCP, UDP, SCTP]), prop::collection::vec(port_range(), 1..4)).prop_map(
        |(proto, ranges)| {
            let ranges = ranges.into_iter().map(|r| PortRange { first: r.first.max(1), last: r.last.max(1) }).collect();
            Protocols::Only(vec![ProtoPorts { proto, ports: merge_ranges(ranges) }])
        },
    );
    let icmp = prop::collection::vec((0u16..12, prop::option::of(0u16..4)), 1..3).prop_map(|types| {
        let ranges = types
            .into_iter()
            .map(|(t, code)| match code {
                Some(c) => PortRange { first: t << 8 | c, last: t << 8 | c },
                None => PortRange { first: t << 8, last: t << 8 | 0xff },
            })
            .collect();
        Protocols::Only(vec![ProtoPorts { proto: ICMP, ports: merge_ranges(ranges) }])
    });
    prop_oneof![1 => Just(Protocols::Any), 3 => ported, 1 => icmp]
}

fn yaml_ports(p: &ProtoPorts) -> String {
    let entries: Vec<String> = p
        .ports
        .iter()
        .flat_map(|r| {
            if p.proto == ICMP {
                // Whole types, or single type/code values.
                if r.first & 0xff == 0 && r.last & 0xff == 0xff {
                    ((r.first >> 8)..=(r.last >> 8)).map(|t| t.to_string()).collect::<Vec<_>>()
                } else {
                    (r.first..=r.last).map(|v| format!("\"{}/{}\"", v >> 8, v & 0xff)).collect()
                }
            } else if r.first == r.last {
                vec![r.first.to_string()]
            } else {
                vec![format!("\"{}-{}\"", r.first, r.last)]
            }
        })
        .collect();
    entries.join(", ")
}

fn yaml_rule(rule: &Rule) -> String {
    let peer_key = if rule.direction == Direction::Egress { "to" } else { "from" };
    let mut fields = vec![format!("name: {}", rule.name)];
    match rule.peers.as_slice() {
        [] => fields.push(format!("{peer_key}: [\"${{UNSET}}\"], optional: true")),
        [a, b] if a.prefix_len() == 0 && b.prefix_len() == 0 => fields.push(format!("{peer_key}: [any]")),
        nets => {
            let list: Vec<String> = nets.iter().map(|n| format!("\"{n}\"")).collect();
            fields.push(format!("{peer_key}: [{}]", list.join(", ")));
        }
    }
    if let Protocols::Only(list) = &rule.protocols {
        let p = &list[0];
        let name = match p.proto {
            TCP => "tcp",
            UDP => "udp",
            SCTP => "sctp",
            _ => "icmp",
        };
        fields.push(format!("proto: {name}, ports: [{}]", yaml_ports(p)));
    }
    if rule.action == Action::Deny {
        fields.push("action: deny".into());
    }
    format!("      - {{ {} }}\n", fields.join(", "))
}

fn yaml_text(policy: &Policy) -> String {
    let mut text = format!("name: {}\nphases:\n", policy.name);
    for phase in &policy.phases {
        text.push_str(&format!("  {}:\n", phase.name));
        if let Some(parent) = &phase.extends {
            text.push_str(&format!("    extends: {parent}\n"));
        }
        let s = phase.settings;
        let word = |a: Action| if a == Action::Allow { "allow" } else { "drop" };
        text.push_str(&format!("    egress_default: {}\n", word(s.egress_default)));
        text.push_str(&format!("    inbound_default: {}\n", word(s.inbound_default)));
        text.push_str(&format!("    mode: {}\n", if s.audit { "audit" } else { "enforce" }));
        for (key, direction) in [("egress", Direction::Egress), ("inbound", Direction::Inbound)] {
            let rules: Vec<&Rule> =
                policy.rules.iter().filter(|r| r.phase == phase.name && r.direction == direction).collect();
            if !rules.is_empty() {
                text.push_str(&format!("    {key}:\n"));
                rules.iter().for_each(|r| text.push_str(&yaml_rule(r)));
            }
        }
    }
    text
}

prop_compose! {
    fn yaml_policy()(mut policy in policy(), protocols in prop::collection::vec(yaml_protocols(), 10)) -> Policy {
        for (rule, protocols) in policy.rules.iter_mut().zip(protocols) {
            rule.protocols = protocols;
        }
        policy
    }
}

proptest! {
    #![proptest_config(config(10_000, 10, "proptest-regressions/compiler_differential_yaml.txt"))]

    #[test]
    fn yaml_policies_parse_to_the_generated_rules_and_compile_faithfully(
        generated in yaml_policy(),
        picks in prop::collection::vec((any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()), 32),
    ) {
        let text = yaml_text(&generated);
        let vars = fw_user::policy::Vars::from_pairs::<&str, &str>([]);
        let no_dns = |host: &str| -> Result<Vec<IpAddr>, String> { Err(format!("no DNS ({host})")) };
        let parsed = fw_user::policy::parse_str_with_resolver(&text, "generated.yaml", &vars, &no_dns)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .policy;

        // Same rules (matched by name: ids follow the text, which groups
        // rules by phase and direction), same phases.
        prop_assert_eq!(parsed.rules.len(), generated.rules.len());
        for rule in &parsed.rules {
            let original = generated.rules.iter().find(|r| r.name == rule.name).unwrap();
            // A rule left out matches nothing; its protocols are not kept.
            let protocols = if rule.peers.is_empty() { &rule.protocols } else { &original.protocols };
            prop_assert_eq!(
                (&rule.phase, rule.direction, rule.action, &rule.peers, &rule.protocols),
                (&original.phase, original.direction, original.action, &original.peers, protocols),
                "{}", text
            );
        }
        for (p, g) in parsed.phases.iter().zip(&generated.phases) {
            prop_assert_eq!((&p.name, &p.extends, p.settings), (&g.name, &g.extends, g.settings));
        }

        let packets = packets_for(&parsed, &picks);
        assert_tables_agree_with_evaluator(&parsed, &packets)?;
    }
}
