//! Phases compiled ahead of `fw switch` by the daemon (issue 16, item 5):
//! a switch takes the daemon's compile while nothing it was compiled from
//! changed, and compiles the file as it is now when something did: what
//! the kernel enforces after the switch is the edited file.

use std::{net::SocketAddr, time::Duration};

use crate::harness::{
    fw::{run_bounded, Fw, FW},
    netns::VethPair,
    poll,
    traffic::{in_netns, tcp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    TempDir,
};

/// Phase `a` lets the far host's `port` out, phase `b` nothing.
fn policy(pair: &VethPair, port: u16) -> String {
    format!(
        "name: ahead\nphases:\n  a:\n    egress:\n      - {{ name: web, to: [{}], proto: tcp, ports: [{port}] }}\n  \
         b:\n    egress:\n      - {{ name: none, to: [198.19.255.1], proto: tcp, ports: [1] }}\n",
        pair.far4
    )
}

/// `fw switch PHASE [ARGS]` with the switch's debug log: (stdout, stderr).
fn switch_logged(pair: &VethPair, instance: &Fw, phase: &str) -> (String, String) {
    let mut cmd = pair.near.command(FW);
    cmd.arg("switch").args(phase.split(' ')).args(["--name", instance.name()]).env("RUST_LOG", "fw_user=debug");
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "fw switch {phase}: {out:#?}");
    (out.stdout, out.stderr)
}

/// Echo servers on the far host's `ports`; asserts that only `open` of
/// them is reachable from the near host.
fn only_reachable(pair: &VethPair, ports: &[u16], open: u16) {
    let addrs: Vec<SocketAddr> = ports.iter().map(|p| SocketAddr::from((pair.far4, *p))).collect();
    let _servers: Vec<Echo> = addrs.iter().map(|a| Echo::tcp(&pair.far, *a)).collect();
    for addr in addrs {
        let (want, limit) =
            if addr.port() == open { (Outcome::Echoed, PASS_TIMEOUT) } else { (Outcome::TimedOut, DROP_TIMEOUT) };
        assert_eq!(in_netns(&pair.near, || tcp_echo(addr, limit)), want, "port {}", addr.port());
    }
}

#[test]
fn a_switch_takes_the_phase_compiled_ahead_only_while_its_policy_is_unchanged() {
    let pair = VethPair::new(71);
    let dir = TempDir::new();
    let first = dir.write("first.yaml", &policy(&pair, 8080));
    let instance = Fw::start(&pair.near, &pair.near_if, &first, "a");
    let compiled_ahead = |times: usize| {
        poll(Duration::from_secs(30), || instance.log_text().matches("ahead of `fw switch`").count() >= times)
    };
    assert!(compiled_ahead(1), "the daemon never compiled the phases ahead: {}", instance.log_text());
    let (_, log) = switch_logged(&pair, &instance, "b");
    assert!(log.contains("phase b of") && log.contains("compiled ahead, read from"), "{log}");

    // Another file: nothing compiled ahead for it.
    let second = dir.write("second.yaml", &policy(&pair, 8081));
    let second_arg = second.to_str().expect("utf-8 path");
    let (_, log) = switch_logged(&pair, &instance, &format!("a --policy {second_arg}"));
    assert!(log.contains("not compiled ahead for what it reads now"), "{log}");
    only_reachable(&pair, &[8080, 8081], 8081);

    // The daemon compiles the file now enforced ahead; the next switch
    // takes it.
    assert!(compiled_ahead(2), "the daemon did not compile the new file ahead: {}", instance.log_text());
    let (_, log) = switch_logged(&pair, &instance, "b");
    assert!(log.contains("compiled ahead, read from"), "{log}");

    // Edited in place: whether the daemon saw the edit before the switch
    // or not, the kernel enforces the file as it is now, never the phase
    // kept from before the edit.
    dir.write("second.yaml", &policy(&pair, 8082));
    switch_logged(&pair, &instance, "a");
    only_reachable(&pair, &[8081, 8082], 8082);
}

#[test]
fn the_next_phase_is_written_ahead_judges_nothing_until_the_switch_and_is_used_only_when_asked_for() {
    let pair = VethPair::new(72);
    let dir = TempDir::new();
    let file = dir.write("p.yaml", &policy(&pair, 8080));
    let instance = Fw::start(&pair.near, &pair.near_if, &file, "a");
    // Phase b (lets nothing out) is written beside phase a...
    let status = instance.status_written_ahead("b");
    let ahead = status["written_ahead"]["generation"].as_u64().expect("a generation");
    assert_ne!(status["generation"], ahead, "{status}");
    assert!(status["entries"]["written_ahead"].as_u64() > Some(0), "{status}");
    // ... and judges nothing: phase a still lets 8080 out.
    only_reachable(&pair, &[8080, 8081], 8080);

    // The switch to it writes nothing and activates that generation.
    let (out, log) = switch_logged(&pair, &instance, "b");
    assert!(out.contains("written ahead by the daemon"), "{out}\n{log}");
    assert!(log.contains("the generation written ahead is taken"), "{log}");
    let status = instance.status_json();
    assert_eq!(status["generation"].as_u64(), Some(ahead), "{status}");
    assert_eq!(status["phase"], "b", "{status}");
    only_reachable(&pair, &[8080, 8081], 0);

    // Then phase a is written ahead; a switch to a from an edited file
    // discards it and writes what the file says now.
    instance.status_written_ahead("a");
    dir.write("p.yaml", &policy(&pair, 8081));
    let (out, _) = switch_logged(&pair, &instance, "a");
    assert!(out.contains("entries written") && !out.contains("ahead"), "{out}");
    only_reachable(&pair, &[8080, 8081], 8081);
    let status = instance.status_written_ahead("b");
    assert_eq!(status["entries"]["other_generations"], 0, "the discarded generation is left: {status}");
}
