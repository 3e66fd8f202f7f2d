//! Semantics of the policy language through the whole front end: variables,
//! URLs, names, sets, file order, `extends`, ICMP, defaults, warnings and
//! lints. Host names resolve through a fake resolver (`localhost` only).

use std::net::IpAddr;

use fw_common::{
    policy::proto::{ICMP, TCP, UDP},
    Action, Direction,
};
use fw_user::{
    policy::compile::{compile_all, compile_phase, Limits},
    policy::eval::{evaluate, EvalVerdict},
    policy::report,
    policy::{ir::Protocols, parse_str_with_resolver, LoadedPolicy, Vars},
};

fn resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    match host {
        "localhost" => Ok(vec!["::1".parse().unwrap(), "127.0.0.1".parse().unwrap()]),
        _ => Err("Name or service not known".into()),
    }
}

fn load(yaml: &str) -> LoadedPolicy {
    let vars = Vars::from_pairs([
        ("HOOK", "https://203.0.113.20:8443/path"),
        ("PLAIN_HOOK", "http://localhost/x"),
        ("IP", "203.0.113.10"),
    ]);
    parse_str_with_resolver(yaml, "t.yaml", &vars, &resolve).unwrap_or_else(|e| panic!("{e}"))
}

fn verdict(
    loaded: &LoadedPolicy,
    phase: &str,
    direction: Direction,
    addr: &str,
    proto: u8,
    port: u16,
) -> (Action, Option<String>) {
    let addr: IpAddr = addr.parse().unwrap();
    let EvalVerdict { action, rule } = evaluate(&loaded.policy, phase, direction, addr, proto, port).unwrap();
    // The compiled tables must agree on every example of this file.
    let table = compile_phase(&loaded.policy, phase).unwrap().lookup(direction, addr, proto, port);
    assert_eq!((table.action(), table.rule()), (action, rule), "tables vs evaluator");
    (action, rule.map(|id| loaded.policy.rules[id as usize].name.clone()))
}

fn codes(loaded: &LoadedPolicy) -> Vec<&str> {
    loaded.warnings.iter().map(|w| &*w.code).collect()
}

use Action::{Allow, Deny};
use Direction::{Egress, Inbound};

const EXAMPLE: &str = r#"
name: openvidu-ce
addresses:
  vonage: [216.147.0.0/18, 168.100.64.0/18]
phases:
  runtime:
    inbound_default: allow
    egress_default: drop
    mode: enforce
    inbound:
      - { name: https, proto: tcp, ports: [443] }
      - { name: media, proto: [tcp, udp], ports: ["40000-65535"] }
    egress:
      - { name: webhook, to: ["${OPENVIDU_WEBHOOK_ENDPOINT}"], optional: true }
      - { name: no-smtp, to: [any], proto: tcp, ports: [25], action: deny }
      - { name: vonage-media, to: [vonage], proto: udp, ports: ["10000-50000"] }
  install:
    extends: runtime
    egress:
      - { name: dns, to: [any], proto: [udp, tcp], ports: [53] }
      - { name: mail-relay, to: [203.0.113.25], proto: tcp, ports: [25] }
"#;

#[test]
fn the_documented_example() {
    let loaded = load(EXAMPLE);
    // The unset webhook variable leaves its optional rule out, with a warning.
    assert_eq!(codes(&loaded), ["optional-left-out"]);
    let names: Vec<&str> = loaded.policy.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["https", "media", "webhook", "no-smtp", "vonage-media", "dns", "mail-relay"]);

    assert_eq!(verdict(&loaded, "runtime", Inbound, "198.51.100.1", TCP, 443), (Allow, Some("https".into())));
    assert_eq!(verdict(&loaded, "runtime", Inbound, "198.51.100.1", TCP, 8080), (Allow, None));
    assert_eq!(verdict(&loaded, "runtime", Egress, "216.147.10.1", UDP, 20000), (Allow, Some("vonage-media".into())));
    assert_eq!(verdict(&loaded, "runtime", Egress, "198.51.100.53", UDP, 53), (Deny, None));
    assert_eq!(verdict(&loaded, "install", Egress, "198.51.100.53", UDP, 53), (Allow, Some("dns".into())));
    // A deny beats every allow, even a later, more specific one.
    assert_eq!(verdict(&loaded, "install", Egress, "203.0.113.25", TCP, 25), (Deny, Some("no-smtp".into())));
}

#[test]
fn file_order_is_textual_position_across_phases_and_directions() {
    let loaded = load(
        "phases:\n  install:\n    extends: runtime\n    egress:\n      - { name: first, to: [any], proto: tcp, ports: [80] }\n  runtime:\n    egress:\n      - { name: second, to: [any], proto: tcp, ports: [80] }\n    inbound:\n      - { name: third, proto: tcp, ports: [22] }\n",
    );
    let ids: Vec<(&str, u32)> = loaded.policy.rules.iter().map(|r| (r.name.as_str(), r.id)).collect();
    assert_eq!(ids, [("first", 0), ("second", 1), ("third", 2)]);
    // Both allow port 80 in install: the first in file order is reported,
    // although it belongs to the extending phase.
    assert_eq!(verdict(&loaded, "install", Egress, "198.51.100.1", TCP, 80), (Allow, Some("first".into())));
    assert_eq!(verdict(&loaded, "runtime", Egress, "198.51.100.1", TCP, 80), (Allow, Some("second".into())));
}

#[test]
fn extends_chains() {
    let loaded = load(
        "phases:\n  a:\n    egress:\n      - { name: ra, to: [any], proto: tcp, ports: [1] }\n  b:\n    extends: a\n  c:\n    extends: b\n    egress:\n      - { name: rc, to: [any], proto: tcp, ports: [2] }\n",
    );
    assert_eq!(verdict(&loaded, "c", Egress, "198.51.100.1", TCP, 1), (Allow, Some("ra".into())));
    assert_eq!(verdict(&loaded, "c", Egress, "198.51.100.1", TCP, 2), (Allow, Some("rc".into())));
    assert_eq!(verdict(&loaded, "b", Egress, "198.51.100.1", TCP, 2), (Deny, None));
}

#[test]
fn url_endpoints_imply_tcp_and_their_port_unless_the_rule_says_otherwise() {
    let loaded = load(
        "phases:\n  runtime:\n    egress:\n      - { name: hook, to: [\"${HOOK}\"] }\n      - { name: hook-udp, to: [\"https://203.0.113.21/\"], proto: udp }\n      - { name: hook-ports, to: [\"http://203.0.113.22:8080/\"], proto: tcp, ports: [9000] }\n",
    );
    assert_eq!(verdict(&loaded, "runtime", Egress, "203.0.113.20", TCP, 8443), (Allow, Some("hook".into())));
    assert_eq!(verdict(&loaded, "runtime", Egress, "203.0.113.20", TCP, 443), (Deny, None));
    assert_eq!(verdict(&loaded, "runtime", Egress, "203.0.113.20", UDP, 8443), (Deny, None));
    // Explicit proto wins, the port still comes from the URL scheme.
    assert_eq!(verdict(&loaded, "runtime", Egress, "203.0.113.21", UDP, 443), (Allow, Some("hook-udp".into())));
    assert_eq!(verdict(&loaded, "runtime", Egress, "203.0.113.21", TCP, 443), (Deny, None));
    // Explicit ports win over the URL's.
    assert_eq!(verdict(&loaded, "runtime", Egress, "203.0.113.22", TCP, 9000), (Allow, Some("hook-ports".into())));
    assert_eq!(verdict(&loaded, "runtime", Egress, "203.0.113.22", TCP, 8080), (Deny, None));
}

#[test]
fn host_names_resolve_to_every_address_with_a_warning() {
    let loaded = load("phases:\n  runtime:\n    egress:\n      - { name: hook, to: [\"${PLAIN_HOOK}\"] }\n");
    let w = &loaded.warnings[0];
    assert_eq!((&*w.code, w.line, w.col), ("resolved-host", 4, 28));
    assert!(
        w.message.contains("127.0.0.1, ::1") && w.message.contains("fixed until the next compile"),
        "{}",
        w.message
    );
    assert_eq!(verdict(&loaded, "runtime", Egress, "127.0.0.1", TCP, 80), (Allow, Some("hook".into())));
    assert_eq!(verdict(&loaded, "runtime", Egress, "::1", TCP, 80), (Allow, Some("hook".into())));
}

#[test]
fn unresolvable_optional_names_leave_the_rule_out_and_wildcards_are_tracked_names() {
    let loaded = load(
        "phases:\n  runtime:\n    dns: { resolvers: [198.18.0.53] }\n    egress:\n      - { name: gone, to: [nowhere.invalid], optional: true, action: deny }\n      - { name: mixed, to: [\"*.vonage.com\", 216.147.0.0/18], proto: tcp, ports: [443] }\n",
    );
    assert_eq!(codes(&loaded), ["optional-left-out"]);
    assert!(loaded.policy.rules[0].peers.is_empty());
    assert_eq!(loaded.policy.rules[1].names.iter().map(ToString::to_string).collect::<Vec<_>>(), ["*.vonage.com"]);
    assert_eq!(verdict(&loaded, "runtime", Egress, "216.147.0.9", TCP, 443), (Allow, Some("mixed".into())));
}

#[test]
fn host_bits_are_normalized_with_a_warning() {
    let loaded =
        load("phases:\n  runtime:\n    egress:\n      - { name: a, to: [203.0.113.77/24], proto: udp, ports: any }\n");
    assert_eq!(codes(&loaded), ["host-bits"]);
    assert!(loaded.warnings[0].message.contains("203.0.113.0/24"));
    assert_eq!(verdict(&loaded, "runtime", Egress, "203.0.113.1", UDP, 1), (Allow, Some("a".into())));
}

#[test]
fn icmp_types_and_codes_ride_in_the_port_field() {
    let loaded = load(
        "phases:\n  runtime:\n    egress:\n      - { name: ping, to: [any], proto: icmp, ports: [8] }\n      - { name: unreach-port, to: [any], proto: icmp, ports: [\"3/3\"] }\n      - { name: v6, to: [any], proto: icmpv6 }\n",
    );
    assert_eq!(verdict(&loaded, "runtime", Egress, "198.51.100.1", ICMP, 8 << 8), (Allow, Some("ping".into())));
    assert_eq!(verdict(&loaded, "runtime", Egress, "198.51.100.1", ICMP, 8 << 8 | 5), (Allow, Some("ping".into())));
    assert_eq!(
        verdict(&loaded, "runtime", Egress, "198.51.100.1", ICMP, 3 << 8 | 3),
        (Allow, Some("unreach-port".into()))
    );
    assert_eq!(verdict(&loaded, "runtime", Egress, "198.51.100.1", ICMP, 3 << 8 | 1), (Deny, None));
    assert_eq!(verdict(&loaded, "runtime", Egress, "2001:db8::1", 58, 128 << 8), (Allow, Some("v6".into())));
}

#[test]
fn omitted_peer_and_proto_mean_any_and_defaults_can_flip() {
    let loaded = load(
        "phases:\n  runtime:\n    inbound_default: drop\n    egress_default: allow\n    inbound:\n      - { name: ssh-from-admin, from: [198.51.100.0/24], proto: tcp, ports: [22] }\n    egress:\n      - { name: no-telnet, proto: tcp, ports: [23], action: deny }\n",
    );
    assert_eq!(verdict(&loaded, "runtime", Inbound, "198.51.100.9", TCP, 22), (Allow, Some("ssh-from-admin".into())));
    assert_eq!(verdict(&loaded, "runtime", Inbound, "198.51.101.9", TCP, 22), (Deny, None));
    assert_eq!(verdict(&loaded, "runtime", Egress, "2001:db8::23", TCP, 23), (Deny, Some("no-telnet".into())));
    assert_eq!(verdict(&loaded, "runtime", Egress, "2001:db8::23", UDP, 23), (Allow, None));
    assert_eq!(
        loaded.policy.rules[1].protocols,
        Protocols::Only(vec![fw_user::policy::ir::ProtoPorts {
            proto: TCP,
            ports: vec![fw_user::policy::ir::PortRange { first: 23, last: 23 }],
        }])
    );
}

#[test]
fn lints_report_shadowed_rules_open_egress_and_allow_everything_in_runtime() {
    let loaded = load(
        "phases:\n  runtime:\n    inbound:\n      - { name: all-in, from: [any] }\n    egress:\n      - { name: web, to: [any], proto: tcp, ports: [80, 443] }\n      - { name: https, to: [203.0.113.0/24], proto: tcp, ports: [443] }\n      - { name: everything, to: [any] }\n  debug:\n    egress:\n      - { name: block-web, to: [any], proto: tcp, ports: [\"1-1024\"], action: deny }\n      - { name: https-again, to: [any], proto: tcp, ports: [443] }\n",
    );
    let checked = report::check(&loaded, None, &Limits::default(), fw_user::source::host::ephemeral_range()).unwrap();
    let lint: Vec<(&str, String)> = checked.warnings.iter().map(|w| (&*w.code, w.to_string())).collect();
    assert_eq!(lint.len(), 4, "{lint:#?}");
    assert_eq!(lint[0].0, "shadowed-rule");
    assert!(
        lint[0].1.starts_with("t.yaml:7:9: warning: rule `https` never decides a packet in any phase"),
        "{}",
        lint[0].1
    );
    assert_eq!(lint[1].0, "shadowed-rule");
    assert!(lint[1].1.contains("`https-again`"), "{}", lint[1].1);
    // An egress rule that allows everything is open egress (reported once);
    // an inbound one is still allow-everything.
    assert_eq!(lint[2].0, "open-egress");
    assert!(checked.warnings[2].is_open_egress());
    assert!(
        lint[2].1.starts_with("t.yaml:8:9: warning: rule `everything` allows every address on every port"),
        "{}",
        lint[2].1
    );
    assert_eq!(lint[3].0, "allow-everything");
    assert!(lint[3].1.starts_with("t.yaml:4:9: warning: rule `all-in` allows every protocol"), "{}", lint[3].1);
}

#[test]
fn compiling_is_deterministic_and_names_unknown_phases() {
    let loaded = load(EXAMPLE);
    assert_eq!(compile_all(&loaded.policy).unwrap(), compile_all(&loaded.policy).unwrap());
    let err = compile_phase(&loaded.policy, "runtim").unwrap_err();
    assert_eq!(err.to_string(), "no phase named `runtim` in the policy (phases: runtime, install)");
}

#[test]
fn capacity_check_counts_entries_against_half_of_each_map() {
    let loaded = load(EXAMPLE);
    let compiled = compile_phase(&loaded.policy, "install").unwrap();
    let needed = compiled.ports.len();
    let tight = Limits { port_entries: (needed as u32) * 2 - 1, ..Limits::default() };
    let err = fw_user::policy::compile::check_capacity(&compiled, &tight).unwrap_err();
    assert!(
        err.to_string().contains(&format!("needs {needed} entries in FW_PORTS but only {} are available", needed - 1)),
        "{err}"
    );
    let exact = Limits { port_entries: (needed as u32) * 2, ..Limits::default() };
    fw_user::policy::compile::check_capacity(&compiled, &exact).unwrap();
    let few_rules = Limits { max_rules: 3, ..Limits::default() };
    assert!(fw_user::policy::compile::check_capacity(&compiled, &few_rules).is_err());
}

#[test]
fn reject_defaults_to_true_and_a_phase_can_turn_it_off() {
    let loaded = load("phases:\n  quiet:\n    reject: false\n  loud:\n    egress: []\n");
    assert!(!compile_phase(&loaded.policy, "quiet").unwrap().settings.reject);
    assert!(compile_phase(&loaded.policy, "loud").unwrap().settings.reject);
}

/// `fw check` says how many IPv4 /16s have no room in the table packets
/// read (docs/datapath.md, "IPv4 address classes"): 1,101 /16s with a /24
/// each (1,100 of one rule, one of another) against 1,024 chunks by default
/// leave 77 to the trie.
#[test]
fn check_counts_the_ipv4_slash16s_left_to_the_trie() {
    let many: Vec<String> = (0..1100).map(|i| format!("\"{}.{}.1.0/24\"", 20 + i / 256, i % 256)).collect();
    let yaml = format!("phases:\n  runtime:\n    egress:\n      - {{ name: many, to: [{}], proto: tcp, ports: [443] }}\n      - {{ name: one, to: [\"198.51.100.0/24\"], proto: udp, ports: [53] }}\n", many.join(", "));
    let checked = report::check(&load(&yaml), None, &Limits::default(), None).unwrap();
    let text = report::render_text(&checked);
    assert!(text.contains("# 77 IPv4 /16s (per direction) do not fit FW_ADDR4_MID and FW_ADDR4_HOSTS"), "{text}");
    assert_eq!(report::render_json(&checked)["phases"][0]["ipv4_slash16s_in_trie"], 77);

    let small =
        "phases:\n  runtime:\n    egress:\n      - { name: one, to: [\"198.51.100.0/24\"], proto: udp, ports: [53] }\n";
    let checked = report::check(&load(small), None, &Limits::default(), None).unwrap();
    assert!(!report::render_text(&checked).contains("IPv4 /16s"));
    assert_eq!(report::render_json(&checked)["phases"][0]["ipv4_slash16s_in_trie"], 0);
}
