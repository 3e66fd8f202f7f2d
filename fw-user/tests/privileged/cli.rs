//! Bad input to `fw run`: one line on stderr, a non-zero exit, nothing
//! pinned, and a running instance left alone.

use std::process::Command;

use crate::harness::{
    self,
    fw::{fw, pin_dir, remove_leftovers, run_bounded, Finished, Fw, FW},
    netns::{Netns, VethPair},
    unique_name, TempDir,
};

const POLICY: &str = r#"name: e2e
phases:
  test:
    egress:
      - { name: allow-tcp, to: [198.18.0.2, "2001:db8::2"], proto: tcp, ports: [8080] }
"#;

/// A flow mapping that is never closed: a YAML syntax error on line 5.
const BROKEN_POLICY: &str = r#"name: e2e
phases:
  test:
    egress:
      - { name: allow-tcp, to: [198.18.0.2, proto: tcp
"#;

/// `fw run` in `ns` with a fresh instance name; returns how it ended, after
/// checking that it left no pins. Bounded: a run that starts enforcing
/// instead of failing is killed and fails the test.
fn run_expecting_failure(ns: &Netns, iface: &str, policy: &str) -> (String, Finished) {
    let name = unique_name();
    let out = fw(ns, &["run", "--iface", iface, "--policy", policy, "--phase", "test", "--name", &name]);
    let pinned = pin_dir(&name).exists();
    remove_leftovers(&name);
    assert!(!pinned, "a failed fw run left {} behind: {out:#?}", pin_dir(&name).display());
    (name, out)
}

#[test]
fn run_on_a_missing_interface_fails_in_one_line() {
    harness::setup();
    let ns = Netns::new(format!("{}-solo", unique_name()));
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", POLICY);
    let iface = format!("fwnone{}", harness::next_n());
    let (_, out) = run_expecting_failure(&ns, &iface, policy.to_str().unwrap());
    let line = out.one_line_error();
    assert!(line.contains(&iface), "the error must name the interface: {line}");
}

#[test]
fn run_with_a_missing_policy_file_fails_in_one_line() {
    harness::setup();
    let pair = VethPair::new(0);
    let dir = TempDir::new();
    let missing = dir.path().join("no-such-policy.yaml");
    let (_, out) = run_expecting_failure(&pair.near, &pair.near_if, missing.to_str().unwrap());
    let line = out.one_line_error();
    assert!(line.contains("no-such-policy.yaml"), "the error must name the file: {line}");
}

#[test]
fn run_with_a_policy_syntax_error_fails_in_one_line() {
    harness::setup();
    let pair = VethPair::new(0);
    let dir = TempDir::new();
    let policy = dir.write("broken.yaml", BROKEN_POLICY);
    let (_, out) = run_expecting_failure(&pair.near, &pair.near_if, policy.to_str().unwrap());
    let line = out.one_line_error();
    assert!(line.contains("broken.yaml"), "the error must name the file: {line}");
}

#[test]
fn second_run_with_the_same_name_fails_and_leaves_the_first_enforcing() {
    harness::setup();
    let pair = VethPair::new(0);
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", POLICY);
    let first = Fw::start(&pair.near, &pair.near_if, &policy, "test");

    let out = fw(
        &pair.near,
        &["run", "--iface", &pair.near_if, "--phase", "test", "--name", first.name(), "--policy", policy.to_str().unwrap()],
    );
    let line = out.one_line_error();
    assert!(line.contains(first.name()), "the error must name the instance: {line}");
    let status = first.status();
    assert!(status.status.success(), "the first instance must still enforce: {status:#?}");
    assert!(pin_dir(first.name()).exists());
}

#[test]
fn run_without_root_says_it_needs_root() {
    harness::setup();
    let pair = VethPair::new(0);
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", POLICY);
    let name = unique_name();
    let mut cmd: Command = pair.near.command("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", FW, "run", "--iface", &pair.near_if])
        .args(["--phase", "test", "--name", &name, "--policy"])
        .arg(&policy);
    let out = run_bounded(cmd, std::time::Duration::from_secs(30));
    let pinned = pin_dir(&name).exists();
    remove_leftovers(&name);
    assert!(!pinned, "a refused fw run left pins: {out:#?}");
    let line = out.one_line_error();
    assert!(line.contains("root"), "the error must say that root is needed: {line}");
}
