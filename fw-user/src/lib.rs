//! `fw` userspace: policy language, compiler, loader and CLI.

pub mod compile;
pub mod eval;
pub mod explain;
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
pub mod events;
pub mod learn;
pub mod kernel_log;
pub mod linkinfo;
pub mod loader;
pub mod lock;
pub mod metrics;
pub mod ops;
pub mod paths;
pub mod policy_source;
pub mod state;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
