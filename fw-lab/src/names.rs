//! Names unique to this run: `<prefix>-<pid>-<n>`. The pid says whether the
//! run that made a name is still alive ([`owner_pid`], [`pid_alive`]), which
//! is what lets tests and benchmarks run side by side and still sweep each
//! other's leftovers once their owner is gone.

use std::{
    path::Path,
    process,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process.
pub fn next_n() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `<prefix>-<pid>-<n>`: unique within this process and across live ones.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", process::id(), next_n())
}

/// The pid in a name made by [`unique`] with `prefix` (or a longer name
/// that starts with one: `fwt-12-3-near`, `fwt-12-3.lock`).
pub fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    rest.split(['-', '.']).next()?.parse().ok()
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Made by a run with `prefix` whose process is gone (never this one).
pub fn is_leftover(prefix: &str, name: &str) -> bool {
    owner_pid(prefix, name).is_some_and(|pid| pid != process::id() && !pid_alive(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owner_pid_and_only_a_dead_owner_makes_a_leftover() {
        let name = unique("fwx");
        assert_eq!(owner_pid("fwx", &name), Some(process::id()));
        assert_eq!(owner_pid("fwx", &format!("{name}-near")), Some(process::id()));
        assert_eq!(owner_pid("fwx", &format!("{name}.lock")), Some(process::id()));
        assert_eq!(owner_pid("fwy", &name), None, "another prefix is not ours");
        assert_eq!(owner_pid("fwx", "fwx-notapid-1"), None);
        assert!(!is_leftover("fwx", &name), "this process is alive");
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(is_leftover("fwx", "fwx-4194399-0"));
        assert_ne!(unique("fwx"), unique("fwx"));
    }
}
