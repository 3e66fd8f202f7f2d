//! The only module that writes policy into the kernel maps.
//!
//! A phase is written into the keys of a *new* generation, which no packet
//! matches yet; then [`activate`] publishes it with one 4-byte map write;
//! then the previous generation's keys are deleted. At no moment does a
//! packet see a partly written policy.

use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, MapData};
use fw_common::{Config, PhaseConfig};

use crate::{compile::tables::CompiledPhase, loader::PolicyMaps};

/// Writes every entry of `phase` under `generation` (not yet active).
pub fn write_generation(maps: &mut PolicyMaps, phase: &CompiledPhase, generation: u32) -> Result<()> {
    for e in &phase.addr4 {
        let (bits, key) = e.key(generation);
        maps.addr4
            .insert(&Key::new(bits, key), e.class, 0)
            .with_context(|| format!("writing {}/{} to FW_ADDR4", e.addr, e.prefix_len))?;
    }
    for e in &phase.addr6 {
        let (bits, key) = e.key(generation);
        maps.addr6
            .insert(&Key::new(bits, key), e.class, 0)
            .with_context(|| format!("writing {}/{} to FW_ADDR6", e.addr, e.prefix_len))?;
    }
    for e in &phase.ports {
        let (bits, key) = e.key(generation);
        maps.ports
            .insert(&Key::new(bits, key), e.value, 0)
            .with_context(|| format!("writing class {} port entry to FW_PORTS", e.class))?;
    }
    let settings = PhaseConfig {
        egress_default: phase.settings.egress_default as u8,
        inbound_default: phase.settings.inbound_default as u8,
        audit: u8::from(phase.settings.audit),
        _pad: 0,
    };
    maps.phases
        .set(generation & 1, settings, 0)
        .context("writing the phase settings to FW_PHASES")?;
    Ok(())
}

/// Makes `generation` the one every packet is judged by.
pub fn activate(maps: &mut PolicyMaps, generation: u32) -> Result<()> {
    maps.config
        .set(0, Config { generation }, 0)
        .context("writing the active generation to FW_CONFIG")
}

/// The active generation.
pub fn active_generation(maps: &PolicyMaps) -> Result<u32> {
    Ok(maps.config.get(&0, 0).context("reading FW_CONFIG")?.generation)
}

/// Deletes every entry of `generation` (after another one was activated).
pub fn delete_generation(maps: &mut PolicyMaps, generation: u32) -> Result<usize> {
    let gen = generation.to_be_bytes();
    let mut removed = 0;
    removed += remove_where(&mut maps.addr4, |k| k.generation == gen)?;
    removed += remove_where(&mut maps.addr6, |k| k.generation == gen)?;
    removed += remove_where(&mut maps.ports, |k| k.generation == gen)?;
    Ok(removed)
}

fn remove_where<K: aya::Pod, V: aya::Pod>(
    trie: &mut aya::maps::LpmTrie<MapData, K, V>,
    matches: impl Fn(&K) -> bool,
) -> Result<usize> {
    // Collect first: deleting while walking get_next_key restarts the walk.
    let doomed: Vec<Key<K>> = trie
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| matches(&k.data()))
        .collect();
    for key in &doomed {
        trie.remove(key).context("deleting an old-generation entry")?;
    }
    Ok(doomed.len())
}
