//! Part 3, in process: the steps `fw run` takes for a fresh start, timed one
//! by one, and the kernel memory the policy maps take: the slab growth
//! (`Slab:` of /proc/meminfo) across writing the entries, next to the
//! `memlock` the kernel charges for the maps (which understates an LPM trie:
//! its nodes are allocated as entries come, and memlock counts only the
//! key and value bytes).

use std::time::Instant;

use anyhow::{Context as _, Result};
use fw_user::{
    kernel::apply,
    kernel::loader::{self, LoadOptions, PolicyMaps},
    policy::compile::{check_capacity, compile_phase, Limits},
    policy::{parse_str_with_resolver, Vars},
};
use serde_json::{json, Value};

use crate::gen;

/// `Slab:` of /proc/meminfo, in bytes.
fn slab_bytes() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no Slab: line in /proc/meminfo")?;
    Ok(kb * 1024)
}

/// `Slab:` with other activity damped: the median of three reads.
pub fn settled_slab_bytes() -> Result<u64> {
    let mut v = [slab_bytes()?, slab_bytes()?, slab_bytes()?];
    v.sort_unstable();
    Ok(v[1])
}

/// `memlock:` of the map behind `fd`, from /proc/self/fdinfo.
pub fn memlock(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    use std::os::fd::AsRawFd as _;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Issue 16, item 3: parse and compile time (the median of three, and the
/// fastest) of one shape at each size, in increasing order, with the
/// process's peak resident memory after each (`VmHWM`: it never goes down, so each row's
/// is the peak so far).
pub fn compile_scaling(sizes: &[usize], shape: &str, repeat: usize) -> Result<Value> {
    anyhow::ensure!(repeat > 0, "--repeat 0: nothing to time");
    let vars = Vars::from_pairs::<&str, &str>([]);
    let mut rows = Vec::new();
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    for rules in sizes {
        let yaml = gen::by_shape(shape, rules)?;
        let t = Instant::now();
        let loaded = parse_str_with_resolver(&yaml, "bench.yaml", &vars, &|h| Err(format!("no DNS ({h})")))?;
        let parse = t.elapsed();
        // The median of `repeat` compiles: at 10,000 rules one takes a few
        // milliseconds, where a shared machine's noise is a large share.
        let mut times = Vec::new();
        let mut compiled = None;
        for _ in 0..repeat {
            let t = Instant::now();
            compiled = Some(compile_phase(&loaded.policy, "a")?);
            times.push(t.elapsed());
        }
        times.sort_unstable();
        let fastest = times[0];
        let (compile, compiled) = (times[times.len() / 2], compiled.context("compiled at least once")?);
        check_capacity(&compiled, &Limits::default())?;
        let entries = compiled.addr4.len() + compiled.addr6.len() + compiled.ports.len();
        drop((compiled, loaded, yaml));
        rows.push(json!({
            "rules": rules, "shape": shape, "entries": entries,
            "parse_ms": parse.as_secs_f64() * 1e3, "compile_ms": compile.as_secs_f64() * 1e3,
            "compile_min_ms": fastest.as_secs_f64() * 1e3,
            "peak_rss_bytes": status_kb("VmHWM:")? * 1024,
        }));
    }
    Ok(json!({ "rows": rows }))
}

/// A `kB` field of /proc/self/status.
fn status_kb(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

pub fn run(rules: usize, shape: &str) -> Result<Value> {
    let yaml = gen::by_shape(shape, rules)?;
    let vars = Vars::from_pairs::<&str, &str>([]);
    let t = Instant::now();
    let loaded = parse_str_with_resolver(&yaml, "bench.yaml", &vars, &|h| Err(format!("no DNS ({h})")))?;
    let parse = t.elapsed();
    let t = Instant::now();
    let compiled = compile_phase(&loaded.policy, "a")?;
    check_capacity(&compiled, &Limits::default())?;
    let compile = t.elapsed();

    let t = Instant::now();
    let mut ebpf = loader::load(&LoadOptions::here()?)?;
    // As `fw run` does it: both classifiers verified at once.
    loader::load_classifiers(&mut ebpf)?;
    let load = t.elapsed();
    let mut policy = PolicyMaps::take(&mut ebpf)?;

    // The slab across the writes.
    let before = settled_slab_bytes()?;
    let t = Instant::now();
    apply::write_generation(&mut policy, &compiled, 1, &|| {})?;
    apply::activate(&mut policy, 1)?;
    let write = t.elapsed();
    let after = settled_slab_bytes()?;
    let entries = compiled.addr4.len() + compiled.addr6.len() + compiled.ports.len();

    // A switch to phase b, as `fw switch` does it: compile, write the new
    // generation, activate, delete the old one.
    let t = Instant::now();
    let compiled_b = compile_phase(&loaded.policy, "b")?;
    apply::write_generation(&mut policy, &compiled_b, 2, &|| {})?;
    apply::activate(&mut policy, 2)?;
    let removed = apply::delete_generations(&mut policy, &|g| g == 1, &mut || {})?;
    let switch = t.elapsed();

    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    let memlock_policy = memlock(policy.addr4.map().fd().as_fd())
        + memlock(policy.addr6.map().fd().as_fd())
        + memlock(policy.ports.map().fd().as_fd());
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    Ok(json!({
        "rules": rules, "shape": shape,
        "entries": { "addr4": compiled.addr4.len(), "addr6": compiled.addr6.len(), "ports": compiled.ports.len(), "total": entries },
        "parse_ms": ms(parse), "compile_ms": ms(compile), "load_verify_ms": ms(load), "write_ms": ms(write),
        "total_ms": ms(parse + compile + load + write),
        "switch_ms": ms(switch), "switch_removed": removed,
        "slab_growth_bytes": after.saturating_sub(before),
        "memlock_policy_maps_bytes": memlock_policy,
    }))
}
