//! Part 4: DNS through fw's proxy, against the same resolver asked directly
//! from the same namespace in the same run (issue 14's targets: p50 added
//! at most 0.2 ms, p99 at most 1 ms, at 1,000 queries a second), and the
//! rate at which answers teach the kernel addresses (100,000 of them, at
//! least 20,000 a second), with the kernel memory they take (the maps'
//! `memlock`, which for maps that are not preallocated follows the
//! entries).
//!
//! A veth pair: dnsmasq in the receiver's namespace answers from a hosts
//! file; `fw run` enforces on the sender's veth with its socket hooks on a
//! cgroup of this run. The direct client runs outside that cgroup (its
//! queries leave as they are), the proxied one inside it; rounds
//! alternate, each asking names never asked before.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::{
    netns::{name, Guarded, Pair, IFACE, RECEIVER4},
    Tools,
};
use crate::cmd;
use fw_lab::netns::Netns;

/// Addresses per name of the learning run: one EDNS answer holds them.
const PER_NAME: usize = 100;

pub struct DnsSettings {
    /// Queries per latency round, and rounds per side.
    pub queries: usize,
    pub rounds: usize,
    /// Addresses learned in the insert-rate run.
    pub learned: usize,
}

impl DnsSettings {
    pub fn new(quick: bool) -> DnsSettings {
        if quick {
            DnsSettings { queries: 300, rounds: 2, learned: 10_000 }
        } else {
            DnsSettings { queries: 2000, rounds: 3, learned: 100_000 }
        }
    }
}

/// The cgroup v2 mount (`/sys/fs/cgroup`, or `.../unified` in a hybrid
/// layout).
fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 mount in /proc/mounts")
}

/// A cgroup of this run (never the root one), removed on drop.
struct BenchCgroup(PathBuf);

impl BenchCgroup {
    fn new() -> Result<BenchCgroup> {
        let path = cgroup2_root()?.join(name("dns"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BenchCgroup(path))
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Removes bench cgroups of runs whose process is gone.
pub fn sweep() {
    let Ok(root) = cgroup2_root() else { return };
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid: Option<u32> = file
            .strip_prefix("fwb")
            .map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>())
            .and_then(|d| d.parse().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) && file.ends_with("dns") {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// The `n`th address of the learning run: 198.18.16.0 onwards (the pair's
/// own 198.18.200.0/24 is skipped), all inside 198.18.0.0/15.
fn learned_address(n: usize) -> String {
    let mut v = 0xC612_1000u32 + n as u32;
    if v >= 0xC612_C800 {
        v += 0x100;
    }
    std::net::Ipv4Addr::from(v).to_string()
}

/// `count` queries for `{prefix}{first + i}.{domain}` at `rate` a second
/// (0: back to back), in the hooked `cgroup` or outside it.
#[allow(clippy::too_many_arguments)]
fn query(
    tools: &Tools,
    ns: &Netns,
    cgroup: Option<&Path>,
    prefix: &str,
    first: usize,
    domain: &str,
    count: usize,
    rate: u32,
) -> Result<Value> {
    let args = [
        "dns-query".to_string(),
        "--first".into(),
        first.to_string(),
        "--server".into(),
        format!("{RECEIVER4}:53"),
        "--prefix".into(),
        prefix.into(),
        "--domain".into(),
        domain.into(),
        "--count".into(),
        count.to_string(),
        "--rate".into(),
        rate.to_string(),
    ];
    let mut c = match cgroup {
        // Into the hooked cgroup, then the client (same process).
        Some(cg) => {
            let mut c = ns.command("sh");
            c.arg("-c")
                .arg(format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", cg.display()))
                .arg(&tools.runner);
            c
        }
        None => ns.command(&tools.runner),
    };
    c.args(args);
    let out = cmd::output(&mut c)?;
    serde_json::from_str(&out).with_context(|| format!("fw-bench dns-query printed {out:?}"))
}

pub fn run(tools: &Tools, settings: &DnsSettings, dir: &Path) -> Result<Value> {
    sweep();
    let pair = Pair::new("d")?;
    let rounds = settings.rounds;
    let mut hosts = String::new();
    for side in ["d", "p"] {
        for i in 0..settings.queries * rounds {
            // One address each, outside the learning run's range.
            writeln!(hosts, "198.19.{}.{} {side}{i}.lat.test", 200 + i / 250 % 50, 1 + i % 250)?;
        }
    }
    let names = settings.learned.div_ceil(PER_NAME);
    for n in 0..names {
        for k in 0..PER_NAME {
            writeln!(hosts, "{} m{n}.many.test", learned_address(n * PER_NAME + k))?;
        }
    }
    let hosts_file = dir.join("dns-hosts");
    std::fs::write(&hosts_file, hosts)?;
    let mut dnsmasq = Guarded::spawn_piped(
        pair.b
            .command("dnsmasq")
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args(["--user=root", "--local-ttl=300", "--cache-size=0", "--log-facility=-", "--edns-packet-max=4096"])
            .arg(format!("--listen-address={RECEIVER4}"))
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display())),
    )?;
    // Ready when it answers (a name no round asks).
    let mut ready = false;
    for _ in 0..100 {
        if query(tools, &pair.a, None, "m", 0, "many.test", 1, 0).is_ok_and(|v| v["answered"] == 1) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !ready {
        let _ = dnsmasq.0.kill();
        bail!("dnsmasq did not answer on {RECEIVER4}");
    }

    let cgroup = BenchCgroup::new()?;
    let policy = dir.join("dns-policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "name: dns-bench\nphases:\n  bench:\n    dns: {{ resolvers: [{RECEIVER4}], max_addresses: 131072, max_addresses_per_name: 1000 }}\n    \
             egress:\n      - {{ name: lat, to: [\"*.lat.test\"], proto: tcp, ports: [443] }}\n      \
             - {{ name: many, to: [\"*.many.test\"], proto: tcp, ports: [443] }}\n"
        ),
    )?;
    let instance = name("dnsfw");
    // Its stderr to a file: a pipe nobody reads would fill and block it.
    let stderr_log = dir.join("fw-run-dns.stderr");
    let mut fw = Guarded::spawn(
        pair.a
            .command(&tools.fw)
            .args(["run", "--iface", IFACE, "--phase", "bench", "--name", &instance, "--cgroup"])
            .arg(&cgroup.0)
            .arg("--policy")
            .arg(&policy)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log)?),
    )?;
    let stop = StopFw { fw: tools.fw.clone(), name: instance.clone() };
    let (stdout, _) = fw
        .wait_for_line("DNS proxy listening", Duration::from_secs(60))
        .with_context(|| format!("fw run (its stderr: {})", stderr_log.display()))?;
    // Its summary lines keep coming while the queries run: keep reading
    // them (a dropped reader once ended the run's DNS proxy mid-bench).
    super::netns::keep_draining(stdout);

    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    for round in 0..rounds {
        let first = round * settings.queries;
        direct.push(query(tools, &pair.a, None, "d", first, "lat.test", settings.queries, 1000)?);
        proxied.push(query(tools, &pair.a, Some(&cgroup.0), "p", first, "lat.test", settings.queries, 1000)?);
    }
    let learned_now = || -> Result<(u64, u64)> {
        let status = cmd::output(pair.a.command(&tools.fw).args(["status", "--json", "--name", &instance]))?;
        let status: Value = serde_json::from_str(&status).context("fw status --json")?;
        Ok((status["learned_addresses"].as_u64().unwrap_or(0), status["learned_bytes"].as_u64().unwrap_or(0)))
    };
    let (before, bytes_before) = learned_now()?;
    let learning = query(tools, &pair.a, Some(&cgroup.0), "m", 0, "many.test", names, 0)?;
    let (after, bytes_after) = learned_now()?;
    let learned = after.saturating_sub(before);
    let seconds = learning["seconds"].as_f64().unwrap_or(f64::NAN);
    drop(stop);
    drop(fw);
    drop(dnsmasq);
    Ok(json!({
        "direct": direct,
        "proxied": proxied,
        "learning": learning,
        "learned_addresses": learned,
        "learn_rate_per_s": learned as f64 / seconds,
        "learned_bytes": bytes_after.saturating_sub(bytes_before),
        "bytes_per_address": bytes_after.saturating_sub(bytes_before) as f64 / learned.max(1) as f64,
    }))
}

struct StopFw {
    fw: PathBuf,
    name: String,
}

impl Drop for StopFw {
    fn drop(&mut self) {
        let _ = Command::new(&self.fw).args(["stop", "--name", &self.name, "--forget"]).output();
    }
}
