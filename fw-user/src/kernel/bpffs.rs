//! Making sure pins land in the host's BPF filesystem, which outlives `fw`.
//!
//! Every `mount -t bpf` creates a filesystem of its own. One mounted inside
//! another mount namespace (`ip netns exec`, which remounts /sys; `unshare
//! -m`; a container) disappears with that namespace, and the pinned links
//! with it: the interface is then unfiltered while `fw` said "enforcement
//! stays attached" (fail open). So `fw` mounts bpffs only in the host's own
//! (initial) mount namespace, on a fresh machine; anywhere else it uses
//! /sys/fs/bpf only when that is the host's bpffs, inherited or
//! bind-mounted (`-v /sys/fs/bpf:/sys/fs/bpf`), and refuses otherwise.
//!
//! Finding the host's mount namespace: Linux 6.18 gives the initial one the
//! fixed inode `MNT_NS_INIT_INO` (dynamic ones start at 0xF0000000), which
//! settles it for this process and finds a process of the host's namespace
//! in /proc; on older kernels PID 1 is that process when this one shares
//! the host's PID namespace (`PROC_PID_INIT_INO`). "The host's bpffs" is
//! then a device-number comparison: /sys/fs/bpf here and through that
//! process's root (`/proc/PID/root/sys/fs/bpf`) are one filesystem.
//!
//! A container with a PID namespace of its own sees no process of the host:
//! there `fw` cannot verify, uses a bpffs it finds (the bind-mount of the
//! host's is how a container deployment gives `fw` its pins; refusing would
//! block it) with a note, and never mounts one.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::instance::paths::BPFFS;

/// `f_type` of bpffs in statfs(2) (linux/magic.h).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Inode of the initial mount namespace since Linux 6.18 (linux/nsfs.h).
const MNT_NS_INIT_INO: u64 = 0xEFFF_FFF8;
/// Inode of the initial PID namespace since Linux 3.8 (linux/proc_ns.h).
const PID_NS_INIT_INO: u64 = 0xEFFF_FFFC;

/// What the operator can do instead; ends every refusal.
const FIX: &str = "Run fw in the host's mount namespace (nsenter --net=/run/netns/NS fw ..., not ip netns exec) \
                   or bind-mount the host's /sys/fs/bpf";

/// Where this process runs, seen from the host's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// The host's own mount namespace.
    Host,
    /// Another mount namespace; `host_bpffs` is the device of /sys/fs/bpf in
    /// the host's (whatever is mounted there, bpffs or not).
    Other { host_bpffs: u64 },
    /// Cannot tell: no process of the host's mount namespace is visible.
    Unknown,
}

/// What /sys/fs/bpf is in this mount namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Here {
    pub is_bpffs: bool,
    pub dev: u64,
}

/// What to do about /sys/fs/bpf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The host's bpffs: pin there.
    Use,
    /// The host's mount namespace without bpffs (a fresh machine): mount it.
    Mount,
    /// A bpffs that may or may not be the host's: pin there, and say so.
    UseUnverified,
    /// Pins here would not outlive `fw`: the one-line error.
    Refuse(String),
}

/// The decision table; pure, so that every row is tested.
pub fn decide(place: &Place, here: Here) -> Decision {
    match place {
        Place::Host if here.is_bpffs => Decision::Use,
        Place::Host => Decision::Mount,
        Place::Other { host_bpffs } if here.is_bpffs && here.dev == *host_bpffs => Decision::Use,
        Place::Other { .. } if here.is_bpffs => Decision::Refuse(format!(
            "{BPFFS} in this mount namespace is not the host's bpffs: pins would vanish when fw exits (fail open). {FIX}"
        )),
        Place::Unknown if here.is_bpffs => Decision::UseUnverified,
        Place::Other { .. } | Place::Unknown => Decision::Refuse(format!(
            "no bpffs at {BPFFS} in this mount namespace, and one mounted here would vanish when fw exits \
             (fail open). {FIX}"
        )),
    }
}

/// Makes sure /sys/fs/bpf is the host's bpffs before anything is pinned:
/// mounts it on a fresh machine (in the host's mount namespace only), and
/// refuses, changing nothing, where pins would die with this process's
/// mount namespace. Every command that creates pins calls this first.
pub fn ensure_mounted() -> Result<()> {
    let place = locate()?;
    match decide(&place, here()?) {
        Decision::Use => Ok(()),
        Decision::Mount => mount(),
        Decision::UseUnverified => {
            eprintln!(
                "fw: note: cannot verify that {BPFFS} is the host's bpffs (no process of the host's mount namespace \
                 is visible here): it must be the host's, bind-mounted, or the pins vanish when this namespace ends"
            );
            Ok(())
        }
        Decision::Refuse(why) => bail!(why),
    }
}

/// /sys/fs/bpf as this process sees it (a missing directory is no bpffs).
fn here() -> Result<Here> {
    let dev = match std::fs::metadata(BPFFS) {
        Ok(meta) => meta.dev(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Here { is_bpffs: false, dev: 0 }),
        Err(e) => return Err(e).with_context(|| format!("reading {BPFFS}")),
    };
    Ok(Here { is_bpffs: fs_magic(Path::new(BPFFS))? == BPF_FS_MAGIC, dev })
}

fn fs_magic(path: &Path) -> Result<u32> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs is plain old data; an all-zero value is valid.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `buf` is a valid statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    // f_type is a signed word; the magic is compared as its low 32 bits.
    Ok(buf.f_type as u32)
}

/// (device, inode) of a namespace file or any path.
fn id_of(path: &Path) -> io::Result<(u64, u64)> {
    std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
}

/// Where this process runs relative to the host's mount namespace.
fn locate() -> Result<Place> {
    let own = id_of(Path::new("/proc/self/ns/mnt")).context("reading /proc/self/ns/mnt")?;
    if own.1 == MNT_NS_INIT_INO {
        return Ok(Place::Host);
    }
    let Some((ns, root)) = host_process() else { return Ok(Place::Unknown) };
    if ns == own {
        return Ok(Place::Host);
    }
    match std::fs::metadata(root.join("sys/fs/bpf")) {
        Ok(meta) => Ok(Place::Other { host_bpffs: meta.dev() }),
        // The host has no /sys/fs/bpf at all: nothing here can be its bpffs.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Place::Other { host_bpffs: u64::MAX }),
        Err(_) => Ok(Place::Unknown),
    }
}

/// A process in the host's mount namespace that this one may look into:
/// its namespace id and its root directory (`/proc/PID/root`).
fn host_process() -> Option<((u64, u64), PathBuf)> {
    let proc = Path::new("/proc");
    // In the host's PID namespace, PID 1 is the host's init.
    let host_pids = id_of(&proc.join("self/ns/pid")).is_ok_and(|(_, ino)| ino == PID_NS_INIT_INO);
    if host_pids {
        if let Ok(ns) = id_of(&proc.join("1/ns/mnt")) {
            if std::fs::metadata(proc.join("1/root")).is_ok() {
                return Some((ns, proc.join("1/root")));
            }
        }
    }
    // Linux 6.18 marks the initial mount namespace: any process in it will
    // do (PID 1 may be closed to us, as in some VMs' init).
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let is_pid = entry.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let Ok(ns) = id_of(&entry.path().join("ns/mnt")) else { continue };
        if ns.1 == MNT_NS_INIT_INO && std::fs::metadata(entry.path().join("root")).is_ok() {
            return Some((ns, entry.path().join("root")));
        }
    }
    None
}

/// Mounts bpffs at /sys/fs/bpf with the flags bpfman uses: nosuid, nodev,
/// noexec. Only in the host's mount namespace (see [`decide`]).
fn mount() -> Result<()> {
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
        bail!("mounting bpffs at {BPFFS}: {}", io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPF: Here = Here { is_bpffs: true, dev: 42 };
    const PRIVATE_BPF: Here = Here { is_bpffs: true, dev: 43 };
    const NO_BPF: Here = Here { is_bpffs: false, dev: 22 };

    #[test]
    fn only_the_hosts_mount_namespace_mounts_and_only_the_hosts_bpffs_is_used() {
        assert_eq!(decide(&Place::Host, BPF), Decision::Use);
        assert_eq!(decide(&Place::Host, NO_BPF), Decision::Mount);
        // Inherited or bind-mounted: the same filesystem as the host's.
        assert_eq!(decide(&Place::Other { host_bpffs: 42 }, BPF), Decision::Use);
        // `unshare -m` + `mount -t bpf`: a filesystem of its own.
        let Decision::Refuse(line) = decide(&Place::Other { host_bpffs: 42 }, PRIVATE_BPF) else { panic!() };
        assert!(line.starts_with("/sys/fs/bpf in this mount namespace is not the host's bpffs: "), "{line}");
        // `ip netns exec`: a fresh /sys without bpffs; never mounted there.
        let Decision::Refuse(line) = decide(&Place::Other { host_bpffs: 42 }, NO_BPF) else { panic!() };
        assert!(line.contains("nsenter --net=/run/netns/NS") && !line.contains('\n'), "{line}");
        // A container without the host's PID namespace: cannot verify.
        assert_eq!(decide(&Place::Unknown, BPF), Decision::UseUnverified);
        assert!(matches!(decide(&Place::Unknown, NO_BPF), Decision::Refuse(_)));
    }

    #[test]
    fn this_process_finds_its_place() {
        // Whatever the machine, locating must not fail, and a process in the
        // initial mount namespace (Linux 6.18+) is at home.
        let place = locate().unwrap();
        let own = id_of(Path::new("/proc/self/ns/mnt")).unwrap();
        if own.1 == MNT_NS_INIT_INO {
            assert_eq!(place, Place::Host);
        }
    }
}
