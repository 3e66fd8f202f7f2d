//! One writer at a time per instance: `fw run` (start, adopt), `fw switch`,
//! `fw confirm`, `fw stop` and the daemon's rollback take this lock (flock
//! on /run/fw/NAME.lock) around every change to the maps and the state
//! file. And one daemon per instance: `fw run` holds
//! /run/fw/NAME.daemon.lock for its whole life, taken before it creates
//! anything, so a second one changes nothing of the first's.
//!
//! Lock files are never removed: a process blocked on a removed file would
//! lock an inode nobody else can see.

use std::fs::{self, File, OpenOptions};

use anyhow::{Context, Result};

use crate::instance::paths;

/// Held until dropped.
pub struct InstanceLock {
    _file: File,
}

/// Waits for the instance's change lock.
pub fn lock(name: &str) -> Result<InstanceLock> {
    let path = paths::lock_file(name);
    let file = open(&path)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", path.display()));
    }
    Ok(InstanceLock { _file: file })
}

/// Takes the daemon lock of instance `name`, or fails at once when another
/// daemon holds it (whose pid the file holds).
pub fn daemon_lock(name: &str) -> Result<InstanceLock> {
    use std::io::{Read, Seek, Write};
    let path = paths::daemon_lock_file(name);
    let mut file = open(&path)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        anyhow::bail!("an fw daemon (pid {}) already runs instance {name}", pid.trim());
    }
    // The pid, for the loser's message: written under the lock.
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(InstanceLock { _file: file })
}

fn open(path: &std::path::Path) -> Result<File> {
    fs::create_dir_all(paths::RUN_DIR).with_context(|| format!("creating {}", paths::RUN_DIR))?;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}
