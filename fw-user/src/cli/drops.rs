use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::Args;
use serde::Serialize;

use super::instance::{require_root, resolve_name};
use crate::{
    counters::{RuleCount, Snapshot},
    loader::CounterMaps,
    state::InstanceState,
};

/// Packet counters of an instance, per drop reason and per rule.
#[derive(Args, Debug)]
pub struct DropsArgs {
    /// Instance name (default: the only running instance).
    #[arg(long)]
    pub name: Option<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also list reasons and rules whose counters are zero.
    #[arg(long)]
    pub all: bool,
}

#[derive(Serialize)]
struct DropsReport<'a> {
    name: &'a str,
    policy_name: &'a str,
    phase: &'a str,
    dropped: u64,
    #[serde(flatten)]
    counters: &'a Snapshot,
}

pub fn drops(args: DropsArgs) -> Result<ExitCode> {
    require_root("fw drops")?;
    let name = resolve_name(args.name)?;
    let state = InstanceState::load(&name)?.ok_or_else(|| anyhow!("no fw instance named {name} (see `fw status`)"))?;
    let snapshot = Snapshot::read(&CounterMaps::open(&name)?, &state.rules)?;
    if args.json {
        let report = DropsReport {
            name: &name,
            policy_name: &state.policy_name,
            phase: &state.phase,
            dropped: snapshot.dropped(),
            counters: &snapshot,
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{name}: policy {} phase {} on {}", state.policy_name, state.phase, state.iface);
    println!("{:<9} {:<22} {:>12} {:>14}", "DIRECTION", "REASON", "PACKETS", "BYTES");
    for r in snapshot.reasons.iter().filter(|r| args.all || r.packets > 0) {
        println!("{:<9} {:<22} {:>12} {:>14}", r.direction, r.reason, r.packets, r.bytes);
    }
    println!();
    println!("{:<5} {:<24} {:<9} {:<6} {:>12} {:>14}", "RULE", "NAME", "DIRECTION", "ACTION", "PACKETS", "BYTES");
    for RuleCount { id, name, direction, action, packets, bytes } in
        snapshot.rules.iter().filter(|r| args.all || r.packets > 0)
    {
        println!("{id:<5} {name:<24} {direction:<9} {action:<6} {packets:>12} {bytes:>14}");
    }
    if snapshot.dropped() == 0 {
        println!("\nno drops recorded");
    }
    Ok(ExitCode::SUCCESS)
}
