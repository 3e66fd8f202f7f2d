//! Reading a whole hash map in few system calls.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context, Result};
use aya::maps::MapData;

/// `BPF_MAP_LOOKUP_BATCH`'s part of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Calls `visit` with every entry of a hash map, read 4,096 at a time with
/// `BPF_MAP_LOOKUP_BATCH` (Linux 5.6; aya has no wrapper): a full
/// 262,144-entry table in 64 system calls instead of 524,288. `K` and `V`
/// must be the map's key and value types. Entries added or removed during
/// the walk may be seen or not, as with any iteration of a live map.
pub fn for_each<K: Copy + Default, V: Copy + Default>(map: &MapData, mut visit: impl FnMut(&K, &V)) -> Result<()> {
    const CHUNK: usize = 4096;
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    // The batch cursor is a bucket index (4 bytes for hash maps); 8 for room.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let fd = map.fd().as_fd().as_raw_fd();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &cursor_in as *const u64 as u64 },
            out_batch: &mut cursor_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of CHUNK keys and values
        // of the map's sizes and at two cursors, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (rc < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(CHUNK);
        keys[..n].iter().zip(&values[..n]).for_each(|(k, v)| visit(k, v));
        match error {
            None => {
                cursor_in = cursor_out;
                first = false;
            }
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e).context("BPF_MAP_LOOKUP_BATCH"),
        }
    }
}
