//! Making sure the BPF filesystem is mounted where pins live.

use anyhow::{bail, Context, Result};

use crate::paths::BPFFS;

fn is_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    }))
}

/// Mounts bpffs at /sys/fs/bpf when it is not (a fresh machine), with the
/// flags bpfman uses: nosuid, nodev, noexec.
pub fn ensure_mounted() -> Result<()> {
    if is_mounted()? {
        return Ok(());
    }
    let target = std::ffi::CString::new(BPFFS)?;
    let fstype = std::ffi::CString::new("bpf")?;
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!("mounting bpffs at {BPFFS}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
