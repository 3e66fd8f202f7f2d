//! Issue 14, the language: `dns:` per phase and DNS names in `to:`, tracked
//! at run time. Errors name file:line:col; the compiled tables give each
//! name rule its own port class.

use std::net::IpAddr;

use fw_common::{names::name_class, policy::proto::TCP, Action};
use fw_user::policy::{
    compile::compile_phase,
    explain::{explain_name, MatchKind},
    ir::{Refusal, Resolver, DEFAULT_MAX_PER_NAME, DEFAULT_MAX_TOTAL, DEFAULT_MIN_TTL},
    names::{NamePattern, NameRules},
    parse_str_with_resolver, ErrorKind, LoadedPolicy, PolicyError, Vars,
};

/// Names are never resolved while compiling a phase with `dns:`: this
/// resolver fails the test if asked.
fn no_dns(host: &str) -> Result<Vec<IpAddr>, String> {
    panic!("`{host}` was resolved at compile time")
}

fn vars() -> Vars {
    Vars::from_pairs([("HOOK", "https://hooks.example.com:8443/openvidu"), ("DNS", "198.18.0.53,2001:db8::53")])
}

fn load(yaml: &str) -> LoadedPolicy {
    parse_str_with_resolver(yaml, "policies/x.yaml", &vars(), &no_dns).unwrap_or_else(|e| panic!("{e}"))
}

fn error_of(yaml: &str) -> PolicyError {
    let local = |host: &str| -> Result<Vec<IpAddr>, String> {
        if host == "localhost" {
            Ok(vec!["127.0.0.1".parse().unwrap()])
        } else {
            Err("unknown".into())
        }
    };
    match parse_str_with_resolver(yaml, "policies/x.yaml", &vars(), &local) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_error(yaml: &str, line: usize, col: usize, kind_matches: fn(&ErrorKind) -> bool) -> String {
    let e = error_of(yaml);
    assert_eq!((e.line, e.col), (line, col), "{e}");
    assert!(kind_matches(&e.kind), "unexpected kind: {e}");
    assert!(e.to_string().starts_with(&format!("policies/x.yaml:{line}:{col}: ")), "{e}");
    e.to_string()
}

const ISSUE_EXAMPLE: &str = "\
phases:
  runtime:
    dns:
      resolvers: [system, \"${DNS}\"]
      queries: policy
    egress:
      - { name: acme, to: [ACME-v02.api.letsencrypt.org.], proto: tcp, ports: [443] }
      - { name: vonage, to: [\"*.opentok.com\", \"**.tokbox.com\", 203.0.113.0/24], proto: tcp, ports: [443] }
      - { name: webhook, to: [\"${HOOK}\"], optional: true }
  install:
    extends: runtime
    egress:
      - { name: apt, to: [deb.debian.org], proto: tcp, ports: [80] }
";

#[test]
fn the_issue_example_tracks_names_and_resolves_none() {
    let loaded = load(ISSUE_EXAMPLE);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let rules = &loaded.policy.rules;
    let names = |i: usize| rules[i].names.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(names(0), ["acme-v02.api.letsencrypt.org"], "lower case, no trailing dot");
    assert_eq!(names(1), ["*.opentok.com", "**.tokbox.com"]);
    assert_eq!(rules[1].peers, vec!["203.0.113.0/24".parse().unwrap()], "addresses stay static");
    // A URL with a host name is a name rule: TCP and the URL's port.
    assert_eq!(names(2), ["hooks.example.com"]);
    assert!(rules[2].peers.is_empty());
    // The inherited `dns:` makes `install`'s names run-time names too.
    assert_eq!(names(3), ["deb.debian.org"]);

    let dns = loaded.policy.dns_of_phase("install").expect("inherited dns");
    assert_eq!(
        dns.resolvers,
        vec![
            Resolver::System,
            Resolver::Addr("198.18.0.53".parse().unwrap()),
            Resolver::Addr("2001:db8::53".parse().unwrap())
        ]
    );
    assert!(dns.only_policy_names);
    assert_eq!(dns.min_ttl, DEFAULT_MIN_TTL);
}

#[test]
fn each_name_rule_gets_a_port_class_with_its_protocols_and_ports_only() {
    let loaded = load(ISSUE_EXAMPLE);
    let runtime = compile_phase(&loaded.policy, "runtime").unwrap();
    let acme: Vec<_> = runtime.ports.iter().filter(|e| e.class == name_class(0)).collect();
    assert_eq!(acme.len(), 1, "{acme:?}");
    assert_eq!((acme[0].proto, acme[0].port, acme[0].port_prefix_len), (Some(TCP), 443, 16));
    assert_eq!((acme[0].value.rule, acme[0].value.action()), (0, Action::Allow));
    let webhook: Vec<_> = runtime.ports.iter().filter(|e| e.class == name_class(2)).collect();
    assert_eq!((webhook[0].proto, webhook[0].port), (Some(TCP), 8443));
    // `apt` is install's: no class in runtime, one in install.
    assert!(!runtime.ports.iter().any(|e| e.class == name_class(3)));
    let install = compile_phase(&loaded.policy, "install").unwrap();
    assert!(install.ports.iter().any(|e| e.class == name_class(3)));
    assert!(install.ports.iter().any(|e| e.class == name_class(0)), "inherited name rules keep their class");
    assert_eq!(install.dns.as_ref().map(Vec::len), Some(3));
    // The static part of a rule is unchanged.
    assert_eq!(runtime.lookup(fw_common::Direction::Egress, "203.0.113.9".parse().unwrap(), TCP, 443).rule(), Some(1));
}

#[test]
fn min_ttl_and_queries_are_read_and_checked() {
    let loaded = load("phases:\n  p:\n    dns: { resolvers: 198.18.0.53, min_ttl: 0, queries: any }\n");
    let dns = loaded.policy.dns_of_phase("p").unwrap();
    assert_eq!((dns.min_ttl, dns.only_policy_names), (0, false));
    assert_error("phases:\n  p:\n    dns: { resolvers: [system], min_ttl: -1 }\n", 3, 42, |k| {
        matches!(k, ErrorKind::InvalidValue { key: "min_ttl", .. })
    });
    assert_error("phases:\n  p:\n    dns: { resolvers: [system], queries: some }\n", 3, 42, |k| {
        matches!(k, ErrorKind::InvalidValue { key: "queries", .. })
    });
}

#[test]
fn caps_and_refusal_are_read_and_checked() {
    let loaded = load("phases:\n  p:\n    dns: { resolvers: [system] }\n");
    let dns = loaded.policy.dns_of_phase("p").unwrap();
    assert_eq!(
        (dns.max_per_name, dns.max_total, dns.refuse_with),
        (DEFAULT_MAX_PER_NAME, DEFAULT_MAX_TOTAL, Refusal::Refused)
    );
    let loaded = load(
        "phases:\n  p:\n    dns: { resolvers: [system], queries: policy, refuse_with: nxdomain, max_addresses_per_name: 4, max_addresses: 131072 }\n",
    );
    let dns = loaded.policy.dns_of_phase("p").unwrap();
    assert_eq!((dns.max_per_name, dns.max_total, dns.refuse_with), (4, 131_072, Refusal::NxDomain));
    for (bad, key) in [
        ("max_addresses_per_name: 0", "max_addresses_per_name"),
        ("max_addresses: 131073", "max_addresses"),
        ("refuse_with: drop", "refuse_with"),
    ] {
        let yaml = format!("phases:\n  p:\n    dns: {{ resolvers: [system], {bad} }}\n");
        let e = error_of(&yaml);
        assert!(matches!(e.kind, ErrorKind::InvalidValue { key: k, .. } if k == key), "{e}");
        // The value, after `    dns: { resolvers: [system], KEY: `.
        assert_eq!((e.line, e.col), (3, 33 + key.len() + 2), "{e}");
    }
}

/// `fw explain NAME` offline: a name a name rule matches gets that rule's
/// verdict on its ports and the default elsewhere; a name no pattern
/// matches is not judged by name (the caller resolves it).
#[test]
fn a_name_is_explained_by_the_name_rule_that_matches_it() {
    let loaded = load(ISSUE_EXAMPLE);
    let compiled = compile_phase(&loaded.policy, "runtime").unwrap();
    let rules = NameRules::of_phase(&loaded.policy, "runtime").unwrap();
    let e = explain_name(&compiled, &rules, "Media.OpenTok.com.", TCP, 443).expect("a name rule matches");
    assert_eq!((e.verdict, e.rule.as_deref(), e.match_kind), (Action::Allow, Some("vonage"), MatchKind::Name));
    assert_eq!(e.address, None);
    let json = e.to_json();
    assert_eq!(
        (json["verdict"].as_str(), json["rule"].as_str(), json["match"].as_str()),
        (Some("allow"), Some("vonage"), Some("name"))
    );
    let e = explain_name(&compiled, &rules, "media.opentok.com", TCP, 80).expect("a name rule matches");
    assert_eq!(
        (e.verdict, e.rule, e.match_kind),
        (Action::Deny, None, MatchKind::Default),
        "a port the rule does not list"
    );
    assert!(explain_name(&compiled, &rules, "a.b.opentok.com", TCP, 443).is_none(), "`*.` is one label");
    assert!(explain_name(&compiled, &rules, "a.b.tokbox.com", TCP, 443).is_some(), "`**.` is several");
    assert!(explain_name(&compiled, &rules, "opentok.com", TCP, 443).is_none(), "never the apex");
}

#[test]
fn a_name_rule_needs_resolvers_in_its_phase() {
    let msg = assert_error(
        "phases:\n  runtime:\n    egress:\n      - { name: v, to: [\"*.opentok.com\"], proto: tcp, ports: [443] }\n",
        4,
        25,
        |k| matches!(k, ErrorKind::NameNeedsResolvers { .. }),
    );
    assert!(msg.contains("phase `runtime`"), "{msg}");
    assert_error("phases:\n  runtime:\n    dns: { queries: policy }\n", 3, 5, |k| {
        matches!(k, ErrorKind::MissingKey { key: "resolvers", .. })
    });
    assert_error("phases:\n  runtime:\n    dns: { resolvers: [] }\n", 3, 12, |k| {
        matches!(k, ErrorKind::EmptyList { key: "resolvers" })
    });
    assert_error("phases:\n  runtime:\n    dns: { resolvers: [dns.google] }\n", 3, 24, |k| {
        matches!(k, ErrorKind::BadResolver(_))
    });
    assert_error(
        "phases:\n  runtime:\n    dns: { resolvers: [198.18.0.1, 198.18.0.2, 198.18.0.3, 198.18.0.4, 198.18.0.5] }\n",
        3,
        12,
        |k| matches!(k, ErrorKind::TooManyResolvers { .. }),
    );
    assert_error("phases:\n  runtime:\n    dns: { resolvers: [system], ttl: 5 }\n", 3, 33, |k| {
        matches!(k, ErrorKind::UnknownKey { .. })
    });
}

#[test]
fn a_misplaced_star_is_an_error_at_its_entry() {
    for (bad, col) in
        [("\"a*.example.com\"", 25), ("\"api.*.example.com\"", 25), ("\"*\"", 25), ("\"*.*.example.com\"", 25)]
    {
        let yaml = format!("phases:\n  runtime:\n    dns: {{ resolvers: [system] }}\n    egress:\n      - {{ name: v, to: [{bad}], proto: tcp, ports: [443] }}\n");
        let e = error_of(&yaml);
        assert_eq!((e.line, e.col), (5, col), "{e}");
        assert!(matches!(e.kind, ErrorKind::BadName { .. } | ErrorKind::BadAddress(_)), "{bad}: {e}");
    }
}

#[test]
fn names_are_tracked_only_in_egress_allow_rules() {
    let deny = "phases:\n  runtime:\n    dns: { resolvers: [system] }\n    egress:\n      - { name: v, to: [\"*.evil.com\"], action: deny }\n";
    assert_error(deny, 5, 25, |k| matches!(k, ErrorKind::NameInWrongRule { what: "deny rules", .. }));
    let inbound = "phases:\n  runtime:\n    dns: { resolvers: [system] }\n    inbound:\n      - { name: v, from: [\"*.example.com\"] }\n";
    assert_error(inbound, 5, 27, |k| matches!(k, ErrorKind::NameInWrongRule { .. }));
    // A plain name in an inbound rule is resolved once, at compile time.
    let plain =
        "phases:\n  runtime:\n    dns: { resolvers: [system] }\n    inbound:\n      - { name: v, from: [localhost] }\n";
    let local = |_: &str| -> Result<Vec<IpAddr>, String> { Ok(vec!["127.0.0.1".parse().unwrap()]) };
    let loaded = parse_str_with_resolver(plain, "x.yaml", &vars(), &local).unwrap();
    assert_eq!(loaded.policy.rules[0].peers, vec!["127.0.0.1/32".parse().unwrap()]);
    assert!(loaded.policy.rules[0].names.is_empty());
}

#[test]
fn without_dns_plain_names_still_resolve_at_compile_time() {
    let local = |_: &str| -> Result<Vec<IpAddr>, String> { Ok(vec!["198.51.100.7".parse().unwrap()]) };
    let yaml = "phases:\n  runtime:\n    egress:\n      - { name: hook, to: [\"${HOOK}\"] }\n";
    let loaded = parse_str_with_resolver(yaml, "x.yaml", &vars(), &local).unwrap();
    assert_eq!(loaded.policy.rules[0].peers, vec!["198.51.100.7/32".parse().unwrap()]);
    assert!(loaded.policy.rules[0].names.is_empty());
    assert!(loaded.warnings.iter().any(|w| w.code == "resolved-host" && w.message.contains("dns:")));
}

#[test]
fn wildcards_follow_ciliums_semantics() {
    let p = |t: &str| NamePattern::parse(t).unwrap();
    assert!(p("*.opentok.com").matches("a.opentok.com"));
    assert!(!p("*.opentok.com").matches("a.b.opentok.com"));
    assert!(!p("*.opentok.com").matches("opentok.com"));
    assert!(p("**.tokbox.com").matches("a.b.tokbox.com"));
    assert!(!p("**.tokbox.com").matches("tokbox.com"));
}

/// `fw check` says which rules are tracked at run time and with what
/// settings, instead of showing name rules as "left out".
#[test]
fn check_lists_the_rules_tracked_at_run_time() {
    use fw_user::policy::{compile::Limits, report};
    let loaded = load(ISSUE_EXAMPLE);
    let checked = report::check(&loaded, Some("runtime"), &Limits::default(), None).unwrap();
    let text = report::render_text(&checked);
    assert!(text.contains("dns resolvers system, 198.18.0.53, 2001:db8::53; queries policy;"), "{text}");
    assert!(text.contains("3 rules tracked at run time"), "{text}");
    let acme = text.lines().find(|l| l.contains(" acme ")).expect("the acme rule");
    assert!(acme.contains("to acme-v02.api.letsencrypt.org (tracked at run time)"), "{acme}");
    let json = report::render_json(&checked);
    let vonage = json["rules"].as_array().unwrap().iter().find(|r| r["name"] == "vonage").expect("vonage");
    assert_eq!(vonage["names"], serde_json::json!(["*.opentok.com", "**.tokbox.com"]));
}
