//! One writer at a time per instance: `fw switch`, `fw confirm` and the
//! daemon's rollback take this lock (flock on /run/fw/NAME.lock) around
//! every change to the maps and the state file.

use std::fs::{self, File, OpenOptions};

use anyhow::{Context, Result};

use crate::paths;

/// Held until dropped.
pub struct InstanceLock {
    _file: File,
}

pub fn lock(name: &str) -> Result<InstanceLock> {
    fs::create_dir_all(paths::RUN_DIR).with_context(|| format!("creating {}", paths::RUN_DIR))?;
    let path = paths::lock_file(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", path.display()));
    }
    Ok(InstanceLock { _file: file })
}
