//! The shipped policies compile (with an env file providing their
//! variables, documentation addresses only), lint clean, carry a source
//! comment on every rule, and `explain`, over the compiled tables, gives the
//! documented verdict for every flow docs/openvidu.md lists. Flows to names
//! (ACME, license, STUN, NTP pools, webhooks by name) are allowed at run
//! time from DNS answers: here they are checked as the rule's names, and
//! their addresses as closed until DNS answers.

use std::{net::IpAddr, path::PathBuf};

use fw_common::{Action, Direction};
use fw_user::{
    policy::compile::{check_capacity, compile_phase, tables::CompiledPhase, Limits},
    policy::explain::{explain, parse_query_with_resolver},
    policy::report,
    policy::{self, ir::Resolver, LoadedPolicy},
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
NTP_SERVERS=
";

const MASTER_ENV: &str = "\
KMS_URIS=[\"ws://198.18.10.2:8888/kurento\",\"ws://198.18.10.3:8888/kurento\"]
OPENVIDU_WEBHOOK_ENDPOINT=https://[2001:db8::20]:8443/hook
DOMAIN_OR_PUBLIC_IP=203.0.113.10
NTP_SERVERS=
";

const SINGLE3_ENV: &str = "\
# /opt/openvidu/config/openvidu.env (excerpt) and fw's webhook variables
DOMAIN_NAME=openvidu.example.com
WEBHOOK_URLS=[\"https://203.0.113.30/livekit\", \"http://[2001:db8::30]:8080/lk\"]
MEET_INITIAL_WEBHOOK_URL=
V2COMPAT_OPENVIDU_WEBHOOK_ENDPOINT=
NTP_SERVERS=
";

/// The env file each shipped policy is tested with (every variable given,
/// possibly empty, so the process environment cannot leak in).
fn env_of(name: &str) -> &'static str {
    match name {
        "openvidu2-ce" | "openvidu-ce" => CE_ENV,
        "openvidu2-pro-master" | "openvidu-pro-master" => MASTER_ENV,
        "openvidu2-media-node" | "openvidu-media-node" => "MASTER_NODE=198.18.0.10\nNTP_SERVERS=\n",
        "openvidu3-single" => SINGLE3_ENV,
        "openvidu3-elastic-master" => {
            "MEDIA_NODES=198.18.20.0/24,2001:db8:20::/64\nMEET_INITIAL_WEBHOOK_URL=\nV2COMPAT_OPENVIDU_WEBHOOK_ENDPOINT=\nNTP_SERVERS=\n"
        }
        "openvidu3-media-node" => "MASTER_NODE=198.18.20.1\nWEBHOOK_URLS=\nNTP_SERVERS=\n",
        _ => "NTP_SERVERS=\n",
    }
}

/// Every shipped policy file, by the name it is shipped under.
const SHIPPED: &[&str] = &[
    "essentials",
    "openvidu2-ce",
    "openvidu2-pro-master",
    "openvidu2-media-node",
    "openvidu3-single",
    "openvidu3-elastic-master",
    "openvidu3-media-node",
    "vonage-webrtc-client",
    "vonage-voice",
];

/// The names a rule tracks at run time, sorted.
fn names_of(loaded: &LoadedPolicy, rule: &str) -> Vec<String> {
    let r = loaded.policy.rules.iter().find(|r| r.name == rule).unwrap_or_else(|| panic!("no rule {rule}"));
    assert!(r.peers.is_empty(), "{rule}: only names, nothing allowed before DNS answers");
    let mut names: Vec<String> = r.names.iter().map(ToString::to_string).collect();
    names.sort();
    names
}

use Action::{Allow, Deny};
use Direction::{Egress, Inbound};

/// What essentials gives every phase extending it: DHCP both ways, NTP to
/// the pools by name, DNS to the system resolvers only (through the proxy,
/// so no rule allows port 53).
fn assert_essentials(loaded: &LoadedPolicy, compiled: &CompiledPhase) {
    let phase = &compiled.phase;
    assert_eq!(loaded.policy.dns_of_phase(phase).map(|d| d.resolvers.clone()), Some(vec![Resolver::System]), "{phase}");
    expect(compiled, Egress, "198.18.0.1:67/udp", Allow, Some("essentials-dhcp4"));
    expect(compiled, Egress, "255.255.255.255:67/udp", Allow, Some("essentials-dhcp4"));
    expect(compiled, Egress, "[ff02::1:2]:547/udp", Allow, Some("essentials-dhcp6"));
    expect(compiled, Inbound, "198.18.0.1:68/udp", Allow, Some("essentials-dhcp4-replies"));
    expect(compiled, Inbound, "[fe80::1]:546/udp", Allow, Some("essentials-dhcp6-replies"));
    if phase.starts_with("runtime") {
        expect(compiled, Egress, "198.51.100.53:53/udp", Deny, None);
        expect(compiled, Egress, "198.51.100.53:53/tcp", Deny, None);
    }
    assert_eq!(names_of(loaded, "essentials-ntp"), ["**.pool.ntp.org", "ntp.ubuntu.com", "pool.ntp.org"]);
}

#[test]
fn openvidu2_ce_runtime_closes_all_outbound_but_the_sourced_flows() {
    let loaded = load_with_env("openvidu2-ce", CE_ENV);
    summary(&loaded);
    let runtime = phase(&loaded, "runtime");
    assert_essentials(&loaded, &runtime);
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
    // Renewal and public-IP discovery, by name.
    assert_eq!(names_of(&loaded, "acme"), ["acme-v02.api.letsencrypt.org"]);
    assert_eq!(names_of(&loaded, "public-ip-discovery"), ["ifconfig.co"]);
    // Everything else stays closed: web, NTP to an address no pool name
    // answered, the public resolvers discover_my_public_ip.sh asks.
    for q in [
        "198.51.100.80:443/tcp",
        "198.51.100.80:80/tcp",
        "198.51.100.123:123/udp",
        "1.1.1.1:53/udp",
        "[2001:db8::1]:443/tcp",
        "198.51.100.1/icmp",
    ] {
        expect(&runtime, Egress, q, Deny, None);
    }
}

#[test]
fn openvidu2_ce_webhook_by_name_is_tracked_at_run_time() {
    let env = CE_ENV.replace("http://203.0.113.20:7777/webhook", "https://hooks.example.com/openvidu");
    let loaded = load_with_env("openvidu2-ce", &env);
    assert_eq!(names_of(&loaded, "webhook"), ["hooks.example.com"]);
    assert!(!loaded.warnings.iter().any(|w| w.code == "resolved-host"), "{:?}", loaded.warnings);
}

#[test]
fn openvidu2_ce_install_adds_web_dns_ntp_and_inherits_runtime() {
    let loaded = load_with_env("openvidu2-ce", CE_ENV);
    let install = phase(&loaded, "install");
    assert_essentials(&loaded, &install);
    expect(&install, Egress, "198.51.100.80:80/tcp", Allow, Some("web"));
    expect(&install, Egress, "[2001:db8::80]:443/tcp", Allow, Some("web"));
    // Inherited from runtime.
    expect(&install, Egress, "203.0.113.20:7777/tcp", Allow, Some("webhook"));
    expect(&install, Inbound, "198.51.100.7:443/tcp", Allow, Some("https"));
    // DNS and NTP to any server on the wire (with the socket hooks, local
    // DNS still goes to the system resolvers: the phase has `dns:`).
    expect(&install, Egress, "198.51.100.53:53/udp", Allow, Some("dns"));
    expect(&install, Egress, "198.51.100.53:53/tcp", Allow, Some("dns"));
    expect(&install, Egress, "198.51.100.123:123/udp", Allow, Some("ntp"));
    assert!(loaded.policy.dns_of_phase("install").is_some());
    // Still closed.
    expect(&install, Egress, "198.51.100.25:25/tcp", Deny, None);
}

#[test]
fn openvidu2_ce_without_optional_variables_leaves_their_rules_out() {
    let loaded =
        load_with_env("openvidu2-ce", "DOMAIN_OR_PUBLIC_IP=\nCOTURN_IP=\nOPENVIDU_WEBHOOK_ENDPOINT=\nNTP_SERVERS=\n");
    let left_out: Vec<&str> =
        loaded.warnings.iter().filter(|w| w.code == "optional-left-out").map(|w| w.message.as_str()).collect();
    // The three of the file, and essentials' configured NTP servers.
    assert_eq!(left_out.len(), 4, "{left_out:?}");
    let ntp = loaded.warnings.iter().find(|w| w.message.contains("essentials-ntp-servers")).unwrap();
    assert_eq!(ntp.file, "builtin:essentials", "a builtin rule's warning names the builtin");
    let runtime = phase(&loaded, "runtime");
    expect(&runtime, Egress, "203.0.113.20:7777/tcp", Deny, None);
}

#[test]
fn openvidu2_pro_master_reaches_every_kms_uri_and_serves_beats_to_them_only() {
    let loaded = load_with_env("openvidu2-pro-master", MASTER_ENV);
    summary(&loaded);
    let runtime = phase(&loaded, "runtime");
    assert_essentials(&loaded, &runtime);
    for node in ["198.18.10.2", "198.18.10.3"] {
        expect(&runtime, Egress, &format!("{node}:3000/tcp"), Allow, Some("media-node-controller"));
        expect(&runtime, Egress, &format!("{node}:8888/tcp"), Allow, Some("media-node-kms"));
        expect(&runtime, Egress, &format!("{node}:50000/udp"), Allow, Some("media-node-relay"));
        expect(&runtime, Inbound, &format!("{node}:5044/tcp"), Allow, Some("beats-from-media-nodes"));
        expect(&runtime, Inbound, &format!("{node}:9200/tcp"), Allow, Some("beats-from-media-nodes"));
    }
    expect(&runtime, Egress, "198.18.10.4:3000/tcp", Deny, None);
    // 5044 and 9200 "must only be accessible for your Media Nodes".
    expect(&runtime, Inbound, "198.51.100.7:5044/tcp", Deny, None);
    expect(&runtime, Inbound, "198.51.100.7:9200/tcp", Deny, None);
    // Inbound is filtered on the master too.
    expect(&runtime, Inbound, "198.51.100.7:5601/tcp", Deny, None);
    expect(&runtime, Inbound, "198.51.100.7:6379/tcp", Deny, None);
    expect(&runtime, Egress, "[2001:db8::20]:8443/tcp", Allow, Some("webhook"));
    for (q, rule) in [
        ("198.51.100.7:22/tcp", "ssh"),
        ("198.51.100.7:80/tcp", "http"),
        ("198.51.100.7:443/tcp", "https"),
        ("198.51.100.7:3478/udp", "stun-turn"),
        ("198.51.100.7:40000/udp", "turn-relay"),
    ] {
        expect(&runtime, Inbound, q, Allow, Some(rule));
    }
    assert_eq!(names_of(&loaded, "license"), ["accounts.openvidu.io"]);
    assert_eq!(names_of(&loaded, "acme"), ["acme-v02.api.letsencrypt.org"]);
    expect(&runtime, Egress, "198.51.100.80:443/tcp", Deny, None);
    let install = phase(&loaded, "install");
    expect(&install, Egress, "198.51.100.80:443/tcp", Allow, Some("web"));
}

#[test]
fn openvidu2_pro_master_installs_before_any_media_node_exists() {
    // The shipped .env says `KMS_URIS=[]` until the operator adds nodes.
    let loaded = load_with_env(
        "openvidu2-pro-master",
        "KMS_URIS=[]\nOPENVIDU_WEBHOOK_ENDPOINT=\nDOMAIN_OR_PUBLIC_IP=\nNTP_SERVERS=\n",
    );
    let left_out: Vec<&str> =
        loaded.warnings.iter().filter(|w| w.code == "optional-left-out").map(|w| w.message.as_str()).collect();
    for rule in ["beats-from-media-nodes", "media-node-controller", "media-node-kms", "media-node-relay"] {
        assert!(
            left_out.iter().any(|w| w.contains(&format!("`{rule}`")) && w.contains("KMS_URIS")),
            "{rule}: {left_out:?}"
        );
    }
    phase(&loaded, "install");
}

#[test]
fn openvidu2_media_node_accepts_the_master_only_and_sends_it_beats() {
    let loaded = load_with_env("openvidu2-media-node", env_of("openvidu2-media-node"));
    summary(&loaded);
    let runtime = phase(&loaded, "runtime");
    assert_essentials(&loaded, &runtime);
    expect(&runtime, Inbound, "198.18.0.10:3000/tcp", Allow, Some("controller-from-master"));
    expect(&runtime, Inbound, "198.18.0.10:8888/tcp", Allow, Some("kms-from-master"));
    expect(&runtime, Inbound, "198.51.100.7:3000/tcp", Deny, None);
    expect(&runtime, Inbound, "198.51.100.7:8888/tcp", Deny, None);
    expect(&runtime, Inbound, "198.51.100.7:22/tcp", Allow, Some("ssh"));
    expect(&runtime, Inbound, "198.51.100.7:443/udp", Allow, Some("turn-in-media-node"));
    expect(&runtime, Inbound, "198.51.100.7:45000/udp", Allow, Some("media"));
    expect(&runtime, Inbound, "198.51.100.7:9200/tcp", Deny, None);
    expect(&runtime, Egress, "198.18.0.10:5044/tcp", Allow, Some("beats-to-master"));
    expect(&runtime, Egress, "198.18.0.10:9200/tcp", Allow, Some("beats-to-master"));
    expect(&runtime, Egress, "198.18.0.10:3478/udp", Allow, Some("turn-on-master"));
    // Not 443 to the master: no source says the node uses it.
    expect(&runtime, Egress, "198.18.0.10:443/tcp", Deny, None);
    expect(&runtime, Egress, "198.51.100.80:443/tcp", Deny, None);
    let install = phase(&loaded, "install");
    expect(&install, Egress, "198.51.100.80:443/tcp", Allow, Some("web"));
}

#[test]
fn openvidu3_single_serves_its_ports_and_reaches_license_stun_acme_and_webhooks() {
    let loaded = load_with_env("openvidu3-single", SINGLE3_ENV);
    summary(&loaded);
    let runtime = phase(&loaded, "runtime");
    assert_essentials(&loaded, &runtime);
    for (q, rule) in [
        ("198.51.100.7:80/tcp", "http"),
        ("198.51.100.7:443/tcp", "https"),
        ("198.51.100.7:443/udp", "https"),
        ("198.51.100.7:1935/tcp", "rtmp"),
        ("198.51.100.7:7881/tcp", "webrtc-tcp"),
        ("198.51.100.7:7885/udp", "whip-udp"),
        ("198.51.100.7:9000/tcp", "minio"),
        ("198.51.100.7:50000/udp", "media"),
        ("[2001:db8::7]:60000/udp", "media"),
        ("198.51.100.7:55000/tcp", "media"),
        ("198.51.100.7:22/tcp", "ssh"),
    ] {
        expect(&runtime, Inbound, q, Allow, Some(rule));
    }
    // Internal services stay unreachable: LiveKit API, Redis, MongoDB.
    for q in [
        "198.51.100.7:7880/tcp",
        "198.51.100.7:7000/tcp",
        "198.51.100.7:20000/tcp",
        "198.51.100.7:7885/tcp",
        "198.51.100.7:60001/udp",
    ] {
        expect(&runtime, Inbound, q, Deny, None);
    }
    assert_eq!(names_of(&loaded, "license"), ["accounts.openvidu.io"]);
    assert_eq!(names_of(&loaded, "stun-google"), ["stun.l.google.com", "stun1.l.google.com"]);
    assert_eq!(names_of(&loaded, "stun-twilio"), ["global.stun.twilio.com"]);
    assert_eq!(names_of(&loaded, "acme"), ["acme-v02.api.letsencrypt.org"]);
    // Every URL of WEBHOOK_URLS, each on the ports of the rule's URLs.
    expect(&runtime, Egress, "203.0.113.30:443/tcp", Allow, Some("webhook"));
    expect(&runtime, Egress, "[2001:db8::30]:8080/tcp", Allow, Some("webhook"));
    expect(&runtime, Egress, "203.0.113.31:443/tcp", Deny, None);
    expect(&runtime, Egress, "198.51.100.80:80/tcp", Deny, None);
    let install = phase(&loaded, "install");
    expect(&install, Egress, "198.51.100.80:80/tcp", Allow, Some("web"));
}

#[test]
fn openvidu3_elastic_master_and_media_node_reach_each_other_on_the_documented_ports() {
    let master = load_with_env("openvidu3-elastic-master", env_of("openvidu3-elastic-master"));
    summary(&master);
    let m = phase(&master, "runtime");
    assert_essentials(&master, &m);
    for port in [4443, 9080, 3100, 7880, 9009, 7000, 9100, 20000] {
        expect(&m, Inbound, &format!("198.18.20.5:{port}/tcp"), Allow, Some("services-for-media-nodes"));
        expect(&m, Inbound, &format!("[2001:db8:20::5]:{port}/tcp"), Allow, Some("services-for-media-nodes"));
        expect(&m, Inbound, &format!("198.51.100.7:{port}/tcp"), Deny, None);
    }
    for port in [1935, 5349, 7880, 8080] {
        expect(&m, Egress, &format!("198.18.20.5:{port}/tcp"), Allow, Some("media-node-services"));
    }
    for (q, rule) in [
        ("198.51.100.7:80/tcp", "http"),
        ("198.51.100.7:443/tcp", "https"),
        ("198.51.100.7:1935/tcp", "rtmp"),
        ("198.51.100.7:9000/tcp", "minio"),
    ] {
        expect(&m, Inbound, q, Allow, Some(rule));
    }
    expect(&m, Inbound, "198.51.100.7:443/udp", Deny, None);
    assert_eq!(names_of(&master, "license"), ["accounts.openvidu.io"]);

    let node = load_with_env("openvidu3-media-node", env_of("openvidu3-media-node"));
    summary(&node);
    let n = phase(&node, "runtime");
    assert_essentials(&node, &n);
    for port in [1935, 5349, 7880, 8080] {
        expect(&n, Inbound, &format!("198.18.20.1:{port}/tcp"), Allow, Some("services-for-master"));
        expect(&n, Inbound, &format!("198.51.100.7:{port}/tcp"), Deny, None);
    }
    for port in [4443, 9080, 3100, 7880, 9009, 7000, 9100, 20000] {
        expect(&n, Egress, &format!("198.18.20.1:{port}/tcp"), Allow, Some("master-services"));
    }
    for (q, rule) in [
        ("198.51.100.7:443/udp", "stun-turn"),
        ("198.51.100.7:7881/tcp", "webrtc-tcp"),
        ("198.51.100.7:7885/udp", "whip-udp"),
        ("198.51.100.7:50000/udp", "media"),
        ("198.51.100.7:60000/tcp", "media"),
    ] {
        expect(&n, Inbound, q, Allow, Some(rule));
    }
    assert_eq!(names_of(&node, "stun-google"), ["stun.l.google.com", "stun1.l.google.com"]);
    expect(&n, Egress, "198.51.100.80:443/tcp", Deny, None);
}

#[test]
fn vonage_video_client_allows_the_documented_flows_and_tracks_its_names() {
    let loaded = load_with_env("vonage-webrtc-client", env_of("vonage-webrtc-client"));
    summary(&loaded);
    assert_eq!(names_of(&loaded, "video-api"), ["**.opentok.com", "**.tokbox.com"]);
    assert_eq!(names_of(&loaded, "certificate-status"), ["crl.godaddy.com", "ocsp.godaddy.com"]);
    let runtime = phase(&loaded, "runtime");
    assert_essentials(&loaded, &runtime);
    expect(&runtime, Egress, "198.51.100.9:3478/udp", Allow, Some("stun-turn-udp"));
    expect(&runtime, Egress, "[2001:db8::9]:3478/udp", Allow, Some("stun-turn-udp"));
    // TCP 443 only to the names' addresses; no voice ranges, no SIP.
    for q in [
        "198.51.100.9:443/tcp",
        "216.147.0.1:443/tcp",
        "216.147.0.1:5060/udp",
        "198.51.100.9:40000/udp",
        "198.51.100.9:3478/tcp",
    ] {
        expect(&runtime, Egress, q, Deny, None);
    }
    expect(&runtime, Inbound, "198.51.100.9:40000/udp", Deny, None);
    let best = phase(&loaded, "runtime-udp-media");
    expect(&best, Egress, "198.51.100.9:1025/udp", Allow, Some("udp-media"));
    expect(&best, Egress, "198.51.100.9:65535/udp", Allow, Some("udp-media"));
    expect(&best, Egress, "198.51.100.9:3478/udp", Allow, Some("stun-turn-udp"));
    expect(&best, Egress, "198.51.100.9:1024/udp", Deny, None);
    expect(&best, Egress, "198.51.100.9:1025/tcp", Deny, None);
}

#[test]
fn vonage_voice_allows_the_documented_flows_and_tracks_its_names() {
    let loaded = load_with_env("vonage-voice", env_of("vonage-voice"));
    summary(&loaded);
    assert_eq!(names_of(&loaded, "signaling"), ["*.nexmo.com", "*.vonage.com"]);
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

/// Issue 15: the 2.x policies were renamed `openvidu2-*`; the old names keep
/// working, as builtin names and as files, and mean the same policy.
#[test]
fn old_openvidu_names_are_aliases_of_the_2x_policies() {
    for (old, new) in [
        ("openvidu-ce", "openvidu2-ce"),
        ("openvidu-pro-master", "openvidu2-pro-master"),
        ("openvidu-media-node", "openvidu2-media-node"),
    ] {
        let builtin = |name: &str| fw_user::source::BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
        assert_eq!(builtin(old), builtin(new), "builtin {old}");
        assert!(builtin(new).is_some(), "{new}");
        let file = |name: &str| std::fs::read_to_string(policy_path(name)).unwrap();
        assert_eq!(file(old), file(new), "policies/{old}.yaml");
        let resolved = fw_user::source::PolicyText::resolve(old).unwrap();
        assert_eq!(resolved.label, format!("builtin:{old}"));
    }
    // Every shipped file is a builtin of the same text.
    for name in SHIPPED {
        let text = std::fs::read_to_string(policy_path(name)).unwrap();
        let builtin =
            fw_user::source::BUILTIN.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} is not builtin"));
        assert_eq!(builtin.1, text, "{name}");
    }
}

#[test]
fn check_report_renders_every_shipped_policy() {
    for name in SHIPPED {
        let loaded = load_with_env(name, env_of(name));
        let checked = report::check(&loaded, None, &Limits::default(), None).unwrap();
        let text = report::render_text(&checked);
        assert!(text.starts_with(&format!("policy {name} {{")), "{text}");
        let json = report::render_json(&checked);
        assert_eq!(json["policy"], *name);
        // A rule of names only is shown with its names, not as left out.
        if name.starts_with("openvidu3") {
            assert!(
                text.contains("license                  to accounts.openvidu.io (tracked at run time)  tcp 443  allow"),
                "{text}"
            );
        }
        // No shipped rule is dead weight, and no runtime phase is open.
        let bad: Vec<_> =
            checked.warnings.iter().filter(|w| w.code != "optional-left-out").map(|w| w.to_string()).collect();
        assert!(bad.is_empty(), "{name}: {bad:#?}");
    }
}

/// Issue 15: every rule of every shipped policy carries its source: a
/// `[tag]` of the file's source list on the rule's line or in the comment
/// block right above it.
#[test]
fn every_shipped_rule_names_its_source() {
    for name in SHIPPED {
        let text = std::fs::read_to_string(policy_path(name)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let loaded = load_with_env(name, env_of(name));
        for rule in loaded.policy.rules.iter().filter(|r| !r.name.starts_with("essentials-") || *name == "essentials") {
            let at = rule.pos.line - 1;
            let mut cited = lines[at].contains("# ") && lines[at].contains('[');
            // Up through the comment above, and through one-line sibling
            // rules that share it (`ping` and `ping6`).
            let mut i = at;
            while !cited && i > 0 {
                let above = lines[i - 1].trim_start();
                if !(above.starts_with('#') || above.starts_with("- {")) {
                    break;
                }
                i -= 1;
                cited = above.starts_with('#') && above.contains('[') && above.contains(']');
            }
            assert!(cited, "{name}.yaml:{}: rule `{}` has no source comment", rule.pos.line, rule.name);
        }
    }
}

/// Issue 12, finding 3: ping stopped under the shipped runtime phases
/// (the inbound default let the echo request in, opened no flow, and the
/// reply was dropped), and the media node drops what it does not list.
/// Every phase of every shipped policy serves ICMP and ICMPv6 echo by a
/// rule of its own.
#[test]
fn finding3_every_shipped_phase_answers_ping() {
    for name in SHIPPED.iter().filter(|n| **n != "essentials") {
        let loaded = load_with_env(name, env_of(name));
        for p in loaded.policy.phases.iter().filter(|p| p.name != "essentials") {
            let compiled = phase(&loaded, &p.name);
            expect(&compiled, Inbound, "198.18.9.9/icmp", Allow, Some("ping"));
            expect(&compiled, Inbound, "[2001:db8::9]/icmpv6", Allow, Some("ping6"));
            let e = explain(
                &compiled,
                &parse_query_with_resolver("198.18.9.9/icmp", Inbound, &|_| Err(String::new())).unwrap()[0],
            );
            assert!(e.opens_flow && e.render_text().contains("replies pass"), "{name} {}: {}", p.name, e.render_text());
        }
    }
}
