//! Issue 15, host essentials: `extends: essentials` gives any phase the
//! builtin phase of policies/essentials.yaml (DHCP renewals, NTP, DNS to
//! the system resolvers) without defining it; its rules come after the
//! file's; a misspelled name is an error at its position.

use std::net::IpAddr;

use fw_common::{Action, Direction};
use fw_user::policy::{
    self,
    compile::{compile_phase, tables::CompiledPhase},
    explain::{explain, parse_query_with_resolver},
    ir::Resolver,
    LoadedPolicy, Vars,
};

use Action::Allow;
use Direction::{Egress, Inbound};

fn no_dns(host: &str) -> Result<Vec<IpAddr>, String> {
    Err(format!("tests never resolve names ({host})"))
}

fn load(yaml: &str, vars: &Vars) -> Result<LoadedPolicy, policy::PolicyError> {
    policy::parse_str_with_resolver(yaml, "mine.yaml", vars, &no_dns)
}

fn expect(compiled: &CompiledPhase, direction: Direction, query: &str, verdict: Action, rule: Option<&str>) {
    let q = &parse_query_with_resolver(query, direction, &no_dns).unwrap()[0];
    let e = explain(compiled, q);
    assert_eq!((e.verdict, e.rule.as_deref()), (verdict, rule), "{} {query}: {}", direction.as_str(), e.trace);
}

fn names_of(loaded: &LoadedPolicy, rule: &str) -> Vec<String> {
    let r = loaded.policy.rules.iter().find(|r| r.name == rule).unwrap_or_else(|| panic!("no rule {rule}"));
    let mut names: Vec<String> = r.names.iter().map(ToString::to_string).collect();
    names.sort();
    names
}

/// A phase extending `essentials` gets the builtin phase without defining
/// it; its rules come after the file's, and it inherits `dns:`.
#[test]
fn essentials_is_a_builtin_phase_any_policy_extends() {
    let yaml = "name: mine\nphases:\n  runtime:\n    extends: essentials\n    egress:\n      - { name: api, to: [api.example.com], proto: tcp, ports: [443] }\n";
    let loaded = load(yaml, &Vars::from_pairs([("NTP_SERVERS", "198.18.0.123 ntp.example.net")]))
        .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<(&str, u32)> = loaded.policy.rules.iter().map(|r| (r.name.as_str(), r.id)).collect();
    assert_eq!(ids[0], ("api", 0), "the file's rules first: {ids:?}");
    assert!(ids.iter().all(|(n, id)| *id == 0 || n.starts_with("essentials-")), "{ids:?}");
    // Names in the file's phase are tracked: it inherits `dns:`.
    assert_eq!(names_of(&loaded, "api"), ["api.example.com"]);
    let runtime = compile_phase(&loaded.policy, "runtime").unwrap();
    assert_eq!(loaded.policy.dns_of_phase("runtime").map(|d| d.resolvers.clone()), Some(vec![Resolver::System]));
    expect(&runtime, Egress, "198.18.0.1:67/udp", Allow, Some("essentials-dhcp4"));
    expect(&runtime, Egress, "255.255.255.255:67/udp", Allow, Some("essentials-dhcp4"));
    expect(&runtime, Egress, "[ff02::1:2]:547/udp", Allow, Some("essentials-dhcp6"));
    expect(&runtime, Inbound, "198.18.0.1:68/udp", Allow, Some("essentials-dhcp4-replies"));
    expect(&runtime, Inbound, "[fe80::1]:546/udp", Allow, Some("essentials-dhcp6-replies"));
    // DNS goes to the system resolvers through the proxy, not by a rule.
    expect(&runtime, Egress, "198.51.100.53:53/udp", Action::Deny, None);
    assert_eq!(names_of(&loaded, "essentials-ntp"), ["**.pool.ntp.org", "ntp.ubuntu.com", "pool.ntp.org"]);
    // NTP_SERVERS, a list: its address by rule, its name tracked.
    expect(&runtime, Egress, "198.18.0.123:123/udp", Allow, Some("essentials-ntp-servers"));
    let servers = loaded.policy.rules.iter().find(|r| r.name == "essentials-ntp-servers").unwrap();
    assert_eq!(servers.names.iter().map(ToString::to_string).collect::<Vec<_>>(), ["ntp.example.net"]);
}

#[test]
fn essentials_bad_extends_is_an_error_at_its_position() {
    let yaml = "name: mine\nphases:\n  runtime:\n    extends: essential\n";
    let e = load(yaml, &Vars::from_pairs([("A", "b")])).unwrap_err().to_string();
    assert_eq!(
        e,
        "mine.yaml:4:14: phase `runtime` extends `essential`, which is not a phase of this policy (phases: runtime) nor a builtin one (essentials)"
    );
    // A rule name of the builtin is taken.
    let clash = "phases:\n  runtime:\n    extends: essentials\n    egress:\n      - { name: essentials-ntp, to: [198.18.0.1] }\n";
    let e = load(clash, &Vars::from_pairs([("NTP_SERVERS", "")])).unwrap_err().to_string();
    assert!(e.starts_with("builtin:essentials:") && e.contains("`essentials-ntp` already exists at line 5"), "{e}");
}

#[test]
fn essentials_defined_by_the_file_wins() {
    let yaml = "phases:\n  essentials:\n    egress:\n      - { name: mine, to: [198.18.0.1], proto: udp, ports: [123] }\n  runtime:\n    extends: essentials\n";
    let loaded = load(yaml, &Vars::from_pairs([("A", "b")])).unwrap();
    assert_eq!(loaded.policy.rules.len(), 1);
    assert!(loaded.policy.dns_of_phase("runtime").is_none());
}

/// The builtin is a shipped policy too: it compiles on its own, and an
/// unset NTP_SERVERS leaves its optional rule out, with the builtin's label.
#[test]
fn essentials_compiles_alone_and_names_itself_in_warnings() {
    let loaded =
        load("phases:\n  runtime:\n    extends: essentials\n", &Vars::from_pairs([("NTP_SERVERS", "")])).unwrap();
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("builtin:essentials:") && w[0].contains("`essentials-ntp-servers` left out"), "{w:?}");
}
