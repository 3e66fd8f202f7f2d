//! Every error kind of the policy language, with its line and column, and
//! the rendered `FILE:LINE:COL: message` form.

use std::net::IpAddr;

use fw_user::policy::{parse_str_with_resolver, ErrorKind, PolicyError, Vars};

/// The fake resolver of these tests: `localhost` resolves, nothing else.
fn resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    match host {
        "localhost" => Ok(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]),
        _ => Err("Name or service not known".into()),
    }
}

fn error_of(yaml: &str) -> PolicyError {
    let vars = Vars::from_pairs([("EMPTY", ""), ("HOOK", "https://203.0.113.20:8443/hook")]);
    match parse_str_with_resolver(yaml, "policies/x.yaml", &vars, &resolve) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

/// Asserts position and kind, and returns the rendered message.
#[track_caller]
fn assert_error(yaml: &str, line: usize, col: usize, kind_matches: fn(&ErrorKind) -> bool) -> String {
    let e = error_of(yaml);
    assert_eq!((e.line, e.col), (line, col), "{e}");
    assert!(kind_matches(&e.kind), "unexpected kind: {e}");
    assert!(e.to_string().starts_with(&format!("policies/x.yaml:{line}:{col}: ")), "{e}");
    e.to_string()
}

/// A one-phase policy with the given egress rules (rules start on line 5).
fn egress(rules: &str) -> String {
    format!("name: t\nphases:\n  runtime:\n    egress:\n{rules}")
}

#[test]
fn port_range_out_of_bounds() {
    let msg = assert_error(&egress("      - { name: a, proto: tcp, ports: [\"70000-80000\"] }\n"), 5, 40, |k| {
        matches!(k, ErrorKind::PortOutOfBounds(_))
    });
    assert_eq!(msg, "policies/x.yaml:5:40: port range 70000-80000 out of bounds (ports are 1-65535)");
    assert_error(
        &egress("      - name: a\n        proto: tcp\n        ports: [0]\n"),
        7,
        17,
        |k| matches!(k, ErrorKind::PortOutOfBounds(s) if s == "port 0"),
    );
}

#[test]
fn inverted_range_and_bad_port() {
    assert_error(&egress("      - { name: a, proto: udp, ports: [\"90-80\"] }\n"), 5, 40, |k| {
        matches!(k, ErrorKind::InvertedRange(_))
    });
    assert_error(&egress("      - { name: a, proto: udp, ports: [https] }\n"), 5, 40, |k| {
        matches!(k, ErrorKind::BadPort(_))
    });
}

#[test]
fn bad_icmp_type() {
    assert_error(&egress("      - { name: a, proto: icmp, ports: [\"8/300\"] }\n"), 5, 41, |k| {
        matches!(k, ErrorKind::BadIcmpType(_))
    });
}

#[test]
fn protocol_errors() {
    assert_error(
        &egress("      - { name: a, proto: tls, ports: [5061] }\n"),
        5,
        27,
        |k| matches!(k, ErrorKind::UnknownProtocol(p) if p == "tls"),
    );
    let msg = assert_error(&egress("      - { name: a, to: [any], proto: tcp }\n"), 5, 31, |k| {
        matches!(k, ErrorKind::MissingPorts { .. })
    });
    assert!(msg.contains("protocol without ports where ports are needed") && msg.contains("ports: any"), "{msg}");
    assert_error(&egress("      - { name: a, proto: any, ports: [80] }\n"), 5, 32, |k| {
        matches!(k, ErrorKind::PortsWithAnyProtocol)
    });
    assert_error(&egress("      - { name: a, to: [any], ports: [80] }\n"), 5, 31, |k| {
        matches!(k, ErrorKind::PortsWithoutProtocol)
    });
    assert_error(&egress("      - { name: a, proto: [tcp, icmp], ports: [80] }\n"), 5, 40, |k| {
        matches!(k, ErrorKind::MixedPortMeaning { .. })
    });
    assert_error(&egress("      - { name: a, proto: [], ports: [80] }\n"), 5, 20, |k| {
        matches!(k, ErrorKind::EmptyList { key: "proto" })
    });
}

#[test]
fn address_errors() {
    assert_error(&egress("      - { name: a, to: [\"203.0.113.0/33\"] }\n"), 5, 25, |k| {
        matches!(k, ErrorKind::BadAddress(_))
    });
    assert_error(&egress("      - { name: a, to: [no_such_set] }\n"), 5, 25, |k| matches!(k, ErrorKind::BadAddress(_)));
    let msg = assert_error(
        &egress("      - { name: a, to: [nowhere.invalid] }\n"),
        5,
        25,
        |k| matches!(k, ErrorKind::UnresolvedHost { host, .. } if host == "nowhere.invalid"),
    );
    assert!(msg.contains("optional: true"), "{msg}");
    let msg = assert_error(
        &egress("      - { name: a, to: [\"*.vonage.com\"], proto: tcp, ports: [443] }\n"),
        5,
        25,
        |k| matches!(k, ErrorKind::NameNeedsResolvers { name, phase } if name == "*.vonage.com" && phase == "runtime"),
    );
    assert!(msg.contains("dns: { resolvers: [...] }"), "{msg}");
    assert_error(&egress("      - { name: a, to: [] }\n"), 5, 20, |k| matches!(k, ErrorKind::EmptyList { .. }));
    assert_error("name: t\naddresses:\n  s: [\"https://example.com/\"]\nphases:\n  runtime: {}\n", 3, 7, |k| {
        matches!(k, ErrorKind::BadAddress(_))
    });
}

#[test]
fn wrong_peer_key_for_the_direction() {
    assert_error("phases:\n  runtime:\n    inbound:\n      - { name: a, to: [any] }\n", 4, 20, |k| {
        matches!(k, ErrorKind::WrongPeerKey { expected: "from", .. })
    });
    assert_error(&egress("      - { name: a, from: [any] }\n"), 5, 20, |k| {
        matches!(k, ErrorKind::WrongPeerKey { expected: "to", .. })
    });
}

#[test]
fn variables() {
    let msg = assert_error(
        &egress("      - { name: a, to: [\"${NOT_SET}\"] }\n"),
        5,
        25,
        |k| matches!(k, ErrorKind::UnsetVariable(v) if v == "NOT_SET"),
    );
    assert!(msg.contains("optional: true"), "{msg}");
    assert_error(&egress("      - { name: a, to: [\"${EMPTY}\"] }\n"), 5, 25, |k| {
        matches!(k, ErrorKind::UnsetVariable(_))
    });
    assert_error(&egress("      - { name: a, to: [\"${HOOK\"] }\n"), 5, 25, |k| {
        matches!(k, ErrorKind::MalformedVariable(_))
    });
    // Outside rules, `optional` cannot help: still an error.
    assert_error("name: t\naddresses:\n  s: [\"${NOT_SET}\"]\nphases:\n  runtime: {}\n", 3, 7, |k| {
        matches!(k, ErrorKind::UnsetVariable(_))
    });
}

#[test]
fn unknown_and_missing_keys() {
    let msg =
        assert_error(&egress("      - { name: a, prot: tcp }\n"), 5, 20, |k| matches!(k, ErrorKind::UnknownKey { .. }));
    assert!(
        msg.contains("unknown key `prot` in a rule (expected one of: name, to, proto, ports, action, optional)"),
        "{msg}"
    );
    assert_error("name: t\nphase:\n  runtime: {}\n", 2, 1, |k| {
        matches!(k, ErrorKind::UnknownKey { context: "the policy", .. })
    });
    assert_error("phases:\n  runtime:\n    egres: []\n", 3, 5, |k| {
        matches!(k, ErrorKind::UnknownKey { context: "a phase", .. })
    });
    assert_error(&egress("      - { to: [any] }\n"), 5, 9, |k| matches!(k, ErrorKind::MissingKey { key: "name", .. }));
}

#[test]
fn invalid_values() {
    assert_error("phases:\n  runtime:\n    mode: enforse\n", 3, 11, |k| {
        matches!(k, ErrorKind::InvalidValue { key: "mode", .. })
    });
    assert_error("phases:\n  runtime:\n    reject: maybe\n", 3, 13, |k| {
        matches!(k, ErrorKind::InvalidValue { key: "reject", .. })
    });
    assert_error("phases:\n  runtime:\n    egress_default: maybe\n", 3, 21, |k| {
        matches!(k, ErrorKind::InvalidValue { key: "egress_default", .. })
    });
    assert_error("phases:\n  runtime:\n    inbound_default: reject\n", 3, 22, |k| {
        matches!(k, ErrorKind::InvalidValue { key: "inbound_default", .. })
    });
    assert_error(&egress("      - { name: a, action: block }\n"), 5, 28, |k| {
        matches!(k, ErrorKind::InvalidValue { key: "action", .. })
    });
    assert_error(&egress("      - { name: a, optional: perhaps }\n"), 5, 30, |k| {
        matches!(k, ErrorKind::InvalidValue { key: "optional", .. })
    });
}

#[test]
fn wrong_types() {
    assert_error("phases:\n  runtime:\n    egress: { name: a }\n", 3, 13, |k| {
        matches!(k, ErrorKind::WrongType { expected: "a list of rules", found: "a mapping", .. })
    });
    assert_error(&egress("      - just-a-string\n"), 5, 9, |k| {
        matches!(k, ErrorKind::WrongType { expected: "a mapping", .. })
    });
    assert_error(&egress("      - { name: a, to: { x: y } }\n"), 5, 24, |k| matches!(k, ErrorKind::WrongType { .. }));
    assert_error(&egress("      - { name: [a, b] }\n"), 5, 17, |k| {
        matches!(k, ErrorKind::WrongType { expected: "a string", .. })
    });
    assert_error("- a\n- b\n", 1, 1, |k| matches!(k, ErrorKind::WrongType { .. }));
}

#[test]
fn phases_and_extends() {
    assert_error("name: t\nphases: {}\n", 2, 1, |k| matches!(k, ErrorKind::NoPhases));
    assert_error("name: t\n", 1, 1, |k| matches!(k, ErrorKind::NoPhases));
    assert_error(
        "phases:\n  install:\n    extends: runtim\n  runtime: {}\n",
        3,
        14,
        |k| matches!(k, ErrorKind::UnknownPhase { parent, .. } if parent == "runtim"),
    );
    let msg = assert_error("phases:\n  a:\n    extends: b\n  b:\n    extends: c\n  c:\n    extends: a\n", 7, 14, |k| {
        matches!(k, ErrorKind::ExtendsCycle { .. })
    });
    assert!(msg.ends_with("cycle: a -> b -> c -> a"), "{msg}");
    assert_error("phases:\n  a:\n    extends: a\n", 3, 14, |k| matches!(k, ErrorKind::ExtendsCycle { .. }));
}

#[test]
fn duplicates() {
    let msg = assert_error(
        "phases:\n  runtime:\n    egress:\n      - { name: web, to: [any], proto: tcp, ports: [443] }\n  install:\n    egress:\n      - { name: web, to: [any], proto: tcp, ports: [80] }\n",
        7,
        17,
        |k| matches!(k, ErrorKind::DuplicateRuleName { first_line: 4, .. }),
    );
    assert!(msg.contains("unique across all phases"), "{msg}");
    assert_error("phases:\n  runtime: {}\n  runtime: {}\n", 3, 3, |k| {
        matches!(k, ErrorKind::DuplicateKey { first_line: 2, .. })
    });
}

#[test]
fn yaml_syntax() {
    assert_error("phases:\n  runtime:\n    egress: [\n", 4, 1, |k| matches!(k, ErrorKind::Syntax(_)));
    assert_error("name: &a t\nphases:\n  runtime: {}\n", 1, 10, |k| matches!(k, ErrorKind::Syntax(_)));
}

#[test]
fn unreadable_file_has_no_position() {
    let e = fw_user::source::file::load_policy_file(
        std::path::Path::new("/nonexistent/x.yaml"),
        &Vars::from_pairs::<&str, &str>([]),
    )
    .unwrap_err();
    assert_eq!((e.line, e.col), (0, 0));
    assert!(matches!(e.kind, ErrorKind::Io(_)));
    assert!(e.to_string().starts_with("/nonexistent/x.yaml: cannot read the file: "), "{e}");
}

#[test]
fn env_file_errors_name_the_env_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    std::fs::write(&path, "# ok\nA=1\nB 2\n").unwrap();
    let e = fw_user::source::file::env_vars(Some(&path)).unwrap_err();
    assert_eq!((e.line, e.col), (3, 1));
    assert!(matches!(e.kind, ErrorKind::BadEnvLine(_)));
}

/// `timeouts:` (issue 12, finding 1): durations from a second to a year,
/// known keys only, each error at its value.
#[test]
fn timeouts_take_durations_within_bounds() {
    let phase = |t: &str| format!("phases:\n  runtime:\n    timeouts: {t}\n");
    let msg = assert_error(&phase("{ udp: 10x }"), 3, 22, |k| matches!(k, ErrorKind::BadTimeout { .. }));
    assert!(msg.ends_with("`timeouts.udp: 10x`: expected a duration like 30s, 10m, 2h or 5d"), "{msg}");
    let msg = assert_error(&phase("{ tcp_closing: 0s }"), 3, 30, |k| matches!(k, ErrorKind::BadTimeout { .. }));
    assert!(msg.contains("out of bounds (from 1s to 365d)"), "{msg}");
    assert_error(&phase("{ other: 366d }"), 3, 24, |k| matches!(k, ErrorKind::BadTimeout { .. }));
    assert_error(&phase("{ other: 99999999999999999999 }"), 3, 24, |k| matches!(k, ErrorKind::BadTimeout { .. }));
    assert_error(
        &phase("{ tcp_establised: 5d }"),
        3,
        17,
        |k| matches!(k, ErrorKind::UnknownKey { key, .. } if key == "tcp_establised"),
    );
    assert_error(&phase("5d"), 3, 15, |k| matches!(k, ErrorKind::WrongType { .. }));
    let vars = Vars::from_pairs::<&str, &str>([]);
    let ok = parse_str_with_resolver(&phase("{ tcp_established: 1d, udp: 2m, other: 45 }"), "t.yaml", &vars, &resolve)
        .unwrap();
    let t = ok.policy.phases[0].settings.timeouts;
    assert_eq!((t.tcp_established, t.tcp_closing, t.udp, t.other), (86_400, 10, 120, 45));
}
