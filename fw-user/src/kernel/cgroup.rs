//! Where the cgroup socket hooks go.
//!
//! On a real server `fw run` enforces an interface of the host's own network
//! namespace, and the hooks belong on the root of the cgroup v2 hierarchy
//! (every process). When `fw` runs in another namespace (a container, a
//! test) the default is no hooks: a root-cgroup hook would see every
//! process of the machine. `--cgroup PATH` picks a directory explicitly.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// The cgroup v2 mount point: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid layout.
pub fn v2_mount() -> Result<PathBuf> {
    crate::kernel::mounts::mounts()?
        .into_iter()
        .find_map(|(dir, fstype)| (fstype == "cgroup2").then_some(dir))
        .context("no cgroup v2 hierarchy is mounted (see /proc/mounts)")
}

/// Does this process run in the host's initial network namespace? When
/// that cannot be told (`/proc/1/ns/net` is unreadable from some
/// namespaces), the answer is no: hooks on the root cgroup must be asked for.
pub fn in_initial_netns() -> bool {
    match (std::fs::read_link("/proc/self/ns/net"), std::fs::read_link("/proc/1/ns/net")) {
        (Ok(ours), Ok(init)) => ours == init,
        _ => false,
    }
}

/// `--cgroup` resolved: `None` for no hooks.
pub fn resolve(arg: Option<&str>) -> Result<Option<PathBuf>> {
    match arg {
        Some("none") => Ok(None),
        Some(path) => {
            let path = PathBuf::from(path);
            let mount = v2_mount()?;
            if !path.starts_with(&mount) || !path.is_dir() {
                bail!("--cgroup {}: not a directory of the cgroup v2 hierarchy at {}", path.display(), mount.display());
            }
            Ok(Some(path))
        }
        None if in_initial_netns() => Ok(Some(v2_mount()?)),
        None => Ok(None),
    }
}
