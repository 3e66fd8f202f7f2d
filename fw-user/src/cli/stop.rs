use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::target::{require_root, resolve_name};
use crate::instance;

/// Detach the enforcer and remove its pins: the only way to stop enforcing.
/// Waits for a switch in progress. The boot record (the last confirmed
/// phase, which a later fresh start enforces) is kept unless --forget.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Instance name (default: $FW_NAME, else the only running instance).
    #[arg(long)]
    pub name: Option<String>,
    /// Also remove the boot record under /var/lib/fw/NAME, so that the next
    /// `fw run` starts in its --phase again.
    #[arg(long)]
    pub forget: bool,
}

pub fn stop(args: StopArgs) -> Result<ExitCode> {
    require_root("fw stop")?;
    let name = resolve_name(args.name)?;
    let iface = instance::stop(&name, args.forget)?;
    println!(
        "fw: {name}: detached{}; pins removed",
        iface.as_deref().map(|i| format!(" from {i}")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
