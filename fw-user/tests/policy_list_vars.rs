//! Issue 15: list-valued variables. OpenVidu 2.x names its media nodes in
//! `KMS_URIS=["ws://IP:8888/kurento",...]` (OpenVidu/openvidu.io-docs
//! `docs/deployment/pro/on-premises.md`, "3.1 Deployment"); a rule written
//! `to: ["${KMS_URIS}"]` must allow every element, and a value that does not
//! parse is an error naming the variable, never a silent first element.

use std::net::IpAddr;

use fw_common::{Action, Direction};
use fw_user::policy::{
    self,
    compile::compile_phase,
    explain::{explain, parse_query_with_resolver},
    LoadedPolicy, Vars,
};

const MASTER: &str = "\
name: master
phases:
  runtime:
    egress:
      - { name: media-node-controller, to: [\"${KMS_URIS}\"], proto: tcp, ports: [3000] }
      - { name: media-node-kms, to: [\"${KMS_URIS}\"] }
";

fn no_dns(host: &str) -> Result<Vec<IpAddr>, String> {
    Err(format!("tests never resolve names ({host})"))
}

fn load(yaml: &str, pairs: &[(&str, &str)]) -> Result<LoadedPolicy, policy::PolicyError> {
    policy::parse_str_with_resolver(yaml, "policies/x.yaml", &Vars::from_pairs(pairs.iter().copied()), &no_dns)
}

fn verdict(loaded: &LoadedPolicy, query: &str) -> (Action, Option<String>) {
    let compiled = compile_phase(&loaded.policy, "runtime").unwrap();
    let q = &parse_query_with_resolver(query, Direction::Egress, &no_dns).unwrap()[0];
    let e = explain(&compiled, q);
    (e.verdict, e.rule)
}

#[test]
fn list_variable_kms_uris_allows_every_media_node() {
    let kms = r#"["ws://198.18.10.2:8888/kurento","ws://198.18.10.3:8888/kurento", "ws://[2001:db8::4]:8888/kurento"]"#;
    let loaded = load(MASTER, &[("KMS_URIS", kms)]).unwrap_or_else(|e| panic!("{e}"));
    for host in ["198.18.10.2", "198.18.10.3", "[2001:db8::4]"] {
        assert_eq!(
            verdict(&loaded, &format!("{host}:3000/tcp")),
            (Action::Allow, Some("media-node-controller".into())),
            "{host}"
        );
        // A URL implies tcp and its port.
        assert_eq!(
            verdict(&loaded, &format!("{host}:8888/tcp")),
            (Action::Allow, Some("media-node-kms".into())),
            "{host}"
        );
        assert_eq!(verdict(&loaded, &format!("{host}:8889/tcp")).0, Action::Deny, "{host}");
    }
    assert_eq!(verdict(&loaded, "198.18.10.4:3000/tcp").0, Action::Deny);
}

#[test]
fn list_variable_plain_values_split_on_commas_and_spaces() {
    let yaml =
        "phases:\n  runtime:\n    egress:\n      - { name: ntp, to: [\"${NTP_SERVERS}\"], proto: udp, ports: [123] }\n";
    let loaded =
        load(yaml, &[("NTP_SERVERS", "198.18.0.123, 198.18.0.124 2001:db8::123")]).unwrap_or_else(|e| panic!("{e}"));
    for host in ["198.18.0.123", "198.18.0.124", "[2001:db8::123]"] {
        assert_eq!(verdict(&loaded, &format!("{host}:123/udp")), (Action::Allow, Some("ntp".into())), "{host}");
    }
}

#[test]
fn list_variable_that_does_not_parse_is_an_error_naming_it() {
    for bad in [
        r#"["ws://198.18.10.2:8888/kurento","#,
        r#"["ws://198.18.10.2:8888/kurento", 7]"#,
        "[ws://198.18.10.2:8888/kurento]",
    ] {
        let e = load(MASTER, &[("KMS_URIS", bad)]).expect_err(bad).to_string();
        assert!(e.starts_with("policies/x.yaml:5:"), "{e}");
        assert!(e.contains("`KMS_URIS`") && e.contains("list"), "{bad}: {e}");
    }
}

#[test]
fn list_variable_inside_a_longer_entry_is_an_error() {
    let yaml = "phases:\n  runtime:\n    egress:\n      - { name: x, to: [\"ws://${HOSTS}:8888\"] }\n";
    let e = load(yaml, &[("HOSTS", r#"["198.18.0.1","198.18.0.2"]"#)]).unwrap_err().to_string();
    assert!(e.starts_with("policies/x.yaml:4:") && e.contains("`HOSTS`"), "{e}");
}

#[test]
fn list_variable_empty_list_is_unset() {
    // The Pro master's .env ships `KMS_URIS=[]`: no media node configured.
    let e = load(MASTER, &[("KMS_URIS", "[]")]).unwrap_err().to_string();
    assert!(e.contains("variable `KMS_URIS` is not set or empty"), "{e}");
    let optional = MASTER
        .replace("ports: [3000] }", "ports: [3000], optional: true }")
        .replace("[\"${KMS_URIS}\"] }", "[\"${KMS_URIS}\"], optional: true }");
    let loaded = load(&optional, &[("KMS_URIS", "[]")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings.iter().filter(|w| w.code == "optional-left-out").count(), 2);
}
