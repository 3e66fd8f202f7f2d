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

/// Where a command's instance name comes from when `--name` is not given:
/// a container image cannot know the name its health check (`fw status`)
/// asks for, so the engine sets it once, for `fw run` and every command.
pub const NAME_ENV: &str = "FW_NAME";

/// The instance named by `--name`, else by `$FW_NAME`, else the only one.
pub fn resolve_name(name: Option<String>) -> Result<String> {
    pick_name(name, std::env::var(NAME_ENV).ok(), instances)
}

/// `fw run`'s instance: `--name`, else `$FW_NAME`, else the interface.
pub fn run_name(name: Option<String>, iface: &str) -> String {
    name.or_else(|| std::env::var(NAME_ENV).ok().filter(|n| !n.is_empty())).unwrap_or_else(|| iface.to_string())
}

fn pick_name(name: Option<String>, env: Option<String>, instances: impl Fn() -> Vec<String>) -> Result<String> {
    if let Some(name) = name {
        paths::validate_name(&name).map_err(anyhow::Error::msg)?;
        return Ok(name);
    }
    if let Some(name) = env.filter(|n| !n.is_empty()) {
        paths::validate_name(&name).map_err(|e| anyhow::anyhow!("${NAME_ENV}: {e}"))?;
        return Ok(name);
    }
    match instances().as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no fw instance is running (start one with `fw run --iface IFACE`)"),
        many => bail!("several fw instances are running ({}): say which with --name", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_comes_from_the_flag_then_fw_name_then_the_only_instance() {
        let two = || vec!["a".to_string(), "b".to_string()];
        assert_eq!(pick_name(Some("x".into()), Some("y".into()), two).unwrap(), "x");
        assert_eq!(pick_name(None, Some("y".into()), two).unwrap(), "y");
        assert!(pick_name(None, None, two).unwrap_err().to_string().contains("several fw instances"));
        assert_eq!(pick_name(None, Some(String::new()), || vec!["a".into()]).unwrap(), "a");
        assert!(pick_name(None, Some("../x".into()), two).unwrap_err().to_string().starts_with("$FW_NAME: "));
    }
}
