use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::instance::{require_root, resolve_name};
use crate::{
    counters::{RuleCount, Snapshot},
    loader::CounterMaps,
    ops, paths,
    state::InstanceState,
};

/// Packet counters of an instance, per drop reason and per rule (allow
/// rules show what they matched), with the change since the last call.
#[derive(Args, Debug)]
pub struct DropsArgs {
    /// Instance name (default: the only running instance).
    #[arg(long)]
    pub name: Option<String>,
    /// One JSON object instead of a table (with --follow, one per line).
    #[arg(long)]
    pub json: bool,
    /// Also list reasons and rules whose counters are zero.
    #[arg(long)]
    pub all: bool,
    /// Refresh every second until interrupted.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Serialize)]
struct DropsReport<'a> {
    name: &'a str,
    policy_name: &'a str,
    phase: &'a str,
    dropped: u64,
    #[serde(flatten)]
    counters: &'a Snapshot,
    /// The change since the previous `fw drops` (or since start).
    delta: &'a Snapshot,
}

pub fn drops(args: DropsArgs) -> Result<ExitCode> {
    require_root("fw drops")?;
    let name = resolve_name(args.name.clone())?;
    loop {
        let state = ops::load_state(&name)?;
        let snapshot = Snapshot::read(&CounterMaps::open(&name)?, &state.enforced.rules)?;
        let previous = load_previous(&name, &snapshot);
        let delta = snapshot.since(&previous);
        save_previous(&name, &snapshot);
        print_report(&args, &name, &state, &snapshot, &delta)?;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The counters at the last call, when they are of the same rules; else
/// zeros, so the delta counts from the start.
fn load_previous(name: &str, now: &Snapshot) -> Snapshot {
    std::fs::read(paths::drops_snapshot(name))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Snapshot>(&bytes).ok())
        .filter(|prev| prev.rules.iter().map(|r| &r.name).eq(now.rules.iter().map(|r| &r.name)))
        .filter(|prev| prev.reasons.len() == now.reasons.len())
        .unwrap_or_else(|| now.zeroed())
}

fn save_previous(name: &str, snapshot: &Snapshot) {
    // Best effort: a failure only makes the next delta count from older numbers.
    if let Ok(bytes) = serde_json::to_vec(snapshot) {
        let _ = std::fs::write(paths::drops_snapshot(name), bytes);
    }
}

fn print_report(args: &DropsArgs, name: &str, state: &InstanceState, snapshot: &Snapshot, delta: &Snapshot) -> Result<()> {
    let e = &state.enforced;
    if args.json {
        let report = DropsReport {
            name,
            policy_name: &e.policy_name,
            phase: &e.phase,
            dropped: snapshot.dropped(),
            counters: snapshot,
            delta,
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("{name}: policy {} phase {} on {}", e.policy_name, e.phase, state.iface);
    println!("{:<9} {:<22} {:>12} {:>10} {:>14}", "DIRECTION", "REASON", "PACKETS", "+DELTA", "BYTES");
    for (r, d) in snapshot.reasons.iter().zip(&delta.reasons).filter(|(r, _)| args.all || r.packets > 0) {
        println!("{:<9} {:<22} {:>12} {:>10} {:>14}", r.direction, r.reason, r.packets, format!("+{}", d.packets), r.bytes);
    }
    println!();
    println!("{:<5} {:<24} {:<9} {:<6} {:>12} {:>10} {:>14}", "RULE", "NAME", "DIRECTION", "ACTION", "PACKETS", "+DELTA", "BYTES");
    for (RuleCount { id, name, direction, action, packets, bytes }, d) in
        snapshot.rules.iter().zip(&delta.rules).filter(|(r, _)| args.all || r.packets > 0)
    {
        let plus = format!("+{}", d.packets);
        println!("{id:<5} {name:<24} {direction:<9} {action:<6} {packets:>12} {plus:>10} {bytes:>14}");
    }
    if snapshot.dropped() == 0 {
        println!("\nno drops recorded");
    }
    println!();
    Ok(())
}
