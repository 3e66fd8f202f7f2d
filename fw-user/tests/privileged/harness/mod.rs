//! Guards and helpers for the privileged tests: namespaces and veth pairs
//! ([`netns`]), the `fw` process and its CLI ([`fw`]), sockets in a namespace
//! ([`traffic`]), traffic that runs in the background during an event
//! ([`stream`]), crafted or sniffed packets ([`packet`]), and the metrics
//! endpoint ([`metrics`]).

pub mod cgroup;
pub mod container;
pub mod fw;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod stream;
pub mod traffic;

use std::{
    fs,
    path::{Path, PathBuf},
    process,
    sync::{
        atomic::{AtomicU32, Ordering},
        Once,
    },
};

/// Calls `done` until it holds or `limit` has passed, every 20 ms; whether
/// it held. Always calls it at least once, and once more after the limit:
/// a test waits for a condition, never for a time.
pub fn poll(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Every name a test creates starts with this, then `-<pid>-<n>`.
pub const PREFIX: &str = "fwt";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process.
pub fn next_n() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `fwt-<pid>-<n>`: unique within this process, and the pid tells a later
/// run whether its owner is still alive.
pub fn unique_name() -> String {
    format!("{PREFIX}-{}-{}", process::id(), next_n())
}

/// The pid embedded in a name made by [`unique_name`] (or a longer name
/// that starts with one).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    rest.split(['-', '.']).next()?.parse().ok()
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Once per test process: check that we can run at all, and sweep leftovers
/// of earlier runs that were killed before their guards ran.
pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "privileged tests need root: run as root (CI does), e.g. `cargo xtask test`"
        );
        netns::sweep_leftovers();
    });
}

/// A scratch directory (policy files, logs), removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name());
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.path.join(file);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owner_pid() {
        let name = unique_name();
        assert_eq!(owner_pid(&name), Some(process::id()));
        assert_eq!(owner_pid(&format!("{name}-near")), Some(process::id()));
        assert_eq!(owner_pid(&format!("{name}.json")), Some(process::id()));
        assert_eq!(owner_pid("fw0"), None);
        assert_eq!(owner_pid("fwtx-12-1"), None);
    }
}
