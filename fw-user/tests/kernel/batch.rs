//! The batched map operations (`BPF_MAP_*_BATCH`, what `fw` writes,
//! walks and deletes policy with) against their one-entry-per-call
//! fallback (what a kernel without batch operations for LPM tries, before
//! 5.14, gets): the same tries either way, across batch boundaries.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{lpm_trie::Key, IterableMap as _, MapData};
use fw_common::AddrKey4;
use fw_lab::rng::Rng;
use fw_user::kernel::{
    batch,
    loader::{self, LoadOptions, PolicyMaps},
};

type Entry = (u32, AddrKey4, u32);

fn fresh_maps() -> PolicyMaps {
    let mut ebpf = loader::load(&LoadOptions::here().expect("load options")).expect("loading the fw kernel object");
    PolicyMaps::take(&mut ebpf).expect("taking the policy maps")
}

/// Every entry of `map`, read with `walk` (batched or one by one).
fn entries(
    map: &MapData,
    walk: fn(&MapData, &mut dyn FnMut(&Key<AddrKey4>, &u32)) -> anyhow::Result<()>,
) -> BTreeSet<Entry> {
    let mut seen = BTreeSet::new();
    walk(map, &mut |k, v| {
        seen.insert((k.prefix_len(), k.data(), *v));
    })
    .expect("walking the trie");
    seen
}

fn batched_entries(map: &MapData) -> BTreeSet<Entry> {
    entries(map, |m, visit| batch::for_each(m, visit))
}

fn single_entries(map: &MapData) -> BTreeSet<Entry> {
    entries(map, |m, visit| batch::for_each_one_by_one(m, visit))
}

/// The two sets are equal; else the sizes and the first difference (the
/// sets have 10,000 entries: printing them helps nobody).
fn same(seen: &BTreeSet<Entry>, wanted: &BTreeSet<Entry>, what: &str) {
    let missing = wanted.difference(seen).next();
    let extra = seen.difference(wanted).next();
    assert!(
        missing.is_none() && extra.is_none(),
        "{what}: {} entries, {} wanted; first missing {missing:?}, first extra {extra:?}",
        seen.len(),
        wanted.len()
    );
}

#[test]
fn batched_and_one_by_one_map_operations_leave_the_same_tries() {
    crate::require_root();
    let (batched, single) = (fresh_maps(), fresh_maps());
    // 10,000 distinct prefixes, /8 to /32, nested at random: more than two
    // batches of 4,096.
    let mut rng = Rng::new(0x0bad_5eed);
    let mut prefixes = BTreeMap::new();
    while prefixes.len() < 10_000 {
        let len = rng.range(8, 32) as u32;
        let addr = rng.u32() & (u32::MAX << (32 - len));
        let key = AddrKey4 { generation: 7u32.to_be_bytes(), direction: rng.below(2) as u8, addr: addr.to_be_bytes() };
        // The fixed part of the key (generation, direction) is always whole.
        prefixes.insert((fw_common::policy::ADDR_KEY_FIXED_BITS + len, key), rng.u32());
    }
    let wanted: BTreeSet<Entry> = prefixes.iter().map(|((bits, key), value)| (*bits, *key, *value)).collect();
    let keys: Vec<Key<AddrKey4>> = wanted.iter().map(|(bits, k, _)| Key::new(*bits, *k)).collect();
    let values: Vec<u32> = wanted.iter().map(|(_, _, v)| *v).collect();

    let mut calls = 0;
    batch::update(batched.addr4.map(), &keys, &values, &mut || calls += 1).expect("BPF_MAP_UPDATE_BATCH");
    assert_eq!(calls, 3, "10,000 entries in batches of 4,096");
    let mut calls = 0;
    batch::update_one_by_one(single.addr4.map(), &keys, &values, &mut || calls += 1).expect("BPF_MAP_UPDATE_ELEM");
    assert_eq!(calls, 10_000);
    same(&batched_entries(batched.addr4.map()), &wanted, "the batched write, read in batches");
    same(&single_entries(batched.addr4.map()), &wanted, "the batched write, read one by one");
    same(&batched_entries(single.addr4.map()), &wanted, "the single writes, read in batches");

    // Every third entry goes, each way.
    let doomed: Vec<Key<AddrKey4>> = keys.iter().step_by(3).copied().collect();
    batch::delete(batched.addr4.map(), &doomed, &mut || {}).expect("BPF_MAP_DELETE_BATCH");
    batch::delete_one_by_one(single.addr4.map(), &doomed, &mut || {}).expect("BPF_MAP_DELETE_ELEM");
    let left: BTreeSet<Entry> = wanted.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, e)| *e).collect();
    assert_eq!(left.len(), 10_000 - 3_334);
    same(&batched_entries(batched.addr4.map()), &left, "after the batched deletions");
    same(&single_entries(single.addr4.map()), &left, "after the single deletions");

    // A key that is not there is an error either way, not a silent success.
    assert!(batch::delete(batched.addr4.map(), &doomed[..1], &mut || {}).is_err());
    assert!(batch::delete_one_by_one(single.addr4.map(), &doomed[..1], &mut || {}).is_err());
}
