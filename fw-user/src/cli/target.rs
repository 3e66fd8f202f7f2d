//! Finding the instance a command is about, and the root check.

use std::fs;

use anyhow::{bail, Result};

use crate::instance::paths;

/// Every command that touches the kernel says so in one line without root.
pub fn require_root(command: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`{command}` needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo");
    }
    Ok(())
}

/// Names of the instances that have pins.
pub fn instances() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(paths::PIN_ROOT)
        .map(|dir| dir.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The instance named by `--name`, or the only one there is.
pub fn resolve_name(name: Option<String>) -> Result<String> {
    if let Some(name) = name {
        paths::validate_name(&name).map_err(anyhow::Error::msg)?;
        return Ok(name);
    }
    match instances().as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no fw instance is running (start one with `fw run --iface IFACE`)"),
        many => bail!("several fw instances are running ({}): say which with --name", many.join(", ")),
    }
}
