//! Bad input to `fw run`: one line on stderr, a non-zero exit, nothing
//! pinned, and a running instance left alone.

use std::{path::Path, process::Command, time::Duration};

use crate::harness::{
    self,
    fw::{pin_dir, remove_leftovers, run_args, run_bounded, Finished, Fw, FW},
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

/// Runs `cmd`, an `fw run` for instance `name`, and checks that it left no
/// pins (removing any, so that a failure here leaks nothing). Bounded: a
/// run that starts enforcing instead of failing is killed and fails.
fn run_leaving_nothing(name: &str, cmd: Command) -> Finished {
    let out = run_bounded(cmd, Duration::from_secs(30));
    let pinned = pin_dir(name).exists();
    remove_leftovers(name);
    assert!(!pinned, "a failed fw run left {} behind: {out:#?}", pin_dir(name).display());
    out
}

/// `fw run` in `ns` with a fresh instance name.
fn run_expecting_failure(ns: &Netns, iface: &str, policy: &Path) -> Finished {
    let name = unique_name();
    let mut cmd = ns.command(FW);
    cmd.args(run_args(iface, policy, "test", &name));
    run_leaving_nothing(&name, cmd)
}

/// A veth pair and a scratch directory for policy files.
fn veth_and_dir() -> (VethPair, TempDir) {
    harness::setup();
    (VethPair::new(0), TempDir::new())
}

#[test]
fn run_on_a_missing_interface_fails_in_one_line() {
    harness::setup();
    let ns = Netns::new(format!("{}-solo", unique_name()));
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", POLICY);
    let iface = format!("fwnone{}", harness::next_n());
    let out = run_expecting_failure(&ns, &iface, &policy);
    let line = out.one_line_error();
    assert!(line.contains(&iface), "the error must name the interface: {line}");
}

/// `fw run` on a real veth with policy file `file`, which holds `contents`
/// or does not exist: must fail in one line that names the file.
fn assert_bad_policy_named(file: &str, contents: Option<&str>) {
    let (pair, dir) = veth_and_dir();
    let policy = match contents {
        Some(text) => dir.write(file, text),
        None => dir.path().join(file),
    };
    let out = run_expecting_failure(&pair.near, &pair.near_if, &policy);
    let line = out.one_line_error();
    assert!(line.contains(file), "the error must name the file: {line}");
}

#[test]
fn run_with_a_missing_policy_file_fails_in_one_line() {
    assert_bad_policy_named("no-such-policy.yaml", None);
}

#[test]
fn run_with_a_policy_syntax_error_fails_in_one_line() {
    assert_bad_policy_named("broken.yaml", Some(BROKEN_POLICY));
}

#[test]
fn second_run_with_the_same_name_fails_and_leaves_the_first_enforcing() {
    let (pair, dir) = veth_and_dir();
    let policy = dir.write("policy.yaml", POLICY);
    let first = Fw::start(&pair.near, &pair.near_if, &policy, "test");

    let mut again = pair.near.command(FW);
    again.args(run_args(&pair.near_if, &policy, "test", first.name()));
    let out = run_bounded(again, Duration::from_secs(30));
    let line = out.one_line_error();
    assert!(line.contains(first.name()), "the error must name the instance: {line}");
    let status = first.status();
    assert!(status.status.success(), "the first instance must still enforce: {status:#?}");
    assert!(pin_dir(first.name()).exists());
}

#[test]
fn run_without_root_says_it_needs_root() {
    let (pair, dir) = veth_and_dir();
    let policy = dir.write("policy.yaml", POLICY);
    let name = unique_name();
    let mut cmd = pair.near.command("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", FW]).args(run_args(
        &pair.near_if,
        &policy,
        "test",
        &name,
    ));
    let out = run_leaving_nothing(&name, cmd);
    let line = out.one_line_error();
    assert!(line.contains("root"), "the error must say that root is needed: {line}");
}
