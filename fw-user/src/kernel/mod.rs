//! The kernel side as userspace sees it: the embedded eBPF object, loading,
//! attaching and pinning it ([`loader`]), the policy maps written by
//! generation ([`apply`]), counters, links, routes, bpffs and cgroups.
//! Everything here needs root; nothing here decides policy.

pub mod apply;
pub mod batch;
pub mod bpffs;
pub mod cgroup;
pub mod counters;
pub mod flows;
pub mod linkinfo;
pub mod loader;
pub mod mounts;
pub mod routes;
