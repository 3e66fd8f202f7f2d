use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::instance::{require_root, resolve_name};
use crate::{loader, paths, state::InstanceState};

/// Detach the enforcer and remove its pins: the only way to stop enforcing.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Instance name (default: the only running instance).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn stop(args: StopArgs) -> Result<ExitCode> {
    require_root("fw stop")?;
    let name = resolve_name(args.name)?;
    let state = InstanceState::load(&name)?;
    if state.is_none() && !paths::pin_dir(&name).exists() {
        bail!("no fw instance named {name} (see `fw status`)");
    }
    let iface = state.as_ref().map(|s| s.iface.as_str());
    loader::detach(&name, iface, state.as_ref().map(|s| s.attach_mode))?;
    InstanceState::remove(&name)?;
    for leftover in [paths::drops_snapshot(&name), paths::lock_file(&name)] {
        let _ = std::fs::remove_file(leftover);
    }
    println!("fw: {name}: detached{}; pins removed", iface.map(|i| format!(" from {i}")).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
