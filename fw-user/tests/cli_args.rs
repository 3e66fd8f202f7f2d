//! Numbers and durations on the command line: an absurd value is a clap
//! error naming the flag, before any command runs (nothing is touched).

use clap::Parser;
use fw_user::cli::Cli;

/// Parses `fw ARGS`; returns the rendered error, or `None` if accepted.
fn rejection(args: &[&str]) -> Option<String> {
    let argv = std::iter::once("fw").chain(args.iter().copied());
    Cli::try_parse_from(argv).err().map(|e| e.to_string())
}

#[track_caller]
fn assert_refused(args: &[&str], flag: &str) {
    let Some(error) = rejection(args) else { panic!("accepted: fw {}", args.join(" ")) };
    let first = error.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: ") && first.contains(flag), "the first line must name {flag}: {error}");
}

#[track_caller]
fn assert_accepted(args: &[&str]) {
    if let Some(error) = rejection(args) {
        panic!("refused: fw {}: {error}", args.join(" "));
    }
}

const MAX_U64: &str = "18446744073709551615";

#[test]
fn finding6_absurd_numbers_are_refused_by_the_parser() {
    // The reported one: the deadline `now + SECS` overflowed after the new
    // generation was already active.
    assert_refused(&["switch", "install", "--confirm", MAX_U64], "--confirm");
    assert_refused(&["switch", "install", "--confirm", "604801"], "--confirm");
    assert_refused(&["switch", "install", "--confirm", "0"], "--confirm");
    assert_accepted(&["switch", "install", "--confirm", "604800"]);
    assert_accepted(&["switch", "install", "--confirm", "120"]);

    let run = ["run", "--iface", "veth0"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { run.iter().chain(extra).copied().collect() };
    assert_refused(&with(&["--interval", MAX_U64]), "--interval");
    assert_refused(&with(&["--interval", "86401"]), "--interval");
    assert_accepted(&with(&["--interval", "86400"]));
    assert_refused(&with(&["--event-budget", "4294967295"]), "--event-budget");
    assert_refused(&with(&["--event-budget", "100001"]), "--event-budget");
    assert_accepted(&with(&["--event-budget", "100000"]));
    assert_accepted(&with(&["--event-budget", "0"]));
    assert_refused(&with(&["--metrics", "70000"]), "--metrics");
    assert_refused(&with(&["--metrics", "127.0.0.1:65536"]), "--metrics");

    for (flag, command) in [("--since", &["drops"][..]), ("--duration", &["learn", "--iface", "veth0"][..])] {
        let args = |value: &'static str| -> Vec<&str> { command.iter().copied().chain([flag, value]).collect() };
        assert_refused(&args(MAX_U64), flag);
        assert_refused(&args("18446744073709551615d"), flag);
        assert_refused(&args("99999999999999999999999s"), flag);
        assert_refused(&args("366d"), flag);
        assert_accepted(&args("365d"));
        assert_accepted(&args("10m"));
    }
}
