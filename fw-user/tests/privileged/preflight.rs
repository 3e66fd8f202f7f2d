//! `fw preflight` against a host's real needs, in namespaces (issue 15,
//! deliverable 6): a DHCP lease a real dhclient got from a real DHCP server
//! (dnsmasq), a TCP service listening in the namespace, and the resolver
//! and NTP configuration of a host file tree. A closed runtime phase must
//! be told every need it breaks, with the fix; the phase with those fixes
//! must keep them all.

use std::{net::SocketAddr, path::Path, time::Duration};

use serde_json::Value;

use crate::harness::{
    dhcp::{DhcpClient, DhcpServer},
    fw::{fw, Fw},
    netns::VethPair,
    setup,
    traffic::Echo,
    TempDir,
};

const X: u8 = 117;
/// A port the host serves that the closed phase forgets.
const SERVED: u16 = 8443;

fn findings(ns: &crate::harness::netns::Netns, args: &[&str]) -> (i32, Vec<Value>) {
    let out = fw(ns, args);
    let report: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("fw preflight --json: {e}: {out:#?}"));
    // Containers other tests publish on this host are not this test's
    // business (podman ps is host-wide).
    let ours = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| !f["problem"].as_str().unwrap_or_default().contains("container "))
        .cloned()
        .collect();
    (out.status.code().unwrap_or(-1), ours)
}

#[test]
fn preflight_names_what_a_closed_phase_breaks_and_its_fixes_keep_everything() {
    setup();
    let pair = VethPair::new(X);
    let dir = TempDir::new();
    let root = dir.path().join("root");
    for sub in ["etc/chrony", "var/lib/dhcp"] {
        std::fs::create_dir_all(root.join(sub)).expect("the host tree");
    }
    std::fs::write(root.join("etc/resolv.conf"), format!("nameserver {}\n", pair.far4)).unwrap();
    std::fs::write(root.join("etc/chrony/chrony.conf"), format!("server {} iburst\n", pair.far4)).unwrap();

    // A real lease: dhclient asks dnsmasq's DHCP server on far, and writes
    // it where the host's would be.
    let _server = DhcpServer::start(&pair, dir.path());
    let client = DhcpClient::start(&pair, &root.join("var/lib/dhcp/dhclient.leases"), dir.path());
    assert!(
        client.leased_from(pair.far4, Duration::from_secs(30)),
        "no lease from the DHCP server: {:?}",
        std::fs::read_to_string(&client.lease)
    );

    let _service = Echo::tcp(&pair.near, SocketAddr::new(pair.near4.into(), SERVED));
    let closed = dir.write(
        "closed.yaml",
        "name: closed\nphases:\n  runtime:\n    egress_default: drop\n    inbound_default: drop\n    \
         inbound:\n      - { name: https, proto: tcp, ports: [443] }\n",
    );
    let root_arg = root.display().to_string();
    let args = |policy: &Path| -> Vec<String> {
        ["preflight", "runtime", "--json", "--root", &root_arg, "--policy", &policy.display().to_string()]
            .map(String::from)
            .to_vec()
    };
    let closed_args = args(&closed);
    let (code, found) = findings(&pair.near, &closed_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{found:#?}");
    let far = pair.far4.to_string();
    let has = |kind: &str, text: &str| {
        found.iter().any(|f| f["kind"] == kind && f["problem"].as_str().unwrap_or_default().contains(text))
    };
    assert!(has("dns", &far), "the resolver: {found:#?}");
    assert!(has("ntp", &far), "chrony's server: {found:#?}");
    assert!(has("dhcp", &far), "the lease's server: {found:#?}");
    assert!(has("dhcp", "dhclient"), "the client's port for the server's answers: {found:#?}");
    assert!(has("served", &format!("{SERVED}/tcp")), "the listening service: {found:#?}");
    assert_eq!(found.len(), 5, "nothing else: {found:#?}");

    // The fixes the findings name: essentials (DNS, DHCP, NTP names) with
    // NTP_SERVERS for chrony's server, and the served port.
    let fixed = dir.write(
        "fixed.yaml",
        &format!(
            "name: fixed\nphases:\n  runtime:\n    extends: essentials\n    egress_default: drop\n    \
             inbound_default: drop\n    inbound:\n      - {{ name: https, proto: tcp, ports: [443, {SERVED}] }}\n"
        ),
    );
    let env = dir.write("fixed.env", &format!("NTP_SERVERS={far}\n"));
    let mut fixed_args = args(&fixed);
    fixed_args.extend(["--env-file".to_string(), env.display().to_string()]);
    let (code, found) = findings(&pair.near, &fixed_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(found, Vec::<Value>::new(), "the fixed phase keeps every need");
    assert!(code == 0 || code == 1, "exit {code}");

    // `fw switch --confirm` runs it first (on this host's own files; the
    // namespace's listening service is what it must name) and still
    // switches: the confirmation window is when to read it.
    let two = dir.write(
        "two.yaml",
        "name: two\nphases:\n  install: {}\n  runtime:\n    egress_default: drop\n    inbound_default: drop\n    \
         inbound:\n      - { name: https, proto: tcp, ports: [443] }\n",
    );
    let instance = Fw::start(&pair.near, &pair.near_if, &two, "install");
    let switched = instance.cli(&["switch", "runtime", "--confirm", "600"]);
    assert!(switched.status.success(), "{switched:#?}");
    assert!(switched.stderr.contains(&format!("served port {SERVED}/tcp")), "{switched:#?}");
    assert_eq!(instance.status_json()["phase"], "runtime");
}
