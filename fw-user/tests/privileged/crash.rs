//! Issue 11, the control plane under interruption, with the real binary and
//! kernel: `fw switch` of a 50,000-rule phase killed (SIGINT or SIGKILL) at
//! random moments of its map writes; failpoints (`FW_FAILPOINT=N`) at a
//! sample of the steps of run, switch, confirm and stop; two daemons
//! started together; `fw stop` during a switch; a simulated reboot.
//!
//! After each interruption: `fw status` enforces exactly one complete
//! phase (its entry counts are those of a clean switch to it), `fw explain
//! --name` agrees with it, and the next command leaves no other generation
//! behind.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{
    fw::{fw, run_bounded, Finished, Fw, Launch, FW, FW_LIB_DIR},
    netns::VethPair,
    traffic::{in_netns, tcp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    TempDir,
};
use fw_lab::rng::Rng;

const BIG_RULES: usize = 50_000;

/// A policy with a one-destination phase (`closed`, the "close all
/// outbound" the finding weakened), a `big` phase of 50,000 destinations
/// and a small `open` one.
fn policy(dir: &TempDir, pair: &VethPair) -> PathBuf {
    let mut yaml = format!(
        "name: crash\nphases:\n  closed:\n    egress:\n      \
         - {{ name: only, to: [{}], proto: tcp, ports: [443] }}\n  \
         open:\n    egress:\n      - {{ name: web, to: [{}, \"{}\"], proto: tcp, ports: [80, 443, 8443] }}\n  \
         big:\n    egress:\n",
        pair.far4, pair.far4, pair.far6
    );
    for i in 0..BIG_RULES {
        let _ = writeln!(
            yaml,
            "      - {{ name: b{i}, to: [\"198.19.{}.{}\"], proto: tcp, ports: [443, \"{}-{}\"] }}",
            (i >> 8) & 0xff,
            i & 0xff,
            2000 + i % 1000,
            2010 + i % 1000
        );
    }
    // The far host's 8443 only in `big`: traffic proves which phase runs.
    let _ = writeln!(yaml, "      - {{ name: far, to: [{}], proto: tcp, ports: [8443] }}", pair.far4);
    dir.write("crash.yaml", &yaml)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    addr4: u64,
    addr6: u64,
    ports: u64,
}

/// `fw status --json`: (phase, counts of the active generation, entries
/// of other generations). Panics unless it enforces.
fn enforced(instance: &Fw) -> (String, Counts, u64) {
    parse_status(instance.status_json())
}

/// [`enforced`] once the daemon has deleted what a switch left to it.
fn enforced_collected(instance: &Fw) -> (String, Counts, u64) {
    parse_status(instance.status_collected())
}

fn parse_status(status: serde_json::Value) -> (String, Counts, u64) {
    assert_eq!(status["enforcing"], true, "not enforcing: {status}");
    let e = &status["entries"];
    let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("no entries.{k}: {status}"));
    (
        status["phase"].as_str().unwrap_or_default().to_string(),
        Counts { addr4: n("addr4"), addr6: n("addr6"), ports: n("ports") },
        n("other_generations"),
    )
}

/// `fw explain ADDR:PORT/tcp --name N --json` -> "allow" or "deny".
fn verdict(instance: &Fw, dest: &str) -> String {
    let out = instance.cli(&["explain", dest, "--json"]);
    assert!(out.status.success(), "fw explain {dest}: {out:#?}");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("explain --json");
    json["verdict"].as_str().unwrap_or_default().to_string()
}

/// The phases and what a clean switch to each leaves in the kernel.
struct Known {
    counts: Vec<(String, Counts)>,
}

impl Known {
    fn learn(instance: &Fw, phases: &[&str]) -> Self {
        let mut counts = Vec::new();
        for phase in phases {
            assert_ok(&instance.cli(&["switch", phase]), phase);
            let (now, c, other) = enforced_collected(instance);
            assert_eq!((now.as_str(), other), (*phase, 0));
            counts.push((phase.to_string(), c));
        }
        Self { counts }
    }

    /// Exactly one complete phase is enforced, and explain agrees.
    fn check(&self, instance: &Fw, context: &str) -> String {
        let phase = self.check_counts(instance, context);
        let big_only = verdict(instance, "198.19.100.7:443/tcp");
        assert_eq!(big_only == "allow", phase == "big", "{context}: explain says {big_only} in phase {phase}");
        phase
    }

    /// Exactly one complete phase is enforced: its entry counts are those
    /// of a clean switch to it.
    fn check_counts(&self, instance: &Fw, context: &str) -> String {
        let (phase, counts, _) = enforced(instance);
        let expected = self
            .counts
            .iter()
            .find(|(p, _)| *p == phase)
            .unwrap_or_else(|| panic!("{context}: fw status names phase {phase:?}"))
            .1;
        assert_eq!(counts, expected, "{context}: phase {phase} is enforced incompletely or mixed");
        phase
    }
}

fn assert_ok(out: &Finished, what: &str) {
    assert!(out.status.success(), "{what}: {out:#?}");
}

/// `fw switch PHASE --name N [--policy FILE]` in the background.
fn spawn_switch(pair: &VethPair, name: &str, phase: &str, policy: Option<&Path>) -> Child {
    let mut cmd = pair.near.command(FW);
    cmd.args(["switch", phase, "--name", name]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(policy) = policy {
        cmd.arg("--policy").arg(policy);
    }
    cmd.spawn().expect("starting fw switch")
}

fn state_file(name: &str) -> PathBuf {
    Path::new("/run/fw").join(format!("{name}.json"))
}

/// Waits (bounded) until the switch reserved its generation: the state
/// file's `highest_generation` passes `above`. Returns false if the switch
/// ended first.
fn wait_reserved(child: &mut Child, name: &str, above: u64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if child.try_wait().expect("waiting for fw switch").is_some() {
            return false;
        }
        let json: serde_json::Value =
            fs::read(state_file(name)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        if json["highest_generation"].as_u64().unwrap_or(0) > above {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("fw switch never reserved a generation");
}

fn highest(name: &str) -> u64 {
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(state_file(name)).expect("state file")).expect("state json");
    json["highest_generation"].as_u64().expect("highest_generation")
}

/// Finding 1: a 50,000-rule switch interrupted at random moments of its
/// map writes (SIGINT and SIGKILL alternately, 50 times) never leaves a
/// mix: the next switch to `closed` enforces exactly `closed`.
#[test]
fn finding1_interrupted_50k_switch_never_weakens_the_policy() {
    const ITERATIONS: usize = 50;
    let pair = VethPair::new(61);
    let dir = TempDir::new();
    let policy = policy(&dir, &pair);
    let small = small_policy(&dir, &pair);
    let small_arg = small.to_str().expect("utf-8 path");
    // The switch writes its entries itself (the test of the phase written
    // ahead by the daemon is below).
    let instance = Fw::start_with(&pair.near, &pair.near_if, &policy, "closed", &[OsStr::new("--no-write-ahead")]);
    let known = Known::learn(&instance, &["big", "open", "closed"]);
    // How long the writes of a clean switch to `big` take, from the
    // reservation on: the window the kills aim at.
    let mut child = spawn_switch(&pair, instance.name(), "big", Some(&policy));
    assert!(wait_reserved(&mut child, instance.name(), highest(instance.name())));
    let started = Instant::now();
    assert!(child.wait().expect("fw switch").success());
    let window = started.elapsed();
    assert_ok(&instance.cli(&["switch", "closed", "--policy", small_arg]), "back to closed");
    println!("a clean switch to 50,000 rules writes for {window:?} after its reservation");

    let seed = std::process::id() as u64;
    println!("kill times from seed {seed}");
    let mut rng = Rng::new(seed);
    let mut landed = [0usize; 2];
    for i in 0..ITERATIONS {
        let before = highest(instance.name());
        let mut child = spawn_switch(&pair, instance.name(), "big", Some(&policy));
        if wait_reserved(&mut child, instance.name(), before) {
            // The writes are the first part of the window (then come the
            // activation, the counters, the clean-up): aim most kills there.
            std::thread::sleep(Duration::from_micros(rng.below(window.as_micros() as u64 / 2 + 1)));
            let signal = if i % 2 == 0 { libc::SIGINT } else { libc::SIGKILL };
            // SAFETY: signalling a child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
        let status = child.wait().expect("reaping fw switch");
        let context = format!("iteration {i} ({status})");
        // explain reads every entry back: every tenth iteration only.
        let phase =
            if i % 10 == 0 { known.check(&instance, &context) } else { known.check_counts(&instance, &context) };
        landed[usize::from(phase == "big")] += 1;
        // The next switch writes exactly `closed`, and nothing of the
        // interrupted one survives it and the daemon's collection.
        assert_ok(&instance.cli(&["switch", "closed", "--policy", small_arg]), &context);
        let (phase, counts, _) = enforced_collected(&instance);
        assert_eq!(phase, "closed", "{context}");
        assert_eq!(counts, known.counts[2].1, "{context}");
    }
    println!(
        "{ITERATIONS} interrupted switches: {} left closed enforced, {} had already activated big; no mix",
        landed[0], landed[1]
    );
    // Real traffic: closed allows far:443 only, not far:8443.
    let denied = SocketAddr::from((pair.far4, 8443));
    let allowed = SocketAddr::from((pair.far4, 443));
    let _servers = [Echo::tcp(&pair.far, denied), Echo::tcp(&pair.far, allowed)];
    assert_eq!(in_netns(&pair.near, || tcp_echo(denied, DROP_TIMEOUT)), Outcome::TimedOut);
    assert_eq!(in_netns(&pair.near, || tcp_echo(allowed, PASS_TIMEOUT)), Outcome::Echoed);
}

/// The small phases alone: a switch back to `closed` from this file does
/// not compile 50,000 rules each time.
fn small_policy(dir: &TempDir, pair: &VethPair) -> PathBuf {
    dir.write(
        "small.yaml",
        &format!(
            "name: crash\nphases:\n  closed:\n    egress:\n      - {{ name: only, to: [{}], proto: tcp, ports: [443] }}\n",
            pair.far4
        ),
    )
}

/// The number of failpoint steps `args` goes through (FW_FAILPOINT=list).
fn count_steps(pair: &VethPair, args: &[&str]) -> (u64, Finished) {
    let mut cmd = pair.near.command(FW);
    cmd.args(args).env("FW_FAILPOINT", "list");
    let out = run_bounded(cmd, Duration::from_secs(60));
    let steps = out.stderr.lines().filter(|l| l.starts_with("fw: failpoint ")).count() as u64;
    (steps, out)
}

/// `args` killed at failpoint step `at`.
fn killed_at(pair: &VethPair, args: &[&str], at: u64) -> Finished {
    let mut cmd = pair.near.command(FW);
    cmd.args(args).env("FW_FAILPOINT", at.to_string());
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(out.status.code().is_none(), "{args:?} was not killed at step {at}: {out:#?}");
    out
}

/// A sample of steps of switch (with and without --confirm) and confirm,
/// killed there for real, then the next command completes cleanly.
#[test]
fn crash_failpoints_of_switch_and_confirm() {
    let pair = VethPair::new(62);
    let dir = TempDir::new();
    let policy = policy(&dir, &pair);
    let instance = Fw::start_with(&pair.near, &pair.near_if, &policy, "closed", &[OsStr::new("--no-write-ahead")]);
    let known = Known::learn(&instance, &["open", "closed"]);
    let name = instance.name().to_string();
    let switch_open = ["switch", "open", "--name", &name, "--confirm", "600"];
    let (steps, out) = count_steps(&pair, &switch_open);
    // Bookkeeping (records, activation, counters) and the map writes and
    // deletions, a batch of up to 4,096 entries each.
    assert!(out.status.success() && steps > 5, "{steps} steps: {out:#?}");
    let (confirm_steps, out) = count_steps(&pair, &["confirm", "--name", &name]);
    assert!(out.status.success() && confirm_steps > 3, "{confirm_steps} steps: {out:#?}");
    assert_ok(&instance.cli(&["switch", "closed"]), "back");
    let mut tried = 0;
    // Every step of the switch's bookkeeping, a sample of its entry writes.
    for at in (1..=steps).filter(|s| *s <= 4 || *s + 8 > steps || s % 7 == 0) {
        killed_at(&pair, &switch_open, at);
        let phase = known.check(&instance, &format!("switch killed at step {at} of {steps}"));
        let status = instance.status_json();
        if phase == "open" {
            // Activated: it awaits confirmation like a switch that ended.
            assert!(!status["pending_confirm"].is_null() || status["repair_pending"] == true, "{status}");
            assert_ok(&instance.cli(&["confirm"]), "confirm after the kill");
        }
        assert_ok(&instance.cli(&["switch", "closed"]), "switch after the kill");
        // No orphans once the daemon has collected what the switch left.
        let (phase, _, _) = enforced_collected(&instance);
        assert_eq!(phase, "closed", "after the kill at {at}");
        tried += 1;
    }
    for at in 1..=confirm_steps {
        assert_ok(&instance.cli(&["switch", "open", "--confirm", "600"]), "switch");
        killed_at(&pair, &["confirm", "--name", &name], at);
        let phase = known.check(&instance, &format!("confirm killed at step {at} of {confirm_steps}"));
        assert_eq!(phase, "open", "a killed confirm never rolls back");
        // Confirming again either finishes it or says it is done; the
        // active generation survives both.
        let again = instance.cli(&["confirm"]);
        assert!(again.status.success() || again.stderr.contains("nothing to confirm"), "{again:#?}");
        assert_eq!(known.check(&instance, "after confirming again"), "open");
        assert_eq!(enforced(&instance).2, 0, "the confirmed switch left its previous generation");
        assert_ok(&instance.cli(&["switch", "closed"]), "back");
        tried += 1;
    }
    println!(
        "switch: {steps} steps, confirm: {confirm_steps} steps; {tried} interrupted runs checked, 0 inconsistencies"
    );
}

/// The phase the daemon writes ahead: a switch that takes it, killed at
/// every one of its steps (journal, activation, record, ...), leaves
/// `closed` or `open` complete and the next command finishes; and the
/// daemon killed at random moments while it writes `big` ahead (50,000
/// destinations) leaves `open` enforced, unchanged, and its restart
/// collects what the write left and writes `big` ahead again.
#[test]
fn crash_a_switch_to_the_phase_written_ahead_and_the_daemon_killed_while_writing_it() {
    let pair = VethPair::new(68);
    let dir = TempDir::new();
    let policy = policy(&dir, &pair);
    let mut instance = Fw::start(&pair.near, &pair.near_if, &policy, "closed");
    let known = Known::learn(&instance, &["big", "open", "closed"]);
    let name = instance.name().to_string();
    let switch_open = ["switch", "open", "--name", &name, "--confirm", "600"];
    instance.status_written_ahead("open");
    let (steps, out) = count_steps(&pair, &switch_open);
    assert!(out.status.success() && out.stdout.contains("written ahead by the daemon"), "{out:#?}");
    assert!(steps >= 3, "{steps} steps: {out:#?}");
    assert_ok(&instance.cli(&["confirm"]), "confirm");
    assert_ok(&instance.cli(&["switch", "closed"]), "back");
    for at in 1..=steps {
        instance.status_written_ahead("open");
        let context = format!("switch to the phase written ahead killed at step {at} of {steps}");
        killed_at(&pair, &switch_open, at);
        let phase = known.check(&instance, &context);
        if phase == "open" {
            let status = instance.status_json();
            assert!(!status["pending_confirm"].is_null() || status["repair_pending"] == true, "{context}: {status}");
            assert_ok(&instance.cli(&["confirm"]), &context);
        }
        assert_ok(&instance.cli(&["switch", "closed"]), &context);
        assert_eq!(enforced_collected(&instance).0, "closed", "{context}");
    }

    // The daemon killed while it writes `big` ahead (after `open`): the
    // window is from the switch to `open` until `big` is written ahead.
    assert_ok(&instance.cli(&["switch", "open"]), "open");
    let started = Instant::now();
    instance.status_written_ahead("big");
    let window = started.elapsed();
    println!("the daemon compiles and writes big ahead within {window:?} of the switch");
    let mut rng = Rng::new(std::process::id() as u64);
    for i in 0..4 {
        let context = format!("daemon killed while writing ahead, iteration {i}");
        assert_ok(&instance.cli(&["switch", "closed"]), &context);
        assert_ok(&instance.cli(&["switch", "open"]), &context);
        std::thread::sleep(Duration::from_micros(rng.below(window.as_micros() as u64 + 1)));
        instance.kill_run_process();
        assert_eq!(known.check_counts(&instance, &context), "open", "{context}");
        instance.start_again();
        // The restarted daemon collects what the killed write left, then
        // writes `big` ahead again; `open` stays enforced throughout.
        instance.status_written_ahead("big");
        assert_eq!(known.check(&instance, &context), "open", "{context}");
    }
    // The switch to it: `big` complete (explain allows its destinations).
    let out = instance.cli(&["switch", "big"]);
    assert!(out.status.success() && out.stdout.contains("written ahead by the daemon"), "{out:#?}");
    assert_eq!(known.check(&instance, "switched to big"), "big");
}

/// Finding 4 with the real daemon: it is killed right after the rollback's
/// activation (the first step of the rollback); the restarted daemon
/// finishes the rollback, and `fw confirm` refuses instead of deleting the
/// active generation.
#[test]
fn finding4_daemon_killed_during_rollback_leaves_no_trap() {
    let pair = VethPair::new(63);
    let dir = TempDir::new();
    let policy = policy(&dir, &pair);
    let mut instance = Fw::start(&pair.near, &pair.near_if, &policy, "closed");
    let known = Known::learn(&instance, &["open", "closed"]);
    assert_ok(&instance.cli(&["switch", "open", "--confirm", "1"]), "switch --confirm 1");
    // The daemon rolls back within a second or two; kill it as soon as the
    // kernel is back on `closed` (before or after it recorded that).
    let start = Instant::now();
    while enforced(&instance).0 != "closed" {
        assert!(start.elapsed() < Duration::from_secs(10), "no rollback");
    }
    instance.kill_run_process();
    assert_eq!(known.check(&instance, "after the kill"), "closed");
    let confirm = instance.cli(&["confirm"]);
    assert!(!confirm.status.success() && confirm.stderr.contains("nothing to confirm"), "{confirm:#?}");
    assert_eq!(known.check(&instance, "after fw confirm"), "closed");
    instance.start_again();
    assert!(instance.log_text().contains("adopted"), "{}", instance.log_text());
    assert_eq!(known.check(&instance, "after the restart"), "closed");
    assert_ok(&instance.cli(&["switch", "open"]), "a switch after it all");
}

/// Finding 10: two `fw run` of one name started together, 15 times:
/// exactly one daemon survives, and it still answers on its socket.
#[test]
fn finding10_one_daemon_per_instance() {
    let pair = VethPair::new(64);
    let dir = TempDir::new();
    let policy = policy(&dir, &pair);
    for round in 0..15 {
        let name = crate::harness::unique_name();
        let args = crate::harness::fw::run_args(&pair.near_if, &policy, "closed", &name);
        let spawn = || {
            let mut cmd = pair.near.command(FW);
            cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            cmd.spawn().expect("fw run")
        };
        let mut both = [spawn(), spawn()];
        // The loser exits at once; wait for it (bounded).
        let start = Instant::now();
        let loser = loop {
            if let Some(i) = both.iter_mut().position(|c| c.try_wait().expect("try_wait").is_some()) {
                break i;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "round {round}: neither fw run exited");
            std::thread::sleep(Duration::from_millis(10));
        };
        let winner = 1 - loser;
        let mut stderr = String::new();
        std::io::Read::read_to_string(both[loser].stderr.as_mut().expect("stderr"), &mut stderr).ok();
        // Readiness of the winner: status names it as the daemon.
        let start = Instant::now();
        let pid = loop {
            let out = fw(&pair.near, &["status", "--name", &name, "--json"]);
            let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
            if out.status.success() && json["daemon_pid"].as_u64().is_some() {
                break json["daemon_pid"].as_u64().unwrap();
            }
            assert!(
                both[winner].try_wait().expect("try_wait").is_none(),
                "round {round}: both exited; loser said {stderr}"
            );
            assert!(start.elapsed() < Duration::from_secs(20), "round {round}: the winner never answered");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(pid, u64::from(both[winner].id()), "round {round}: the socket answers for another process");
        assert!(stderr.contains("already runs instance"), "round {round}: the loser said {stderr:?}");
        let _ = fw(&pair.near, &["stop", "--name", &name, "--forget"]);
        for child in &mut both {
            let _ = child.kill();
            let _ = child.wait();
        }
        crate::harness::fw::remove_leftovers(&name);
    }
}

/// Finding 10: `fw stop` during a switch waits for it; the switch never
/// re-creates the state of the stopped instance.
#[test]
fn finding10_stop_during_a_switch_leaves_nothing() {
    let pair = VethPair::new(65);
    let dir = TempDir::new();
    let policy = policy(&dir, &pair);
    let instance = Fw::start(&pair.near, &pair.near_if, &policy, "closed");
    let name = instance.name().to_string();
    let mut switch = spawn_switch(&pair, &name, "big", None);
    assert!(wait_reserved(&mut switch, &name, highest(&name)));
    let stop = fw(&pair.near, &["stop", "--name", &name]);
    assert_ok(&stop, "fw stop during a switch");
    let _ = switch.wait();
    assert!(!state_file(&name).exists(), "a switch re-created the state of a stopped instance");
    assert!(!Path::new("/sys/fs/bpf/fw").join(&name).exists(), "pins left after fw stop");
    let status = fw(&pair.near, &["status", "--name", &name]);
    assert_eq!(status.status.code(), Some(1), "{status:#?}");
    drop(instance);
}

/// Finding 11: a reboot (pins and /run gone, /var/lib kept) comes back in
/// the last confirmed phase, not the unit's --phase; an unconfirmed switch
/// is not what comes back.
#[test]
fn finding11_reboot_comes_back_in_the_confirmed_phase() {
    let pair = VethPair::new(66);
    let dir = TempDir::new();
    let policy = policy(&dir, &pair);
    let mut instance = Fw::start(&pair.near, &pair.near_if, &policy, "open");
    let name = instance.name().to_string();
    assert_ok(&instance.cli(&["switch", "closed", "--confirm", "600"]), "switch");
    assert_ok(&instance.cli(&["confirm"]), "confirm");
    // An unconfirmed switch back to open is pending at the "power cut".
    assert_ok(&instance.cli(&["switch", "open", "--confirm", "600"]), "switch");
    let reboot = |instance: &mut Fw| {
        instance.kill_run_process();
        // The pins die with the kernel, /run is a tmpfs.
        fs::remove_dir_all(Path::new("/sys/fs/bpf/fw").join(&name)).expect("removing the pins");
        for suffix in ["rules", "kept"] {
            let _ = fs::remove_dir_all(Path::new("/run/fw").join(format!("{name}.{suffix}")));
        }
        for suffix in ["json", "sock", "lock", "daemon.lock"] {
            let _ = fs::remove_file(Path::new("/run/fw").join(format!("{name}.{suffix}")));
        }
        assert!(Path::new(FW_LIB_DIR).join(&name).join("boot.json").exists(), "no boot record");
    };
    reboot(&mut instance);
    // The unit starts `fw run ... --phase open` (its env file's phase).
    instance.start_again();
    let status = instance.status_json();
    assert_eq!(status["phase"], "closed", "rebooted into {status}");
    assert!(instance.log_text().contains("the last one confirmed"), "{}", instance.log_text());
    // The policy file edited since: the boot copy is what comes back.
    fs::write(&policy, "name: crash\nphases:\n  closed:\n    egress:\n      - { name: all, to: [any] }\n").unwrap();
    reboot(&mut instance);
    instance.start_again();
    let far = SocketAddr::from((pair.far4, 8443));
    let _server = Echo::tcp(&pair.far, far);
    assert_eq!(in_netns(&pair.near, || tcp_echo(far, DROP_TIMEOUT)), Outcome::TimedOut, "the edited file was enforced");
    assert_eq!(instance.status_json()["phase"], "closed");
    // `fw stop --forget` forgets it: the next start uses its --phase again.
    instance.stop_with(&["--forget"]);
    assert!(!Path::new(FW_LIB_DIR).join(&name).exists());
}

/// Start options for instance `name`.
fn named(name: &str) -> Launch<'static> {
    Launch { name: Some(name.to_string()), ..Launch::default() }
}

/// `fw run` killed at every failpoint step of its start, then started
/// again: it enforces the whole phase (never a part, never nothing); and
/// `fw stop` killed at every step, then either `fw stop` again (nothing
/// left) or `fw run` (enforcing again).
#[test]
fn crash_failpoints_of_run_and_stop() {
    let pair = VethPair::new(67);
    let dir = TempDir::new();
    let policy = policy(&dir, &pair);
    let name = crate::harness::unique_name();
    let args = crate::harness::fw::run_args(&pair.near_if, &policy, "open", &name);
    let cleanup = || {
        let _ = fw(&pair.near, &["stop", "--name", &name, "--forget"]);
        crate::harness::fw::remove_leftovers(&name);
    };
    // The steps of a start: run with the listing until it enforces.
    let expected = {
        let mut instance = Fw::start_launch(&pair.near, &pair.near_if, &policy, "open", named(&name));
        let (_, counts, _) = enforced(&instance);
        instance.kill_run_process();
        counts
    };
    cleanup();
    let steps = {
        let log = dir.path().join("list.log");
        let mut cmd = pair.near.command(FW);
        cmd.args(&args).env("FW_FAILPOINT", "list").stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("fw run");
        let start = Instant::now();
        while !fw(&pair.near, &["status", "--name", &name]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(20), "fw run never enforced");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        fs::read_to_string(&log).unwrap().lines().filter(|l| l.starts_with("fw: failpoint ")).count() as u64
    };
    cleanup();
    assert!(steps > 5, "{steps} steps");
    let mut tried = 0;
    for at in 1..=steps {
        let mut cmd = pair.near.command(FW);
        cmd.args(&args).env("FW_FAILPOINT", at.to_string());
        let out = run_bounded(cmd, Duration::from_secs(30));
        assert!(out.status.code().is_none(), "fw run not killed at step {at}: {out:#?}");
        let mut instance = Fw::start_launch(&pair.near, &pair.near_if, &policy, "open", named(&name));
        let (phase, counts, other) = enforced(&instance);
        assert_eq!(
            (phase.as_str(), counts, other),
            ("open", expected, 0),
            "fw run killed at step {at} of {steps}, then started again"
        );
        instance.kill_run_process();
        tried += 1;
    }
    // Stop: count its steps (on a live instance), then kill it at each one.
    let mut instance = Fw::start_launch(&pair.near, &pair.near_if, &policy, "open", named(&name));
    instance.kill_run_process();
    let (stop_steps, out) = count_steps(&pair, &["stop", "--name", &name]);
    drop(instance);
    assert!(out.status.success() && stop_steps >= 2, "{stop_steps}: {out:#?}");
    for at in 1..=stop_steps {
        let mut instance = Fw::start_launch(&pair.near, &pair.near_if, &policy, "open", named(&name));
        instance.kill_run_process();
        killed_at(&pair, &["stop", "--name", &name], at);
        if at % 2 == 1 {
            assert_ok(&fw(&pair.near, &["stop", "--name", &name]), "fw stop after a killed one");
            assert!(!Path::new("/sys/fs/bpf/fw").join(&name).exists(), "pins left");
            assert!(!state_file(&name).exists(), "state left");
        } else {
            instance.start_again();
            let (phase, counts, _) = enforced(&instance);
            assert_eq!((phase.as_str(), counts), ("open", expected), "fw run after a stop killed at step {at}");
            instance.kill_run_process();
            assert_ok(&fw(&pair.near, &["stop", "--name", &name]), "fw stop");
        }
        tried += 1;
    }
    cleanup();
    println!("fw run: {steps} steps, fw stop: {stop_steps} steps; {tried} interrupted runs checked, 0 inconsistencies");
}
