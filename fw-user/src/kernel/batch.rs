//! Reading, writing and deleting map entries a few thousand per system call
//! (`BPF_MAP_*_BATCH`, Linux 5.6; LPM tries since 5.14; aya has no
//! wrapper). A 100,000-rule policy is 440,000 trie entries: one system call
//! each made a phase switch spend most of its time entering the kernel.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{ensure, Context, Result};
use aya::{maps::MapData, Pod};

/// The batch operations' part of `union bpf_attr` (include/uapi/linux/bpf.h).
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
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per system call: 4,096 keeps the buffers small (a few hundred
/// KB at most) and the calls few (108 for the 440,000 entries above).
const CHUNK: usize = 4096;

/// The batch cursor: a bucket index for hash maps (4 bytes), a key for the
/// kernel's generic batch code (LPM tries, arrays). 64 bytes hold either.
#[repr(C, align(8))]
struct Cursor([u8; 64]);

fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: every pointer in `attr` is to a live buffer sized for `count`
    // keys and values of the map's sizes (the callers' contract).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

fn zeroed<T: Pod>(n: usize) -> Vec<T> {
    // SAFETY: `Pod` types are plain data, valid for any bit pattern.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// Calls `visit` with every entry of a map, read 4,096 at a time with
/// `BPF_MAP_LOOKUP_BATCH`: a full 262,144-entry flow table in 64 system
/// calls instead of 524,288. `K` and `V` must be the map's key and value
/// types (for an LPM trie, `lpm_trie::Key<K>`). Entries added or removed
/// during the walk may be seen or not, as with any iteration of a live map.
pub fn for_each<K: Pod, V: Pod>(map: &MapData, mut visit: impl FnMut(&K, &V)) -> Result<()> {
    const { assert!(std::mem::size_of::<K>() <= std::mem::size_of::<Cursor>()) };
    let mut keys = zeroed::<K>(CHUNK);
    let mut values = zeroed::<V>(CHUNK);
    let (mut cursor_in, mut cursor_out) = (Cursor([0; 64]), Cursor([0; 64]));
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor_in.0.as_ptr() as u64 },
            out_batch: cursor_out.0.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd(map),
            ..BatchAttr::default()
        };
        let result = call(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(CHUNK);
        keys[..n].iter().zip(&values[..n]).for_each(|(k, v)| visit(k, v));
        match result {
            Ok(()) => {
                cursor_in.0 = cursor_out.0;
                first = false;
            }
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_BATCH"),
        }
    }
}

/// Every key of a map (see [`for_each`]).
pub fn keys<K: Pod, V: Pod>(map: &MapData) -> Result<Vec<K>> {
    let mut keys = Vec::new();
    for_each::<K, V>(map, |k, _| keys.push(*k))?;
    Ok(keys)
}

/// Writes `keys[i] -> values[i]` (any existing value replaced), 4,096 per
/// call of `BPF_MAP_UPDATE_BATCH`; `step` runs before each call. For a
/// per-CPU map, `values` holds one value per possible CPU for each key, in
/// key order. Stops at the first entry the kernel refuses (a full map:
/// ENOSPC), with what was written before it left in place.
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V], step: &mut dyn FnMut()) -> Result<()> {
    ensure!(!keys.is_empty() || values.is_empty(), "values without keys");
    if keys.is_empty() {
        return Ok(());
    }
    let per_key = values.len() / keys.len();
    ensure!(per_key >= 1 && per_key * keys.len() == values.len(), "{} values for {} keys", values.len(), keys.len());
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK * per_key)) {
        step();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd(map),
            ..BatchAttr::default()
        };
        call(BPF_MAP_UPDATE_BATCH, &mut attr)
            .with_context(|| format!("BPF_MAP_UPDATE_BATCH (entry {} of this batch)", attr.count))?;
    }
    Ok(())
}

/// Deletes `keys`, 4,096 per call of `BPF_MAP_DELETE_BATCH`; `step` runs
/// before each call. A key that is not there is an error (ENOENT).
pub fn delete<K: Pod>(map: &MapData, keys: &[K], step: &mut dyn FnMut()) -> Result<()> {
    for keys in keys.chunks(CHUNK) {
        step();
        let mut attr =
            BatchAttr { keys: keys.as_ptr() as u64, count: keys.len() as u32, map_fd: fd(map), ..BatchAttr::default() };
        call(BPF_MAP_DELETE_BATCH, &mut attr)
            .with_context(|| format!("BPF_MAP_DELETE_BATCH (entry {} of this batch)", attr.count))?;
    }
    Ok(())
}
