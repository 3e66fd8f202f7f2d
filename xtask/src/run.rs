//! `cargo xtask run [-- ARGS]`: build in release mode, then `fw run ARGS` as
//! root. Defaults fill in what ARGS leave out: `--iface` (the interface of
//! the default route), `--policy openvidu-ce` (a shipped policy), `--phase
//! install`.

use std::{fs, os::unix::process::CommandExt as _, process::Command};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{bootstrap, build, cmd};

#[derive(Args)]
pub struct Options {
    /// Arguments for `fw run`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let root = cmd::is_root();
    let sudo = cmd::which("sudo");
    if !root && sudo.is_none() {
        bail!("`fw run` needs root: run `cargo xtask run` as root (sudo is not installed)");
    }
    // bpffs is mounted below, through sudo when we are not root.
    bootstrap::bootstrap(bootstrap::Purpose::Build)?;
    build::cargo_build(true)?;

    let args = with_defaults(&opts.args, default_route_iface)?;
    let fw = cmd::workspace_root().join("target/release/fw");
    let mut command = if root {
        bootstrap::mount_bpffs()?;
        Command::new(&fw)
    } else {
        if !bootstrap::bpffs_mounted()? {
            println!("mounting bpffs at {} (through sudo)", bootstrap::BPFFS);
            cmd::run(Command::new("sudo").args(["mount", "-t", "bpf", "bpffs", bootstrap::BPFFS]))?;
        }
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&fw);
        c
    };
    command.arg("run").args(&args);
    let err = command.exec();
    Err(err).with_context(|| format!("failed to start `{}`", cmd::display(&command)))
}

/// ARGS plus `--iface`, `--policy` and `--phase` where ARGS lack them.
/// `default_iface` is only asked when ARGS have no `--iface`.
fn with_defaults(args: &[String], default_iface: impl FnOnce() -> Result<String>) -> Result<Vec<String>> {
    let has = |flag: &str| args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let mut out = args.to_vec();
    if !has("--iface") {
        out.extend(["--iface".into(), default_iface()?]);
    }
    if !has("--policy") {
        out.extend(["--policy".into(), "openvidu-ce".into()]);
    }
    if !has("--phase") {
        out.extend(["--phase".into(), "install".into()]);
    }
    Ok(out)
}

/// The interface of the IPv4 default route, from /proc/net/route.
fn default_route_iface() -> Result<String> {
    let table = fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    parse_default_route(&table).context("no default route: pass `--iface IFACE`")
}

/// Columns: Iface Destination Gateway Flags ...; the default route has
/// destination 00000000 (and mask 00000000).
fn parse_default_route(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let iface = cols.next()?;
        let dest = cols.next()?;
        let mask = line.split_whitespace().nth(7).unwrap_or("00000000");
        (dest == "00000000" && mask == "00000000").then(|| iface.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
br0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wan0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
";

    #[test]
    fn default_route_is_the_all_zero_destination() {
        assert_eq!(parse_default_route(ROUTE).as_deref(), Some("wan0"));
        assert_eq!(parse_default_route(ROUTE.lines().take(2).collect::<Vec<_>>().join("\n").as_str()), None);
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let args: Vec<String> = ["--iface", "veth0", "--phase=runtime"].map(String::from).into();
        let out = with_defaults(&args, || panic!("must not look up the default route")).unwrap();
        assert_eq!(out, ["--iface", "veth0", "--phase=runtime", "--policy", "openvidu-ce"]);

        let out = with_defaults(&[], || Ok("wan0".into())).unwrap();
        assert_eq!(out, ["--iface", "wan0", "--policy", "openvidu-ce", "--phase", "install"]);
    }
}
