//! The shipped policies compile (with an env file providing their
//! variables, documentation addresses only) and `explain`, over the compiled
//! tables, gives the documented verdict for every documented flow.

use std::{net::IpAddr, path::PathBuf};

use fw_common::{Action, Direction};
use fw_user::{
    policy::compile::{check_capacity, compile_phase, tables::CompiledPhase, Limits},
    policy::explain::{explain, parse_query_with_resolver},
    policy::{self, ir::Resolver, LoadedPolicy},
    policy::report,
};

fn policy_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies").join(format!("{name}.yaml"))
}

/// Loads a shipped policy with an env file written to a temp dir, the way an
/// operator passes `--env-file /opt/openvidu/.env`.
fn load_with_env(name: &str, env: &str) -> LoadedPolicy {
    let dir = tempfile::tempdir().unwrap();
    let env_path = dir.path().join(".env");
    std::fs::write(&env_path, env).unwrap();
    let vars = fw_user::source::file::env_vars(Some(&env_path)).unwrap();
    let text = std::fs::read_to_string(policy_path(name)).unwrap();
    // The process environment must not leak into the test: every variable
    // the policies use is given (possibly empty) by the env file.
    policy::parse_str_with_resolver(&text, &format!("policies/{name}.yaml"), &vars, &|host| {
        Err(format!("tests never resolve names ({host})"))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn phase(loaded: &LoadedPolicy, phase: &str) -> CompiledPhase {
    let compiled = compile_phase(&loaded.policy, phase).unwrap();
    check_capacity(&compiled, &Limits::default()).unwrap();
    compiled
}

/// Asserts the verdict and deciding rule of `query` in `compiled`.
fn expect(compiled: &CompiledPhase, direction: Direction, query: &str, verdict: Action, rule: Option<&str>) {
    let no_dns = |host: &str| -> Result<Vec<IpAddr>, String> { Err(format!("no DNS in tests ({host})")) };
    for q in parse_query_with_resolver(query, direction, &no_dns).unwrap() {
        let e = explain(compiled, &q);
        assert_eq!(
            (e.verdict, e.rule.as_deref()),
            (verdict, rule),
            "{} {} {query}: {}",
            compiled.phase,
            direction.as_str(),
            e.trace
        );
    }
}

fn summary(loaded: &LoadedPolicy) {
    for p in &loaded.policy.phases {
        let c = phase(loaded, &p.name);
        println!(
            "{} {}: addr4 {} addr6 {} ports {}",
            loaded.policy.name,
            p.name,
            c.addr4.len(),
            c.addr6.len(),
            c.ports.len()
        );
    }
}

const CE_ENV: &str = "\
# /opt/openvidu/.env (excerpt)
DOMAIN_OR_PUBLIC_IP=203.0.113.10
COTURN_IP=203.0.113.10
OPENVIDU_WEBHOOK=true
OPENVIDU_WEBHOOK_ENDPOINT=http://203.0.113.20:7777/webhook
";

use Action::{Allow, Deny};
use Direction::{Egress, Inbound};

#[test]
fn openvidu_ce_runtime_closes_all_outbound_but_the_named_endpoints() {
    let loaded = load_with_env("openvidu-ce", CE_ENV);
    summary(&loaded);
    let runtime = phase(&loaded, "runtime");
    // Served ports (inbound flows are tracked, so their replies pass).
    for (q, rule) in [
        ("198.51.100.7:22/tcp", "ssh"),
        ("198.51.100.7:80/tcp", "http"),
        ("198.51.100.7:443/tcp", "https"),
        ("198.51.100.7:3478/udp", "stun-turn"),
        ("198.51.100.7:3478/tcp", "stun-turn"),
        ("198.51.100.7:40000/udp", "kurento-media"),
        ("198.51.100.7:57000/tcp", "kurento-media"),
        ("198.51.100.7:57001/udp", "turn-relay"),
        ("198.51.100.7:65535/udp", "turn-relay"),
    ] {
        expect(&runtime, Inbound, q, Allow, Some(rule));
    }
    // Inbound default is "track, don't filter".
    expect(&runtime, Inbound, "198.51.100.7:8080/tcp", Allow, None);
    // The webhook URL: its host, tcp, its port - and nothing else there.
    expect(&runtime, Egress, "203.0.113.20:7777", Allow, Some("webhook"));
    expect(&runtime, Egress, "203.0.113.20:7777/udp", Deny, None);
    expect(&runtime, Egress, "203.0.113.20:443/tcp", Deny, None);
    // TURN hairpin to the host's own public IP.
    expect(&runtime, Egress, "203.0.113.10:3478/udp", Allow, Some("coturn-hairpin"));
    expect(&runtime, Egress, "203.0.113.10:60000/udp", Allow, Some("coturn-hairpin"));
    expect(&runtime, Egress, "203.0.113.10:443/tcp", Allow, Some("public-ip-hairpin"));
    // Close all outbound: DNS, web, NTP, anything else is dropped by default.
    for q in ["198.51.100.53:53/udp", "198.51.100.80:443/tcp", "198.51.100.123:123/udp", "[2001:db8::1]:443/tcp", "198.51.100.1/icmp"] {
        expect(&runtime, Egress, q, Deny, None);
    }
}

#[test]
fn openvidu_ce_install_adds_dns_web_and_ntp() {
    let loaded = load_with_env("openvidu-ce", CE_ENV);
    let install = phase(&loaded, "install");
    expect(&install, Egress, "198.51.100.53:53/udp", Allow, Some("dns"));
    expect(&install, Egress, "198.51.100.53:53/tcp", Allow, Some("dns"));
    expect(&install, Egress, "198.51.100.80:80/tcp", Allow, Some("web"));
    expect(&install, Egress, "[2001:db8::80]:443/tcp", Allow, Some("web"));
    expect(&install, Egress, "198.51.100.123:123/udp", Allow, Some("ntp"));
    // Inherited from runtime.
    expect(&install, Egress, "203.0.113.20:7777/tcp", Allow, Some("webhook"));
    expect(&install, Inbound, "198.51.100.7:443/tcp", Allow, Some("https"));
    // Still closed.
    expect(&install, Egress, "198.51.100.25:25/tcp", Deny, None);
}

#[test]
fn openvidu_ce_without_optional_variables_leaves_their_rules_out() {
    let loaded = load_with_env("openvidu-ce", "DOMAIN_OR_PUBLIC_IP=\nCOTURN_IP=\nOPENVIDU_WEBHOOK_ENDPOINT=\n");
    let left_out: Vec<&str> =
        loaded.warnings.iter().filter(|w| w.code == "optional-left-out").map(|w| w.message.as_str()).collect();
    assert_eq!(left_out.len(), 3, "{left_out:?}");
    let runtime = phase(&loaded, "runtime");
    expect(&runtime, Egress, "203.0.113.20:7777/tcp", Deny, None);
}

#[test]
fn openvidu_pro_master_reaches_media_nodes_on_3000_and_8888() {
    let env = "MEDIA_NODES=198.18.10.0/24\nOPENVIDU_WEBHOOK_ENDPOINT=https://[2001:db8::20]:8443/hook\nDOMAIN_OR_PUBLIC_IP=203.0.113.10\n";
    let loaded = load_with_env("openvidu-pro-master", env);
    summary(&loaded);
    let runtime = phase(&loaded, "runtime");
    expect(&runtime, Egress, "198.18.10.5:3000/tcp", Allow, Some("media-node-controller"));
    expect(&runtime, Egress, "198.18.10.5:8888/tcp", Allow, Some("media-node-kms"));
    expect(&runtime, Egress, "198.18.10.5:50000/udp", Allow, Some("media-node-relay"));
    expect(&runtime, Egress, "198.18.11.5:3000/tcp", Deny, None);
    expect(&runtime, Egress, "[2001:db8::20]:8443/tcp", Allow, Some("webhook"));
    for (q, rule) in [("198.51.100.7:443/tcp", "https"), ("198.51.100.7:3478/udp", "stun-turn"), ("198.51.100.7:40000/udp", "turn-relay")] {
        expect(&runtime, Inbound, q, Allow, Some(rule));
    }
    let install = phase(&loaded, "install");
    expect(&install, Egress, "198.51.100.53:53/udp", Allow, Some("dns"));
}

#[test]
fn openvidu_media_node_accepts_the_master_only_on_3000_and_8888() {
    let loaded = load_with_env("openvidu-media-node", "MASTER_NODE=198.18.0.10\n");
    summary(&loaded);
    let runtime = phase(&loaded, "runtime");
    expect(&runtime, Inbound, "198.18.0.10:3000/tcp", Allow, Some("controller-from-master"));
    expect(&runtime, Inbound, "198.18.0.10:8888/tcp", Allow, Some("kms-from-master"));
    expect(&runtime, Inbound, "198.51.100.7:3000/tcp", Deny, None);
    expect(&runtime, Inbound, "198.51.100.7:8888/tcp", Deny, None);
    expect(&runtime, Inbound, "198.51.100.7:22/tcp", Allow, Some("ssh"));
    expect(&runtime, Inbound, "198.51.100.7:45000/udp", Allow, Some("media"));
    expect(&runtime, Inbound, "198.51.100.7:9200/tcp", Deny, None);
    expect(&runtime, Egress, "198.18.0.10:3478/udp", Allow, Some("turn-on-master"));
    expect(&runtime, Egress, "198.18.0.10:443/tcp", Allow, Some("master-https"));
    expect(&runtime, Egress, "198.51.100.80:443/tcp", Deny, None);
}

#[test]
fn vonage_client_allows_the_documented_flows_and_tracks_its_names() {
    let loaded = load_with_env("vonage-webrtc-client", "");
    summary(&loaded);
    let signaling = loaded.policy.rules.iter().find(|r| r.name == "signaling").expect("signaling rule");
    let names: Vec<String> = signaling.names.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["*.nexmo.com", "*.vonage.com"]);
    assert!(signaling.peers.is_empty(), "only names: nothing is allowed before DNS answers");
    assert_eq!(loaded.policy.dns_of_phase("runtime").map(|d| d.resolvers.clone()), Some(vec![Resolver::System]));

    let runtime = phase(&loaded, "runtime");
    for net in ["216.147.0.1", "216.147.63.254", "168.100.64.1", "168.100.127.254"] {
        expect(&runtime, Egress, &format!("{net}:3478/udp"), Allow, Some("turn-udp"));
        expect(&runtime, Egress, &format!("{net}:443/tcp"), Allow, Some("turn-tcp"));
        expect(&runtime, Egress, &format!("{net}:10000/udp"), Allow, Some("rtp-media"));
        expect(&runtime, Egress, &format!("{net}:50000/udp"), Allow, Some("rtp-media"));
        expect(&runtime, Egress, &format!("{net}:5060/udp"), Allow, Some("sip"));
        expect(&runtime, Egress, &format!("{net}:5060/tcp"), Allow, Some("sip"));
        expect(&runtime, Egress, &format!("{net}:5061/tcp"), Allow, Some("sip-tls"));
        expect(&runtime, Egress, &format!("{net}:50001/udp"), Deny, None);
        expect(&runtime, Egress, &format!("{net}:9999/udp"), Deny, None);
        expect(&runtime, Egress, &format!("{net}:3478/tcp"), Deny, None);
    }
    // Just outside the two /18s.
    expect(&runtime, Egress, "216.147.64.1:443/tcp", Deny, None);
    expect(&runtime, Egress, "168.100.63.255:3478/udp", Deny, None);
    // DNS goes to the resolvers through the proxy, not through a rule.
    expect(&runtime, Egress, "198.18.0.53:53/udp", Deny, None);
    // "no ports need to be permanently open inbound".
    expect(&runtime, Inbound, "216.147.0.1:40000/udp", Deny, None);
}

#[test]
fn check_report_renders_every_shipped_policy() {
    let envs = [
        ("openvidu-ce", CE_ENV),
        ("openvidu-pro-master", "MEDIA_NODES=198.18.10.0/24\n"),
        ("openvidu-media-node", "MASTER_NODE=198.18.0.10\n"),
        ("vonage-webrtc-client", ""),
    ];
    for (name, env) in envs {
        let loaded = load_with_env(name, env);
        let checked = report::check(&loaded, None, &Limits::default(), fw_user::source::host::ephemeral_range()).unwrap();
        let text = report::render_text(&checked);
        assert!(text.starts_with(&format!("policy {name} {{")), "{text}");
        assert!(text.contains("phase runtime {"), "{text}");
        let json = report::render_json(&checked);
        assert_eq!(json["policy"], name);
        assert_eq!(json["phases"][0]["name"], "runtime");
        // No shipped rule is dead weight.
        let shadowed: Vec<_> = checked.warnings.iter().filter(|w| w.code == "shadowed-rule").map(|w| w.to_string()).collect();
        assert!(shadowed.is_empty(), "{name}: {shadowed:?}");
    }
}

/// Issue 12, finding 3: ping stopped under the shipped runtime phases
/// (the inbound default let the echo request in, opened no flow, and the
/// reply was dropped), and the media node drops what it does not list.
/// Every phase of every shipped policy serves ICMP and ICMPv6 echo by a
/// rule of its own.
#[test]
fn finding3_every_shipped_phase_answers_ping() {
    let envs = [
        ("openvidu-ce", CE_ENV),
        ("openvidu-pro-master", "MEDIA_NODES=198.18.10.0/24\n"),
        ("openvidu-media-node", "MASTER_NODE=198.18.0.10\n"),
        ("vonage-webrtc-client", ""),
    ];
    for (name, env) in envs {
        let loaded = load_with_env(name, env);
        for p in &loaded.policy.phases {
            let compiled = phase(&loaded, &p.name);
            expect(&compiled, Inbound, "198.18.9.9/icmp", Allow, Some("ping"));
            expect(&compiled, Inbound, "[2001:db8::9]/icmpv6", Allow, Some("ping6"));
            let e = explain(&compiled, &parse_query_with_resolver("198.18.9.9/icmp", Inbound, &|_| Err(String::new())).unwrap()[0]);
            assert!(e.opens_flow && e.render_text().contains("replies pass"), "{name} {}: {}", p.name, e.render_text());
        }
    }
}
