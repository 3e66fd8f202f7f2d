use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::{
    preflight,
    source::PolicyFile,
    target::{require_root, resolve_name},
};
use crate::{daemon::control, instance};

/// Switch the running instance to another phase (or an edited policy),
/// atomically: the new phase is written aside, published with one map
/// write, then the old one is removed. Flows the old phase admitted are
/// re-checked against the new one on their next packet. Works with or
/// without the daemon; a policy that does not compile changes nothing.
#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// The phase to enforce.
    pub phase: String,
    /// Instance name (default: $FW_NAME, else the only running instance).
    #[arg(long)]
    pub name: Option<String>,
    // --policy (default: the one enforced, read again), --env-file.
    #[command(flatten)]
    pub file: PolicyFile,
    /// Commit-confirmed: roll back to the current phase by itself unless
    /// `fw confirm` comes within SECS seconds (needs the `fw run` daemon).
    /// At most 604800 (a week): a confirmation window is minutes long, and a
    /// bounded one keeps the deadline `now + SECS` from overflowing.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=instance::MAX_CONFIRM_SECS))]
    pub confirm: Option<u64>,
    /// Apply a runtime phase even though its egress lets every address out
    /// on every port (refused otherwise: that is not "close all outbound").
    #[arg(long)]
    pub force: bool,
}

pub fn switch(args: SwitchArgs) -> Result<ExitCode> {
    require_root("fw switch")?;
    let name = resolve_name(args.name)?;
    let daemon = match control::ping(&name) {
        Ok(info) => info.is_some(),
        // A daemon that does not answer is not relied on: this command
        // deletes the old generation itself.
        Err(_) if args.confirm.is_none() => false,
        Err(e) => return Err(e),
    };
    if args.confirm.is_some() && !daemon {
        bail!("--confirm needs the daemon that times the rollback: start `fw run --name {name} --iface IFACE` first");
    }
    if args.confirm.is_some() {
        // What the new phase would break on this host, said before it
        // applies: the confirmation window is when to read it.
        let loaded = preflight::load(Some(name.clone()), &args.file, &args.phase)?;
        let findings = preflight::findings(&loaded, std::path::Path::new("/"));
        if !findings.is_empty() {
            eprint!("{}", preflight::render(&loaded.source, &args.phase, &findings));
            eprintln!("fw: {name}: switching anyway; the phase rolls back unless `fw confirm` (read the above first)");
        }
    }
    let request = instance::SwitchRequest {
        phase: args.phase,
        policy: args.file.policy,
        env_file: args.file.env_file,
        confirm_secs: args.confirm,
        force: args.force,
        // The daemon deletes the old generation within a second; without
        // one, this command does before it returns.
        defer_collection: daemon,
    };
    let outcome = instance::switch(&name, &request)?;
    for note in &outcome.notes {
        println!("fw: {name}: {note}");
    }
    crate::say_warnings(&outcome.warnings);
    let written = match outcome.written {
        instance::txn::Written::Now(n) => format!("{n} entries written"),
        instance::txn::Written::Ahead(n) => format!("{n} entries written ahead by the daemon"),
    };
    println!(
        "fw: {name}: switched {} -> {} (generation {} -> {}) in {:.1} ms: {written}",
        outcome.from.phase,
        outcome.to.phase,
        outcome.from.generation,
        outcome.to.generation,
        outcome.elapsed.as_secs_f64() * 1e3,
    );
    if let (Some(deadline), Some(secs)) = (outcome.deadline, request.confirm_secs) {
        println!(
            "fw: {name}: rolls back to {} in {secs} s (unix time {deadline}) unless `fw confirm --name {name}`",
            outcome.from.phase
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Keep a switch made with --confirm (otherwise it rolls back).
#[derive(Args, Debug)]
pub struct ConfirmArgs {
    /// Instance name (default: $FW_NAME, else the only running instance).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn confirm(args: ConfirmArgs) -> Result<ExitCode> {
    require_root("fw confirm")?;
    let name = resolve_name(args.name)?;
    let (kept, notes) = instance::confirm(&name)?;
    for note in &notes {
        println!("fw: {name}: {note}");
    }
    println!("fw: {name}: confirmed phase {} (generation {})", kept.phase, kept.generation);
    Ok(ExitCode::SUCCESS)
}
