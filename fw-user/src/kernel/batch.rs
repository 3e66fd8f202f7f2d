//! Reading, writing and deleting map entries a few thousand per system call
//! (`BPF_MAP_*_BATCH`, Linux 5.6; LPM tries since 5.14; aya has no
//! wrapper). A 100,000-rule policy is 440,000 trie entries: one system call
//! each made a phase switch spend most of its time entering the kernel.
//! A kernel without the batch operations for a map type (ENOTSUPP, or
//! EINVAL before 5.6) gets the same done one entry per call.

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

/// The single-entry operations' part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for BPF_MAP_GET_NEXT_KEY.
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
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

fn call<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: every pointer in `attr` is to a live buffer sized for `count`
    // keys and values (or one key and value) of the map's sizes (the
    // callers' contract).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The kernel has no batch operation of this kind for this map type.
fn unsupported(e: &std::io::Error) -> bool {
    // ENOTSUPP (524, kernel-internal) for a map type without it; EINVAL
    // from a kernel that does not know the command.
    matches!(e.raw_os_error(), Some(524) | Some(libc::EINVAL))
}

fn fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

fn zero<T: Pod>() -> T {
    // SAFETY: `Pod` types are plain data, valid for any bit pattern.
    unsafe { std::mem::zeroed() }
}

/// Calls `visit` with every entry of a map, read 4,096 at a time with
/// `BPF_MAP_LOOKUP_BATCH`: a full 262,144-entry flow table in 64 system
/// calls instead of 524,288. `K` and `V` must be the map's key and value
/// types (for an LPM trie, `lpm_trie::Key<K>`). Entries added or removed
/// during the walk may be seen or not, as with any iteration of a live map.
pub fn for_each<K: Pod, V: Pod>(map: &MapData, mut visit: impl FnMut(&K, &V)) -> Result<()> {
    const { assert!(std::mem::size_of::<K>() <= std::mem::size_of::<Cursor>()) };
    let mut keys: Vec<K> = (0..CHUNK).map(|_| zero()).collect();
    let mut values: Vec<V> = (0..CHUNK).map(|_| zero()).collect();
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
        if first && result.as_ref().is_err_and(unsupported) {
            return for_each_one_by_one(map, visit);
        }
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

/// [`for_each`] with BPF_MAP_GET_NEXT_KEY and BPF_MAP_LOOKUP_ELEM.
pub fn for_each_one_by_one<K: Pod, V: Pod>(map: &MapData, mut visit: impl FnMut(&K, &V)) -> Result<()> {
    let mut key: K = zero();
    let mut next: K = zero();
    let mut value: V = zero();
    let mut first = true;
    loop {
        let mut attr = ElemAttr {
            map_fd: fd(map),
            key: if first { 0 } else { &key as *const K as u64 },
            value: &mut next as *mut K as u64,
            ..ElemAttr::default()
        };
        match call(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e).context("BPF_MAP_GET_NEXT_KEY"),
        }
        first = false;
        key = next;
        let mut attr = ElemAttr {
            map_fd: fd(map),
            key: &key as *const K as u64,
            value: &mut value as *mut V as u64,
            ..ElemAttr::default()
        };
        match call(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => visit(&key, &value),
            // Deleted since the walk saw it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_ELEM"),
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
    if keys.is_empty() {
        ensure!(values.is_empty(), "values without keys");
        return Ok(());
    }
    let per_key = values.len() / keys.len();
    ensure!(per_key >= 1 && per_key * keys.len() == values.len(), "{} values for {} keys", values.len(), keys.len());
    if !in_batches(BPF_MAP_UPDATE_BATCH, "BPF_MAP_UPDATE_BATCH", map, keys, Some((values, per_key)), step)? {
        update_one_by_one(map, keys, values, step)?;
    }
    Ok(())
}

/// Runs the batch command `cmd` over `keys` (with `per_key` of `values`
/// each), 4,096 keys per call, `step` before each. `Ok(false)`: the kernel
/// has no such batch operation for this map type (refused on the first
/// call, so nothing was done).
fn in_batches<K: Pod, V: Pod>(
    cmd: libc::c_long,
    name: &str,
    map: &MapData,
    keys: &[K],
    values: Option<(&[V], usize)>,
    step: &mut dyn FnMut(),
) -> Result<bool> {
    for (i, chunk) in keys.chunks(CHUNK).enumerate() {
        step();
        let values = values.map_or(0, |(values, per_key)| values[i * CHUNK * per_key..].as_ptr() as u64);
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            values,
            count: chunk.len() as u32,
            map_fd: fd(map),
            ..BatchAttr::default()
        };
        match call(cmd, &mut attr) {
            Ok(()) => {}
            Err(e) if i == 0 && unsupported(&e) => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("{name} (entry {} of this batch)", attr.count)),
        }
    }
    Ok(true)
}

/// [`update`] with one BPF_MAP_UPDATE_ELEM per key (`step` before each).
pub fn update_one_by_one<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    step: &mut dyn FnMut(),
) -> Result<()> {
    let per_key = values.len() / keys.len().max(1);
    for (key, value) in keys.iter().zip(values.chunks(per_key.max(1))) {
        step();
        let mut attr = ElemAttr {
            map_fd: fd(map),
            key: key as *const K as u64,
            value: value.as_ptr() as u64,
            ..ElemAttr::default()
        };
        call(BPF_MAP_UPDATE_ELEM, &mut attr).context("BPF_MAP_UPDATE_ELEM")?;
    }
    Ok(())
}

/// Deletes `keys`, 4,096 per call of `BPF_MAP_DELETE_BATCH`; `step` runs
/// before each call. A key that is not there is an error (ENOENT).
pub fn delete<K: Pod>(map: &MapData, keys: &[K], step: &mut dyn FnMut()) -> Result<()> {
    if !in_batches::<K, u8>(BPF_MAP_DELETE_BATCH, "BPF_MAP_DELETE_BATCH", map, keys, None, step)? {
        delete_one_by_one(map, keys, step)?;
    }
    Ok(())
}

/// [`delete`] with one BPF_MAP_DELETE_ELEM per key (`step` before each).
pub fn delete_one_by_one<K: Pod>(map: &MapData, keys: &[K], step: &mut dyn FnMut()) -> Result<()> {
    for key in keys {
        step();
        let mut attr = ElemAttr { map_fd: fd(map), key: key as *const K as u64, ..ElemAttr::default() };
        call(BPF_MAP_DELETE_ELEM, &mut attr).context("BPF_MAP_DELETE_ELEM")?;
    }
    Ok(())
}
