//! `cargo xtask test [-- ARGS]`: the unprivileged suite (`cargo test
//! --workspace`, less the BPF-only fw-ebpf binary; fw-ebpf's library, the
//! packet parser, runs as host unit tests), then the privileged one: every
//! fw-user test target that requires the `privileged-tests` feature (root:
//! real eBPF, network namespaces, veth pairs). ARGS (a filter, `--
//! --nocapture`...) go to both `cargo test` runs. Never skips the
//! privileged suite silently: without root it fails. The privileged suite
//! gets the container image (`cargo xtask image`) as `FW_IMAGE`.

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{bootstrap, cmd};

#[derive(Args)]
pub struct Options {
    /// Arguments for both `cargo test` runs.
    #[arg(last = true)]
    pub args: Vec<String>,
}

struct Outcome {
    suite: &'static str,
    result: Result<()>,
    took: Duration,
}

pub fn test(opts: &Options) -> Result<()> {
    bootstrap::bootstrap(bootstrap::Purpose::Test)?;

    let mut outcomes = vec![timed("unprivileged", || {
        // Layout first: a diff from rustfmt.toml fails in a second, before
        // the builds.
        bootstrap::rustfmt()?;
        cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
        // fw-ebpf's binary is the BPF program (`no_main`, it cannot link
        // for the host); its library, the parser, is tested on the host.
        cmd::run(cargo_test().args(["--workspace", "--exclude", "fw-ebpf"]).args(&opts.args))?;
        cmd::run(cargo_test().args(["-p", "fw-ebpf", "--lib"]).args(&opts.args))?;
        // fw-bench's own logic (the DIR-16-8-8 builder) needs the `bench`
        // feature, which `--workspace` leaves off.
        cmd::run(cargo_test().args(["-p", "xtask", "--features", "bench", "--bin", "fw-bench"]).args(&opts.args))
    })];
    outcomes.push(timed("privileged", || {
        if !cmd::is_root() {
            bail!("privileged tests need root: run as root (CI does)");
        }
        bootstrap::mount_bpffs()?;
        let manifest = cmd::workspace_root().join("fw-user/Cargo.toml");
        let manifest = fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        let targets = privileged_targets(&manifest);
        if targets.is_empty() {
            bail!("fw-user/Cargo.toml declares no test target with required-features = [\"{FEATURE}\"]");
        }
        // The container tests run the image as it ships (static binary,
        // FROM scratch): built first, named to them by FW_IMAGE.
        let image = crate::image::build()?;
        let mut cargo = cargo_test();
        cargo.env("FW_IMAGE", &image).args(["-p", "fw-user", "--features", FEATURE]);
        for target in &targets {
            cargo.args(["--test", target]);
        }
        cmd::run(cargo.args(&opts.args))
    }));

    // The benchmark's quick subset, so that `cargo xtask bench` cannot rot.
    outcomes.push(timed("bench --quick", || crate::bench::bench(&crate::bench::Options::quick())));

    let mut failed = Vec::new();
    for o in &outcomes {
        match &o.result {
            Ok(()) => println!("{} suite: passed ({:.1} s)", o.suite, o.took.as_secs_f64()),
            Err(e) => {
                println!("{} suite: FAILED ({:.1} s): {e:#}", o.suite, o.took.as_secs_f64());
                failed.push(o.suite);
            }
        }
    }
    if !failed.is_empty() {
        bail!("failed suites: {}", failed.join(", "));
    }
    Ok(())
}

/// The cargo feature that gates the privileged test targets.
const FEATURE: &str = "privileged-tests";

/// Names of the `[[test]]` targets in `manifest` whose `required-features`
/// name [`FEATURE`]. A line-level reading of the TOML that fw-user's
/// manifest uses (one key per line), so xtask needs no TOML parser.
fn privileged_targets(manifest: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_test = false;
    let mut name: Option<String> = None;
    let mut privileged = false;
    let mut flush = |name: &mut Option<String>, privileged: &mut bool| {
        if let Some(n) = name.take().filter(|_| *privileged) {
            targets.push(n);
        }
        *privileged = false;
    };
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            flush(&mut name, &mut privileged);
            in_test = line == "[[test]]";
            continue;
        }
        let Some((key, value)) = line.split_once('=').filter(|_| in_test) else {
            continue;
        };
        match key.trim() {
            "name" => name = Some(value.trim().trim_matches('"').to_owned()),
            "required-features" => privileged = value.contains(&format!("\"{FEATURE}\"")),
            _ => {}
        }
    }
    flush(&mut name, &mut privileged);
    targets
}

/// `cargo test --no-fail-fast`: one failing test target does not hide the
/// results of the others.
fn cargo_test() -> Command {
    let mut c = cmd::cargo();
    c.current_dir(cmd::workspace_root()).args(["test", "--no-fail-fast"]);
    c
}

fn timed(suite: &'static str, f: impl FnOnce() -> Result<()>) -> Outcome {
    let start = Instant::now();
    let result = f();
    Outcome { suite, result, took: start.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_targets_are_the_tests_that_require_the_feature() {
        let manifest = r#"
[features]
privileged-tests = []

[[test]]
name = "privileged"
path = "tests/privileged/main.rs"
required-features = ["privileged-tests"]

[[test]]
name = "golden"
path = "tests/golden.rs"

[[test]]
required-features = ["other", "privileged-tests"]
name = "kernel"

[dependencies]
name = "not a test"
"#;
        assert_eq!(privileged_targets(manifest), ["privileged", "kernel"]);
    }
}
