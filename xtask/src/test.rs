//! `cargo xtask test [-- ARGS]`: the unprivileged suite (`cargo test
//! --workspace`, less the BPF-only fw-ebpf), then the privileged one (root: real eBPF, network
//! namespaces, veth pairs). ARGS (a filter, `-- --nocapture`...) go to both
//! `cargo test` runs. Never skips the privileged suite silently: without
//! root it fails.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
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
        // fw-ebpf is a workspace member for the nightly BPF build only: its
        // binary is `no_main`, so a host test build of it cannot link.
        cmd::run(
            cargo_test()
                .args(["--workspace", "--exclude", "fw-ebpf"])
                .args(&opts.args),
        )
    })];
    outcomes.push(timed("privileged", || {
        if !cmd::is_root() {
            bail!("privileged tests need root: run as root (CI does)");
        }
        bootstrap::mount_bpffs()?;
        cmd::run(
            cargo_test()
                .args(["-p", "fw-user", "--features", "privileged-tests", "--test", "privileged"])
                .args(&opts.args),
        )
    }));

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

fn cargo_test() -> Command {
    let mut c = cmd::cargo();
    c.current_dir(cmd::workspace_root()).arg("test");
    c
}

fn timed(suite: &'static str, f: impl FnOnce() -> Result<()>) -> Outcome {
    let start = Instant::now();
    let result = f();
    Outcome { suite, result, took: start.elapsed() }
}
