//! The warnings of a policy phase come from the loading step every command
//! shares (`source::load_phase`), so `fw run` and `fw switch` get
//! exactly what `fw check` reports for that phase; and "egress allows every
//! address on every port" is a warning a program can recognize.

use fw_user::{policy::compile::Limits, policy::report, source};

fn env_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(".env");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn finding9_switch_and_run_get_the_warnings_check_gives() {
    // The reported case: a webhook endpoint of `any` in OpenVidu's .env makes
    // the shipped runtime phase allow everything; two optional rules are
    // left out. No variable is left to the process environment.
    let dir = tempfile::tempdir().unwrap();
    let env = env_file(&dir, "OPENVIDU_WEBHOOK_ENDPOINT=any\nCOTURN_IP=\nDOMAIN_OR_PUBLIC_IP=\n");

    let loaded = source::load_phase("openvidu-ce", Some(&env), "runtime").unwrap();
    let shared: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();

    let (_, policy, _) = source::load_policy("openvidu-ce", Some(&env)).unwrap();
    let check = report::check(&policy, Some("runtime"), &Limits::default(), source::host::ephemeral_range()).unwrap();
    let checked: Vec<String> = check.warnings.iter().map(|w| w.to_string()).collect();

    assert_eq!(shared, checked, "fw run/switch must report what fw check reports for the phase");
    assert!(shared.iter().any(|w| w.contains("rule `webhook` allows every address on every port")), "{shared:#?}");
    assert!(shared.iter().any(|w| w.contains("optional rule `coturn-hairpin` left out")), "{shared:#?}");
}

/// The open-egress warnings of phase `phase` of `yaml`, through the shared
/// loading step.
fn open_egress(yaml: &str, phase: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let env = env_file(&dir, "");
    let loaded = source::load_phase(path.to_str().unwrap(), Some(&env), phase).unwrap();
    loaded.warnings.iter().filter(|w| w.is_open_egress()).map(|w| w.to_string()).collect()
}

#[test]
fn open_egress_is_a_warning_kind_of_its_own() {
    let runtime = |body: &str| format!("name: t\nphases:\n  runtime:\n{body}");
    // Every address, every protocol: `any`, or a whole family.
    let all = open_egress(&runtime("    egress:\n      - { name: everything, to: [any] }\n"), "runtime");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(all[0].contains("/p.yaml:5:9: warning: rule `everything` allows every address on every port"), "{all:#?}");
    assert_eq!(open_egress(&runtime("    egress:\n      - { name: v4, to: [0.0.0.0/0] }\n"), "runtime").len(), 1);
    // Every port of TCP to every address is open too.
    let tcp = runtime("    egress:\n      - { name: tcp, to: [\"::/0\"], proto: tcp, ports: any }\n");
    assert_eq!(open_egress(&tcp, "runtime").len(), 1);
    // The phase default.
    let default = open_egress(&runtime("    egress_default: allow\n"), "runtime");
    assert_eq!(default.len(), 1, "{default:#?}");
    assert!(
        default[0].contains("phase `runtime` allows every address on every port: `egress_default: allow`"),
        "{default:#?}"
    );
    // Inherited from the phase runtime extends.
    let inherited =
        "name: t\nphases:\n  base:\n    egress:\n      - { name: all, to: [any] }\n  runtime:\n    extends: base\n";
    assert_eq!(open_egress(inherited, "runtime").len(), 1);

    // Not open: some ports, ICMP only, a deny, a narrower CIDR, inbound.
    for body in [
        "    egress:\n      - { name: web, to: [any], proto: tcp, ports: [80, 443] }\n",
        "    egress:\n      - { name: ping, to: [any], proto: icmp }\n",
        "    egress:\n      - { name: none, to: [any], action: deny }\n",
        "    egress:\n      - { name: half, to: [0.0.0.0/1] }\n",
        "    inbound:\n      - { name: all-in, from: [any] }\n",
    ] {
        assert_eq!(open_egress(&runtime(body), "runtime"), Vec::<String>::new(), "{body}");
    }
    // Only the phase named runtime ("close all outbound"): an install phase
    // may allow everything.
    let install = "name: t\nphases:\n  install:\n    egress_default: allow\n  runtime: {}\n";
    assert_eq!(open_egress(install, "install"), Vec::<String>::new());
}

/// Issue 12, finding 7: a server's own connections from ephemeral ports
/// inside a served range (Linux picks 32768-60999; OpenVidu serves
/// 40000-65535) were reported as spoofed replies, and nothing said why.
/// `fw check`, run and switch warn, and say how to keep them apart.
#[test]
fn finding7_served_ports_inside_the_ephemeral_range_are_reported() {
    use fw_user::policy::{ir::PortRange, lint};
    let dir = tempfile::tempdir().unwrap();
    let env = env_file(&dir, "OPENVIDU_WEBHOOK_ENDPOINT=\nCOTURN_IP=\nDOMAIN_OR_PUBLIC_IP=\n");
    let loaded = source::load_phase("openvidu-ce", Some(&env), "runtime").unwrap();
    let (_, policy, _) = source::load_policy("openvidu-ce", Some(&env)).unwrap();
    let linux = PortRange { first: 32768, last: 60999 };
    let warnings = lint::ephemeral_overlap(&policy.policy, std::slice::from_ref(&loaded.compiled), linux);
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 2, "{text:#?}");
    assert!(warnings.iter().all(|w| w.code == "ephemeral-overlap"));
    assert!(
        text[0].contains("rule `kurento-media` serves tcp 40000-57000, udp 40000-57000, inside this host's ephemeral ports 32768-60999")
            && text[0].contains("sysctl -w net.ipv4.ip_local_reserved_ports=40000-57000"),
        "{text:#?}"
    );
    assert!(text[1].contains("rule `turn-relay` serves tcp 57001-65535, udp 57001-65535"), "{text:#?}");
    // Apart: nothing to say.
    let apart = PortRange { first: 10000, last: 39999 };
    assert!(lint::ephemeral_overlap(&policy.policy, std::slice::from_ref(&loaded.compiled), apart).is_empty());
}
