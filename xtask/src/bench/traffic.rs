//! Part 2 (and the live half of part 3): real traffic across a veth pair.
//!
//! For each policy size, four identical namespace pairs: `none` (no
//! filter), `fw` (`fw run` on the sender's veth), `nft` and `ipt` (the same
//! policy from `fw export nft|iptables`, in the sender's namespace). Loading
//! each one is timed (fw until it prints that it enforces; `nft -f`;
//! `iptables-restore`), then the switch to phase b (`fw switch`; `nft -f`
//! of phase b, which replaces the table).
//!
//! Rounds interleave: none, fw, none, nft, none, ipt, none. Each filtered
//! run is compared with the mean of the unfiltered runs on either side;
//! the report gives the median of those ratios and their spread.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    netns::{Guarded, Pair, IFACE, RECEIVER4},
    slab_bytes, Settings, Tools,
};
use crate::cmd;

const UDP_PORT: &str = "9000";
const TCP_PORT: &str = "5201";

struct Setup {
    pairs: Vec<(&'static str, Pair)>,
    /// The systems that loaded in time (the others are not measured).
    active: Vec<&'static str>,
    /// The fw daemon (stopped, and the instance removed, on drop).
    _fw: FwInstance,
    load: Value,
}

struct FwInstance {
    fw: PathBuf,
    name: String,
    daemon: Option<Guarded>,
}

impl Drop for FwInstance {
    fn drop(&mut self) {
        self.daemon.take();
        let _ = Command::new(&self.fw)
            // --forget: a bench instance must leave no boot record behind.
            .args(["stop", "--name", &self.name, "--forget"])
            .output();
    }
}

/// Runs `c` for at most `limit`: its time in ms, or `None` when it had to
/// be killed (an nft -f that takes minutes must not stall the whole bench).
fn timed(c: &mut Command, limit: Duration) -> Result<Option<f64>> {
    let t = Instant::now();
    let mut child = Guarded::spawn_piped(c)?;
    loop {
        if let Some(status) = child.0.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.0.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("`{}` failed ({status}): {}", cmd::display(c), err.trim());
            }
            return Ok(Some(t.elapsed().as_secs_f64() * 1e3));
        }
        if t.elapsed() > limit {
            println!("bench: `{}` still runs after {limit:?}: killed, reported as timed out", cmd::display(c));
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The phases each side switches to, in order, from phase a.
const SWITCHES: [&str; 3] = ["b", "a", "b"];

fn write(dir: &Path, file: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(file);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn export(tools: &Tools, policy: &Path, phase: &str, format: &str) -> Result<String> {
    cmd::output(
        Command::new(&tools.fw)
            .args(["export", format, "--phase", phase, "--iface", IFACE])
            .arg("--policy")
            .arg(policy),
    )
}

fn setup(tools: &Tools, dir: &Path, rules: usize, limit: Duration) -> Result<Setup> {
    let policy = write(
        dir,
        &format!("policy-{rules}.yaml"),
        &cmd::output(Command::new(&tools.runner).args(["policy", &rules.to_string()]))?,
    )?;
    let mut pairs = Vec::new();
    for tag in ["none", "fw", "nft", "ipt"] {
        pairs.push((tag, Pair::new(&format!("{tag}{rules}"))?));
    }
    let ns = |tag: &str| pairs.iter().find(|(t, _)| *t == tag).map(|(_, p)| &p.a).expect("pair");

    // fw: `fw run` until it says it enforces, then a switch to phase b.
    let name = super::netns::name(&format!("fw{rules}"));
    let mut instance = FwInstance { fw: tools.fw.clone(), name: name.clone(), daemon: None };
    let slab0 = slab_bytes()?;
    let mut daemon = Guarded::spawn_piped(
        ns("fw")
            .command(&tools.fw)
            .args(["run", "--iface", IFACE, "--phase", "a", "--name", &name, "--interval", "3600", "--cgroup", "none"])
            .arg("--policy")
            .arg(&policy),
    )?;
    // Its warnings (thousands for the generated policies: rules that never
    // decide) go to a file: a pipe nobody reads fills up and blocks `fw run`
    // before it says it enforces (the 10,000-rule run waited 300 s).
    let stderr_log = dir.join(format!("fw-run-{rules}.stderr"));
    if let Some(mut stderr) = daemon.0.stderr.take() {
        let path = stderr_log.clone();
        std::thread::spawn(move || {
            if let Ok(mut file) = std::fs::File::create(&path) {
                let _ = std::io::copy(&mut stderr, &mut file);
            }
        });
    }
    // It enforces, then compiles the phases ahead of `fw switch` (in the
    // background); the switch is measured once it has.
    let (stdout, times) = daemon
        .wait_for_lines(&["enforcing", "ahead of `fw switch`"], Duration::from_secs(300))
        .with_context(|| format!("fw run (its stderr: {})", stderr_log.display()))?;
    let (fw_load, fw_ahead) = (times[0], times[1] - times[0]);
    // Keep draining its output so that it never blocks on a full pipe.
    super::netns::keep_draining(stdout);
    instance.daemon = Some(daemon);
    let fw_slab = slab_bytes()?.saturating_sub(slab0);
    // Then it writes the next phase (b) ahead of the switch: every switch
    // is measured once the daemon has, as an operator's would be.
    let ahead_since = Instant::now();
    let (_, fw_written_ahead) = settled_after(&tools.fw, &name, ahead_since, SWITCHES[0])?;
    let fw_slab_ahead = slab_bytes()?.saturating_sub(slab0);
    // Three switches (b, a, b), the median reported: one switch is one
    // sample of a shared machine (a full run measured 789 ms where switches
    // by hand the same day took 349-485 ms). Each switch returns once its
    // phase is enforced and recorded; the daemon deletes the other phase's
    // entries after it, then writes the next phase ahead. Timed apart, and
    // waited for before the next switch: neither the next switch nor the
    // nftables runs share the CPU with it.
    let mut fw_switches = Vec::new();
    let mut fw_switch_steps = Vec::new();
    let mut first_switch = None;
    for phase in SWITCHES {
        let t = Instant::now();
        let (says, steps) = switch_with_steps(&tools.fw, &name, phase)?;
        fw_switches.push(t.elapsed().as_secs_f64() * 1e3);
        fw_switch_steps.push(steps);
        // The daemon writes the other phase ahead again.
        let next = if phase == "a" { "b" } else { "a" };
        let settled = settled_after(&tools.fw, &name, t, next)?;
        first_switch.get_or_insert((says, settled));
    }
    let (switch_out, (fw_collect, fw_next_ahead)) = first_switch.context("no switch ran")?;
    let fw_switch = super::median(&mut fw_switches.clone());
    // What the daemon keeps once it enforces and has switched: its
    // resident memory (the compiler's working set is freed by then).
    let daemon_pid = instance.daemon.as_ref().map(|d| d.id()).context("the fw run daemon")?;
    let fw_rss = super::rss_bytes(daemon_pid)?;

    // nft: the same policy through `nft -f`, then phase b (replaces the table).
    let nft_a = write(dir, &format!("policy-{rules}-a.nft"), &export(tools, &policy, "a", "nft")?)?;
    let nft_b = write(dir, &format!("policy-{rules}-b.nft"), &export(tools, &policy, "b", "nft")?)?;
    let slab0 = slab_bytes()?;
    let nft_load = timed(ns("nft").command("nft").arg("-f").arg(&nft_a), limit)?;
    let nft_slab = slab_bytes()?.saturating_sub(slab0);
    // The same three switches as fw's, the median; none when one timed out.
    let mut nft_switches = Vec::new();
    if nft_load.is_some() {
        for phase in SWITCHES {
            let file = if phase == "a" { &nft_a } else { &nft_b };
            match timed(ns("nft").command("nft").arg("-f").arg(file), limit)? {
                Some(ms) => nft_switches.push(ms),
                None => {
                    nft_switches.clear();
                    break;
                }
            }
        }
    }
    let nft_switch = (!nft_switches.is_empty()).then(|| super::median(&mut nft_switches.clone()));

    // iptables: linear rules, IPv4 and IPv6.
    let ipt4 = write(dir, &format!("policy-{rules}-a.iptables"), &export(tools, &policy, "a", "iptables")?)?;
    let ipt6 = write(dir, &format!("policy-{rules}-a.ip6tables"), &export(tools, &policy, "a", "ip6tables")?)?;
    let ipt_rules = std::fs::read_to_string(&ipt4)?.lines().filter(|l| l.starts_with("-A fw-egress")).count();
    let restore = |tool: &str, file: &Path| -> Result<Option<f64>> {
        // The file as an argument: `timed` gives the child no stdin.
        timed(ns("ipt").command(tool).arg(file), limit)
    };
    let ipt_load = match restore(&tools.iptables_restore, &ipt4)? {
        Some(v4) => restore(&tools.ip6tables_restore, &ipt6)?.map(|v6| v4 + v6),
        None => None,
    };
    let mut active = vec!["fw"];
    active.extend(nft_load.map(|_| "nft"));
    active.extend(ipt_load.map(|_| "ipt"));

    let load = json!({
        "rules": rules,
        "fw_run_ms": fw_load.as_secs_f64() * 1e3, "fw_switch_ms": fw_switch, "fw_switches_ms": fw_switches,
        "fw_switch_says": switch_out.trim(), "fw_switch_steps": fw_switch_steps,
        "fw_collected_ms": fw_collect, "fw_ahead_ms": fw_ahead.as_secs_f64() * 1e3,
        "fw_written_ahead_ms": fw_written_ahead, "fw_next_ahead_ms": fw_next_ahead,
        "fw_slab_bytes": fw_slab, "fw_slab_ahead_bytes": fw_slab_ahead, "fw_rss_bytes": fw_rss,
        "nft_load_ms": nft_load, "nft_switch_ms": nft_switch, "nft_switches_ms": nft_switches,
        "nft_slab_bytes": nft_slab,
        "nft_bytes": std::fs::metadata(&nft_a)?.len(),
        "ipt_load_ms": ipt_load, "ipt_egress_rules_v4": ipt_rules, "limit_ms": limit.as_secs_f64() * 1e3,
    });
    println!("bench: loaded {rules} rules: {load}");
    Ok(Setup { pairs, active, _fw: instance, load })
}

/// `fw switch PHASE --name NAME` with the times of its steps logged
/// (`RUST_LOG=fw_user=debug`, the `crate::mark` lines): what it printed,
/// and the steps joined with "; " (a slow switch in a full run says where
/// its time went).
fn switch_with_steps(fw: &Path, name: &str, phase: &str) -> Result<(String, String)> {
    let mut cmd = Command::new(fw);
    cmd.args(["switch", phase, "--name", name]).env("RUST_LOG", "fw_user=debug");
    let out = cmd.output().with_context(|| format!("failed to start `{}`", cmd::display(&cmd)))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", cmd::display(&cmd), out.status, stderr.trim());
    }
    let steps: Vec<&str> =
        stderr.lines().filter_map(|l| l.strip_prefix("[DEBUG fw_user] ")).filter(|l| l.ends_with(" ms")).collect();
    Ok((String::from_utf8(out.stdout).context("fw switch printed non-UTF-8")?, steps.join("; ")))
}

/// Milliseconds from `since` (the start of a switch, or the daemon's
/// compile ahead) until `fw status` shows no entries of another generation
/// (the daemon has deleted what the switch left to it), and until it shows
/// `phase` written ahead of the next switch. Polled every 50 ms (each
/// status walks the maps), for at most 120 s.
fn settled_after(fw: &Path, name: &str, since: Instant, phase: &str) -> Result<(f64, f64)> {
    let mut collected = None;
    loop {
        let status = cmd::output(Command::new(fw).args(["status", "--name", name, "--json"]))?;
        let status: Value = serde_json::from_str(&status).context("fw status --json")?;
        let ms = since.elapsed().as_secs_f64() * 1e3;
        if status["entries"]["other_generations"].as_u64() == Some(0) {
            let collected = *collected.get_or_insert(ms);
            if status["written_ahead"]["phase"].as_str() == Some(phase) {
                return Ok((collected, ms));
            }
        }
        if since.elapsed() > Duration::from_secs(120) {
            bail!(
                "the fw daemon did not delete the old generation and write phase {phase} ahead within 120 s: {status}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn udp_run(tools: &Tools, pair: &Pair, seconds: f64) -> Result<f64> {
    let mut rx = Guarded::spawn_piped(pair.b.command(&tools.runner).args([
        "udp-recv",
        "--bind",
        &format!("{RECEIVER4}:{UDP_PORT}"),
        "--seconds",
        &(seconds + 5.0).to_string(),
    ]))?;
    let (rest, _) = rx.wait_for_line("ready", Duration::from_secs(10))?;
    let tx = Guarded::spawn_piped(pair.a.command(&tools.runner).args([
        "udp-send",
        "--dst",
        &format!("{RECEIVER4}:{UDP_PORT}"),
        "--seconds",
        &seconds.to_string(),
    ]))?;
    tx.finish(Duration::from_secs_f64(seconds + 10.0)).context("udp-send")?;
    rx.0.stdout = Some(rest);
    let out = rx.finish(Duration::from_secs_f64(seconds + 10.0)).context("udp-recv")?;
    let v: Value = serde_json::from_str(out.lines().last().unwrap_or("{}")).context("udp-recv output")?;
    v["pps"].as_f64().context("no pps from udp-recv")
}

fn tcp_run(tools: &Tools, pair: &Pair, seconds: u32) -> Result<f64> {
    let c = Guarded::spawn_piped(pair.a.command(&tools.iperf3).args([
        "-c",
        RECEIVER4,
        "-p",
        TCP_PORT,
        "-t",
        &seconds.to_string(),
        "-J",
    ]))?;
    let out = c.finish(Duration::from_secs(u64::from(seconds) + 20)).context("iperf3 -c")?;
    let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().context("no bits_per_second from iperf3")
}

/// Ratios X / mean(none before, none after), per round.
fn interleaved(setup: &Setup, rounds: usize, mut run: impl FnMut(&Pair) -> Result<f64>) -> Result<Value> {
    let pair = |tag: &str| &setup.pairs.iter().find(|(t, _)| *t == tag).expect("pair").1;
    let mut raw: Vec<Value> = Vec::new();
    let mut ratios: Vec<(String, f64, f64)> = Vec::new(); // system, ratio, added ns/packet
    for round in 0..rounds {
        let mut prev = run(pair("none"))?;
        let mut seq = vec![json!({ "system": "none", "value": prev })];
        for &sys in &setup.active {
            let x = run(pair(sys))?;
            let next = run(pair("none"))?;
            let base = (prev + next) / 2.0;
            ratios.push((sys.to_string(), x / base, 1e9 / x - 1e9 / base));
            seq.push(json!({ "system": sys, "value": x }));
            seq.push(json!({ "system": "none", "value": next }));
            prev = next;
        }
        println!("bench:   round {}: {}", round + 1, Value::Array(seq.clone()));
        raw.push(Value::Array(seq));
    }
    let mut summary = serde_json::Map::new();
    for &sys in &setup.active {
        let mut r: Vec<f64> = ratios.iter().filter(|x| x.0 == sys).map(|x| x.1).collect();
        let mut added: Vec<f64> = ratios.iter().filter(|x| x.0 == sys).map(|x| x.2).collect();
        summary.insert(
            sys.to_string(),
            json!({
                "median": super::median(&mut r), "min": r.first(), "max": r.last(),
                "added_ns_per_packet": super::median(&mut added),
            }),
        );
    }
    let mut none: Vec<f64> = raw
        .iter()
        .flat_map(|s| s.as_array().cloned().unwrap_or_default())
        .filter(|v| v["system"] == "none")
        .filter_map(|v| v["value"].as_f64())
        .collect();
    summary.insert("none_median".into(), json!(super::median(&mut none)));
    Ok(json!({ "summary": summary, "rounds": raw }))
}

pub fn run(tools: &Tools, settings: &Settings, dir: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for &rules in &settings.traffic_sizes {
        println!("bench: traffic with {rules} rules");
        let setup = setup(tools, dir, rules, settings.load_limit)?;
        println!("bench:  small-packet UDP ({} rounds of {} s runs)", settings.rounds, settings.udp_seconds);
        let udp = interleaved(&setup, settings.rounds, |p| udp_run(tools, p, settings.udp_seconds))?;
        let tcp = if settings.tcp_sizes.contains(&rules) {
            // One server per receiving namespace, for every round.
            let mut servers = Vec::new();
            for (_, p) in &setup.pairs {
                servers.push(Guarded::spawn_piped(
                    p.b.command(&tools.iperf3).args(["-s", "-B", RECEIVER4, "-p", TCP_PORT]),
                )?);
            }
            std::thread::sleep(Duration::from_millis(500));
            println!("bench:  TCP throughput ({} rounds of {} s runs)", settings.rounds, settings.tcp_seconds);
            let tcp = interleaved(&setup, settings.rounds, |p| tcp_run(tools, p, settings.tcp_seconds))?;
            drop(servers);
            tcp
        } else {
            Value::Null
        };
        out.push(json!({ "rules": rules, "load": setup.load, "udp": udp, "tcp": tcp }));
    }
    Ok(out)
}
