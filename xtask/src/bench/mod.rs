//! `cargo xtask bench [--quick]`: fw against the floor, nftables and
//! iptables, in one run; writes BENCHMARKS.md and docs/bench.svg.
//!
//! The parts, one module each:
//! 1. `testrun`: ns/packet through the real programs (BPF_PROG_TEST_RUN);
//!    1b. `lookup`: the policy's two lookups alone, the IPv4 address trie
//!    against DIR-16-8-8 arrays built from the same entries;
//! 2. `traffic`: small-packet UDP and TCP across a veth pair, unfiltered,
//!    with fw, with nftables and with iptables holding the same policy
//!    (`fw export`), interleaved;
//! 3. `control`: compile + load time, map memory, phase switch (in process,
//!    plus the live `fw run` / `fw switch` / `nft -f` timings of part 2);
//!    3c. `instructions`: the nested compiles counted by callgrind;
//! 4. `report`: the Markdown and the plot.
//!
//! The measuring is done by `fw-bench` (xtask/src/bin/fw-bench, built with
//! `--features bench`: it links the fw libraries). `--quick` runs a small
//! subset in well under a minute, writes under target/bench-quick/ and is
//! part of `cargo xtask test`, so the bench cannot rot.
//!
//! Safety: filters are attached only inside namespaces this run created;
//! packets go only to 198.18.0.0/15 and 2001:db8::/32 addresses it assigned;
//! every namespace, process and pin is removed on the way out, and leftovers
//! of killed runs are swept at the start.

mod dns;
mod instructions;
mod netns;
mod report;
mod stats;
mod traffic;

pub use stats::median;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::{bootstrap, cmd};

#[derive(Args)]
pub struct Options {
    /// A small, fast subset (under a minute; `cargo xtask test` runs it).
    /// Writes under target/bench-quick/ instead of the repository.
    #[arg(long)]
    pub quick: bool,
    /// Directory for BENCHMARKS.md and bench.svg (default: the repository
    /// root and docs/, or target/bench-quick/ with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Measure nothing: write the report again from a saved results.json
    /// (target/bench-work/results.json of an earlier run).
    #[arg(long, value_name = "RESULTS")]
    pub report: Option<PathBuf>,
}

impl Options {
    /// `--quick`, as `cargo xtask test` runs it.
    pub fn quick() -> Options {
        Options { quick: true, out: None, report: None }
    }
}

/// What one run measures.
pub struct Settings {
    pub testrun_sizes: Vec<usize>,
    pub repeat: u32,
    pub testrun_rounds: usize,
    pub distinct: usize,
    /// Part 1b: covered addresses timed per size, runs per address, and
    /// random addresses both lookups must agree on (besides every
    /// prefix's edges).
    pub lookup_sample: usize,
    pub lookup_repeat: u32,
    pub lookup_probes: usize,
    pub traffic_sizes: Vec<usize>,
    pub tcp_sizes: Vec<usize>,
    pub rounds: usize,
    pub udp_seconds: f64,
    pub tcp_seconds: u32,
    pub control_rules: usize,
    /// Part 3: the nested policy shape compiled at each size.
    pub compile_sizes: Vec<usize>,
    /// The longest an `nft -f` or `iptables-restore` may take.
    pub load_limit: Duration,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                testrun_sizes: vec![10, 1000],
                repeat: 100_000,
                testrun_rounds: 3,
                distinct: 2000,
                lookup_sample: 20,
                lookup_repeat: 10_000,
                lookup_probes: 2000,
                traffic_sizes: vec![1000],
                tcp_sizes: vec![1000],
                rounds: 2,
                udp_seconds: 0.5,
                tcp_seconds: 1,
                control_rules: 1000,
                compile_sizes: vec![1000, 10_000],
                load_limit: Duration::from_secs(20),
            }
        } else {
            Settings {
                testrun_sizes: vec![10, 1000, 10_000, 100_000],
                repeat: 1_000_000,
                testrun_rounds: 5,
                distinct: 20_000,
                lookup_sample: 200,
                lookup_repeat: 100_000,
                lookup_probes: 20_000,
                traffic_sizes: vec![10, 1000, 10_000, 100_000],
                tcp_sizes: vec![100_000],
                rounds: 5,
                udp_seconds: 2.0,
                tcp_seconds: 3,
                control_rules: 100_000,
                compile_sizes: vec![10_000, 100_000],
                load_limit: Duration::from_secs(90),
            }
        }
    }
}

/// The programs the bench drives.
pub struct Tools {
    pub fw: PathBuf,
    pub runner: PathBuf,
    pub iperf3: PathBuf,
    pub iptables_restore: String,
    pub ip6tables_restore: String,
}

pub fn bench(opts: &Options) -> Result<()> {
    let started = Instant::now();
    if let Some(saved) = &opts.report {
        let text = std::fs::read_to_string(saved).with_context(|| format!("reading {}", saved.display()))?;
        let results: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", saved.display()))?;
        return write_report(&results, opts);
    }
    if !cmd::is_root() {
        bail!("`cargo xtask bench` loads eBPF programs and creates network namespaces: run it as root");
    }
    bootstrap::bootstrap(bootstrap::Purpose::Test)?;
    install_tools(opts.quick)?;
    let settings = Settings::new(opts.quick);
    let tools = build(opts.quick)?;
    netns::sweep(&tools.fw);

    let root = cmd::workspace_root();
    let work = root.join("target/bench-work");
    std::fs::create_dir_all(&work)?;
    println!("bench: part 1, BPF_PROG_TEST_RUN");
    let testrun = runner_json(
        &tools,
        &[
            "testrun",
            "--sizes",
            &join(&settings.testrun_sizes),
            "--repeat",
            &settings.repeat.to_string(),
            "--rounds",
            &settings.testrun_rounds.to_string(),
            "--distinct",
            &settings.distinct.to_string(),
        ],
    )?;
    println!("bench: part 1b, the policy lookups alone");
    let lookup = runner_json(
        &tools,
        &[
            "lookup",
            "--sizes",
            &join(&settings.testrun_sizes),
            "--repeat",
            &settings.lookup_repeat.to_string(),
            "--sample",
            &settings.lookup_sample.to_string(),
            "--probes",
            &settings.lookup_probes.to_string(),
        ],
    )?;
    println!("bench: part 3, control plane in process ({} rules)", settings.control_rules);
    let control = runner_json(&tools, &["control", "--rules", &settings.control_rules.to_string()])?;
    println!("bench: part 3, nested policies compiled at {:?} rules", settings.compile_sizes);
    let compile = runner_json(&tools, &["compile", "--shape", "nested", "--sizes", &join(&settings.compile_sizes)])?;
    let compile_work = if opts.quick {
        Value::Null
    } else {
        println!("bench: part 3c, the same compiles counted by callgrind");
        instructions::count(&tools, &settings.compile_sizes, &work)?
    };
    println!("bench: part 2, traffic");
    let traffic = traffic::run(&tools, &settings, &work)?;
    println!("bench: part 4, DNS names");
    let dns = dns::run(&tools, &dns::DnsSettings::new(opts.quick), &work)?;

    let results = json!({
        "quick": opts.quick,
        "command": if opts.quick { "cargo xtask bench --quick" } else { "cargo xtask bench" },
        "machine": machine()?,
        "iptables": tools.iptables_restore,
        "settings": {
            "repeat": settings.repeat, "testrun_rounds": settings.testrun_rounds, "rounds": settings.rounds,
            "udp_seconds": settings.udp_seconds, "tcp_seconds": settings.tcp_seconds, "distinct": settings.distinct,
        },
        "testrun": testrun, "lookup": lookup, "control": control, "compile": compile, "compile_work": compile_work, "traffic": traffic, "dns": dns,
        "took_seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(work.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    write_report(&results, opts)
}

/// BENCHMARKS.md and the plot, where `opts` says.
fn write_report(results: &Value, opts: &Options) -> Result<()> {
    let root = cmd::workspace_root();
    let quick = results["quick"] == true;
    let (md_path, svg_path) = match (&opts.out, quick) {
        (Some(dir), _) => (dir.join("BENCHMARKS.md"), dir.join("bench.svg")),
        (None, true) => (root.join("target/bench-quick/BENCHMARKS.md"), root.join("target/bench-quick/bench.svg")),
        (None, false) => (root.join("BENCHMARKS.md"), root.join("docs/bench.svg")),
    };
    for p in [&md_path, &svg_path] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    report::plot(results, &svg_path)?;
    let mut markdown = report::markdown(results, &relative_link(&md_path, &svg_path));
    // What people wrote below the marker (measurements made by hand, with
    // how to repeat them) outlives a regenerated report.
    if let Some(kept) = std::fs::read_to_string(&md_path).ok().as_deref().and_then(hand_written) {
        markdown.push('\n');
        markdown.push_str(kept);
    }
    std::fs::write(&md_path, markdown)?;
    println!("bench: wrote {} and {}", md_path.display(), svg_path.display());
    Ok(())
}

/// Where BENCHMARKS.md's hand-written part starts; `cargo xtask bench`
/// regenerates everything above it.
pub const HAND_WRITTEN: &str = "<!-- Written by hand below this line: cargo xtask bench keeps it. -->";

/// The marker and what follows it in `markdown`, if it has the marker.
fn hand_written(markdown: &str) -> Option<&str> {
    markdown.find(HAND_WRITTEN).map(|at| &markdown[at..])
}

fn relative_link(md: &Path, svg: &Path) -> String {
    match (md.parent(), svg.strip_prefix(md.parent().unwrap_or(Path::new("/")))) {
        (Some(_), Ok(rel)) => rel.display().to_string(),
        _ => svg.display().to_string(),
    }
}

fn join(v: &[usize]) -> String {
    v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
}

fn runner_json(tools: &Tools, args: &[&str]) -> Result<Value> {
    let out = cmd::output(Command::new(&tools.runner).args(args))?;
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .with_context(|| format!("fw-bench {} printed no JSON", args[0]))
}

/// `cargo build` of fw and fw-bench: release for the real run, debug (the
/// profile `cargo xtask test` has built already) for --quick.
fn build(quick: bool) -> Result<Tools> {
    let mut cargo = cmd::cargo();
    cargo.current_dir(cmd::workspace_root()).args([
        "build",
        "-p",
        "fw-user",
        "-p",
        "xtask",
        "--features",
        "xtask/bench",
        "--bin",
        "fw",
        "--bin",
        "fw-bench",
    ]);
    if !quick {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    let dir = cmd::workspace_root().join(if quick { "target/debug" } else { "target/release" });
    // `iptables` as this machine has it (on Debian 12: the nf_tables backend).
    let (v4, v6) = ("iptables-restore", "ip6tables-restore");
    Ok(Tools {
        fw: dir.join("fw"),
        runner: dir.join("fw-bench"),
        iperf3: tool_path("iperf3"),
        iptables_restore: v4.into(),
        ip6tables_restore: v6.into(),
    })
}

fn tool_path(name: &str) -> PathBuf {
    cmd::which(name)
        .or_else(|| ["/usr/sbin", "/usr/bin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.exists()))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// iperf3, nft and iptables through apt-get, when missing.
fn install_tools(quick: bool) -> Result<()> {
    // Valgrind counts the compiler's work in full runs only (part 3c).
    let valgrind = if quick { None } else { Some(("valgrind", "valgrind")) };
    let missing: Vec<&str> = [("iperf3", "iperf3"), ("nft", "nftables"), ("iptables-restore", "iptables")]
        .into_iter()
        .chain(valgrind)
        .filter(|(tool, _)| {
            cmd::which(tool).is_none() && !["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(tool).exists())
        })
        .map(|(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("bench: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

fn machine() -> Result<Value> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = cmd::output(Command::new("uname").arg("-r"))?.trim().to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let date = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?.trim().to_string();
    let rustc = cmd::output(Command::new("rustc").arg("--version"))?.trim().to_string();
    let versions = |c: &str, a: &str| {
        cmd::output(Command::new(tool_path(c)).arg(a))
            .map(|s| s.lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_default()
    };
    Ok(json!({
        "cpu": cpu, "cpus": cpus, "kernel": kernel, "mem_gib": mem as f64 / 1048576.0, "date": date, "rustc": rustc,
        "nft": versions("nft", "--version"), "iptables": versions("iptables", "--version"), "iperf3": versions("iperf3", "--version"),
    }))
}

/// `Slab:` of /proc/meminfo, in bytes.
pub fn slab_bytes() -> Result<u64> {
    kb_field("/proc/meminfo", "Slab:")
}

/// Resident memory of process `pid` (`VmRSS:` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// A `NAME:   123 kB` line of a /proc file, in bytes.
fn kb_field(path: &str, name: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {name} line in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_part_is_the_marker_and_what_follows() {
        let md = format!("# Benchmarks\n\ngenerated\n\n{HAND_WRITTEN}\n\n## By hand\n\nkept\n");
        assert_eq!(hand_written(&md), Some(&md[md.find("<!--").unwrap()..]));
        assert!(hand_written(&md).unwrap().ends_with("kept\n"));
        assert_eq!(hand_written("# Benchmarks\n\nno marker\n"), None);
    }
}
