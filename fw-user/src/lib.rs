//! `fw` userspace: policy language, compiler, loader and CLI.

pub mod compile;
pub mod eval;
pub mod explain;
pub mod iface_watch;
pub mod export;
pub mod policy;
pub mod report;
pub mod apply;
pub mod bpffs;
pub mod routes;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod events;
pub mod instance;
pub mod learn;
pub mod kernel_log;
pub mod linkinfo;
pub mod loader;
pub mod lock;
pub mod mounts;
pub mod metrics;
pub mod paths;
pub mod policy_source;
pub mod readiness;
pub mod state;
pub mod watch;

/// Time since the Unix epoch (zero for a clock set before 1970).
pub fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Whole seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    unix_time().as_secs()
}
