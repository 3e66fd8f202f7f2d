//! Every on-disk path `fw` uses, in one place.
//!
//! ```text
//! /sys/fs/bpf/fw/NAME/            pins of one enforcer instance (bpffs)
//!                     FW_CONFIG   maps, pinned by name (see fw_common::maps)
//!                     ...
//!                     link_egress the TCX links: enforcement outlives the process
//!                     link_ingress
//!                     prog_egress the two TC programs, so that an interface deleted
//!                     prog_ingress and created again gets them attached again
//!                                 (new links, same programs and maps)
//! /run/fw/NAME.json               what the instance enforces (policy, phase, rules)
//! /run/fw/NAME.lock               serializes changes (switch, confirm, rollback)
//! /run/fw/NAME.sock               the daemon's control socket (root only)
//! /run/fw/NAME.drops.json         counters at the last `fw drops`, for deltas
//! /run/fw/NAME.daemon.lock        held by the instance's one daemon for its life
//! /var/lib/fw/NAME/boot.json      the last confirmed policy and phase
//!                  policy-G.yaml  the text generation G was compiled from
//!                  env-G          (and its env file)
//! ```
//! Pins and /run disappear on reboot, together; /var/lib stays, so that a
//! rebooted host enforces the phase last confirmed, not the install phase.

use std::path::PathBuf;

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Root of all fw pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/fw";
/// Runtime state, locks and control sockets.
pub const RUN_DIR: &str = "/run/fw";
/// What survives a reboot.
pub const LIB_DIR: &str = "/var/lib/fw";

/// Boot record directory of instance `name`.
pub fn boot_dir(name: &str) -> PathBuf {
    PathBuf::from(LIB_DIR).join(name)
}

/// The lock the daemon of instance `name` holds for its life.
pub fn daemon_lock_file(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{name}.daemon.lock"))
}

/// Pin directory of instance `name`.
pub fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT).join(name)
}

/// Pin of the egress TCX link of instance `name`.
pub fn egress_link(name: &str) -> PathBuf {
    pin_dir(name).join("link_egress")
}

/// Pin of the ingress TCX link of instance `name`.
pub fn ingress_link(name: &str) -> PathBuf {
    pin_dir(name).join("link_ingress")
}

/// Pin of the egress TC program of instance `name`.
pub fn egress_program(name: &str) -> PathBuf {
    pin_dir(name).join("prog_egress")
}

/// Pin of the ingress TC program of instance `name`.
pub fn ingress_program(name: &str) -> PathBuf {
    pin_dir(name).join("prog_ingress")
}

/// Pin of the link of program `program` of instance `name`.
pub fn link_pin(name: &str, program: &str) -> PathBuf {
    pin_dir(name).join(format!("link_{program}"))
}

/// Every link pinned for instance `name`.
pub fn link_pins(name: &str) -> std::io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(pin_dir(name)) {
        Ok(dir) => Ok(dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
            .map(|e| e.path())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Pin of map `map` of instance `name`.
pub fn map_pin(name: &str, map: &str) -> PathBuf {
    pin_dir(name).join(map)
}

/// State file of instance `name`.
pub fn state_file(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{name}.json"))
}

/// Lock file of instance `name`.
pub fn lock_file(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{name}.lock"))
}

/// Control socket of instance `name`'s daemon.
pub fn control_socket(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{name}.sock"))
}

/// The names the DNS proxy learned addresses for (address -> names), so
/// that a restarted daemon can still say why an address is allowed.
pub fn names_file(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{name}.names.json"))
}

/// The rule lists the state file of `name` names (`instance::state`).
pub fn rules_dir(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{name}.rules"))
}

/// The phases the daemon of `name` compiled ahead of `fw switch`
/// (`source::precompiled`).
pub fn kept_dir(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{name}.kept"))
}

/// Counters at the last `fw drops` of instance `name`.
pub fn drops_snapshot(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{name}.drops.json"))
}

/// Instance names become path components: keep them to a safe alphabet.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid instance name {name:?}: use 1-64 characters of letters, digits, '-', '_', '.', '@'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_pin_root() {
        assert!(validate_name("veth0").is_ok());
        assert!(validate_name("fw@eth0.100").is_ok());
        assert!(validate_name("../x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("..").is_err());
    }
}
