//! `fw names`: the addresses DNS answers taught the kernel, why each is
//! allowed (name, rule) and for how long.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::target::{require_root, resolve_name};
use crate::{
    daemon::{
        control,
        dns::{ledger::live, monotonic_ns, NameEntry, NamesReport},
    },
    instance,
    kernel::loader::NameMaps,
};

/// The addresses learned from DNS answers for name rules: the name asked,
/// the address, the rules that allow it and the seconds left before new
/// connections to it are refused (open ones continue).
#[derive(Args, Debug)]
pub struct NamesArgs {
    /// Instance name (default: $FW_NAME, else the only running instance).
    #[arg(long)]
    pub name: Option<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn names(args: NamesArgs) -> Result<ExitCode> {
    require_root("fw names")?;
    let name = resolve_name(args.name)?;
    let report = report(&name)?;
    let rule_names = instance::view(&name).ok().and_then(|(_, _, e)| e).map(|e| e.rules).unwrap_or_default();
    let rule_name =
        |id: u32| rule_names.iter().find(|r| r.id == id).map_or_else(|| format!("#{id}"), |r| r.name.clone());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<40} {:<39} {:>8}  rules", "name", "address", "ttl");
    for e in &report.entries {
        let names =
            if e.names.is_empty() { "(learned before the daemon started)".to_string() } else { e.names.join(",") };
        let ttl = e.rules.iter().map(|(_, left)| *left).max().unwrap_or(0);
        let rules: Vec<String> = e.rules.iter().map(|(id, _)| rule_name(*id)).collect();
        println!("{names:<40} {:<39} {:>7}s  {}", e.address.to_string(), ttl, rules.join(","));
    }
    println!(
        "{} addresses (at most {} per name, {} in all); {} evicted, {} not learned (every candidate in use)",
        report.entries.len(),
        report.max_per_name,
        report.max_total,
        report.evicted,
        report.over_cap
    );
    Ok(ExitCode::SUCCESS)
}

/// What instance `name` learned. The daemon knows the names; without it
/// the kernel maps still say what stays allowed (names unknown).
pub fn report(name: &str) -> Result<NamesReport> {
    match control::names(name)? {
        Some(report) => Ok(report),
        None => from_kernel(name),
    }
}

/// What the kernel maps hold, when no daemon answers.
fn from_kernel(name: &str) -> Result<NamesReport> {
    let now = monotonic_ns();
    let entries = NameMaps::open(name)?
        .entries()
        .into_iter()
        .filter(|(_, v)| live(v, now))
        .map(|(address, value)| NameEntry {
            names: Vec::new(),
            address,
            rules: crate::daemon::dns::live_rules(&value, now),
        })
        .collect();
    Ok(NamesReport { entries, ..NamesReport::default() })
}
