//! Guards and helpers for the privileged tests: namespaces and veth pairs
//! ([`netns`]), the `fw` process and its CLI ([`fw`]), sockets in a namespace
//! ([`traffic`]), traffic that runs in the background during an event
//! ([`stream`]), crafted or sniffed packets ([`packet`]), the metrics
//! endpoint ([`metrics`]), and a real DHCP server and client ([`dhcp`]).

pub mod cgroup;
pub mod container;
pub mod dhcp;
pub mod dnsmasq;
pub mod fw;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod stream;
pub mod traffic;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Once,
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

/// Every name a test creates starts with this, then `-<pid>-<n>` (the lab's
/// run-unique names, [`fw_lab::names`]).
pub const PREFIX: &str = "fwt";

pub use fw_lab::names::next_n;

/// `fwt-<pid>-<n>`: unique within this process, and the pid tells a later
/// run whether its owner is still alive.
pub fn unique_name() -> String {
    fw_lab::names::unique(PREFIX)
}

/// The pid embedded in a name made by [`unique_name`] (or a longer name
/// that starts with one).
pub fn owner_pid(name: &str) -> Option<u32> {
    fw_lab::names::owner_pid(PREFIX, name)
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
        // What a killed earlier run left: namespaces, pins, state files,
        // scratch directories named fwt-<dead pid>-...
        fw_lab::sweep::sweep(PREFIX, None, &[std::env::temp_dir()]);
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
