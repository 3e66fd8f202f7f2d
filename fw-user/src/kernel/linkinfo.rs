//! Which interface a pinned TCX link is attached to.
//!
//! aya 0.14's `LinkInfo` exposes the link and program ids but not the TCX
//! `ifindex`, and that is the field that tells a live link from a defunct
//! one: when its interface goes away the kernel detaches the link and
//! reports ifindex 0. So `fw status` asks the kernel directly, with the two
//! documented `bpf(2)` commands `BPF_OBJ_GET` and `BPF_OBJ_GET_INFO_BY_FD`.
//! (And, to pin the program a link runs, `BPF_PROG_GET_FD_BY_ID` and
//! `BPF_OBJ_PIN`, which aya does not offer for a program it did not load.)

use std::{ffi::CString, io, os::fd::FromRawFd, os::fd::OwnedFd, os::unix::ffi::OsStrExt, path::Path};

use anyhow::{Context, Result};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `enum bpf_link_type`: BPF_LINK_TYPE_TCX.
const BPF_LINK_TYPE_TCX: u32 = 11;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info`, as much as we read: type, id, prog_id, then the
/// union (8-byte aligned, so at offset 16) whose `tcx` member starts with
/// `ifindex`. The rest is room the kernel may fill and must find zeroed.
#[repr(C, align(8))]
struct LinkInfoBuf([u8; 256]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcxLinkInfo {
    pub link_id: u32,
    pub program_id: u32,
    /// 0 when the interface is gone and the link is defunct.
    pub ifindex: u32,
}

fn sys_bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> io::Result<i64> {
    // SAFETY: `attr` points to a live, properly sized bpf_attr prefix.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Reads the link pinned at `path`; `Ok(None)` when nothing is pinned there
/// or the link is not a TCX link.
pub fn tcx_link_info(path: &Path) -> Result<Option<TcxLinkInfo>> {
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    let mut get = ObjGetAttr { pathname: cpath.as_ptr() as u64, ..Default::default() };
    let fd = match sys_bpf(BPF_OBJ_GET, (&mut get as *mut ObjGetAttr).cast(), std::mem::size_of::<ObjGetAttr>()) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", path.display())),
    };
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut buf = LinkInfoBuf([0; 256]);
    let mut attr = InfoByFdAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: buf.0.len() as u32,
        info: buf.0.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, (&mut attr as *mut InfoByFdAttr).cast(), std::mem::size_of::<InfoByFdAttr>())
        .with_context(|| format!("reading link info of {}", path.display()))?;
    let word = |off: usize| u32::from_ne_bytes(buf.0[off..off + 4].try_into().expect("4 bytes"));
    if word(0) != BPF_LINK_TYPE_TCX {
        return Ok(None);
    }
    Ok(Some(TcxLinkInfo { link_id: word(4), program_id: word(8), ifindex: word(16) }))
}

/// Pins the loaded program with id `program_id` at `path` (on bpffs).
pub fn pin_program(program_id: u32, path: &Path) -> Result<()> {
    let mut by_id = GetFdByIdAttr { id: program_id, ..Default::default() };
    let fd =
        sys_bpf(BPF_PROG_GET_FD_BY_ID, (&mut by_id as *mut GetFdByIdAttr).cast(), std::mem::size_of::<GetFdByIdAttr>())
            .with_context(|| format!("opening program {program_id}"))?;
    // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new file descriptor that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    let mut pin = ObjGetAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_PIN, (&mut pin as *mut ObjGetAttr).cast(), std::mem::size_of::<ObjGetAttr>())
        .with_context(|| format!("pinning program {program_id} at {}", path.display()))?;
    Ok(())
}

/// The index of interface `iface` in this network namespace, if it exists.
pub fn ifindex_of(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
