//! Making sure the BPF filesystem is mounted where pins live.

use anyhow::{bail, Result};

use crate::{mounts::mounts, paths::BPFFS};

fn is_mounted() -> Result<bool> {
    Ok(mounts()?.iter().any(|(dir, fstype)| dir.as_os_str() == BPFFS && fstype == "bpf"))
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
